// Export: the current filters' logs as a CSV or NDJSON download (GET /logs/export).

import { state } from './state.js';
import { $, h } from './dom.js';
import { fmtBytes } from './format.js';
import { ApiError, authHeaders, errorFromResponse, unreachable } from './api.js';
import { serverParams } from './filters.js';
import { setBusy, clearError, reportError } from './errors.js';

function downloadName(res, format) {
  const cd = res.headers.get('Content-Disposition') || '';
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(cd);
  let name = m ? decodeURIComponent(m[1]).replace(/[^\w.-]+/g, '_') : '';
  if (!name || name.startsWith('.')) {
    const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, '');
    name = `logbridge-logs-${stamp}Z.${format}`;
  }
  return name;
}

export async function exportLogs(format, btn) {
  if (btn.getAttribute('aria-disabled') === 'true' || !state.key) return;
  const p = new URLSearchParams(state.query || serverParams(state.filters));
  p.set('format', format);
  const label = btn.textContent;
  const status = $('export-status');
  btn.setAttribute('aria-disabled', 'true');
  btn.textContent = 'Exporting…';
  status.textContent = 'Preparing the export…';
  setBusy(`export-${format}`, true);
  try {
    let res;
    try {
      res = await fetch(`/logs/export?${p}`, { headers: authHeaders(), cache: 'no-store' });
    } catch {
      throw unreachable();
    }
    if (!res.ok) throw await errorFromResponse(res);
    const chunks = [];
    let bytes = 0;
    if (res.body) {
      const reader = res.body.getReader();
      let lastShown = 0;
      for (;;) {
        let part;
        try {
          part = await reader.read();
        } catch {
          throw new ApiError(0, 'Cannot reach logbridge: the export was cut short');
        }
        if (part.done) break;
        chunks.push(part.value);
        bytes += part.value.byteLength;
        if (bytes - lastShown > 256 * 1024) {
          lastShown = bytes;
          status.textContent = `Exporting… ${fmtBytes(bytes)}`;
        }
      }
    } else {
      const b = await res.arrayBuffer();
      chunks.push(b);
      bytes = b.byteLength;
    }
    const type = format === 'csv' ? 'text/csv' : 'application/x-ndjson';
    const url = URL.createObjectURL(new Blob(chunks, { type }));
    const name = downloadName(res, format);
    const a = h('a', { href: url, download: name, class: 'visually-hidden' });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    status.textContent = `Downloaded ${name} (${fmtBytes(bytes)})`;
    clearError('export');
  } catch (e) {
    status.textContent = '';
    reportError(e, () => exportLogs(format, btn), 'export');
  } finally {
    btn.textContent = label;
    btn.setAttribute('aria-disabled', 'false');
    setBusy(`export-${format}`, false);
  }
}

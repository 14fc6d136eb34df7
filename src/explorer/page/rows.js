// The rows of a log table (the main view's and the call view's): one log's row, the detail it
// expands into, and the pointer and keyboard handling of a table.

import { h } from './dom.js';
import { str, fmtTime, parseTime, fmtMs, fmtDuration } from './format.js';
import { STATUSES } from './api.js';
import { openCall } from './call.js';

/** Rows → their log, for the detail view. */
const rowLogs = new WeakMap();
let detailSeq = 0;

const STATUS_GLYPH = { success: '✓', error: '✕' };

/** A word as the index cuts messages: letters and digits (as Rust's `char::is_alphanumeric`). */
const WORD = /[\p{Alphabetic}\p{N}]+/gu;

/**
 * `text` with the words `marks` names (lower case; `ca*` for a prefix) in <mark> elements:
 * what the search matched a log by.
 */
function marked(text, marks) {
  if (!marks.length) return [text];
  const words = new Set(marks.filter((m) => !m.endsWith('*')));
  const prefixes = marks.filter((m) => m.endsWith('*')).map((m) => m.slice(0, -1));
  const hit = (w) => words.has(w) || prefixes.some((p) => w.startsWith(p));
  const parts = [];
  let last = 0;
  for (const m of text.matchAll(WORD)) {
    if (!hit(m[0].toLowerCase())) continue;
    if (m.index > last) parts.push(text.slice(last, m.index));
    parts.push(h('mark', { class: 'hit', text: m[0] }));
    last = m.index + m[0].length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return parts;
}

export function logRow(log, { live = false, call = false, base = NaN, marks = [] } = {}) {
  const tr = document.createElement('tr');
  tr.className = live ? 'log-row live' : 'log-row';
  tr.tabIndex = 0;
  tr.setAttribute('aria-expanded', 'false');
  const status = str(log.status);
  if (status === 'error') tr.classList.add('is-error');

  tr.append(h('td', { class: 'c-time', text: fmtTime(log.timestamp) }));
  if (call) {
    const t = parseTime(log.timestamp);
    const off = Number.isFinite(t) && Number.isFinite(base) ? `+${fmtDuration(t - base) || '0 ms'}` : '';
    tr.append(h('td', { class: 'c-offset num', text: off }));
  }
  // The room comes early so that a row's middle, where a pointer (or WebDriver) clicks a row,
  // never falls on the room button.
  const room = str(log.room_name);
  tr.append(h('td', { class: 'c-room' },
    room ? h('button', { type: 'button', class: 'room-link', title: `Open every log of call ${room}`, text: room }) : '—'));
  tr.append(h('td', { class: 'c-type', text: str(log.log_type) }));

  const kind = STATUSES.includes(status) ? status : 'other';
  tr.append(h('td', { class: 'c-status' },
    h('span', { class: `badge badge-${kind}` },
      STATUS_GLYPH[kind] ? h('span', { class: 'glyph', 'aria-hidden': 'true', text: STATUS_GLYPH[kind] }) : null,
      status || '—')));

  tr.append(h('td', { class: 'c-assistant', title: str(log.assistant_id), text: str(log.assistant_id) }));

  const latency = log.latency_ms;
  tr.append(h('td', { class: 'c-latency num', text: latency == null || latency === '' ? '–' : `${fmtMs(latency)} ms` }));

  const message = str(log.message);
  tr.append(h('td', { class: 'c-message' },
    h('span', { class: 'msg', title: message.length > 1000 ? `${message.slice(0, 1000)}…` : message }, ...marked(message, marks))));

  rowLogs.set(tr, log);
  return tr;
}

function pretty(v) {
  if (v === undefined) return 'null';
  try { return JSON.stringify(v, null, 2) ?? 'null'; } catch { return String(v); }
}

function detailRow(log, cols) {
  const id = `detail-${++detailSeq}`;
  const meta = h('dl', { class: 'meta' });
  const item = (label, value, mono = true) => {
    const shown = value == null || value === '' ? '—' : str(value);
    meta.append(h('div', null, h('dt', { text: label }), h('dd', { class: mono ? 'mono' : null, text: shown })));
  };
  item('Trace ID', log.trace_id);
  item('Span ID', log.span_id);
  item('Severity', log.severity_text, false);
  item('Timestamp', log.timestamp);
  item('Assistant', log.assistant_id);
  item('Room', log.room_name);

  const payload = (title, cls, value) => {
    const text = pretty(value);
    const pre = h('pre', { class: cls, tabindex: '0', 'aria-label': title, text });
    const head = h('div', { class: 'payload-head' }, h('h3', { text: title }));
    if (navigator.clipboard && window.isSecureContext) {
      const copy = h('button', { type: 'button', class: 'btn btn-small copy', text: 'Copy' });
      copy.addEventListener('click', () => {
        navigator.clipboard.writeText(text).then(
          () => { copy.textContent = 'Copied'; setTimeout(() => { copy.textContent = 'Copy'; }, 1500); },
          () => { copy.textContent = 'Copy failed'; });
      });
      head.append(copy);
    }
    return h('section', { class: 'payload' }, head, pre);
  };

  const box = h('div', { class: 'detail' },
    h('p', { class: 'detail-message', text: str(log.message) || '(no message)' }),
    meta,
    h('div', { class: 'payloads' },
      payload('Request data', 'request-data', log.request_data),
      payload('Response data', 'response-data', log.response_data)));
  const tr = h('tr', { class: 'log-detail', id }, h('td', { colspan: String(cols) }, box));
  return tr;
}

function toggleRow(tr) {
  const open = tr.getAttribute('aria-expanded') !== 'true';
  let detail = tr.nextElementSibling;
  if (!detail || !detail.classList.contains('log-detail')) detail = null;
  if (open && !detail) {
    const log = rowLogs.get(tr);
    if (!log) return;
    detail = detailRow(log, tr.cells.length);
    tr.after(detail);
    tr.setAttribute('aria-controls', detail.id);
  }
  if (detail) detail.hidden = !open;
  tr.setAttribute('aria-expanded', String(open));
}

export function wireTable(table) {
  const tbody = table.tBodies[0];
  tbody.addEventListener('click', (ev) => {
    const target = ev.target instanceof Element ? ev.target : null;
    if (!target) return;
    const roomBtn = target.closest('button.room-link');
    if (roomBtn) {
      const tr = roomBtn.closest('tr.log-row');
      const room = str(rowLogs.get(tr)?.room_name) || roomBtn.textContent;
      openCall(room, { opener: roomBtn });
      return;
    }
    if (target.closest('button, a, input, select, textarea')) return;
    const tr = target.closest('tr.log-row');
    if (!tr || !tbody.contains(tr)) return;
    const sel = window.getSelection();
    if (sel && !sel.isCollapsed && tr.contains(sel.anchorNode)) return; // selecting text, not toggling
    toggleRow(tr);
  });
  tbody.addEventListener('keydown', (ev) => {
    const tr = ev.target;
    if (!(tr instanceof HTMLTableRowElement) || !tr.classList.contains('log-row')) return;
    if (ev.key === 'Enter' || ev.key === ' ' || ev.key === 'Spacebar') {
      ev.preventDefault();
      toggleRow(tr);
    } else if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
      ev.preventDefault();
      let next = ev.key === 'ArrowDown' ? tr.nextElementSibling : tr.previousElementSibling;
      while (next && !next.classList.contains('log-row')) next = ev.key === 'ArrowDown' ? next.nextElementSibling : next.previousElementSibling;
      next?.focus();
    }
  });
}

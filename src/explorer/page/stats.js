// The statistics of one GET /logs/stats: the counts by type and status, the histogram, the
// latency percentiles and the busiest assistants; selecting one of them narrows the filters.

import { state } from './state.js';
import { $, h, svg, svgTitle } from './dom.js';
import { fmt, str, num, isObj, parseTime, fmtMinute, rfc3339, fmtMs } from './format.js';
import { LOG_TYPES, STATUSES } from './api.js';
import { fillInputs, readInputs } from './filters.js';
import { apply } from './results.js';

export function renderStats() {
  renderByType();
  renderHistogram();
  renderLatency();
  renderTopAssistants();
}

function filterBy(changes) {
  const f = readInputs();
  Object.assign(f, changes);
  fillInputs(f);
  apply();
}

export function renderByType() {
  const tbody = $('by-type').tBodies[0];
  const frag = document.createDocumentFragment();
  const by = isObj(state.stats?.by_type_status) ? state.stats.by_type_status : null;
  for (const type of LOG_TYPES) {
    const counts = by && isObj(by[type]) ? by[type] : null;
    const tr = h('tr', { 'data-log-type': type });
    tr.append(h('th', { scope: 'row' },
      h('button', { type: 'button', class: 'link-btn', title: `Show only ${type}`, text: type })));
    tr.lastChild.firstChild.addEventListener('click', () => filterBy({ log_type: type, status: '' }));
    for (const status of STATUSES) {
      const td = h('td', { class: `num count-${status}` });
      if (counts) {
        const n = num(counts[status]);
        const b = h('button', { type: 'button', class: `link-btn count ${status}${n ? '' : ' zero'}`, 'aria-label': `${fmt(n)} ${type} ${status}: show them`, text: fmt(n) });
        b.addEventListener('click', () => filterBy({ log_type: type, status }));
        td.append(b);
      } else {
        td.textContent = '–';
      }
      tr.append(td);
    }
    frag.append(tr);
  }
  tbody.replaceChildren(frag);
}

function renderLatency() {
  const tbody = $('latency').tBodies[0];
  const frag = document.createDocumentFragment();
  const lat = isObj(state.stats?.latency_ms) ? state.stats.latency_ms : {};
  for (const type of LOG_TYPES) {
    const l = isObj(lat[type]) ? lat[type] : {};
    const tr = h('tr', { 'data-log-type': type }, h('th', { scope: 'row', class: 'mono', text: type }));
    tr.append(h('td', { class: 'num l-count', text: state.stats ? fmt(num(l.count)) : '–' }));
    for (const k of ['p50', 'p95', 'p99', 'max']) tr.append(h('td', { class: `num l-${k}`, text: fmtMs(l[k]) }));
    frag.append(tr);
  }
  tbody.replaceChildren(frag);
}

function renderTopAssistants() {
  const list = $('top-assistants');
  const top = Array.isArray(state.stats?.top_assistants) ? state.stats.top_assistants.filter(isObj) : [];
  const frag = document.createDocumentFragment();
  const max = Math.max(1, ...top.map((a) => num(a.count)));
  for (const a of top) {
    const id = str(a.assistant_id);
    const count = num(a.count);
    const errors = num(a.errors);
    const btn = h('button', { type: 'button', class: 'link-btn assistant', title: id ? `Show only assistant ${id}` : 'Logs without an assistant', text: id || '(none)' });
    if (id) btn.addEventListener('click', () => filterBy({ assistant_id: id }));
    else btn.disabled = true;
    const meter = h('span', { class: 'meter', 'aria-hidden': 'true' }, h('span', { class: 'meter-fill' }), h('span', { class: 'meter-err' }));
    meter.children[0].style.width = `${(count / max) * 100}%`;
    meter.children[1].style.width = `${(errors / max) * 100}%`;
    frag.append(h('li', null,
      btn,
      h('span', { class: 'top-count', text: `${fmt(count)} ${count === 1 ? 'log' : 'logs'}` }),
      h('span', { class: errors ? 'top-errors has-errors' : 'top-errors', text: `${fmt(errors)} ${errors === 1 ? 'error' : 'errors'}` }),
      meter));
  }
  list.replaceChildren(frag);
  $('top-empty').hidden = !state.stats || top.length > 0;
}

let histWidth = 0;
function renderHistogram() {
  const box = $('histogram');
  const hist = isObj(state.stats?.histogram) ? state.stats.histogram : null;
  const buckets = Array.isArray(hist?.buckets) ? hist.buckets.filter(isObj) : [];
  const interval = str(hist?.interval);
  const intervalSec = num(hist?.interval_seconds);
  $('hist-interval').textContent = interval ? `per ${interval}` : '';
  if (!state.stats) {
    const text = state.statsFailed ? 'Statistics are unavailable.' : state.key ? 'Loading…' : '';
    box.replaceChildren(h('p', { class: 'muted small hist-empty', text }));
    return;
  }
  if (!buckets.length) {
    box.replaceChildren(h('p', { class: 'muted small hist-empty', text: 'No logs in this time range.' }));
    return;
  }
  const W = Math.max(260, Math.round(box.clientWidth || 600));
  histWidth = W;
  const H = 150;
  const m = { l: 44, r: 6, t: 10, b: 22 };
  const pw = W - m.l - m.r;
  const ph = H - m.t - m.b;
  const totals = buckets.map((b) => num(b.success) + num(b.error));
  const max = Math.max(1, ...totals);
  const n = buckets.length;
  const step = pw / n;
  const gap = step >= 4 ? Math.min(2, step * 0.2) : 0;
  const bw = Math.max(0.5, step - gap);
  const base = m.t + ph;
  const y = (v) => (v <= 0 ? 0 : Math.max(1, (v / max) * ph));
  const r = (v) => Math.round(v * 100) / 100;

  const first = parseTime(buckets[0].start);
  const last = parseTime(buckets[n - 1].start);
  const sum = totals.reduce((a, b) => a + b, 0);
  const root = svg('svg', {
    viewBox: `0 0 ${W} ${H}`, width: '100%', height: H, role: 'img', class: 'hist-svg',
    'aria-label': `${fmt(sum)} logs from ${fmtMinute(first)} to ${fmtMinute(last)}${interval ? `, per ${interval}` : ''}; at most ${fmt(max)} in one bucket`,
  });
  root.append(
    svg('line', { class: 'grid', x1: m.l, x2: W - m.r, y1: m.t + 0.5, y2: m.t + 0.5 }),
    svg('line', { class: 'grid', x1: m.l, x2: W - m.r, y1: r(m.t + ph / 2) + 0.5, y2: r(m.t + ph / 2) + 0.5 }),
    svg('line', { class: 'axis-line', x1: m.l, x2: W - m.r, y1: base + 0.5, y2: base + 0.5 }));
  const axisText = (x, yy, text, anchor, cls = 'axis') => {
    const t = svg('text', { x, y: yy, 'text-anchor': anchor, class: cls });
    t.textContent = text;
    return t;
  };
  root.append(
    axisText(m.l - 6, m.t + 4, fmt(max), 'end', 'axis axis-max'),
    axisText(m.l - 6, base + 4, '0', 'end'),
    axisText(m.l, H - 6, fmtMinute(first), 'start', 'axis axis-first'),
    axisText(W - m.r, H - 6, fmtMinute(last), 'end', 'axis axis-last'));

  const bars = svg('g', { class: 'bars' });
  buckets.forEach((b, i) => {
    const start = parseTime(b.start);
    const s = num(b.success);
    const e = num(b.error);
    const label = `${fmtMinute(start)}: ${fmt(s)} success, ${fmt(e)} error`;
    const x = m.l + i * step;
    const sh = y(s);
    const eh = y(e);
    const g = svg('g', { class: 'bucket', 'data-i': i });
    g.append(
      svg('rect', { class: 'hit', x: r(x), y: m.t, width: r(step), height: ph }, svgTitle(label)),
      svg('rect', { class: 'bar success', x: r(x + gap / 2), y: r(base - sh), width: r(bw), height: r(sh) }, svgTitle(label)),
      svg('rect', { class: 'bar error', x: r(x + gap / 2), y: r(base - sh - eh), width: r(bw), height: r(eh) }, svgTitle(label)));
    bars.append(g);
  });
  root.append(bars);
  root.addEventListener('click', (ev) => {
    const g = ev.target instanceof Element ? ev.target.closest('g.bucket') : null;
    if (!g) return;
    const b = buckets[Number(g.getAttribute('data-i'))];
    const start = parseTime(b?.start);
    if (!Number.isFinite(start)) return;
    let len = intervalSec * 1000;
    if (!(len > 0)) {
      const next = buckets[Number(g.getAttribute('data-i')) + 1];
      len = next ? parseTime(next.start) - start : 60000;
    }
    zoomTo(start, start + len);
  });
  box.replaceChildren(root);
}

function zoomTo(startMs, endMs) {
  // a bucket is aligned to its interval: keep the zoom inside the range it was drawn for
  const shown = new URLSearchParams(state.query || '');
  const from = parseTime(shown.get('start_time'));
  const to = parseTime(shown.get('end_time'));
  if (Number.isFinite(from)) startMs = Math.max(startMs, from);
  if (Number.isFinite(to)) endMs = Math.min(endMs, to);
  if (!(startMs < endMs)) return;
  const f = readInputs();
  f.range = 'custom';
  f.start_time = rfc3339(startMs);
  f.end_time = rfc3339(endMs);
  fillInputs(f);
  apply();
}

/** Draws the histogram again when its width changes. */
export function redrawHistogramOnResize() {
  if (!('ResizeObserver' in window)) return;
  let pending = 0;
  new ResizeObserver(() => {
    if (pending) return;
    pending = requestAnimationFrame(() => {
      pending = 0;
      const w = Math.round($('histogram').clientWidth);
      if (state.stats && w && Math.abs(w - histWidth) > 2) renderHistogram();
    });
  }).observe($('histogram'));
}

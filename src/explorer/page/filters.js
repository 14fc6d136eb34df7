// The filters: the form's inputs, the page's URL (so a view can be shared, and Back returns to the
// previous one) and the server's parameters, each read from and written to the others.

import { state, emptyFilters } from './state.js';
import { $ } from './dom.js';
import { fmtTime, rfc3339, localInputToRfc, rfcToLocalInput } from './format.js';
import { LOG_TYPES, STATUSES } from './api.js';

/** Time-range presets, in seconds back from now. */
const PRESETS = { '15m': 15 * 60, '1h': 3600, '24h': 86400, '7d': 7 * 86400 };
const PRESET_LABELS = { '15m': 'Last 15 minutes', '1h': 'Last hour', '24h': 'Last 24 hours', '7d': 'Last 7 days' };

export function filtersFromURL() {
  const p = new URLSearchParams(location.search);
  const f = emptyFilters();
  const get = (k) => (p.get(k) || '').trim();
  f.log_type = LOG_TYPES.includes(get('log_type')) ? get('log_type') : '';
  f.status = STATUSES.includes(get('status')) ? get('status') : '';
  f.assistant_id = get('assistant_id');
  f.room_name = get('room_name');
  f.q = get('q');
  const range = get('range');
  if (Object.hasOwn(PRESETS, range)) {
    f.range = range;
  } else {
    f.start_time = get('start_time');
    f.end_time = get('end_time');
    f.range = f.start_time || f.end_time ? 'custom' : '';
  }
  return f;
}
export function roomFromURL() {
  return new URLSearchParams(location.search).get('room') || null;
}

/** The page's query string for filters (and the open call). */
export function pageQuery(f, room) {
  const p = new URLSearchParams();
  for (const k of ['log_type', 'status', 'assistant_id', 'room_name']) if (f[k]) p.set(k, f[k]);
  if (Object.hasOwn(PRESETS, f.range)) {
    p.set('range', f.range);
  } else {
    if (f.start_time) p.set('start_time', f.start_time);
    if (f.end_time) p.set('end_time', f.end_time);
  }
  if (f.q) p.set('q', f.q);
  if (room) p.set('room', room);
  return p.toString();
}

/** The server's filter parameters; a preset becomes a concrete start_time. */
export function serverParams(f) {
  const p = new URLSearchParams();
  for (const k of ['log_type', 'status', 'assistant_id', 'room_name']) if (f[k]) p.set(k, f[k]);
  if (Object.hasOwn(PRESETS, f.range)) {
    p.set('start_time', rfc3339(Math.floor(Date.now() / 1000) * 1000 - PRESETS[f.range] * 1000));
  } else {
    if (f.start_time) p.set('start_time', f.start_time);
    if (f.end_time) p.set('end_time', f.end_time);
  }
  if (f.q) p.set('q', f.q);
  return p;
}

/** Encodes a query string readably: times keep their colons, spaces become %20. */
function readableQuery(params) {
  const safe = (v) => encodeURIComponent(v).replace(/%3A/gi, ':').replace(/%2C/gi, ',').replace(/%40/gi, '@').replace(/%2F/gi, '/');
  return [...params].map(([k, v]) => `${safe(k)}=${safe(v)}`).join('&');
}

export function writeURL(mode) {
  if (!mode) return;
  const qs = readableQuery(new URLSearchParams(pageQuery(state.filters, state.room)));
  const url = qs ? `${location.pathname}?${qs}` : location.pathname;
  const current = location.pathname + location.search;
  const entry = { room: state.room };
  if (mode === 'push' && url !== current) history.pushState(entry, '', url);
  else history.replaceState(entry, '', url);
}

export function fillInputs(f) {
  $('f-log_type').value = f.log_type;
  $('f-status').value = f.status;
  $('f-assistant_id').value = f.assistant_id;
  $('f-room_name').value = f.room_name;
  $('f-q').value = f.q;
  $('f-range').value = f.range;
  $('f-start_time').value = f.range === 'custom' ? rfcToLocalInput(f.start_time) : '';
  $('f-end_time').value = f.range === 'custom' ? rfcToLocalInput(f.end_time) : '';
}

export function readInputs() {
  const f = emptyFilters();
  f.log_type = $('f-log_type').value;
  f.status = $('f-status').value;
  f.assistant_id = $('f-assistant_id').value.trim();
  f.room_name = $('f-room_name').value.trim();
  f.q = $('f-q').value.trim();
  let range = $('f-range').value;
  const start = $('f-start_time').value;
  const end = $('f-end_time').value;
  if (range === '' && (start || end)) range = 'custom';
  if (range === 'custom') {
    f.start_time = localInputToRfc(start);
    f.end_time = localInputToRfc(end);
    if (!f.start_time && !f.end_time) range = '';
  }
  f.range = range;
  return f;
}

export function describeRange(f) {
  if (Object.hasOwn(PRESETS, f.range)) {
    const since = new URLSearchParams(state.query).get('start_time');
    return `${PRESET_LABELS[f.range]}${since ? ` (since ${fmtTime(since).slice(0, 19)} UTC)` : ''}`;
  }
  if (f.start_time && f.end_time) return `From ${fmtTime(f.start_time).slice(0, 19)} to ${fmtTime(f.end_time).slice(0, 19)} UTC`;
  if (f.start_time) return `Since ${fmtTime(f.start_time).slice(0, 19)} UTC`;
  if (f.end_time) return `Before ${fmtTime(f.end_time).slice(0, 19)} UTC`;
  return 'All time';
}

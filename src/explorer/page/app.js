// logbridge explorer: one page over the REST API (GET /logs, /logs/stats, /logs/tail, /logs/export).
//
// Everything the server sends is untrusted: it reaches the page only through textContent,
// createElement and attribute setters, never through innerHTML. No inline scripts or styles, so
// the page runs under `default-src 'self'; style-src 'self'; img-src 'self' data:`.

const KEY_STORAGE = 'logbridge.key';
const PAGE_SIZE = 50;
const CALL_PAGE_SIZE = 100;
/** At most this many pages of one call are read (20,000 logs). */
const CALL_MAX_PAGES = 200;
const LOG_TYPES = ['tool_call', 'end_call_webhook', 'inbound_context_lookup'];
const STATUSES = ['success', 'error'];
/** Time-range presets, in seconds back from now. */
const PRESETS = { '15m': 15 * 60, '1h': 3600, '24h': 86400, '7d': 7 * 86400 };
const PRESET_LABELS = { '15m': 'Last 15 minutes', '1h': 'Last hour', '24h': 'Last 24 hours', '7d': 'Last 7 days' };
const BACKOFF_MIN = 1000;
const BACKOFF_MAX = 10000;

const $ = (id) => document.getElementById(id);
const numberFormat = new Intl.NumberFormat('en-US');
const fmt = (n) => numberFormat.format(n);

// ---------------------------------------------------------------------------------------------
// Small helpers

/** Creates an element; `text` sets textContent, `class` the class name, other keys attributes. */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'title') el.title = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children) if (c != null && c !== false) el.append(c);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  if (attrs) for (const [k, v] of Object.entries(attrs)) if (v != null) el.setAttribute(k, String(v));
  for (const c of children) if (c != null) el.append(c);
  return el;
}
function svgTitle(text) {
  const t = document.createElementNS(SVG_NS, 'title');
  t.textContent = text;
  return t;
}

/** A server value as display text. */
function str(v) {
  if (v == null) return '';
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  try { return JSON.stringify(v); } catch { return String(v); }
}
function num(v) {
  const n = typeof v === 'number' ? v : Number(v);
  return Number.isFinite(n) ? n : 0;
}
function isObj(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

const TS_RE = /^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(?:[Zz]|[+-]00:?00)$/;
/** "2026-03-10T09:15:42.123Z" → "2026-03-10 09:15:42.123" (UTC). */
function fmtTime(ts) {
  if (typeof ts !== 'string') return str(ts);
  const m = TS_RE.exec(ts);
  if (m) return `${m[1]} ${m[2]}.${(m[3] || '').padEnd(3, '0').slice(0, 3)}`;
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? ts : d.toISOString().slice(0, 23).replace('T', ' ');
}
function parseTime(ts) {
  if (typeof ts !== 'string') return NaN;
  return new Date(ts).getTime();
}
/** "2026-03-10 09:15 UTC", for buckets. */
function fmtMinute(ms) {
  if (!Number.isFinite(ms)) return '?';
  return `${new Date(ms).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}
/** RFC 3339 without fractional seconds when there are none. */
function rfc3339(ms) {
  return new Date(ms).toISOString().replace('.000Z', 'Z');
}
/** A datetime-local value, read as UTC, as RFC 3339 ("" when empty or invalid). */
function localInputToRfc(value) {
  const m = /^(\d{4,}-\d{2}-\d{2})T(\d{2}:\d{2})(:\d{2}(?:\.\d{1,3})?)?$/.exec(value || '');
  if (!m) return '';
  const text = `${m[1]}T${m[2]}${m[3] || ':00'}Z`;
  return Number.isNaN(new Date(text).getTime()) ? '' : text;
}
/** RFC 3339 → a datetime-local value in UTC ("" when it cannot be shown). */
function rfcToLocalInput(text) {
  if (!text) return '';
  const d = new Date(text);
  if (Number.isNaN(d.getTime())) return '';
  const iso = d.toISOString();
  if (iso.endsWith(':00.000Z')) return iso.slice(0, 16);
  if (iso.endsWith('.000Z')) return iso.slice(0, 19);
  return iso.slice(0, 23);
}
function fmtMs(v) {
  if (v == null || v === '' || !Number.isFinite(Number(v))) return '–';
  const n = Number(v);
  if (n < 10 && !Number.isInteger(n)) return n.toFixed(1);
  return fmt(Math.round(n));
}
function fmtDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.round(s % 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}
function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) { resolve(false); return; }
    const done = (ok) => { clearTimeout(timer); signal?.removeEventListener('abort', onAbort); resolve(ok); };
    const onAbort = () => done(false);
    const timer = setTimeout(() => done(true), ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

// ---------------------------------------------------------------------------------------------
// State

const state = {
  key: null,
  /** The applied filters, as the URL holds them. */
  filters: emptyFilters(),
  /** The concrete server filters of the last apply (presets resolved to start_time). */
  query: '',
  gen: 0,
  loadCtl: null,
  total: null,
  shown: null,
  nextCursor: null,
  moreToken: null,
  stats: null,
  statsFailed: false,
  busy: new Set(),
  room: null,
  callGen: 0,
  callCtl: null,
  callOpener: null,
  scrollBeforeCall: 0,
  retry: null,
  errorSource: null,
  pageSequence: null,
  live: { on: false, gen: 0, ctl: null, query: null, lastId: null, backoff: BACKOFF_MIN, queue: [], timer: 0 },
};

/** Rows → their log, for the detail view. */
const rowLogs = new WeakMap();
let detailSeq = 0;

function emptyFilters() {
  return { log_type: '', status: '', assistant_id: '', room_name: '', range: '', start_time: '', end_time: '', q: '' };
}

// ---------------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

function authHeaders(extra) {
  return { Authorization: `Bearer ${state.key}`, ...extra };
}

function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

async function errorFromResponse(res) {
  let message = '';
  try {
    const body = await res.json();
    if (isObj(body) && typeof body.message === 'string') message = body.message;
  } catch (e) {
    if (e?.name === 'AbortError') throw e;
  }
  if (!message) message = res.statusText || 'unexpected answer from logbridge';
  return new ApiError(res.status, message, parseRetryAfter(res.headers.get('Retry-After')));
}

function unreachable() {
  return new ApiError(0, 'Cannot reach logbridge');
}

/** GETs a JSON endpoint and returns its `data`, or throws an ApiError. */
async function api(path, params, signal) {
  const qs = params ? params.toString() : '';
  let res;
  try {
    res = await fetch(qs ? `${path}?${qs}` : path, { headers: authHeaders({ Accept: 'application/json' }), signal, cache: 'no-store' });
  } catch (e) {
    if (e?.name === 'AbortError') throw e;
    throw unreachable();
  }
  if (!res.ok) throw await errorFromResponse(res);
  let body;
  try {
    body = await res.json();
  } catch (e) {
    if (e?.name === 'AbortError') throw e;
    throw new ApiError(res.status, 'logbridge answered with something that is not JSON');
  }
  if (!isObj(body) || body.success !== true) {
    const message = isObj(body) && typeof body.message === 'string' && body.message ? body.message : 'the request failed';
    throw new ApiError(res.status, message);
  }
  const data = isObj(body.data) ? body.data : {};
  // GET /logs tells the sequence number it read at: a tail from there misses nothing after it
  const sequence = res.headers.get('Logbridge-Sequence');
  if (sequence && /^[0-9]+$/.test(sequence)) sequences.set(data, sequence);
  return data;
}

/** The sequence number each GET /logs answer was read at. */
const sequences = new WeakMap();

// ---------------------------------------------------------------------------------------------
// Filters ⇄ inputs ⇄ URL ⇄ server parameters

function filtersFromURL() {
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
function roomFromURL() {
  return new URLSearchParams(location.search).get('room') || null;
}

/** The page's query string for filters (and the open call). */
function pageQuery(f, room) {
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
function serverParams(f) {
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

function writeURL(mode) {
  if (!mode) return;
  const qs = readableQuery(new URLSearchParams(pageQuery(state.filters, state.room)));
  const url = qs ? `${location.pathname}?${qs}` : location.pathname;
  const current = location.pathname + location.search;
  const entry = { room: state.room };
  if (mode === 'push' && url !== current) history.pushState(entry, '', url);
  else history.replaceState(entry, '', url);
}

function fillInputs(f) {
  $('f-log_type').value = f.log_type;
  $('f-status').value = f.status;
  $('f-assistant_id').value = f.assistant_id;
  $('f-room_name').value = f.room_name;
  $('f-q').value = f.q;
  $('f-range').value = f.range;
  $('f-start_time').value = f.range === 'custom' ? rfcToLocalInput(f.start_time) : '';
  $('f-end_time').value = f.range === 'custom' ? rfcToLocalInput(f.end_time) : '';
}

function readInputs() {
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

function describeRange(f) {
  if (Object.hasOwn(PRESETS, f.range)) {
    const since = new URLSearchParams(state.query).get('start_time');
    return `${PRESET_LABELS[f.range]}${since ? ` (since ${fmtTime(since).slice(0, 19)} UTC)` : ''}`;
  }
  if (f.start_time && f.end_time) return `From ${fmtTime(f.start_time).slice(0, 19)} to ${fmtTime(f.end_time).slice(0, 19)} UTC`;
  if (f.start_time) return `Since ${fmtTime(f.start_time).slice(0, 19)} UTC`;
  if (f.end_time) return `Before ${fmtTime(f.end_time).slice(0, 19)} UTC`;
  return 'All time';
}

/** Reads the inputs, records them in the URL and loads. */
function apply(mode = 'push') {
  state.filters = readInputs();
  fillInputs(state.filters);
  writeURL(mode);
  load();
}

// ---------------------------------------------------------------------------------------------
// Busy, errors

function setBusy(name, on) {
  if (on) state.busy.add(name); else state.busy.delete(name);
  $('main').setAttribute('aria-busy', state.busy.size ? 'true' : 'false');
}

function clearError(source) {
  if (source && state.errorSource && state.errorSource !== source) return;
  $('error').hidden = true;
  $('error-text').textContent = '';
  $('error-hint').textContent = '';
  $('error-hint').hidden = true;
  $('retry').hidden = true;
  state.retry = null;
  state.errorSource = null;
}

/** Shows an error honestly; a refused key goes back to the key form. */
function reportError(err, retry, source) {
  if (err?.name === 'AbortError') return;
  if (!(err instanceof ApiError)) {
    console.error(err);
    err = new ApiError(-1, `Something went wrong in this page: ${err?.message || err}`);
  }
  if (err.status === 401 || err.status === 403) {
    forgetKey(`This key was refused: ${err.message}`);
    return;
  }
  const retryable = err.status === 0 || err.status === 429 || err.status >= 500;
  let text;
  if (err.status <= 0) text = err.message;
  else text = `${err.status}: ${err.message}`;
  $('error-text').textContent = text;
  const hint = $('error-hint');
  if (err.status === 0) {
    hint.textContent = 'The request got no answer: check that logbridge is running and reachable, then retry.';
    hint.hidden = false;
  } else if (err.status === 429 || err.status === 503) {
    hint.textContent = `logbridge is busy; this can be retried${err.retryAfter != null ? ` in ${err.retryAfter} s` : ''}.`;
    hint.hidden = false;
  } else {
    hint.textContent = '';
    hint.hidden = true;
  }
  state.retry = retryable ? retry : null;
  state.errorSource = source;
  $('retry').hidden = !(retryable && retry);
  $('error').hidden = false;
}

// ---------------------------------------------------------------------------------------------
// Key

function showKeyForm(message) {
  $('app').hidden = true;
  $('forget-key').hidden = true;
  $('key-section').hidden = false;
  const err = $('key-error');
  err.textContent = message || '';
  err.hidden = !message;
  $('key').value = '';
  $('key').focus();
}

function showApp() {
  $('key-section').hidden = true;
  $('key-error').hidden = true;
  $('key-error').textContent = '';
  $('app').hidden = false;
  $('forget-key').hidden = false;
}

/** Forgets the key and everything read with it, and asks for a key again. */
function forgetKey(message) {
  try { sessionStorage.removeItem(KEY_STORAGE); } catch { /* storage unavailable */ }
  state.key = null;
  state.gen++;
  state.loadCtl?.abort();
  state.callGen++;
  state.callCtl?.abort();
  setLive(false);
  state.busy.clear();
  setBusy('load', false);
  clearError();
  clearResults();
  closeCall(null, false);
  showKeyForm(message);
}

function onKeySubmit(ev) {
  ev.preventDefault();
  const value = $('key').value.trim();
  const err = $('key-error');
  if (!value) {
    err.textContent = 'Enter an API key.';
    err.hidden = false;
    $('key').focus();
    return;
  }
  if (!/^[\x21-\x7e]+$/.test(value)) {
    err.textContent = 'An API key is printable ASCII without spaces; check what was pasted.';
    err.hidden = false;
    $('key').focus();
    return;
  }
  try { sessionStorage.setItem(KEY_STORAGE, value); } catch { /* the key then lasts for this page only */ }
  state.key = value;
  $('key').value = '';
  start();
}

/** With a key: restores the view the URL describes and loads it. */
function start() {
  showApp();
  state.filters = filtersFromURL();
  fillInputs(state.filters);
  load();
  const room = roomFromURL();
  if (room) openCall(room, { mode: null });
}

// ---------------------------------------------------------------------------------------------
// Loading the main view

function clearResults() {
  $('logs').tBodies[0].replaceChildren();
  state.total = null;
  state.shown = null;
  state.nextCursor = null;
  state.stats = null;
  state.statsFailed = false;
  $('empty').hidden = true;
  renderStats();
  renderTotals();
  updateMore();
}

/** One stats call and one page of logs, in parallel; a newer load supersedes this one. */
async function load() {
  const gen = ++state.gen;
  state.loadCtl?.abort();
  const ctl = new AbortController();
  state.loadCtl = ctl;
  stopTail();
  const params = serverParams(state.filters);
  state.query = params.toString();
  state.nextCursor = null;
  state.moreToken = null;
  setBusy('more', false);
  updateMore();
  clearError();
  if (state.live.on) setLiveStatus('Restarting for the new filters…', 'pending');
  setBusy('load', true);
  document.body.classList.add('loading');
  $('range-note').textContent = describeRange(state.filters);

  const pageParams = new URLSearchParams(params);
  pageParams.set('limit', String(PAGE_SIZE));
  const [statsR, pageR] = await Promise.allSettled([
    api('/logs/stats', params, ctl.signal),
    api('/logs', pageParams, ctl.signal),
  ]);
  if (gen !== state.gen) return;
  setBusy('load', false);
  document.body.classList.remove('loading');

  let error = null;
  if (pageR.status === 'fulfilled') {
    renderPage(pageR.value);
    state.pageSequence = sequences.get(pageR.value) ?? null;
  } else {
    state.pageSequence = null;
    error = pageR.reason;
    $('logs').tBodies[0].replaceChildren();
    state.shown = null;
    state.nextCursor = null;
    $('empty').hidden = true;
  }
  state.statsFailed = statsR.status !== 'fulfilled';
  if (statsR.status === 'fulfilled') {
    state.stats = statsR.value;
    state.total = num(statsR.value.total);
  } else {
    error = error || statsR.reason;
    state.stats = null;
    state.total = pageR.status === 'fulfilled' ? num(pageR.value.total) : null;
  }
  renderStats();
  renderTotals();
  updateMore();
  if (error) reportError(error, () => load(), 'load');
  // (again, if Live was switched on while this loaded: it follows on from this page)
  if (state.key && state.live.on) startTail();
}

function renderPage(data) {
  const logs = Array.isArray(data.logs) ? data.logs : [];
  const frag = document.createDocumentFragment();
  for (const log of logs) if (isObj(log)) frag.append(logRow(log));
  $('logs').tBodies[0].replaceChildren(frag);
  state.shown = logs.length;
  state.nextCursor = typeof data.next_cursor === 'string' && data.next_cursor ? data.next_cursor : null;
  $('empty').hidden = logs.length > 0;
}

async function loadMore() {
  if (!state.nextCursor || state.moreToken || !state.key) return;
  const gen = state.gen;
  const token = {};
  state.moreToken = token;
  setBusy('more', true);
  updateMore();
  const p = new URLSearchParams(state.query);
  p.set('limit', String(PAGE_SIZE));
  p.set('cursor', state.nextCursor);
  let ok = false;
  try {
    const data = await api('/logs', p, state.loadCtl?.signal);
    if (gen !== state.gen || state.moreToken !== token) return;
    const logs = Array.isArray(data.logs) ? data.logs : [];
    const frag = document.createDocumentFragment();
    for (const log of logs) if (isObj(log)) frag.append(logRow(log));
    $('logs').tBodies[0].append(frag);
    state.shown = (state.shown || 0) + logs.length;
    state.nextCursor = typeof data.next_cursor === 'string' && data.next_cursor ? data.next_cursor : null;
    if (num(data.total) > 0 && state.total == null) state.total = num(data.total);
    clearError('more');
    ok = true;
  } catch (e) {
    if (gen === state.gen) reportError(e, () => loadMore(), 'more');
  } finally {
    if (state.moreToken === token) {
      state.moreToken = null;
      setBusy('more', false);
      renderTotals();
      updateMore();
    }
  }
  // Keep filling while the end of the list is still on screen.
  if (ok && gen === state.gen && state.nextCursor && sentinelInView()) loadMore();
}

function sentinelInView() {
  const s = $('sentinel');
  if (!s.offsetParent) return false;
  const r = s.getBoundingClientRect();
  return r.top < window.innerHeight + 300 && r.bottom >= 0;
}

function updateMore() {
  const btn = $('load-more');
  btn.hidden = !state.nextCursor;
  const loading = !!state.moreToken;
  btn.textContent = loading ? 'Loading…' : 'Load more';
  btn.setAttribute('aria-disabled', loading ? 'true' : 'false');
}

function renderTotals() {
  $('total').textContent = state.total == null ? '–' : fmt(state.total);
  $('total-unit').textContent = state.total === 1 ? 'log' : 'logs';
  if (state.shown == null) $('shown').textContent = '';
  else if (state.total == null) $('shown').textContent = `Showing ${fmt(state.shown)}`;
  else $('shown').textContent = `Showing ${fmt(state.shown)} of ${fmt(Math.max(state.total, state.shown))}`;
}

// ---------------------------------------------------------------------------------------------
// Log rows

const STATUS_GLYPH = { success: '✓', error: '✕' };

function logRow(log, { live = false, call = false, base = NaN } = {}) {
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
    h('span', { class: 'msg', title: message.length > 1000 ? `${message.slice(0, 1000)}…` : message, text: message })));

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

function wireTable(table) {
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

// ---------------------------------------------------------------------------------------------
// Stats: summary, histogram, latency, top assistants

function renderStats() {
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

function renderByType() {
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

// ---------------------------------------------------------------------------------------------
// Call view

async function openCall(room, { opener = null, mode = 'push' } = {}) {
  if (!room || !state.key) return;
  const view = $('call-view');
  const wasOpen = !view.hidden;
  state.room = room;
  writeURL(mode);
  if (!wasOpen) {
    state.scrollBeforeCall = window.scrollY;
    state.callOpener = opener;
  }
  $('dashboard').hidden = true;
  view.hidden = false;
  const title = $('call-title');
  title.replaceChildren('Call ', h('span', { class: 'mono room-name', text: room }));
  document.title = `${room} · logbridge`;
  window.scrollTo(0, 0);
  title.focus({ preventScroll: true });

  const gen = ++state.callGen;
  state.callCtl?.abort();
  const ctl = new AbortController();
  state.callCtl = ctl;
  const tbody = $('call-logs').tBodies[0];
  tbody.replaceChildren();
  $('call-empty').hidden = true;
  $('call-summary').textContent = 'Loading every log of this call…';
  setBusy('call', true);
  view.setAttribute('aria-busy', 'true');

  const all = [];
  let cursor = null;
  let pages = 0;
  try {
    do {
      const p = new URLSearchParams({ room_name: room, limit: String(CALL_PAGE_SIZE) });
      if (cursor) p.set('cursor', cursor);
      const data = await api('/logs', p, ctl.signal);
      if (gen !== state.callGen) return;
      const logs = Array.isArray(data.logs) ? data.logs.filter(isObj) : [];
      for (const l of logs) all.push(l);
      cursor = typeof data.next_cursor === 'string' && data.next_cursor ? data.next_cursor : null;
      pages++;
      if (cursor) $('call-summary').textContent = `Loading every log of this call… ${fmt(all.length)} of ${fmt(num(data.total))}`;
    } while (cursor && pages < CALL_MAX_PAGES);
    all.reverse(); // oldest first
    renderCall(all, !!cursor);
  } catch (e) {
    if (gen !== state.callGen) return;
    $('call-summary').textContent = 'This call could not be read.';
    reportError(e, () => openCall(room, { mode: null }), 'call');
  } finally {
    if (gen === state.callGen) {
      setBusy('call', false);
      view.setAttribute('aria-busy', 'false');
    }
  }
}

function renderCall(logs, truncated) {
  const tbody = $('call-logs').tBodies[0];
  const base = logs.length ? parseTime(logs[0].timestamp) : NaN;
  const frag = document.createDocumentFragment();
  for (const log of logs) frag.append(logRow(log, { call: true, base }));
  tbody.replaceChildren(frag);
  $('call-empty').hidden = logs.length > 0;
  if (!logs.length) {
    $('call-summary').textContent = 'No logs for this room.';
    return;
  }
  const errors = logs.filter((l) => l.status === 'error').length;
  const end = parseTime(logs[logs.length - 1].timestamp);
  const assistants = [...new Set(logs.map((l) => str(l.assistant_id)).filter(Boolean))];
  const parts = [
    `${fmt(logs.length)} ${logs.length === 1 ? 'log' : 'logs'}`,
    `${fmt(errors)} ${errors === 1 ? 'error' : 'errors'}`,
    `${fmtTime(logs[0].timestamp)} → ${fmtTime(logs[logs.length - 1].timestamp)} UTC`,
  ];
  const span = fmtDuration(end - base);
  if (span) parts.push(`lasting ${span}`);
  if (assistants.length) parts.push(`assistant ${assistants.slice(0, 3).join(', ')}${assistants.length > 3 ? '…' : ''}`);
  if (truncated) parts.push(`only the latest ${fmt(logs.length)} are shown`);
  $('call-summary').textContent = parts.join(' · ');
}

/** Closes the call view; `mode` is how the URL records it ("push", "replace" or null). */
function closeCall(mode = 'push', restoreFocus = true) {
  const view = $('call-view');
  const wasOpen = !view.hidden;
  state.callGen++;
  state.callCtl?.abort();
  state.callCtl = null;
  setBusy('call', false);
  view.hidden = true;
  view.setAttribute('aria-busy', 'false');
  $('call-logs').tBodies[0].replaceChildren();
  $('dashboard').hidden = false;
  document.title = 'logbridge';
  const hadRoom = state.room != null;
  state.room = null;
  if (hadRoom) writeURL(mode);
  if (wasOpen && restoreFocus) {
    window.scrollTo(0, state.scrollBeforeCall);
    const opener = state.callOpener;
    if (opener && opener.isConnected) opener.focus({ preventScroll: true });
    else $('main').focus({ preventScroll: true });
  }
  state.callOpener = null;
}

// ---------------------------------------------------------------------------------------------
// Live tail

function setLiveStatus(text, kind = '') {
  const el = $('live-status');
  el.textContent = text;
  el.className = `live-status small${kind ? ` ${kind}` : ''}`;
}

function setLive(on) {
  $('live').checked = on;
  state.live.on = on;
  if (on) {
    state.live.lastId = null;
    startTail();
  } else {
    stopTail();
    setLiveStatus('');
  }
}

function stopTail() {
  const L = state.live;
  L.gen++;
  L.ctl?.abort();
  L.ctl = null;
  L.query = null;
  clearTimeout(L.timer);
  L.timer = 0;
  L.queue = [];
  if (state.errorSource === 'tail') clearError('tail');
}

function startTail() {
  stopTail();
  const L = state.live;
  if (!L.on || !state.key) return;
  const gen = L.gen;
  const ctl = new AbortController();
  L.ctl = ctl;
  L.query = state.query;
  // follow on from the first page shown: logs committed since it was read come first
  L.lastId = state.pageSequence ?? null;
  L.backoff = BACKOFF_MIN;
  tailLoop(gen, ctl, state.query).catch((e) => {
    if (gen === L.gen && e?.name !== 'AbortError') {
      console.error(e);
      setLiveStatus('Live tail failed', 'bad');
    }
  });
}

async function tailLoop(gen, ctl, query) {
  const L = state.live;
  const alive = () => gen === L.gen && !ctl.signal.aborted;
  while (alive()) {
    let connectedAt = 0;
    let received = 0;
    try {
      setLiveStatus(L.lastId == null ? 'Connecting…' : 'Reconnecting…', 'pending');
      const headers = authHeaders({ Accept: 'text/event-stream' });
      if (L.lastId != null) headers['Last-Event-ID'] = L.lastId;
      let res;
      try {
        res = await fetch(query ? `/logs/tail?${query}` : '/logs/tail', { headers, signal: ctl.signal, cache: 'no-store' });
      } catch (e) {
        if (e?.name === 'AbortError') return;
        throw unreachable();
      }
      if (!alive()) return;
      if (!res.ok) {
        const err = await errorFromResponse(res);
        if (!alive()) return;
        if (err.status === 429 || err.status === 503) {
          const wait = Math.min(30000, Math.max(L.backoff, (err.retryAfter || 0) * 1000));
          L.backoff = Math.min(L.backoff * 2, BACKOFF_MAX);
          reportError(err, () => { if (state.live.on) startTail(); else setLive(true); }, 'tail');
          setLiveStatus(`Live tail busy; retrying in ${Math.round(wait / 1000)} s`, 'pending');
          if (!(await sleep(wait, ctl.signal))) return;
          continue;
        }
        if (err.status === 400 && L.lastId != null) {
          // The resume point is no longer valid (e.g. the index was restored): start afresh.
          L.lastId = null;
          continue;
        }
        setLive(false);
        reportError(err, null, 'tail');
        setLiveStatus(`Live tail refused: ${err.message}`, 'bad');
        return;
      }
      connectedAt = Date.now();
      clearError('tail');
      setLiveStatus('Live: waiting for new logs', 'ok');
      const ended = await readEventStream(res.body, {
        onId(id) { if (alive()) L.lastId = id; },
        onEvent(ev) {
          if (!alive()) return false;
          if (ev.type === 'end') {
            let message = ev.data;
            let resumable = false;
            try {
              const parsed = JSON.parse(ev.data);
              if (isObj(parsed) && typeof parsed.message === 'string') message = parsed.message;
              resumable = isObj(parsed) && parsed.resumable === true;
            } catch { /* the data as sent */ }
            flushLive();
            // the server asks us to come back (we fell behind, or it restarts): resume from the
            // last id after the usual backoff, losing nothing
            if (resumable) return 'resume';
            setLive(false);
            setLiveStatus(`Live tail stopped: ${message || 'the server ended the stream'}`, 'bad');
            return true;
          }
          if (ev.type !== 'message') return false;
          let log;
          try { log = JSON.parse(ev.data); } catch { return false; }
          if (!isObj(log)) return false;
          received++;
          enqueueLive(log);
          if (received === 1) setLiveStatus('Live: streaming new logs', 'ok');
          return false;
        },
      });
      if (ended === true || !alive()) return;
      // The server closed the stream without an end event: reconnect.
    } catch (e) {
      if (!alive() || e?.name === 'AbortError') return;
    }
    if (connectedAt && (received > 0 || Date.now() - connectedAt > 10000)) L.backoff = BACKOFF_MIN;
    const wait = L.backoff;
    L.backoff = Math.min(L.backoff * 2, BACKOFF_MAX);
    setLiveStatus(`Connection lost; reconnecting in ${Math.round(wait / 1000)} s…`, 'pending');
    if (!(await sleep(wait, ctl.signal))) return;
  }
}

/** Reads a text/event-stream body; returns what onEvent returned to stop it (true: stop for
 *  good; 'resume': reconnect), or false when the stream ended. */
async function readEventStream(body, { onId, onEvent }) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let data = [];
  let hasData = false;
  let type = '';
  let id;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buf += decoder.decode(value, { stream: true });
      let hold = '';
      if (buf.endsWith('\r')) { hold = '\r'; buf = buf.slice(0, -1); }
      const lines = buf.split(/\r\n|\r|\n/);
      buf = lines.pop() + hold;
      for (const line of lines) {
        if (line === '') {
          if (id !== undefined) { onId(id); id = undefined; }
          if (hasData) {
            const stop = onEvent({ type: type || 'message', data: data.join('\n') });
            if (stop) return stop;
          }
          data = [];
          hasData = false;
          type = '';
          continue;
        }
        if (line.charCodeAt(0) === 58 /* ':' */) continue; // a keep-alive comment
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? '' : line.slice(colon + 1);
        if (val.charCodeAt(0) === 32) val = val.slice(1);
        if (field === 'data') { data.push(val); hasData = true; }
        else if (field === 'event') type = val;
        else if (field === 'id' && !val.includes('\0')) id = val;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function enqueueLive(log) {
  const L = state.live;
  L.queue.push(log);
  if (!L.timer) L.timer = setTimeout(flushLive, 50);
}

/** Prepends the logs that arrived since the last flush, newest on top. */
function flushLive() {
  const L = state.live;
  clearTimeout(L.timer);
  L.timer = 0;
  const batch = L.queue;
  L.queue = [];
  if (!batch.length) return;
  const frag = document.createDocumentFragment();
  for (let i = batch.length - 1; i >= 0; i--) frag.append(logRow(batch[i], { live: true }));
  $('logs').tBodies[0].prepend(frag);
  state.shown = (state.shown || 0) + batch.length;
  state.total = (state.total || 0) + batch.length;
  const by = state.stats && isObj(state.stats.by_type_status) ? state.stats.by_type_status : null;
  if (by) {
    for (const log of batch) {
      const t = str(log.log_type);
      const s = str(log.status);
      if (LOG_TYPES.includes(t) && STATUSES.includes(s)) {
        if (!isObj(by[t])) by[t] = { success: 0, error: 0 };
        by[t][s] = num(by[t][s]) + 1;
      }
    }
    renderByType();
  }
  $('empty').hidden = true;
  renderTotals();
}

// ---------------------------------------------------------------------------------------------
// Export

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

async function exportLogs(format, btn) {
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

// ---------------------------------------------------------------------------------------------
// Wiring

function isTyping(el) {
  if (!(el instanceof Element)) return false;
  if (el.isContentEditable) return true;
  if (el instanceof HTMLTextAreaElement || el instanceof HTMLSelectElement) return true;
  if (el instanceof HTMLInputElement) return !['checkbox', 'radio', 'button', 'submit', 'reset'].includes(el.type);
  return false;
}

function init() {
  $('key-form').addEventListener('submit', onKeySubmit);
  $('forget-key').addEventListener('click', () => forgetKey(''));

  $('filters').addEventListener('submit', (ev) => { ev.preventDefault(); apply(); });
  for (const id of ['f-log_type', 'f-status']) $(id).addEventListener('change', () => apply());
  $('f-range').addEventListener('change', () => {
    if ($('f-range').value === 'custom') {
      $('f-start_time').focus();
      return;
    }
    $('f-start_time').value = '';
    $('f-end_time').value = '';
    apply();
  });
  for (const id of ['f-start_time', 'f-end_time']) {
    $(id).addEventListener('input', () => {
      if ($('f-start_time').value || $('f-end_time').value) $('f-range').value = 'custom';
    });
  }
  $('clear-filters').addEventListener('click', () => {
    fillInputs(emptyFilters());
    apply();
  });

  $('retry').addEventListener('click', () => {
    const retry = state.retry;
    clearError();
    retry?.();
  });
  $('load-more').addEventListener('click', () => loadMore());
  $('live').addEventListener('change', () => setLive($('live').checked));
  $('export-csv').addEventListener('click', (ev) => exportLogs('csv', ev.currentTarget));
  $('export-ndjson').addEventListener('click', (ev) => exportLogs('ndjson', ev.currentTarget));
  $('close-call').addEventListener('click', () => closeCall());

  wireTable($('logs'));
  wireTable($('call-logs'));

  if ('IntersectionObserver' in window) {
    // A short pause before loading, so that a click on #load-more (which scrolls it into
    // view) loads one page, not two.
    let timer = 0;
    const io = new IntersectionObserver((entries) => {
      if (!entries.some((e) => e.isIntersecting) || timer) return;
      timer = setTimeout(() => {
        timer = 0;
        if (!state.moreToken && sentinelInView()) loadMore();
      }, 250);
    }, { rootMargin: '0px 0px 300px 0px' });
    io.observe($('sentinel'));
  }

  if ('ResizeObserver' in window) {
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

  document.addEventListener('keydown', (ev) => {
    if (ev.defaultPrevented) return;
    if (ev.key === 'Escape' && !$('call-view').hidden) {
      ev.preventDefault();
      closeCall();
      return;
    }
    if (ev.key === '/' && !ev.ctrlKey && !ev.metaKey && !ev.altKey && state.key && !isTyping(ev.target)) {
      ev.preventDefault();
      if (!$('call-view').hidden) closeCall();
      const q = $('f-q');
      q.focus();
      q.select();
    }
  });

  window.addEventListener('popstate', () => {
    if (!state.key) return; // the key form reads the URL once a key is given
    const f = filtersFromURL();
    if (pageQuery(f, null) !== pageQuery(state.filters, null)) {
      state.filters = f;
      fillInputs(f);
      load();
    }
    const room = roomFromURL();
    if (room && room !== state.room) openCall(room, { mode: null });
    else if (!room && state.room) closeCall(null);
  });

  renderStats();
  renderTotals();

  let key = null;
  try { key = sessionStorage.getItem(KEY_STORAGE); } catch { /* storage unavailable */ }
  if (key) {
    state.key = key;
    start();
  } else {
    fillInputs(filtersFromURL());
    showKeyForm('');
  }
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
else init();

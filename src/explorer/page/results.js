// The main view's logs: applying the filters, loading the statistics with the first page, reading
// on through the cursor (Load more, or scrolling to the end), and the totals line.

import { state } from './state.js';
import { $ } from './dom.js';
import { fmt, num, isObj } from './format.js';
import { api, sequenceOf, highlightsOf } from './api.js';
import { serverParams, writeURL, fillInputs, readInputs, describeRange } from './filters.js';
import { setBusy, clearError, reportError } from './errors.js';
import { logRow } from './rows.js';
import { renderStats } from './stats.js';
import { liveOn, setLiveStatus, stopTail, startTail } from './live.js';

const PAGE_SIZE = 50;

/** The cursor of the page after the last one shown, and the read of it in progress. */
let nextCursor = null;
let moreToken = null;

/** Reads the inputs, records them in the URL and loads. */
export function apply(mode = 'push') {
  state.filters = readInputs();
  fillInputs(state.filters);
  writeURL(mode);
  load();
}

export function clearResults() {
  $('logs').tBodies[0].replaceChildren();
  state.total = null;
  state.shown = null;
  nextCursor = null;
  state.stats = null;
  state.statsFailed = false;
  $('empty').hidden = true;
  renderStats();
  renderTotals();
  updateMore();
}

/** The performance mark of the latest load's view drawn (each replaces the one before). */
const VIEW_DRAWN = 'logbridge-view-drawn';

/** One stats call and one page of logs, in parallel; a newer load supersedes this one. */
export async function load() {
  const gen = ++state.gen;
  state.loadCtl?.abort();
  const ctl = new AbortController();
  state.loadCtl = ctl;
  stopTail();
  const params = serverParams(state.filters);
  state.query = params.toString();
  nextCursor = null;
  moreToken = null;
  setBusy('more', false);
  updateMore();
  clearError();
  if (liveOn()) setLiveStatus('Restarting for the new filters…', 'pending');
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
    state.marks = highlightsOf(pageR.value);
    renderPage(pageR.value);
    state.pageSequence = sequenceOf(pageR.value);
  } else {
    state.pageSequence = null;
    state.marks = [];
    error = pageR.reason;
    $('logs').tBodies[0].replaceChildren();
    state.shown = null;
    nextCursor = null;
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
  // the page's clock once the frame that shows this load is painted (a task queued from the
  // frame's callback runs after it): how long a view took to appear
  requestAnimationFrame(() => setTimeout(() => {
    performance.clearMarks(VIEW_DRAWN);
    performance.mark(VIEW_DRAWN);
  }));
  if (error) reportError(error, () => load(), 'load');
  // (again, if Live was switched on while this loaded: it follows on from this page)
  if (state.key && liveOn()) startTail();
}

function renderPage(data) {
  const logs = Array.isArray(data.logs) ? data.logs : [];
  const frag = document.createDocumentFragment();
  for (const log of logs) if (isObj(log)) frag.append(logRow(log, { marks: state.marks }));
  $('logs').tBodies[0].replaceChildren(frag);
  state.shown = logs.length;
  nextCursor = typeof data.next_cursor === 'string' && data.next_cursor ? data.next_cursor : null;
  $('empty').hidden = logs.length > 0;
}

export async function loadMore() {
  if (!nextCursor || moreToken || !state.key) return;
  const gen = state.gen;
  const token = {};
  moreToken = token;
  setBusy('more', true);
  updateMore();
  const p = new URLSearchParams(state.query);
  p.set('limit', String(PAGE_SIZE));
  p.set('cursor', nextCursor);
  let ok = false;
  try {
    const data = await api('/logs', p, state.loadCtl?.signal);
    if (gen !== state.gen || moreToken !== token) return;
    const logs = Array.isArray(data.logs) ? data.logs : [];
    const frag = document.createDocumentFragment();
    for (const log of logs) if (isObj(log)) frag.append(logRow(log, { marks: state.marks }));
    $('logs').tBodies[0].append(frag);
    state.shown = (state.shown || 0) + logs.length;
    nextCursor = typeof data.next_cursor === 'string' && data.next_cursor ? data.next_cursor : null;
    if (num(data.total) > 0 && state.total == null) state.total = num(data.total);
    clearError('more');
    ok = true;
  } catch (e) {
    if (gen === state.gen) reportError(e, () => loadMore(), 'more');
  } finally {
    if (moreToken === token) {
      moreToken = null;
      setBusy('more', false);
      renderTotals();
      updateMore();
    }
  }
  // Keep filling while the end of the list is still on screen.
  if (ok && gen === state.gen && nextCursor && sentinelInView()) loadMore();
}

function sentinelInView() {
  const s = $('sentinel');
  if (!s.offsetParent) return false;
  const r = s.getBoundingClientRect();
  return r.top < window.innerHeight + 300 && r.bottom >= 0;
}

function updateMore() {
  const btn = $('load-more');
  btn.hidden = !nextCursor;
  const loading = !!moreToken;
  btn.textContent = loading ? 'Loading…' : 'Load more';
  btn.setAttribute('aria-disabled', loading ? 'true' : 'false');
}

export function renderTotals() {
  $('total').textContent = state.total == null ? '–' : fmt(state.total);
  $('total-unit').textContent = state.total === 1 ? 'log' : 'logs';
  if (state.shown == null) $('shown').textContent = '';
  else if (state.total == null) $('shown').textContent = `Showing ${fmt(state.shown)}`;
  else $('shown').textContent = `Showing ${fmt(state.shown)} of ${fmt(Math.max(state.total, state.shown))}`;
}

/** Reads on when the end of the list scrolls into view. */
export function loadMoreOnScroll() {
  if (!('IntersectionObserver' in window)) return;
  // A short pause before loading, so that a click on #load-more (which scrolls it into
  // view) loads one page, not two.
  let timer = 0;
  const io = new IntersectionObserver((entries) => {
    if (!entries.some((e) => e.isIntersecting) || timer) return;
    timer = setTimeout(() => {
      timer = 0;
      if (!moreToken && sentinelInView()) loadMore();
    }, 250);
  }, { rootMargin: '0px 0px 300px 0px' });
  io.observe($('sentinel'));
}

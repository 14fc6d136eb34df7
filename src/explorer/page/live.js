// The live tail: GET /logs/tail as an event stream, following on from the first page shown,
// reconnecting with backoff, and new logs put on top of the table.

import { state } from './state.js';
import { $ } from './dom.js';
import { str, num, isObj } from './format.js';
import { LOG_TYPES, STATUSES, authHeaders, errorFromResponse, unreachable } from './api.js';
import { clearError, reportError } from './errors.js';
import { renderTotals } from './results.js';
import { logRow } from './rows.js';
import { renderByType } from './stats.js';

const BACKOFF_MIN = 1000;
const BACKOFF_MAX = 10000;

/** Whether the tail is switched on; its current connection (a newer one supersedes it), the last
 *  event id it resumes after, its backoff, and the logs received but not drawn yet. */
const live = { on: false, gen: 0, ctl: null, lastId: null, backoff: BACKOFF_MIN, queue: [], timer: 0 };

/** Whether the live tail is switched on. */
export function liveOn() {
  return live.on;
}

/** Waits `ms`: true, or false as soon as `signal` aborts. */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) { resolve(false); return; }
    const done = (ok) => { clearTimeout(timer); signal?.removeEventListener('abort', onAbort); resolve(ok); };
    const onAbort = () => done(false);
    const timer = setTimeout(() => done(true), ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export function setLiveStatus(text, kind = '') {
  const el = $('live-status');
  el.textContent = text;
  el.className = `live-status small${kind ? ` ${kind}` : ''}`;
}

export function setLive(on) {
  $('live').checked = on;
  live.on = on;
  if (on) {
    live.lastId = null;
    startTail();
  } else {
    stopTail();
    setLiveStatus('');
  }
}

export function stopTail() {
  live.gen++;
  live.ctl?.abort();
  live.ctl = null;
  clearTimeout(live.timer);
  live.timer = 0;
  live.queue = [];
  if (state.errorSource === 'tail') clearError('tail');
}

export function startTail() {
  stopTail();
  if (!live.on || !state.key) return;
  const gen = live.gen;
  const ctl = new AbortController();
  live.ctl = ctl;
  // follow on from the first page shown: logs committed since it was read come first
  live.lastId = state.pageSequence ?? null;
  live.backoff = BACKOFF_MIN;
  tailLoop(gen, ctl, state.query).catch((e) => {
    if (gen === live.gen && e?.name !== 'AbortError') {
      console.error(e);
      setLiveStatus('Live tail failed', 'bad');
    }
  });
}

async function tailLoop(gen, ctl, query) {
  const alive = () => gen === live.gen && !ctl.signal.aborted;
  while (alive()) {
    let connectedAt = 0;
    let received = 0;
    try {
      setLiveStatus(live.lastId == null ? 'Connecting…' : 'Reconnecting…', 'pending');
      const headers = authHeaders({ Accept: 'text/event-stream' });
      if (live.lastId != null) headers['Last-Event-ID'] = live.lastId;
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
          const wait = Math.min(30000, Math.max(live.backoff, (err.retryAfter || 0) * 1000));
          live.backoff = Math.min(live.backoff * 2, BACKOFF_MAX);
          reportError(err, () => { if (live.on) startTail(); else setLive(true); }, 'tail');
          setLiveStatus(`Live tail busy; retrying in ${Math.round(wait / 1000)} s`, 'pending');
          if (!(await sleep(wait, ctl.signal))) return;
          continue;
        }
        if (err.status === 400 && live.lastId != null) {
          // The resume point is no longer valid (e.g. the index was restored): start afresh.
          live.lastId = null;
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
        onId(id) { if (alive()) live.lastId = id; },
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
    if (connectedAt && (received > 0 || Date.now() - connectedAt > 10000)) live.backoff = BACKOFF_MIN;
    const wait = live.backoff;
    live.backoff = Math.min(live.backoff * 2, BACKOFF_MAX);
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
  live.queue.push(log);
  if (!live.timer) live.timer = setTimeout(flushLive, 50);
}

/** Prepends the logs that arrived since the last flush, newest on top. */
function flushLive() {
  clearTimeout(live.timer);
  live.timer = 0;
  const batch = live.queue;
  live.queue = [];
  if (!batch.length) return;
  const frag = document.createDocumentFragment();
  for (let i = batch.length - 1; i >= 0; i--) frag.append(logRow(batch[i], { live: true, marks: state.marks }));
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

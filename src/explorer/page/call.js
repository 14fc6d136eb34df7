// The call view: every log of one room, oldest first, in place of the main view.

import { state } from './state.js';
import { $, h } from './dom.js';
import { fmt, str, num, isObj, fmtTime, parseTime, fmtDuration } from './format.js';
import { api } from './api.js';
import { writeURL } from './filters.js';
import { setBusy, reportError } from './errors.js';
import { logRow } from './rows.js';

const CALL_PAGE_SIZE = 100;
/** At most this many pages of one call are read (20,000 logs). */
const CALL_MAX_PAGES = 200;

/** The current read of a call: a newer one, or closing the view, supersedes it. */
let callGen = 0;
let callCtl = null;
/** What opened the call view, and where the page was scrolled: closing it returns there. */
let callOpener = null;
let scrollBeforeCall = 0;

export async function openCall(room, { opener = null, mode = 'push' } = {}) {
  if (!room || !state.key) return;
  const view = $('call-view');
  const wasOpen = !view.hidden;
  state.room = room;
  writeURL(mode);
  if (!wasOpen) {
    scrollBeforeCall = window.scrollY;
    callOpener = opener;
  }
  $('dashboard').hidden = true;
  view.hidden = false;
  const title = $('call-title');
  title.replaceChildren('Call ', h('span', { class: 'mono room-name', text: room }));
  document.title = `${room} · logbridge`;
  window.scrollTo(0, 0);
  title.focus({ preventScroll: true });

  const gen = ++callGen;
  callCtl?.abort();
  const ctl = new AbortController();
  callCtl = ctl;
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
      if (gen !== callGen) return;
      const logs = Array.isArray(data.logs) ? data.logs.filter(isObj) : [];
      for (const l of logs) all.push(l);
      cursor = typeof data.next_cursor === 'string' && data.next_cursor ? data.next_cursor : null;
      pages++;
      if (cursor) $('call-summary').textContent = `Loading every log of this call… ${fmt(all.length)} of ${fmt(num(data.total))}`;
    } while (cursor && pages < CALL_MAX_PAGES);
    all.reverse(); // oldest first
    renderCall(all, !!cursor);
  } catch (e) {
    if (gen !== callGen) return;
    $('call-summary').textContent = 'This call could not be read.';
    reportError(e, () => openCall(room, { mode: null }), 'call');
  } finally {
    if (gen === callGen) {
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
export function closeCall(mode = 'push', restoreFocus = true) {
  const view = $('call-view');
  const wasOpen = !view.hidden;
  callGen++;
  callCtl?.abort();
  callCtl = null;
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
    window.scrollTo(0, scrollBeforeCall);
    const opener = callOpener;
    if (opener && opener.isConnected) opener.focus({ preventScroll: true });
    else $('main').focus({ preventScroll: true });
  }
  callOpener = null;
}

// The API key: the form that asks for it, the tab's session storage that keeps it, and what
// changes when it is given or forgotten.

import { state } from './state.js';
import { $ } from './dom.js';
import { filtersFromURL, roomFromURL, fillInputs } from './filters.js';
import { setBusy, clearError } from './errors.js';
import { clearResults, load } from './results.js';
import { openCall, closeCall } from './call.js';
import { setLive } from './live.js';
import { loadAlerts, clearAlerts } from './alerts.js';

const KEY_STORAGE = 'logbridge.key';

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
export function forgetKey(message) {
  try { sessionStorage.removeItem(KEY_STORAGE); } catch { /* storage unavailable */ }
  state.key = null;
  state.gen++;
  state.loadCtl?.abort();
  setLive(false);
  state.busy.clear();
  setBusy('load', false);
  clearError();
  clearResults();
  clearAlerts();
  closeCall(null, false);
  showKeyForm(message);
}

export function onKeySubmit(ev) {
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
  loadAlerts();
  const room = roomFromURL();
  if (room) openCall(room, { mode: null });
}

/** On opening the page: goes on with the key this tab kept, or asks for one. */
export function startOrAskForKey() {
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

// What the page says about its requests: aria-busy while any is in progress, and the error box
// (with Retry when a retry can help).

import { state } from './state.js';
import { $ } from './dom.js';
import { ApiError } from './api.js';
import { forgetKey } from './key.js';

export function setBusy(name, on) {
  if (on) state.busy.add(name); else state.busy.delete(name);
  $('main').setAttribute('aria-busy', state.busy.size ? 'true' : 'false');
}

export function clearError(source) {
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
export function reportError(err, retry, source) {
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

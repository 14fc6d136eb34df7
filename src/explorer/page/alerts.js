// The caller's alert rules (GET /alerts): each one's condition and where its alert stands, a form
// that makes a rule of the filters applied, and deleting one. The card shows only to a key of the
// alerts scope; it reads the rules again every few seconds while the page has a key.

import { state } from './state.js';
import { $, h } from './dom.js';
import { api, authHeaders, errorFromResponse, unreachable } from './api.js';

/** How often the rules' states are read again, in milliseconds. */
const REFRESH_MS = 5000;
/** The filters of GET /logs a rule takes: all but the time range, which is its window. */
const RULE_FILTERS = ['log_type', 'status', 'assistant_id', 'room_name', 'q'];

let timer = null;
/** Reads so far: an answer to an older one than the newest is dropped. */
let reads = 0;

/**
 * Reads the rules and shows them, then again every few seconds. A key that may not manage rules
 * (403) hides the card for good; another failure (503 while a cluster's rules move to another
 * gateway) keeps what is shown and tries again later. `data-read` on the card says how the last read ended (`shown`, `hidden`).
 */
export async function loadAlerts() {
  clearTimeout(timer);
  if (!state.key) return;
  const read = ++reads;
  let data = null;
  let refused = false;
  try {
    data = await api('/alerts');
  } catch (e) {
    refused = e?.status === 403;
  }
  if (read !== reads || !state.key) return;
  const card = $('alerts');
  if (refused) {
    card.hidden = true;
    card.dataset.read = 'hidden';
    return;
  }
  if (data) {
    card.hidden = false;
    card.dataset.read = 'shown';
    render(Array.isArray(data.rules) ? data.rules : []);
  }
  timer = setTimeout(loadAlerts, REFRESH_MS);
}

/** Forgets the rules shown (the key is forgotten). */
export function clearAlerts() {
  clearTimeout(timer);
  reads++;
  const card = $('alerts');
  card.hidden = true;
  delete card.dataset.read;
  $('alert-rules').replaceChildren();
}

/** The filters of a rule, as the API shows them: `log_type=… status=…`, or every log. */
function describeFilters(filters) {
  const parts = Object.entries(filters || {}).map(([k, v]) => `${k}=${v}`);
  return parts.length ? parts.join(' ') : 'every log';
}

function describeDeliveries(deliveries) {
  return Object.entries(deliveries || {})
    .filter(([, d]) => d && typeof d.error === 'string')
    .map(([receiver, d]) => `${receiver}: ${d.error} (${d.failures} failed)`);
}

function render(rules) {
  const list = $('alert-rules');
  list.replaceChildren(...rules.map((rule) => {
    const st = rule.state || {};
    const value = typeof st.value === 'number' ? `now ${st.value}` : 'no value';
    const facts = [value];
    if (st.fired_at) facts.push(`fired ${st.fired_at} at ${st.fired_value}`);
    if (st.resolved_at && st.status === 'resolved') facts.push(`resolved ${st.resolved_at}`);
    if (st.error) facts.push(`evaluation failed: ${st.error}`);
    const remove = h('button', { type: 'button', class: 'btn btn-quiet alert-delete', text: 'Delete' });
    remove.addEventListener('click', () => deleteRule(rule.id, remove));
    return h('li', { class: 'alert-rule', 'data-id': rule.id, 'data-status': st.status },
      h('div', { class: 'alert-head' },
        h('span', { class: `badge alert-status status-${st.status}`, text: st.status }),
        h('strong', { class: 'alert-name', text: rule.name }),
        remove),
      h('p', { class: 'alert-condition small', text: `${rule.measure} ${rule.comparison} ${rule.threshold} over ${rule.window}${rule.for && rule.for !== '0s' ? ` for ${rule.for}` : ''} · ${describeFilters(rule.filters)}` }),
      h('p', { class: 'alert-facts muted small', text: facts.join(' · ') }),
      ...describeDeliveries(st.deliveries).map((text) => h('p', { class: 'alert-delivery small', text })));
  }));
  $('alerts-empty').hidden = rules.length > 0;
}

function showFormError(message) {
  const err = $('alert-error');
  err.textContent = message || '';
  err.hidden = !message;
}

/** Sends `method path` with a JSON body; the answer's data, or throws an ApiError. */
async function send(method, path, body) {
  let res;
  try {
    res = await fetch(path, {
      method,
      headers: authHeaders({ Accept: 'application/json', 'Content-Type': 'application/json' }),
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch {
    throw unreachable();
  }
  if (!res.ok) throw await errorFromResponse(res);
  return res.json();
}

/** Makes a rule of the form and the filters applied to the logs. */
export async function createRule(ev) {
  ev.preventDefault();
  const filters = {};
  for (const name of RULE_FILTERS) {
    const value = state.filters[name];
    if (value) filters[name] = value;
  }
  const threshold = Number($('a-threshold').value);
  if ($('a-threshold').value.trim() === '' || !Number.isFinite(threshold)) {
    showFormError('Enter a number as the threshold.');
    return;
  }
  const rule = {
    name: $('a-name').value.trim(),
    filters,
    window: $('a-window').value,
    measure: $('a-measure').value,
    comparison: $('a-comparison').value,
    threshold,
  };
  const submit = $('a-create');
  submit.disabled = true;
  try {
    await send('POST', '/alerts', rule);
    showFormError('');
    $('a-name').value = '';
    await loadAlerts();
  } catch (e) {
    showFormError(e.message);
  } finally {
    submit.disabled = false;
  }
}

async function deleteRule(id, button) {
  button.disabled = true;
  try {
    await send('DELETE', `/alerts/${encodeURIComponent(id)}`);
    showFormError('');
  } catch (e) {
    showFormError(e.message);
  }
  await loadAlerts();
}

// The REST API: its vocabulary, its errors, and JSON requests with the key as a bearer token.
// The streaming endpoints (the live tail, the export) read their bodies themselves.

import { state } from './state.js';
import { isObj } from './format.js';

/** The log types and statuses the API knows. */
export const LOG_TYPES = ['tool_call', 'end_call_webhook', 'inbound_context_lookup'];
export const STATUSES = ['success', 'error'];

export class ApiError extends Error {
  constructor(status, message, retryAfter = null) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

export function authHeaders(extra) {
  return { Authorization: `Bearer ${state.key}`, ...extra };
}

function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

export async function errorFromResponse(res) {
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

export function unreachable() {
  return new ApiError(0, 'Cannot reach logbridge');
}

/** GETs a JSON endpoint and returns its `data`, or throws an ApiError. */
export async function api(path, params, signal) {
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
  // GET /logs tells where it read: a tail from there misses nothing after it (a sequence
  // number, or one per shard for a user spread over several: "3:120,4:97")
  const sequence = res.headers.get('Logbridge-Sequence');
  if (sequence && /^([0-9]+|[0-9]+:[0-9]+(,[0-9]+:[0-9]+)*)$/.test(sequence)) sequences.set(data, sequence);
  // and the words of the search it matched, to mark: "w=timeout&w=ca*"
  const words = res.headers.get('Logbridge-Highlight');
  if (words) highlights.set(data, new URLSearchParams(words).getAll('w'));
  return data;
}

/** The words each GET /logs answer matched its search by. */
const highlights = new WeakMap();

/** The words a GET /logs answer matched its search by (`ca*` for a prefix); none without. */
export function highlightsOf(data) {
  return highlights.get(data) ?? [];
}

/** Where each GET /logs answer was read. */
const sequences = new WeakMap();

/** Where a GET /logs answer was read, or null. */
export function sequenceOf(data) {
  return sequences.get(data) ?? null;
}

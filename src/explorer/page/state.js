// The state more than one module reads or writes. What only one module needs (the live tail's
// connection, the next page's cursor, the open call's opener...) stays in that module.

/** The filters, empty: all logs. */
export function emptyFilters() {
  return { log_type: '', status: '', assistant_id: '', room_name: '', range: '', start_time: '', end_time: '', q: '' };
}

export const state = {
  /** The API key, while the page has one. */
  key: null,
  /** The applied filters, as the URL holds them. */
  filters: emptyFilters(),
  /** The concrete server filters of the last apply (presets resolved to start_time). */
  query: '',
  /** The main view's current load: a newer one, or a forgotten key, supersedes it. */
  gen: 0,
  loadCtl: null,
  /** How many logs match, and how many the table shows. */
  total: null,
  shown: null,
  /** The last GET /logs/stats answer, or null; whether it failed. */
  stats: null,
  statsFailed: false,
  /** What is in progress, for aria-busy. */
  busy: new Set(),
  /** The room of the open call view, or null. */
  room: null,
  /** What the Retry button does, and which part of the page the error shown came from. */
  retry: null,
  errorSource: null,
  /** The sequence number the first page shown was read at: a live tail follows on from it. */
  pageSequence: null,
  /** The words the search matched the page by, to mark in messages (`ca*` for a prefix). */
  marks: [],
};

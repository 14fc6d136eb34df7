// Reading and showing values: server values as text, numbers, times (always UTC), durations and
// sizes. Plain functions of their arguments: no DOM, no state.

const numberFormat = new Intl.NumberFormat('en-US');
export const fmt = (n) => numberFormat.format(n);

/** A server value as display text. */
export function str(v) {
  if (v == null) return '';
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  try { return JSON.stringify(v); } catch { return String(v); }
}
export function num(v) {
  const n = typeof v === 'number' ? v : Number(v);
  return Number.isFinite(n) ? n : 0;
}
export function isObj(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

const TS_RE = /^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(?:[Zz]|[+-]00:?00)$/;
/** "2026-03-10T09:15:42.123Z" → "2026-03-10 09:15:42.123" (UTC). */
export function fmtTime(ts) {
  if (typeof ts !== 'string') return str(ts);
  const m = TS_RE.exec(ts);
  if (m) return `${m[1]} ${m[2]}.${(m[3] || '').padEnd(3, '0').slice(0, 3)}`;
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? ts : d.toISOString().slice(0, 23).replace('T', ' ');
}
export function parseTime(ts) {
  if (typeof ts !== 'string') return NaN;
  return new Date(ts).getTime();
}
/** "2026-03-10 09:15 UTC", for buckets. */
export function fmtMinute(ms) {
  if (!Number.isFinite(ms)) return '?';
  return `${new Date(ms).toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}
/** RFC 3339 without fractional seconds when there are none. */
export function rfc3339(ms) {
  return new Date(ms).toISOString().replace('.000Z', 'Z');
}
/** A datetime-local value, read as UTC, as RFC 3339 ("" when empty or invalid). */
export function localInputToRfc(value) {
  const m = /^(\d{4,}-\d{2}-\d{2})T(\d{2}:\d{2})(:\d{2}(?:\.\d{1,3})?)?$/.exec(value || '');
  if (!m) return '';
  const text = `${m[1]}T${m[2]}${m[3] || ':00'}Z`;
  return Number.isNaN(new Date(text).getTime()) ? '' : text;
}
/** RFC 3339 → a datetime-local value in UTC ("" when it cannot be shown). */
export function rfcToLocalInput(text) {
  if (!text) return '';
  const d = new Date(text);
  if (Number.isNaN(d.getTime())) return '';
  const iso = d.toISOString();
  if (iso.endsWith(':00.000Z')) return iso.slice(0, 16);
  if (iso.endsWith('.000Z')) return iso.slice(0, 19);
  return iso.slice(0, 23);
}
export function fmtMs(v) {
  if (v == null || v === '' || !Number.isFinite(Number(v))) return '–';
  const n = Number(v);
  if (n < 10 && !Number.isInteger(n)) return n.toFixed(1);
  return fmt(Math.round(n));
}
export function fmtDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${Math.round(s % 60)}s`;
  return `${Math.floor(m / 60)}h ${m % 60}m`;
}
export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

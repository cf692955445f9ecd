import { invalidParameter } from './errors.js';

const UNIT_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 604_800_000,
};

const DURATION_RE = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$/;

/** Parses a duration such as `500ms`, `15m`, `24h`, `30d` into milliseconds. */
export function parseDuration(text: string, field: string): number {
  const m = DURATION_RE.exec(text.trim());
  if (!m) throw invalidParameter(field, `${field} must be a duration like 500ms, 15m, 24h or 30d (got ${JSON.stringify(text)})`);
  const ms = Number(m[1]) * (UNIT_MS[m[2] as string] as number);
  if (!Number.isFinite(ms) || ms <= 0) throw invalidParameter(field, `${field} must be a positive duration`);
  return Math.round(ms);
}

/** Latest instant a timestamp may name: the year 9999, well inside the store's u64 keys. */
export const MAX_TIMESTAMP_MS = 253_402_300_799_999;

/**
 * Parses a point in time as the API accepts it: epoch milliseconds, ISO-8601,
 * `now`, or an offset from now (`-15m`, `+1h`). Returns epoch milliseconds.
 */
export function parseTime(text: string, field: string, now: number = Date.now()): number {
  const t = text.trim();
  if (t === 'now') return now;
  if (/^-?\d+$/.test(t)) return checkRange(Number(t), field, text);
  const rel = /^([+-])(.+)$/.exec(t);
  if (rel) {
    const ms = parseDuration(rel[2] as string, field);
    return checkRange(rel[1] === '-' ? now - ms : now + ms, field, text);
  }
  if (/^\d{4}-\d{2}-\d{2}/.test(t)) {
    const ms = Date.parse(t);
    if (!Number.isNaN(ms)) return checkRange(ms, field, text);
  }
  throw invalidParameter(field, `${field} must be epoch milliseconds, ISO-8601, 'now' or a relative offset like -15m (got ${JSON.stringify(text)})`);
}

function checkRange(ms: number, field: string, text: string): number {
  if (!Number.isSafeInteger(ms) || ms < 0 || ms > MAX_TIMESTAMP_MS) {
    throw invalidParameter(field, `${field} is outside the supported range 1970..9999 (got ${JSON.stringify(text)})`);
  }
  return ms;
}

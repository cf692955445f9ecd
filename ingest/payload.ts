import { isUtf8 } from 'node:buffer';
import { TributaryError } from '../core/errors.js';
import { NumberValue, numberProblem, parseJson } from '../core/numbers.js';
import { MAX_TIMESTAMP_MS } from '../core/time.js';
import { ITEM_ATTRIBUTES } from '../store/table-key.js';
import type { ReadingInput, Value, Values } from '../store/types.js';

/** Why a payload was rejected: the label of the rejects counter and log. */
export type RejectReason =
  | 'payload_too_large'
  /** Not UTF-8 (RFC 8259 §8.1: JSON exchanged between systems is UTF-8). */
  | 'invalid_encoding'
  | 'invalid_json'
  | 'invalid_shape'
  | 'invalid_timestamp'
  | 'invalid_value'
  /** A number DynamoDB's Number cannot hold: more than 38 significant digits, or outside 1e-130 to below 1e126 (core/numbers.ts). */
  | 'number_out_of_range'
  | 'too_many_keys'
  | 'too_many_readings'
  /** `ts` later than now plus `maxClockSkew`. */
  | 'timestamp_in_future'
  /** `ts` older than the retention: it would be dropped at once. */
  | 'timestamp_too_old'
  /** A topic under `devices/` whose device id is not valid. */
  | 'invalid_topic'
  /** Refused by the store after decoding (a retention pass raced ingest's own check). */
  | 'rejected_by_store';

/** A payload that cannot become readings: a ValidationError (or PayloadTooLarge) with a reason label. */
export class RejectedPayload extends TributaryError {
  readonly reason: RejectReason;
  constructor(reason: RejectReason, message: string, field?: string) {
    super(reason === 'payload_too_large' ? 'PayloadTooLarge' : 'ValidationError', message, field === undefined ? {} : { field });
    this.reason = reason;
  }
}

export interface PayloadLimits {
  maxPayloadBytes: number;
  /** Most readings in one payload (an array). */
  maxReadings: number;
  /** Most leaf values in one reading. */
  maxKeys: number;
  /** Deepest nesting of objects inside a reading's values. */
  maxDepth: number;
}

export const DEFAULT_LIMITS: Omit<PayloadLimits, 'maxPayloadBytes'> = { maxReadings: 1000, maxKeys: 256, maxDepth: 8 };


/** Decodes a raw MQTT payload (JSON bytes) into readings. */
export function decodePayload(payload: Buffer, limits: PayloadLimits): ReadingInput[] {
  if (payload.length > limits.maxPayloadBytes) {
    throw new RejectedPayload('payload_too_large', `payload of ${payload.length} bytes exceeds the limit of ${limits.maxPayloadBytes} bytes`);
  }
  // toString would quietly turn invalid bytes into U+FFFD and store a corrupted value.
  if (!isUtf8(payload)) throw new RejectedPayload('invalid_encoding', 'payload is not valid UTF-8 (JSON must be UTF-8)');
  let parsed: unknown;
  try {
    parsed = parseJson(payload.toString('utf8'));
  } catch (err) {
    throw new RejectedPayload('invalid_json', `payload is not valid JSON: ${(err as Error).message}`);
  }
  return decodeReadings(parsed, limits);
}

/**
 * Turns a parsed payload into readings. Accepted shapes: a flat or nested object of
 * values (an optional top-level `ts` is its time), `{ "ts": ..., "values": {...} }`,
 * or an array of either. `ts` is epoch milliseconds or an ISO-8601 string; without
 * it the store stamps the reading with its own clock.
 */
export function decodeReadings(input: unknown, limits: Omit<PayloadLimits, 'maxPayloadBytes'>): ReadingInput[] {
  if (Array.isArray(input)) {
    if (input.length === 0) throw new RejectedPayload('invalid_shape', 'payload is an empty array; send at least one reading');
    if (input.length > limits.maxReadings) {
      throw new RejectedPayload('too_many_readings', `payload holds ${input.length} readings; at most ${limits.maxReadings} are accepted in one message`);
    }
    return input.map((item, i) => decodeReading(item, limits, `[${i}]`));
  }
  return [decodeReading(input, limits, '')];
}

function decodeReading(item: unknown, limits: Omit<PayloadLimits, 'maxPayloadBytes'>, where: string): ReadingInput {
  if (!isPlainObject(item)) {
    throw new RejectedPayload('invalid_shape', `reading${where} must be a JSON object (got ${describe(item)})`, where || undefined);
  }
  let rawTs: unknown;
  let values: Record<string, unknown>;
  if ('values' in item && isPlainObject(item.values)) {
    const extra = Object.keys(item).filter((k) => k !== 'ts' && k !== 'values');
    if (extra.length > 0) {
      throw new RejectedPayload('invalid_shape', `reading${where} with "values" may only also have "ts" (found ${extra.map((k) => JSON.stringify(k)).join(', ')})`, `${where}${extra[0]}`);
    }
    rawTs = item.ts;
    values = item.values;
  } else if (Object.hasOwn(item, 'ts')) {
    const { ts, ...rest } = item;
    rawTs = ts;
    values = rest;
  } else {
    // The usual case: the object is the values as is (a fresh parse result, ours to keep).
    values = item;
  }
  const reading: ReadingInput = { values: checkValues(values, limits, where) };
  if (rawTs !== undefined) reading.ts = parseTimestamp(rawTs, where);
  return reading;
}

/** The span of timestamps ingest accepts, relative to the server's clock. */
export interface TimeWindow {
  now: number;
  /** How far past `now` a ts may be. */
  maxFutureMs: number;
  /** How far before `now` a ts may be; 0: no limit (retention off). */
  maxAgeMs: number;
}

/**
 * Rejects readings stamped too far in the future (they would stay the device's "latest"
 * until then) or older than the retention (they would be dropped on the next pass).
 * Readings without `ts` are stamped by the server and always fit.
 */
export function checkTimeWindow(readings: readonly ReadingInput[], w: TimeWindow): void {
  for (let i = 0; i < readings.length; i++) {
    const ts = (readings[i] as ReadingInput).ts;
    if (ts === undefined) continue;
    const field = readings.length > 1 ? `[${i}]ts` : 'ts';
    if (ts > w.now + w.maxFutureMs) {
      throw new RejectedPayload(
        'timestamp_in_future',
        `ts ${ts} (${new Date(ts).toISOString()}) is more than ${w.maxFutureMs} ms ahead of the server's clock (${new Date(w.now).toISOString()}); check the device's clock`,
        field,
      );
    }
    if (w.maxAgeMs > 0 && ts < w.now - w.maxAgeMs) {
      throw new RejectedPayload('timestamp_too_old', `ts ${ts} (${new Date(ts).toISOString()}) is older than the retention of ${w.maxAgeMs} ms`, field);
    }
  }
}

function parseTimestamp(raw: unknown, where: string): number {
  const field = `${where}ts`;
  let ms: number;
  if (typeof raw === 'number') ms = raw;
  else if (typeof raw === 'string' && /^\d{4}-\d{2}-\d{2}/.test(raw)) ms = Date.parse(raw);
  else throw new RejectedPayload('invalid_timestamp', `ts must be epoch milliseconds or an ISO-8601 string (got ${describe(raw)})`, field);
  if (!Number.isSafeInteger(ms) || ms < 0 || ms > MAX_TIMESTAMP_MS) {
    throw new RejectedPayload('invalid_timestamp', `ts must be whole epoch milliseconds between 1970 and 9999 (got ${JSON.stringify(raw)})`, field);
  }
  return ms;
}

function checkValues(values: Record<string, unknown>, limits: Omit<PayloadLimits, 'maxPayloadBytes'>, where: string): Values {
  const keys = Object.keys(values);
  if (keys.length === 0) throw new RejectedPayload('invalid_shape', `reading${where} has no values`, where || undefined);
  for (const k of keys) {
    // The stream images carry these beside the values (store/table-key.ts).
    if (ITEM_ATTRIBUTES.has(k)) throw new RejectedPayload('invalid_value', `"${k}" is an attribute of every item (${[...ITEM_ATTRIBUTES].join(', ')}) and cannot be a value name`, `${where}${k}`);
  }
  checkLevel(values, keys, '', 1, 0, limits, where);
  return values as Values;
}

/**
 * Checks one object level of a reading's values (`keys` are its own keys) and the levels
 * below it; returns the leaf count so far. A plain function over key arrays rather than
 * a closure over `Object.entries`: this runs for every reading on the ingest path.
 */
function checkLevel(obj: Record<string, unknown>, keys: string[], path: string, depth: number, leaves: number, limits: Omit<PayloadLimits, 'maxPayloadBytes'>, where: string): number {
  if (depth > limits.maxDepth) throw new RejectedPayload('invalid_value', `values nest deeper than ${limits.maxDepth} levels at "${path}"`, path);
  for (const k of keys) {
    const v = obj[k];
    if (k.length === 0 || k.includes('.')) {
      const p = path ? `${path}.${k}` : k;
      throw new RejectedPayload('invalid_value', `value names must be non-empty and contain no "." (dots address nested keys): ${JSON.stringify(p)}`, `${where}${p}`);
    }
    if (k === '__proto__') {
      // Every other name is a plain key everywhere; this one cannot come back out of a
      // stream image: unmarshall assigns it, which sets the result's prototype.
      const p = path ? `${path}.${k}` : k;
      throw new RejectedPayload('invalid_value', `"__proto__" cannot be a value name (it does not survive unmarshall, where it sets the object's prototype): ${JSON.stringify(p)}`, `${where}${p}`);
    }
    if (typeof v === 'number' || v instanceof NumberValue) {
      const problem = numberProblem(v);
      if (problem !== undefined) {
        const p = path ? `${path}.${k}` : k;
        throw new RejectedPayload('number_out_of_range', `value "${p}": ${problem}`, `${where}${p}`);
      }
      if (++leaves > limits.maxKeys) throw new RejectedPayload('too_many_keys', `reading${where} has more than ${limits.maxKeys} values`, where || undefined);
      continue;
    }
    if (isPlainObject(v)) {
      const p = path ? `${path}.${k}` : k;
      const inner = Object.keys(v);
      if (inner.length === 0) throw new RejectedPayload('invalid_value', `nested object "${p}" is empty`, `${where}${p}`);
      leaves = checkLevel(v, inner, p, depth + 1, leaves, limits, where);
      continue;
    }
    if (!isScalar(v)) {
      const p = path ? `${path}.${k}` : k;
      throw new RejectedPayload('invalid_value', `value "${p}" must be a number, string, boolean or object (got ${describe(v)})`, `${where}${p}`);
    }
    if (++leaves > limits.maxKeys) throw new RejectedPayload('too_many_keys', `reading${where} has more than ${limits.maxKeys} values`, where || undefined);
  }
  return leaves;
}

/** Numbers are checked before this, by {@link numberProblem}. */
function isScalar(v: unknown): v is Exclude<Value, Values> {
  return typeof v === 'string' || typeof v === 'boolean';
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof NumberValue);
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'string' ? `a string` : `${typeof v} ${JSON.stringify(v)}`.slice(0, 60);
}

/**
 * Pure item logic shared by every TelemetryStore implementation: request validation,
 * item-key assignment for device-stamped readings, change classification and value
 * projection. Nothing here does I/O, so both stores get exactly the same semantics.
 */
import { TributaryError, invalidParameter } from '../core/errors.js';
import { assertDeviceId } from '../core/ids.js';
import { MAX_TIMESTAMP_MS } from '../core/time.js';
import type { DeliveryId, Value, Values, WriteRequest } from './types.js';

/** A reading after validation, with its values encoded once for storage and comparison. */
export interface PreparedReading {
  /** Device-supplied ts, or undefined when the store stamps it at commit. */
  ts: number | undefined;
  /** For device-stamped readings: index among the request's readings with the same ts. */
  seq: number;
  values: Values;
  /** `JSON.stringify(values)` as UTF-8: the stored bytes. */
  json: Buffer;
}

export interface PreparedWrite {
  deviceId: string;
  readings: PreparedReading[];
  delivery: DeliveryId | undefined;
}

function validation(field: string, message: string): TributaryError {
  return new TributaryError('ValidationError', message, { field });
}

/** Whether `ts` is a timestamp the store can key: a safe integer in 0..MAX_TIMESTAMP_MS. */
export function isStorableTs(ts: unknown): ts is number {
  return typeof ts === 'number' && Number.isSafeInteger(ts) && ts >= 0 && ts <= MAX_TIMESTAMP_MS;
}

/**
 * Validates a write request and encodes its values. Device-stamped readings get their
 * seq here: the index among the request's readings with the same ts, so re-sending
 * the same request maps every reading to the same item key (idempotent).
 * @throws TributaryError `InvalidParameter` (deviceId) or `ValidationError` (ts, values, readings, delivery).
 */
export function prepareWrite(req: WriteRequest): PreparedWrite {
  assertDeviceId(req.deviceId);
  const input = req.readings;
  if (!Array.isArray(input) || input.length === 0) throw validation('readings', 'a write needs at least one reading');
  const delivery = req.delivery;
  if (delivery !== undefined) {
    if (typeof delivery.clientId !== 'string' || delivery.clientId.includes('\u0000')) {
      throw validation('clientId', 'client id must be a string without U+0000');
    }
    if (!Number.isInteger(delivery.packetId) || delivery.packetId < 0 || delivery.packetId > 0xffff) {
      throw validation('packetId', 'packet id must be an integer from 0 to 65535');
    }
    if (typeof delivery.payloadHash !== 'string') throw validation('payloadHash', 'payload hash must be a string');
  }
  // Only requests with several readings can repeat a ts; a single reading needs no map.
  const sameTs = input.length > 1 ? new Map<number, number>() : undefined;
  const readings: PreparedReading[] = new Array<PreparedReading>(input.length);
  for (let i = 0; i < input.length; i++) {
    const r = input[i] as WriteRequest['readings'][number];
    const values = r.values;
    if (typeof values !== 'object' || values === null || Array.isArray(values)) {
      throw validation('values', `reading ${i}: values must be a JSON object`);
    }
    const ts = r.ts;
    let seq = 0;
    if (ts !== undefined) {
      if (!isStorableTs(ts)) {
        throw validation('ts', `reading ${i}: ts must be an integer number of epoch milliseconds from 0 to ${MAX_TIMESTAMP_MS} (got ${String(ts)})`);
      }
      if (sameTs !== undefined) {
        seq = sameTs.get(ts) ?? 0;
        sameTs.set(ts, seq + 1);
      }
    }
    let text: string;
    try {
      text = JSON.stringify(values);
    } catch (err) {
      throw new TributaryError('ValidationError', `reading ${i}: values are not serialisable JSON`, { field: 'values', cause: err });
    }
    readings[i] = { ts, seq, values, json: Buffer.from(text, 'utf8') };
  }
  return { deviceId: req.deviceId, readings, delivery };
}

/** Orders item keys: by ts, then seq. */
export function compareItemKeys(aTs: number, aSeq: number, bTs: number, bSeq: number): number {
  return aTs !== bTs ? aTs - bTs : aSeq - bSeq;
}

/** Deep equality of two value objects, ignoring key order. */
export function sameValues(a: Value, b: Value): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  const aKeys = Object.keys(a);
  if (aKeys.length !== Object.keys(b).length) return false;
  for (const k of aKeys) {
    if (!Object.hasOwn(b, k)) return false;
    if (!sameValues(a[k] as Value, b[k] as Value)) return false;
  }
  return true;
}

/** How a write relates to what is stored at its item key. */
export type Classified = { change: 'INSERT' } | { change: 'NONE' } | { change: 'MODIFY'; oldValues: Values };

// Shared results: classification runs once per reading on the hot path.
const INSERT: Classified = Object.freeze({ change: 'INSERT' });
const NONE: Classified = Object.freeze({ change: 'NONE' });

/**
 * Classifies writing `json`/`values` over `existing` (the stored bytes, if any).
 * Identical bytes are the common case of a re-sent reading and skip parsing; otherwise
 * the old image is parsed once, both to compare (key order must not matter) and to
 * become the MODIFY record's OldImage.
 */
export function classify(existing: Buffer | undefined, json: Buffer, values: Values): Classified {
  if (existing === undefined) return INSERT;
  if (existing.equals(json)) return NONE;
  const oldValues = JSON.parse(existing.toString('utf8')) as Values;
  return sameValues(oldValues, values) ? NONE : { change: 'MODIFY', oldValues };
}

interface ProjectionNode {
  /** The whole subtree at this path is kept. */
  all: boolean;
  children: Map<string, ProjectionNode>;
}

/** Keeps only some dotted value paths of a reading. */
export type Projection = (values: Values) => Values;

/**
 * Compiles a `keys` projection once per query. `gps.lat` keeps `{ gps: { lat } }`;
 * `gps` keeps the whole `gps` object; paths that are absent are skipped, so a reading
 * with none of the keys projects to `{}`.
 * @throws TributaryError `InvalidParameter` (field `keys`) on an empty path segment.
 */
export function compileProjection(keys: readonly string[]): Projection {
  const root: ProjectionNode = { all: false, children: new Map() };
  for (const key of keys) {
    const parts = typeof key === 'string' ? key.split('.') : [''];
    if (parts.some((p) => p.length === 0)) throw invalidParameter('keys', `keys must be dotted value paths like gps.lat (got ${JSON.stringify(key)})`);
    let node = root;
    for (const part of parts) {
      let child = node.children.get(part);
      if (child === undefined) {
        child = { all: false, children: new Map() };
        node.children.set(part, child);
      }
      node = child;
    }
    node.all = true;
  }
  return (values) => projectNode(values, root);
}

function projectNode(values: Values, node: ProjectionNode): Values {
  const out: Values = {};
  for (const [name, child] of node.children) {
    if (!Object.hasOwn(values, name)) continue;
    const v = values[name] as Value;
    if (child.all) {
      out[name] = v;
    } else if (typeof v === 'object' && v !== null) {
      const inner = projectNode(v, child);
      if (Object.keys(inner).length > 0) out[name] = inner;
    }
  }
  return out;
}

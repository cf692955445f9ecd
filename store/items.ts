/**
 * Pure item logic shared by every TelemetryStore implementation: request validation,
 * item-key assignment for device-stamped readings, change classification and value
 * projection. Nothing here does I/O, so both stores get exactly the same semantics.
 */
import { TributaryError, invalidParameter } from '../core/errors.js';
import { assertDeviceId } from '../core/ids.js';
import { MAX_TIMESTAMP_MS } from '../core/time.js';
import { NumberValue, parseJson, stringifyJson } from '../core/numbers.js';
import type { BatchOp } from '../streams/types.js';
import type { Aggregate, DeliveryId, KeyAggregates, Value, Values, WriteRequest } from './types.js';

/** Largest seq of an item key (u32). */
const MAX_SEQ = 0xffff_ffff;

/** A reading after validation, with its values encoded once for storage and comparison. */
export interface PreparedReading {
  /** Device-supplied ts, or undefined when the store stamps it at commit. */
  ts: number | undefined;
  /** For device-stamped readings: index among the request's readings with the same ts. */
  seq: number;
  values: Values;
  /** The values' JSON (`stringifyJson`: kept digits written as they are) as UTF-8: the stored bytes. */
  json: Buffer;
}

export interface PreparedWrite {
  deviceId: string;
  readings: PreparedReading[];
  delivery: DeliveryId | undefined;
  source?: number;
  batchOps?: BatchOp[];
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
    if (!Number.isInteger(delivery.payloadHash) || delivery.payloadHash < 0 || delivery.payloadHash >= 2 ** 48) {
      throw validation('payloadHash', 'payload hash must be an integer from 0 to 2^48 - 1');
    }
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
      if (r.seq !== undefined) {
        if (!Number.isInteger(r.seq) || r.seq < 0 || r.seq > MAX_SEQ) throw validation('seq', `reading ${i}: seq must be an integer from 0 to ${MAX_SEQ}`);
        seq = r.seq;
      } else if (sameTs !== undefined) {
        seq = sameTs.get(ts) ?? 0;
        sameTs.set(ts, seq + 1);
      }
    }
    let text: string;
    try {
      text = stringifyJson(values);
    } catch (err) {
      throw new TributaryError('ValidationError', `reading ${i}: values are not serialisable JSON`, { field: 'values', cause: err });
    }
    readings[i] = { ts, seq, values, json: Buffer.from(text, 'utf8') };
  }
  const prepared: PreparedWrite = { deviceId: req.deviceId, readings, delivery };
  if (req.source !== undefined) prepared.source = req.source;
  if (req.batchOps !== undefined) prepared.batchOps = req.batchOps;
  return prepared;
}

/** Orders item keys: by ts, then seq. */
export function compareItemKeys(aTs: number, aSeq: number, bTs: number, bSeq: number): number {
  return aTs !== bTs ? aTs - bTs : aSeq - bSeq;
}

/** Whether a value is a nested map of values (not a leaf: a number kept as digits is an object too). */
export function isValuesMap(v: unknown): v is Values {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof NumberValue);
}

/** The stored JSON text of a reading's values, parsed (kept digits come back as they went in). */
export function parseValues(text: string): Values {
  return parseJson(text) as Values;
}

/** Deep equality of two value objects, ignoring key order. */
export function sameValues(a: Value, b: Value): boolean {
  if (a === b) return true;
  if (a instanceof NumberValue || b instanceof NumberValue) return a instanceof NumberValue && b instanceof NumberValue && a.value === b.value;
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
  const oldValues = parseValues(existing.toString('utf8'));
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
 * Builds the tree of dotted value paths shared by projections, aggregation and per-key
 * latest (`gps.lat` → gps → lat).
 * @throws TributaryError `InvalidParameter` (field `keys`) on an empty path segment.
 */
function keyTree(keys: readonly string[]): ProjectionNode {
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
  return root;
}

/** Validates dotted value paths as every `keys` parameter takes them. */
export function checkKeys(keys: readonly string[]): void {
  if (!Array.isArray(keys) || keys.length === 0) throw invalidParameter('keys', 'keys must list at least one value key');
  keyTree(keys);
}

/**
 * Compiles a `keys` projection once per query. `gps.lat` keeps `{ gps: { lat } }`;
 * `gps` keeps the whole `gps` object; paths that are absent are skipped, so a reading
 * with none of the keys projects to `{}`.
 * @throws TributaryError `InvalidParameter` (field `keys`) on an empty path segment.
 */
export function compileProjection(keys: readonly string[]): Projection {
  const root = keyTree(keys);
  return (values) => projectNode(values, root);
}

function projectNode(values: Values, node: ProjectionNode): Values {
  const out: Values = {};
  for (const [name, child] of node.children) {
    if (!Object.hasOwn(values, name)) continue;
    const v = values[name] as Value;
    if (child.all) {
      out[name] = v;
    } else if (isValuesMap(v)) {
      const inner = projectNode(v, child);
      if (Object.keys(inner).length > 0) out[name] = inner;
    }
  }
  return out;
}

// ------------------------------------------------------------------ leaves

/** A leaf value of a reading. */
export type Leaf = string | number | NumberValue | boolean;
export type LeafVisitor = (path: string, value: Leaf) => void;
/** Visits leaves of a reading's values by their dotted path (`gps.lat`). */
export type LeafWalker = (values: Values, visit: LeafVisitor) => void;

function walkAll(v: Value, path: string, visit: LeafVisitor): void {
  if (isValuesMap(v)) {
    for (const k in v) if (Object.hasOwn(v, k)) walkAll(v[k] as Value, `${path}.${k}`, visit);
    return;
  }
  // null and arrays never pass validation at ingest; they are skipped rather than trusted.
  if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean' || v instanceof NumberValue) visit(path, v);
}

function walkRoot(values: Values, visit: LeafVisitor): void {
  for (const k in values) if (Object.hasOwn(values, k)) walkAll(values[k] as Value, k, visit);
}

function walkSelected(values: Values, node: ProjectionNode, prefix: string, visit: LeafVisitor): void {
  for (const [name, child] of node.children) {
    if (!Object.hasOwn(values, name)) continue;
    const v = values[name] as Value;
    const path = prefix === '' ? name : `${prefix}.${name}`;
    if (child.all) walkAll(v, path, visit);
    else if (isValuesMap(v)) walkSelected(v, child, path, visit);
  }
}

/**
 * Compiles a walker over the leaves of a reading: every leaf, or with `keys` only the
 * leaves at or under those dotted paths. Nested keys are flattened with dots.
 * @throws TributaryError `InvalidParameter` (field `keys`) on an empty path segment.
 */
export function compileLeafWalker(keys?: readonly string[]): LeafWalker {
  if (keys === undefined || keys.length === 0) return walkRoot;
  const root = keyTree(keys);
  return (values, visit) => walkSelected(values, root, '', visit);
}

/** Every leaf of `values` by dotted path. */
export function flattenValues(values: Values): Map<string, Leaf> {
  const out = new Map<string, Leaf>();
  walkRoot(values, (path, value) => out.set(path, value));
  return out;
}

/**
 * Whether `next` has every leaf path `prev` has (as a leaf where `prev` has a leaf, as
 * an object where it has an object). Walks `prev` without allocating.
 */
export function coversPaths(prev: Values, next: Values): boolean {
  for (const k in prev) {
    if (!Object.hasOwn(prev, k)) continue;
    if (!Object.hasOwn(next, k)) return false;
    const a = prev[k];
    const b = next[k];
    const aObject = isValuesMap(a);
    if (aObject !== isValuesMap(b)) return false;
    if (aObject && !coversPaths(a as Values, b as Values)) return false;
  }
  return true;
}

/** Whether the leaf path is selected by `key` (itself, or a leaf under it). */
export function pathMatchesKey(path: string, key: string): boolean {
  return path === key || (path.length > key.length && path.startsWith(key) && path.charCodeAt(key.length) === 0x2e);
}

// ------------------------------------------------------------------ aggregation

/**
 * Running aggregates of one key in one bucket, fed in (ts, seq) order. `count`,
 * `first` and `last` take any value; `sum`, `min`, `max` and `avg` numbers only.
 */
export class KeyAccumulator {
  count = 0;
  /** How many of the values were numbers. */
  numbers = 0;
  /**
   * The sum of the numbers, Neumaier-compensated: `sum + compensation` carries the low-order
   * bits plain addition drops, so the result does not depend on how many readings a bucket
   * holds or (within an ulp or so) on their order — what rollups that merge buckets need.
   */
  private sumHigh = 0;
  private compensation = 0;
  min = Number.POSITIVE_INFINITY;
  max = Number.NEGATIVE_INFINITY;
  first: string | number | boolean = 0;
  last: string | number | boolean = 0;

  /** Numbers kept as digits are added as doubles: aggregates compute in doubles (first and last too). */
  add(leaf: Leaf): void {
    const v = leaf instanceof NumberValue ? Number(leaf.value) : leaf;
    if (this.count === 0) this.first = v;
    this.last = v;
    this.count++;
    if (typeof v === 'number') {
      this.numbers++;
      const t = this.sumHigh + v;
      this.compensation += Math.abs(this.sumHigh) >= Math.abs(v) ? this.sumHigh - t + v : v - t + this.sumHigh;
      this.sumHigh = t;
      if (v < this.min) this.min = v;
      if (v > this.max) this.max = v;
    }
  }

  get sum(): number {
    return this.sumHigh + this.compensation;
  }

  result(aggs: readonly Aggregate[]): KeyAggregates {
    const out: KeyAggregates = {};
    const any = this.numbers > 0;
    for (const a of aggs) {
      switch (a) {
        case 'avg':
          out.avg = any ? this.sum / this.numbers : null;
          break;
        case 'min':
          out.min = any ? this.min : null;
          break;
        case 'max':
          out.max = any ? this.max : null;
          break;
        case 'sum':
          out.sum = any ? this.sum : null;
          break;
        case 'count':
          out.count = this.count;
          break;
        case 'first':
          out.first = this.first;
          break;
        case 'last':
          out.last = this.last;
          break;
      }
    }
    return out;
  }
}

// ------------------------------------------------------------------ registry

/** Tag keys: short names without `=`, which separates key and value in `?tag=key=value` filters and `--tag key=value`. */
export const TAG_KEY_PATTERN = '^[A-Za-z0-9._-]{1,64}$';
const TAG_KEY_RE = new RegExp(TAG_KEY_PATTERN);
export const MAX_TAGS = 50;
export const MAX_TAG_VALUE_LENGTH = 256;

/**
 * Validates a device's tags: at most 50, keys of 1-64 characters of A-Z a-z 0-9 . _ -,
 * string values of at most 256 characters. Returns a copy.
 * @throws TributaryError `ValidationError` (field `tags`).
 */
export function checkTags(tags: unknown): Record<string, string> {
  if (typeof tags !== 'object' || tags === null || Array.isArray(tags)) throw validation('tags', 'tags must be an object of string values');
  const entries = Object.entries(tags);
  if (entries.length > MAX_TAGS) throw validation('tags', `a device has at most ${MAX_TAGS} tags (got ${entries.length})`);
  const out: Record<string, string> = {};
  for (const [k, v] of entries) {
    if (!TAG_KEY_RE.test(k)) throw validation('tags', `tag key ${JSON.stringify(k.slice(0, 80))} must be 1-64 characters of A-Z a-z 0-9 . _ -`);
    if (typeof v !== 'string' || v.length > MAX_TAG_VALUE_LENGTH) throw validation('tags', `tag ${k} must be a string of at most ${MAX_TAG_VALUE_LENGTH} characters`);
    out[k] = v;
  }
  return out;
}

// ------------------------------------------------------------------ retention

const DURATION_UNITS: ReadonlyArray<[string, number]> = [
  ['d', 86_400_000],
  ['h', 3_600_000],
  ['m', 60_000],
  ['s', 1000],
];

/** A duration as people write it: the largest unit that divides it (`30d`, `36h`, `1500ms`). */
export function formatDuration(ms: number): string {
  for (const [unit, size] of DURATION_UNITS) if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}

/**
 * The block codec of storage engine v2 (issues 18 and 19): one device's readings, sorted
 * by (ts, seq), as one compact buffer. Columns, each with the encoding its values allow,
 * then a general-purpose compressor (ADR 0005; the measurements are in `bench/store`):
 *
 * - `ts`: the first value, the first delta, then delta-of-deltas (zigzag varints): a
 *   device reporting at a steady rate costs one zero byte a reading before compression,
 *   next to nothing after (Gorilla, Prometheus chunks).
 * - `seq`: nothing when every seq is 0 (the common case), else varints.
 * - **Shapes**: each reading's value object minus its leaf values (key order and nesting
 *   kept, so a decoded reading serializes to the same JSON), as a dictionary; a block of
 *   readings that all send the same keys stores one shape and no per-reading shape ids.
 *   Sparse keys cost nothing per reading either: a column holds only the readings whose
 *   shape has its path.
 * - One column per leaf path:
 *   - numbers that are decimals with at most 15 digits after the point (what sensors
 *     send: `21.53`, `-67`) as integers scaled by 10^e, delta-coded (DuckDB's ALP makes
 *     the same observation); other numbers as raw doubles;
 *   - strings as a dictionary and indices; booleans as a bitmap;
 *   - anything else (numbers kept as their digits, mixed types in one column) as JSON
 *     text per value, written and read losslessly (core/numbers.ts).
 * - Then deflate (in every supported Node; Node 20's zlib has no zstd) when it pays.
 */
import { deflateRawSync, inflateRawSync, constants as zlib } from 'node:zlib';
import { NumberValue, parseJson, stringifyJson } from '../../core/numbers.js';
import type { Value, Values } from '../types.js';
import { ByteReader, ByteWriter } from './bytes.js';

export interface BlockReading {
  ts: number;
  seq: number;
  values: Values;
}

const VERSION = 1;
const enum Compression {
  None = 0,
  Deflate = 1,
}
const enum Kind {
  Decimal = 1,
  Float = 2,
  Strings = 3,
  Booleans = 4,
  Json = 5,
}
/** Largest decimal exponent tried: beyond it raw doubles are as small. */
const MAX_EXPONENT = 15;
const POW10 = Array.from({ length: MAX_EXPONENT + 1 }, (_, e) => 10 ** e);
/** Scaled integers and their deltas must stay exact in a double, zigzag included. */
const MAX_SCALED = 2 ** 51;

/** A shape compiled for building objects: keys in order, each a leaf (its column) or a nested shape. */
type ShapeNode = Array<{ key: string; leaf: number } | { key: string; child: ShapeNode }>;

/** A nested map of values: an object that is not a number kept as its digits. */
function isObject(v: Value): v is Values {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof NumberValue);
}

/** The shape of a values object as JSON text with every leaf a 0. */
function shapeOf(values: Values): string {
  let out = '{';
  let first = true;
  for (const key of Object.keys(values)) {
    const v = values[key] as Value;
    out += `${first ? '' : ','}${JSON.stringify(key)}:${isObject(v) ? shapeOf(v) : '0'}`;
    first = false;
  }
  return `${out}}`;
}

/** Visits the leaves of `values` in shape order. */
function eachLeaf(values: Values, visit: (v: Value) => void): void {
  for (const key of Object.keys(values)) {
    const v = values[key] as Value;
    if (isObject(v)) eachLeaf(v, visit);
    else visit(v);
  }
}

/** Compiles a shape's JSON text, numbering its leaves through `columnOf` (path → column). */
function compileShape(json: string, columnOf: (path: string[]) => number): ShapeNode {
  const walk = (node: Record<string, unknown>, path: string[]): ShapeNode =>
    Object.keys(node).map((key) => {
      const v = node[key];
      path.push(key);
      const entry = typeof v === 'object' && v !== null ? { key, child: walk(v as Record<string, unknown>, path) } : { key, leaf: columnOf(path) };
      path.pop();
      return entry;
    });
  return walk(JSON.parse(json) as Record<string, unknown>, []);
}

/**
 * Compiles a block's shapes, numbering columns by the order their paths first appear
 * (encoder and decoder agree on it); `leaves[shape]` lists a shape's columns in leaf order.
 */
function compileShapes(texts: readonly string[]): { shapes: ShapeNode[]; index: Map<string, number>; leaves: number[][] } {
  const index = new Map<string, number>();
  const columnOf = (path: string[]): number => {
    const key = JSON.stringify(path);
    let i = index.get(key);
    if (i === undefined) index.set(key, (i = index.size));
    return i;
  };
  const shapes = texts.map((s) => compileShape(s, columnOf));
  const leaves = shapes.map((shape) => {
    const out: number[] = [];
    const walk = (node: ShapeNode): void => node.forEach((e) => ('leaf' in e ? out.push(e.leaf) : walk(e.child)));
    walk(shape);
    return out;
  });
  return { shapes, index, leaves };
}

function build(shape: ShapeNode, next: (column: number) => Value): Values {
  const out: Values = {};
  for (const entry of shape) out[entry.key] = 'leaf' in entry ? next(entry.leaf) : build(entry.child, next);
  return out;
}

/** The smallest e with v = round(v·10^e) / 10^e exactly, or -1. */
function decimalExponent(v: number): number {
  if (!Number.isFinite(v) || Object.is(v, -0)) return -1;
  for (let e = 0; e <= MAX_EXPONENT; e++) {
    const scaled = Math.round(v * (POW10[e] as number));
    if (Math.abs(scaled) > MAX_SCALED) return -1;
    if (scaled / (POW10[e] as number) === v) return e;
  }
  return -1;
}

function encodeNumbers(w: ByteWriter, values: number[]): void {
  let e = 0;
  for (const v of values) {
    const ve = decimalExponent(v);
    if (ve < 0) {
      e = -1;
      break;
    }
    if (ve > e) e = ve;
  }
  if (e >= 0) {
    const scale = POW10[e] as number;
    const ints = values.map((v) => Math.round(v * scale));
    let exact = true;
    for (let i = 0; i < ints.length && exact; i++) {
      exact = (ints[i] as number) / scale === values[i] && Math.abs((ints[i] as number) - (i > 0 ? (ints[i - 1] as number) : 0)) <= MAX_SCALED;
    }
    if (exact) {
      w.u8(Kind.Decimal);
      w.u8(e);
      let prev = 0;
      for (const n of ints) {
        w.zigzag(n - prev);
        prev = n;
      }
      return;
    }
  }
  w.u8(Kind.Float);
  for (const v of values) w.f64(v);
}

function encodeColumn(w: ByteWriter, values: Value[]): void {
  const kind = typeof values[0];
  if (values.every((v) => typeof v === kind)) {
    if (kind === 'number') return encodeNumbers(w, values as number[]);
    if (kind === 'string') {
      const dictionary = new Map<string, number>();
      const indices = (values as string[]).map((s) => {
        let i = dictionary.get(s);
        if (i === undefined) dictionary.set(s, (i = dictionary.size));
        return i;
      });
      w.u8(Kind.Strings);
      w.varint(dictionary.size);
      for (const s of dictionary.keys()) w.string(s);
      for (const i of indices) w.varint(i);
      return;
    }
    if (kind === 'boolean') {
      w.u8(Kind.Booleans);
      for (let i = 0; i < values.length; i += 8) {
        let byte = 0;
        for (let b = 0; b < 8 && i + b < values.length; b++) if (values[i + b]) byte |= 1 << b;
        w.u8(byte);
      }
      return;
    }
  }
  w.u8(Kind.Json);
  for (const v of values) w.string(stringifyJson(v));
}

function decodeColumn(r: ByteReader, count: number): Value[] {
  const kind = r.u8();
  const out = new Array<Value>(count);
  switch (kind) {
    case Kind.Decimal: {
      const scale = POW10[r.u8()];
      if (scale === undefined) throw new RangeError('block: bad decimal exponent');
      let n = 0;
      for (let i = 0; i < count; i++) out[i] = (n += r.zigzag()) / scale;
      return out;
    }
    case Kind.Float:
      for (let i = 0; i < count; i++) out[i] = r.f64();
      return out;
    case Kind.Strings: {
      const dictionary = Array.from({ length: r.varint() }, () => r.string());
      for (let i = 0; i < count; i++) {
        const s = dictionary[r.varint()];
        if (s === undefined) throw new RangeError('block: string index out of range');
        out[i] = s;
      }
      return out;
    }
    case Kind.Booleans:
      for (let i = 0; i < count; i += 8) {
        const byte = r.u8();
        for (let b = 0; b < 8 && i + b < count; b++) out[i + b] = (byte & (1 << b)) !== 0;
      }
      return out;
    case Kind.Json:
      for (let i = 0; i < count; i++) out[i] = parseJson(r.string()) as Value;
      return out;
    default:
      throw new RangeError(`block: unknown column kind ${kind}`);
  }
}

/** Encodes readings of one device, in ascending (ts, seq) order, as one block. */
export function encodeBlock(readings: readonly BlockReading[]): Buffer {
  const w = new ByteWriter(64 + readings.length * 16);
  w.varint(readings.length);
  // Time: first value, first delta, then delta-of-deltas.
  let prevTs = 0;
  let prevDelta = 0;
  readings.forEach((r, i) => {
    if (i > 0 && (r.ts < prevTs || (r.ts === prevTs && r.seq <= (readings[i - 1] as BlockReading).seq))) throw new RangeError('block readings must be in ascending (ts, seq) order');
    if (i === 0) w.varint(r.ts);
    else if (i === 1) w.varint((prevDelta = r.ts - prevTs));
    else {
      const delta = r.ts - prevTs;
      w.zigzag(delta - prevDelta);
      prevDelta = delta;
    }
    prevTs = r.ts;
  });
  const seqs = readings.some((r) => r.seq !== 0);
  w.u8(seqs ? 1 : 0);
  if (seqs) for (const r of readings) w.varint(r.seq);
  // Shapes and columns.
  const shapes = new Map<string, number>();
  const shapeIds = readings.map((r) => {
    const s = shapeOf(r.values);
    let id = shapes.get(s);
    if (id === undefined) shapes.set(s, (id = shapes.size));
    return id;
  });
  w.varint(shapes.size);
  for (const s of shapes.keys()) w.string(s);
  if (shapes.size > 1) for (const id of shapeIds) w.varint(id);
  const { index, leaves } = compileShapes([...shapes.keys()]);
  const columns = Array.from({ length: index.size }, (): Value[] => []);
  readings.forEach((r, i) => {
    const columnsOfShape = leaves[shapeIds[i] as number] as number[];
    let j = 0;
    eachLeaf(r.values, (v) => (columns[columnsOfShape[j++] as number] as Value[]).push(v));
  });
  // Each column behind its byte length, so a reader can skip the ones it does not want.
  const column = new ByteWriter(256);
  for (const values of columns) {
    column.reset();
    encodeColumn(column, values);
    w.varint(column.length);
    w.bytes(column.finish());
  }
  const body = w.finish();
  const packed = deflateRawSync(body, { level: zlib.Z_DEFAULT_COMPRESSION });
  const out = new ByteWriter(packed.length + 8);
  out.u8(VERSION);
  if (packed.length < body.length) {
    out.u8(Compression.Deflate);
    out.varint(body.length);
    out.bytes(packed);
  } else {
    out.u8(Compression.None);
    out.varint(body.length);
    out.bytes(body);
  }
  return out.finish();
}

/** A block's parts once its body is unpacked: time and seq decoded, columns still encoded. */
interface OpenBlock {
  ts: number[];
  seq: number[];
  shapeIds: number[] | undefined;
  shapes: ShapeNode[];
  /** Column number by JSON text of its path. */
  index: Map<string, number>;
  /** A shape's columns in leaf order. */
  leaves: number[][];
  /** Values each column holds: one per reading whose shape has its path. */
  counts: number[];
  /** Each column's encoded bytes. */
  columns: Buffer[];
}

function openBlock(block: Buffer): OpenBlock {
  const head = new ByteReader(block);
  const version = head.u8();
  if (version !== VERSION) throw new RangeError(`block format ${version}; this build reads ${VERSION}`);
  const compression = head.u8();
  const bodyLength = head.varint();
  const payload = block.subarray(head.offset);
  const body = compression === Compression.Deflate ? inflateRawSync(payload, { maxOutputLength: bodyLength }) : payload;
  if (body.length !== bodyLength) throw new RangeError(`block body is ${body.length} bytes, its header says ${bodyLength}`);
  const r = new ByteReader(body);
  const n = r.varint();
  const ts = new Array<number>(n);
  let delta = 0;
  for (let i = 0; i < n; i++) {
    if (i === 0) ts[0] = r.varint();
    else if (i === 1) ts[1] = (ts[0] as number) + (delta = r.varint());
    else ts[i] = (ts[i - 1] as number) + (delta += r.zigzag());
  }
  const seqs = r.u8() === 1;
  const seq = Array.from({ length: n }, () => (seqs ? r.varint() : 0));
  const shapeTexts = Array.from({ length: r.varint() }, () => r.string());
  const shapeIds = shapeTexts.length > 1 ? Array.from({ length: n }, () => r.varint()) : undefined;
  const { shapes, index, leaves } = compileShapes(shapeTexts);
  const counts = new Array<number>(index.size).fill(0);
  for (let i = 0; i < n; i++) for (const c of leaves[shapeIds?.[i] ?? 0] ?? []) counts[c] = (counts[c] as number) + 1;
  const columns = counts.map(() => r.bytes(r.varint()));
  return { ts, seq, shapeIds, shapes, index, leaves, counts, columns };
}

function columnValues(b: OpenBlock, c: number): Value[] {
  return decodeColumn(new ByteReader(b.columns[c] as Buffer), b.counts[c] as number);
}

/** Decodes a block made by {@link encodeBlock}: the same readings, values with the same key order. */
export function decodeBlock(block: Buffer): BlockReading[] {
  const b = openBlock(block);
  const columns = b.columns.map((_, c) => columnValues(b, c));
  const cursor = new Array<number>(columns.length).fill(0);
  const next = (c: number): Value => (columns[c] as Value[])[(cursor[c] = (cursor[c] as number) + 1) - 1] as Value;
  return b.ts.map((ts, i) => ({ ts, seq: b.seq[i] as number, values: build(b.shapes[b.shapeIds?.[i] ?? 0] as ShapeNode, next) }));
}

/** One leaf path's values in a block, with the index of the reading each belongs to. */
export interface BlockColumn {
  path: string[];
  rows: number[];
  values: Value[];
}

/**
 * A block as columns, for scans that need a few keys of many readings (aggregation):
 * only the columns `want` accepts are decoded, and no reading object is built.
 */
export function decodeColumns(block: Buffer, want: (path: readonly string[]) => boolean = () => true): { ts: number[]; seq: number[]; columns: BlockColumn[] } {
  const b = openBlock(block);
  const picked: Array<{ c: number; path: string[] }> = [];
  for (const [key, c] of b.index) {
    const path = JSON.parse(key) as string[];
    if (want(path)) picked.push({ c, path });
  }
  const rowsOf = new Map<number, number[]>(picked.map(({ c }) => [c, []]));
  for (let i = 0; i < b.ts.length; i++) {
    for (const c of b.leaves[b.shapeIds?.[i] ?? 0] ?? []) rowsOf.get(c)?.push(i);
  }
  return { ts: b.ts, seq: b.seq, columns: picked.map(({ c, path }) => ({ path, rows: rowsOf.get(c) as number[], values: columnValues(b, c) })) };
}

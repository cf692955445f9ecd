/**
 * The journal's frame: one group commit, all or nothing (ADR 0005).
 *
 * ```
 * 0  crc32c u32    over bytes [4, length)
 * 4  length u32    the whole frame, header included
 * 8  position u64  the frame's own journal position (so a stale frame is never taken for a new one)
 * 16 commit u64    commit time, epoch ms
 * 24 count u32     records in the frame
 * 28 flags u8, 3 bytes reserved (zero)
 * 32 records       type u8 · payload length (LEB128 varint) · payload
 * ```
 * Integers are little-endian. A length of zero is the never-written part of a segment.
 */
import { crc32c } from './crc32c.js';

export const FRAME_HEADER_BYTES = 32;
/** Largest frame: a group commit is capped far below this (store/engine.ts `commitMaxBatch`). */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

/** One record of a frame: a type the journal does not interpret and its bytes. */
export interface JournalRecord {
  type: number;
  payload: Uint8Array;
}

export interface Frame {
  position: number;
  /** Position just past the frame: where the next one starts. */
  end: number;
  commitTime: number;
  records: JournalRecord[];
}

/** Why no frame could be read at a place: the log's end, or damage. */
export type FrameFault =
  /** Zeros: nothing was ever written here. */
  | 'end'
  /** A header whose length does not fit: a write cut short, or garbage. */
  | 'torn'
  | 'checksum'
  /** A whole frame of another generation of a recycled segment, or misplaced. */
  | 'position';

export type FrameRead = { ok: true; frame: Frame } | { ok: false; fault: FrameFault };

const TWO_32 = 2 ** 32;

function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32LE(value % TWO_32, at);
  buf.writeUInt32LE(Math.floor(value / TWO_32), at + 4);
}

function readU64(buf: Uint8Array, at: number): number {
  const view = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  return view.readUInt32LE(at) + view.readUInt32LE(at + 4) * TWO_32;
}

function varintBytes(n: number): number {
  let bytes = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 0x80);
    bytes++;
  }
  return bytes;
}

/** Encodes records as one frame at `position`. */
export function encodeFrame(records: readonly JournalRecord[], position: number, commitTime: number): Buffer {
  let length = FRAME_HEADER_BYTES;
  for (const r of records) length += 1 + varintBytes(r.payload.length) + r.payload.length;
  if (length > MAX_FRAME_BYTES) throw new RangeError(`a journal frame of ${length} bytes is over the ${MAX_FRAME_BYTES}-byte limit`);
  const buf = Buffer.allocUnsafe(length);
  buf.writeUInt32LE(length, 4);
  writeU64(buf, position, 8);
  writeU64(buf, commitTime, 16);
  buf.writeUInt32LE(records.length, 24);
  buf.writeUInt32LE(0, 28);
  let at = FRAME_HEADER_BYTES;
  for (const r of records) {
    if (!Number.isInteger(r.type) || r.type < 0 || r.type > 0xff) throw new RangeError(`journal record type ${r.type} is not a byte`);
    buf[at++] = r.type;
    let n = r.payload.length;
    while (n >= 0x80) {
      buf[at++] = (n & 0x7f) | 0x80;
      n = Math.floor(n / 0x80);
    }
    buf[at++] = n;
    buf.set(r.payload, at);
    at += r.payload.length;
  }
  buf.writeUInt32LE(crc32c(buf, 4, length), 0);
  return buf;
}

/** The frame length a header at `at` announces, or undefined when fewer than 8 bytes are there. */
export function announcedLength(buf: Uint8Array, at: number): number | undefined {
  if (at + 8 > buf.length) return undefined;
  return Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength).readUInt32LE(at + 4);
}

/**
 * Reads the frame at `buf[at]`, which must be at journal position `position`. The records'
 * payloads are views into `buf`.
 */
export function decodeFrame(buf: Uint8Array, at: number, position: number): FrameRead {
  const length = announcedLength(buf, at);
  if (length === undefined) return { ok: false, fault: isZero(buf, at, buf.length) ? 'end' : 'torn' };
  if (length === 0) return { ok: false, fault: isZero(buf, at, at + 8) ? 'end' : 'torn' };
  if (length < FRAME_HEADER_BYTES || length > MAX_FRAME_BYTES || at + length > buf.length) return { ok: false, fault: 'torn' };
  const view = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (view.readUInt32LE(at) !== crc32c(buf, at + 4, at + length)) return { ok: false, fault: 'checksum' };
  if (readU64(buf, at + 8) !== position) return { ok: false, fault: 'position' };
  const count = view.readUInt32LE(at + 24);
  const records: JournalRecord[] = new Array<JournalRecord>(count);
  let p = at + FRAME_HEADER_BYTES;
  const end = at + length;
  for (let i = 0; i < count; i++) {
    // The checksum matched, so a record running past the frame is a writer's bug, not damage.
    if (p >= end) throw new Error(`journal frame at ${position}: record ${i} of ${count} starts past the frame`);
    const type = buf[p++] as number;
    let n = 0;
    let scale = 1;
    for (;;) {
      const b = buf[p++] as number;
      n += (b & 0x7f) * scale;
      if (b < 0x80) break;
      scale *= 0x80;
    }
    if (p + n > end) throw new Error(`journal frame at ${position}: record ${i} runs past the frame`);
    records[i] = { type, payload: buf.subarray(p, p + n) };
    p += n;
  }
  return { ok: true, frame: { position, end: position + length, commitTime: readU64(buf, at + 16), records } };
}

function isZero(buf: Uint8Array, from: number, to: number): boolean {
  for (let i = from; i < Math.min(to, buf.length); i++) if (buf[i] !== 0) return false;
  return true;
}

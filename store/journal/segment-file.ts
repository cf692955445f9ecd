/**
 * Segment files of the journal (ADR 0005): `<base position, 20 digits>.seg`, a fixed size,
 * a 4 KiB header page, then frames. A file only ever gets its final name with a whole,
 * synced header, so a segment that is listed has a valid header unless it was damaged
 * afterwards.
 *
 * ```
 * header page: 0 magic "TRBJ" · 4 format u16 · 6 reserved u16 · 8 base u64 · 16 created u64
 *              · 24..4092 reserved (the encryption slot of issue 20) · 4092 crc32c of [0, 4092)
 * ```
 */
import { open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32c } from './crc32c.js';

export const SEGMENT_HEADER_BYTES = 4096;
/** Bumped when the segment or frame layout changes; a segment of another version is refused. */
export const JOURNAL_FORMAT_VERSION = 1;
const MAGIC = 0x4a425254; // "TRBJ" read little-endian
const SEGMENT_SUFFIX = '.seg';
const SPARE_PREFIX = 'spare-';
/** Pages are zero-filled one at a time: 1 MiB writes give 1 MiB page-cache folios, and each later fdatasync would write a whole folio back (ADR 0005). */
const FILL_PAGE = Buffer.alloc(4096);
const TWO_32 = 2 ** 32;

export interface SegmentHeader {
  format: number;
  base: number;
  createdAt: number;
}

export function segmentName(base: number): string {
  return `${String(base).padStart(20, '0')}${SEGMENT_SUFFIX}`;
}

/** The segments and spare files of a journal folder; stray `.tmp` files (an unfinished roll) are listed to be removed. */
export async function listSegmentFiles(dir: string): Promise<{ bases: number[]; spares: string[]; stray: string[] }> {
  const bases: number[] = [];
  const spares: string[] = [];
  const stray: string[] = [];
  for (const name of await readdir(dir)) {
    if (/^\d{20}\.seg$/.test(name)) bases.push(Number(name.slice(0, 20)));
    else if (name.startsWith(SPARE_PREFIX) && name.endsWith(SEGMENT_SUFFIX)) spares.push(name);
    else if (name.endsWith('.tmp')) stray.push(name);
  }
  bases.sort((a, b) => a - b);
  return { bases, spares, stray };
}

export function encodeHeader(h: SegmentHeader): Buffer {
  const page = Buffer.alloc(SEGMENT_HEADER_BYTES);
  page.writeUInt32LE(MAGIC, 0);
  page.writeUInt16LE(h.format, 4);
  page.writeUInt32LE(h.base % TWO_32, 8);
  page.writeUInt32LE(Math.floor(h.base / TWO_32), 12);
  page.writeUInt32LE(h.createdAt % TWO_32, 16);
  page.writeUInt32LE(Math.floor(h.createdAt / TWO_32), 20);
  page.writeUInt32LE(crc32c(page, 0, SEGMENT_HEADER_BYTES - 4), SEGMENT_HEADER_BYTES - 4);
  return page;
}

/** The header, or a sentence saying what is wrong with it. */
export function decodeHeader(page: Buffer): SegmentHeader | string {
  if (page.length < SEGMENT_HEADER_BYTES) return `the header page is ${page.length} bytes, not ${SEGMENT_HEADER_BYTES}`;
  if (page.readUInt32LE(0) !== MAGIC) return 'it does not start with the journal magic "TRBJ"';
  if (page.readUInt32LE(SEGMENT_HEADER_BYTES - 4) !== crc32c(page, 0, SEGMENT_HEADER_BYTES - 4)) return 'its header checksum does not match';
  return {
    format: page.readUInt16LE(4),
    base: page.readUInt32LE(8) + page.readUInt32LE(12) * TWO_32,
    createdAt: page.readUInt32LE(16) + page.readUInt32LE(20) * TWO_32,
  };
}

export async function readHeader(file: FileHandle): Promise<SegmentHeader | string> {
  const page = Buffer.alloc(SEGMENT_HEADER_BYTES);
  const { bytesRead } = await file.read(page, 0, SEGMENT_HEADER_BYTES, 0);
  return decodeHeader(page.subarray(0, bytesRead));
}

/** Makes a blank file of `bytes`, every page written with zeros (or sparse, with `zeroFill` off), synced. */
export async function createSpare(dir: string, bytes: number, zeroFill: boolean): Promise<string> {
  const name = `${SPARE_PREFIX}${Date.now()}-${Math.random().toString(16).slice(2, 10)}${SEGMENT_SUFFIX}`;
  const tmp = join(dir, `${name}.tmp`);
  const file = await open(tmp, 'w');
  try {
    if (zeroFill) for (let at = 0; at < bytes; at += FILL_PAGE.length) await file.write(FILL_PAGE, 0, Math.min(FILL_PAGE.length, bytes - at), at);
    else await file.truncate(bytes);
    await file.datasync();
  } finally {
    await file.close();
  }
  await rename(tmp, join(dir, name));
  await syncDir(dir);
  return name;
}

/**
 * Turns a spare file (blank, or a released segment with stale frames) into the segment
 * starting at `base`: header written and synced under a temporary name, then renamed.
 */
export async function installSegment(dir: string, spare: string, header: SegmentHeader): Promise<void> {
  const tmp = join(dir, `${segmentName(header.base)}.tmp`);
  await rename(join(dir, spare), tmp);
  const file = await open(tmp, 'r+');
  try {
    await file.write(encodeHeader(header), 0, SEGMENT_HEADER_BYTES, 0);
    await file.datasync();
  } finally {
    await file.close();
  }
  await rename(tmp, join(dir, segmentName(header.base)));
  await syncDir(dir);
}

/** Keeps a released segment's file as a spare to be reused (its blocks stay allocated), or deletes it. */
export async function retireSegment(dir: string, base: number, keepAsSpare: boolean): Promise<void> {
  const from = join(dir, segmentName(base));
  if (keepAsSpare) await rename(from, join(dir, `${SPARE_PREFIX}${base}${SEGMENT_SUFFIX}`));
  else await unlink(from);
}

/** fsync of the folder, so that a created, renamed or removed file survives a power loss. */
export async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

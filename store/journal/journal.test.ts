import { readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/helpers.js';
import { encodeFrame, FRAME_HEADER_BYTES } from './frame.js';
import { Journal, type JournalDamage } from './journal.js';
import { encodeHeader, SEGMENT_HEADER_BYTES, segmentName } from './segment-file.js';

const SEGMENT = 16 * 1024;

function records(i: number): Array<{ type: number; payload: Uint8Array }> {
  // Two records of different types and sizes per frame, derived from i so content can be checked.
  return [
    { type: 1, payload: Buffer.from(`reading-${i}-`.repeat(1 + (i % 7))) },
    { type: 4, payload: Buffer.alloc(i % 200, i & 0xff) },
  ];
}

async function readAll(journal: Journal, from = journal.start, onDamage?: (d: JournalDamage) => void): Promise<Array<{ position: number; commitTime: number; records: Array<{ type: number; payload: string }> }>> {
  const out = [];
  for await (const f of journal.read(from, onDamage)) out.push({ position: f.position, commitTime: f.commitTime, records: f.records.map((r) => ({ type: r.type, payload: Buffer.from(r.payload).toString('hex') })) });
  return out;
}

function expected(i: number): Array<{ type: number; payload: string }> {
  return records(i).map((r) => ({ type: r.type, payload: Buffer.from(r.payload).toString('hex') }));
}

async function appendFrames(journal: Journal, from: number, to: number): Promise<number[]> {
  const positions: number[] = [];
  for (let i = from; i < to; i++) positions.push((await journal.append(records(i), 1_764_150_000_000 + i)).position);
  return positions;
}

describe('journal', () => {
  const dirs: Array<{ cleanup: () => void }> = [];
  const open: Journal[] = [];
  afterEach(async () => {
    for (const j of open.splice(0)) await j.close();
    for (const d of dirs.splice(0)) d.cleanup();
  });
  async function openJournal(dir: string, opts: { segmentBytes?: number; zeroFill?: boolean } = {}): Promise<Journal> {
    const j = await Journal.open({ dir, segmentBytes: SEGMENT, zeroFill: false, ...opts });
    open.push(j);
    return j;
  }
  async function closeJournal(j: Journal): Promise<void> {
    await j.close();
    open.splice(open.indexOf(j), 1);
  }
  async function reopen(j: Journal, dir: string): Promise<Journal> {
    await closeJournal(j);
    return openJournal(dir);
  }
  function newDir(): string {
    const d = tempDir('tributary-journal-');
    dirs.push(d);
    return d.path;
  }

  it('reads back every appended frame, in order, after a reopen too', async () => {
    const dir = newDir();
    let j = await openJournal(dir, { zeroFill: true });
    expect(j.recovery).toMatchObject({ end: 0, tornTail: undefined, damaged: [] });
    const positions = await appendFrames(j, 0, 20);
    expect(positions[0]).toBe(0);
    const before = await readAll(j);
    expect(before.map((f) => f.records)).toEqual(Array.from({ length: 20 }, (_, i) => expected(i)));
    expect(before.map((f) => f.position)).toEqual(positions);
    expect(before.map((f) => f.commitTime)).toEqual(Array.from({ length: 20 }, (_, i) => 1_764_150_000_000 + i));
    const end = j.end;
    j = await reopen(j, dir);
    expect(j.recovery).toMatchObject({ end, tornTail: undefined, damaged: [] });
    expect(await readAll(j)).toEqual(before);
    // Reading from a frame in the middle gives the rest.
    expect((await readAll(j, positions[12])).map((f) => f.position)).toEqual(positions.slice(12));
    await expect(readAll(j, (positions[12] as number) + 1)).rejects.toThrow(/not the start of a frame/);
  });

  it('rolls to new segments whose bases continue the positions, and releases and reuses old ones', async () => {
    const dir = newDir();
    let j = await openJournal(dir);
    await appendFrames(j, 0, 400);
    const segs = readdirSync(dir).filter((n) => /^\d{20}\.seg$/.test(n));
    expect(segs.length).toBeGreaterThan(3);
    for (const n of segs) expect(statSync(join(dir, n)).size).toBe(SEGMENT);
    const all = await readAll(j);
    expect(all.map((f) => f.records)).toEqual(Array.from({ length: 400 }, (_, i) => expected(i)));
    // Release everything below frame 350: whole segments only, never the active one.
    const cut = all[350]?.position as number;
    const released = await j.release(cut);
    expect(released).toBeGreaterThan(0);
    expect(j.start).toBeLessThanOrEqual(cut);
    expect(readdirSync(dir).filter((n) => n.startsWith('spare-'))).toHaveLength(2);
    await expect(readAll(j, 0)).rejects.toThrow(/released/);
    const kept = await readAll(j, j.start);
    expect(kept.at(-1)).toEqual(all.at(-1));
    // New segments reuse the spares: their stale frames are never read as new ones.
    await appendFrames(j, 400, 800);
    j = await reopen(j, dir);
    expect(j.recovery.tornTail).toBeUndefined();
    expect(j.recovery.damaged).toEqual([]);
    const after = await readAll(j, cut);
    expect(after.map((f) => f.records)).toEqual(Array.from({ length: 450 }, (_, i) => expected(350 + i)));
  });

  it('cuts a torn tail at the last whole frame, says so once, and appends over it', async () => {
    const dir = newDir();
    let j = await openJournal(dir);
    const positions = await appendFrames(j, 0, 10);
    const name = segmentName(0);
    await closeJournal(j);
    // Cut the last frame in the middle, as a crash during its write would.
    const lastStart = SEGMENT_HEADER_BYTES + (positions[9] as number);
    truncateSync(join(dir, name), lastStart + FRAME_HEADER_BYTES + 3);
    j = await openJournal(dir);
    expect(j.recovery.tornTail).toMatchObject({ position: positions[9], segment: name });
    expect(j.recovery.end).toBe(positions[9]);
    expect((await readAll(j)).map((f) => f.records)).toEqual(Array.from({ length: 9 }, (_, i) => expected(i)));
    // A shorter frame goes where the torn one was; the remains of the torn one are gone.
    const { position } = await j.append([{ type: 2, payload: Buffer.from('after the crash') }], 1);
    expect(position).toBe(positions[9]);
    j = await reopen(j, dir);
    expect(j.recovery.tornTail).toBeUndefined();
    expect(j.recovery.damaged).toEqual([]);
    const frames = await readAll(j);
    expect(frames).toHaveLength(10);
    expect(frames[9]?.records).toEqual([{ type: 2, payload: Buffer.from('after the crash').toString('hex') }]);
  });

  it('detects a flipped byte: in the last frame it is a torn tail, in an earlier frame the frames after it survive', async () => {
    const dir = newDir();
    let j = await openJournal(dir);
    const positions = await appendFrames(j, 0, 10);
    await closeJournal(j);
    const file = join(dir, segmentName(0));
    const bytes = readFileSync(file);
    const flip = (position: number, offset: number): void => {
      const at = SEGMENT_HEADER_BYTES + position + offset;
      bytes[at] = (bytes[at] as number) ^ 0x10;
    };
    flip(positions[4] as number, 40); // inside a record of frame 4
    flip(positions[9] as number, 2); // inside the checksum of the last frame
    writeFileSync(file, bytes);

    j = await openJournal(dir);
    expect(j.recovery.damaged).toEqual([{ position: positions[4], fault: 'checksum', resumedAt: positions[5], segment: segmentName(0) }]);
    expect(j.recovery.tornTail).toMatchObject({ position: positions[9], fault: 'checksum' });
    expect(j.end).toBe(positions[9]);
    const frames = await readAll(j);
    expect(frames.map((f) => f.position)).toEqual([0, 1, 2, 3, 5, 6, 7, 8].map((i) => positions[i]));
    expect(frames.map((f) => f.records)).toEqual([0, 1, 2, 3, 5, 6, 7, 8].map(expected));
  });

  it('finds damage in a sealed segment while reading and skips to the next whole frame', async () => {
    const dir = newDir();
    let j = await openJournal(dir);
    const positions = await appendFrames(j, 0, 200);
    await closeJournal(j);
    const file = join(dir, segmentName(0));
    const bytes = readFileSync(file);
    const at = SEGMENT_HEADER_BYTES + (positions[3] as number) + 50;
    bytes[at] = (bytes[at] as number) ^ 0xff;
    writeFileSync(file, bytes);
    j = await openJournal(dir);
    expect(j.recovery.damaged).toEqual([]); // only the last segment is scanned at open
    const damage: JournalDamage[] = [];
    const frames = await readAll(j, 0, (d) => damage.push(d));
    expect(damage).toEqual([{ position: positions[3], fault: 'checksum', resumedAt: positions[4], segment: segmentName(0) }]);
    expect(frames.map((f) => f.position)).toEqual(positions.filter((_, i) => i !== 3));
  });

  it('refuses a segment of another format version, naming the file', async () => {
    const dir = newDir();
    const j = await openJournal(dir);
    await appendFrames(j, 0, 2);
    await closeJournal(j);
    const file = join(dir, segmentName(0));
    const bytes = readFileSync(file);
    encodeHeader({ format: 99, base: 0, createdAt: 1 }).copy(bytes, 0);
    writeFileSync(file, bytes);
    await expect(Journal.open({ dir, segmentBytes: SEGMENT })).rejects.toThrow(new RegExp(`${segmentName(0)} has format 99; this build reads format 1`));
  });

  it('refuses overlapping appends and frames larger than a segment', async () => {
    const dir = newDir();
    const j = await openJournal(dir);
    const first = j.append(records(1), 1);
    await expect(j.append(records(2), 2)).rejects.toThrow(/must not overlap/);
    await first;
    await expect(j.append([{ type: 1, payload: Buffer.alloc(SEGMENT) }], 3)).rejects.toThrow(/does not fit/);
    expect((await readAll(j)).map((f) => f.records)).toEqual([expected(1)]);
  });

  it('encodes a frame that only its own position decodes', () => {
    const frame = encodeFrame(records(3), 4096, 7);
    expect(frame.length).toBe(FRAME_HEADER_BYTES + records(3).reduce((n, r) => n + 2 + r.payload.length, 0));
  });
});

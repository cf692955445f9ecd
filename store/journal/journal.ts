/**
 * The journal (ADR 0005): an append-only sequence of frames in fixed-size segment files,
 * each frame one group commit, checksummed and carrying its own position. Positions are
 * byte offsets over all frames, contiguous across segments (a segment's base is where the
 * one before it ended), so a sealed segment's end is the next one's base and a fault
 * before it can only be damage.
 *
 * One append at a time: a frame is written only after the previous one is synced, so
 * after a crash the only frame that can be torn is the last, and a whole frame found
 * after a bad one means the bad one was damaged after it was synced. Nothing is zeroed on
 * recovery: a new frame over a torn one carries the same position, and what the torn one
 * leaves behind it cannot pass as a frame (it would need the right position *and*
 * checksum), nor can the stale frames of a recycled segment (their positions are older).
 */
import { mkdir, open, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { announcedLength, decodeFrame, encodeFrame, FRAME_HEADER_BYTES, MAX_FRAME_BYTES, type Frame, type FrameFault, type JournalRecord } from './frame.js';
import {
  createSpare,
  installSegment,
  JOURNAL_FORMAT_VERSION,
  listSegmentFiles,
  readHeader,
  retireSegment,
  SEGMENT_HEADER_BYTES,
  segmentName,
} from './segment-file.js';

export const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
/** Released segments kept to be reused: a reused file's blocks are allocated, so its fdatasyncs are cheaper (ADR 0005). */
const MAX_SPARES = 2;
const READ_CHUNK = 4 * 1024 * 1024;

export interface JournalOptions {
  dir: string;
  /** Size of each segment file, header included. Default 64 MiB. */
  segmentBytes?: number;
  /** Write zeros into every page of a new segment (default) instead of leaving it sparse; tests turn it off. */
  zeroFill?: boolean;
  now?: () => number;
}

/** Damage found in the journal: where, what, and where whole frames resumed (undefined: not within reach). */
export interface JournalDamage {
  position: number;
  fault: FrameFault | 'header';
  resumedAt: number | undefined;
  segment: string;
}

export interface RecoveryReport {
  segments: number;
  /** Position after the last whole frame: where the next append goes. */
  end: number;
  /** Bytes after the last whole frame that are not a frame: the torn write of a crash. */
  tornTail: JournalDamage | undefined;
  /** Damaged frames with whole frames after them, skipped. */
  damaged: JournalDamage[];
}

interface Segment {
  base: number;
  name: string;
}

export class Journal {
  readonly recovery: RecoveryReport;
  private readonly dir: string;
  private readonly segmentBytes: number;
  private readonly zeroFill: boolean;
  private readonly now: () => number;
  private readonly segments: Segment[];
  private activeFile: FileHandle;
  private endPosition: number;
  private spares: string[];
  private preparing: Promise<void> | undefined;
  private appending = false;
  private closed = false;
  /** Damaged ranges found so far: position of the bad frame → where whole frames resume. */
  private readonly skips = new Map<number, number | undefined>();

  private constructor(opts: Required<JournalOptions>, segments: Segment[], active: FileHandle, spares: string[], recovery: RecoveryReport) {
    this.dir = opts.dir;
    this.segmentBytes = opts.segmentBytes;
    this.zeroFill = opts.zeroFill;
    this.now = opts.now;
    this.segments = segments;
    this.activeFile = active;
    this.spares = spares;
    this.recovery = recovery;
    this.endPosition = recovery.end;
    for (const d of [...recovery.damaged, ...(recovery.tornTail ? [recovery.tornTail] : [])]) this.skips.set(d.position, d.resumedAt);
  }

  /** Opens the journal in `dir` (created when missing), finding the end of its last segment. */
  static async open(options: JournalOptions): Promise<Journal> {
    const opts: Required<JournalOptions> = { segmentBytes: DEFAULT_SEGMENT_BYTES, zeroFill: true, now: Date.now, ...options };
    if (opts.segmentBytes < SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES * 2) throw new RangeError(`journal segments of ${opts.segmentBytes} bytes are too small`);
    await mkdir(opts.dir, { recursive: true });
    const listed = await listSegmentFiles(opts.dir);
    for (const name of listed.stray) await unlink(join(opts.dir, name));
    const damaged: JournalDamage[] = [];
    const segments: Segment[] = [];
    for (const base of listed.bases) {
      const name = segmentName(base);
      const file = await open(join(opts.dir, name), 'r');
      const header = await readHeader(file).finally(() => file.close());
      if (typeof header === 'string') {
        damaged.push({ position: base, fault: 'header', resumedAt: undefined, segment: name });
        continue;
      }
      if (header.format !== JOURNAL_FORMAT_VERSION) {
        throw new Error(`journal segment ${join(opts.dir, name)} has format ${header.format}; this build reads format ${JOURNAL_FORMAT_VERSION}`);
      }
      if (header.base !== base) throw new Error(`journal segment ${join(opts.dir, name)} says it starts at ${header.base}, its name at ${base}`);
      segments.push({ base, name });
    }
    const spares = [...listed.spares];
    let tornTail: JournalDamage | undefined;
    let end = 0;
    if (segments.length === 0) {
      const spare = spares.pop() ?? (await createSpare(opts.dir, opts.segmentBytes, opts.zeroFill));
      await installSegment(opts.dir, spare, { format: JOURNAL_FORMAT_VERSION, base: 0, createdAt: opts.now() });
      segments.push({ base: 0, name: segmentName(0) });
    } else {
      const last = segments[segments.length - 1] as Segment;
      const found = await findEnd(opts.dir, last);
      end = found.end;
      damaged.push(...found.damaged);
      tornTail = found.tornTail;
    }
    const active = await open(join(opts.dir, (segments[segments.length - 1] as Segment).name), 'r+');
    return new Journal(opts, segments, active, spares, { segments: segments.length, end, tornTail, damaged });
  }

  /** Position where the next frame goes: everything below it is durable. */
  get end(): number {
    return this.endPosition;
  }

  /** Position of the oldest retained frame. */
  get start(): number {
    return (this.segments[0] as Segment).base;
  }

  /**
   * Appends `records` as one frame and syncs it (fdatasync). Resolves once durable with
   * the frame's position; one append at a time (the group commit serializes them).
   */
  async append(records: readonly JournalRecord[], commitTime: number): Promise<{ position: number; end: number }> {
    if (this.closed) throw new Error('the journal is closed');
    if (this.appending) throw new Error('journal appends must not overlap: wait for the previous one');
    this.appending = true;
    try {
      const position = this.endPosition;
      const frame = encodeFrame(records, position, commitTime);
      const capacity = this.segmentBytes - SEGMENT_HEADER_BYTES;
      if (frame.length > capacity) throw new RangeError(`a frame of ${frame.length} bytes does not fit a ${this.segmentBytes}-byte segment`);
      let active = this.segments[this.segments.length - 1] as Segment;
      if (position - active.base + frame.length > capacity) active = await this.roll();
      const offset = SEGMENT_HEADER_BYTES + (position - active.base);
      const { bytesWritten } = await this.activeFile.write(frame, 0, frame.length, offset);
      if (bytesWritten !== frame.length) throw new Error(`journal write of ${frame.length} bytes wrote ${bytesWritten}`);
      await this.activeFile.datasync();
      this.endPosition = position + frame.length;
      if (offset + frame.length > this.segmentBytes / 2) this.prepareSpare();
      return { position, end: this.endPosition };
    } finally {
      this.appending = false;
    }
  }

  /**
   * The durable frames from position `from` (the start of a frame, as `append` or an
   * earlier read returned it) up to the end at the time of the call. Damaged frames are
   * skipped, and reported through `onDamage`.
   */
  async *read(from: number, onDamage?: (d: JournalDamage) => void): AsyncGenerator<Frame> {
    if (from < this.start) throw new RangeError(`journal position ${from} was released (the journal starts at ${this.start})`);
    const stop = this.endPosition;
    if (from > stop) throw new RangeError(`journal position ${from} is past the end (${stop})`);
    let position = from;
    let first = true;
    while (position < stop) {
      const index = this.segmentIndexOf(position);
      const seg = this.segments[index] as Segment;
      const limit = index + 1 < this.segments.length ? (this.segments[index + 1] as Segment).base : stop;
      const file = await open(join(this.dir, seg.name), 'r');
      try {
        let buf: Buffer = Buffer.alloc(0);
        let bufStart = position;
        while (position < limit) {
          if (this.skips.has(position)) {
            const resume = this.skips.get(position);
            position = resume ?? limit;
            first = false;
            continue;
          }
          let at = position - bufStart;
          const need = announcedLength(buf, at);
          if (need === undefined || need < FRAME_HEADER_BYTES || at + need > buf.length) {
            const want = Math.min(Math.max(READ_CHUNK, need !== undefined && need <= MAX_FRAME_BYTES ? need : 0), limit - position);
            buf = await readAt(file, SEGMENT_HEADER_BYTES + (position - seg.base), want);
            bufStart = position;
            at = 0;
          }
          const read = decodeFrame(buf, at, position);
          if (read.ok) {
            first = false;
            position = read.frame.end;
            yield read.frame;
            continue;
          }
          if (first) throw new RangeError(`journal position ${position} is not the start of a frame (${read.fault})`);
          // Damage in a part already synced: find where whole frames resume.
          const window = await readAt(file, SEGMENT_HEADER_BYTES + (position - seg.base), Math.min(MAX_FRAME_BYTES + FRAME_HEADER_BYTES, limit - position));
          const resumedAt = resync(window, position, limit);
          const damage: JournalDamage = { position, fault: read.fault, resumedAt, segment: seg.name };
          this.skips.set(position, resumedAt);
          onDamage?.(damage);
          position = resumedAt ?? limit;
        }
      } finally {
        await file.close();
      }
      position = Math.max(position, limit);
    }
  }

  /**
   * Releases every segment whose frames all lie below `below` (never the active one):
   * kept as spares to reuse, the rest deleted. Resolves with how many were released.
   */
  async release(below: number): Promise<number> {
    let released = 0;
    while (this.segments.length > 1 && (this.segments[1] as Segment).base <= below) {
      const seg = this.segments.shift() as Segment;
      const keep = this.spares.length < MAX_SPARES;
      await retireSegment(this.dir, seg.base, keep);
      if (keep) this.spares.push(`spare-${seg.base}.seg`);
      released++;
    }
    return released;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.preparing?.catch(() => undefined);
    await this.activeFile.close();
  }

  private segmentIndexOf(position: number): number {
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if ((this.segments[mid] as Segment).base <= position) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Seals the active segment at the current end and starts the next one there. */
  private async roll(): Promise<Segment> {
    await this.preparing?.catch(() => undefined);
    const spare = this.spares.shift() ?? (await createSpare(this.dir, this.segmentBytes, this.zeroFill));
    const base = this.endPosition;
    await installSegment(this.dir, spare, { format: JOURNAL_FORMAT_VERSION, base, createdAt: this.now() });
    const file = await open(join(this.dir, segmentName(base)), 'r+');
    await this.activeFile.close();
    this.activeFile = file;
    const seg = { base, name: segmentName(base) };
    this.segments.push(seg);
    return seg;
  }

  /** Makes a blank segment file in the background, ready before the active one fills. */
  private prepareSpare(): void {
    if (this.preparing !== undefined || this.spares.length > 0 || this.closed) return;
    this.preparing = createSpare(this.dir, this.segmentBytes, this.zeroFill)
      .then((name) => {
        this.spares.push(name);
      })
      .finally(() => {
        this.preparing = undefined;
      });
    // A failure (a full disk) is met again, and reported, by the roll that needs the file.
    this.preparing.catch(() => undefined);
  }
}

async function readAt(file: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(Math.max(0, length));
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await file.read(buf, done, buf.length - done, offset + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buf.subarray(0, done);
}

/**
 * Where a whole frame at its own position starts after a fault at `position`, within the
 * reach of one frame (`window` holds the bytes from `position` on); undefined when none.
 */
function resync(window: Buffer, position: number, limit: number): number | undefined {
  const lastStart = Math.min(window.length, limit - position) - FRAME_HEADER_BYTES;
  for (let at = 1; at <= lastStart; at++) {
    // Cheap filter first: the low 32 bits of the position field must be this offset's.
    if (window.readUInt32LE(at + 8) !== (position + at) % 2 ** 32) continue;
    if (decodeFrame(window, at, position + at).ok) return position + at;
  }
  return undefined;
}

/** Scans the last segment from its start: its end, and what damage lies before it. */
async function findEnd(dir: string, seg: Segment): Promise<{ end: number; tornTail: JournalDamage | undefined; damaged: JournalDamage[] }> {
  const file = await open(join(dir, seg.name), 'r');
  try {
    const { size } = await file.stat();
    const buf = await readAt(file, SEGMENT_HEADER_BYTES, size - SEGMENT_HEADER_BYTES);
    const damaged: JournalDamage[] = [];
    let at = 0;
    for (;;) {
      const read = decodeFrame(buf, at, seg.base + at);
      if (read.ok) {
        at = read.frame.end - seg.base;
        continue;
      }
      const position = seg.base + at;
      const resumedAt = resync(buf.subarray(at, at + MAX_FRAME_BYTES + FRAME_HEADER_BYTES), position, seg.base + buf.length);
      if (resumedAt !== undefined) {
        damaged.push({ position, fault: read.fault, resumedAt, segment: seg.name });
        at = resumedAt - seg.base;
        continue;
      }
      // Zeros, or a stale frame of the file's earlier life: the clean end. Anything else is a torn write.
      const clean = read.fault === 'end' || (read.fault === 'position' && isStale(buf, at, position));
      if (!clean) await zeroTornFrame(dir, seg, buf, at);
      return { end: position, tornTail: clean ? undefined : { position, fault: read.fault, resumedAt: undefined, segment: seg.name }, damaged };
    }
  } finally {
    await file.close();
  }
}

/**
 * Zeroes what a torn frame left at `buf[at]` (its announced length when that fits, else up
 * to its last non-zero byte within one frame's reach), so that the frames appended over it
 * end on zeros and the next open does not take its remains for another torn write.
 * Written page by page, like a new segment (see segment-file.ts).
 */
async function zeroTornFrame(dir: string, seg: Segment, buf: Buffer, at: number): Promise<void> {
  const announced = announcedLength(buf, at);
  let end = announced !== undefined && announced >= FRAME_HEADER_BYTES && at + announced <= buf.length ? at + announced : Math.min(buf.length, at + MAX_FRAME_BYTES);
  while (end > at && buf[end - 1] === 0) end--;
  if (end === at) return;
  const page = Buffer.alloc(4096);
  const file = await open(join(dir, seg.name), 'r+');
  try {
    for (let p = at; p < end; p += page.length) await file.write(page, 0, Math.min(page.length, end - p), SEGMENT_HEADER_BYTES + p);
    await file.datasync();
  } finally {
    await file.close();
  }
}

/** A whole frame of an older generation of a recycled file: its position is below this place's. */
function isStale(buf: Buffer, at: number, position: number): boolean {
  const p = buf.readUInt32LE(at + 8) + buf.readUInt32LE(at + 12) * 2 ** 32;
  return p < position;
}

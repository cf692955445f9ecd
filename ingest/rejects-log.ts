/**
 * The rejects log: every payload ingest refused, with why, from whom, and (the first
 * {@link KEPT_PAYLOAD_BYTES} of) its raw bytes, so that a rejected reading is never
 * silently thrown away. Listed by `GET /v1/rejects`.
 *
 * Table `R` (store/keyspace.ts): `R · receivedAt u64 BE · seq u32 BE` → msgpack of the
 * entry. Keys are time-ordered. `seq` is a count within the millisecond (its high 12
 * bits; it goes past the last stored key after a restart or a clock step back) and a
 * writer tag drawn at open (its low 20 bits), so the keys of two nodes writing in the
 * same millisecond do not collide either.
 *
 * Appends go through a {@link MetadataWriter}: this node's database, or in cluster mode
 * every node's (each node keeps every reject). They are group-committed: while one batch
 * is being committed, new entries gather for the next, so a flood of garbage costs one
 * commit (one fsync) per batch, not per reject. An append resolves once its entry is
 * durable here — the moment a QoS 1 reject may be acknowledged (API.md). Trimming is not
 * replicated: each node trims its own copy by the same rules.
 *
 * Bounded on disk whatever arrives: each entry keeps at most {@link KEPT_PAYLOAD_BYTES}
 * of payload, entries older than the retention are dropped every minute, and once the
 * log holds more than `maxEntries` (plus 1 % slack, so trimming runs in batches) the
 * oldest are dropped. Memory is bounded by the callers: each append holds its caller
 * (an MQTT connection whose socket is not read meanwhile, an HTTP request) until durable.
 */
import { isUtf8 } from 'node:buffer';
import { randomInt } from 'node:crypto';
import { Packr } from 'msgpackr';
import { invalidParameter, TributaryError } from '../core/errors.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { LocalMetadata, type MetadataWriter } from '../store/metadata.js';
import type { BatchOp } from '../streams/types.js';
import type { RejectReason } from './payload.js';

/** Bytes of a rejected payload the log keeps; the entry records the full size. */
export const KEPT_PAYLOAD_BYTES = 2048;
/** How often retention and the size bound are enforced in the background. */
const TRIM_EVERY_MS = 60_000;
/** Entries deleted per synced batch when trimming. */
const TRIM_CHUNK = 1000;
/** Most bytes of entries in one commit (a replicated commit travels as one Kafka record batch: 1 MiB at most by default). */
const COMMIT_BYTES = 512 * 1024;
const TWO_32 = 0x1_0000_0000;
const KEY_BYTES = 1 + 8 + 4;
/** `seq` = count within the millisecond · writer tag. */
const TAG_SPAN = 0x10_0000;
const MAX_COUNT = 0xfff;

/** Where a rejected reading came from; `function`: a handler's `context.put`. */
export type RejectTransport = 'mqtt' | 'http' | 'function';

/** What ingest knows about a reject. */
export interface RejectInput {
  transport: RejectTransport;
  reason: RejectReason;
  message: string;
  /** The device the payload was for; undefined when the topic named no valid device. */
  deviceId?: string | undefined;
  clientId?: string | undefined;
  topic?: string | undefined;
  field?: string | undefined;
  /** The raw payload (MQTT) or the request body re-serialized as JSON (HTTP). */
  payload: Buffer;
}

/** One entry as the API lists it. */
export interface RejectEntry {
  /** When the payload was rejected, epoch ms. */
  receivedAt: number;
  deviceId: string | null;
  transport: RejectTransport;
  clientId: string | null;
  topic: string | null;
  reason: RejectReason;
  message: string;
  field: string | null;
  /** Size of the whole payload, in bytes. */
  payloadBytes: number;
  /** The kept bytes: as text when they are valid UTF-8, else base64. */
  payload: string;
  payloadEncoding: 'utf8' | 'base64';
  /** True when only the first {@link KEPT_PAYLOAD_BYTES} bytes were kept. */
  truncated: boolean;
}

export interface RejectsQuery {
  deviceId?: string;
  /** Inclusive bounds on `receivedAt`. */
  from: number;
  to: number;
  order: 'asc' | 'desc';
  limit: number;
  cursor?: string;
}

export interface RejectsPage {
  items: RejectEntry[];
  nextCursor: string | null;
}

export interface RejectsLogOptions {
  /** Entries older than this are dropped. */
  retentionMs: number;
  maxEntries: number;
  now?: () => number;
  /** Where appends are committed; default this node's database alone. */
  metadata?: MetadataWriter;
}

// Stored as an array: [receivedAt, deviceId, transport, clientId, topic, reason, message, field, payloadBytes, kept bytes]
type Stored = [number, string | null, RejectTransport, string | null, string | null, RejectReason, string, string | null, number, Buffer];
const packr = new Packr({ useRecords: false });

interface Pending {
  key: Buffer;
  value: Buffer;
  resolve: () => void;
  reject: (err: unknown) => void;
}

export class RejectsLog {
  private readonly now: () => number;
  private readonly metadata: MetadataWriter;
  private readonly tag = randomInt(TAG_SPAN);
  private lastTs = 0;
  private lastCount = 0;
  /** Entries on disk, appended here or (cluster mode) on other nodes. */
  private count = 0;
  private pending: Pending[] = [];
  private flushing: Promise<void> | undefined;
  private trimming: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private closed = false;

  private constructor(
    private readonly database: Database,
    private readonly opts: RejectsLogOptions,
  ) {
    this.now = opts.now ?? Date.now;
    this.metadata = opts.metadata ?? new LocalMetadata(database);
  }

  /** Opens the log over the database: counts its entries, finds its last key, trims once and then every minute. */
  static async open(database: Database, opts: RejectsLogOptions): Promise<RejectsLog> {
    const log = new RejectsLog(database, opts);
    const range = { gte: Buffer.of(Prefix.reject), lt: Buffer.of(Prefix.reject + 1) };
    await database.read(async (db) => {
      for await (const key of db.keys(range)) {
        log.count++;
        if (key.length === KEY_BYTES) {
          log.lastTs = readTs(key);
          log.lastCount = Math.floor(key.readUInt32BE(9) / TAG_SPAN);
        }
      }
    });
    // After the count: an entry another node adds meanwhile may go uncounted (trimmed a
    // little late), never counted twice (which would trim entries early).
    log.unsubscribe = log.metadata.onApplied((ops) => log.applied(ops));
    log.trim();
    log.timer = setInterval(() => log.trim(), TRIM_EVERY_MS);
    log.timer.unref();
    return log;
  }

  /** Entries currently kept (for tests and metrics). */
  get size(): number {
    return this.count;
  }

  /** Records a reject; resolves once it is durable. Rejects with `StoreUnavailable` when the database refuses writes. */
  append(input: RejectInput): Promise<void> {
    if (this.closed) return Promise.reject(new TributaryError('StoreUnavailable', 'the rejects log is closed (the server is shutting down)'));
    const key = this.nextKey();
    const kept = input.payload.subarray(0, KEPT_PAYLOAD_BYTES);
    const stored: Stored = [
      readTs(key),
      input.deviceId ?? null,
      input.transport,
      input.clientId ?? null,
      input.topic ?? null,
      input.reason,
      input.message,
      input.field ?? null,
      input.payload.length,
      Buffer.from(kept), // a copy: the caller's buffer may be a slice of a larger one
    ];
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ key, value: packr.pack(stored), resolve, reject });
      this.flushing ??= this.flush();
    });
  }

  async list(q: RejectsQuery): Promise<RejectsPage> {
    let gte = keyOf(q.from, 0);
    let lte = keyOf(q.to, 0xffff_ffff);
    if (q.cursor !== undefined) {
      const after = decodeCursor(q.cursor, q.order);
      if (q.order === 'asc') gte = nextKeyAfter(after);
      else lte = previousKeyBefore(after);
    }
    const reverse = q.order === 'desc';
    const found = await this.database.read(async (db) => {
      const out: Array<{ key: Buffer; entry: RejectEntry }> = [];
      for await (const [key, value] of db.iterator({ gte, lte, reverse })) {
        const entry = decodeEntry(value);
        if (q.deviceId !== undefined && entry.deviceId !== q.deviceId) continue;
        out.push({ key, entry });
        if (out.length > q.limit) break;
      }
      return out;
    });
    const items = found.slice(0, q.limit);
    const last = items[items.length - 1];
    return { items: items.map((f) => f.entry), nextCursor: found.length > q.limit && last !== undefined ? encodeCursor(last.key, q.order) : null };
  }

  /** Drops entries older than the retention, then the oldest beyond `maxEntries`. Runs one pass at a time; never rejects. */
  trim(): Promise<void> {
    this.trimming ??= this.runTrim()
      .catch(() => undefined) // a full disk: the next pass tries again
      .finally(() => {
        this.trimming = undefined;
      });
    return this.trimming;
  }

  /** Stops the background trim and waits for pending appends. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    while (this.flushing !== undefined) await this.flushing;
    this.unsubscribe?.();
    await this.trimming;
  }

  private nextKey(): Buffer {
    const now = this.now();
    if (now > this.lastTs) {
      this.lastTs = now;
      this.lastCount = 0;
    } else if (this.lastCount === MAX_COUNT) {
      this.lastTs++;
      this.lastCount = 0;
    } else {
      this.lastCount++;
    }
    return keyOf(this.lastTs, this.lastCount * TAG_SPAN + this.tag);
  }

  private async flush(): Promise<void> {
    // Let the rest of this event-loop turn join the batch.
    await new Promise((r) => setImmediate(r));
    while (this.pending.length > 0) {
      let bytes = 0;
      let n = 0;
      while (n < this.pending.length && (n === 0 || bytes < COMMIT_BYTES)) bytes += (this.pending[n++] as Pending).value.length;
      const batch = this.pending.splice(0, n);
      const ops: BatchOp[] = batch.map((p) => ({ type: 'put', key: p.key, value: p.value }));
      try {
        await this.metadata.commit(ops);
        for (const p of batch) p.resolve();
      } catch (err) {
        for (const p of batch) p.reject(err);
      }
    }
    this.flushing = undefined;
  }

  /** Counts entries as they land in this node's database (own appends too) and trims past the bound. */
  private applied(ops: readonly BatchOp[]): void {
    const added = ops.filter((op) => op.type === 'put' && op.key[0] === Prefix.reject).length;
    if (added === 0) return;
    this.count += added;
    if (this.count > this.opts.maxEntries + Math.max(10, Math.ceil(this.opts.maxEntries / 100))) void this.trim();
  }

  private async runTrim(): Promise<void> {
    const horizon = this.now() - this.opts.retentionMs;
    if (horizon > 0) {
      const expired = await this.database.clear({ gte: Buffer.of(Prefix.reject), lt: keyOf(horizon, 0) }, TRIM_CHUNK);
      this.count = Math.max(0, this.count - expired);
    }
    while (this.count > this.opts.maxEntries) {
      const n = Math.min(TRIM_CHUNK, this.count - this.opts.maxEntries);
      const keys = await this.database.read((db) => db.keys({ gte: Buffer.of(Prefix.reject), lt: Buffer.of(Prefix.reject + 1), limit: n }).all());
      if (keys.length === 0) {
        this.count = 0;
        break;
      }
      await this.database.commit(keys.map((key) => ({ type: 'del' as const, key })));
      this.count -= keys.length;
    }
  }
}

function keyOf(ts: number, seq: number): Buffer {
  const key = Buffer.allocUnsafe(KEY_BYTES);
  key[0] = Prefix.reject;
  key.writeUInt32BE(Math.floor(ts / TWO_32), 1);
  key.writeUInt32BE(ts % TWO_32, 5);
  key.writeUInt32BE(seq, 9);
  return key;
}

function readTs(key: Buffer): number {
  return key.readUInt32BE(1) * TWO_32 + key.readUInt32BE(5);
}

function nextKeyAfter(key: Buffer): Buffer {
  const seq = key.readUInt32BE(9);
  return seq === 0xffff_ffff ? keyOf(readTs(key) + 1, 0) : keyOf(readTs(key), seq + 1);
}

function previousKeyBefore(key: Buffer): Buffer {
  const seq = key.readUInt32BE(9);
  if (seq > 0) return keyOf(readTs(key), seq - 1);
  const ts = readTs(key);
  return ts === 0 ? Buffer.of(Prefix.reject) : keyOf(ts - 1, 0xffff_ffff);
}

function decodeEntry(value: Buffer): RejectEntry {
  const [receivedAt, deviceId, transport, clientId, topic, reason, message, field, payloadBytes, kept] = packr.unpack(value) as Stored;
  const bytes = Buffer.from(kept);
  // Invalid UTF-8 (or a cut through a multi-byte character) is shown as base64, never mangled.
  const utf8 = isUtf8(bytes);
  return {
    receivedAt,
    deviceId,
    transport,
    clientId,
    topic,
    reason,
    message,
    field,
    payloadBytes,
    payload: bytes.toString(utf8 ? 'utf8' : 'base64'),
    payloadEncoding: utf8 ? 'utf8' : 'base64',
    truncated: payloadBytes > bytes.length,
  };
}

const ASC = 0x61;
const DESC = 0x64;

function encodeCursor(key: Buffer, order: 'asc' | 'desc'): string {
  return Buffer.concat([Buffer.of(order === 'asc' ? ASC : DESC), key.subarray(1)]).toString('base64url');
}

function decodeCursor(text: string, order: 'asc' | 'desc'): Buffer {
  const buf = Buffer.from(text, 'base64url');
  if (buf.toString('base64url') !== text || buf.length !== KEY_BYTES || (buf[0] !== ASC && buf[0] !== DESC)) {
    throw invalidParameter('cursor', 'cursor is malformed (pass nextCursor of a previous page unchanged)');
  }
  if ((buf[0] === ASC ? 'asc' : 'desc') !== order) throw invalidParameter('cursor', `cursor belongs to a query with a different order, not order=${order}`);
  const key = Buffer.from(buf);
  key[0] = Prefix.reject;
  return key;
}

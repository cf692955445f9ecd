/**
 * Durable function logs: the console output the runtime captures per invocation (and its
 * own notes: timeouts, error stacks), kept in the database so that
 * `GET /v1/functions/{name}/logs` can show it after the fact, like CloudWatch Logs for
 * Lambda.
 *
 * Layout: table `W` (store/keyspace.ts), key `name · 0x00 · time (u64 BE) · seq (u32 BE)`,
 * value JSON `{ r: requestId, l: level, v: functionVersion, m: message }`. `time` is when
 * the line was written (the handler's clock); `seq` is a counter of this store that keeps
 * lines of one millisecond in the order they were captured.
 *
 * Decisions:
 * - Lines are buffered and written every {@link FLUSH_INTERVAL_MS} in one batch, not one
 *   synced commit per invocation: commits are serialized with the telemetry group
 *   commits, and an fsync per invocation would slow ingest. A crash can lose the last
 *   interval's lines; they are diagnostics, not data. A query flushes first, so what an
 *   invocation printed is readable once it has returned.
 * - Bounded two ways: by age (`retentionMs`, trimmed every minute) and by size per
 *   function name (`maxBytesPerFunction`, counted as key plus value bytes; on the write
 *   that passes it, the oldest lines go until 90% is left). The per-invocation cap of the
 *   runtime (`maxLogBytes`) bounds what one invocation adds. If writing is impossible (a
 *   full disk), at most {@link MAX_BUFFERED_BYTES} wait; later lines are dropped and
 *   counted in the server log.
 * - Logs outlive their function (a deleted function's lines age out), as CloudWatch log
 *   groups outlive a Lambda function.
 */
import { invalidParameter } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Database } from '../store/database.js';
import type { BatchOp } from '../streams/types.js';
import { Prefix } from '../store/keyspace.js';
import type { FunctionSpec, InvocationObserver, InvokeLog, InvokeResult } from './types.js';

export type LogLevel = InvokeLog['level'];
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

/** One stored line. */
export interface FunctionLogLine {
  /** Epoch ms. */
  time: number;
  level: LogLevel;
  message: string;
  requestId: string;
  functionVersion: number;
}

export interface FunctionLogQuery {
  /** Epoch ms, inclusive. */
  from?: number;
  /** Epoch ms, exclusive. */
  to?: number;
  /** Lines at this level or more severe (`warn`: warn and error). */
  level?: LogLevel;
  requestId?: string;
  order?: 'asc' | 'desc';
  limit: number;
  /** `nextCursor` of the previous page (same query). */
  cursor?: string;
}

export interface FunctionLogPage {
  items: FunctionLogLine[];
  nextCursor: string | null;
}

export interface FunctionLogStoreOptions {
  database: Database;
  logger: Logger;
  retentionMs: number;
  maxBytesPerFunction: number;
}

const FLUSH_INTERVAL_MS = 100;
const TRIM_INTERVAL_MS = 60_000;
const MAX_BUFFERED_BYTES = 8 * 1024 * 1024;
/** Keys scanned per read while trimming or answering a filtered query. */
const SCAN_CHUNK = 1000;

const SEP = 0x00;

function namePrefix(name: string): Buffer {
  return Buffer.concat([Buffer.of(Prefix.functionLog), Buffer.from(name, 'utf8'), Buffer.of(SEP)]);
}

function lineKey(name: string, time: number, seq: number): Buffer {
  const tail = Buffer.alloc(12);
  tail.writeBigUInt64BE(BigInt(time), 0);
  tail.writeUInt32BE(seq, 8);
  return Buffer.concat([namePrefix(name), tail]);
}

function timeKey(name: string, time: number): Buffer {
  const t = Buffer.alloc(8);
  t.writeBigUInt64BE(BigInt(Math.max(0, time)), 0);
  return Buffer.concat([namePrefix(name), t]);
}

interface StoredValue {
  r: string;
  l: LogLevel;
  v: number;
  m: string;
}

function decode(key: Buffer, value: Buffer): FunctionLogLine {
  const v = JSON.parse(value.toString('utf8')) as StoredValue;
  return { time: Number(key.readBigUInt64BE(key.length - 12)), level: v.l, message: v.m, requestId: v.r, functionVersion: v.v };
}

/** The cursor is the last returned key's time and seq; the name and filters come from the query. */
function encodeCursor(key: Buffer): string {
  return key.subarray(key.length - 12).toString('base64url');
}

function decodeCursor(name: string, cursor: string): Buffer {
  const tail = Buffer.from(cursor, 'base64url');
  if (tail.length !== 12 || tail.toString('base64url') !== cursor) throw invalidParameter('cursor', 'cursor is malformed (pass nextCursor of a previous page unchanged)');
  return Buffer.concat([namePrefix(name), tail]);
}

/** Captured function logs in the database (see the module comment). */
export class FunctionLogStore {
  private readonly database: Database;
  private readonly logger: Logger;
  private readonly retentionMs: number;
  private readonly maxBytes: number;
  private buffer: Array<{ name: string; key: Buffer; value: Buffer }> = [];
  private bufferedBytes = 0;
  private dropped = 0;
  private seq = 0;
  /** Stored bytes per function name, known once a flush has counted them. */
  private readonly sizes = new Map<string, number>();
  private flushTail: Promise<void> = Promise.resolve();
  private flushTimer: NodeJS.Timeout | undefined;
  private trimTimer: NodeJS.Timeout | undefined;
  private trimming: Promise<unknown> | undefined;
  private closed = false;
  private readonly listeners = new Set<(name: string, line: FunctionLogLine) => void>();

  constructor(options: FunctionLogStoreOptions) {
    this.database = options.database;
    this.logger = options.logger;
    this.retentionMs = options.retentionMs;
    this.maxBytes = options.maxBytesPerFunction;
  }

  /** The runtime's `onInvoked`: buffers the invocation's lines. */
  readonly onInvoked: InvocationObserver = (fn, result) => this.append(fn, result);

  /** Buffers the lines of one invocation; they are written within {@link FLUSH_INTERVAL_MS}. */
  append(fn: Pick<FunctionSpec, 'name' | 'version'>, result: InvokeResult): void {
    const version = result.functionVersion ?? fn.version;
    for (const line of result.logs) this.push(fn.name, line.ts, { r: result.requestId, l: line.level, v: version, m: line.message });
  }

  /** A line the server writes about a function itself (a replay's summary). */
  note(name: string, version: number, requestId: string, level: LogLevel, message: string): void {
    this.push(name, Date.now(), { r: requestId, l: level, v: version, m: message });
  }

  /**
   * Calls `listener` with every line as it is captured, before it is written (the live
   * tail, `GET /v1/functions/{name}/logs/tail`). Returns the unsubscribe function.
   */
  onLine(listener: (name: string, line: FunctionLogLine) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private push(name: string, ts: number, stored: StoredValue): void {
    if (this.closed) return;
    const time = Math.max(0, Math.floor(ts));
    for (const listener of this.listeners) listener(name, { time, level: stored.l, message: stored.m, requestId: stored.r, functionVersion: stored.v });
    const key = lineKey(name, time, this.seq);
    this.seq = (this.seq + 1) >>> 0;
    const value = Buffer.from(JSON.stringify(stored), 'utf8');
    if (this.bufferedBytes + key.length + value.length > MAX_BUFFERED_BYTES) {
      this.dropped++;
      return;
    }
    this.buffer.push({ name, key, value });
    this.bufferedBytes += key.length + value.length;
    if (this.flushTimer === undefined) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = undefined;
        this.flush().catch((err: unknown) => this.logger.warn({ err }, 'cannot write function logs'));
      }, FLUSH_INTERVAL_MS);
      this.flushTimer.unref();
    }
  }

  /** Writes every buffered line (and trims names over their size budget) in one commit. */
  flush(): Promise<void> {
    // One write at a time, in order; a failed one does not stop the next.
    const run = this.flushTail.then(() => this.write());
    this.flushTail = run.catch(() => undefined);
    return run;
  }

  private async write(): Promise<void> {
    const batch = this.buffer;
    if (batch.length === 0) return;
    this.buffer = [];
    this.bufferedBytes = 0;
    if (this.dropped > 0) {
      this.logger.warn({ dropped: this.dropped }, 'function log lines dropped: the database did not take them fast enough');
      this.dropped = 0;
    }
    const ops: BatchOp[] = [];
    const added = new Map<string, number>();
    for (const { name, key, value } of batch) {
      ops.push({ type: 'put', key, value });
      added.set(name, (added.get(name) ?? 0) + key.length + value.length);
    }
    for (const [name, bytes] of added) {
      const before = this.sizes.get(name) ?? (await this.measure(name));
      let size = before + bytes;
      if (size > this.maxBytes) {
        const { dels, freed } = await this.oldest(name, size - Math.floor(this.maxBytes * 0.9));
        ops.push(...dels);
        size -= freed;
      }
      this.sizes.set(name, size);
    }
    try {
      // Unsynced: logs are diagnostics; they still survive a kill -9 (the write reached the
      // OS) and must not take fsyncs from telemetry writes.
      await this.database.commitUnsynced(ops);
    } catch (err) {
      // Recount after the failure rather than trust the sums.
      for (const name of added.keys()) this.sizes.delete(name);
      throw err;
    }
  }

  /** Bytes stored for `name` (one scan, the first time a flush needs it). */
  private measure(name: string): Promise<number> {
    const gte = namePrefix(name);
    const lt = Buffer.concat([Buffer.of(Prefix.functionLog), Buffer.from(name, 'utf8'), Buffer.of(SEP + 1)]);
    return this.database.read(async (db) => {
      let bytes = 0;
      for await (const [k, v] of db.iterator({ gte, lt })) bytes += k.length + v.length;
      return bytes;
    });
  }

  /** Deletions of the oldest lines of `name` that free at least `bytes` (or all of them). */
  private oldest(name: string, bytes: number): Promise<{ dels: BatchOp[]; freed: number }> {
    const gte = namePrefix(name);
    const lt = timeKey(name, Number.MAX_SAFE_INTEGER);
    return this.database.read(async (db) => {
      const dels: BatchOp[] = [];
      let freed = 0;
      for await (const [k, v] of db.iterator({ gte, lt })) {
        if (freed >= bytes) break;
        dels.push({ type: 'del', key: k });
        freed += k.length + v.length;
      }
      return { dels, freed };
    });
  }

  /**
   * Lines of `name`, oldest first (or newest first with `order: 'desc'`), filtered by time,
   * level and request id. Flushes buffered lines first.
   */
  async query(name: string, q: FunctionLogQuery): Promise<FunctionLogPage> {
    await this.flush().catch((err: unknown) => this.logger.warn({ err }, 'cannot write function logs'));
    const desc = q.order === 'desc';
    const lower = timeKey(name, q.from ?? 0);
    const upper = timeKey(name, q.to ?? Number.MAX_SAFE_INTEGER);
    const after = q.cursor === undefined ? undefined : decodeCursor(name, q.cursor);
    // A cursor is the last key returned: the next page starts just past it.
    const range = desc
      ? { gte: lower, lt: after ?? upper, reverse: true }
      : after === undefined
        ? { gte: lower, lt: upper }
        : { gt: after, lt: upper };
    const minLevel = LOG_LEVELS.indexOf(q.level ?? 'debug');
    const accept = (line: FunctionLogLine): boolean =>
      LOG_LEVELS.indexOf(line.level) >= minLevel && (q.requestId === undefined || line.requestId === q.requestId);
    return this.database.read(async (db) => {
      const items: FunctionLogLine[] = [];
      let lastKey: Buffer | undefined;
      // One more than the page tells whether there is a next page.
      for await (const [key, value] of db.iterator(range)) {
        const line = decode(key, value);
        if (!accept(line)) continue;
        if (items.length === q.limit) return { items, nextCursor: encodeCursor(lastKey as Buffer) };
        items.push(line);
        lastKey = key;
      }
      return { items, nextCursor: null };
    });
  }

  /** Deletes every line older than `olderThanMs`, of every function. Resolves with the count. */
  async trim(olderThanMs: number): Promise<number> {
    let deleted = 0;
    let seek = Buffer.of(Prefix.functionLog);
    const end = Buffer.of(Prefix.functionLog + 1);
    for (;;) {
      const [first] = await this.database.read((db) => db.keys({ gte: seek, lt: end, limit: 1 }).all());
      if (first === undefined) return deleted;
      const sep = first.indexOf(SEP, 1);
      if (sep < 0) return deleted;
      const name = first.subarray(1, sep).toString('utf8');
      const removed = await this.database.clear({ gte: namePrefix(name), lt: timeKey(name, olderThanMs) }, SCAN_CHUNK);
      if (removed > 0) this.sizes.delete(name);
      deleted += removed;
      // Past every key of this name: the byte after the separator.
      seek = Buffer.concat([first.subarray(0, sep), Buffer.of(SEP + 1)]);
    }
  }

  /** Trims by age now and every minute. */
  startRetention(): void {
    const run = (): void => {
      this.trimming ??= this.trim(Date.now() - this.retentionMs)
        .then((removed) => {
          if (removed > 0) this.logger.debug({ removed }, 'trimmed function logs');
        })
        .catch((err: unknown) => this.logger.warn({ err }, 'function log trim failed'))
        .finally(() => {
          this.trimming = undefined;
        });
    };
    run();
    this.trimTimer = setInterval(run, TRIM_INTERVAL_MS);
    this.trimTimer.unref();
  }

  /** Stops the timers and writes what is buffered. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.flushTimer);
    clearInterval(this.trimTimer);
    await this.trimming;
    await this.flush().catch((err: unknown) => this.logger.warn({ err }, 'cannot write function logs'));
  }
}

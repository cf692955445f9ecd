import { mkdirSync } from 'node:fs';
import { readdir, stat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { ClassicLevel } from 'classic-level';
import { TributaryError } from '../core/errors.js';
import type { BatchOp } from '../streams/types.js';
import { FORMAT_VERSION, Prefix } from './keyspace.js';

export type Db = ClassicLevel<Buffer, Buffer>;

function makeSublevel(db: Db, name: string) {
  return db.sublevel(name);
}
/** A sublevel of the database (utf8 keys and values, e.g. for a library's own persistence); see {@link Database.sublevel}. */
export type Sublevel = ReturnType<typeof makeSublevel>;

export interface DatabaseOptions {
  /**
   * Free space, beyond the size of LevelDB's write-ahead logs, that must be available
   * before the handle is reopened after a failed write. Reopening replays the logs into
   * new table files; a reopen that fails for want of space would leave the database
   * closed (reads included), so it is not tried until the space is there. Default 1 MiB.
   */
  reopenHeadroomBytes?: number;
  /** First pause between background recovery attempts after a failed write. Default 100 ms. */
  retryMinMs?: number;
  /** Longest pause between background recovery attempts (the pause doubles up to it). Default 2000 ms. */
  retryMaxMs?: number;
  /** LevelDB's write buffer (memtable) size; table files are half of it. Default {@link DEFAULT_WRITE_BUFFER_BYTES}. */
  writeBufferBytes?: number;
}

/**
 * LevelDB's own default (4 MiB, with 2 MiB table files) made compaction the broker's
 * largest CPU cost under sustained QoS 1 ingest: ≈22 µs per reading on its background
 * thread, more than the event loop spent, against ≈4.5 µs at 64 MiB / 32 MiB (45 s runs,
 * 1.5M readings; bench/ingest). The price: up to twice this in memory while a full
 * buffer is written out, and up to this much log to replay when opening after a crash.
 */
export const DEFAULT_WRITE_BUFFER_BYTES = 64 * 1024 * 1024;

/** classic-level's sizing options for a write buffer of `writeBufferBytes` (benchmarks give raw baselines the same). */
export function sizingOptions(writeBufferBytes = DEFAULT_WRITE_BUFFER_BYTES): { writeBufferSize: number; maxFileSize: number } {
  const writeBufferSize = nonNegative(writeBufferBytes, 'writeBufferBytes');
  return { writeBufferSize, maxFileSize: Math.ceil(writeBufferSize / 2) };
}

/** A key range as abstract-level takes it (buffer keys). */
export interface KeyRange {
  gt?: Buffer;
  gte?: Buffer;
  lt?: Buffer;
  lte?: Buffer;
}

/** Called when {@link Database.writable} changes; `error` says why writes are refused. */
export type WritableListener = (writable: boolean, error: TributaryError | undefined) => void;

/** Called after each synced commit that succeeded, with the seconds its write and fsync took (queueing excluded). */
export type CommitListener = (seconds: number) => void;

/** Meta key written (as a deletion: it never holds a value) to check that writes work again after a reopen. */
const PROBE_KEY = Buffer.from([Prefix.meta, 0x00, ...Buffer.from('write-probe', 'utf8')]);
/** How long a reopen waits for reads started through {@link Database.read} before closing the handle. */
const READ_DRAIN_MS = 2000;

const noop = (): void => {};

/**
 * The one owner of the LevelDB handle. Everything else reaches the database through
 * it, so that it alone can reopen the handle.
 *
 * Why it must: what LevelDB does after a failed write, checked on a full tmpfs with
 * classic-level 3 (test/store.full-disk.test.ts),
 * - when the write-ahead log append fails (ENOSPC), nothing is latched: once space is
 *   freed, later writes on the same handle succeed — and are silently lost at the next
 *   open, because the log now holds a torn record and the records after it are out of
 *   step with the log's block boundaries (recovery drops them as checksum mismatches);
 * - when a memtable flush or compaction fails (ENOSPC writing an `.ldb`), the error is
 *   latched: every later write fails with it, even after space is freed, until the
 *   database is reopened;
 * - reads keep working on the handle in both cases; reopening while the disk is still
 *   full fails (recovery must write the logs out as tables) and leaves it closed.
 *
 * So after any failed write, no write goes to the handle again until it has been closed
 * and reopened (recovery drops the torn record, clears a latched error and starts a new
 * log), and that reopen waits until there is room for it. Writes are serialized here so
 * that none can slip in behind a failed one. Until the reopen, commits reject at once
 * with `StoreUnavailable`; a background timer (with backoff) and every commit retry the
 * reopen, so writes resume by themselves once space is freed.
 *
 * The handle object never changes: it is closed and reopened in place, so references to
 * it, iterators' owners and sublevels made with {@link sublevel} stay valid. During the
 * reopen (tens of milliseconds) operations on {@link db} fail with
 * `LEVEL_DATABASE_NOT_OPEN` while it closes and are deferred while it opens; reads made
 * through {@link read} are drained before the close and wait for the reopen instead.
 */
export class Database {
  readonly path: string;
  private readonly handle: Db;
  private readonly headroomBytes: number;
  private readonly retryMinMs: number;
  private readonly retryMaxMs: number;

  private closed = false;
  /** Set while the handle is suspect (a write failed and it has not been reopened since): why writes are refused. */
  private failure: TributaryError | undefined;
  /** Tail of the serialized commits. */
  private writeTail: Promise<void> = Promise.resolve();
  private recovering: Promise<boolean> | undefined;
  /** Set while the handle is being closed and reopened; reads through {@link read} wait for it. */
  private reopening: Promise<void> | undefined;
  private activeReads = 0;
  private readsDrained: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private retryMs: number;
  /** No reopen is tried before this time (set after a reopen attempt failed). */
  private notBefore = 0;
  private reopenCount = 0;
  private readonly listeners = new Set<WritableListener>();
  private readonly commitListeners = new Set<CommitListener>();
  private readonly sublevels = new Set<Sublevel>();

  private constructor(path: string, handle: Db, options: DatabaseOptions) {
    this.path = path;
    this.handle = handle;
    this.headroomBytes = nonNegative(options.reopenHeadroomBytes ?? 1024 * 1024, 'reopenHeadroomBytes');
    this.retryMinMs = Math.max(1, nonNegative(options.retryMinMs ?? 100, 'retryMinMs'));
    this.retryMaxMs = Math.max(this.retryMinMs, nonNegative(options.retryMaxMs ?? 2000, 'retryMaxMs'));
    this.retryMs = this.retryMinMs;
  }

  /**
   * Opens (creating if needed) `<dataDir>/db` and checks its format version.
   * @throws TributaryError `StoreUnavailable` when the directory is locked by another
   * process, holds a format this build does not read, or cannot be opened.
   */
  static async open(dataDir: string, options: DatabaseOptions = {}): Promise<Database> {
    mkdirSync(dataDir, { recursive: true });
    const path = join(dataDir, 'db');
    const handle: Db = new ClassicLevel<Buffer, Buffer>(path, { keyEncoding: 'buffer', valueEncoding: 'buffer', ...sizingOptions(options.writeBufferBytes) });
    try {
      await handle.open();
    } catch (err) {
      if (errorCode(err) === 'LEVEL_LOCKED' || errorCode(causeOf(err)) === 'LEVEL_LOCKED') {
        throw new TributaryError('StoreUnavailable', `the database at ${path} is locked by another process (is another tributary running on this data directory?)`, { cause: err });
      }
      const detail = detailOf(err);
      if (isDiskFull(err)) {
        throw new TributaryError('StoreUnavailable', `cannot open the database at ${path}: the disk is full (${detail}); opening needs free space to replay its logs`, { cause: err });
      }
      throw new TributaryError('StoreUnavailable', `cannot open the database at ${path}: ${detail}`, { cause: err });
    }
    const db = new Database(path, handle, options);
    try {
      await db.checkFormat();
    } catch (err) {
      await handle.close().catch(noop);
      throw err;
    }
    return db;
  }

  /**
   * The LevelDB handle, for reads. It is the same object for the life of the Database
   * (reopened in place after a failed write); prefer {@link read}, which rides out a
   * reopen. Never write through it: writes go through {@link commit}.
   */
  get db(): Db {
    return this.handle;
  }

  /** False from a failed write until the handle has been reopened and a write succeeded again. */
  get writable(): boolean {
    return this.failure === undefined && !this.closed;
  }

  /** Why writes are refused right now, if they are. */
  get writeError(): TributaryError | undefined {
    return this.failure;
  }

  /** How many times the handle has been reopened after a failed write (for metrics). */
  get reopens(): number {
    return this.reopenCount;
  }

  /** Calls `listener` whenever {@link writable} changes; returns a function that removes it. Listeners must not throw. */
  onWritableChange(listener: WritableListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Calls `listener` after every synced commit (see {@link CommitListener}): the group
   * commit's own latency, which bounds how fast a durable acknowledgement can be.
   * Returns a function that removes it. Listeners must not throw.
   */
  onCommit(listener: CommitListener): () => void {
    this.commitListeners.add(listener);
    return () => this.commitListeners.delete(listener);
  }

  /**
   * A sublevel (keys under `!name!`, see store/keyspace.ts) that is reopened with the
   * handle. Writes through it bypass {@link commit} and its failure handling: use it for
   * data a library persists on its own, not for the telemetry tables.
   */
  sublevel(name: string): Sublevel {
    const sub = makeSublevel(this.handle, name);
    this.sublevels.add(sub);
    return sub;
  }

  /**
   * Runs a read against the handle. Waits while the handle is being reopened, and a read
   * cut off by a reopen (`LEVEL_DATABASE_NOT_OPEN` / `LEVEL_ITERATOR_NOT_OPEN`) is run
   * once more on the reopened handle. Otherwise such failures become `StoreUnavailable`.
   */
  async read<T>(fn: (db: Db) => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      if (this.reopening !== undefined) await this.reopening;
      if (this.closed) throw closedError();
      const reopensBefore = this.reopenCount;
      this.activeReads++;
      try {
        return await fn(this.handle);
      } catch (err) {
        if (!isNotOpen(err)) throw err;
        if (this.closed) throw closedError(err);
        if (attempt === 0 && (this.reopening !== undefined || this.reopenCount !== reopensBefore || this.failure !== undefined)) continue;
        const why = this.failure === undefined ? '' : ` (${this.failure.message})`;
        throw new TributaryError('StoreUnavailable', `the database at ${this.path} is not open${why}`, { cause: err });
      } finally {
        this.activeReads--;
        if (this.activeReads === 0) this.readsDrained?.();
      }
    }
  }

  /**
   * Commits the operations atomically and durably (`sync: true`: fsync before resolving).
   * Commits are serialized. After a failed write, commits reject with `StoreUnavailable`
   * (saying so when the disk is full) until the handle has been reopened; each commit
   * tries that reopen first, once there is space for it.
   */
  commit(ops: BatchOp[]): Promise<void> {
    if (ops.length === 0) return Promise.resolve();
    return this.serialized(() => this.write(ops));
  }

  /**
   * {@link commit} without the fsync (`sync: false`), for data that may be lost on an OS
   * crash or power cut but not on a process crash: LevelDB has handed the log record to
   * the OS when it resolves. Same queue and failure handling as {@link commit}, and the
   * next synced commit makes it durable too (one write-ahead log).
   */
  commitUnsynced(ops: BatchOp[]): Promise<void> {
    if (ops.length === 0) return Promise.resolve();
    return this.serialized(() => this.write(ops, false));
  }

  /**
   * Deletes every key in the range, in synced batches of up to `chunk` deletions that
   * each go through {@link commit} (so commits from elsewhere interleave, and a full disk
   * is handled like any failed write). Use it instead of the handle's `clear()`, which
   * writes to LevelDB behind the owner's back. Resolves with the number of keys deleted;
   * an interrupted clear leaves a prefix of the range deleted and can simply be redone.
   */
  async clear(range: KeyRange, chunk = 1000): Promise<number> {
    if (!Number.isSafeInteger(chunk) || chunk < 1) throw new RangeError(`chunk must be a positive integer (got ${String(chunk)})`);
    let bounds: KeyRange = { ...range };
    let deleted = 0;
    while (true) {
      const keys = await this.read((db) => db.keys({ ...bounds, limit: chunk }).all());
      if (keys.length === 0) return deleted;
      await this.commit(keys.map((key) => ({ type: 'del' as const, key })));
      deleted += keys.length;
      if (keys.length < chunk) return deleted;
      // Seek past the deleted keys instead of over their tombstones again.
      const { gt: _gt, gte: _gte, ...upper } = bounds;
      bounds = { ...upper, gt: keys[keys.length - 1] as Buffer };
    }
  }

  /** Runs `fn` after every write queued before it; writes never overlap (see the class comment). */
  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(closedError());
    const run = this.writeTail.then(fn);
    this.writeTail = run.then(noop, noop);
    return run;
  }

  private async write(ops: BatchOp[], sync = true): Promise<void> {
    if (this.failure !== undefined && !(await this.recover())) throw this.refusal();
    // A chained batch: the array form of batch() copies and re-validates every
    // operation in JavaScript, which cost about 3x in throughput here.
    const batch = this.handle.batch();
    try {
      for (const op of ops) {
        if (op.type === 'put') batch.put(op.key, op.value as Buffer);
        else batch.del(op.key);
      }
    } catch (err) {
      // An invalid operation: nothing reached LevelDB.
      await batch.close().catch(noop);
      throw err;
    }
    const started = performance.now();
    try {
      await batch.write({ sync });
    } catch (err) {
      throw this.writeFailed(err);
    }
    if (sync) {
      const seconds = (performance.now() - started) / 1000;
      notify(this.commitListeners, 'commit', (listener) => listener(seconds));
    }
  }

  /** Marks the handle suspect after a failed write and starts recovering; returns the error for the caller. */
  private writeFailed(err: unknown): TributaryError {
    const failure = describeWriteFailure(err, this.path);
    const wasWritable = this.failure === undefined;
    this.failure = failure;
    if (wasWritable) {
      this.retryMs = this.retryMinMs;
      this.emitWritable();
    }
    this.scheduleRecovery();
    return failure;
  }

  /** A fresh error for one refused commit (each caller gets its own instance). */
  private refusal(): TributaryError {
    const failure = this.failure;
    if (failure === undefined) return closedError();
    return new TributaryError('StoreUnavailable', failure.message, { cause: failure.cause });
  }

  /** Reopens the handle if it is suspect and there is room; resolves whether writes may go ahead. Never rejects. */
  private recover(): Promise<boolean> {
    this.recovering ??= this.tryRecover().finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  private async tryRecover(): Promise<boolean> {
    if (this.closed) return false;
    if (this.failure === undefined) return true;
    if (Date.now() < this.notBefore) return false;
    try {
      if (await this.lacksSpaceToReopen()) {
        this.backOff();
        return false;
      }
      await this.reopen();
      await this.probe();
    } catch (err) {
      this.failure = describeReopenFailure(err, this.path);
      this.notBefore = Date.now() + this.retryMs;
      this.backOff();
      return false;
    }
    this.failure = undefined;
    this.retryMs = this.retryMinMs;
    this.notBefore = 0;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.emitWritable();
    return true;
  }

  private backOff(): void {
    this.retryMs = Math.min(this.retryMs * 2, this.retryMaxMs);
  }

  private scheduleRecovery(): void {
    if (this.timer !== undefined || this.closed || this.failure === undefined) return;
    const delay = Math.max(this.retryMs, this.notBefore - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.recover().then((ok) => {
        if (!ok) this.scheduleRecovery();
      });
    }, delay);
    this.timer.unref();
  }

  /** True when the free space is known to be short of the logs' size plus the headroom. */
  private async lacksSpaceToReopen(): Promise<boolean> {
    try {
      const [fsStats, names] = await Promise.all([statfs(this.path), readdir(this.path)]);
      const sizes = await Promise.all(names.filter((n) => n.endsWith('.log')).map((n) => stat(join(this.path, n)).then((s) => s.size, () => 0)));
      const logBytes = sizes.reduce((a, b) => a + b, 0);
      return fsStats.bavail * fsStats.bsize < logBytes + this.headroomBytes;
    } catch {
      return false; // cannot tell: try the reopen
    }
  }

  /** Closes and reopens the handle in place (after draining reads made through {@link read}). */
  private async reopen(): Promise<void> {
    let release = noop;
    this.reopening = new Promise<void>((resolve) => (release = resolve));
    try {
      await this.drainReads();
      if (this.handle.status === 'open') await this.handle.close();
      const opening = this.handle.open();
      // The handle is 'opening' now: sublevels opened now defer their operations until it is open.
      for (const sub of this.sublevels) sub.open().catch(noop);
      await opening;
      this.reopenCount++;
    } finally {
      this.reopening = undefined;
      release();
    }
  }

  private async drainReads(): Promise<void> {
    if (this.activeReads === 0) return;
    await new Promise<void>((resolve) => {
      const t = setTimeout(done, READ_DRAIN_MS);
      function done(): void {
        clearTimeout(t);
        resolve();
      }
      this.readsDrained = done;
    });
    this.readsDrained = undefined;
  }

  /** A tiny synced write (the deletion of a key that never exists): do writes work again? */
  private async probe(): Promise<void> {
    const batch = this.handle.batch();
    batch.del(PROBE_KEY);
    await batch.write({ sync: true });
  }

  private emitWritable(): void {
    const writable = this.writable;
    const error = this.failure;
    notify(this.listeners, 'writable', (listener) => listener(writable, error));
  }

  async getMeta(name: string): Promise<Buffer | undefined> {
    return this.read((db) => db.get(metaKey(name)));
  }

  /** Reads a fixed setting recorded at creation, or records `value` if this is a new database. */
  async fixedSetting(name: string, value: string): Promise<string> {
    const existing = await this.getMeta(name);
    if (existing !== undefined) return existing.toString('utf8');
    await this.commit([{ type: 'put', key: metaKey(name), value: Buffer.from(value) }]);
    return value;
  }

  private async checkFormat(): Promise<void> {
    const stored = await this.getMeta('format');
    if (stored === undefined) {
      // A new database, or something that is not a tributary data directory.
      const anyKey = await this.handle.keys({ limit: 1 }).all();
      if (anyKey.length > 0) {
        throw new TributaryError('StoreUnavailable', `the database at ${this.path} holds data but no format version: it is not a tributary data directory (this build reads format version ${FORMAT_VERSION}); refusing to open it`);
      }
      await this.commit([{ type: 'put', key: metaKey('format'), value: Buffer.from(String(FORMAT_VERSION)) }]);
      return;
    }
    const text = stored.toString('utf8');
    if (!/^[1-9][0-9]{0,8}$/.test(text)) {
      throw new TributaryError('StoreUnavailable', `the database at ${this.path} holds an unknown format version ${JSON.stringify(text)}; this build reads format version ${FORMAT_VERSION}; refusing to open it`);
    }
    const version = Number(text);
    if (version > FORMAT_VERSION) {
      throw new TributaryError('StoreUnavailable', `the database at ${this.path} holds format version ${version}, newer than this build reads (format version ${FORMAT_VERSION}); refusing to open it (use a tributary build that reads format ${version})`);
    }
    if (version === 1) await this.migrateFrom1();
    // Format 2 data reads as is in format 3 (which only adds kept-digit numbers); the
    // version moves so that a format-2 build refuses the directory from now on.
    else if (version === 2) await this.commit([{ type: 'put', key: metaKey('format'), value: Buffer.from(String(FORMAT_VERSION)) }]);
    else if (version !== FORMAT_VERSION) {
      throw new TributaryError('StoreUnavailable', `the database at ${this.path} holds format version ${version}, older than this build reads (format version ${FORMAT_VERSION}) and there is no migration; refusing to open it`);
    }
  }

  /**
   * Format 1 kept one delivery id per packet id (`Q`); format 2 keeps a window of each
   * client's latest deliveries. The old rows are dropped: the guard starts afresh, so a
   * PUBLISH in flight across the upgrade may be stored twice (if server-stamped).
   */
  private async migrateFrom1(): Promise<void> {
    await this.clear({ gte: Buffer.of(Prefix.delivery), lt: Buffer.of(Prefix.delivery + 1) }, 10_000);
    await this.commit([{ type: 'put', key: metaKey('format'), value: Buffer.from(String(FORMAT_VERSION)) }]);
  }

  /** Lets queued commits finish, stops recovering and closes the handle. Later commits reject with `StoreUnavailable`. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    await this.writeTail;
    if (this.recovering !== undefined) await this.recovering;
    if (this.handle.status === 'open' || this.handle.status === 'opening') await this.handle.close();
  }
}

export function metaKey(name: string): Buffer {
  return Buffer.concat([Buffer.of(Prefix.meta), Buffer.from(name, 'utf8')]);
}

function nonNegative(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer (got ${String(value)})`);
  return value;
}

function closedError(cause?: unknown): TributaryError {
  return new TributaryError('StoreUnavailable', 'the database is closed', cause === undefined ? {} : { cause });
}

function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

function causeOf(err: unknown): unknown {
  return (err as { cause?: unknown } | null | undefined)?.cause;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The message with its cause's (abstract-level wraps open and close failures). */
function detailOf(err: unknown): string {
  const cause = causeOf(err);
  return cause === undefined || cause === null ? messageOf(err) : `${messageOf(err)}: ${messageOf(cause)}`;
}

/** LevelDB reports errno only as text: "IO error: <file>: No space left on device". */
function isDiskFull(err: unknown): boolean {
  for (let e = err, depth = 0; e !== undefined && e !== null && depth < 5; e = causeOf(e), depth++) {
    if (/No space left on device|ENOSPC|Disk quota exceeded|EDQUOT/i.test(messageOf(e))) return true;
  }
  return false;
}

function isNotOpen(err: unknown): boolean {
  const code = errorCode(err);
  return code === 'LEVEL_DATABASE_NOT_OPEN' || code === 'LEVEL_ITERATOR_NOT_OPEN' || code === 'LEVEL_BATCH_NOT_OPEN';
}

function describeWriteFailure(err: unknown, path: string): TributaryError {
  const detail = detailOf(err);
  if (isDiskFull(err)) {
    return new TributaryError(
      'StoreUnavailable',
      `the disk holding the database at ${path} is full, so the write was not stored (${detail}); writes are refused until space is freed and then resume by themselves; reads keep working`,
      { cause: err },
    );
  }
  return new TributaryError('StoreUnavailable', `the database at ${path} failed a write, so it was not stored (${detail}); writes are refused until the database has been reopened, which is retried automatically`, { cause: err });
}

/** A reopen (or the write that checks it) failed: writes stay refused; the timer tries again. */
function describeReopenFailure(err: unknown, path: string): TributaryError {
  const detail = detailOf(err);
  if (isDiskFull(err)) {
    return new TributaryError('StoreUnavailable', `the disk holding the database at ${path} is still full (${detail}); writes are refused until space is freed and then resume by themselves`, { cause: err });
  }
  return new TributaryError('StoreUnavailable', `the database at ${path} could not be reopened after a failed write (${detail}); writes are refused and the reopen is retried automatically`, { cause: err });
}

/** Calls every listener; one that throws becomes a process warning rather than failing the database operation. */
function notify<L>(listeners: Set<L>, kind: string, call: (listener: L) => void): void {
  for (const listener of listeners) {
    try {
      call(listener);
    } catch (err) {
      process.emitWarning(`a Database ${kind} listener threw: ${messageOf(err)}`);
    }
  }
}

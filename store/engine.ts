/**
 * The write path and query logic every TelemetryStore shares, over a small
 * {@link StoreBackend} that only knows how to read, scan and apply a batch. The LevelDB
 * and in-memory stores are this engine with different backends, so they cannot drift
 * apart.
 *
 * Commit pipeline: `write()` validates and encodes at once, then queues. With nothing
 * in flight the queue is flushed on the next turn of the event loop (or after
 * `maxDelayMs`); while a batch is being written, new writes wait and go out together as
 * the next batch the moment it completes. Maintenance work that changes committed state
 * (retention REMOVE batches, device deletion, registry updates) runs as *turns* of the
 * same pipeline, alternating with write batches: exactly one batch or turn is in flight,
 * which keeps the per-device caches and the change log's sequence numbers simple (every
 * batch is planned against committed state only), and a long deletion never starves
 * writers: it goes one bounded batch at a time.
 */
import { TributaryError, invalidParameter } from '../core/errors.js';
import { assertDeviceId } from '../core/ids.js';
import type { Logger } from '../core/logger.js';
import { stringifyJson } from '../core/numbers.js';
import { MAX_TIMESTAMP_MS } from '../core/time.js';
import type { BatchOp, Change, ChangeLog, WriteOrigin } from '../streams/types.js';
import { decodeDeviceCursor, decodeReadingCursor, encodeDeviceCursor, encodeReadingCursor, type Order } from './cursor.js';
import {
  KeyAccumulator,
  checkKeys,
  checkTags,
  classify,
  compareItemKeys,
  compileLeafWalker,
  compileProjection,
  coversPaths,
  flattenValues,
  formatDuration,
  parseValues,
  pathMatchesKey,
  prepareWrite,
  type Leaf,
  type PreparedWrite,
  type Projection,
} from './items.js';
import { DEFAULT_DELIVERY_WINDOW, DeliveryWindow, type DeliveryRow } from './delivery-window.js';
import { WriteRates } from './write-rate.js';
import { MAX_U32 } from './keys.js';
import {
  AGGREGATES,
  type Aggregate,
  type AggregateBucket,
  type AggregateQuery,
  type AggregateResult,
  type DeleteDeviceResult,
  type DeviceInfo,
  type DropResult,
  type ItemChange,
  type KeyValue,
  type LatestOptions,
  type LatestValues,
  type ListDevicesQuery,
  type Page,
  type PutDeviceRequest,
  type PutDeviceResult,
  type RegistryStats,
  type RangeQuery,
  type RawReading,
  type Reading,
  type TelemetryStore,
  type Values,
  type WriteRequest,
  type WriteResult,
} from './types.js';

/** A stored reading as a backend returns it: key and encoded values. */
export interface StoredItem {
  ts: number;
  seq: number;
  /** The values' JSON as UTF-8, exactly as stored. */
  json: Buffer;
}

/**
 * A device's latest item plus the per-key latest of the value keys that item lacks.
 * Keys the latest item carries are answered from it, so while a device sends the same
 * keys every time `older` stays empty and per-key latest costs nothing on the write path.
 */
export interface LatestItem extends StoredItem {
  /** Leaf path → newest (ts, seq, value) seen, for paths absent from this item. Absent when empty. */
  older?: Record<string, KeyValue>;
  /** The parsed values, once at hand: a cache of the engine's, never stored and never handed out. */
  values?: Values;
}

/** The device registry entry as stored (the device id is the key). */
export interface DeviceRecord {
  firstSeen: number | null;
  lastSeen: number | null;
  readings: number;
  tags: Record<string, string>;
}

/** What the store keeps per device: the latest item and the registry entry, either absent. */
export interface DeviceState {
  latest: LatestItem | undefined;
  info: DeviceRecord | undefined;
}

export interface ItemRef {
  deviceId: string;
  ts: number;
  seq: number;
}

/** A reading as an aggregation streams it: its ts and its values' JSON text. */
export interface StreamItem {
  ts: number;
  text: string;
}

/** A stored reading with its values' JSON text, as a range query reads it. */
export interface TextItem extends StreamItem {
  seq: number;
}

/** A stored reading of any device, as a partition scan returns it. */
export interface PartitionItem extends ItemRef {
  json: Buffer;
}

/** Everything one batch needs to read before it can be planned; answered in one round trip. */
export interface BatchReads {
  /** Devices whose state is not cached yet. */
  devices: string[];
  /** Clients whose delivery window is not cached yet. */
  clients: string[];
  /** Item keys of device-stamped readings (server-stamped keys are known to be free). */
  items: ItemRef[];
}

export interface BatchReadResult {
  devices: DeviceState[];
  /** Stored delivery rows per client, in any order. */
  windows: DeliveryRow[][];
  /** Stored values per item key. */
  items: Array<Buffer | undefined>;
}

/** The outcome of planning one batch: what to write. Change records travel as `ops`. */
export interface WritePlan {
  now: number;
  /** Item changes in write order: an INSERT or MODIFY is one item put, a REMOVE one item delete. */
  changes: Change[];
  /** Stored bytes of each change's new values, parallel to `changes` (empty for a REMOVE). */
  json: Buffer[];
  /** New latest item per device whose latest changed. */
  latest: Array<{ deviceId: string; item: LatestItem }>;
  /** New registry entry per device seen in the batch. */
  devices: Array<{ deviceId: string; info: DeviceRecord }>;
  /** Delivery rows written: delivery `n` of the client, in `slot` of its window. */
  deliveries: Array<DeliveryRow & { clientId: string; slot: number }>;
  /** Devices whose latest and registry entries are deleted. */
  removedDevices: string[];
  /** Delivery window slots deleted. */
  removedDeliveries: Array<{ clientId: string; slot: number }>;
}

export interface ScanQuery {
  deviceId: string;
  /** Inclusive, already clamped to 0..MAX_TIMESTAMP_MS. */
  from: number;
  to: number;
  order: Order;
  /** Exclusive start position (from a cursor). */
  after: { ts: number; seq: number } | undefined;
  limit: number;
}

/** Storage under the engine. Implementations hold no write-path logic of their own. */
export interface StoreBackend {
  read(reads: BatchReads): Promise<BatchReadResult>;
  /** Highest seq stored at (deviceId, ts), if any. */
  maxSeqAt(deviceId: string, ts: number): Promise<number | undefined>;
  /** Applies the plan and the change log's staged `ops` atomically and durably. */
  commit(plan: WritePlan, ops: BatchOp[]): Promise<void>;
  /** Up to `limit` items of the device in the range, in the requested order. */
  scan(q: ScanQuery): Promise<StoredItem[]>;
  /** {@link scan} with the values as text (a range query embeds or parses them, and a string is cheaper to get than a Buffer). */
  scanText(q: ScanQuery): Promise<TextItem[]>;
  /**
   * The device's items with `from <= ts <= to` in ascending (ts, seq) order, in chunks
   * of at most `chunk` items, without holding more than a chunk in memory. Values come
   * as text: decoding straight to a string is about twice as fast as a Buffer.
   */
  stream(deviceId: string, from: number, to: number, chunk: number): AsyncIterable<StreamItem[]>;
  /** Up to `limit` registry entries ordered by id, strictly after `after`. */
  listDevices(after: string | undefined, limit: number): Promise<Array<{ deviceId: string; info: DeviceRecord }>>;
  /** The partition index, ascending. */
  partitions(): number[];
  /** Up to `limit` items of one partition in key order (device id, ts, seq), strictly after `after`. */
  scanPartition(partition: number, after: ItemRef | undefined, limit: number): Promise<PartitionItem[]>;
  /**
   * Removes a partition: its items and its index entry, and reclaims their space.
   * Idempotent, so an interrupted drop is finished by the next one.
   */
  dropPartition(partition: number): Promise<void>;
  /** Up to `limit` slots (ascending) of the client's delivery window that hold a row. */
  deliverySlotsOf(clientId: string, limit: number): Promise<number[]>;
}

/** The slice of a pino logger the store reports background work to. */
export type StoreLogger = Pick<Logger, 'info' | 'error'>;

export interface EngineOptions {
  changeLog: ChangeLog;
  /** Most readings in one batch (a single larger request still goes out whole). */
  maxBatch: number;
  /** Extra wait to gather writes when idle; 0 flushes on the next event-loop turn. */
  maxDelayMs: number;
  /** Width of a time partition (the unit retention drops). */
  partitionWindowMs: number;
  /** Readings older than this are dropped, a whole partition at a time; 0 (default) keeps everything. */
  retentionMs?: number;
  /** Emit a REMOVE record (with the service identity) for every reading retention drops. Default false. */
  retentionRemoveRecords?: boolean;
  /** How often the background retention pass runs (it also runs at open); 0 disables it. Default 60 s. */
  retentionCheckMs?: number;
  /** Where background work reports; without one, failures become process warnings. */
  logger?: StoreLogger;
  /** Clock for server stamps and registry times (tests inject a fixed one). */
  now?: () => number;
  /**
   * QoS 1 deliveries per client the redelivery guard remembers (store/delivery-window.ts):
   * well above the broker's inflight limit. Default {@link DEFAULT_DELIVERY_WINDOW}.
   */
  deliveryWindow?: number;
}

interface Pending {
  req: PreparedWrite;
  origin?: WriteOrigin;
  resolve: (result: WriteResult) => void;
  reject: (err: unknown) => void;
}

/** Server-stamp state of one device: the ts in use and the next free seq at it. */
interface Stamp {
  ts: number;
  next: number;
}

/** Per-device working state while one batch is planned. */
interface Work {
  state: DeviceState;
  latest: LatestItem | undefined;
  latestChanged: boolean;
  inserts: number;
  seen: boolean;
  hasServerStamped: boolean;
  /** Items written earlier in this batch by key `ts:seq`; only kept for devices with device-stamped readings. */
  written: Map<string, Buffer> | undefined;
}

/** Items per REMOVE batch (retention with records, device deletion): bounds memory and the time writers wait. */
const REMOVE_BATCH = 1000;
/** Items per chunk an aggregation streams. */
const AGGREGATE_CHUNK = 4096;
/** Most buckets one aggregation may produce. */
export const MAX_BUCKETS = 100_000;
/** Registry entries a filtered device listing examines per page. */
const LIST_SCAN_BUDGET = 10_000;
/** Most per-key entries kept for keys the latest reading lacks; the oldest go first. */
export const MAX_OLDER_KEYS = 1000;
const DEFAULT_RETENTION_CHECK_MS = 60_000;
/**
 * Delivery-window entries kept in memory, 10 bytes each: 10,000 clients at the default
 * window of 256. Beyond that the longest-cached window is dropped, to be read again when
 * its client next publishes.
 */
const CACHED_WINDOW_ENTRIES = 2_560_000;

function storeClosed(): TributaryError {
  return new TributaryError('StoreUnavailable', 'the telemetry store is closed');
}

function checkPositiveInt(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer (got ${String(value)})`);
  return value;
}

function checkNonNegativeInt(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw new RangeError(`${name} must be a non-negative integer (got ${String(value)})`);
  return value;
}

function emptyPlan(now: number): WritePlan {
  return { now, changes: [], json: [], latest: [], devices: [], deliveries: [], removedDevices: [], removedDeliveries: [] };
}

/** The shared TelemetryStore implementation; see the module comment. */
export class TelemetryStoreEngine implements TelemetryStore {
  /** The change log this store stages its records in. */
  readonly changeLog: ChangeLog;
  /** Retention in effect (0: keep forever). */
  readonly retentionMs: number;
  private readonly backend: StoreBackend;
  private readonly maxBatch: number;
  private readonly maxDelayMs: number;
  private readonly windowMs: number;
  private readonly removeRecords: boolean;
  private readonly logger: StoreLogger | undefined;
  private readonly now: () => number;

  private queue: Pending[] = [];
  private queuedReadings = 0;
  /** Readings of the batch being committed. */
  private committingReadings = 0;
  /** Maintenance turns waiting for the pipeline. */
  private steps: Array<() => Promise<void>> = [];
  private inFlight = false;
  private lastTurnWasStep = false;
  private cancelTimer: (() => void) | undefined;
  private idleWaiters: Array<() => void> = [];
  private closing: Promise<void> | undefined;
  /** Running maintenance (retention passes, deletions): close waits for them. */
  private readonly tasks = new Set<Promise<unknown>>();

  /** Committed state of devices the write path has touched (never filled by reads, which could race a commit). */
  private readonly devices = new Map<string, DeviceState>();
  /** Recent readings a minute per device, for `DeviceInfo.readingsPerMinute` (memory only). */
  private readonly rates = new WriteRates();
  private readonly stamps = new Map<string, Stamp>();
  /** Committed delivery windows of clients that published, in caching order (see {@link CACHED_WINDOW_ENTRIES}). */
  private readonly windows = new Map<string, DeliveryWindow>();
  private readonly windowSize: number;
  private readonly maxCachedWindows: number;

  /** Readings with ts below this are refused; only ever rises (see {@link dropExpired}). */
  private horizonFloor = 0;
  private retentionTimer: ReturnType<typeof setInterval> | undefined;
  private dropping: Promise<DropResult> | undefined;
  private dropRunning = false;
  /** Deletions in progress; writes to these devices wait for them. */
  private readonly deleting = new Map<string, Promise<DeleteDeviceResult | undefined>>();
  /** Devices written to while their deletion ran (their readings may sit behind its cursor). */
  private readonly writtenWhileDeleting = new Set<string>();

  protected constructor(backend: StoreBackend, opts: EngineOptions) {
    this.backend = backend;
    this.changeLog = opts.changeLog;
    this.maxBatch = checkPositiveInt(opts.maxBatch, 'maxBatch');
    this.maxDelayMs = checkNonNegativeInt(opts.maxDelayMs, 'maxDelayMs');
    this.windowMs = checkPositiveInt(opts.partitionWindowMs, 'partitionWindowMs');
    this.retentionMs = checkNonNegativeInt(opts.retentionMs ?? 0, 'retentionMs');
    this.removeRecords = opts.retentionRemoveRecords ?? false;
    this.logger = opts.logger;
    this.now = opts.now ?? Date.now;
    this.windowSize = checkPositiveInt(opts.deliveryWindow ?? DEFAULT_DELIVERY_WINDOW, 'deliveryWindow');
    if (this.windowSize > MAX_U32) throw new RangeError(`deliveryWindow must be at most ${MAX_U32} (got ${this.windowSize})`);
    this.maxCachedWindows = Math.max(1, Math.floor(CACHED_WINDOW_ENTRIES / this.windowSize));
    const every = checkNonNegativeInt(opts.retentionCheckMs ?? DEFAULT_RETENTION_CHECK_MS, 'retentionCheckMs');
    if (this.retentionMs > 0 && every > 0) {
      // At open (on a later tick, so opening is not held up), then periodically.
      setImmediate(() => this.backgroundDrop());
      this.retentionTimer = setInterval(() => this.backgroundDrop(), every);
      this.retentionTimer.unref();
    }
  }

  // ---------------------------------------------------------------- write path

  // Not `async`: on this per-reading path the wrapper promise and its extra turn were measurable.
  write(req: WriteRequest): Promise<WriteResult> {
    let prepared: PreparedWrite;
    try {
      if (this.closing !== undefined) throw storeClosed();
      prepared = prepareWrite(req);
      if (this.retentionMs > 0) {
        const error = this.tooOld(prepared, this.raiseHorizon(this.now()));
        if (error !== undefined) throw error;
      }
    } catch (err) {
      return Promise.reject(err);
    }
    const deletion = this.deleting.get(prepared.deviceId);
    if (deletion === undefined) return this.enqueue(prepared, req.origin);
    // Written after the delete was asked for: it belongs to the device that comes after.
    return deletion.then(
      () => this.enqueueUnlessClosed(prepared, req.origin),
      () => this.enqueueUnlessClosed(prepared, req.origin),
    );
  }

  private enqueueUnlessClosed(prepared: PreparedWrite, origin: WriteOrigin | undefined): Promise<WriteResult> {
    return this.closing === undefined ? this.enqueue(prepared, origin) : Promise.reject(storeClosed());
  }

  private enqueue(prepared: PreparedWrite, origin: WriteOrigin | undefined): Promise<WriteResult> {
    return new Promise<WriteResult>((resolve, reject) => {
      this.queue.push(origin === undefined ? { req: prepared, resolve, reject } : { req: prepared, origin, resolve, reject });
      this.queuedReadings += prepared.readings.length;
      this.schedule();
    });
  }

  get backlog(): number {
    return this.queuedReadings + this.committingReadings;
  }

  /** The horizon for `now`: readings with ts below it have expired. Monotonic, so a clock stepping back never reopens a dropped partition. */
  private raiseHorizon(now: number): number {
    if (now - this.retentionMs > this.horizonFloor) this.horizonFloor = now - this.retentionMs;
    return this.horizonFloor;
  }

  private tooOld(req: PreparedWrite, horizon: number): TributaryError | undefined {
    const i = req.readings.findIndex((r) => r.ts !== undefined && r.ts < horizon);
    if (i < 0) return undefined;
    const ts = req.readings[i]?.ts as number;
    return new TributaryError(
      'ValidationError',
      `reading ${i}: ts ${ts} (${new Date(ts).toISOString()}) is older than the retention of ${formatDuration(this.retentionMs)} (readings before ${new Date(horizon).toISOString()} are not accepted)`,
      { field: 'ts' },
    );
  }

  private schedule(): void {
    if (this.inFlight) return; // the running batch or turn picks the queue up when it completes
    if (this.queuedReadings >= this.maxBatch) {
      this.clearTimer();
      this.startBatch();
      return;
    }
    if (this.cancelTimer !== undefined) return;
    if (this.maxDelayMs > 0) {
      const t = setTimeout(() => this.flush(), this.maxDelayMs);
      this.cancelTimer = () => clearTimeout(t);
    } else {
      const t = setImmediate(() => this.flush());
      this.cancelTimer = () => clearImmediate(t);
    }
  }

  private clearTimer(): void {
    this.cancelTimer?.();
    this.cancelTimer = undefined;
  }

  private flush(): void {
    this.cancelTimer = undefined;
    if (!this.inFlight && this.queue.length > 0) this.startBatch();
  }

  private startBatch(): void {
    // Take whole requests up to maxBatch readings; a request is atomic, so at least one.
    let n = 0;
    let readings = 0;
    while (n < this.queue.length) {
      const size = (this.queue[n] as Pending).req.readings.length;
      if (n > 0 && readings + size > this.maxBatch) break;
      readings += size;
      n++;
    }
    const batch = this.queue.splice(0, n);
    this.queuedReadings -= readings;
    this.committingReadings = readings;
    this.inFlight = true;
    this.lastTurnWasStep = false;
    void this.runBatch(batch).then(() => {
      this.committingReadings = 0;
      this.afterTurn();
    });
  }

  /**
   * Runs `fn` as one turn of the commit pipeline: no batch is in flight while it runs,
   * so it sees committed state and may commit a plan of its own.
   */
  private turn<T>(fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.steps.push(() => fn().then(resolve, reject));
      if (!this.inFlight) this.startStep();
    });
  }

  private startStep(): void {
    const step = this.steps.shift() as () => Promise<void>;
    this.inFlight = true;
    this.lastTurnWasStep = true;
    void step().then(() => this.afterTurn());
  }

  /** Picks what goes next: turns and write batches alternate while both wait. */
  private afterTurn(): void {
    this.inFlight = false;
    if (this.steps.length > 0 && (this.queue.length === 0 || !this.lastTurnWasStep)) {
      this.startStep();
    } else if (this.queue.length > 0) {
      this.clearTimer();
      this.startBatch();
    } else {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Plans, commits and settles one batch; never rejects (callers are rejected instead). */
  private async runBatch(batch: Pending[]): Promise<void> {
    const now = this.now();
    if (this.retentionMs > 0) {
      // Checked again at commit: a retention pass may have moved the horizon since write().
      const horizon = this.raiseHorizon(now);
      batch = batch.filter((p) => {
        const error = this.tooOld(p.req, horizon);
        if (error !== undefined) p.reject(error);
        return error === undefined;
      });
      if (batch.length === 0) return;
    }
    let results: WriteResult[];
    try {
      results = await this.commitBatch(batch, now);
    } catch (err) {
      const wrapped = err instanceof TributaryError ? err : new TributaryError('StoreUnavailable', `the write could not be committed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
      for (const p of batch) p.reject(wrapped);
      return;
    }
    for (let i = 0; i < batch.length; i++) (batch[i] as Pending).resolve(results[i] as WriteResult);
  }

  private async commitBatch(batch: Pending[], now: number): Promise<WriteResult[]> {
    const work = new Map<string, Work>();
    const reads: BatchReads = { devices: [], clients: [], items: [] };
    // The windows this batch plans against, held here: caching more may evict them from `this.windows`.
    const windows = new Map<string, DeliveryWindow | undefined>();

    // Pass 1: what must be read before planning.
    for (const { req } of batch) {
      let w = work.get(req.deviceId);
      if (w === undefined) {
        const state = this.devices.get(req.deviceId);
        if (state === undefined) reads.devices.push(req.deviceId);
        w = { state: state ?? { latest: undefined, info: undefined }, latest: undefined, latestChanged: false, inserts: 0, seen: false, hasServerStamped: false, written: undefined };
        work.set(req.deviceId, w);
      }
      const clientId = req.delivery?.clientId;
      if (clientId !== undefined && !windows.has(clientId)) {
        const window = this.windows.get(clientId);
        windows.set(clientId, window);
        if (window === undefined) reads.clients.push(clientId);
      }
      for (const r of req.readings) {
        if (r.ts === undefined) {
          w.hasServerStamped = true;
        } else {
          reads.items.push({ deviceId: req.deviceId, ts: r.ts, seq: r.seq });
          w.written ??= new Map();
        }
      }
    }
    const found = reads.devices.length + reads.clients.length + reads.items.length > 0 ? await this.backend.read(reads) : undefined;
    const loaded = new Map<string, DeviceState>();
    if (found !== undefined) {
      reads.devices.forEach((id, i) => {
        const state = found.devices[i] as DeviceState;
        loaded.set(id, state);
        (work.get(id) as Work).state = state;
      });
      reads.clients.forEach((id, i) => windows.set(id, this.cacheWindow(id, new DeliveryWindow(this.windowSize, found.windows[i]))));
    }
    for (const w of work.values()) w.latest = w.state.latest;

    const probing = this.prepareStamps(work, now);
    if (probing !== undefined) await probing;
    const { plan, results, next } = this.planBatch(batch, work, windows as Map<string, DeliveryWindow>, found, now);
    for (const id of loaded.keys()) if (!next.has(id)) next.set(id, loaded.get(id) as DeviceState);
    if (this.deleting.size > 0) for (const id of next.keys()) if (this.deleting.has(id)) this.writtenWhileDeleting.add(id);

    let extraOps: BatchOp[] | undefined;
    for (const { req } of batch) if (req.batchOps !== undefined) (extraOps ??= []).push(...req.batchOps);
    if (plan.devices.length > 0 || plan.deliveries.length > 0 || extraOps !== undefined) {
      // Only once the batch is durable does the cache move on (before the log wakes
      // readers, so that anyone reacting to a record sees the store past it).
      await this.commitPlan(
        plan,
        () => {
          for (const [deviceId, state] of next) this.devices.set(deviceId, state);
          for (const d of plan.deliveries) windows.get(d.clientId)?.record(d.n, d.packetId, d.payloadHash);
          for (const [deviceId, w] of work) if (w.inserts > 0) this.rates.add(deviceId, w.inserts, now);
        },
        extraOps,
      );
    } else {
      for (const [deviceId, state] of next) this.devices.set(deviceId, state);
    }
    return results;
  }

  /**
   * Stages the plan's change records, commits plan and records in one batch, and only
   * then runs `onDurable` and releases the records to readers. On failure the records'
   * sequence numbers are handed back.
   */
  private async commitPlan(plan: WritePlan, onDurable?: () => void, extraOps?: BatchOp[]): Promise<void> {
    const ops: BatchOp[] = extraOps ?? [];
    const records = plan.changes.length > 0 ? this.changeLog.stage(ops, plan.changes, plan.now) : [];
    try {
      await this.backend.commit(plan, ops);
    } catch (err) {
      this.changeLog.abort(records);
      throw new TributaryError('StoreUnavailable', `the write batch could not be committed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
    onDurable?.();
    this.changeLog.commit(records);
  }

  /**
   * Pass 2: decides every reading's item key and change, synchronously, against
   * committed state plus this batch's own earlier writes. Returns what to write, each
   * caller's result, and the device states to cache once the batch is durable.
   */
  private planBatch(
    batch: Pending[],
    work: Map<string, Work>,
    windows: Map<string, DeliveryWindow>,
    found: BatchReadResult | undefined,
    now: number,
  ): { plan: WritePlan; results: WriteResult[]; next: Map<string, DeviceState> } {
    const plan = emptyPlan(now);
    const changes = plan.changes;
    const results: WriteResult[] = new Array<WriteResult>(batch.length);
    /** Hash per client and packet id of this batch's deliveries so far. */
    const batchDeliveries = new Map<string, number>();
    /** Deliveries of this batch so far, per client. */
    const numbered = new Map<string, number>();
    let itemIndex = 0;
    for (let b = 0; b < batch.length; b++) {
      const req = (batch[b] as Pending).req;
      const origin = (batch[b] as Pending).origin;
      const w = work.get(req.deviceId) as Work;
      if (req.delivery !== undefined) {
        const d = req.delivery;
        const window = windows.get(d.clientId) as DeliveryWindow;
        const qKey = `${d.clientId}\u0000${d.packetId}`;
        const stored = batchDeliveries.has(qKey) ? batchDeliveries.get(qKey) : window.hashOf(d.packetId);
        if (stored === d.payloadHash) {
          // A redelivery of a committed (or same-batch) publish: acknowledge, write nothing.
          // Residual ambiguity (API.md): a client that deliberately re-sends an identical
          // payload under the same packet id, without using that id for another message
          // in between, is indistinguishable from a redelivery and is dropped too.
          // Device-stamped readings would be NONE anyway; server-stamped ones are lost.
          itemIndex += req.readings.reduce((n, r) => (r.ts === undefined ? n : n + 1), 0);
          results[b] = { status: 'duplicate', items: [] };
          continue;
        }
        batchDeliveries.set(qKey, d.payloadHash);
        const earlier = numbered.get(d.clientId) ?? 0;
        numbered.set(d.clientId, earlier + 1);
        const n = window.nextNumber + earlier;
        plan.deliveries.push({ clientId: d.clientId, slot: n % window.size, n, packetId: d.packetId, payloadHash: d.payloadHash });
      }
      w.seen = true;
      const stamp = this.stamps.get(req.deviceId);
      const items: WriteResult['items'] = new Array<WriteResult['items'][number]>(req.readings.length);
      for (let i = 0; i < req.readings.length; i++) {
        const r = req.readings[i] as PreparedWrite['readings'][number];
        let ts: number;
        let seq: number;
        let existing: Buffer | undefined;
        if (r.ts === undefined) {
          const s = stamp as Stamp;
          ts = s.ts;
          seq = s.next++;
          if (seq > MAX_U32) throw new TributaryError('Throttled', `more than ${MAX_U32} readings of device ${req.deviceId} in one millisecond`);
          existing = w.written?.get(`${ts}:${seq}`);
        } else {
          ts = r.ts;
          seq = r.seq;
          const key = `${ts}:${seq}`;
          existing = w.written?.has(key) ? w.written.get(key) : found?.items[itemIndex];
          itemIndex++;
          // Keep later server stamps at this ts clear of the device's own seq.
          if (stamp !== undefined && stamp.ts === ts && seq >= stamp.next) stamp.next = seq + 1;
        }
        const c = classify(existing, r.json, r.values);
        items[i] = { ts, seq, change: c.change as ItemChange };
        if (c.change === 'NONE') continue;
        plan.json.push(r.json);
        w.written?.set(`${ts}:${seq}`, r.json);
        let change: Change;
        if (c.change === 'INSERT') {
          w.inserts++;
          change = { eventName: 'INSERT', deviceId: req.deviceId, ts, seq, newValues: r.values };
        } else {
          change = { eventName: 'MODIFY', deviceId: req.deviceId, ts, seq, newValues: r.values, oldValues: c.oldValues };
        }
        if (origin !== undefined) change.origin = origin;
        if (req.source !== undefined) change.source = req.source;
        changes.push(change);
        this.updateLatest(w, ts, seq, r.json, r.values);
      }
      results[b] = { status: 'committed', items };
    }

    const next = new Map<string, DeviceState>();
    for (const [deviceId, w] of work) {
      if (!w.seen) continue;
      const old = w.state.info;
      const info: DeviceRecord = {
        firstSeen: old?.firstSeen ?? now,
        lastSeen: Math.max(old?.lastSeen ?? now, now),
        readings: (old?.readings ?? 0) + w.inserts,
        tags: old?.tags ?? {},
      };
      plan.devices.push({ deviceId, info });
      if (w.latestChanged && w.latest !== undefined) plan.latest.push({ deviceId, item: w.latest });
      next.set(deviceId, { latest: w.latest, info });
    }
    return { plan, results, next };
  }

  /** Caches a client's committed window, dropping the longest-cached one beyond {@link CACHED_WINDOW_ENTRIES}. */
  private cacheWindow(clientId: string, window: DeliveryWindow): DeliveryWindow {
    this.windows.set(clientId, window);
    if (this.windows.size > this.maxCachedWindows) this.windows.delete(this.windows.keys().next().value as string);
    return window;
  }

  /**
   * Moves the device's latest item and per-key latest on for one written reading.
   * "Latest" is the highest (ts, seq); `>=` so that a MODIFY of the latest item
   * refreshes its values. A reading that becomes the latest hands the keys of the
   * previous latest that it lacks over to `older`; an older reading can still be the
   * newest carrier of a key the latest item lacks.
   */
  private updateLatest(w: Work, ts: number, seq: number, json: Buffer, values: Values): void {
    const prev = w.latest;
    if (prev === undefined || compareItemKeys(ts, seq, prev.ts, prev.seq) >= 0) {
      const older = prev === undefined ? undefined : olderAfter(prev, values);
      w.latest = older === undefined ? { ts, seq, json, values } : { ts, seq, json, values, older };
      w.latestChanged = true;
      return;
    }
    const latestPaths = flattenValues(valuesOf(prev));
    let older: Record<string, KeyValue> | undefined;
    compileLeafWalker()(values, (path, value) => {
      if (latestPaths.has(path)) return;
      // Own keys only: a path like `constructor` must not find Object.prototype's.
      const kept = older ?? prev.older;
      const cur = kept !== undefined && Object.hasOwn(kept, path) ? kept[path] : undefined;
      if (cur !== undefined && compareItemKeys(ts, seq, cur.ts, cur.seq) < 0) return;
      older ??= { ...prev.older };
      older[path] = { ts, seq, value };
    });
    if (older === undefined) return;
    w.latest = { ts: prev.ts, seq: prev.seq, json: prev.json, values: valuesOf(prev), older: capOlder(older) };
    w.latestChanged = true;
  }

  /**
   * Fixes each server-stamping device's ts for this batch: max(now, its last server
   * ts), so a clock step backwards never reorders a device's readings. The seq at that
   * ts must start above anything stored there. When the ts is above the device's
   * latest item nothing can be stored at it; when equal, the latest item holds the
   * highest seq; only when the device has readings ahead of the server clock (future
   * device stamps, or a clock stepped back across a restart) is the store asked.
   */
  private prepareStamps(work: Map<string, Work>, now: number): Promise<unknown> | undefined {
    let probes: Array<Promise<void>> | undefined;
    for (const [deviceId, w] of work) {
      if (!w.hasServerStamped) continue;
      const prev = this.stamps.get(deviceId);
      const ts = prev === undefined ? now : Math.max(now, prev.ts);
      if (prev !== undefined && prev.ts === ts) continue;
      const stamp: Stamp = { ts, next: 0 };
      this.stamps.set(deviceId, stamp);
      const latest = w.state.latest;
      if (latest === undefined || latest.ts < ts) continue;
      if (latest.ts === ts) {
        stamp.next = latest.seq + 1;
        continue;
      }
      (probes ??= []).push(
        this.backend.maxSeqAt(deviceId, ts).then((max) => {
          if (max !== undefined && max >= stamp.next) stamp.next = max + 1;
        }),
      );
    }
    // Usually nothing to ask: no promise then, so the batch goes on in the same turn.
    return probes === undefined ? undefined : Promise.all(probes);
  }

  /** Commits REMOVE records and deletes for `items` (one bounded batch). */
  private async commitRemoves(items: PartitionItem[], byService: boolean, plan: WritePlan = emptyPlan(this.now()), onDurable?: () => void): Promise<void> {
    for (const item of items) {
      const change: Change = { eventName: 'REMOVE', deviceId: item.deviceId, ts: item.ts, seq: item.seq, oldValues: parseValues(item.json.toString('utf8')) };
      if (byService) change.byService = true;
      plan.changes.push(change);
      plan.json.push(EMPTY);
    }
    await this.commitPlan(plan, onDurable);
  }

  private checkOpen(): void {
    if (this.closing !== undefined) throw storeClosed();
  }

  /** Keeps a maintenance promise where close() can wait for it. */
  private track<T>(p: Promise<T>): Promise<T> {
    this.tasks.add(p);
    const forget = (): void => {
      this.tasks.delete(p);
    };
    p.then(forget, forget);
    return p;
  }

  /**
   * Stops accepting writes and background work, commits what is queued, and waits for
   * the batch in flight and for running maintenance (which stops at its next batch).
   * Later calls reject with `StoreUnavailable`. The storage itself is not closed: its
   * owner does that.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.retentionTimer !== undefined) clearInterval(this.retentionTimer);
      this.clearTimer();
      if (!this.inFlight && this.queue.length > 0) this.startBatch();
      while (this.tasks.size > 0) await Promise.allSettled([...this.tasks]);
      if (this.inFlight) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    })();
    return this.closing;
  }

  // ---------------------------------------------------------------- reads

  query(q: RangeQuery): Promise<Page<Reading>> {
    return this.page(q, (deviceId, row, project) => {
      const values = parseValues(row.text);
      return { deviceId, ts: row.ts, seq: row.seq, values: project === undefined ? values : project(values) };
    });
  }

  queryRaw(q: RangeQuery): Promise<Page<RawReading>> {
    // The stored text is the values' JSON as is; only a projection needs to parse it.
    return this.page(q, (deviceId, row, project) => ({
      deviceId,
      ts: row.ts,
      seq: row.seq,
      valuesJson: project === undefined ? row.text : stringifyJson(project(parseValues(row.text))),
    }));
  }

  /** Validates a range query, reads one page of it and makes an item of each row. */
  private async page<T extends { ts: number; seq: number }>(q: RangeQuery, make: (deviceId: string, row: TextItem, project: Projection | undefined) => T): Promise<Page<T>> {
    const deviceId = assertDeviceId(q.deviceId);
    const from = checkTimeParam(q.from, 'from');
    const to = checkTimeParam(q.to, 'to');
    const order = q.order;
    if (order !== 'asc' && order !== 'desc') throw invalidParameter('order', `order must be asc or desc (got ${JSON.stringify(order)})`);
    const limit = q.limit;
    if (!Number.isSafeInteger(limit) || limit < 1) throw invalidParameter('limit', `limit must be a positive integer (got ${String(limit)})`);
    const after = q.cursor === undefined ? undefined : decodeReadingCursor(q.cursor, order);
    const project = q.keys !== undefined && q.keys.length > 0 ? compileProjection(q.keys) : undefined;

    const lo = Math.max(0, from);
    const hi = Math.min(MAX_TIMESTAMP_MS, to);
    if (lo > hi) return { items: [], nextCursor: null };
    // One extra item tells whether another page exists, so the last page has no cursor.
    const rows = await this.backend.scanText({ deviceId, from: lo, to: hi, order, after, limit: limit + 1 });
    const more = rows.length > limit;
    const n = more ? limit : rows.length;
    const items = new Array<T>(n);
    for (let i = 0; i < n; i++) items[i] = make(deviceId, rows[i] as TextItem, project);
    const last = items[n - 1];
    return { items, nextCursor: more && last !== undefined ? encodeReadingCursor({ order, ts: last.ts, seq: last.seq }) : null };
  }

  /**
   * Streams the range in chunks and folds each reading into the bucket of its ts, so
   * memory holds one chunk plus the result. Readings arrive in (ts, seq) order, so a
   * bucket is complete as soon as a reading of a later bucket shows up.
   */
  async aggregate(q: AggregateQuery): Promise<AggregateResult> {
    const deviceId = assertDeviceId(q.deviceId);
    const from = checkTimeParam(q.from, 'from');
    const to = checkTimeParam(q.to, 'to');
    const interval = q.intervalMs;
    if (typeof interval !== 'number' || !Number.isSafeInteger(interval) || interval < 1) {
      throw invalidParameter('interval', `interval must be a positive whole number of milliseconds (got ${String(interval)})`);
    }
    const aggs = checkAggregates(q.aggs);
    const walk = compileLeafWalker(q.keys);
    const lo = Math.max(0, from);
    const hi = Math.min(MAX_TIMESTAMP_MS, to);
    const buckets: AggregateBucket[] = [];
    if (lo > hi) return { deviceId, intervalMs: interval, buckets };
    const count = Math.floor(hi / interval) - Math.floor(lo / interval) + 1;
    if (count > MAX_BUCKETS) {
      throw invalidParameter('interval', `an interval of ${formatDuration(interval)} over this range makes ${count} buckets; at most ${MAX_BUCKETS} are allowed (use a longer interval or a shorter range)`);
    }

    let bucket = -1;
    let accs = new Map<string, KeyAccumulator>();
    const visit = (path: string, value: Leaf): void => {
      let acc = accs.get(path);
      if (acc === undefined) {
        acc = new KeyAccumulator();
        accs.set(path, acc);
      }
      acc.add(value);
    };
    const emit = (): void => {
      if (accs.size === 0) return;
      const values: AggregateBucket['values'] = {};
      for (const [path, acc] of accs) values[path] = acc.result(aggs);
      const start = bucket * interval;
      buckets.push({ start, end: start + interval, values });
      accs = new Map();
    };
    for await (const chunk of this.backend.stream(deviceId, lo, hi, AGGREGATE_CHUNK)) {
      for (const item of chunk) {
        const b = Math.floor(item.ts / interval);
        if (b !== bucket) {
          emit();
          bucket = b;
        }
        walk(parseValues(item.text), visit);
      }
    }
    emit();
    return { deviceId, intervalMs: interval, buckets };
  }

  latest(deviceId: string): Promise<Reading | undefined>;
  latest(deviceId: string, opts: LatestOptions): Promise<LatestValues | undefined>;
  async latest(deviceId: string, opts?: LatestOptions): Promise<Reading | LatestValues | undefined> {
    if (opts !== undefined) checkKeys(opts.keys);
    const state = await this.deviceState(deviceId);
    const item = state.latest;
    if (opts === undefined) {
      return item === undefined ? undefined : { deviceId, ts: item.ts, seq: item.seq, values: parseValues(item.json.toString('utf8')) };
    }
    if (item === undefined && state.info === undefined) return undefined;
    const values: LatestValues['values'] = {};
    if (item !== undefined) {
      const keys = opts.keys;
      const wanted = (path: string): boolean => keys.some((k) => pathMatchesKey(path, k));
      for (const [path, value] of flattenValues(valuesOf(item))) if (wanted(path)) values[path] = { ts: item.ts, seq: item.seq, value };
      if (item.older !== undefined) for (const [path, kv] of Object.entries(item.older)) if (wanted(path)) values[path] = { ts: kv.ts, seq: kv.seq, value: kv.value };
    }
    return { deviceId, values };
  }

  async latestRaw(deviceId: string): Promise<RawReading | undefined> {
    const item = (await this.deviceState(deviceId)).latest;
    return item === undefined ? undefined : { deviceId, ts: item.ts, seq: item.seq, valuesJson: item.json.toString('utf8') };
  }

  async getDevice(deviceId: string): Promise<DeviceInfo | undefined> {
    const info = (await this.deviceState(deviceId)).info;
    return info === undefined ? undefined : this.deviceInfo(deviceId, info);
  }

  async listDevices(q: ListDevicesQuery): Promise<Page<DeviceInfo>> {
    const limit = q.limit;
    if (!Number.isSafeInteger(limit) || limit < 1) throw invalidParameter('limit', `limit must be a positive integer (got ${String(limit)})`);
    const prefix = q.prefix ?? '';
    const cursor = q.cursor === undefined ? undefined : decodeDeviceCursor(q.cursor);
    // Registry keys are in id order: a prefix is one contiguous range, entered just before it.
    const start = prefix === '' ? undefined : justBefore(prefix);
    const after = start !== undefined && (cursor === undefined || cursor < start) ? start : cursor;
    const filter = q.tags === undefined ? undefined : Object.entries(q.tags);
    if ((filter === undefined || filter.length === 0) && prefix === '') {
      const rows = await this.backend.listDevices(after, limit + 1);
      const more = rows.length > limit;
      const page = more ? rows.slice(0, limit) : rows;
      const last = page[page.length - 1];
      return { items: page.map((r) => this.deviceInfo(r.deviceId, r.info)), nextCursor: more && last !== undefined ? encodeDeviceCursor(last.deviceId) : null };
    }
    // Filtered: examine a bounded number of entries per page; the cursor says where to go on.
    const matches = (tags: Record<string, string>): boolean => (filter ?? []).every(([k, v]) => Object.hasOwn(tags, k) && (v === undefined || tags[k] === v));
    const found: DeviceInfo[] = [];
    let position = after;
    let examined = 0;
    let exhausted = false;
    // One match more than the page tells whether another page exists.
    while (found.length <= limit && !exhausted && examined < LIST_SCAN_BUDGET) {
      const want = Math.min(1000, LIST_SCAN_BUDGET - examined);
      const rows = await this.backend.listDevices(position, want);
      if (rows.length < want) exhausted = true;
      for (const row of rows) {
        examined++;
        if (!row.deviceId.startsWith(prefix)) {
          // Past the prefix's range: nothing further can match.
          exhausted = true;
          break;
        }
        if (matches(row.info.tags)) found.push(this.deviceInfo(row.deviceId, row.info));
        if (found.length > limit) break;
        position = row.deviceId;
      }
    }
    if (found.length > limit) {
      const items = found.slice(0, limit);
      return { items, nextCursor: encodeDeviceCursor((items[limit - 1] as DeviceInfo).deviceId) };
    }
    return { items: found, nextCursor: exhausted || position === undefined ? null : encodeDeviceCursor(position) };
  }

  /**
   * Registry and partition counts (`GET /v1/store/stats`): one scan of the registry, so it
   * costs one read per 1,000 devices.
   */
  async stats(): Promise<RegistryStats> {
    const partitions = this.backend.partitions();
    let devices = 0;
    let readings = 0;
    let after: string | undefined;
    for (;;) {
      const rows = await this.backend.listDevices(after, 1000);
      for (const row of rows) {
        devices++;
        readings += row.info.readings;
      }
      const last = rows.at(-1);
      if (last === undefined || rows.length < 1000) break;
      after = last.deviceId;
    }
    return {
      devices,
      readings,
      partitions: partitions.length,
      oldestPartitionStart: partitions[0] === undefined ? null : partitions[0] * this.windowMs,
      partitionWindowMs: this.windowMs,
    };
  }

  private deviceInfo(deviceId: string, info: DeviceRecord): DeviceInfo {
    // Copies, so a caller editing the result cannot reach into the cache.
    return { deviceId, firstSeen: info.firstSeen, lastSeen: info.lastSeen, readings: info.readings, readingsPerMinute: this.rates.perMinute(deviceId, this.now()), tags: { ...info.tags } };
  }

  private async deviceState(deviceId: string): Promise<DeviceState> {
    assertDeviceId(deviceId);
    const cached = this.devices.get(deviceId);
    if (cached !== undefined) return cached;
    const found = await this.backend.read({ devices: [deviceId], clients: [], items: [] });
    return found.devices[0] as DeviceState;
  }

  // ---------------------------------------------------------------- registry

  async putDevice(req: PutDeviceRequest): Promise<PutDeviceResult> {
    this.checkOpen();
    const deviceId = assertDeviceId(req.deviceId);
    const tags = checkTags(req.tags);
    const deletion = this.deleting.get(deviceId);
    if (deletion !== undefined) await deletion.catch(() => undefined);
    this.checkOpen();
    return this.track(
      this.turn(async () => {
        // In a turn nothing is in flight, so what is read here is committed and may be cached.
        const state = this.devices.get(deviceId) ?? ((await this.backend.read({ devices: [deviceId], clients: [], items: [] })).devices[0] as DeviceState);
        const old = state.info;
        const info: DeviceRecord = { firstSeen: old?.firstSeen ?? null, lastSeen: old?.lastSeen ?? null, readings: old?.readings ?? 0, tags };
        const plan = emptyPlan(this.now());
        plan.devices.push({ deviceId, info });
        await this.commitPlan(plan, () => this.devices.set(deviceId, { latest: state.latest, info }));
        return { created: old === undefined, device: this.deviceInfo(deviceId, info) };
      }),
    );
  }

  deleteDevice(deviceId: string): Promise<DeleteDeviceResult | undefined> {
    try {
      assertDeviceId(deviceId);
      this.checkOpen();
    } catch (err) {
      return Promise.reject(err);
    }
    const running = this.deleting.get(deviceId);
    if (running !== undefined) return running;
    const run = this.runDelete(deviceId).finally(() => {
      this.deleting.delete(deviceId);
      this.writtenWhileDeleting.delete(deviceId);
    });
    this.deleting.set(deviceId, run);
    return this.track(run);
  }

  /**
   * Deletes a device in bounded batches through the commit pipeline, each an atomic
   * batch of item deletes and their REMOVE records: first its readings, then the
   * delivery ids of the MQTT client of the same id, and last, once nothing of it is
   * left, its latest and registry entries. Writes asked for after the delete wait for
   * it; writes queued before it may commit between its batches, possibly behind its
   * cursor, so the last turn looks again from the start. Interrupted (close, failure),
   * the device is still registered and a second delete finishes the job.
   */
  private async runDelete(deviceId: string): Promise<DeleteDeviceResult | undefined> {
    const exists = await this.turn(async () => {
      const state = this.devices.get(deviceId) ?? ((await this.backend.read({ devices: [deviceId], clients: [], items: [] })).devices[0] as DeviceState);
      return state.info !== undefined || state.latest !== undefined;
    });
    if (!exists) return undefined;
    let removed = 0;
    let cursor: { ts: number; seq: number } | undefined;
    const all = (after: { ts: number; seq: number } | undefined): Promise<StoredItem[]> =>
      this.backend.scan({ deviceId, from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', after, limit: REMOVE_BATCH });
    const withId = (items: StoredItem[]): PartitionItem[] => items.map((i) => ({ deviceId, ts: i.ts, seq: i.seq, json: i.json }));
    for (;;) {
      this.checkOpen();
      const n = await this.turn(async () => {
        const items = await all(cursor);
        if (items.length > 0) {
          await this.commitRemoves(withId(items), false);
          const last = items[items.length - 1] as StoredItem;
          cursor = { ts: last.ts, seq: last.seq };
        }
        return items.length;
      });
      removed += n;
      if (n < REMOVE_BATCH) break;
    }
    for (;;) {
      this.checkOpen();
      const done = await this.turn(async () => {
        // Readings that slipped in behind the cursor (see above), if any batch wrote to the device.
        const items = this.writtenWhileDeleting.has(deviceId) ? await all(undefined) : [];
        const slots = await this.backend.deliverySlotsOf(deviceId, REMOVE_BATCH);
        // Writes queued before the delete still go first: it ends only when none is left.
        const queued = this.queue.some((p) => p.req.deviceId === deviceId);
        const last = items.length < REMOVE_BATCH && slots.length < REMOVE_BATCH && !queued;
        const plan = emptyPlan(this.now());
        for (const slot of slots) plan.removedDeliveries.push({ clientId: deviceId, slot });
        if (last) plan.removedDevices.push(deviceId);
        if (items.length === 0) this.writtenWhileDeleting.delete(deviceId);
        await this.commitRemoves(withId(items), false, plan, () => {
          if (!last) return;
          this.devices.delete(deviceId);
          this.stamps.delete(deviceId);
          this.windows.delete(deviceId);
          this.rates.delete(deviceId);
        });
        removed += items.length;
        return last;
      });
      if (done) break;
    }
    return { readings: removed };
  }

  // ---------------------------------------------------------------- retention

  /**
   * One retention pass: drops every partition wholly older than `now - retention`.
   * The expired partitions are chosen in a turn of the pipeline that also raises the
   * write horizon, so from then on no batch can put a reading into them. Without REMOVE
   * records a partition goes with one range delete and a compaction of its key range;
   * with them, its readings are first removed in bounded batches through the commit
   * pipeline, each with its REMOVE record (service identity), then the range is
   * dropped. Passes run one at a time.
   */
  dropExpired(now?: number): Promise<DropResult> {
    if (this.closing !== undefined) return Promise.reject(storeClosed());
    if (now !== undefined && !Number.isSafeInteger(now)) return Promise.reject(new RangeError(`now must be epoch milliseconds (got ${String(now)})`));
    const at = now ?? this.now();
    const previous = this.dropping;
    const run = (async () => {
      if (previous !== undefined) await previous.catch(() => undefined);
      this.dropRunning = true;
      try {
        return await this.runDrop(at);
      } finally {
        this.dropRunning = false;
      }
    })();
    this.dropping = run;
    return this.track(run);
  }

  private backgroundDrop(): void {
    if (this.closing !== undefined || this.dropRunning) return;
    this.dropExpired().then(
      (result) => {
        if (result.partitions > 0) this.logger?.info({ ...result }, 'retention dropped expired partitions');
      },
      (err: unknown) => {
        if (this.closing !== undefined) return;
        if (this.logger !== undefined) this.logger.error({ err }, 'retention pass failed; it is retried at the next interval');
        else process.emitWarning(`retention pass failed: ${(err as Error)?.stack ?? String(err)}`);
      },
    );
  }

  private async runDrop(now: number): Promise<DropResult> {
    const started = performance.now();
    if (this.retentionMs === 0) return { partitions: 0, ms: 0 };
    this.checkOpen();
    const expired = await this.turn(async () => {
      const horizon = this.raiseHorizon(now);
      return this.backend.partitions().filter((p) => (p + 1) * this.windowMs <= horizon);
    });
    let readings = 0;
    for (const p of expired) {
      if (this.removeRecords) readings += await this.removePartitionItems(p);
      this.checkOpen();
      await this.backend.dropPartition(p);
    }
    const result: DropResult = { partitions: expired.length, ms: performance.now() - started };
    if (this.removeRecords) result.readings = readings;
    return result;
  }

  /** REMOVE records for every reading of an expired partition, a bounded batch per turn. */
  private async removePartitionItems(partition: number): Promise<number> {
    let after: ItemRef | undefined;
    let removed = 0;
    for (;;) {
      this.checkOpen();
      const n = await this.turn(async () => {
        const items = await this.backend.scanPartition(partition, after, REMOVE_BATCH);
        if (items.length > 0) {
          await this.commitRemoves(items, true);
          after = items[items.length - 1];
        }
        return items.length;
      });
      removed += n;
      if (n < REMOVE_BATCH) return removed;
    }
  }
}

const EMPTY = Buffer.alloc(0);

/** The item's parsed values, parsed once and kept on the item. */
function valuesOf(item: LatestItem): Values {
  item.values ??= parseValues(item.json.toString('utf8'));
  return item.values;
}

/**
 * `older` of a new latest item with `values`, succeeding `prev`: the leaves of `prev`
 * the new item lacks move in, the leaves it carries move out. The common case — the
 * same keys as last time and nothing in `older` — is one allocation-free walk.
 */
function olderAfter(prev: LatestItem, values: Values): Record<string, KeyValue> | undefined {
  const base = prev.older;
  const prevValues = valuesOf(prev);
  if (base === undefined && coversPaths(prevValues, values)) return undefined;
  const paths = flattenValues(values);
  let older: Record<string, KeyValue> | undefined;
  for (const [path, value] of flattenValues(prevValues)) {
    if (paths.has(path)) continue;
    older ??= { ...base };
    older[path] = { ts: prev.ts, seq: prev.seq, value };
  }
  if (base !== undefined) {
    for (const path in base) {
      if (!paths.has(path)) continue;
      older ??= { ...base };
      delete older[path];
    }
  }
  if (older === undefined) return base;
  return Object.keys(older).length > 0 ? capOlder(older) : undefined;
}

/** Keeps the newest MAX_OLDER_KEYS entries, so a device with ever-new key names cannot grow its latest entry without bound. */
function capOlder(older: Record<string, KeyValue>): Record<string, KeyValue> {
  const entries = Object.entries(older);
  if (entries.length <= MAX_OLDER_KEYS) return older;
  entries.sort(([, a], [, b]) => compareItemKeys(b.ts, b.seq, a.ts, a.seq));
  return Object.fromEntries(entries.slice(0, MAX_OLDER_KEYS));
}

function checkAggregates(aggs: unknown): Aggregate[] {
  if (!Array.isArray(aggs) || aggs.length === 0) throw invalidParameter('agg', `agg must list at least one of ${AGGREGATES.join(', ')}`);
  for (const a of aggs) {
    if (!(AGGREGATES as readonly unknown[]).includes(a)) throw invalidParameter('agg', `agg must be a list of ${AGGREGATES.join(', ')} (got ${JSON.stringify(a)})`);
  }
  return [...new Set(aggs as Aggregate[])];
}

function checkTimeParam(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw invalidParameter(field, `${field} must be an integer number of epoch milliseconds (got ${String(value)})`);
  return value;
}

/**
 * The greatest string below every id that starts with `prefix` (ids are at most 128
 * characters, each at most `z`): the last character lowered by one, then `z`s.
 */
export function justBefore(prefix: string): string {
  const last = prefix.charCodeAt(prefix.length - 1);
  return `${prefix.slice(0, -1)}${String.fromCharCode(last - 1)}${'z'.repeat(128)}`;
}

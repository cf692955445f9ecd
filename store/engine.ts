/**
 * The write path and query logic every TelemetryStore shares, over a small
 * {@link StoreBackend} that only knows how to read and apply a batch. The LevelDB and
 * in-memory stores are this engine with different backends, so they cannot drift apart.
 *
 * Write path (group commit): `write()` validates and encodes at once, then queues.
 * With no batch in flight the queue is flushed on the next turn of the event loop (or
 * after `maxDelayMs`); while a batch is being written, new writes wait and go out
 * together as the next batch the moment it completes. Exactly one batch is in flight,
 * which keeps the per-device caches and the change log's sequence numbers simple: a
 * batch is planned against committed state only.
 */
import { TributaryError, invalidParameter } from '../core/errors.js';
import { assertDeviceId } from '../core/ids.js';
import { MAX_TIMESTAMP_MS } from '../core/time.js';
import type { BatchOp, Change, ChangeLog } from '../streams/types.js';
import { decodeDeviceCursor, decodeReadingCursor, encodeDeviceCursor, encodeReadingCursor, type Order } from './cursor.js';
import { classify, compareItemKeys, compileProjection, prepareWrite, type PreparedWrite } from './items.js';
import { MAX_U32 } from './keys.js';
import type {
  DeliveryId,
  DeviceInfo,
  ItemChange,
  ListDevicesQuery,
  Page,
  RangeQuery,
  Reading,
  TelemetryStore,
  Values,
  WriteRequest,
  WriteResult,
} from './types.js';

/** A stored reading as a backend returns it: key and encoded values. */
export interface StoredItem {
  ts: number;
  seq: number;
  /** The values' JSON as UTF-8, exactly as stored. */
  json: Buffer;
}

/** The device registry entry as stored (the device id is the key). */
export interface DeviceRecord {
  firstSeen: number;
  lastSeen: number;
  readings: number;
  tags: Record<string, string>;
}

/** What the store keeps per device: the latest item and the registry entry, either absent. */
export interface DeviceState {
  latest: StoredItem | undefined;
  info: DeviceRecord | undefined;
}

export interface ItemRef {
  deviceId: string;
  ts: number;
  seq: number;
}

/** Everything one batch needs to read before it can be planned; answered in one round trip. */
export interface BatchReads {
  /** Devices whose state is not cached yet. */
  devices: string[];
  deliveries: DeliveryId[];
  /** Item keys of device-stamped readings (server-stamped keys are known to be free). */
  items: ItemRef[];
}

export interface BatchReadResult {
  devices: DeviceState[];
  /** Stored payload hash per delivery id. */
  deliveries: Array<string | undefined>;
  /** Stored values per item key. */
  items: Array<Buffer | undefined>;
}

/** The outcome of planning one batch: what to write. Change records travel as `ops`. */
export interface WritePlan {
  now: number;
  /** The batch's INSERTs and MODIFYs in write order: each is one item put. */
  changes: Change[];
  /** Stored bytes of each change's new values, parallel to `changes` (no per-item wrapper objects). */
  json: Buffer[];
  /** New latest item per device whose latest changed. */
  latest: Array<{ deviceId: string; item: StoredItem }>;
  /** New registry entry per device seen in the batch. */
  devices: Array<{ deviceId: string; info: DeviceRecord }>;
  deliveries: DeliveryId[];
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
  /** Up to `limit` registry entries ordered by id, strictly after `after`. */
  listDevices(after: string | undefined, limit: number): Promise<Array<{ deviceId: string; info: DeviceRecord }>>;
}

export interface EngineOptions {
  changeLog: ChangeLog;
  /** Most readings in one batch (a single larger request still goes out whole). */
  maxBatch: number;
  /** Extra wait to gather writes when idle; 0 flushes on the next event-loop turn. */
  maxDelayMs: number;
  /** Clock for server stamps and registry times (tests inject a fixed one). */
  now?: () => number;
}

interface Pending {
  req: PreparedWrite;
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
  latest: StoredItem | undefined;
  latestChanged: boolean;
  inserts: number;
  seen: boolean;
  hasServerStamped: boolean;
  /** Items written earlier in this batch by key `ts:seq`; only kept for devices with device-stamped readings. */
  written: Map<string, Buffer> | undefined;
}

function storeClosed(): TributaryError {
  return new TributaryError('StoreUnavailable', 'the telemetry store is closed');
}

function checkPositiveInt(value: unknown, name: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer (got ${String(value)})`);
  return value;
}

/** The shared TelemetryStore implementation; see the module comment. */
export class TelemetryStoreEngine implements TelemetryStore {
  /** The change log this store stages its records in. */
  readonly changeLog: ChangeLog;
  private readonly backend: StoreBackend;
  private readonly maxBatch: number;
  private readonly maxDelayMs: number;
  private readonly now: () => number;

  private queue: Pending[] = [];
  private queuedReadings = 0;
  private inFlight = false;
  private cancelTimer: (() => void) | undefined;
  private idleWaiters: Array<() => void> = [];
  private closing: Promise<void> | undefined;

  /** Committed state of devices the write path has touched (never filled by reads, which could race a commit). */
  private readonly devices = new Map<string, DeviceState>();
  private readonly stamps = new Map<string, Stamp>();

  protected constructor(backend: StoreBackend, opts: EngineOptions) {
    this.backend = backend;
    this.changeLog = opts.changeLog;
    this.maxBatch = checkPositiveInt(opts.maxBatch, 'maxBatch');
    if (!Number.isSafeInteger(opts.maxDelayMs) || opts.maxDelayMs < 0) throw new RangeError(`maxDelayMs must be a non-negative integer (got ${opts.maxDelayMs})`);
    this.maxDelayMs = opts.maxDelayMs;
    this.now = opts.now ?? Date.now;
  }

  // ---------------------------------------------------------------- write path

  async write(req: WriteRequest): Promise<WriteResult> {
    if (this.closing !== undefined) throw storeClosed();
    const prepared = prepareWrite(req);
    return new Promise<WriteResult>((resolve, reject) => {
      this.queue.push({ req: prepared, resolve, reject });
      this.queuedReadings += prepared.readings.length;
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.inFlight) return; // the running batch picks the queue up when it completes
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
    this.inFlight = true;
    void this.runBatch(batch).then(() => {
      this.inFlight = false;
      if (this.queue.length > 0) {
        this.clearTimer();
        this.startBatch();
      } else {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const w of waiters) w();
      }
    });
  }

  /** Plans, commits and settles one batch; never rejects (callers are rejected instead). */
  private async runBatch(batch: Pending[]): Promise<void> {
    let results: WriteResult[];
    try {
      results = await this.commitBatch(batch);
    } catch (err) {
      const wrapped = err instanceof TributaryError ? err : new TributaryError('StoreUnavailable', `the write could not be committed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
      for (const p of batch) p.reject(wrapped);
      return;
    }
    for (let i = 0; i < batch.length; i++) (batch[i] as Pending).resolve(results[i] as WriteResult);
  }

  private async commitBatch(batch: Pending[]): Promise<WriteResult[]> {
    const now = this.now();
    const work = new Map<string, Work>();
    const reads: BatchReads = { devices: [], deliveries: [], items: [] };

    // Pass 1: what must be read before planning.
    for (const { req } of batch) {
      let w = work.get(req.deviceId);
      if (w === undefined) {
        const state = this.devices.get(req.deviceId);
        if (state === undefined) reads.devices.push(req.deviceId);
        w = { state: state ?? { latest: undefined, info: undefined }, latest: undefined, latestChanged: false, inserts: 0, seen: false, hasServerStamped: false, written: undefined };
        work.set(req.deviceId, w);
      }
      if (req.delivery !== undefined) reads.deliveries.push(req.delivery);
      for (const r of req.readings) {
        if (r.ts === undefined) {
          w.hasServerStamped = true;
        } else {
          reads.items.push({ deviceId: req.deviceId, ts: r.ts, seq: r.seq });
          w.written ??= new Map();
        }
      }
    }
    const found = reads.devices.length + reads.deliveries.length + reads.items.length > 0 ? await this.backend.read(reads) : undefined;
    const loaded = new Map<string, DeviceState>();
    if (found !== undefined) {
      reads.devices.forEach((id, i) => {
        const state = found.devices[i] as DeviceState;
        loaded.set(id, state);
        (work.get(id) as Work).state = state;
      });
    }
    for (const w of work.values()) w.latest = w.state.latest;

    await this.prepareStamps(work, now);
    const { plan, results, next } = this.planBatch(batch, work, found, now);
    for (const id of loaded.keys()) if (!next.has(id)) next.set(id, loaded.get(id) as DeviceState);

    if (plan.devices.length > 0 || plan.deliveries.length > 0) {
      const ops: BatchOp[] = [];
      const records = plan.changes.length > 0 ? this.changeLog.stage(ops, plan.changes, now) : [];
      try {
        await this.backend.commit(plan, ops);
      } catch (err) {
        this.changeLog.abort(records);
        throw new TributaryError('StoreUnavailable', `the write batch could not be committed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
      }
      // Only now, with the batch durable, does the cache move on (before the log wakes
      // readers, so that anyone reacting to a record sees the store past it).
      for (const [deviceId, state] of next) this.devices.set(deviceId, state);
      this.changeLog.commit(records);
    } else {
      for (const [deviceId, state] of next) this.devices.set(deviceId, state);
    }
    return results;
  }

  /**
   * Pass 2: decides every reading's item key and change, synchronously, against
   * committed state plus this batch's own earlier writes. Returns what to write, each
   * caller's result, and the device states to cache once the batch is durable.
   */
  private planBatch(batch: Pending[], work: Map<string, Work>, found: BatchReadResult | undefined, now: number): { plan: WritePlan; results: WriteResult[]; next: Map<string, DeviceState> } {
    const plan: WritePlan = { now, changes: [], json: [], latest: [], devices: [], deliveries: [] };
    const changes = plan.changes;
    const results: WriteResult[] = new Array<WriteResult>(batch.length);
    const batchDeliveries = new Map<string, string>();
    let deliveryIndex = 0;
    let itemIndex = 0;
    for (let b = 0; b < batch.length; b++) {
      const req = (batch[b] as Pending).req;
      const w = work.get(req.deviceId) as Work;
      if (req.delivery !== undefined) {
        const d = req.delivery;
        const qKey = `${d.clientId}\u0000${d.packetId}`;
        const stored = batchDeliveries.has(qKey) ? batchDeliveries.get(qKey) : found?.deliveries[deliveryIndex];
        deliveryIndex++;
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
        plan.deliveries.push(d);
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
        if (c.change === 'INSERT') {
          w.inserts++;
          changes.push({ eventName: 'INSERT', deviceId: req.deviceId, ts, seq, newValues: r.values });
        } else {
          changes.push({ eventName: 'MODIFY', deviceId: req.deviceId, ts, seq, newValues: r.values, oldValues: c.oldValues });
        }
        // >= so that a MODIFY of the latest item refreshes its values.
        if (w.latest === undefined || compareItemKeys(ts, seq, w.latest.ts, w.latest.seq) >= 0) {
          w.latest = { ts, seq, json: r.json };
          w.latestChanged = true;
        }
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

  /**
   * Fixes each server-stamping device's ts for this batch: max(now, its last server
   * ts), so a clock step backwards never reorders a device's readings. The seq at that
   * ts must start above anything stored there. When the ts is above the device's
   * latest item nothing can be stored at it; when equal, the latest item holds the
   * highest seq; only when the device has readings ahead of the server clock (future
   * device stamps, or a clock stepped back across a restart) is the store asked.
   */
  private async prepareStamps(work: Map<string, Work>, now: number): Promise<void> {
    const probes: Array<Promise<void>> = [];
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
      probes.push(
        this.backend.maxSeqAt(deviceId, ts).then((max) => {
          if (max !== undefined && max >= stamp.next) stamp.next = max + 1;
        }),
      );
    }
    if (probes.length > 0) await Promise.all(probes);
  }

  /**
   * Stops accepting writes, commits what is queued and waits for the batch in flight.
   * Later writes reject with `StoreUnavailable`. The storage itself is not closed: its
   * owner does that.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.clearTimer();
      if (!this.inFlight && this.queue.length > 0) this.startBatch();
      if (this.inFlight) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    })();
    return this.closing;
  }

  // ---------------------------------------------------------------- reads

  async query(q: RangeQuery): Promise<Page<Reading>> {
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
    const rows = await this.backend.scan({ deviceId, from: lo, to: hi, order, after, limit: limit + 1 });
    const more = rows.length > limit;
    const n = more ? limit : rows.length;
    const items: Reading[] = new Array<Reading>(n);
    for (let i = 0; i < n; i++) {
      const row = rows[i] as StoredItem;
      const values = JSON.parse(row.json.toString('utf8')) as Values;
      items[i] = { deviceId, ts: row.ts, seq: row.seq, values: project === undefined ? values : project(values) };
    }
    const last = items[n - 1];
    return { items, nextCursor: more && last !== undefined ? encodeReadingCursor({ order, ts: last.ts, seq: last.seq }) : null };
  }

  async latest(deviceId: string): Promise<Reading | undefined> {
    const item = (await this.deviceState(deviceId)).latest;
    return item === undefined ? undefined : { deviceId, ts: item.ts, seq: item.seq, values: JSON.parse(item.json.toString('utf8')) as Values };
  }

  async getDevice(deviceId: string): Promise<DeviceInfo | undefined> {
    const info = (await this.deviceState(deviceId)).info;
    return info === undefined ? undefined : toDeviceInfo(deviceId, info);
  }

  async listDevices(q: ListDevicesQuery): Promise<Page<DeviceInfo>> {
    const limit = q.limit;
    if (!Number.isSafeInteger(limit) || limit < 1) throw invalidParameter('limit', `limit must be a positive integer (got ${String(limit)})`);
    const after = q.cursor === undefined ? undefined : decodeDeviceCursor(q.cursor);
    const rows = await this.backend.listDevices(after, limit + 1);
    const more = rows.length > limit;
    const page = more ? rows.slice(0, limit) : rows;
    const last = page[page.length - 1];
    return { items: page.map((r) => toDeviceInfo(r.deviceId, r.info)), nextCursor: more && last !== undefined ? encodeDeviceCursor(last.deviceId) : null };
  }

  private async deviceState(deviceId: string): Promise<DeviceState> {
    assertDeviceId(deviceId);
    const cached = this.devices.get(deviceId);
    if (cached !== undefined) return cached;
    const found = await this.backend.read({ devices: [deviceId], deliveries: [], items: [] });
    return found.devices[0] as DeviceState;
  }
}

function checkTimeParam(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) throw invalidParameter(field, `${field} must be an integer number of epoch milliseconds (got ${String(value)})`);
  return value;
}

function toDeviceInfo(deviceId: string, info: DeviceRecord): DeviceInfo {
  // Copies, so a caller editing the result cannot reach into the cache.
  return { deviceId, firstSeen: info.firstSeen, lastSeen: info.lastSeen, readings: info.readings, tags: { ...info.tags } };
}

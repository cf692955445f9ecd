/**
 * The product's TelemetryStore: the shared engine over LevelDB. One synced batch per
 * group commit carries the readings (`T`), new partition index entries (`P`), the
 * latest index (`L`, with the per-key latest of keys the latest reading lacks),
 * registry entries (`D`), delivery ids (`Q`) and the change records the change log
 * staged (`C`), so none of them is ever durable without the others.
 *
 * Retention drops a partition as ADR 0001 planned: a range delete of its key range,
 * the removal of its `P` entry, then `compactRange` over exactly that range, which
 * rewrites only the SST files holding it and so gives the space back without touching
 * live partitions.
 */
import { TributaryError } from '../core/errors.js';
import { MAX_TIMESTAMP_MS } from '../core/time.js';
import { parseJson, stringifyJson } from '../core/numbers.js';
import type { BatchOp } from '../streams/types.js';
import type { Database } from './database.js';
import {
  TelemetryStoreEngine,
  type BatchReadResult,
  type BatchReads,
  type DeviceRecord,
  type DeviceState,
  type ItemRef,
  type LatestItem,
  type PartitionItem,
  type ScanQuery,
  type StoreBackend,
  type StoredItem,
  type StreamItem,
  type TextItem,
  type WritePlan,
  type EngineOptions,
} from './engine.js';
import {
  MAX_U32,
  decodeDelivery,
  decodeDeliveryKey,
  decodeDeviceKey,
  decodePartitionKey,
  decodeTelemetryKey,
  deliveryBounds,
  deliveryKey,
  deviceBounds,
  deviceKey,
  encodeDelivery,
  latestKey,
  partitionIndexBounds,
  partitionKey,
  partitionLastKey,
  partitionOf,
  partitionRange,
  telemetryKey,
  telemetryKeySeq,
  telemetryKeyTs,
} from './keys.js';
import type { KeyValue, Values } from './types.js';

/** The engine's options, plus the database whose handle the store reads and writes through (it never closes it). */
export interface LevelTelemetryStoreOptions extends EngineOptions {
  database: Database;
}

/** Entries fetched per native iterator call: large enough to amortise the crossing, small enough to bound memory. */
const SCAN_CHUNK = 1000;
const EMPTY = Buffer.alloc(0);
const CLOSE_BRACE = Buffer.from('}', 'utf8');

/** The LevelDB-backed TelemetryStore. Open with {@link LevelTelemetryStore.open}. */
export class LevelTelemetryStore extends TelemetryStoreEngine {
  /** Partition width in effect (fixed per data directory). */
  readonly partitionWindowMs: number;

  private readonly database: Database;

  private constructor(backend: LevelBackend, opts: LevelTelemetryStoreOptions) {
    super(backend, opts);
    this.partitionWindowMs = opts.partitionWindowMs;
    this.database = opts.database;
  }

  /**
   * Opens the store on an open database: checks the partition width against the one
   * the data directory was created with and loads the partition index.
   * @throws TributaryError `Conflict` when the partition width differs from the recorded one.
   */
  static async open(opts: LevelTelemetryStoreOptions): Promise<LevelTelemetryStore> {
    const windowMs = opts.partitionWindowMs;
    // Partition numbers are u32: the window must be wide enough for the year 9999 to fit.
    if (!Number.isSafeInteger(windowMs) || windowMs < 1 || partitionOf(MAX_TIMESTAMP_MS, windowMs) > MAX_U32) {
      throw new RangeError(`partitionWindowMs must be an integer of at least ${Math.ceil(MAX_TIMESTAMP_MS / (MAX_U32 + 1))} ms (got ${windowMs})`);
    }
    const fixed = Number(await opts.database.fixedSetting('partitionWindowMs', String(windowMs)));
    if (fixed !== windowMs) {
      throw new TributaryError('Conflict', `this data directory was created with a partition window of ${fixed} ms; it cannot change (configured: ${windowMs} ms)`);
    }
    const keys = await opts.database.read((db) => db.keys(partitionIndexBounds()).all());
    const backend = new LevelBackend(opts.database, windowMs, new Set(keys.map(decodePartitionKey)));
    return new LevelTelemetryStore(backend, opts);
  }

  /** Bytes of the partition's key range on disk as LevelDB estimates them (for benchmarks and tests). */
  async approximatePartitionSize(partition: number): Promise<number> {
    const { gte, lt } = partitionRange(partition);
    return this.database.read((db) => db.approximateSize(gte, lt));
  }
}

class LevelBackend implements StoreBackend {
  /** Sorted view of `partitions`, rebuilt only after a batch adds one. */
  private sorted: number[] | undefined;

  constructor(
    private readonly database: Database,
    private readonly windowMs: number,
    /** The committed partition index, mirrored in memory so writes need not read it. */
    private readonly index: Set<number>,
  ) {}

  private itemKey(deviceId: string, ts: number, seq: number): Buffer {
    return telemetryKey(partitionOf(ts, this.windowMs), deviceId, ts, seq);
  }

  async read(reads: BatchReads): Promise<BatchReadResult> {
    const nDev = reads.devices.length;
    const keys: Buffer[] = new Array<Buffer>(2 * nDev + reads.items.length);
    let k = 0;
    for (const id of reads.devices) keys[k++] = latestKey(id);
    for (const id of reads.devices) keys[k++] = deviceKey(id);
    for (const r of reads.items) keys[k++] = this.itemKey(r.deviceId, r.ts, r.seq);
    // One native call for every point read the batch needs, beside a scan per client window.
    const [values, windows] = await this.database.read((db) =>
      Promise.all([keys.length === 0 ? [] : db.getMany(keys), Promise.all(reads.clients.map((c) => db.values(deliveryBounds(c)).all()))]),
    );
    const devices: DeviceState[] = new Array<DeviceState>(nDev);
    for (let i = 0; i < nDev; i++) {
      const l = values[i];
      const d = values[nDev + i];
      devices[i] = { latest: l === undefined ? undefined : decodeLatest(l), info: d === undefined ? undefined : (JSON.parse(d.toString('utf8')) as DeviceRecord) };
    }
    return { devices, windows: windows.map((rows) => rows.map(decodeDelivery)), items: values.slice(2 * nDev) };
  }

  async maxSeqAt(deviceId: string, ts: number): Promise<number | undefined> {
    const p = partitionOf(ts, this.windowMs);
    const keys = await this.database.read((db) => db.keys({ gte: telemetryKey(p, deviceId, ts, 0), lte: telemetryKey(p, deviceId, ts, MAX_U32), reverse: true, limit: 1 }).all());
    const key = keys[0];
    return key === undefined ? undefined : telemetryKeySeq(key);
  }

  async commit(plan: WritePlan, ops: BatchOp[]): Promise<void> {
    const added: number[] = [];
    let lastPartition = -1;
    for (let i = 0; i < plan.changes.length; i++) {
      const item = plan.changes[i] as WritePlan['changes'][number];
      const p = partitionOf(item.ts, this.windowMs);
      if (item.eventName === 'REMOVE') {
        ops.push({ type: 'del', key: telemetryKey(p, item.deviceId, item.ts, item.seq) });
        continue;
      }
      if (p !== lastPartition) {
        lastPartition = p;
        if (!this.index.has(p) && !added.includes(p)) {
          added.push(p);
          ops.push({ type: 'put', key: partitionKey(p), value: EMPTY });
        }
      }
      ops.push({ type: 'put', key: telemetryKey(p, item.deviceId, item.ts, item.seq), value: plan.json[i] as Buffer });
    }
    for (const { deviceId, item } of plan.latest) ops.push({ type: 'put', key: latestKey(deviceId), value: encodeLatest(item) });
    for (const { deviceId, info } of plan.devices) ops.push({ type: 'put', key: deviceKey(deviceId), value: Buffer.from(JSON.stringify(info), 'utf8') });
    for (const d of plan.deliveries) ops.push({ type: 'put', key: deliveryKey(d.clientId, d.slot), value: encodeDelivery(d.n, d.packetId, d.payloadHash) });
    for (const d of plan.removedDeliveries) ops.push({ type: 'del', key: deliveryKey(d.clientId, d.slot) });
    for (const deviceId of plan.removedDevices) {
      ops.push({ type: 'del', key: latestKey(deviceId) });
      ops.push({ type: 'del', key: deviceKey(deviceId) });
    }
    await this.database.commit(ops);
    if (added.length > 0) {
      for (const p of added) this.index.add(p);
      this.sorted = undefined;
    }
  }

  scan(q: ScanQuery): Promise<StoredItem[]> {
    return this.scanAs<Buffer, StoredItem>(q, 'buffer', (key, json) => ({ ts: telemetryKeyTs(key), seq: telemetryKeySeq(key), json }));
  }

  scanText(q: ScanQuery): Promise<TextItem[]> {
    // Decoded to a string natively, which costs less than a Buffer per value.
    return this.scanAs<string, TextItem>(q, 'utf8', (key, text) => ({ ts: telemetryKeyTs(key), seq: telemetryKeySeq(key), text }));
  }

  private async scanAs<V extends Buffer | string, T>(q: ScanQuery, valueEncoding: 'buffer' | 'utf8', make: (key: Buffer, value: V) => T): Promise<T[]> {
    const asc = q.order === 'asc';
    const { deviceId, from, to, after } = q;
    // Only partitions that exist and overlap the range (and lie past the cursor).
    let first = partitionOf(from, this.windowMs);
    let last = partitionOf(to, this.windowMs);
    if (after !== undefined) {
      const p = partitionOf(after.ts, this.windowMs);
      if (asc) first = Math.max(first, p);
      else last = Math.min(last, p);
    }
    const parts = this.partitionsBetween(first, last);
    if (!asc) parts.reverse();

    const out: T[] = [];
    for (const p of parts) {
      const remaining = q.limit - out.length;
      if (remaining <= 0) break;
      const range: { gt?: Buffer; gte?: Buffer; lt?: Buffer; lte?: Buffer } = {};
      // The cursor bound is used where it is tighter than the range bound.
      if (asc && after !== undefined && after.ts >= from) range.gt = telemetryKey(p, deviceId, after.ts, after.seq);
      else range.gte = telemetryKey(p, deviceId, from, 0);
      if (!asc && after !== undefined && after.ts <= to) range.lt = telemetryKey(p, deviceId, after.ts, after.seq);
      else range.lte = telemetryKey(p, deviceId, to, MAX_U32);
      // Rows gather locally so that a read the owner retries after a reopen cannot add them twice.
      const rows = await this.database.read(async (db) => {
        const local: T[] = [];
        const it = db.iterator<Buffer, V>({ ...range, reverse: !asc, limit: remaining, valueEncoding });
        try {
          // Stops as soon as the limit is met: one more nextv would only confirm the end,
          // an extra round trip to the native side on every page.
          while (local.length < remaining) {
            const entries = await it.nextv(Math.min(remaining - local.length, SCAN_CHUNK));
            if (entries.length === 0) break;
            for (const [key, value] of entries) local.push(make(key, value));
          }
        } finally {
          await it.close();
        }
        return local;
      });
      for (const row of rows) out.push(row);
    }
    return out;
  }

  async *stream(deviceId: string, from: number, to: number, chunk: number): AsyncGenerator<StreamItem[]> {
    for (const p of this.partitionsBetween(partitionOf(from, this.windowMs), partitionOf(to, this.windowMs))) {
      const it = this.database.db.iterator<Buffer, string>({ gte: telemetryKey(p, deviceId, from, 0), lte: telemetryKey(p, deviceId, to, MAX_U32), valueEncoding: 'utf8' });
      // The next chunk is read (on libuv's thread pool) while the caller folds this one.
      let next = it.nextv(chunk);
      try {
        while (true) {
          const entries = await next;
          if (entries.length === 0) break;
          next = it.nextv(chunk);
          const items: StreamItem[] = new Array<StreamItem>(entries.length);
          for (let i = 0; i < entries.length; i++) {
            const [key, text] = entries[i] as [Buffer, string];
            items[i] = { ts: telemetryKeyTs(key), text };
          }
          yield items;
        }
      } finally {
        // A caller that stops early leaves a read in flight: let it land before closing.
        await next.then(
          () => undefined,
          () => undefined,
        );
        await it.close();
      }
    }
  }

  async listDevices(after: string | undefined, limit: number): Promise<Array<{ deviceId: string; info: DeviceRecord }>> {
    const entries = await this.database.read((db) => db.iterator({ ...deviceBounds(after), limit }).all());
    return entries.map(([key, value]) => ({ deviceId: decodeDeviceKey(key), info: JSON.parse(value.toString('utf8')) as DeviceRecord }));
  }

  partitions(): number[] {
    this.sorted ??= [...this.index].sort((a, b) => a - b);
    return [...this.sorted];
  }

  async scanPartition(partition: number, after: ItemRef | undefined, limit: number): Promise<PartitionItem[]> {
    const { gte, lt } = partitionRange(partition);
    const range = after === undefined ? { gte, lt } : { gt: telemetryKey(partition, after.deviceId, after.ts, after.seq), lt };
    const entries = await this.database.read((db) => db.iterator({ ...range, limit }).all());
    return entries.map(([key, json]) => {
      const k = decodeTelemetryKey(key);
      return { deviceId: k.deviceId, ts: k.ts, seq: k.seq, json };
    });
  }

  async dropPartition(partition: number): Promise<void> {
    const { gte, lt } = partitionRange(partition);
    // Data first, index entry second: a drop interrupted in between is found again by
    // the next pass through the index entry and finished (clear is idempotent).
    // Through the owner, in synced chunks, so a full disk is handled like any failed write.
    await this.database.clear({ gte, lt }, 10_000);
    await this.database.commit([{ type: 'del', key: partitionKey(partition) }]);
    this.index.delete(partition);
    this.sorted = undefined;
    // The range delete only wrote tombstones; compacting exactly this range rewrites the
    // files that hold it, dropping data and tombstones alike. Partition-first keys keep
    // live partitions out of those files.
    await this.database.read((db) => db.compactRange(gte, partitionLastKey(partition)));
  }

  async deliverySlotsOf(clientId: string, limit: number): Promise<number[]> {
    const keys = await this.database.read((db) => db.keys({ ...deliveryBounds(clientId), limit }).all());
    return keys.map((k) => decodeDeliveryKey(k).slot);
  }

  private partitionsBetween(first: number, last: number): number[] {
    this.sorted ??= [...this.index].sort((a, b) => a - b);
    const all = this.sorted;
    // Binary search for the first partition >= first.
    let lo = 0;
    let hi = all.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((all[mid] as number) < first) lo = mid + 1;
      else hi = mid;
    }
    const out: number[] = [];
    for (let i = lo; i < all.length && (all[i] as number) <= last; i++) out.push(all[i] as number);
    return out;
  }
}

/**
 * `L` value: `{"ts":…,"seq":…,"values":{…}}`, spliced from the stored values' bytes
 * rather than re-encoded, plus `"older":{path:{ts,seq,value}}` when the latest reading
 * lacks keys the device sent before (entries without it read as an empty map).
 */
function encodeLatest(item: LatestItem): Buffer {
  const head = Buffer.from(`{"ts":${item.ts},"seq":${item.seq},"values":`, 'utf8');
  if (item.older === undefined) return Buffer.concat([head, item.json, CLOSE_BRACE]);
  return Buffer.concat([head, item.json, Buffer.from(`,"older":${stringifyJson(item.older)}}`, 'utf8')]);
}
function decodeLatest(value: Buffer): LatestItem {
  const parsed = parseJson(value.toString('utf8')) as { ts: number; seq: number; values: Values; older?: Record<string, KeyValue> };
  const item: LatestItem = { ts: parsed.ts, seq: parsed.seq, json: Buffer.from(stringifyJson(parsed.values), 'utf8') };
  if (parsed.older !== undefined) item.older = parsed.older;
  return item;
}

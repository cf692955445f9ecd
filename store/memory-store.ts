/**
 * The shared engine over plain in-memory structures: same semantics as the LevelDB
 * store (it is the same engine), no I/O. For tests of the logic above the store.
 * Values are kept as their stored JSON bytes, so callers never share objects with it.
 * Partitions exist here too (as an index of time windows), so retention drops exactly
 * what the LevelDB store drops.
 */
import { MemoryChangeLog } from '../streams/memory-log.js';
import type { BatchOp } from '../streams/types.js';
import {
  TelemetryStoreEngine,
  type BatchReadResult,
  type BatchReads,
  type DeviceRecord,
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
import type { DeliveryRow } from './delivery-window.js';
import { compareItemKeys } from './items.js';
import { partitionOf } from './keys.js';

/**
 * The engine's options, all optional: a fresh 4-shard `MemoryChangeLog`, batches of 2000,
 * no extra delay, one-day partitions, no retention.
 */
export type MemoryTelemetryStoreOptions = Partial<EngineOptions>;

const DAY = 86_400_000;

/** The in-memory TelemetryStore. */
export class MemoryTelemetryStore extends TelemetryStoreEngine {
  constructor(opts: MemoryTelemetryStoreOptions = {}) {
    const changeLog = opts.changeLog ?? new MemoryChangeLog({ shards: 4 });
    const partitionWindowMs = opts.partitionWindowMs ?? DAY;
    super(new MemoryBackend(partitionWindowMs), { ...opts, changeLog, maxBatch: opts.maxBatch ?? 2000, maxDelayMs: opts.maxDelayMs ?? 0, partitionWindowMs });
  }
}

/** First index in `items` (sorted by ts, seq) whose key is >= (ts, seq). */
function lowerBound(items: StoredItem[], ts: number, seq: number): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const m = items[mid] as StoredItem;
    if (compareItemKeys(m.ts, m.seq, ts, seq) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

class MemoryBackend implements StoreBackend {
  /** Per device, items sorted by (ts, seq). */
  private readonly items = new Map<string, StoredItem[]>();
  private readonly latest = new Map<string, LatestItem>();
  private readonly devices = new Map<string, DeviceRecord>();
  /** Per client, its delivery window's rows by slot. */
  private readonly deliveries = new Map<string, Map<number, DeliveryRow>>();
  /** The partition index: windows that received a reading and have not been dropped. */
  private readonly index = new Set<number>();

  constructor(private readonly windowMs: number) {}

  async read(reads: BatchReads): Promise<BatchReadResult> {
    return {
      devices: reads.devices.map((id) => ({ latest: this.latest.get(id), info: this.devices.get(id) })),
      windows: reads.clients.map((c) => [...(this.deliveries.get(c)?.values() ?? [])]),
      items: reads.items.map((r) => {
        const list = this.items.get(r.deviceId);
        if (list === undefined) return undefined;
        const hit = list[lowerBound(list, r.ts, r.seq)];
        return hit !== undefined && hit.ts === r.ts && hit.seq === r.seq ? hit.json : undefined;
      }),
    };
  }

  async maxSeqAt(deviceId: string, ts: number): Promise<number | undefined> {
    const list = this.items.get(deviceId);
    const hit = list?.[lowerBound(list, ts + 1, 0) - 1];
    return hit !== undefined && hit.ts === ts ? hit.seq : undefined;
  }

  // `ops` holds nothing for a memory change log: its records live in the log itself.
  async commit(plan: WritePlan, _ops: BatchOp[]): Promise<void> {
    for (let c = 0; c < plan.changes.length; c++) {
      const { eventName, deviceId, ts, seq } = plan.changes[c] as WritePlan['changes'][number];
      let list = this.items.get(deviceId);
      if (eventName === 'REMOVE') {
        if (list === undefined) continue;
        const i = lowerBound(list, ts, seq);
        const at = list[i];
        if (at !== undefined && at.ts === ts && at.seq === seq) list.splice(i, 1);
        continue;
      }
      this.index.add(partitionOf(ts, this.windowMs));
      if (list === undefined) {
        list = [];
        this.items.set(deviceId, list);
      }
      const item: StoredItem = { ts, seq, json: plan.json[c] as Buffer };
      const tail = list[list.length - 1];
      // Readings mostly arrive in key order: append without searching.
      if (tail === undefined || compareItemKeys(tail.ts, tail.seq, ts, seq) < 0) {
        list.push(item);
        continue;
      }
      const i = lowerBound(list, ts, seq);
      const at = list[i];
      if (at !== undefined && at.ts === ts && at.seq === seq) list[i] = item;
      else list.splice(i, 0, item);
    }
    for (const { deviceId, item } of plan.latest) this.latest.set(deviceId, item);
    for (const { deviceId, info } of plan.devices) this.devices.set(deviceId, info);
    for (const d of plan.deliveries) {
      let slots = this.deliveries.get(d.clientId);
      if (slots === undefined) this.deliveries.set(d.clientId, (slots = new Map()));
      slots.set(d.slot, { n: d.n, packetId: d.packetId, payloadHash: d.payloadHash });
    }
    for (const d of plan.removedDeliveries) {
      const slots = this.deliveries.get(d.clientId);
      slots?.delete(d.slot);
      if (slots?.size === 0) this.deliveries.delete(d.clientId);
    }
    for (const deviceId of plan.removedDevices) {
      this.latest.delete(deviceId);
      this.devices.delete(deviceId);
      if (this.items.get(deviceId)?.length === 0) this.items.delete(deviceId);
    }
  }

  async scan(q: ScanQuery): Promise<StoredItem[]> {
    const list = this.items.get(q.deviceId) ?? [];
    const out: StoredItem[] = [];
    const { from, to, after, limit } = q;
    if (q.order === 'asc') {
      let i = after !== undefined && after.ts >= from ? lowerBound(list, after.ts, after.seq + 1) : lowerBound(list, from, 0);
      for (; i < list.length && out.length < limit; i++) {
        const item = list[i] as StoredItem;
        if (item.ts > to) break;
        out.push(item);
      }
    } else {
      let i = (after !== undefined && after.ts <= to ? lowerBound(list, after.ts, after.seq) : lowerBound(list, to + 1, 0)) - 1;
      for (; i >= 0 && out.length < limit; i--) {
        const item = list[i] as StoredItem;
        if (item.ts < from) break;
        out.push(item);
      }
    }
    return out;
  }

  async scanText(q: ScanQuery): Promise<TextItem[]> {
    return (await this.scan(q)).map((i) => ({ ts: i.ts, seq: i.seq, text: i.json.toString('utf8') }));
  }

  async *stream(deviceId: string, from: number, to: number, chunk: number): AsyncGenerator<StreamItem[]> {
    // Resumes by key rather than by index, so the list may change between chunks.
    let after: { ts: number; seq: number } | undefined;
    while (true) {
      const items = await this.scan({ deviceId, from, to, order: 'asc', after, limit: chunk });
      if (items.length === 0) return;
      yield items.map((i) => ({ ts: i.ts, text: i.json.toString('utf8') }));
      const last = items[items.length - 1] as StoredItem;
      after = { ts: last.ts, seq: last.seq };
    }
  }

  async listDevices(after: string | undefined, limit: number): Promise<Array<{ deviceId: string; info: DeviceRecord }>> {
    // Device ids are ASCII, so string order is the byte order LevelDB lists them in.
    const ids = [...this.devices.keys()].filter((id) => after === undefined || id > after).sort();
    return ids.slice(0, limit).map((deviceId) => ({ deviceId, info: this.devices.get(deviceId) as DeviceRecord }));
  }

  partitions(): number[] {
    return [...this.index].sort((a, b) => a - b);
  }

  async scanPartition(partition: number, after: ItemRef | undefined, limit: number): Promise<PartitionItem[]> {
    const start = partition * this.windowMs;
    const end = start + this.windowMs;
    const out: PartitionItem[] = [];
    const ids = [...this.items.keys()].filter((id) => after === undefined || id >= after.deviceId).sort();
    for (const deviceId of ids) {
      const list = this.items.get(deviceId) as StoredItem[];
      let i = after !== undefined && after.deviceId === deviceId ? lowerBound(list, after.ts, after.seq + 1) : lowerBound(list, start, 0);
      for (; i < list.length && out.length < limit; i++) {
        const item = list[i] as StoredItem;
        if (item.ts >= end) break;
        if (item.ts >= start) out.push({ deviceId, ts: item.ts, seq: item.seq, json: item.json });
      }
      if (out.length >= limit) break;
    }
    return out;
  }

  async dropPartition(partition: number): Promise<void> {
    const start = partition * this.windowMs;
    for (const list of this.items.values()) {
      const a = lowerBound(list, start, 0);
      const b = lowerBound(list, start + this.windowMs, 0);
      if (b > a) list.splice(a, b - a);
    }
    this.index.delete(partition);
  }

  async deliverySlotsOf(clientId: string, limit: number): Promise<number[]> {
    return [...(this.deliveries.get(clientId)?.keys() ?? [])].sort((a, b) => a - b).slice(0, limit);
  }
}

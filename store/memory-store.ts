/**
 * The shared engine over plain in-memory structures: same semantics as the LevelDB
 * store (it is the same engine), no I/O. For tests of the logic above the store.
 * Values are kept as their stored JSON bytes, so callers never share objects with it.
 */
import { MemoryChangeLog } from '../streams/memory-log.js';
import type { BatchOp, ChangeLog } from '../streams/types.js';
import {
  TelemetryStoreEngine,
  type BatchReadResult,
  type BatchReads,
  type DeviceRecord,
  type ScanQuery,
  type StoreBackend,
  type StoredItem,
  type WritePlan,
} from './engine.js';
import { compareItemKeys } from './items.js';

export interface MemoryTelemetryStoreOptions {
  /** Defaults to a fresh `MemoryChangeLog` with 4 shards. */
  changeLog?: ChangeLog;
  /** Defaults to 2000. */
  maxBatch?: number;
  /** Defaults to 0. */
  maxDelayMs?: number;
  now?: () => number;
}

/** The in-memory TelemetryStore. */
export class MemoryTelemetryStore extends TelemetryStoreEngine {
  constructor(opts: MemoryTelemetryStoreOptions = {}) {
    const changeLog = opts.changeLog ?? new MemoryChangeLog({ shards: 4 });
    super(new MemoryBackend(), { changeLog, maxBatch: opts.maxBatch ?? 2000, maxDelayMs: opts.maxDelayMs ?? 0, ...(opts.now ? { now: opts.now } : {}) });
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
  private readonly latest = new Map<string, StoredItem>();
  private readonly devices = new Map<string, DeviceRecord>();
  private readonly deliveries = new Map<string, string>();

  async read(reads: BatchReads): Promise<BatchReadResult> {
    return {
      devices: reads.devices.map((id) => ({ latest: this.latest.get(id), info: this.devices.get(id) })),
      deliveries: reads.deliveries.map((d) => this.deliveries.get(deliveryId(d.clientId, d.packetId))),
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
      const { deviceId, ts, seq } = plan.changes[c] as WritePlan['changes'][number];
      const json = plan.json[c] as Buffer;
      let list = this.items.get(deviceId);
      if (list === undefined) {
        list = [];
        this.items.set(deviceId, list);
      }
      const item: StoredItem = { ts, seq, json };
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
    for (const d of plan.deliveries) this.deliveries.set(deliveryId(d.clientId, d.packetId), d.payloadHash);
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

  async listDevices(after: string | undefined, limit: number): Promise<Array<{ deviceId: string; info: DeviceRecord }>> {
    // Device ids are ASCII, so string order is the byte order LevelDB lists them in.
    const ids = [...this.devices.keys()].filter((id) => after === undefined || id > after).sort();
    return ids.slice(0, limit).map((deviceId) => ({ deviceId, info: this.devices.get(deviceId) as DeviceRecord }));
  }
}

function deliveryId(clientId: string, packetId: number): string {
  return `${clientId}\u0000${packetId}`;
}

/**
 * The device list in cluster mode (ADR 0002). A node's registry (table D) holds the
 * devices of the partitions it materialized — those it owns now, and stale ones of
 * partitions it owned before — so `GET /v1/devices` asks every node that owns a partition
 * for its part and merges the answers. A node asked (the fan-out header) lists its own
 * registry, keeps the devices of the partitions it answers for now (owned and caught up),
 * and says which partitions those are; an answer that leaves a partition out (ownership
 * moved meanwhile) fails the list as unavailable (503), which clients retry, rather than
 * return a page with holes.
 *
 * Pages keep one node's semantics: sorted by device id, the cursor is the last device id
 * looked at. Each node's part covers every device of its partitions up to its own cursor
 * (a tag filter or the caller's policy may make it short), so the merged page stops at
 * the smallest of those cursors: nothing below it is missing.
 */
import { DEVICE_LIST_FANOUT_HEADER, DEVICE_LIST_PARTITIONS_HEADER, type DeviceDirectory, type DeviceListRequest } from '../api/routes/devices.js';
import { TributaryError } from '../core/errors.js';
import { decodeDeviceCursor, encodeDeviceCursor } from '../store/cursor.js';
import type { DeviceInfo, Page } from '../store/types.js';
import { shardOf } from '../streams/shard.js';

const FAN_OUT_TIMEOUT_MS = 30_000;

export interface DeviceDirectoryOptions {
  /** Who owns each partition now (`PartitionOwners`). */
  owners: { assignment(): Promise<ReadonlyMap<number, string>>; invalidate(): void };
  /** The stream shard count: partitions 0…shards-1. */
  shards: number;
  /** The partitions this node answers for now: assigned to it and caught up. */
  served: () => readonly number[];
}

export class ClusterDeviceDirectory implements DeviceDirectory {
  constructor(private readonly opts: DeviceDirectoryOptions) {}

  async list(query: DeviceListRequest, authorization: string | undefined): Promise<Page<DeviceInfo>> {
    let owners = await this.opts.owners.assignment();
    if (this.missing(owners.keys()).length > 0) {
      // Cached from before a rebalance ended, perhaps: ask the group again before refusing.
      this.opts.owners.invalidate();
      owners = await this.opts.owners.assignment();
    }
    this.checkCovered(owners.keys());
    const answers = await Promise.all([...new Set(owners.values())].map((url) => this.ask(url, query, authorization)));
    try {
      this.checkCovered(answers.flatMap((a) => a.partitions));
    } catch (err) {
      this.opts.owners.invalidate();
      throw err;
    }
    return mergeDevicePages(answers.map((a) => a.page), query.limit);
  }

  localPart(page: Page<DeviceInfo>): { page: Page<DeviceInfo>; partitions: readonly number[] } {
    const partitions = this.opts.served();
    const served = new Set(partitions);
    return { page: { ...page, items: page.items.filter((d) => served.has(shardOf(d.deviceId, this.opts.shards))) }, partitions };
  }

  /** One node's part: its page and the partitions it answered for. */
  private async ask(url: string, query: DeviceListRequest, authorization: string | undefined): Promise<{ page: Page<DeviceInfo>; partitions: number[] }> {
    const target = new URL('/v1/devices', url);
    target.searchParams.set('limit', String(query.limit));
    if (query.cursor !== undefined) target.searchParams.set('cursor', query.cursor);
    if (query.tag !== undefined) target.searchParams.set('tag', query.tag);
    if (query.prefix !== undefined) target.searchParams.set('prefix', query.prefix);
    const headers: Record<string, string> = { [DEVICE_LIST_FANOUT_HEADER]: '1', accept: 'application/json' };
    if (authorization !== undefined) headers.authorization = authorization;
    let res: Response;
    try {
      res = await fetch(target, { headers, signal: AbortSignal.timeout(FAN_OUT_TIMEOUT_MS) });
    } catch (err) {
      this.opts.owners.invalidate();
      throw new TributaryError('StoreUnavailable', `cluster: the node ${url} did not answer the device list; retry shortly`, { cause: err });
    }
    if (res.status !== 200) {
      // Its own refusal (e.g. a key it does not know yet, or it is shutting down) ends the list: retry.
      const body = (await res.json().catch(() => undefined)) as { error?: { message?: string } } | undefined;
      throw new TributaryError('StoreUnavailable', `cluster: the node ${url} answered the device list with ${res.status}${body?.error?.message === undefined ? '' : `: ${body.error.message}`}; retry shortly`);
    }
    const page = (await res.json()) as Page<DeviceInfo>;
    const listed = res.headers.get(DEVICE_LIST_PARTITIONS_HEADER) ?? '';
    return { page, partitions: listed === '' ? [] : listed.split(',').map(Number) };
  }

  /** The partitions not among `partitions`. */
  private missing(partitions: Iterable<number>): number[] {
    const covered = new Set(partitions);
    return Array.from({ length: this.opts.shards }, (_, p) => p).filter((p) => !covered.has(p));
  }

  /** @throws TributaryError `StoreUnavailable` naming the partitions no node answers for. */
  private checkCovered(partitions: Iterable<number>): void {
    const missing = this.missing(partitions);
    if (missing.length > 0) {
      throw new TributaryError('StoreUnavailable', `cluster: no node answers for partition${missing.length > 1 ? 's' : ''} ${missing.join(', ')} right now (the cluster is rebalancing or a new owner is catching up); retry shortly`);
    }
  }
}

/**
 * Merges the nodes' parts of one page: devices up to the smallest cursor among parts
 * that have more (beyond it some node has not looked yet), one entry per device — the
 * fresher one when two nodes list it during a handover — at most `limit` of them.
 */
export function mergeDevicePages(parts: ReadonlyArray<Page<DeviceInfo>>, limit: number): Page<DeviceInfo> {
  let bound: string | undefined;
  for (const part of parts) {
    if (part.nextCursor === null) continue;
    const at = decodeDeviceCursor(part.nextCursor);
    if (bound === undefined || at < bound) bound = at;
  }
  const byId = new Map<string, DeviceInfo>();
  for (const part of parts) {
    for (const device of part.items) {
      if (bound !== undefined && device.deviceId > bound) continue;
      const seen = byId.get(device.deviceId);
      if (seen === undefined || fresher(device, seen)) byId.set(device.deviceId, device);
    }
  }
  // Device ids are ASCII, so string order is the registry's byte order.
  const items = [...byId.values()].sort((a, b) => (a.deviceId < b.deviceId ? -1 : 1));
  if (items.length > limit) {
    const page = items.slice(0, limit);
    return { items: page, nextCursor: encodeDeviceCursor((page[limit - 1] as DeviceInfo).deviceId) };
  }
  return { items, nextCursor: bound === undefined ? null : encodeDeviceCursor(bound) };
}

function fresher(a: DeviceInfo, b: DeviceInfo): boolean {
  const seenA = a.lastSeen ?? -1;
  const seenB = b.lastSeen ?? -1;
  return seenA !== seenB ? seenA > seenB : a.readings > b.readings;
}

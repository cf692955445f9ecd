import { valuesPackr } from '../core/numbers.js';
import type { Values } from '../store/types.js';
import type { ChangeRecord, EventName } from './types.js';

/** Values may hold kept-digit numbers: their msgpack extension comes with this codec (core/numbers.ts). */
const packr = valuesPackr();
const EVENT_NAMES: readonly EventName[] = ['INSERT', 'MODIFY', 'REMOVE'];

/**
 * A change record on disk: a msgpack array, positional to stay small (the shard and
 * sequence number live in the key). Optional fields are appended, so records written
 * before they existed decode unchanged: `origin` only for writes by a function, then
 * `source` only in cluster mode (with a null `origin` before it when there is none).
 * A record with neither encodes exactly as before they existed.
 */
type Encoded = [
  eventIndex: number,
  deviceId: string,
  ts: number,
  seq: number,
  createdAt: number,
  newValues: Values | null,
  oldValues: Values | null,
  byService: 0 | 1,
  origin?: [fn: string, hops: number] | null,
  source?: number,
];

export function encodeRecord(r: ChangeRecord): Buffer {
  const row: Encoded = [EVENT_NAMES.indexOf(r.eventName), r.deviceId, r.ts, r.seq, r.createdAt, r.newValues ?? null, r.oldValues ?? null, r.byService ? 1 : 0];
  if (r.origin || r.source !== undefined) row.push(r.origin ? [r.origin.function, r.origin.hops] : null);
  if (r.source !== undefined) row.push(r.source);
  return packr.pack(row);
}

export function decodeRecord(shard: number, sequenceNumber: number, bytes: Buffer): ChangeRecord {
  const [eventIndex, deviceId, ts, seq, createdAt, newValues, oldValues, byService, origin, source] = packr.unpack(bytes) as Encoded;
  const record: ChangeRecord = { eventName: EVENT_NAMES[eventIndex] as EventName, deviceId, ts, seq, shard, sequenceNumber, createdAt };
  if (newValues) record.newValues = newValues;
  if (oldValues) record.oldValues = oldValues;
  if (byService) record.byService = true;
  if (origin) record.origin = { function: origin[0], hops: origin[1] };
  if (source !== undefined) record.source = source;
  return record;
}

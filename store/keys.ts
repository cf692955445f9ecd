/**
 * Pure key encoding for the tables of `keyspace.ts`. Every key is a Buffer whose
 * byte order is the order LevelDB sorts in, so the layout below is what makes range
 * scans work:
 *
 * - telemetry `T · partition u32 · deviceId · 0x00 · ts u64 · seq u32` — within a
 *   partition, keys sort by device, then ts, then seq. The 0x00 separator sorts below
 *   every device-id character, so a device's keys never interleave with those of a
 *   device whose id it prefixes (`a` vs `a1`).
 * - partition index `P · u32`, latest `L · deviceId`, registry `D · deviceId`,
 *   delivery `Q · clientId · 0x00 · slot u32`.
 *
 * Device ids are validated elsewhere (`core/ids.ts`) and never contain 0x00.
 */
import type { DeliveryRow } from './delivery-window.js';
import { Prefix } from './keyspace.js';

/** Largest value of an unsigned 32-bit field (partition, seq). */
export const MAX_U32 = 0xffff_ffff;

const TWO_32 = 0x1_0000_0000;
/** Bytes after the device id in a telemetry key: separator, ts, seq. */
const TELEMETRY_TAIL = 1 + 8 + 4;

/** The time partition of `ts`: windows of `windowMs` counted from the epoch. */
export function partitionOf(ts: number, windowMs: number): number {
  return Math.floor(ts / windowMs);
}

/** A decoded telemetry key. */
export interface TelemetryKey {
  partition: number;
  deviceId: string;
  ts: number;
  seq: number;
}

function writeU64(buf: Buffer, value: number, offset: number): void {
  // Two u32 halves instead of BigInt: timestamps stay far below 2^53, and this is the hot path.
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`u64 field out of range: ${value}`);
  buf.writeUInt32BE(Math.floor(value / TWO_32), offset);
  buf.writeUInt32BE(value % TWO_32, offset + 4);
}

function readU64(buf: Buffer, offset: number): number {
  return buf.readUInt32BE(offset) * TWO_32 + buf.readUInt32BE(offset + 4);
}

/** `T · partition · deviceId · 0x00 · ts · seq` */
export function telemetryKey(partition: number, deviceId: string, ts: number, seq: number): Buffer {
  const idLen = Buffer.byteLength(deviceId, 'utf8');
  const buf = Buffer.allocUnsafe(1 + 4 + idLen + TELEMETRY_TAIL);
  buf[0] = Prefix.telemetry;
  buf.writeUInt32BE(partition, 1);
  buf.write(deviceId, 5, 'utf8');
  const tail = 5 + idLen;
  buf[tail] = 0x00;
  writeU64(buf, ts, tail + 1);
  buf.writeUInt32BE(seq, tail + 9);
  return buf;
}

/** Inverse of {@link telemetryKey}; throws on a key that is not a telemetry key. */
export function decodeTelemetryKey(key: Buffer): TelemetryKey {
  if (key[0] !== Prefix.telemetry || key.length < 1 + 4 + 1 + TELEMETRY_TAIL) throw new RangeError('not a telemetry key');
  const sep = key.length - TELEMETRY_TAIL;
  if (key[sep] !== 0x00) throw new RangeError('malformed telemetry key');
  return {
    partition: key.readUInt32BE(1),
    deviceId: key.toString('utf8', 5, sep),
    ts: readU64(key, sep + 1),
    seq: key.readUInt32BE(sep + 9),
  };
}

/** The ts of a telemetry key, read from its fixed-size tail without decoding the rest. */
export function telemetryKeyTs(key: Buffer): number {
  return readU64(key, key.length - 12);
}

/** The seq of a telemetry key, read from its fixed-size tail. */
export function telemetryKeySeq(key: Buffer): number {
  return key.readUInt32BE(key.length - 4);
}

/** Inclusive iterator bounds for one device's readings with `fromTs <= ts <= toTs` in one partition. */
export function telemetryBounds(partition: number, deviceId: string, fromTs: number, toTs: number): { gte: Buffer; lte: Buffer } {
  return { gte: telemetryKey(partition, deviceId, fromTs, 0), lte: telemetryKey(partition, deviceId, toTs, MAX_U32) };
}

/**
 * The whole key range of one partition, `[T·p, T·(p+1))`: every device's readings in
 * that time window, and nothing else (partition-first keys, ADR 0001).
 */
export function partitionRange(partition: number): { gte: Buffer; lt: Buffer } {
  const gte = Buffer.allocUnsafe(5);
  gte[0] = Prefix.telemetry;
  gte.writeUInt32BE(partition, 1);
  let lt: Buffer;
  if (partition < MAX_U32) {
    lt = Buffer.allocUnsafe(5);
    lt[0] = Prefix.telemetry;
    lt.writeUInt32BE(partition + 1, 1);
  } else {
    lt = Buffer.of(Prefix.telemetry + 1);
  }
  return { gte, lt };
}

/**
 * An inclusive upper bound for compacting one partition: `T·p·0xff` sorts after every
 * key of the partition (device ids are ASCII) and before the first key of the next, so
 * a compaction up to it never reaches the next partition's files.
 */
export function partitionLastKey(partition: number): Buffer {
  const buf = Buffer.allocUnsafe(6);
  buf[0] = Prefix.telemetry;
  buf.writeUInt32BE(partition, 1);
  buf[5] = 0xff;
  return buf;
}

/** `P · partition` */
export function partitionKey(partition: number): Buffer {
  const buf = Buffer.allocUnsafe(5);
  buf[0] = Prefix.partition;
  buf.writeUInt32BE(partition, 1);
  return buf;
}

/** Inverse of {@link partitionKey}. */
export function decodePartitionKey(key: Buffer): number {
  if (key[0] !== Prefix.partition || key.length !== 5) throw new RangeError('not a partition key');
  return key.readUInt32BE(1);
}

/** Bounds covering the whole partition index. */
export function partitionIndexBounds(): { gte: Buffer; lt: Buffer } {
  return { gte: Buffer.of(Prefix.partition), lt: Buffer.of(Prefix.partition + 1) };
}

function prefixed(prefix: number, text: string): Buffer {
  const len = Buffer.byteLength(text, 'utf8');
  const buf = Buffer.allocUnsafe(1 + len);
  buf[0] = prefix;
  buf.write(text, 1, 'utf8');
  return buf;
}

/** `L · deviceId` */
export function latestKey(deviceId: string): Buffer {
  return prefixed(Prefix.latest, deviceId);
}

/** `D · deviceId` */
export function deviceKey(deviceId: string): Buffer {
  return prefixed(Prefix.device, deviceId);
}

/** Inverse of {@link deviceKey}. */
export function decodeDeviceKey(key: Buffer): string {
  if (key[0] !== Prefix.device) throw new RangeError('not a device key');
  return key.toString('utf8', 1);
}

/** Bounds over the device registry, starting strictly after `afterId` when given. */
export function deviceBounds(afterId?: string): { gt?: Buffer; gte?: Buffer; lt: Buffer } {
  const lt = Buffer.of(Prefix.device + 1);
  return afterId === undefined ? { gte: Buffer.of(Prefix.device), lt } : { gt: deviceKey(afterId), lt };
}

/** `Q · clientId · 0x00 · slot u32`: one slot of the client's delivery window (store/delivery-window.ts). MQTT strings may not contain U+0000 [MQTT-1.5.3-2]. */
export function deliveryKey(clientId: string, slot: number): Buffer {
  const len = Buffer.byteLength(clientId, 'utf8');
  const buf = Buffer.allocUnsafe(1 + len + 1 + 4);
  buf[0] = Prefix.delivery;
  buf.write(clientId, 1, 'utf8');
  buf[1 + len] = 0x00;
  buf.writeUInt32BE(slot, 2 + len);
  return buf;
}

/** Inverse of {@link deliveryKey}. */
export function decodeDeliveryKey(key: Buffer): { clientId: string; slot: number } {
  if (key[0] !== Prefix.delivery || key.length < 6 || key[key.length - 5] !== 0x00) throw new RangeError('not a delivery key');
  return { clientId: key.toString('utf8', 1, key.length - 5), slot: key.readUInt32BE(key.length - 4) };
}

/** Inclusive bounds over every delivery slot of one client. */
export function deliveryBounds(clientId: string): { gte: Buffer; lte: Buffer } {
  return { gte: deliveryKey(clientId, 0), lte: deliveryKey(clientId, MAX_U32) };
}

/** `Q` value: delivery number (f64, an integer), packet id u16, payload hash (f64, a 48-bit integer). */
export function encodeDelivery(n: number, packetId: number, payloadHash: number): Buffer {
  const buf = Buffer.allocUnsafe(DELIVERY_VALUE_BYTES);
  buf.writeDoubleBE(n, 0);
  buf.writeUInt16BE(packetId, 8);
  buf.writeDoubleBE(payloadHash, 10);
  return buf;
}

/** Inverse of {@link encodeDelivery}. */
export function decodeDelivery(value: Buffer): DeliveryRow {
  if (value.length !== DELIVERY_VALUE_BYTES) throw new RangeError(`not a delivery value (${value.length} bytes)`);
  return { n: value.readDoubleBE(0), packetId: value.readUInt16BE(8), payloadHash: value.readDoubleBE(10) };
}

const DELIVERY_VALUE_BYTES = 18;

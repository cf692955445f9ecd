/**
 * The store's public contract. Partition key = device id, sort key = (ts, seq).
 * Implementations: LevelDB (`level-store.ts`, the product) and in-memory
 * (`memory-store.ts`, for tests of the logic above the store); both pass
 * `test/suites/telemetry-store.suite.ts`.
 */

/** A reading's values: a flat or nested JSON object of numbers, strings and booleans. */
export type Values = { [key: string]: Value };
export type Value = number | string | boolean | Values;

/** A validated reading as it enters the write path. */
export interface ReadingInput {
  /** Device-supplied time (epoch ms); absent means the store stamps it with its clock. */
  ts?: number;
  values: Values;
}

/** A stored reading: its full item key and values. */
export interface Reading {
  deviceId: string;
  ts: number;
  seq: number;
  values: Values;
}

/**
 * Identifies one MQTT QoS 1 delivery so that a redelivery after a crash is
 * acknowledged without a second write (see docs/ARCHITECTURE.md, "Idempotence").
 */
export interface DeliveryId {
  clientId: string;
  packetId: number;
  /** Hash of the raw payload (hex). */
  payloadHash: string;
}

export interface WriteRequest {
  deviceId: string;
  readings: ReadingInput[];
  delivery?: DeliveryId;
}

export type ItemChange = 'INSERT' | 'MODIFY' | 'NONE';

export interface WriteResult {
  /** `duplicate`: the delivery was already committed; nothing was written. */
  status: 'committed' | 'duplicate';
  /** One entry per input reading, in order (empty for a duplicate). */
  items: Array<{ ts: number; seq: number; change: ItemChange }>;
}

export interface RangeQuery {
  deviceId: string;
  /** Inclusive lower bound, epoch ms. */
  from: number;
  /** Inclusive upper bound, epoch ms. */
  to: number;
  order: 'asc' | 'desc';
  limit: number;
  /** Opaque cursor from a previous page. */
  cursor?: string;
  /** Projection: value keys to keep (dotted paths address nested keys). */
  keys?: string[];
}

export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

export interface DeviceInfo {
  deviceId: string;
  firstSeen: number;
  lastSeen: number;
  readings: number;
  tags: Record<string, string>;
}

export interface ListDevicesQuery {
  limit: number;
  cursor?: string;
}

export interface TelemetryStore {
  /**
   * Writes the readings of one request atomically with their change records, latest
   * index and device registry entry. Resolves only once the batch is durable
   * (synced); concurrent calls are group-committed.
   */
  write(req: WriteRequest): Promise<WriteResult>;
  query(q: RangeQuery): Promise<Page<Reading>>;
  /** The reading with the highest `ts` of the device (not the last to arrive). */
  latest(deviceId: string): Promise<Reading | undefined>;
  getDevice(deviceId: string): Promise<DeviceInfo | undefined>;
  listDevices(q: ListDevicesQuery): Promise<Page<DeviceInfo>>;
  /** Flushes pending writes, then closes. */
  close(): Promise<void>;
}

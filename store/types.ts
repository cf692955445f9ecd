/**
 * The store's public contract. Partition key = device id, sort key = (ts, seq).
 * Implementations: LevelDB (`level-store.ts`, the product) and in-memory
 * (`memory-store.ts`, for tests of the logic above the store); both pass
 * `test/suites/telemetry-store.suite.ts`.
 */

import type { NumberValue } from '../core/numbers.js';
import type { BatchOp, WriteOrigin } from '../streams/types.js';

/**
 * A reading's values: a flat or nested JSON object of numbers, strings and booleans. A
 * number is a double, or a {@link NumberValue} holding the digits of a literal a double
 * cannot hold exactly (core/numbers.ts).
 */
export type Values = { [key: string]: Value };
export type Value = number | NumberValue | string | boolean | Values;

/** A validated reading as it enters the write path. */
export interface ReadingInput {
  /** Device-supplied time (epoch ms); absent means the store stamps it with its clock. */
  ts?: number;
  /**
   * Only with `ts`: the item's seq. Set by cluster materialization, which stamps readings
   * from their telemetry-topic offset (ADR 0002); otherwise the store numbers readings of
   * one request that share a ts 0, 1, …
   */
  seq?: number;
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
  /** Hash of the raw payload: an integer below 2^48 (ingest takes the first 48 bits of its SHA-1). */
  payloadHash: number;
}

export interface WriteRequest {
  deviceId: string;
  readings: ReadingInput[];
  delivery?: DeliveryId;
  /** Written by a function (`context.put`): carried into the change records, so mappings can stop a function re-triggering itself. */
  origin?: WriteOrigin;
  /** Cluster mode: the telemetry-topic offset this request was materialized from, carried into its change records. */
  source?: number;
  /** Cluster mode: puts committed in the same batch as this request's data (the consumer offset). LevelDB store only. */
  batchOps?: BatchOp[];
}

/** `ACCEPTED`: cluster mode, durable on Kafka; whether it inserts or modifies is decided when its partition's owner applies it. */
export type ItemChange = 'INSERT' | 'MODIFY' | 'NONE' | 'ACCEPTED';

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

/**
 * A stored reading with its values as JSON text: exactly the stored bytes, or with a
 * projection, the projected values re-encoded. For answers that embed the values in
 * JSON as they are, without parsing and re-serializing them.
 */
export interface RawReading {
  deviceId: string;
  ts: number;
  seq: number;
  /** The values object as JSON text. */
  valuesJson: string;
}

export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

export interface DeviceInfo {
  deviceId: string;
  /** Commit time of the device's first write; null for a device registered (PUT) that has not written yet. */
  firstSeen: number | null;
  /** Commit time of the device's last write; null until it writes. */
  lastSeen: number | null;
  /**
   * Readings inserted since the device was registered. Retention drops do not lower it
   * (a drop removes whole partitions without visiting them), so it counts readings
   * written, not readings currently stored.
   */
  readings: number;
  /**
   * Readings inserted a minute, recently: an exponentially weighted average over about the
   * last minute, kept in memory (0 after a restart until the device writes again).
   */
  readingsPerMinute: number;
  tags: Record<string, string>;
}

export interface ListDevicesQuery {
  limit: number;
  cursor?: string;
  /**
   * Only devices whose tags match: for each entry, the device has that tag, and with
   * a non-undefined value, exactly that value. A filtered page may hold fewer than
   * `limit` devices (even none) with a non-null `nextCursor`: each page examines a
   * bounded number of registry entries.
   */
  tags?: Record<string, string | undefined>;
  /** Only devices whose id starts with this (a range of the registry, so cheap). */
  prefix?: string;
}

/** What the registry and partition index hold (the counts behind `GET /v1/store/stats`). */
export interface RegistryStats {
  devices: number;
  /** Readings written, summed over devices (retention drops do not lower it, as `DeviceInfo.readings`). */
  readings: number;
  partitions: number;
  /** Start (epoch ms) of the oldest partition; null when there is none. */
  oldestPartitionStart: number | null;
  partitionWindowMs: number;
}

/** `PUT /v1/devices/{id}`: the device's tags, replacing the ones it had. */
export interface PutDeviceRequest {
  deviceId: string;
  tags: Record<string, string>;
}

export interface PutDeviceResult {
  /** True when the device did not exist before. */
  created: boolean;
  device: DeviceInfo;
}

export interface DeleteDeviceResult {
  /** Readings removed (each with a REMOVE change record). */
  readings: number;
}

/** `latest(deviceId, { keys })`: per-key latest values instead of the latest reading. */
export interface LatestOptions {
  /**
   * Value keys (dotted paths address nested keys). A key that names an object
   * (`gps`) matches every leaf under it (`gps.lat`, `gps.lon`).
   */
  keys: string[];
}

/** The newest value of one key: from the reading with the highest (ts, seq) that carried it. */
export interface KeyValue {
  ts: number;
  seq: number;
  value: string | number | NumberValue | boolean;
}

export interface LatestValues {
  deviceId: string;
  /** By leaf path (`temp`, `gps.lat`); keys the device never sent are absent. */
  values: Record<string, KeyValue>;
}

export const AGGREGATES = ['avg', 'min', 'max', 'sum', 'count', 'first', 'last'] as const;
export type Aggregate = (typeof AGGREGATES)[number];

export interface AggregateQuery {
  deviceId: string;
  /** Inclusive, epoch ms. */
  from: number;
  /** Inclusive, epoch ms. */
  to: number;
  /** Bucket width; bucket starts are multiples of it counted from the epoch. */
  intervalMs: number;
  aggs: Aggregate[];
  /** Value keys to aggregate (dotted paths; a key naming an object covers its leaves). Default: every key. */
  keys?: string[];
}

/**
 * Aggregates of one key in one bucket. `count`, `first` and `last` count or return
 * values of any type; `avg`, `min`, `max` and `sum` consider numbers only and are null
 * when the bucket holds no number for the key (booleans are not numbers).
 */
export interface KeyAggregates {
  avg?: number | null;
  min?: number | null;
  max?: number | null;
  sum?: number | null;
  count?: number;
  first?: string | number | boolean;
  last?: string | number | boolean;
}

export interface AggregateBucket {
  /** Inclusive start, a multiple of the interval. */
  start: number;
  /** Exclusive end: start + interval. */
  end: number;
  /** By leaf path (`temp`, `gps.lat`). */
  values: Record<string, KeyAggregates>;
}

export interface AggregateResult {
  deviceId: string;
  intervalMs: number;
  /** Buckets in time order; buckets without readings of the selected keys are omitted. */
  buckets: AggregateBucket[];
}

/** What one retention pass did. */
export interface DropResult {
  /** Partitions dropped. */
  partitions: number;
  /** Readings removed with REMOVE records; only counted when `retentionRemoveRecords` is on. */
  readings?: number;
  /** Wall time of the pass. */
  ms: number;
}

export interface TelemetryStore {
  /**
   * Writes the readings of one request atomically with their change records, latest
   * index and device registry entry. Resolves only once the batch is durable
   * (synced); concurrent calls are group-committed.
   */
  write(req: WriteRequest): Promise<WriteResult>;
  /**
   * Readings accepted by {@link write} and not yet durable (queued or in the batch being
   * committed): how far the store is behind its writers. Ingest uses it for backpressure.
   */
  readonly backlog: number;
  query(q: RangeQuery): Promise<Page<Reading>>;
  /** {@link query} with each reading's values as JSON text (same items, cursors and errors). */
  queryRaw(q: RangeQuery): Promise<Page<RawReading>>;
  /**
   * Buckets of aggregates over a time range of one device, computed by streaming the
   * range in chunks (the range is never loaded whole).
   */
  aggregate(q: AggregateQuery): Promise<AggregateResult>;
  /** The reading with the highest `ts` of the device (not the last to arrive). */
  latest(deviceId: string): Promise<Reading | undefined>;
  /** Per-key latest values; undefined for an unknown device. */
  latest(deviceId: string, opts: LatestOptions): Promise<LatestValues | undefined>;
  /** {@link latest} (the whole reading) with its values as JSON text. */
  latestRaw(deviceId: string): Promise<RawReading | undefined>;
  getDevice(deviceId: string): Promise<DeviceInfo | undefined>;
  listDevices(q: ListDevicesQuery): Promise<Page<DeviceInfo>>;
  /** Creates the device or replaces its tags. */
  putDevice(req: PutDeviceRequest): Promise<PutDeviceResult>;
  /**
   * Deletes the device: every reading (with REMOVE change records, no service
   * identity: a user delete), its latest entry, registry entry and the delivery ids of
   * the MQTT client with the same id. Undefined when the device does not exist.
   */
  deleteDevice(deviceId: string): Promise<DeleteDeviceResult | undefined>;
  /**
   * Drops every partition wholly older than `now - retention` (no-op when retention
   * is off). Runs in the background too; exposed for tests and benchmarks.
   */
  dropExpired(now?: number): Promise<DropResult>;
  /** Flushes pending writes, stops background work, then closes. */
  close(): Promise<void>;
}

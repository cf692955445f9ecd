/**
 * The telemetry topic (ADR 0002): validated write requests, keyed by device, in partition
 * `shardOf(deviceId)`, so a device's readings, its change records and its store owner
 * share one partition number. In cluster mode this is the source of truth; stores are
 * built from it.
 */
import type { Producer } from 'kafkajs';
import { TributaryError } from '../core/errors.js';
import { valuesPackr } from '../core/numbers.js';
import { payloadHashOfSha1 } from '../ingest/telemetry-ingest.js';
import type { DeliveryId, WriteRequest, WriteResult } from '../store/types.js';
import { shardOf } from '../streams/shard.js';
import type { KafkaClient } from './kafka-client.js';

/** Values may hold kept-digit numbers: their msgpack extension comes with this codec (core/numbers.ts). */
const packr = valuesPackr();

/**
 * A change to a device's registry entry rather than readings: its tags replaced, or the
 * device deleted. On the topic in order with the readings, so a rebuilt partition ends up
 * with the same devices.
 */
export type DeviceControl = { tags: Record<string, string> } | { delete: true };

/** A registry change as it travels, with the id of the request waiting for its result. */
export type DeviceControlMessage = DeviceControl & { id: string };

/** A write as it travels: the request exactly as ingest validated it, and when it arrived. */
export interface TelemetryMessage {
  req: WriteRequest;
  /** Receive time (epoch ms); the owner stamps readings without `ts` from it, so a rebuild stamps alike. */
  receivedAt: number;
  /** Set on a registry change; `req` then carries the device id and no readings. */
  control?: DeviceControlMessage;
}

export function encodeTelemetry(msg: TelemetryMessage): Buffer {
  return packr.pack(msg.control === undefined ? [msg.req, msg.receivedAt] : [msg.req, msg.receivedAt, msg.control]);
}

export function decodeTelemetry(bytes: Buffer): TelemetryMessage {
  const [req, receivedAt, control] = packr.unpack(bytes) as [WriteRequest, number, DeviceControlMessage | undefined];
  // Records of builds before data format 2 carry the payload's SHA-1 as hex.
  const delivery = req.delivery as (Omit<DeliveryId, 'payloadHash'> & { payloadHash: number | string }) | undefined;
  if (typeof delivery?.payloadHash === 'string') delivery.payloadHash = payloadHashOfSha1(delivery.payloadHash);
  return control === undefined ? { req, receivedAt } : { req, receivedAt, control };
}

/**
 * Server stamps in cluster mode (ADR 0002): a reading without `ts` gets the receive time
 * and a seq derived from its record's offset and its index in the request, so every
 * owner — the first, a restarted one, one rebuilding the partition — keys it alike, and
 * applying a record again finds its items already there instead of adding new ones.
 * The seqs lie above 2^31, clear of the 0, 1, … of device-stamped readings sharing a ts;
 * within one millisecond they follow the partition's order (two records of one device
 * 32,768 offsets apart in one millisecond would collide — far beyond any real rate).
 */
const SERVER_SEQ_BASE = 0x8000_0000;
const SEQ_OFFSET_SPAN = 0x8000;
/** Most readings one request may carry in cluster mode (the index's 16 bits of the seq). */
const MAX_READINGS_PER_RECORD = 0x1_0000;

function serverSeq(offset: number, index: number): number {
  return SERVER_SEQ_BASE + (offset % SEQ_OFFSET_SPAN) * MAX_READINGS_PER_RECORD + index;
}

/** The store request a telemetry record at `offset` stands for: stamped, and marked with its source. */
export function materialize(msg: TelemetryMessage, offset: number): WriteRequest {
  const { req, receivedAt } = msg;
  const readings = req.readings.map((r, i) => (r.ts === undefined ? { ts: receivedAt, seq: serverSeq(offset, i), values: r.values } : r));
  return { ...req, readings, source: offset };
}

/**
 * What ingest can say of a request once Kafka has it at `offset`: each reading's item
 * key (as {@link materialize} will give it) and `ACCEPTED` — insert or modify is decided
 * when the partition's owner applies it.
 */
export function acceptedResult(req: WriteRequest, receivedAt: number, offset: number): WriteResult {
  const sameTs = new Map<number, number>();
  const items = req.readings.map((r, i) => {
    if (r.ts === undefined) return { ts: receivedAt, seq: serverSeq(offset, i), change: 'ACCEPTED' as const };
    const seq = r.seq ?? sameTs.get(r.ts) ?? 0;
    sameTs.set(r.ts, seq + 1);
    return { ts: r.ts, seq, change: 'ACCEPTED' as const };
  });
  return { status: 'committed', items };
}

export interface TelemetryTopicOptions {
  client: KafkaClient;
  topic: string;
  partitions: number;
  replicationFactor: number;
  /** The data retention (ms, 0 = forever): the topic must keep records at least that long to rebuild a store. */
  retentionMs: number;
}

/** Requests per produce request and their size cap (Kafka's default batch limit is 1 MiB). */
const SEND_RECORDS = 1_000;
const SEND_BYTES = 512 * 1024;

interface Pending {
  partition: number;
  key: string;
  value: Buffer;
  resolve: (placed: { partition: number; offset: number }) => void;
  reject: (err: unknown) => void;
}

/**
 * The ingest side: `send` resolves once every in-sync replica has the request (idempotent
 * producer, `acks=all`) — the moment a QoS 1 PUBACK or an HTTP 201 may be sent.
 *
 * Sends are group-committed like the store's batches: with none in flight a request goes
 * out at once; while one is in flight, new requests gather and go out together, so
 * latency is one round trip when idle and throughput grows with load.
 */
export class TelemetryProducer {
  private queue: Pending[] = [];
  private sending = 0;
  private flushing: Promise<void> | undefined;

  private constructor(
    private readonly client: KafkaClient,
    private readonly producer: Producer,
    readonly topic: string,
    readonly partitions: number,
  ) {}

  static async open(opts: TelemetryTopicOptions): Promise<TelemetryProducer> {
    await opts.client.ensureLogTopic({ name: opts.topic, partitions: opts.partitions, replicationFactor: opts.replicationFactor, retentionMs: opts.retentionMs, retentionOf: 'the data retention' });
    return new TelemetryProducer(opts.client, await opts.client.producer(), opts.topic, opts.partitions);
  }

  partitionOf(deviceId: string): number {
    return shardOf(deviceId, this.partitions);
  }

  /** Requests handed to `send` and not yet acknowledged by Kafka. */
  get backlog(): number {
    return this.queue.length + this.sending;
  }

  /** Resolves with where Kafka put the request, once it is replicated; rejects with StoreUnavailable. */
  send(req: WriteRequest, receivedAt = Date.now()): Promise<{ partition: number; offset: number }> {
    if (req.readings.length > MAX_READINGS_PER_RECORD) {
      return Promise.reject(new TributaryError('ValidationError', `a request may carry at most ${MAX_READINGS_PER_RECORD} readings in cluster mode`, { field: 'readings' }));
    }
    return this.enqueue({ req, receivedAt });
  }

  /** A registry change of one device, in order with its readings. */
  sendControl(deviceId: string, control: DeviceControlMessage): Promise<{ partition: number; offset: number }> {
    return this.enqueue({ req: { deviceId, readings: [] }, receivedAt: Date.now(), control });
  }

  private enqueue(msg: TelemetryMessage): Promise<{ partition: number; offset: number }> {
    return new Promise((resolve, reject) => {
      this.queue.push({ partition: this.partitionOf(msg.req.deviceId), key: msg.req.deviceId, value: encodeTelemetry(msg), resolve, reject });
      this.flushing ??= this.flush();
    });
  }

  private async flush(): Promise<void> {
    while (this.queue.length > 0) {
      let bytes = 0;
      let n = 0;
      while (n < this.queue.length && n < SEND_RECORDS && (n === 0 || bytes < SEND_BYTES)) bytes += (this.queue[n++] as Pending).value.length;
      const batch = this.queue.splice(0, n);
      this.sending = batch.length;
      try {
        const bases = await this.client.send(this.producer, this.topic, batch);
        // Within a partition, Kafka keeps the order of the send: the i-th record is at base + i.
        const seen = new Map<number, number>();
        for (const p of batch) {
          const index = seen.get(p.partition) ?? 0;
          seen.set(p.partition, index + 1);
          p.resolve({ partition: p.partition, offset: (bases.get(p.partition) as number) + index });
        }
      } catch (err) {
        for (const p of batch) p.reject(err);
      }
      this.sending = 0;
    }
    this.flushing = undefined;
  }

  /** Waits for the requests already handed to `send`, then disconnects. */
  async close(): Promise<void> {
    await this.flushing;
    await this.client.closeProducer(this.producer);
  }
}

/**
 * The control plane's writes in cluster mode (ADR 0002): device credentials, API keys, the
 * audit log, functions, triggers, the dead-letter queue. Every node sends its metadata
 * writes to one single-partition topic and applies that partition, in its one order, to
 * its own LevelDB, so every node ends up with the same tables and readers keep reading
 * them locally.
 *
 * A record is one LevelDB op: key = the LevelDB key, value = the value or null for a
 * delete (a tombstone: compaction then keeps exactly the latest value of each key). The
 * ops of one commit are one send, so one record batch, appended atomically. How far the
 * node has applied is the topic's `O` entry (cluster/offsets.ts), written in the batch of
 * the ops it covers: a crash neither applies a record twice nor skips one.
 */
import type { Producer } from 'kafkajs';
import { TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Database } from '../store/database.js';
import type { MetadataWriter } from '../store/metadata.js';
import type { BatchOp } from '../streams/types.js';
import { OffsetOutOfRange, type FetchedRecord, type KafkaClient, type KafkaPoller, type OutgoingRecord } from './kafka-client.js';
import { consumerOffsetOp, readConsumerOffset } from './offsets.js';

const PARTITION = 0;
/** How long a fetch at the end of the partition waits at the broker for a record. */
const POLL_WAIT_MS = 500;
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5_000;
/**
 * How long a compacted topic keeps deletions: for good. A node that was away longer than
 * that would keep what was deleted meanwhile, e.g. a revoked secret. Not Long.MAX: the
 * broker adds it to the clock (KIP-534), so about 100 years.
 */
const TOMBSTONE_RETENTION_MS = 100 * 365 * 24 * 3600 * 1000;

/** Largest op: a function version's code (5 MiB, functions/registry.ts) with room for its key. */
const MAX_RECORD_BYTES = 6 * 1024 * 1024;

export interface KafkaMetadataOptions {
  client: KafkaClient;
  /** This node's database: the ops and the applied position go there. */
  database: Database;
  topic: string;
  replicationFactor: number;
  /**
   * `compact`: the latest value of every key is kept forever, so a node can always rebuild
   * from the topic. `retentionMs`: records go by age (0 = never), for data that may expire.
   */
  cleanup: { compact: true } | { retentionMs: number };
  logger: Logger;
}

interface Waiter {
  /** The offset of the commit's last record. */
  last: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class KafkaMetadata implements MetadataWriter {
  private readonly listeners = new Set<(ops: readonly BatchOp[]) => void>();
  /** Commits of this node waiting for the applier to pass their last record. */
  private waiters: Waiter[] = [];
  /** The next offset to apply. */
  private position = 0;
  private closing: Promise<void> | undefined;
  private loop: Promise<void> = Promise.resolve();
  /** Ends the applier's pause between retries early (at close). */
  private wake: (() => void) | undefined;

  private constructor(
    private readonly opts: KafkaMetadataOptions,
    private readonly producer: Producer,
    private readonly poller: KafkaPoller,
  ) {}

  /**
   * Creates the topic if missing (refusing one with another partition count or cleanup
   * policy, or a compacted one that drops deletions: `Conflict`), and resolves once this node has applied everything the topic
   * held at open, so that modules opened afterwards load complete state.
   */
  static async open(opts: KafkaMetadataOptions): Promise<KafkaMetadata> {
    const { client, topic, replicationFactor, cleanup } = opts;
    if ('compact' in cleanup) await client.ensureCompactTopic({ name: topic, partitions: 1, replicationFactor, tombstoneRetentionMs: TOMBSTONE_RETENTION_MS, maxRecordBytes: MAX_RECORD_BYTES });
    else await client.ensureLogTopic({ name: topic, partitions: 1, replicationFactor, retentionMs: cleanup.retentionMs, retentionOf: 'the metadata it replicates' });
    const producer = await client.producer();
    let poller: KafkaPoller;
    try {
      poller = await client.poller();
    } catch (err) {
      await client.closeProducer(producer);
      throw err;
    }
    const self = new KafkaMetadata(opts, producer, poller);
    try {
      const end = await self.resume(await readConsumerOffset(opts.database, topic, PARTITION));
      while (self.position < end) await self.step();
    } catch (err) {
      await self.close();
      throw err;
    }
    self.loop = self.run();
    return self;
  }

  /**
   * Sends the ops as one record batch (idempotent producer, acks=all) and resolves once
   * this node has applied them, with whatever other nodes committed before them.
   * @throws TributaryError `StoreUnavailable` when Kafka does not take them or the log closes first.
   */
  async commit(ops: BatchOp[]): Promise<void> {
    if (ops.length === 0) return;
    if (this.closing !== undefined) throw this.closedError();
    const records: OutgoingRecord[] = ops.map((op) => ({ partition: PARTITION, key: op.key, value: op.type === 'del' ? null : valueOf(op) }));
    const base = (await this.opts.client.send(this.producer, this.opts.topic, records)).get(PARTITION);
    if (base === undefined) throw new TributaryError('InternalError', `Kafka did not say where the records sent to ${this.opts.topic} went`);
    const last = base + ops.length - 1;
    if (this.position > last) return;
    if (this.closing !== undefined) throw this.closedError();
    await new Promise<void>((resolve, reject) => this.waiters.push({ last, resolve, reject }));
  }

  onApplied(listener: (ops: readonly BatchOp[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Stops applying; commits still waiting reject (their ops are in the log: the next open applies them). */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.wake?.();
      await this.loop;
      for (const w of this.waiters.splice(0)) w.reject(this.closedError());
      await Promise.allSettled([this.opts.client.closeProducer(this.producer), this.poller.close()]);
    })();
    return this.closing;
  }

  /** Applies until closed; a failure is logged and retried with backoff. */
  private async run(): Promise<void> {
    let retryMs = RETRY_MIN_MS;
    while (this.closing === undefined) {
      try {
        await this.step();
        retryMs = RETRY_MIN_MS;
      } catch (err) {
        if (this.closing !== undefined) return;
        this.opts.logger.error({ err, topic: this.opts.topic, offset: this.position, retryMs }, 'applying the metadata topic failed; retrying');
        await this.pause(retryMs);
        retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
      }
    }
  }

  /** Applies the next fetched records (long-polling at the end), with the new position, in one batch. */
  private async step(): Promise<void> {
    const { database, topic, logger } = this.opts;
    let records: FetchedRecord[];
    try {
      records = await this.poller.fetch(topic, PARTITION, this.position, POLL_WAIT_MS);
    } catch (err) {
      if (!(err instanceof OffsetOutOfRange)) throw err;
      const from = this.position;
      await this.resume(from);
      // Still in range: a passing state of the broker; the caller retries.
      if (this.position === from) throw err;
      return;
    }
    const tail = records[records.length - 1];
    if (tail === undefined || this.closing !== undefined) return;
    const ops: BatchOp[] = [];
    for (const r of records) {
      if (r.key === null) logger.warn({ topic, offset: r.offset }, 'a record without a key on the metadata topic was skipped (not written by a node)');
      else ops.push(r.value === null ? { type: 'del', key: r.key } : { type: 'put', key: r.key, value: r.value });
    }
    const next = tail.offset + 1;
    await database.commit([...ops, consumerOffsetOp(topic, PARTITION, next)]);
    this.position = next;
    if (ops.length > 0) this.notify(ops);
    const done = this.waiters.filter((w) => w.last < next);
    this.waiters = this.waiters.filter((w) => w.last >= next);
    for (const w of done) w.resolve();
  }

  /**
   * Sets the position to `from` (the stored one; undefined: none yet), or to the log start
   * when the topic no longer holds `from`. Returns the partition's end.
   */
  private async resume(from: number | undefined): Promise<number> {
    const { client, topic, cleanup, logger } = this.opts;
    const offsets = (await client.offsets(topic)).find((o) => o.partition === PARTITION);
    const low = offsets?.low ?? 0;
    const high = offsets?.high ?? 0;
    if (from !== undefined && from >= low && from <= high) {
      this.position = from;
      return high;
    }
    if (from !== undefined && from < low) {
      const complete = 'compact' in cleanup ? ' (compacted: it still holds the latest value of every key)' : '; what they held is missing here';
      logger.warn({ topic, from, low }, `records this node had not applied were removed from the metadata topic; applying it again from its start${complete}`);
    } else if (from !== undefined) {
      logger.error({ topic, from, high }, 'the metadata topic ends before what this node has applied (was it recreated?); applying it again from its start');
    }
    this.position = low;
    return high;
  }

  private notify(ops: readonly BatchOp[]): void {
    for (const listener of this.listeners) {
      try {
        listener(ops);
      } catch (err) {
        this.opts.logger.error({ err, topic: this.opts.topic }, 'a listener of applied metadata threw');
      }
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  private closedError(): TributaryError {
    return new TributaryError('StoreUnavailable', `the metadata log ${this.opts.topic} is closed; a write sent before the close is applied at the next open`);
  }
}

function valueOf(op: BatchOp): Buffer {
  // A put without a value would go out as a tombstone: a delete.
  if (op.value === undefined) throw new TributaryError('InternalError', `a metadata put without a value (key ${op.key.toString('hex')})`);
  return op.value;
}

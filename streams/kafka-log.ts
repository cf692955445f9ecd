/**
 * The change log on Apache Kafka (ADR 0002): shard `p` is partition `p` of the changes
 * topic, and a record's sequence number is its Kafka offset + 1.
 *
 * That numbering is gap-free like the embedded log's because this log is the partition's
 * only writer, sends with an idempotent producer (retries never duplicate), uses no
 * transactions (no control records take offsets) and refuses a compacted topic. Every
 * acknowledgement is checked against the offsets it expected; a mismatch means another
 * writer, and the log stops accepting writes rather than hand out wrong numbers.
 *
 * Durability goes through the store's batch, as in embedded mode: `stage` puts each record
 * under `C` (an outbox) in the same synced LevelDB batch as the data; `commit` sends it to
 * Kafka. A record is on the topic iff its offset is below the partition's end offset, so
 * after a crash or a failed send the log re-sends exactly the outbox entries beyond the
 * end — nothing lost, nothing twice. Entries already on Kafka are dropped by `trim`.
 */
import { TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Database } from '../store/database.js';
import { OffsetOutOfRange, type KafkaClient, type OutgoingRecord } from '../cluster/kafka-client.js';
import type { Producer } from 'kafkajs';
import { decodeRecord, encodeRecord } from './codec.js';
import { changeKey } from './embedded-log.js';
import { SequencedLog } from './sequenced-log.js';
import { shardIdOf } from './shard.js';
import type { BatchOp, Change, ChangeRecord, ShardInfo } from './types.js';

export interface KafkaChangeLogOptions {
  client: KafkaClient;
  /** The store's database: the outbox shares its batches. */
  database: Database;
  /** The change records' topic; the stream's creation time lives in `<topic>.meta`. */
  topic: string;
  shards: number;
  replicationFactor: number;
  /** The stream retention (ms) the topic must keep at least; 0 = forever. */
  retentionMs: number;
  logger: Logger;
}

/** Records per send and per outbox read; bytes per send stay under Kafka's 1 MiB default batch limit. */
const SEND_RECORDS = 500;
const SEND_BYTES = 512 * 1024;
/** How long a read waits for this node's own pending sends before reading what Kafka has. */
const READ_WAIT_MS = 5_000;
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5_000;

function sequenceOfKey(key: Buffer): number {
  return Number(key.readBigUInt64BE(3));
}

/** The stream's creation time: the first proposal on the meta topic wins, so every node agrees. */
async function streamCreatedAt(client: KafkaClient, producer: Producer, metaTopic: string, replicationFactor: number): Promise<string> {
  await client.ensureLogTopic({ name: metaTopic, partitions: 1, replicationFactor, retentionMs: 0, retentionOf: "the stream's lifetime" });
  const first = async (): Promise<string | undefined> => {
    const [p] = await client.offsets(metaTopic);
    if (!p || p.high <= p.low) return undefined;
    const [record] = await client.fetch(metaTopic, 0, p.low);
    return record?.value?.toString('utf8');
  };
  let createdAt = await first();
  if (createdAt === undefined) {
    await client.send(producer, metaTopic, [{ partition: 0, key: 'streamCreatedAt', value: Buffer.from(new Date().toISOString()) }]);
    createdAt = await first();
  }
  if (createdAt === undefined || new Date(createdAt).toISOString() !== createdAt) {
    throw new TributaryError('Conflict', `Kafka topic ${metaTopic} does not start with the stream's creation time (found ${JSON.stringify(createdAt)})`);
  }
  return createdAt;
}

export class KafkaChangeLog extends SequencedLog {
  private readonly client: KafkaClient;
  private readonly database: Database;
  private readonly topic: string;
  private readonly logger: Logger;
  private readonly producer: Producer;
  /** Per shard: the partition's end offset as far as this writer knows = the last sequence number on Kafka. */
  private readonly published: number[];
  /** Committed records not yet handed to Kafka, in commit order. */
  private unsent: ChangeRecord[] = [];
  /** The running send loop, if any; never rejects. */
  private flushing: Promise<void> | undefined;
  /** Set when the topic no longer matches what this writer sent: writes are refused from then on. */
  private fault: TributaryError | undefined;
  private closed = false;
  private wakeSleeper: (() => void) | undefined;

  private constructor(opts: KafkaChangeLogOptions, producer: Producer, streamArn: string, lastCommitted: number[], published: number[]) {
    super(opts.shards, streamArn, lastCommitted);
    this.client = opts.client;
    this.database = opts.database;
    this.topic = opts.topic;
    this.logger = opts.logger;
    this.producer = producer;
    this.published = published;
  }

  /**
   * Creates the topics if missing (refusing a misconfigured one), then sends whatever the
   * outbox holds beyond each partition's end, so the log is whole before the first write.
   */
  static async open(opts: KafkaChangeLogOptions): Promise<KafkaChangeLog> {
    const { client, topic, shards, retentionMs } = opts;
    await client.ensureLogTopic({ name: topic, partitions: shards, replicationFactor: opts.replicationFactor, retentionMs, retentionOf: 'the stream retention' });
    const producer = await client.producer();
    try {
      const createdAt = await streamCreatedAt(client, producer, `${topic}.meta`, opts.replicationFactor);
      const ends = (await client.offsets(topic)).map((p) => p.high);
      const last: number[] = [];
      for (let shard = 0; shard < shards; shard++) {
        const keys = await opts.database.read((db) => db.keys({ gte: changeKey(shard, 0), lt: changeKey(shard + 1, 0), reverse: true, limit: 1 }).all());
        last.push(Math.max(ends[shard] ?? 0, keys[0] ? sequenceOfKey(keys[0]) : 0));
      }
      const log = new KafkaChangeLog(opts, producer, `arn:tributary:dynamodb:local:000000000000:table/telemetry/stream/${createdAt}`, last, ends);
      await log.catchUp();
      return log;
    } catch (err) {
      await client.closeProducer(producer).catch(() => undefined);
      throw err;
    }
  }

  override stage(ops: BatchOp[], changes: Change[], now: number): ChangeRecord[] {
    if (this.fault) throw this.fault;
    if (this.closed) throw new TributaryError('StoreUnavailable', 'the Kafka change log is closed');
    return super.stage(ops, changes, now);
  }

  protected persist(ops: BatchOp[], record: ChangeRecord): void {
    ops.push({ type: 'put', key: changeKey(record.shard, record.sequenceNumber), value: encodeRecord(record) });
  }

  protected override afterCommit(records: ChangeRecord[]): void {
    if (records.length === 0) return;
    for (const r of records) this.unsent.push(r);
    this.flushing ??= this.flush();
  }

  /**
   * Sends what has been committed, group-commit style: the groups committed while a send
   * is in flight go out together in the next one. After a failure, re-sends from the
   * outbox (from each partition's end) until Kafka has everything.
   */
  private async flush(): Promise<void> {
    for (let attempt = 0; this.unsent.length > 0 && !this.closed && !this.fault; ) {
      const pending = this.unsent.splice(0).filter((r) => r.sequenceNumber > (this.published[r.shard] as number));
      try {
        if (attempt === 0 && this.continuesEachShard(pending)) await this.send(pending);
        else await this.catchUp();
        attempt = 0;
      } catch (err) {
        if (err === this.fault) break;
        this.logger.warn({ err, topic: this.topic, attempt }, 'sending change records to Kafka failed; retrying from the outbox');
        await this.sleep(Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** attempt++));
        // Whatever was lost in the failed send is still in the outbox: catch up from there.
        this.unsent.unshift(...pending);
      }
    }
    this.flushing = undefined;
  }

  /** True when each shard's records follow on from what Kafka already has. */
  private continuesEachShard(records: readonly ChangeRecord[]): boolean {
    const next = [...this.published];
    for (const r of records) {
      if (r.sequenceNumber !== (next[r.shard] as number) + 1) return false;
      next[r.shard] = r.sequenceNumber;
    }
    return true;
  }

  /** Re-reads each partition's end and sends the outbox entries beyond it, in order. */
  private async catchUp(): Promise<void> {
    const ends = await this.client.offsets(this.topic);
    for (let shard = 0; shard < this.shardCount; shard++) {
      const end = ends[shard]?.high ?? 0;
      if (end > (this.committed[shard] as number)) {
        this.fail(`partition ${shard} of ${this.topic} ends at offset ${end}, beyond the ${this.committed[shard]} records this node committed: another node writes to it`);
      }
      this.published[shard] = end;
      while ((this.published[shard] as number) < (this.committed[shard] as number)) {
        const from = (this.published[shard] as number) + 1;
        const entries = await this.database.read((db) => db.iterator({ gte: changeKey(shard, from), lte: changeKey(shard, this.committed[shard] as number), limit: SEND_RECORDS }).all());
        const first = entries[0] ? sequenceOfKey(entries[0][0]) : undefined;
        if (first !== from) {
          this.fail(`the outbox of shard ${shard} lacks record ${from} (first found: ${first ?? 'none'}), which ${this.topic} has never received`);
        }
        await this.send(entries.map(([key, value]) => decodeRecord(shard, sequenceOfKey(key), value)));
      }
    }
  }

  /** Sends records that continue their shards, checking that Kafka put each where its sequence number says. */
  private async send(records: readonly ChangeRecord[]): Promise<void> {
    for (let start = 0; start < records.length; ) {
      const chunk: OutgoingRecord[] = [];
      const count = new Map<number, number>();
      let bytes = 0;
      for (; start < records.length && chunk.length < SEND_RECORDS && (chunk.length === 0 || bytes < SEND_BYTES); start++) {
        const r = records[start] as ChangeRecord;
        const value = encodeRecord(r);
        bytes += value.length;
        chunk.push({ partition: r.shard, key: r.deviceId, value });
        count.set(r.shard, (count.get(r.shard) ?? 0) + 1);
      }
      const bases = await this.client.send(this.producer, this.topic, chunk);
      for (const [shard, n] of count) {
        const expected = this.published[shard] as number;
        const base = bases.get(shard);
        if (base !== expected) {
          this.fail(`Kafka put records of shard ${shard} at offset ${base}, not at ${expected} where this node's numbering continues: another node writes to ${this.topic}`);
        }
        this.published[shard] = expected + n;
      }
    }
  }

  private fail(message: string): never {
    this.fault = new TributaryError('StoreUnavailable', `change log on Kafka: ${message}; writes are refused until the node restarts`);
    this.logger.error({ topic: this.topic }, this.fault.message);
    throw this.fault;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wakeSleeper = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** Waits (bounded) until this node's committed records are on Kafka, so it reads its own writes. */
  private async settled(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.flushing, new Promise<void>((resolve) => (timer = setTimeout(resolve, READ_WAIT_MS)))]);
    clearTimeout(timer);
  }

  async read(shard: number, after: number, limit: number): Promise<ChangeRecord[]> {
    if (limit <= 0) return [];
    await this.settled();
    const out: ChangeRecord[] = [];
    // Sequence number s lives at offset s - 1: reading after `after` starts at offset `after`.
    let offset = after;
    let rewound = false;
    while (out.length < limit) {
      let batch;
      try {
        batch = await this.client.fetch(this.topic, shard, offset);
      } catch (err) {
        if (!(err instanceof OffsetOutOfRange) || rewound) throw err;
        // Below the log start (trimmed) moves up to it; past the end is simply the end.
        const low = (await this.client.offsets(this.topic))[shard]?.low ?? 0;
        if (offset >= low) break;
        offset = low;
        rewound = true;
        continue;
      }
      if (batch.length === 0) break;
      for (const m of batch) {
        if (out.length >= limit) break;
        if (m.value) out.push(decodeRecord(shard, m.offset + 1, m.value));
      }
      offset = (batch[batch.length - 1]?.offset ?? offset) + 1;
    }
    return out;
  }

  /** From Kafka's offsets, so any node reports the same. */
  override async shards(): Promise<ShardInfo[]> {
    await this.settled();
    const offsets = await this.client.offsets(this.topic);
    return offsets.map(({ partition, low, high }) => ({
      shardId: shardIdOf(partition),
      shard: partition,
      firstSequenceNumber: high > low ? low + 1 : null,
      lastSequenceNumber: high > 0 ? high : null,
    }));
  }

  protected async firstSequenceNumber(shard: number): Promise<number | null> {
    const p = (await this.client.offsets(this.topic))[shard];
    return p && p.high > p.low ? p.low + 1 : null;
  }

  protected async removeRange(shard: number, first: number, cut: number): Promise<number> {
    await this.client.deleteRecordsBefore(this.topic, shard, cut - 1);
    return cut - first;
  }

  /** Trims Kafka as the embedded log trims LevelDB, then drops outbox entries Kafka already has. */
  override async trim(olderThanMs: number): Promise<number> {
    await this.settled();
    const removed = await super.trim(olderThanMs);
    for (let shard = 0; shard < this.shardCount; shard++) {
      const upTo = this.published[shard] as number;
      if (upTo > 0) await this.database.clear({ gte: changeKey(shard, 0), lte: changeKey(shard, upTo) });
    }
    return removed;
  }

  /** Stops sending (unsent records stay in the outbox for the next open) and disconnects the producer. */
  async close(): Promise<void> {
    await this.settled();
    this.closed = true;
    this.wakeSleeper?.();
    await this.flushing;
    await this.client.closeProducer(this.producer);
  }
}

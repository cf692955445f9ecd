/**
 * The change log on Apache Kafka (ADR 0002): shard `p` is partition `p` of the changes
 * topic, and a record's sequence number is its Kafka offset + 1.
 *
 * That numbering is gap-free like the embedded log's because a shard has one writer at a
 * time, which sends with an idempotent producer (retries never duplicate), uses no
 * transactions (no control records take offsets) and refuses a compacted topic. Every
 * acknowledgement is checked against the offset it expected.
 *
 * Durability goes through the store's batch, as in embedded mode: `stage` puts each record
 * under `C` (an outbox) in the same synced LevelDB batch as the data; `commit` sends it to
 * Kafka. Entries already on Kafka are dropped by `trim`.
 *
 * Which shards this log writes (`owned`):
 * - `'all'` (one node, tests): every shard, from open. A record is on the topic iff its
 *   offset is below the partition's end, so at open and after a failed send the log sends
 *   exactly the outbox entries beyond the end — nothing lost, nothing twice. An
 *   acknowledgement at an unexpected offset means another writer: the log stops taking
 *   writes rather than hand out wrong numbers.
 * - `'none'` (cluster mode): no shard at open; the owner of telemetry partition `p` calls
 *   `acquire(p)` and `release(p)`. Here records carry `source` (the telemetry offset they
 *   were materialized from), which rises along a partition, and sources decide what Kafka
 *   has. `acquire` reads the partition's end E and the last source S on it, drops the
 *   outbox entries with source <= S (on Kafka already), renumbers the rest from E + 1 in
 *   one LevelDB batch and sends them; numbering goes on after them. An entry without a
 *   source (retention, device deletion) counts as on Kafka when the sourced entry before
 *   it does and its number is within E. `stage` refuses a shard this node does not own
 *   (`StoreUnavailable`) and silently drops changes with source <= the shard's last
 *   source (a rebuilt or re-applied write), returning only the records it staged.
 *   `release` refuses further writes, waits (bounded) until the shard's records are on
 *   Kafka, then forgets the shard; what could not be sent stays in the outbox for the next
 *   `acquire`. An acknowledgement at an unexpected offset (another writer got in during a
 *   rebalance) and any failed send lead to the shard being acquired again, so records are
 *   re-sent by source: only what is missing. Records sent at offsets other than their
 *   sequence numbers in such a race keep the numbers listeners were told.
 *   A send never splits one source's records of a shard, so a write's records reach the
 *   topic together or not at all.
 */
import { DEFAULT_AWS_LOCATION, streamArnOf, streamLabelOf, type AwsLocation } from '../core/arn.js';
import { TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Database } from '../store/database.js';
import { OffsetOutOfRange, type KafkaClient, type OutgoingRecord } from '../cluster/kafka-client.js';
import { randomUUID } from 'node:crypto';
import type { Consumer, Producer } from 'kafkajs';
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
  /**
   * Which shards this log writes: `'all'` (default) every shard from open; `'none'` none
   * until handed over with {@link KafkaChangeLog.acquire} (cluster mode).
   */
  owned?: 'all' | 'none';
  /** The region and account of the stream's ARN (default: us-east-1, 000000000000). */
  aws?: AwsLocation;
}

/** Records per send and per outbox read; bytes per send stay under Kafka's 1 MiB default batch limit. */
const SEND_RECORDS = 500;
const SEND_BYTES = 512 * 1024;
/** How long a read waits for this node's own pending sends before reading what Kafka has. */
const READ_WAIT_MS = 5_000;
/** How long the follower of other nodes' records outlives its last holder (tails come and go). */
const FOLLOW_IDLE_MS = 30_000;
/** The follower's group has one member; a short session lets Kafka forget it soon after a crash. */
const FOLLOW_SESSION_MS = 10_000;
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5_000;
/** How long acquire and release wait for a shard's records to reach Kafka; the outbox keeps what is left. */
const HANDOVER_WAIT_MS = 5_000;
/** How far back from a partition's end acquire looks for a record with a source (past retention or deletion records). */
const TAIL_SCAN_RECORDS = 4_096;

/**
 * A shard this log writes: `owned` takes writes; `renumbering` is being (re)acquired and
 * `releasing` handed over — both refuse writes. Undefined: another node's shard.
 */
type Ownership = 'owned' | 'renumbering' | 'releasing';
const NOT_WRITING: Record<Exclude<Ownership, 'owned'> | 'none', string> = {
  none: 'does not write',
  renumbering: 'is taking over',
  releasing: 'is handing over',
};

function closedError(): TributaryError {
  return new TributaryError('StoreUnavailable', 'the Kafka change log is closed');
}

/** Lets callers wait for the next time something happens. */
class Signal {
  private waiters: Array<() => void> = [];
  next(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  notify(): void {
    for (const wake of this.waiters.splice(0)) wake();
  }
}

/** Resolves once `p` settles or `ms` have passed, whichever comes first; never rejects. */
async function within(p: Promise<unknown> | undefined, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p?.catch(() => undefined), new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

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
  /** `owned: 'none'`: shards are handed over, and sources decide what Kafka has. */
  private readonly shared: boolean;
  /** Per shard: whether and how this log writes it; undefined = another node's shard. */
  private readonly ownership: Array<Ownership | undefined>;
  /** Per shard: the partition's end offset as far as this writer knows = the last sequence number on Kafka. */
  private readonly published: number[];
  /** Per shard: the highest source on Kafka or committed here (-1: none); changes at or below it are dropped. */
  private readonly lastSource: number[];
  /** Committed records not yet handed to Kafka, in commit order. */
  private unsent: ChangeRecord[] = [];
  /** Shards to acquire again before more is sent (`owned: 'none'`): another writer got in, or a send failed. */
  private readonly stale = new Set<number>();
  /** A send failed: what is not on Kafka is resent from the outbox. */
  private recovering = false;
  /** The running send loop, if any; never rejects. */
  private flushing: Promise<void> | undefined;
  /** Sends and shard takeovers run one at a time, in this chain. */
  private lane: Promise<unknown> = Promise.resolve();
  /** Fires when a staged batch commits or aborts. */
  private readonly settledBatch = new Signal();
  /** Fires after each round of the send loop. */
  private readonly sendRound = new Signal();
  /** Set when the topic no longer matches what this writer sent (`owned: 'all'`): writes are refused from then on. */
  private fault: TributaryError | undefined;
  private closed = false;
  /** Holders of {@link followOthers}, the consumer that follows, and the timer that stops it once idle. */
  private followers = 0;
  private following: Promise<Consumer | undefined> | undefined;
  private followIdle: NodeJS.Timeout | undefined;
  private wakeSleeper: (() => void) | undefined;

  private constructor(opts: KafkaChangeLogOptions, producer: Producer, streamArn: string, lastCommitted: number[], published: number[]) {
    super(opts.shards, streamArn, lastCommitted);
    this.client = opts.client;
    this.database = opts.database;
    this.topic = opts.topic;
    this.logger = opts.logger;
    this.producer = producer;
    this.shared = opts.owned === 'none';
    this.ownership = new Array<Ownership | undefined>(opts.shards).fill(this.shared ? undefined : 'owned');
    this.published = published;
    this.lastSource = new Array<number>(opts.shards).fill(-1);
  }

  /**
   * Creates the topics if missing (refusing a misconfigured one). Owning every shard, it
   * then sends whatever the outbox holds beyond each partition's end, so the log is whole
   * before the first write; owning none, it leaves that to each shard's `acquire`.
   */
  static async open(opts: KafkaChangeLogOptions): Promise<KafkaChangeLog> {
    const { client, topic, shards, retentionMs } = opts;
    await client.ensureLogTopic({ name: topic, partitions: shards, replicationFactor: opts.replicationFactor, retentionMs, retentionOf: 'the stream retention' });
    const producer = await client.producer();
    try {
      const createdAt = await streamCreatedAt(client, producer, `${topic}.meta`, opts.replicationFactor);
      const streamArn = streamArnOf(opts.aws ?? DEFAULT_AWS_LOCATION, streamLabelOf(createdAt));
      if (opts.owned === 'none') return new KafkaChangeLog(opts, producer, streamArn, new Array<number>(shards).fill(0), new Array<number>(shards).fill(0));
      const ends = (await client.offsets(topic)).map((p) => p.high);
      const last: number[] = [];
      for (let shard = 0; shard < shards; shard++) {
        const keys = await opts.database.read((db) => db.keys({ gte: changeKey(shard, 0), lt: changeKey(shard + 1, 0), reverse: true, limit: 1 }).all());
        last.push(Math.max(ends[shard] ?? 0, keys[0] ? sequenceOfKey(keys[0]) : 0));
      }
      const log = new KafkaChangeLog(opts, producer, streamArn, last, ends);
      await log.catchUp();
      return log;
    } catch (err) {
      await client.closeProducer(producer).catch(() => undefined);
      throw err;
    }
  }

  /** True when `stage` takes changes of the shard now. */
  owns(shard: number): boolean {
    return this.ownership[shard] === 'owned';
  }

  ownedShards(): number[] {
    const out: number[] = [];
    for (let shard = 0; shard < this.shardCount; shard++) if (this.owns(shard)) out.push(shard);
    return out;
  }

  /**
   * Makes this node the shard's writer (`owned: 'none'`): takes over from what Kafka has
   * (see the file comment), then waits (bounded) until the records this node had left in
   * its outbox are on Kafka. Rejects, not owning the shard, when Kafka cannot be read.
   */
  async acquire(shard: number): Promise<void> {
    this.checkHandover(shard);
    await this.serially(async () => {
      const state = this.ownership[shard];
      // Handed back before a release finished: still the writer, numbering intact.
      if (state === 'releasing') this.ownership[shard] = 'owned';
      else if (state === undefined) await this.takeOver(shard);
    });
    this.kick();
    await this.sentOut(shard);
  }

  /**
   * Stops being the shard's writer (`owned: 'none'`): refuses further changes of it, waits
   * for its staged batch and then (bounded) for its records to reach Kafka, and forgets
   * it. Records Kafka could not take stay in the outbox; the next `acquire` sends them.
   */
  async release(shard: number): Promise<void> {
    this.checkHandover(shard);
    await this.serially(async () => {
      if (this.ownership[shard] !== undefined) this.ownership[shard] = 'releasing';
    });
    if (this.ownership[shard] === undefined) return;
    await this.batchSettled(shard);
    await this.sentOut(shard);
    await this.serially(async () => {
      // An acquire in between made it ours again.
      if (this.ownership[shard] !== 'releasing') return;
      this.ownership[shard] = undefined;
      // Another node's shard from now on: readers ask Kafka for its end, and trim skips it (nothing committed here).
      this.next[shard] = 0;
      this.committed[shard] = 0;
      this.lastSource[shard] = -1;
      this.stale.delete(shard);
      this.unsent = this.unsent.filter((r) => r.shard !== shard);
    });
  }

  private checkHandover(shard: number): void {
    if (!this.shared) throw new TributaryError('Conflict', `change log on Kafka: this log writes every shard of ${this.topic} (owned: 'all'); shards are handed over only with owned: 'none'`);
    if (this.closed) throw closedError();
    if (!Number.isInteger(shard) || shard < 0 || shard >= this.shardCount) {
      throw new TributaryError('InvalidParameter', `shard must be an integer in [0, ${this.shardCount - 1}] (got ${shard})`, { field: 'shard' });
    }
  }

  override stage(ops: BatchOp[], changes: Change[], now: number): ChangeRecord[] {
    if (this.fault) throw this.fault;
    if (this.closed) throw closedError();
    if (!this.shared) return super.stage(ops, changes, now);
    const fresh: Change[] = [];
    for (const change of changes) {
      const shard = this.shardOf(change.deviceId);
      const state = this.ownership[shard];
      if (state !== 'owned') throw new TributaryError('StoreUnavailable', `change log on Kafka: this node ${NOT_WRITING[state ?? 'none']} shard ${shard} of ${this.topic}`);
      // Its record is on the topic already (a rebuilt or re-applied write): not twice.
      if (change.source !== undefined && change.source <= (this.lastSource[shard] as number)) continue;
      fresh.push(change);
    }
    return super.stage(ops, fresh, now);
  }

  protected persist(ops: BatchOp[], record: ChangeRecord): void {
    ops.push({ type: 'put', key: changeKey(record.shard, record.sequenceNumber), value: encodeRecord(record) });
  }

  protected override afterCommit(records: ChangeRecord[]): void {
    for (const r of records) {
      this.unsent.push(r);
      if (r.source !== undefined && r.source > (this.lastSource[r.shard] as number)) this.lastSource[r.shard] = r.source;
    }
    this.settledBatch.notify();
    this.kick();
  }

  override abort(records: ChangeRecord[]): void {
    super.abort(records);
    this.settledBatch.notify();
  }

  /** Waits until no batch with records of the shard is between stage and commit/abort (the store has one in flight at most). */
  private async batchSettled(shard: number): Promise<void> {
    while ((this.next[shard] as number) > (this.committed[shard] as number)) {
      // A batch staged and never settled before close (a test's stand-in for a crash) must not hold close up.
      if (this.closed) throw closedError();
      await this.settledBatch.next();
    }
  }

  /** Runs `fn` after every send round and takeover queued before it. */
  private serially<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.lane.then(fn);
    this.lane = run.catch(() => undefined);
    return run;
  }

  private hasWork(): boolean {
    return this.unsent.length > 0 || this.stale.size > 0 || this.recovering;
  }

  /** Starts the send loop unless it runs or has nothing to do (it would end before `flushing` is set). */
  private kick(): void {
    if (this.flushing === undefined && this.hasWork()) this.flushing = this.flush();
  }

  /**
   * Sends what has been committed, group-commit style: the groups committed while a send
   * is in flight go out together in the next one. After a failure, re-sends from the
   * outbox until Kafka has everything.
   */
  private async flush(): Promise<void> {
    for (let attempt = 0; this.hasWork() && !this.closed && !this.fault; ) {
      try {
        await this.serially(() => this.sendRoundOnce());
        attempt = 0;
      } catch (err) {
        if (err === this.fault) break;
        this.recovering = true;
        this.logger.warn({ err, topic: this.topic, attempt }, 'sending change records to Kafka failed; retrying from the outbox');
        await this.sleep(Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** attempt++));
      }
      this.sendRound.notify();
    }
    this.flushing = undefined;
    this.sendRound.notify();
  }

  /** Sends the unsent records when they follow on from what Kafka has; otherwise sends from the outbox. */
  private async sendRoundOnce(): Promise<void> {
    const pending = this.unsent.splice(0).filter((r) => this.ownership[r.shard] !== undefined && r.sequenceNumber > (this.published[r.shard] as number));
    if (!this.recovering && this.stale.size === 0 && this.continuesEachShard(pending)) {
      await this.send(pending);
      return;
    }
    if (this.shared) {
      // Every shard with records not on Kafka is acquired again: its outbox is resent by source.
      for (let shard = 0; shard < this.shardCount; shard++) {
        if (this.ownership[shard] !== undefined && (this.committed[shard] as number) > (this.published[shard] as number)) this.stale.add(shard);
      }
      for (const shard of this.stale) {
        await this.takeOver(shard);
        this.stale.delete(shard);
      }
    } else {
      await this.catchUp();
    }
    this.recovering = false;
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

  /** `owned: 'all'`: re-reads each partition's end and sends the outbox entries beyond it, in order. */
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

  /**
   * `owned: 'none'`: becomes (again) the shard's writer from what Kafka has. Reads the
   * partition's end E and last source S; then, with the shard's writes held and its staged
   * batch settled, replaces its outbox in one LevelDB batch by the entries Kafka lacks,
   * numbered from E + 1, and queues them for sending. Runs in the lane.
   */
  private async takeOver(shard: number): Promise<void> {
    const offsets = (await this.client.offsets(this.topic))[shard];
    const end = offsets?.high ?? 0;
    const onKafkaUpTo = await this.lastSourceOnKafka(shard, offsets?.low ?? 0, end);
    const was = this.ownership[shard];
    this.ownership[shard] = 'renumbering';
    try {
      await this.batchSettled(shard);
      const entries = await this.database.read((db) => db.iterator({ gte: changeKey(shard, 0), lt: changeKey(shard + 1, 0) }).all());
      // Deletes first: an entry that keeps its number is deleted and put again.
      const dels: BatchOp[] = [];
      const puts: BatchOp[] = [];
      const backlog: ChangeRecord[] = [];
      let newest = onKafkaUpTo;
      // The source of the last entry that had one: an entry without a source goes with it.
      let before = -1;
      for (const [key, value] of entries) {
        dels.push({ type: 'del', key });
        const r = decodeRecord(shard, sequenceOfKey(key), value);
        const onKafka = r.source !== undefined ? r.source <= onKafkaUpTo : before <= onKafkaUpTo && r.sequenceNumber <= end;
        if (r.source !== undefined) before = r.source;
        if (onKafka) continue;
        r.sequenceNumber = end + backlog.length + 1;
        puts.push({ type: 'put', key: changeKey(shard, r.sequenceNumber), value });
        backlog.push(r);
        if (r.source !== undefined) newest = Math.max(newest, r.source);
      }
      await this.database.commit([...dels, ...puts]);
      this.unsent = this.unsent.filter((r) => r.shard !== shard).concat(backlog);
      this.published[shard] = end;
      this.committed[shard] = end + backlog.length;
      this.next[shard] = end + backlog.length;
      this.lastSource[shard] = newest;
      this.ownership[shard] = was === 'releasing' ? 'releasing' : 'owned';
      this.logger.info({ topic: this.topic, shard, end, lastSource: onKafkaUpTo, resent: backlog.length, dropped: entries.length - backlog.length }, 'writing shard of the change log');
    } catch (err) {
      this.ownership[shard] = was;
      throw err;
    }
  }

  /**
   * The source of the partition's last record that has one, -1 when none of its last
   * {@link TAIL_SCAN_RECORDS} records has (retention and deletion records carry none).
   */
  private async lastSourceOnKafka(shard: number, low: number, end: number): Promise<number> {
    for (let span = 1; ; span *= 64) {
      const from = Math.max(low, end - span);
      const tail = await this.fetchRecords(shard, from, end - from);
      for (let i = tail.length - 1; i >= 0; i--) {
        const source = (tail[i] as ChangeRecord).source;
        if (source !== undefined) return source;
      }
      if (from === low || span >= TAIL_SCAN_RECORDS) return -1;
    }
  }

  /**
   * Sends records that continue their shards, checking that Kafka put each where its
   * sequence number says. Records of a shard to be acquired again are left to that.
   */
  private async send(records: readonly ChangeRecord[]): Promise<void> {
    for (let start = 0; start < records.length; ) {
      const chunk: OutgoingRecord[] = [];
      const count = new Map<number, number>();
      let bytes = 0;
      let last: ChangeRecord | undefined;
      for (; start < records.length; start++) {
        const r = records[start] as ChangeRecord;
        if (this.stale.has(r.shard)) continue;
        const full = chunk.length >= SEND_RECORDS || bytes >= SEND_BYTES;
        // One write's records go together, so after a failure its source says whether Kafka has them.
        if (full && !(r.source !== undefined && r.source === last?.source && r.shard === last.shard)) break;
        const value = encodeRecord(r);
        bytes += value.length;
        chunk.push({ partition: r.shard, key: r.deviceId, value });
        count.set(r.shard, (count.get(r.shard) ?? 0) + 1);
        last = r;
      }
      if (chunk.length === 0) return;
      const bases = await this.client.send(this.producer, this.topic, chunk);
      for (const [shard, n] of count) {
        const expected = this.published[shard] as number;
        const base = bases.get(shard);
        if (base === expected) {
          this.published[shard] = expected + n;
          continue;
        }
        const message = `Kafka put records of shard ${shard} at offset ${base}, not at ${expected} where this node's numbering continues: another node writes to ${this.topic}`;
        if (!this.shared) this.fail(message);
        this.logger.warn({ topic: this.topic, shard }, `change log on Kafka: ${message}; acquiring the shard again`);
        this.stale.add(shard);
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
  private settled(): Promise<void> {
    return within(this.flushing, READ_WAIT_MS);
  }

  /** Waits, at most {@link HANDOVER_WAIT_MS}, until what this node committed for the shard is on Kafka. */
  private async sentOut(shard: number): Promise<void> {
    const deadline = Date.now() + HANDOVER_WAIT_MS;
    while ((this.published[shard] as number) < (this.committed[shard] as number) && this.flushing !== undefined && Date.now() < deadline) {
      await within(this.sendRound.next(), deadline - Date.now());
    }
  }

  async read(shard: number, after: number, limit: number): Promise<ChangeRecord[]> {
    if (limit <= 0) return [];
    await this.settled();
    return this.fetchRecords(shard, after, limit);
  }

  /** Up to `limit` records of what Kafka has of the shard, from sequence number `after` + 1 (offset `after`) on. */
  private async fetchRecords(shard: number, after: number, limit: number): Promise<ChangeRecord[]> {
    const out: ChangeRecord[] = [];
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

  /** A shard this node writes ends at its last committed record; another node's, where Kafka ends. */
  protected override async lastSequenceNumber(shard: number): Promise<number> {
    if (this.ownership[shard] !== undefined) return this.committed[shard] as number;
    return (await this.client.offsets(this.topic))[shard]?.high ?? 0;
  }

  protected async removeRange(shard: number, first: number, cut: number): Promise<number> {
    await this.client.deleteRecordsBefore(this.topic, shard, cut - 1);
    return cut - first;
  }

  /**
   * Trims Kafka as the embedded log trims LevelDB — the shards this node writes (another
   * node's have `committed` 0, which the base skips) — then drops the outbox entries Kafka
   * already has of those shards. Another node's shard keeps its entries for the next acquire.
   */
  override async trim(olderThanMs: number): Promise<number> {
    await this.settled();
    const removed = await super.trim(olderThanMs);
    await this.serially(async () => {
      for (let shard = 0; shard < this.shardCount; shard++) {
        const upTo = this.published[shard] as number;
        if (this.ownership[shard] !== undefined && upTo > 0) await this.database.clear({ gte: changeKey(shard, 0), lte: changeKey(shard, upTo) });
      }
    });
    return removed;
  }

  /** Stops sending (unsent records stay in the outbox for the next open or acquire) and disconnects the producer. */
  /**
   * While held, the commit listeners also hear of the records other nodes commit (the
   * shards this node does not own), so a live tail or a long poll on any node sees every
   * device. A consumer of the changes topic in a group of its own (no committed offsets,
   * so Kafka forgets the group when it stops), started on first use and stopped a while
   * after the last holder let go. Returns the release.
   */
  followOthers(): () => void {
    this.followers++;
    clearTimeout(this.followIdle);
    this.following ??= this.startFollowing();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.followers > 0) return;
      this.followIdle = setTimeout(() => void this.stopFollowing(), FOLLOW_IDLE_MS);
      this.followIdle.unref();
    };
  }

  private async startFollowing(): Promise<Consumer | undefined> {
    const consumer = this.client.consumer(`${this.topic}.follow.${randomUUID()}`, { sessionTimeoutMs: FOLLOW_SESSION_MS });
    try {
      await consumer.connect();
      await consumer.subscribe({ topics: [this.topic], fromBeginning: false });
      await consumer.run({
        eachBatch: async ({ batch }) => {
          // Records of owned shards reached the listeners at commit already.
          if (this.owns(batch.partition)) return;
          this.notify(batch.messages.filter((m) => m.value !== null).map((m) => decodeRecord(batch.partition, Number(m.offset) + 1, m.value as Buffer)));
        },
      });
      return consumer;
    } catch (err) {
      this.logger.warn({ err, topic: this.topic }, "following other nodes' change records failed; live tails show this node's records only");
      this.following = undefined;
      await consumer.disconnect().catch(() => undefined);
      return undefined;
    }
  }

  private async stopFollowing(): Promise<void> {
    const following = this.following;
    this.following = undefined;
    await (await following)?.disconnect().catch(() => undefined);
  }

  async close(): Promise<void> {
    clearTimeout(this.followIdle);
    await this.stopFollowing();
    await this.settled();
    this.closed = true;
    this.wakeSleeper?.();
    this.settledBatch.notify();
    await this.flushing;
    await this.lane;
    await this.client.closeProducer(this.producer);
  }
}

/**
 * A store node's side of the telemetry topic (ADR 0002): consumes it in a consumer group
 * and hands each partition's records to `apply`, which writes them and the partition's
 * next offset in one atomic batch. The store's own offset — not the group's committed
 * offset — decides where each partition resumes, so a restart, a crash between the batch
 * and the group commit, or a rebalance neither applies a record twice nor skips one. A
 * partition the store has never applied starts at the topic's first record (a rebuild).
 */
import type { Consumer, EachBatchPayload } from 'kafkajs';
import type { Logger } from '../core/logger.js';
import type { KafkaClient } from './kafka-client.js';
import { decodeTelemetry, type TelemetryMessage } from './telemetry-topic.js';

export interface AppliedRecord {
  offset: number;
  message: TelemetryMessage;
}

export interface ApplyBatch {
  topic: string;
  partition: number;
  /** Consecutive records of the partition, in offset order, none applied before. */
  records: AppliedRecord[];
  /** Record it (`consumerOffsetOp`) in the same batch as the data. */
  nextOffset: number;
}

export interface StoreConsumerOptions {
  client: KafkaClient;
  topic: string;
  groupId: string;
  /** The store's next offset for the partition (`readConsumerOffset`); undefined when it has applied none. */
  position: (partition: number) => Promise<number | undefined>;
  apply: (batch: ApplyBatch) => Promise<void>;
  /** How long a dead member keeps its partitions before the group moves them. */
  sessionTimeoutMs?: number;
  /** Shown to every node in the group's description (the node's HTTP address, for query routing). */
  userData?: Buffer;
  /**
   * Called with each new assignment before any record of it is applied (ownership of the
   * partitions' change-log shards moves here); batches wait for it.
   */
  onAssignment?: (partitions: readonly number[]) => Promise<void>;
  logger: Logger;
}

export class StoreConsumer {
  private readonly next = new Map<number, number>();
  /** Per assigned partition: its end when it was assigned; queries wait until the store has applied that far. */
  private readonly target = new Map<number, number>();
  private assignment: readonly number[] = [];
  private assigned: Promise<void> = Promise.resolve();

  private constructor(
    private readonly opts: StoreConsumerOptions,
    private readonly consumer: Consumer,
  ) {}

  static async start(opts: StoreConsumerOptions): Promise<StoreConsumer> {
    const consumer = opts.client.consumer(opts.groupId, {
      ...(opts.sessionTimeoutMs === undefined ? {} : { sessionTimeoutMs: opts.sessionTimeoutMs }),
      ...(opts.userData === undefined ? {} : { userData: opts.userData }),
    });
    const self = new StoreConsumer(opts, consumer);
    consumer.on(consumer.events.GROUP_JOIN, (e) => {
      const partitions = [...(e.payload.memberAssignment[opts.topic] ?? [])].sort((a, b) => a - b);
      self.assignment = partitions;
      self.target.clear();
      opts.logger.info({ topic: opts.topic, partitions }, 'telemetry partitions assigned');
      const previous = self.assigned;
      self.assigned = (async () => {
        await previous;
        await opts.onAssignment?.(partitions);
        const ends = await opts.client.offsets(opts.topic);
        // Only if the assignment is still current: a later one has its own targets.
        if (self.assignment === partitions) for (const p of partitions) self.target.set(p, ends.find((o) => o.partition === p)?.high ?? 0);
      })().catch((err: unknown) => opts.logger.error({ err, topic: opts.topic, partitions }, 'taking over the assigned partitions failed'));
      // The fetch would start at the group's offset; with nothing new there no batch would
      // ever come to correct it, so go to the store's own position at once.
      for (const partition of self.assignment) {
        // Best effort: the seek throws once the consumer stopped or is rejoining (kafkajs
        // drops its group meanwhile); the next batch corrects the position either way.
        self
          .nextOffset(partition)
          .then((offset) => consumer.seek({ topic: opts.topic, partition, offset: String(offset) }))
          .catch((err: unknown) => opts.logger.warn({ err, topic: opts.topic, partition }, "could not move to the store's offset at once; the next batch corrects the position"));
      }
    });
    await consumer.connect();
    await consumer.subscribe({ topics: [opts.topic], fromBeginning: true });
    await consumer.run({ autoCommit: false, eachBatchAutoResolve: false, eachBatch: (payload) => self.onBatch(payload) });
    return self;
  }

  /** The partitions this node owns (its latest group assignment). */
  get partitions(): readonly number[] {
    return this.assignment;
  }

  /**
   * Whether the store answers for `partition` now: it is assigned here and the store has
   * applied every record the partition held when it was assigned (a new owner rebuilding
   * or catching up is not yet).
   */
  caughtUp(partition: number): boolean {
    const target = this.target.get(partition);
    if (target === undefined) return false;
    const next = this.next.get(partition);
    return target === 0 || (next !== undefined && next >= target);
  }

  private async nextOffset(partition: number): Promise<number> {
    let next = this.next.get(partition);
    if (next === undefined) {
      next = (await this.opts.position(partition)) ?? (await this.lowWatermark(partition));
      this.next.set(partition, next);
    }
    return next;
  }

  private async lowWatermark(partition: number): Promise<number> {
    return (await this.opts.client.offsets(this.opts.topic)).find((p) => p.partition === partition)?.low ?? 0;
  }

  private async onBatch({ batch, resolveOffset, heartbeat, isRunning, isStale }: EachBatchPayload): Promise<void> {
    const { topic, logger } = this.opts;
    const { partition } = batch;
    if (!isRunning() || isStale()) return;
    await this.assigned;
    const next = await this.nextOffset(partition);
    // Records below the store's offset are applied already (the group offset is only a hint).
    const fresh = batch.messages.filter((m) => Number(m.offset) >= next && m.value !== null);
    const firstFresh = fresh[0];
    if (firstFresh === undefined) return;
    if (Number(firstFresh.offset) > next) {
      // The fetch began past the store's position (the group offset of another owner, or
      // none): go back to it, unless retention has deleted those records already.
      const low = await this.lowWatermark(partition);
      if (low <= next) {
        this.consumer.seek({ topic, partition, offset: String(next) });
        return;
      }
      logger.error({ topic, partition, from: next, to: low - 1 }, "the topic's retention deleted records this store never applied; they are lost to it");
    }
    const records = fresh.map((m) => ({ offset: Number(m.offset), message: decodeTelemetry(m.value as Buffer) }));
    const nextOffset = (records[records.length - 1] as AppliedRecord).offset + 1;
    await this.opts.apply({ topic, partition, records, nextOffset });
    this.next.set(partition, nextOffset);
    resolveOffset(String(nextOffset - 1));
    // Where a member without this store's state would start; never trusted over the store's own offset.
    await this.consumer.commitOffsets([{ topic, partition, offset: String(nextOffset) }]).catch((err: unknown) => logger.warn({ err, topic, partition }, 'committing the group offset failed'));
    await heartbeat();
  }

  /** Leaves the group (its partitions move to the other members) and disconnects. */
  async stop(): Promise<void> {
    await this.consumer.disconnect();
  }
}

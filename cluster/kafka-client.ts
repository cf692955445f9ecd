/**
 * The one place that talks to kafkajs (ADR 0002): topics, offsets, an idempotent
 * producer, and random-access fetches. kafkajs is in maintenance mode upstream; keeping
 * it behind this adapter means a switch of client (e.g. @platformatic/kafka) changes this
 * file only.
 */
import kafkajs, { type Admin, type Consumer, type LogEntry, type Producer } from 'kafkajs';
import { TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';

// kafkajs is CommonJS; Node's ESM loader does not see all of its named exports.
const { ConfigResourceTypes, Kafka, logLevel, Partitioners } = kafkajs;

export interface KafkaClientOptions {
  /** `host:port` bootstrap addresses. */
  brokers: readonly string[];
  clientId: string;
  /** kafkajs' own log lines go here; without one they are dropped. */
  logger?: Logger;
}

export interface TopicSpec {
  name: string;
  partitions: number;
  replicationFactor: number;
  /** Topic configs set when the topic is created, e.g. `cleanup.policy`, `retention.ms`. */
  configs: Record<string, string>;
}

/** What a topic looks like on the cluster, created just now or found. */
export interface TopicState {
  created: boolean;
  partitions: number;
  /** The values of the spec's config names as the cluster reports them. */
  configs: Record<string, string | undefined>;
}

/** A topic that is a log: records deleted only by age, never compacted. */
export interface LogTopicSpec {
  name: string;
  partitions: number;
  replicationFactor: number;
  /** How long its records must be kept (ms); 0 = forever. */
  retentionMs: number;
  /** What needs that retention, for the refusal message, e.g. `the stream retention`. */
  retentionOf: string;
}

export interface PartitionOffsets {
  partition: number;
  /** Log start offset: the first retained record. */
  low: number;
  /** High watermark: one past the last record every in-sync replica has. */
  high: number;
}

export interface FetchedRecord {
  offset: number;
  key: Buffer | null;
  value: Buffer | null;
}

export interface OutgoingRecord {
  partition: number;
  key: string;
  value: Buffer;
}

/** Thrown by {@link KafkaClient.fetch} when the offset is below the log start (trimmed) or past the end. */
export class OffsetOutOfRange extends Error {
  constructor(topic: string, partition: number, offset: number) {
    super(`offset ${offset} is out of range on ${topic}/${partition}`);
    this.name = 'OffsetOutOfRange';
  }
}

// The parts of kafkajs' internal cluster/broker layer that `fetch` uses (kafkajs 2.2.4,
// src/cluster/index.js and src/broker/index.js). Not in its public types: kafkajs has no
// manual partition assignment and no fetch outside a consumer group (ADR 0002).
interface InternalMessage {
  offset: string;
  key: Buffer | null;
  value: Buffer | null;
  isControlRecord?: boolean;
}
interface InternalBroker {
  fetch(request: {
    replicaId: number;
    isolationLevel: number;
    maxWaitTime: number;
    minBytes: number;
    maxBytes: number;
    topics: Array<{ topic: string; partitions: Array<{ partition: number; fetchOffset: string; maxBytes: number }> }>;
  }): Promise<{ responses: Array<{ topicName: string; partitions: Array<{ partition: number; messages: InternalMessage[] }> }> }>;
}
interface InternalCluster {
  /** Every topic the cluster has fetched; each metadata refresh asks for all of them. */
  targetTopics: Set<string>;
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  addTargetTopic(topic: string): Promise<void>;
  refreshMetadata(): Promise<void>;
  findLeaderForPartitions(topic: string, partitions: number[]): Record<string, number[]>;
  findBroker(opts: { nodeId: string }): Promise<InternalBroker>;
}

const READ_COMMITTED = 1;
const CONSUMER_REPLICA_ID = -1;
/** Retries of a fetch after a retriable error (about 1.5 s in all). */
const FETCH_RETRIES = 5;

/** kafkajs logs request failures it goes on to retry at ERROR; they are warnings for us. */
function logCreator(logger: Logger) {
  return () =>
    ({ namespace, level, log }: LogEntry): void => {
      const { message, ...extra } = log;
      const child = { module: 'kafkajs', namespace, ...extra };
      if (level <= logLevel.WARN) logger.warn(child, message);
      else if (level === logLevel.INFO) logger.debug(child, message);
      else logger.trace(child, message);
    };
}

function unavailable(what: string, err: unknown): TributaryError {
  return new TributaryError('StoreUnavailable', `Kafka: ${what} failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

export class KafkaClient {
  private readonly kafka: InstanceType<typeof Kafka>;
  private readonly admin: Admin;
  private readonly cluster: InternalCluster;
  private readonly producers = new Set<Producer>();

  private constructor(kafka: InstanceType<typeof Kafka>, admin: Admin, cluster: InternalCluster) {
    this.kafka = kafka;
    this.admin = admin;
    this.cluster = cluster;
  }

  static async connect(opts: KafkaClientOptions): Promise<KafkaClient> {
    const kafka = new Kafka({
      clientId: opts.clientId,
      brokers: [...opts.brokers],
      logLevel: opts.logger ? logLevel.INFO : logLevel.NOTHING,
      ...(opts.logger ? { logCreator: logCreator(opts.logger) } : {}),
    });
    const key = Object.getOwnPropertySymbols(kafka).find((s) => s.description === 'private:Kafka:createCluster');
    const createCluster = key ? (kafka as unknown as Record<symbol, unknown>)[key] : undefined;
    if (typeof createCluster !== 'function') {
      throw new TributaryError('InternalError', 'this kafkajs version does not expose the cluster layer KafkaClient.fetch needs (built against kafkajs 2.2.4)');
    }
    const cluster = (createCluster as (o: object) => InternalCluster)({ allowAutoTopicCreation: false });
    const admin = kafka.admin();
    try {
      await admin.connect();
      await cluster.connect();
    } catch (err) {
      await Promise.allSettled([admin.disconnect(), cluster.disconnect()]);
      throw unavailable(`connecting to ${opts.brokers.join(',')}`, err);
    }
    return new KafkaClient(kafka, admin, cluster);
  }

  /** Creates the topic if it is missing; either way reports its partition count and the spec's configs. */
  async ensureTopic(spec: TopicSpec): Promise<TopicState> {
    try {
      const created = await this.admin.createTopics({
        topics: [{ topic: spec.name, numPartitions: spec.partitions, replicationFactor: spec.replicationFactor, configEntries: Object.entries(spec.configs).map(([name, value]) => ({ name, value })) }],
        waitForLeaders: true,
      });
      const meta = await this.admin.fetchTopicMetadata({ topics: [spec.name] });
      const described = await this.admin.describeConfigs({
        resources: [{ type: ConfigResourceTypes.TOPIC, name: spec.name, configNames: Object.keys(spec.configs) }],
        includeSynonyms: false,
      });
      const configs: Record<string, string | undefined> = {};
      for (const entry of described.resources[0]?.configEntries ?? []) configs[entry.configName] = entry.configValue;
      return { created, partitions: meta.topics[0]?.partitions.length ?? 0, configs };
    } catch (err) {
      throw unavailable(`creating or describing topic ${spec.name}`, err);
    }
  }

  /**
   * Creates a log topic if missing, and refuses one that cannot serve (ADR 0002): another
   * partition count (keys would map elsewhere), compaction (offsets would have holes and
   * old records vanish), or a retention shorter than what depends on it.
   */
  async ensureLogTopic(spec: LogTopicSpec): Promise<void> {
    const { name, partitions, retentionMs } = spec;
    const state = await this.ensureTopic({
      name,
      partitions,
      replicationFactor: spec.replicationFactor,
      configs: { 'cleanup.policy': 'delete', 'retention.ms': retentionMs === 0 ? '-1' : String(retentionMs) },
    });
    if (state.partitions !== partitions) {
      throw new TributaryError('Conflict', `Kafka topic ${name} has ${state.partitions} partitions but ${partitions} are configured; the partition count cannot change`);
    }
    if ((state.configs['cleanup.policy'] ?? '').includes('compact')) {
      throw new TributaryError('Conflict', `Kafka topic ${name} is compacted (cleanup.policy=${state.configs['cleanup.policy']}); it must be cleanup.policy=delete`);
    }
    const kept = Number(state.configs['retention.ms'] ?? -1);
    if (kept !== -1 && (retentionMs === 0 || kept < retentionMs)) {
      throw new TributaryError('Conflict', `Kafka topic ${name} keeps records for retention.ms=${kept}, shorter than ${spec.retentionOf} (${retentionMs === 0 ? 'forever' : `${retentionMs} ms`})`);
    }
  }

  async offsets(topic: string): Promise<PartitionOffsets[]> {
    try {
      const rows = await this.admin.fetchTopicOffsets(topic);
      return rows.map((r) => ({ partition: r.partition, low: Number(r.low), high: Number(r.high) })).sort((a, b) => a.partition - b.partition);
    } catch (err) {
      throw unavailable(`reading the offsets of ${topic}`, err);
    }
  }

  /** Kafka's DeleteRecords: the partition's records below `before` go; the log start becomes `before`. */
  async deleteRecordsBefore(topic: string, partition: number, before: number): Promise<void> {
    try {
      await this.admin.deleteTopicRecords({ topic, partitions: [{ partition, offset: String(before) }] });
    } catch (err) {
      throw unavailable(`deleting records of ${topic}/${partition}`, err);
    }
  }

  /** Deletes the topic if it exists (kafkajs would otherwise retry a missing one for seconds). */
  async deleteTopic(topic: string): Promise<void> {
    if ((await this.admin.listTopics()).includes(topic)) await this.admin.deleteTopics({ topics: [topic] });
    // Otherwise every later metadata refresh asks for the deleted topic and fails.
    this.cluster.targetTopics.delete(topic);
  }

  /**
   * An idempotent producer that waits for every in-sync replica (`acks=all` per send):
   * retries never duplicate or reorder a partition's records, so a single writer can
   * predict the offsets it gets.
   */
  async producer(): Promise<Producer> {
    // Every record names its partition; the partitioner is never consulted (set to silence kafkajs' v2 notice).
    const producer = this.kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false, createPartitioner: Partitioners.DefaultPartitioner });
    try {
      await producer.connect();
    } catch (err) {
      throw unavailable('connecting a producer', err);
    }
    this.producers.add(producer);
    return producer;
  }

  async closeProducer(producer: Producer): Promise<void> {
    this.producers.delete(producer);
    await producer.disconnect();
  }

  /**
   * A consumer in `groupId` that commits nothing by itself (the caller decides what is
   * applied) and reads committed records only. `sessionTimeoutMs` bounds how long a dead
   * member keeps its partitions.
   */
  consumer(groupId: string, opts: { sessionTimeoutMs?: number } = {}): Consumer {
    const sessionTimeout = opts.sessionTimeoutMs ?? 30_000;
    // kafkajs heartbeats (and so learns of a rebalance) only between fetches: a short
    // fetch wait keeps a rebalance from waiting seconds for this member.
    return this.kafka.consumer({ groupId, sessionTimeout, heartbeatInterval: Math.max(500, Math.floor(sessionTimeout / 10)), maxWaitTimeInMs: 500, allowAutoTopicCreation: false });
  }

  /** Sends the records with `acks=all`; resolves with the base offset each partition gave them, rejects with StoreUnavailable. */
  async send(producer: Producer, topic: string, records: readonly OutgoingRecord[]): Promise<Map<number, number>> {
    let result;
    try {
      result = await producer.send({ topic, acks: -1, messages: records.map((r) => ({ partition: r.partition, key: r.key, value: r.value })) });
    } catch (err) {
      throw unavailable(`sending ${records.length} records to ${topic}`, err);
    }
    const bases = new Map<number, number>();
    for (const m of result) bases.set(m.partition, Number(m.baseOffset ?? m.offset));
    return bases;
  }

  /**
   * Up to `maxBytes` of committed records of one partition from `offset` on (fewer when
   * the partition ends first; empty at its end). Control records are left out.
   */
  async fetch(topic: string, partition: number, offset: number, maxBytes = 1 << 20): Promise<FetchedRecord[]> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.cluster.addTargetTopic(topic);
        const leaders = this.cluster.findLeaderForPartitions(topic, [partition]);
        const nodeId = Object.keys(leaders)[0];
        if (nodeId === undefined) throw new TributaryError('StoreUnavailable', `Kafka: no leader for ${topic}/${partition}`);
        const broker = await this.cluster.findBroker({ nodeId });
        const res = await broker.fetch({
          replicaId: CONSUMER_REPLICA_ID,
          isolationLevel: READ_COMMITTED,
          maxWaitTime: 0,
          minBytes: 1,
          maxBytes,
          topics: [{ topic, partitions: [{ partition, fetchOffset: String(offset), maxBytes }] }],
        });
        const messages = res.responses.find((t) => t.topicName === topic)?.partitions.find((p) => p.partition === partition)?.messages ?? [];
        // A fetch returns whole record batches, so it can start before the offset asked for.
        return messages.filter((m) => !m.isControlRecord && Number(m.offset) >= offset).map((m) => ({ offset: Number(m.offset), key: m.key, value: m.value }));
      } catch (err) {
        const type = (err as { type?: string }).type;
        if (type === 'OFFSET_OUT_OF_RANGE') throw new OffsetOutOfRange(topic, partition, offset);
        // A topic just created, moved leadership or stale metadata: refresh and try again, a few times.
        if (attempt < FETCH_RETRIES && (err as { retriable?: boolean }).retriable) {
          await new Promise((resolve) => setTimeout(resolve, 50 * 2 ** attempt));
          await this.cluster.refreshMetadata().catch(() => undefined);
          continue;
        }
        if (err instanceof TributaryError) throw err;
        throw unavailable(`fetching ${topic}/${partition} at ${offset}`, err);
      }
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.producers].map((p) => p.disconnect()));
    this.producers.clear();
    await Promise.allSettled([this.admin.disconnect(), this.cluster.disconnect()]);
  }
}

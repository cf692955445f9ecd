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
const { AssignerProtocol, ConfigResourceTypes, Kafka, logLevel, PartitionAssigners, Partitioners } = kafkajs;

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
  key: string | Buffer;
  /** null: a tombstone (on a compacted topic, compaction then drops the key). */
  value: Buffer | null;
}

/**
 * Fetches that wait at the broker for records to arrive (long polls), on broker
 * connections of their own; see {@link KafkaClient.poller}.
 */
export interface KafkaPoller {
  /** As {@link KafkaClient.fetch}, except that at the partition's end the broker holds the request up to `maxWaitMs` for a record to arrive. */
  fetch(topic: string, partition: number, offset: number, maxWaitMs: number, maxBytes?: number): Promise<FetchedRecord[]>;
  close(): Promise<void>;
}

/** A consumer group's committed offset of one partition: the next offset to consume, with the committer's metadata. */
export interface GroupOffset {
  partition: number;
  offset: number;
  /** Kafka keeps it with the offset (`offset.metadata.max.bytes`, 4096 by default). */
  metadata?: string;
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
interface InternalGroupBroker {
  offsetCommit(request: {
    groupId: string;
    groupGenerationId: number;
    memberId: string;
    topics: Array<{ topic: string; partitions: Array<{ partition: number; offset: string; metadata: string | null }> }>;
  }): Promise<unknown>;
  offsetFetch(request: {
    groupId: string;
    topics: Array<{ topic: string; partitions: Array<{ partition: number }> }>;
  }): Promise<{ responses: Array<{ topic: string; partitions: Array<{ partition: number; offset: string; metadata: string | null }> }> }>;
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
  /** Asks a broker for the group's coordinator each time (so a moved coordinator is found again). */
  findGroupCoordinator(opts: { groupId: string }): Promise<InternalGroupBroker>;
}

const READ_COMMITTED = 1;
const CONSUMER_REPLICA_ID = -1;
/** Retries of a request to the cluster layer after a retriable error (about 1.5 s in all). */
const FETCH_RETRIES = 5;
/** A "simple" offset commit: by no member of no generation, as the Java client's assign() consumers commit. */
const NO_GENERATION = -1;

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

function refuseOtherPartitionCount(name: string, state: TopicState, partitions: number): void {
  if (state.partitions !== partitions) {
    throw new TributaryError('Conflict', `Kafka topic ${name} has ${state.partitions} partitions but ${partitions} are configured; the partition count cannot change`);
  }
}

function unavailable(what: string, err: unknown): TributaryError {
  return new TributaryError('StoreUnavailable', `Kafka: ${what} failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
}

export class KafkaClient {
  private readonly kafka: InstanceType<typeof Kafka>;
  private readonly admin: Admin;
  private readonly cluster: InternalCluster;
  private readonly newCluster: () => InternalCluster;
  private readonly producers = new Set<Producer>();
  /** The pollers' own clusters (connections). */
  private readonly pollers = new Set<InternalCluster>();

  private constructor(kafka: InstanceType<typeof Kafka>, admin: Admin, newCluster: () => InternalCluster) {
    this.kafka = kafka;
    this.admin = admin;
    this.newCluster = newCluster;
    this.cluster = newCluster();
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
    const newCluster = (): InternalCluster => (createCluster as (o: object) => InternalCluster)({ allowAutoTopicCreation: false });
    const admin = kafka.admin();
    const client = new KafkaClient(kafka, admin, newCluster);
    try {
      await admin.connect();
      await client.cluster.connect();
    } catch (err) {
      await Promise.allSettled([admin.disconnect(), client.cluster.disconnect()]);
      throw unavailable(`connecting to ${opts.brokers.join(',')}`, err);
    }
    return client;
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
    refuseOtherPartitionCount(name, state, partitions);
    if ((state.configs['cleanup.policy'] ?? '').includes('compact')) {
      throw new TributaryError('Conflict', `Kafka topic ${name} is compacted (cleanup.policy=${state.configs['cleanup.policy']}); it must be cleanup.policy=delete`);
    }
    const kept = Number(state.configs['retention.ms'] ?? -1);
    if (kept !== -1 && (retentionMs === 0 || kept < retentionMs)) {
      throw new TributaryError('Conflict', `Kafka topic ${name} keeps records for retention.ms=${kept}, shorter than ${spec.retentionOf} (${retentionMs === 0 ? 'forever' : `${retentionMs} ms`})`);
    }
  }

  /**
   * Creates a compacted topic if missing (the latest record of each key is kept; a null
   * value deletes the key), and refuses one with another partition count, another cleanup
   * policy (`delete` or `compact,delete` would drop keys that are still current), or that
   * drops the deletions (tombstones) sooner than `tombstoneRetentionMs`: a reader away for
   * longer would never learn that those keys were deleted.
   */
  async ensureCompactTopic(spec: { name: string; partitions: number; replicationFactor: number; tombstoneRetentionMs: number; maxRecordBytes: number }): Promise<void> {
    const { name, partitions, tombstoneRetentionMs, maxRecordBytes } = spec;
    const state = await this.ensureTopic({
      name,
      partitions,
      replicationFactor: spec.replicationFactor,
      configs: { 'cleanup.policy': 'compact', 'delete.retention.ms': String(tombstoneRetentionMs), 'max.message.bytes': String(maxRecordBytes) },
    });
    refuseOtherPartitionCount(name, state, partitions);
    if (state.configs['cleanup.policy'] !== 'compact') {
      throw new TributaryError('Conflict', `Kafka topic ${name} has cleanup.policy=${state.configs['cleanup.policy'] ?? '(unknown)'}; it must be cleanup.policy=compact`);
    }
    const kept = Number(state.configs['delete.retention.ms'] ?? 0);
    if (kept < tombstoneRetentionMs) {
      throw new TributaryError('Conflict', `Kafka topic ${name} drops deletions after delete.retention.ms=${kept}; it must keep them for ${tombstoneRetentionMs} ms, or a reader away for longer misses them`);
    }
    if (Number(state.configs['max.message.bytes'] ?? 0) < maxRecordBytes) {
      throw new TributaryError('Conflict', `Kafka topic ${name} takes records of at most max.message.bytes=${state.configs['max.message.bytes']}; it must take ${maxRecordBytes} (a function's code is one record)`);
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
  consumer(groupId: string, opts: { sessionTimeoutMs?: number; userData?: Buffer } = {}): Consumer {
    const sessionTimeout = opts.sessionTimeoutMs ?? 30_000;
    const { userData } = opts;
    // kafkajs heartbeats (and so learns of a rebalance) only between fetches: a short
    // fetch wait keeps a rebalance from waiting seconds for this member.
    return this.kafka.consumer({
      groupId,
      sessionTimeout,
      heartbeatInterval: Math.max(500, Math.floor(sessionTimeout / 10)),
      maxWaitTimeInMs: 500,
      allowAutoTopicCreation: false,
      // Round robin, with the member's user data in its metadata, where describeGroups shows it to every node.
      ...(userData === undefined
        ? {}
        : {
            partitionAssigners: [
              (config: Parameters<typeof PartitionAssigners.roundRobin>[0]) => {
                const base = PartitionAssigners.roundRobin(config);
                return { ...base, protocol: ({ topics }: { topics: string[] }) => ({ name: base.name, metadata: AssignerProtocol.MemberMetadata.encode({ version: base.version, topics, userData }) }) };
              },
            ],
          }),
    });
  }

  /** The members of a consumer group: their user data (see `consumer`) and the partitions of `topic` assigned to each. */
  async groupMembers(groupId: string, topic: string): Promise<Array<{ memberId: string; userData: Buffer; partitions: number[] }>> {
    let described;
    try {
      described = await this.admin.describeGroups([groupId]);
    } catch (err) {
      throw unavailable(`describing consumer group ${groupId}`, err);
    }
    const group = described.groups[0];
    if (group === undefined || group.state !== 'Stable') return [];
    return group.members.map((m) => {
      const metadata = m.memberMetadata.length > 0 ? AssignerProtocol.MemberMetadata.decode(m.memberMetadata) : null;
      const assignment = m.memberAssignment.length > 0 ? AssignerProtocol.MemberAssignment.decode(m.memberAssignment) : null;
      return { memberId: m.memberId, userData: metadata?.userData ?? Buffer.alloc(0), partitions: [...(assignment?.assignment[topic] ?? [])] };
    });
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
    return this.fetchOn(this.cluster, topic, partition, offset, maxBytes, 0);
  }

  /**
   * A poller: long polls on connections of its own. A broker handles one request per
   * connection at a time, so a fetch waiting on this client's shared connections would hold
   * up every other fetch and offset request of the client for as long as it waits.
   */
  async poller(): Promise<KafkaPoller> {
    const cluster = this.newCluster();
    try {
      await cluster.connect();
    } catch (err) {
      await cluster.disconnect().catch(() => undefined);
      throw unavailable('connecting a poller', err);
    }
    this.pollers.add(cluster);
    return {
      fetch: (topic, partition, offset, maxWaitMs, maxBytes = 1 << 20) => this.fetchOn(cluster, topic, partition, offset, maxBytes, maxWaitMs),
      close: async () => {
        this.pollers.delete(cluster);
        await cluster.disconnect();
      },
    };
  }

  private async fetchOn(cluster: InternalCluster, topic: string, partition: number, offset: number, maxBytes: number, maxWaitTime: number): Promise<FetchedRecord[]> {
    return this.retrying(`fetching ${topic}/${partition} at ${offset}`, async () => {
      await cluster.addTargetTopic(topic);
      const leaders = cluster.findLeaderForPartitions(topic, [partition]);
      const nodeId = Object.keys(leaders)[0];
      if (nodeId === undefined) throw new TributaryError('StoreUnavailable', `Kafka: no leader for ${topic}/${partition}`);
      const broker = await cluster.findBroker({ nodeId });
      let res;
      try {
        res = await broker.fetch({
          replicaId: CONSUMER_REPLICA_ID,
          isolationLevel: READ_COMMITTED,
          maxWaitTime,
          minBytes: 1,
          maxBytes,
          topics: [{ topic, partitions: [{ partition, fetchOffset: String(offset), maxBytes }] }],
        });
      } catch (err) {
        if ((err as { type?: string }).type === 'OFFSET_OUT_OF_RANGE') throw new OffsetOutOfRange(topic, partition, offset);
        throw err;
      }
      const messages = res.responses.find((t) => t.topicName === topic)?.partitions.find((p) => p.partition === partition)?.messages ?? [];
      // A fetch returns whole record batches, so it can start before the offset asked for.
      return messages.filter((m) => !m.isControlRecord && Number(m.offset) >= offset).map((m) => ({ offset: Number(m.offset), key: m.key, value: m.value }));
    }, cluster);
  }

  /**
   * Commits offsets of `topic` for `groupId` as a group with no members (generation -1),
   * so no consumer needs to join: the group only keeps offsets, and
   * `kafka-consumer-groups.sh --describe` shows them. Refused (StoreUnavailable) while the
   * group has members of its own.
   */
  async commitGroupOffsets(groupId: string, topic: string, entries: readonly GroupOffset[]): Promise<void> {
    const partitions = entries.map((e) => ({ partition: e.partition, offset: String(e.offset), metadata: e.metadata ?? null }));
    await this.retrying(`committing offsets of group ${groupId} on ${topic}`, async () => {
      const coordinator = await this.cluster.findGroupCoordinator({ groupId });
      await coordinator.offsetCommit({ groupId, groupGenerationId: NO_GENERATION, memberId: '', topics: [{ topic, partitions }] });
    });
  }

  /** The committed offsets of `groupId` on these partitions of `topic`; a partition with none (or an unknown group) is absent. */
  async fetchGroupOffsets(groupId: string, topic: string, partitions: readonly number[]): Promise<Map<number, GroupOffset>> {
    return this.retrying(`reading offsets of group ${groupId} on ${topic}`, async () => {
      const coordinator = await this.cluster.findGroupCoordinator({ groupId });
      const res = await coordinator.offsetFetch({ groupId, topics: [{ topic, partitions: partitions.map((partition) => ({ partition })) }] });
      const out = new Map<number, GroupOffset>();
      for (const p of res.responses.find((t) => t.topic === topic)?.partitions ?? []) {
        const offset = Number(p.offset);
        // -1: nothing committed.
        if (offset >= 0) out.set(p.partition, p.metadata === null || p.metadata === '' ? { partition: p.partition, offset } : { partition: p.partition, offset, metadata: p.metadata });
      }
      return out;
    });
  }

  /**
   * Runs a request to kafkajs' cluster layer, retrying a retriable failure (a topic just
   * created, a moved leader or group coordinator, stale metadata) a few times after a
   * metadata refresh (a retriable TributaryError too). Other failures become
   * StoreUnavailable; ours pass through.
   */
  private async retrying<T>(what: string, request: () => Promise<T>, cluster = this.cluster): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await request();
      } catch (err) {
        if (attempt < FETCH_RETRIES && (err as { retriable?: boolean }).retriable) {
          await new Promise((resolve) => setTimeout(resolve, 50 * 2 ** attempt));
          await cluster.refreshMetadata().catch(() => undefined);
          continue;
        }
        if (err instanceof TributaryError || err instanceof OffsetOutOfRange) throw err;
        throw unavailable(what, err);
      }
    }
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.producers].map((p) => p.disconnect()));
    this.producers.clear();
    await Promise.allSettled([...this.pollers].map((c) => c.disconnect()));
    this.pollers.clear();
    await Promise.allSettled([this.admin.disconnect(), this.cluster.disconnect()]);
  }
}

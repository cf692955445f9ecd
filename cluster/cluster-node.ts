/**
 * A node's membership of a Tributary cluster (ADR 0002), everything that differs from
 * single-node mode in one place: ingest writes to the telemetry topic; the store
 * materializes the partitions the store group assigns to this node, with the consumed
 * offset in the same batch; the change log writes only the shards this node owns; and
 * a device's queries go to its partition's owner.
 */
import type { DeviceRoute, DeviceRouter } from '../api/forward.js';
import { awsLocationOf } from '../core/arn.js';
import type { Config } from '../core/config.js';
import { randomUUID } from 'node:crypto';
import { isTributaryError, TributaryError } from '../core/errors.js';
import { withOverrides } from '../core/overrides.js';
import type { Logger } from '../core/logger.js';
import type { Database } from '../store/database.js';
import type { DeleteDeviceResult, PutDeviceResult, TelemetryStore, WriteRequest } from '../store/types.js';
import type { BatchOp } from '../streams/types.js';
import { AssignedShards } from '../functions/placement.js';
import { KafkaChangeLog } from '../streams/kafka-log.js';
import { shardOf } from '../streams/shard.js';
import type { Command, CommandSender } from '../ingest/mqtt-broker.js';
import { CommandTopic } from './command-topic.js';
import { ClusterDeviceDirectory } from './device-directory.js';
import { KafkaCheckpointStore } from './kafka-checkpoints.js';
import { KafkaClient } from './kafka-client.js';
import { KafkaMetadata } from './kafka-metadata.js';
import { KafkaTelemetryWriter } from './kafka-writer.js';
import { consumerOffsetOp, readConsumerOffset } from './offsets.js';
import { ownerUserData, PartitionOwners } from './partition-owners.js';
import { StoreConsumer, type ApplyBatch } from './store-consumer.js';
import { materialize, TelemetryProducer, type DeviceControl, type DeviceControlMessage } from './telemetry-topic.js';

/** How long a registry change waits for the partition's owner (this node) to apply it. */
const CONTROL_TIMEOUT_MS = 30_000;

export interface ClusterTopics {
  telemetry: string;
  changes: string;
  /** The control plane, compacted (cluster/kafka-metadata.ts). */
  metadata: string;
  /** The rejects log, replicated the same way but deleted by age. */
  rejects: string;
  /** Commands to devices, which every node publishes on its broker. */
  commands: string;
  /** The store nodes' consumer group. */
  storeGroup: string;
  /** Prefix of the functions' checkpoint groups. */
  groupPrefix: string;
}

export function clusterTopics(prefix: string): ClusterTopics {
  return { telemetry: `${prefix}telemetry`, changes: `${prefix}changes`, metadata: `${prefix}metadata`, rejects: `${prefix}rejects`, commands: `${prefix}commands`, storeGroup: `${prefix}store`, groupPrefix: prefix };
}

export class ClusterNode implements DeviceRouter {
  /** The shards this node owns, for the functions' pollers. */
  readonly placement = new AssignedShards();
  private consumer: StoreConsumer | undefined;
  private readonly owners: PartitionOwners;
  private owned = new Set<number>();
  /** Registry changes sent from here, waiting for this node to apply them: control id → the caller. */
  private readonly waiting = new Map<string, { resolve: (value: unknown) => void; reject: (err: unknown) => void }>();

  readonly client: KafkaClient;
  readonly topics: ClusterTopics;
  readonly changeLog: KafkaChangeLog;
  /** Where ingest writes: the telemetry topic. */
  readonly writer: KafkaTelemetryWriter;
  /** The control plane (credentials, keys, audit, functions, triggers, DLQ), the same on every node. */
  readonly metadata: KafkaMetadata;
  /** The rejects log's replication: every node keeps every node's rejects (each trims its copy). */
  readonly rejectsReplication: KafkaMetadata;
  /** The functions' checkpoints: committed offsets of one group per mapping. */
  readonly checkpoints: KafkaCheckpointStore;
  /** `GET /v1/devices` across the partition owners. */
  readonly deviceDirectory: ClusterDeviceDirectory;
  private readonly producer: TelemetryProducer;
  private commands: CommandTopic | undefined;

  private constructor(
    parts: Pick<ClusterNode, 'client' | 'topics' | 'changeLog' | 'metadata' | 'rejectsReplication'> & { producer: TelemetryProducer },
    private readonly database: Database,
    private readonly config: Config,
    private readonly logger: Logger,
  ) {
    ({ client: this.client, topics: this.topics, changeLog: this.changeLog, metadata: this.metadata, rejectsReplication: this.rejectsReplication, producer: this.producer } = parts);
    this.writer = new KafkaTelemetryWriter(this.producer);
    this.owners = new PartitionOwners(this.client, this.topics.storeGroup, this.topics.telemetry);
    this.checkpoints = new KafkaCheckpointStore({ client: this.client, topic: this.topics.changes, groupPrefix: this.topics.groupPrefix });
    this.deviceDirectory = new ClusterDeviceDirectory({ owners: this.owners, shards: config.streamShards, served: () => this.servedPartitions() });
  }

  /**
   * Connects, creates or checks the topics, opens the change log owning no shard yet, and
   * applies the control plane and the rejects log as far as Kafka has them.
   */
  static async connect(config: Config, database: Database, logger: Logger): Promise<ClusterNode> {
    const brokers = config.kafkaBrokers.split(',').map((b) => b.trim()).filter((b) => b !== '');
    const client = await KafkaClient.connect({ brokers, clientId: `tributary-${process.pid}`, logger: logger.child({ module: 'kafka' }) });
    const topics = clusterTopics(config.kafkaTopicPrefix);
    const opened: Array<{ close(): Promise<void> }> = [];
    const open = async <T extends { close(): Promise<void> }>(part: Promise<T>): Promise<T> => {
      const it = await part;
      opened.push(it);
      return it;
    };
    try {
      const replicationFactor = config.kafkaReplicationFactor;
      const changeLog = await open(KafkaChangeLog.open({ client, database, topic: topics.changes, shards: config.streamShards, replicationFactor, retentionMs: config.streamRetention, owned: 'none', aws: awsLocationOf(config), logger: logger.child({ module: 'streams' }) }));
      const producer = await open(TelemetryProducer.open({ client, topic: topics.telemetry, partitions: config.streamShards, replicationFactor, retentionMs: config.retention }));
      const metadata = await open(KafkaMetadata.open({ client, database, topic: topics.metadata, replicationFactor, cleanup: { compact: true }, logger: logger.child({ module: 'metadata' }) }));
      const rejectsReplication = await open(
        KafkaMetadata.open({ client, database, topic: topics.rejects, replicationFactor, cleanup: { retentionMs: config.rejectsRetention }, logger: logger.child({ module: 'rejects' }) }),
      );
      return new ClusterNode({ client, topics, changeLog, producer, metadata, rejectsReplication }, database, config, logger);
    } catch (err) {
      for (const part of opened.reverse()) await part.close().catch(() => undefined);
      await client.close();
      throw err;
    }
  }

  /** Follows the commands topic, handing each command to `deliver` (this node's broker); the sender for the API and functions. */
  async openCommands(deliver: (command: Command) => Promise<void>): Promise<CommandSender> {
    this.commands = await CommandTopic.open({ client: this.client, topic: this.topics.commands, replicationFactor: this.config.kafkaReplicationFactor, deliver, logger: this.logger.child({ module: 'commands' }) });
    return this.commands;
  }

  /** Stops following commands (before the broker they are delivered to closes). */
  async closeCommands(): Promise<void> {
    await this.commands?.close();
  }

  /** Joins the store group: from now on the group's assignment decides what this node materializes and serves. */
  async startStore(store: TelemetryStore, httpUrl: string): Promise<void> {
    const { telemetry, storeGroup } = this.topics;
    this.consumer = await StoreConsumer.start({
      client: this.client,
      topic: telemetry,
      groupId: storeGroup,
      sessionTimeoutMs: this.config.kafkaSessionTimeout,
      userData: ownerUserData(httpUrl),
      position: (partition) => readConsumerOffset(this.database, telemetry, partition),
      apply: (batch) => this.apply(store, batch),
      onAssignment: (partitions) => this.takeOver(partitions),
      logger: this.logger.child({ module: 'cluster' }),
    });
  }

  /** Moves change-log ownership to the new assignment, then the functions' pollers. */
  private async takeOver(partitions: readonly number[]): Promise<void> {
    const next = new Set(partitions);
    const lost = [...this.owned].filter((p) => !next.has(p));
    const gained = partitions.filter((p) => !this.owned.has(p));
    this.owned = next;
    try {
      await Promise.all(lost.map((p) => this.changeLog.release(p)));
      // A shard that cannot be taken over now (Kafka unreachable) is taken over by its first batch (see apply).
      const failed = await Promise.allSettled(gained.map((p) => this.changeLog.acquire(p)));
      for (const f of failed) if (f.status === 'rejected') this.logger.warn({ err: f.reason }, 'taking over a change-log shard failed; retried with its next batch');
    } finally {
      this.placement.set(partitions);
    }
  }

  /**
   * Applies consecutive records of one partition: runs of readings through the store's
   * group commit, registry changes one at a time between them, in offset order. The
   * consumed offset goes into the batch of the last reading, written only once every
   * other record is in, so the offset never passes a record that failed; anything applied
   * twice after a crash finds itself in place (readings) or is idempotent (registry).
   */
  private async apply(store: TelemetryStore, { topic, partition, records, nextOffset }: ApplyBatch): Promise<void> {
    if (!this.changeLog.owns(partition)) await this.changeLog.acquire(partition);
    let run: WriteRequest[] = [];
    for (const r of records) {
      const { control } = r.message;
      if (control === undefined) {
        run.push(materialize(r.message, r.offset));
        continue;
      }
      await this.applyWrites(store, run);
      run = [];
      await this.applyControl(store, r.message.req.deviceId, control);
    }
    await this.applyWrites(store, run, consumerOffsetOp(topic, partition, nextOffset));
  }

  private async applyWrites(store: TelemetryStore, requests: WriteRequest[], offsetOp?: BatchOp): Promise<void> {
    const last = requests.pop();
    if (last === undefined) {
      if (offsetOp !== undefined) await this.database.commit([offsetOp]);
      return;
    }
    await this.settle(requests.map((req) => store.write(req)));
    const [lastFailed] = await this.settle([store.write(offsetOp === undefined ? last : { ...last, batchOps: [offsetOp] })]);
    if (lastFailed && offsetOp !== undefined) await this.database.commit([offsetOp]);
  }

  private async applyControl(store: TelemetryStore, deviceId: string, control: DeviceControlMessage): Promise<void> {
    const waiter = this.waiting.get(control.id);
    try {
      const result = 'tags' in control ? await store.putDevice({ deviceId, tags: control.tags }) : await store.deleteDevice(deviceId);
      waiter?.resolve(result);
    } catch (err) {
      if (!isTributaryError(err) || err.code !== 'ValidationError') throw err;
      this.logger.warn({ err, deviceId }, 'a device change the store refuses was skipped');
      waiter?.reject(err);
    }
  }

  /**
   * The store as the API sees it in cluster mode: registry changes go through the
   * telemetry topic, in order with the device's readings, so that every later owner of the
   * partition — one rebuilding it included — applies them too. The API forwards them to the
   * owner, which waits here for its own consumer to apply them and answers with the result.
   */
  deviceStore(store: TelemetryStore): TelemetryStore {
    const viaTopic: Pick<TelemetryStore, 'putDevice' | 'deleteDevice'> = {
      putDevice: (req) => this.control(req.deviceId, { tags: req.tags }) as Promise<PutDeviceResult>,
      deleteDevice: (deviceId) => this.control(deviceId, { delete: true }) as Promise<DeleteDeviceResult | undefined>,
    };
    return withOverrides(store, viaTopic);
  }

  private async control(deviceId: string, control: DeviceControl): Promise<unknown> {
    const id = randomUUID();
    const applied = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new TributaryError('StoreUnavailable', "cluster: the change is on the telemetry topic, but the device's partition owner has not applied it yet (the partition may be moving); it will be applied — retry to see the result"));
      }, CONTROL_TIMEOUT_MS);
      const settle = (): void => {
        clearTimeout(timer);
        this.waiting.delete(id);
      };
      this.waiting.set(id, {
        resolve: (value) => {
          settle();
          resolve(value);
        },
        reject: (err) => {
          settle();
          reject(err);
        },
      });
    });
    try {
      await this.producer.sendControl(deviceId, { ...control, id });
    } catch (err) {
      this.waiting.get(id)?.reject(err);
    }
    return applied;
  }

  /**
   * Waits for the writes; a record the store refuses (e.g. older than the retention by now)
   * is skipped with a warning — retrying would never succeed. Anything else fails the
   * batch, which the consumer retries. Resolves with which writes were refused.
   */
  private async settle(writes: Array<Promise<unknown>>): Promise<boolean[]> {
    const results = await Promise.allSettled(writes);
    return results.map((r) => {
      if (r.status === 'fulfilled') return false;
      if (isTributaryError(r.reason) && r.reason.code === 'ValidationError') {
        this.logger.warn({ err: r.reason }, 'a telemetry record the store refuses was skipped');
        return true;
      }
      throw r.reason;
    });
  }

  /** Where `deviceId`'s queries are answered now. */
  async route(deviceId: string): Promise<DeviceRoute> {
    const consumer = this.consumer;
    const owners = this.owners;
    if (consumer === undefined) return { unavailable: 'this node has not joined the cluster yet' };
    const partition = shardOf(deviceId, this.config.streamShards);
    if (consumer.partitions.includes(partition)) {
      return consumer.caughtUp(partition) ? { local: true } : { unavailable: `partition ${partition} is being brought up to date on this node` };
    }
    const url = await owners.urlOf(partition);
    return url === undefined ? { unavailable: `no node owns partition ${partition} right now (the cluster is rebalancing)` } : { url };
  }


  /** The partitions this node answers for now: assigned here and caught up. */
  servedPartitions(): number[] {
    const c = this.consumer;
    return c === undefined ? [] : c.partitions.filter((p) => c.caughtUp(p));
  }

  /** Forget cached ownership after a forward failed. */
  forwardFailed(): void {
    this.owners.invalidate();
  }

  /** Leaves the store group (its partitions move to the other nodes), then sends what is left and disconnects. */
  async stop(): Promise<void> {
    await this.consumer?.stop();
    this.placement.set([]);
    await Promise.all([...this.owned].map((p) => this.changeLog.release(p)));
    this.owned.clear();
    await this.producer.close();
  }

  /** After the store, the rejects log and the API closed: the replicated logs, the change log and the connection. */
  async close(): Promise<void> {
    await this.rejectsReplication.close();
    await this.metadata.close();
    await this.changeLog.close();
    await this.client.close();
  }
}

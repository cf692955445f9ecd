import { afterAll, afterEach, expect, it } from 'vitest';
import kafkajs from 'kafkajs';
import { KafkaClient } from '../cluster/kafka-client.js';
import { consumerOffsetOp, readConsumerOffset } from '../cluster/offsets.js';
import { StoreConsumer, type ApplyBatch } from '../cluster/store-consumer.js';
import { TelemetryProducer } from '../cluster/telemetry-topic.js';
import { createLogger } from '../core/logger.js';
import { Database } from '../store/database.js';
import type { BatchOp } from '../streams/types.js';
import { tempDir, waitFor } from './helpers.js';
import { describeWithKafka, uniqueTopic } from './kafka/broker.js';

const PARTITIONS = 4;

describeWithKafka('store nodes on the telemetry topic (real Kafka)', (brokers) => {
  const logger = createLogger((process.env.TEST_LOG as 'info' | undefined) ?? 'silent');
  let shared: Promise<KafkaClient> | undefined;
  const client = (): Promise<KafkaClient> => (shared ??= KafkaClient.connect({ brokers, clientId: 'tributary-test', logger }));
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  afterAll(async () => {
    await (await shared)?.close();
  });

  /** A store node stand-in: applies records into its own LevelDB, data and offset in one batch, and counts each application. */
  interface Node {
    applied: Map<string, number>;
    /** ts of each device's readings in the order this node applied them. */
    order: Map<string, number[]>;
    consumer: StoreConsumer;
    stop: () => Promise<void>;
  }
  async function setup(): Promise<{ topic: string; groupId: string; producer: TelemetryProducer; startNode: (dir?: { path: string; cleanup: () => void }) => Promise<Node & { dir: { path: string; cleanup: () => void } }> }> {
    const kafka = await client();
    const topic = uniqueTopic('telemetry');
    const groupId = `${topic}.store`;
    const producer = await TelemetryProducer.open({ client: kafka, topic, partitions: PARTITIONS, replicationFactor: 1, retentionMs: 0 });
    cleanups.push(async () => {
      await producer.close();
      await kafka.deleteTopic(topic);
    });
    const startNode = async (dir = tempDir('tributary-storenode-')): Promise<Node & { dir: typeof dir }> => {
      const database = await Database.open(dir.path);
      const applied = new Map<string, number>();
      const order = new Map<string, number[]>();
      const apply = async (b: ApplyBatch): Promise<void> => {
        const ops: BatchOp[] = b.records.map((r) => ({ type: 'put', key: Buffer.from(`~${b.partition}:${r.offset}`), value: Buffer.from(JSON.stringify(r.message.req)) }));
        ops.push(consumerOffsetOp(b.topic, b.partition, b.nextOffset));
        await database.commit(ops);
        for (const r of b.records) {
          const key = `${b.partition}:${r.offset}`;
          applied.set(key, (applied.get(key) ?? 0) + 1);
          const list = order.get(r.message.req.deviceId) ?? [];
          list.push(r.message.req.readings[0]?.ts as number);
          order.set(r.message.req.deviceId, list);
        }
      };
      const consumer = await StoreConsumer.start({ client: kafka, topic, groupId, position: (p) => readConsumerOffset(database, topic, p), apply, sessionTimeoutMs: 6_000, logger });
      let stopped = false;
      const stop = async (): Promise<void> => {
        if (stopped) return;
        stopped = true;
        await consumer.stop();
        await database.close();
      };
      cleanups.push(async () => {
        await stop();
        dir.cleanup();
      });
      return { applied, order, consumer, stop, dir };
    };
    return { topic, groupId, producer, startNode };
  }

  /** Each round sends one reading per device, all at once (the producer groups them into few requests). */
  async function send(producer: TelemetryProducer, devices: number, perDevice: number, from = 0): Promise<Set<string>> {
    const sent = new Set<string>();
    for (let i = from; i < from + perDevice; i++) {
      const placed = await Promise.all(Array.from({ length: devices }, (_, d) => producer.send({ deviceId: `dev-${d}`, readings: [{ ts: 1_000 + i, values: { v: i } }] })));
      for (const { partition, offset } of placed) sent.add(`${partition}:${offset}`);
    }
    expect(sent.size).toBe(devices * perDevice);
    return sent;
  }
  const total = (nodes: Node[]): number => nodes.reduce((n, node) => n + node.applied.size, 0);

  it('splits the partitions between two nodes; each record is applied once, in order per device', async () => {
    const { producer, startNode } = await setup();
    const a = await startNode();
    const b = await startNode();
    await waitFor(() => a.consumer.partitions.length > 0 && b.consumer.partitions.length > 0 && a.consumer.partitions.length + b.consumer.partitions.length === PARTITIONS, 20_000, 'both nodes to own partitions');
    const sent = await send(producer, 12, 10);
    await waitFor(() => total([a, b]) === sent.size, 20_000, 'every record applied');
    expect(new Set([...a.applied.keys(), ...b.applied.keys()])).toEqual(sent);
    for (const node of [a, b]) expect([...node.applied.values()].every((n) => n === 1)).toBe(true);
    for (let d = 0; d < 12; d++) {
      const id = `dev-${d}`;
      // A device lives in one partition, so on one node, and its readings arrive in the order sent.
      const onA = a.order.get(id);
      const onB = b.order.get(id);
      expect(Boolean(onA) !== Boolean(onB)).toBe(true);
      expect(onA ?? onB).toEqual(Array.from({ length: 10 }, (_, i) => 1_000 + i));
    }
  });

  it('a restarted node resumes from its own offsets, even when the group offsets were lost; a node without state rebuilds', async () => {
    const { topic, groupId, producer, startNode } = await setup();
    const a = await startNode();
    const first = await send(producer, 8, 5);
    await waitFor(() => a.applied.size === first.size, 20_000, 'the first records applied');
    await a.stop();
    // Lose the group's committed offsets: only the store's own offsets can keep it from re-applying.
    const admin = new kafkajs.Kafka({ clientId: 'tributary-test-admin', brokers, logLevel: kafkajs.logLevel.NOTHING }).admin();
    await admin.connect();
    await admin.resetOffsets({ groupId, topic, earliest: true });
    await admin.disconnect();

    const restarted = await startNode(a.dir);
    const more = await send(producer, 8, 3, 5);
    await waitFor(() => restarted.applied.size === more.size, 20_000, 'the new records applied after the restart');
    expect(new Set(restarted.applied.keys())).toEqual(more);
    expect([...restarted.applied.values()].every((n) => n === 1)).toBe(true);

    // A node with an empty store joins and takes over everything: it starts at the first record.
    const fresh = await startNode();
    await restarted.stop();
    await waitFor(() => fresh.applied.size === first.size + more.size, 30_000, 'the empty node to rebuild every partition');
    expect(new Set(fresh.applied.keys())).toEqual(new Set([...first, ...more]));
    expect([...fresh.applied.values()].every((n) => n === 1)).toBe(true);
  }, 90_000);
});

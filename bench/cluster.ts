/**
 * Cluster benchmarks against a real Kafka broker (`KAFKA_BROKERS`, e.g. from
 * test/kafka/start-kafka.sh), each with the single-node embedded figure measured in the
 * same run. What exists of cluster mode so far (ADR 0002) is measured, nothing more:
 *
 * - ingest to the acknowledgement point: a durable embedded store write (what a PUBACK
 *   waits for on one node) vs a telemetry-topic send with `acks=all` (what it waits for in
 *   cluster mode) — readings/s and per-request p99;
 * - durable writes with the change stream on Kafka (`KafkaChangeLog`: outbox in the batch,
 *   then sent) vs the embedded change log, until every record is on Kafka;
 * - rebuild: a store node with no state catching up a partition set of N readings from
 *   the telemetry topic, data and offsets in LevelDB batches (the engine's own apply path
 *   is not wired to the consumer yet, so this is a lower bound for "queryable again").
 *
 * Not measured (not built yet): 2 and 3 node processes behind MQTT, kill -9 of a node.
 * Environment: KAFKA_BROKERS (required), BENCH_CLUSTER_WRITES (default 100,000),
 * BENCH_CLUSTER_CONCURRENCY (default 2,000), BENCH_CLUSTER_REBUILD (default 1,000,000).
 * Run: `npm run build && node dist/bench/cluster.js`.
 */
import { pathToFileURL } from 'node:url';
import { KafkaClient } from '../cluster/kafka-client.js';
import { consumerOffsetOp, readConsumerOffset } from '../cluster/offsets.js';
import { StoreConsumer } from '../cluster/store-consumer.js';
import { TelemetryProducer } from '../cluster/telemetry-topic.js';
import { createLogger } from '../core/logger.js';
import { Database } from '../store/database.js';
import { LevelTelemetryStore } from '../store/level-store.js';
import type { WriteRequest } from '../store/types.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import { KafkaChangeLog } from '../streams/kafka-log.js';
import type { BatchOp, ChangeLog } from '../streams/types.js';
import { fmt, percentile, printTable, progress, sampleValues, scratchDir, type Row } from './harness.js';

const WRITES = Number(process.env.BENCH_CLUSTER_WRITES ?? 100_000);
const CONCURRENCY = Number(process.env.BENCH_CLUSTER_CONCURRENCY ?? 2_000);
const REBUILD = Number(process.env.BENCH_CLUSTER_REBUILD ?? 1_000_000);
const DEVICES = 1000;
const SHARDS = 4;
const DAY = 86_400_000;
const START = Date.UTC(2026, 10, 1);
const logger = createLogger('silent');

function request(i: number): WriteRequest {
  return { deviceId: `device-${i % DEVICES}`, readings: [{ ts: START + i, values: sampleValues(i) }] };
}

/** `n` requests through `write` from CONCURRENCY concurrent writers; readings/s and p99 latency (ms). */
async function drive(n: number, write: (req: WriteRequest) => Promise<unknown>): Promise<{ perSec: number; p99: number }> {
  const latencies: number[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < n) {
        const req = request(next++);
        const s = performance.now();
        await write(req);
        latencies.push(performance.now() - s);
      }
    }),
  );
  return { perSec: n / ((performance.now() - t0) / 1000), p99: percentile(latencies, 99) };
}

async function withStore<T>(changeLog: (database: Database) => Promise<ChangeLog & { close?: () => Promise<void> }>, fn: (store: LevelTelemetryStore) => Promise<T>): Promise<T> {
  const dir = scratchDir('cluster');
  const database = await Database.open(dir.path);
  const log = await changeLog(database);
  const store = await LevelTelemetryStore.open({ database, changeLog: log, partitionWindowMs: DAY, maxBatch: 2000, maxDelayMs: 0 });
  try {
    return await fn(store);
  } finally {
    await store.close();
    await log.close?.();
    await database.close();
    dir.cleanup();
  }
}

function row(name: string, measured: { perSec: number; p99: number }, baseline: { perSec: number; p99: number }, note: string): Row[] {
  return [
    { case: `${name}: readings/s`, measured: fmt(measured.perSec), baseline: fmt(baseline.perSec), ratio: fmt(measured.perSec / baseline.perSec, 2), note },
    { case: `${name}: p99 ms`, measured: fmt(measured.p99, 1), baseline: fmt(baseline.p99, 1), ratio: fmt(measured.p99 / baseline.p99, 2), note: '' },
  ];
}

export async function benchCluster(): Promise<void> {
  const brokers = process.env.KAFKA_BROKERS?.split(',');
  if (!brokers) {
    process.stderr.write('bench cluster: set KAFKA_BROKERS=host:port (test/kafka/start-kafka.sh starts a local broker)\n');
    return;
  }
  const client = await KafkaClient.connect({ brokers, clientId: 'tributary-bench', logger });
  const prefix = `tributary-bench.${Date.now().toString(36)}`;
  const topics: string[] = [];
  try {
    // A discarded first round: the first case measured would otherwise pay for JIT warm-up.
    progress('warm-up');
    await withStore((db) => EmbeddedChangeLog.open(db, { shards: SHARDS }), (store) => drive(Math.ceil(WRITES / 10), (req) => store.write(req)));
    progress(`embedded durable writes (${fmt(WRITES)})`);
    const embedded = await withStore((db) => EmbeddedChangeLog.open(db, { shards: SHARDS }), (store) => drive(WRITES, (req) => store.write(req)));

    progress(`telemetry topic sends with acks=all (${fmt(WRITES)})`);
    const telemetry = `${prefix}.telemetry`;
    topics.push(telemetry);
    const producer = await TelemetryProducer.open({ client, topic: telemetry, partitions: SHARDS, replicationFactor: 1, retentionMs: 0 });
    const sends = await drive(WRITES, (req) => producer.send(req));

    progress(`durable writes with the change stream on Kafka (${fmt(WRITES)})`);
    const changes = `${prefix}.changes`;
    topics.push(changes, `${changes}.meta`);
    const kafkaLog = await withStore(
      (database) => KafkaChangeLog.open({ client, database, topic: changes, shards: SHARDS, replicationFactor: 1, retentionMs: 0, logger }),
      async (store) => {
        const t0 = performance.now();
        const r = await drive(WRITES, (req) => store.write(req));
        // Until the last record is on Kafka, not only in the outbox.
        const shards = await store.changeLog.shards();
        const onKafka = shards.reduce((n, s) => n + (s.lastSequenceNumber ?? 0), 0);
        return { ...r, allOnKafkaPerSec: onKafka / ((performance.now() - t0) / 1000) };
      },
    );

    progress(`rebuild: sending ${fmt(REBUILD)} readings, then a node without state catches up`);
    await Promise.all(Array.from({ length: CONCURRENCY }, async (_, w) => {
      for (let i = w; i < REBUILD - WRITES; i += CONCURRENCY) await producer.send(request(WRITES + i));
    }));
    await producer.close();
    const dir = scratchDir('cluster-rebuild');
    const database = await Database.open(dir.path);
    let applied = 0;
    const t0 = performance.now();
    let done!: () => void;
    const caughtUp = new Promise<void>((resolve) => (done = resolve));
    const consumer = await StoreConsumer.start({
      client,
      topic: telemetry,
      groupId: `${telemetry}.store`,
      position: (p) => readConsumerOffset(database, telemetry, p),
      apply: async (b) => {
        const ops: BatchOp[] = b.records.map((r) => ({ type: 'put', key: Buffer.from(`~${b.partition}:${r.offset}`), value: Buffer.from(JSON.stringify(r.message.req.readings)) }));
        ops.push(consumerOffsetOp(b.topic, b.partition, b.nextOffset));
        await database.commit(ops);
        applied += b.records.length;
        if (applied >= REBUILD) done();
      },
      logger,
    });
    await caughtUp;
    const rebuildMs = performance.now() - t0;
    await consumer.stop();
    await database.close();
    dir.cleanup();

    printTable('cluster (one local Kafka broker; baseline: single-node embedded)', [
      ...row('ingest to the ack point', sends, embedded, 'Kafka acks=all vs fsynced LevelDB batch'),
      ...row('durable writes, change stream on Kafka', kafkaLog, embedded, `all records on Kafka: ${fmt(kafkaLog.allOnKafkaPerSec)}/s`),
      { case: `rebuild ${fmt(REBUILD)} readings on a node without state`, measured: `${fmt(rebuildMs / 1000, 1)} s`, baseline: '—', ratio: '—', note: `${fmt(REBUILD / (rebuildMs / 1000))} readings/s; raw batches, not the store engine` },
    ]);
  } finally {
    for (const t of topics) await client.deleteTopic(t).catch(() => undefined);
    await client.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await benchCluster();

/**
 * Cluster benchmarks against a real Kafka broker (`KAFKA_BROKERS`, e.g. from
 * test/kafka/start-kafka.sh), each with the single-node embedded figure measured in the
 * same run. With one local broker on a small machine, nodes, broker and load generator
 * share the cores: the figures show what cluster mode costs more than how it scales.
 *
 * In process (one store, no MQTT):
 * - the acknowledgement point: a durable embedded store write (what a PUBACK waits for on
 *   one node) vs a telemetry-topic send with `acks=all` (what it waits for in cluster
 *   mode) — readings/s and per-request p99;
 * - durable writes with the change stream on Kafka (`KafkaChangeLog`: outbox in the batch,
 *   then sent) vs the embedded change log, until every record is on Kafka.
 *
 * Node processes (`tributary start` from dist, configured as docker-compose's nodes and
 * without functions: bench/cluster-nodes.ts):
 * - MQTT QoS 1 ingest through 1, 2 and 3 nodes (a fresh topic prefix each) vs one embedded
 *   node: bench/load.ts's generator, one device per connection, connections spread over
 *   the nodes' MQTT ports. Readings/s closed loop (durable = PUBACK'd: on Kafka, or fsynced
 *   when embedded) and publish→PUBACK p50/p99 at a fixed offered rate (open loop); then
 *   every acknowledged reading must be stored, read through every node.
 * - partition takeover: 2 nodes, R readings loaded over HTTP (arrays of 1,000 readings),
 *   all of them for devices of one partition, every device queryable; then SIGKILL of the node owning one device's partition, and the
 *   time until (a) the store group gives the partition to the survivor, (b) the device's
 *   range query answers 200 with all its readings there. The loaded partitions were never
 *   the survivor's, so (b) is a rebuild from the telemetry topic.
 *
 * Environment: KAFKA_BROKERS (required); BENCH_DURATION_MS, BENCH_RUNS, BENCH_WARMUP_MS as
 * bench/ingest (default 5,000 ms, 3, 1,000 ms); BENCH_CLUSTER_CONNECTIONS (default 100),
 * BENCH_CLUSTER_RATE (offered publishes/s for latency, default 2,000), BENCH_CLUSTER_TAKEOVER
 * (R, default 1,000,000), BENCH_CLUSTER_WRITES and BENCH_CLUSTER_CONCURRENCY (in-process
 * cases, default 100,000 and 2,000); TRIBUTARY_KAFKA_SESSION_TIMEOUT (the nodes', default
 * the compose value, 10s).
 * Run: `npm run build && KAFKA_BROKERS=host:port node dist/bench/cluster.js`.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import type { ClusterTopics } from '../cluster/cluster-node.js';
import { KafkaClient } from '../cluster/kafka-client.js';
import { PartitionOwners } from '../cluster/partition-owners.js';
import { TelemetryProducer } from '../cluster/telemetry-topic.js';
import { TributaryError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { DEFAULT_LIMITS } from '../ingest/payload.js';
import { Database } from '../store/database.js';
import { LevelTelemetryStore } from '../store/level-store.js';
import type { WriteRequest } from '../store/types.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import { KafkaChangeLog } from '../streams/kafka-log.js';
import { shardOf } from '../streams/shard.js';
import type { ChangeLog } from '../streams/types.js';
import { checkQueries, queriedCount, SESSION_TIMEOUT, SESSION_TIMEOUT_MS, SHARDS, startDeployment, waitStored, type Deployment, type NodeProcess } from './cluster-nodes.js';
import { fmt, median, percentile, printTable, progress, repeat, sampleValues, scratchDir, type Row } from './harness.js';
import { runLoad, type LoadOptions, type LoadResult } from './load.js';

const WRITES = Number(process.env.BENCH_CLUSTER_WRITES ?? 100_000);
const CONCURRENCY = Number(process.env.BENCH_CLUSTER_CONCURRENCY ?? 2_000);
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 5000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const WARMUP_MS = Number(process.env.BENCH_WARMUP_MS ?? 1000);
const CONNECTIONS = Number(process.env.BENCH_CLUSTER_CONNECTIONS ?? 100);
/** Publishes in flight per connection in the closed loop: 1,000 in all, as bench/ingest's 100-connection case. */
const WINDOW = Math.max(1, Math.floor(1000 / CONNECTIONS));
const RATE = Number(process.env.BENCH_CLUSTER_RATE ?? 2000);
const TAKEOVER = Number(process.env.BENCH_CLUSTER_TAKEOVER ?? 1_000_000);
/** Readings per HTTP request while loading: the most one message may hold. */
const PER_REQUEST = DEFAULT_LIMITS.maxReadings;
const TAKEOVER_DEVICES = 1000;
/** HTTP requests in flight while loading. */
const LOADERS = 8;
const DEVICES = 1000;
const SHARDS_IN_PROCESS = 4;
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

/** The ack point and the change stream on Kafka, in this process. */
async function inProcess(client: KafkaClient, topics: string[]): Promise<Row[]> {
  const prefix = `tributary-bench.${Date.now().toString(36)}`;
  // A discarded first round: the first case measured would otherwise pay for JIT warm-up.
  progress('cluster: warm-up');
  await withStore((db) => EmbeddedChangeLog.open(db, { shards: SHARDS_IN_PROCESS }), (store) => drive(Math.ceil(WRITES / 10), (req) => store.write(req)));
  progress(`cluster: embedded durable writes (${fmt(WRITES)})`);
  const embedded = await withStore((db) => EmbeddedChangeLog.open(db, { shards: SHARDS_IN_PROCESS }), (store) => drive(WRITES, (req) => store.write(req)));

  progress(`cluster: telemetry topic sends with acks=all (${fmt(WRITES)})`);
  const telemetry = `${prefix}.telemetry`;
  topics.push(telemetry);
  const producer = await TelemetryProducer.open({ client, topic: telemetry, partitions: SHARDS_IN_PROCESS, replicationFactor: 1, retentionMs: 0 });
  const sends = await drive(WRITES, (req) => producer.send(req)).finally(() => producer.close());

  progress(`cluster: durable writes with the change stream on Kafka (${fmt(WRITES)})`);
  const changes = `${prefix}.changes`;
  topics.push(changes, `${changes}.meta`);
  const kafkaLog = await withStore(
    (database) => KafkaChangeLog.open({ client, database, topic: changes, shards: SHARDS_IN_PROCESS, replicationFactor: 1, retentionMs: 0, logger }),
    async (store) => {
      const t0 = performance.now();
      const r = await drive(WRITES, (req) => store.write(req));
      // Until the last record is on Kafka, not only in the outbox.
      const shards = await store.changeLog.shards();
      const onKafka = shards.reduce((n, s) => n + (s.lastSequenceNumber ?? 0), 0);
      return { ...r, allOnKafkaPerSec: onKafka / ((performance.now() - t0) / 1000) };
    },
  );
  return [
    ...row('ingest to the ack point', sends, embedded, 'Kafka acks=all vs fsynced LevelDB batch'),
    ...row('durable writes, change stream on Kafka', kafkaLog, embedded, `all records on Kafka: ${fmt(kafkaLog.allOnKafkaPerSec)}/s`),
  ];
}

/** Starts a deployment, runs `fn` on it, then stops it and deletes the topics its nodes created. */
async function withDeployment<T>(client: KafkaClient, label: string, size: number, brokers: string | undefined, fn: (d: Deployment) => Promise<T>): Promise<T> {
  progress(`cluster: starting ${brokers === undefined ? 'the embedded node' : `${size} node${size > 1 ? 's' : ''} (${label})`}`);
  const deployment = await startDeployment(label, size, brokers);
  try {
    return await fn(deployment);
  } finally {
    await deployment.stop();
    const topics = deployment.topics;
    if (topics !== undefined) for (const t of [topics.telemetry, topics.changes, `${topics.changes}.meta`]) await client.deleteTopic(t).catch(() => undefined);
  }
}

interface IngestFigures {
  rate: number;
  p50: number;
  p99: number;
  stored: number;
}

/** The MQTT load on one deployment: warm-up, RUNS closed-loop and RUNS open-loop runs, then the stored check. */
async function ingestThrough(d: Deployment): Promise<IngestFigures> {
  const expected = new Map<string, number>(Array.from({ length: CONNECTIONS }, (_, c) => [`bench-${c}`, 0]));
  let round = 0;
  const load = (mode: Pick<LoadOptions, 'window' | 'ratePerSecond' | 'durationMs'>): Promise<LoadResult> => {
    const r = round++;
    return runLoad({
      url: d.nodes.map((n) => n.mqtt),
      connections: CONNECTIONS,
      qos: 1,
      // Called once per publish, and a run resolves only when every publish has its PUBACK: the stored counts to expect.
      topic: (c) => {
        expected.set(`bench-${c}`, (expected.get(`bench-${c}`) ?? 0) + 1);
        return `devices/bench-${c}/telemetry`;
      },
      // Unique per publish: the same client id reusing a packet id with an identical payload would be taken for a QoS 1 redelivery.
      payload: (i) => JSON.stringify({ ...sampleValues(i), round: r, i }),
      ...mode,
    });
  };
  if (WARMUP_MS > 0) await load({ window: WINDOW, durationMs: WARMUP_MS });
  const closed = await repeat(RUNS, () => load({ window: WINDOW, durationMs: DURATION_MS }));
  const open = await repeat(RUNS, () => load({ ratePerSecond: RATE, durationMs: DURATION_MS }));
  await waitStored(d.nodes, expected, 'cluster: acknowledged readings');
  await checkQueries(d.nodes, ['bench-0', 'bench-1', 'bench-2'], expected);
  return { rate: median(closed.map((r) => r.rate)), p50: median(open.map((r) => r.p50)), p99: median(open.map((r) => r.p99)), stored: [...expected.values()].reduce((s, n) => s + n, 0) };
}

async function ingestRows(client: KafkaClient, brokers: string): Promise<Row[]> {
  progress(`cluster: MQTT QoS 1, ${CONNECTIONS} connections, ${RUNS}×${DURATION_MS} ms closed loop and ${RUNS}×${DURATION_MS} ms at ${fmt(RATE)}/s per deployment`);
  const embedded = await withDeployment(client, 'embedded', 1, undefined, ingestThrough);
  const rows: Row[] = [];
  for (const size of [1, 2, 3]) {
    const c = await withDeployment(client, `ingest-${size}`, size, brokers, ingestThrough);
    const nodes = `${size} node${size > 1 ? 's' : ''}`;
    rows.push(
      {
        case: `${nodes}: QoS 1 readings/s, ${CONNECTIONS} conn × ${WINDOW} in flight`,
        measured: fmt(c.rate),
        baseline: `${fmt(embedded.rate)} embedded`,
        ratio: `${fmt(c.rate / embedded.rate, 2)}×`,
        note: `PUBACK once on Kafka (acks=all) vs once fsynced; all ${fmt(c.stored)} acknowledged stored, read through every node`,
      },
      {
        case: `${nodes}: publish→PUBACK p50 / p99 at ${fmt(RATE)}/s`,
        measured: `${fmt(c.p50, 2)} / ${fmt(c.p99, 2)} ms`,
        baseline: `${fmt(embedded.p50, 2)} / ${fmt(embedded.p99, 2)} ms embedded`,
        ratio: `${fmt(c.p99 / embedded.p99, 2)}× (p99)`,
        note: '',
      },
    );
  }
  return rows;
}

/** Which node's HTTP address owns each partition, as the nodes themselves read it from the group. */
async function assignment(owners: PartitionOwners): Promise<Array<string | undefined>> {
  owners.invalidate();
  const out: Array<string | undefined> = [];
  for (let p = 0; p < SHARDS; p++) out.push(await owners.urlOf(p));
  return out;
}

/**
 * TAKEOVER readings over HTTP, in requests of PER_REQUEST readings spread over the devices
 * and nodes; the count per device. Every device maps to tk-0's partition, so that one
 * partition holds them all: the takeover measured is of TAKEOVER readings.
 */
async function loadOverHttp(nodes: readonly NodeProcess[]): Promise<Map<string, number>> {
  const requests = Math.ceil(TAKEOVER / PER_REQUEST);
  const devices: string[] = [];
  for (let d = 0; devices.length < Math.min(TAKEOVER_DEVICES, requests); d++) if (shardOf(`tk-${d}`, SHARDS) === shardOf('tk-0', SHARDS)) devices.push(`tk-${d}`);
  const expected = new Map<string, number>(devices.map((d) => [d, 0]));
  let next = 0;
  let sent = 0;
  let shown = 0;
  await Promise.all(
    Array.from({ length: LOADERS }, async () => {
      for (let k = next++; k < requests; k = next++) {
        const device = devices[k % devices.length] as string;
        const n = Math.min(PER_REQUEST, TAKEOVER - k * PER_REQUEST);
        const body = JSON.stringify(Array.from({ length: n }, (_, j) => sampleValues(k * PER_REQUEST + j)));
        const node = nodes[k % nodes.length] as NodeProcess;
        const res = await fetch(`${node.http}/v1/devices/${device}/telemetry`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
        if (res.status !== 201) throw new TributaryError('InternalError', `loading: ${node.http} answered ${res.status}: ${await res.text()}`);
        expected.set(device, (expected.get(device) ?? 0) + n);
        sent += n;
        if (sent - shown >= TAKEOVER / 10) {
          shown = sent;
          progress(`cluster: takeover: ${fmt(sent)} of ${fmt(TAKEOVER)} readings acknowledged`);
        }
      }
    }),
  );
  return expected;
}

async function takeoverRows(client: KafkaClient, brokers: string): Promise<Row[]> {
  return withDeployment(client, 'takeover', 2, brokers, async (d) => {
    const topics = d.topics as ClusterTopics;
    const owners = new PartitionOwners(client, topics.storeGroup, topics.telemetry);
    const before = await assignment(owners);
    progress(`cluster: takeover: loading ${fmt(TAKEOVER)} readings over HTTP, ${fmt(PER_REQUEST)} per request`);
    const t0 = performance.now();
    const expected = await loadOverHttp(d.nodes);
    const loadedSec = (performance.now() - t0) / 1000;
    await waitStored(d.nodes, expected, 'cluster: takeover: materializing');
    const storedSec = (performance.now() - t0) / 1000;

    const device = 'tk-0';
    const partition = shardOf(device, SHARDS);
    await checkQueries(d.nodes, [device], expected);
    const after = await assignment(owners);
    const victim = d.nodes.find((n) => n.http === after[partition]);
    const survivor = d.nodes.find((n) => n !== victim);
    if (victim === undefined || survivor === undefined) throw new TributaryError('InternalError', `takeover: no node owns partition ${partition} (${JSON.stringify(after)})`);
    // A partition the survivor never applied has no offset in its store: the survivor rebuilds it from the topic's start.
    const mode = JSON.stringify(before) === JSON.stringify(after) ? 'rebuild from the topic (the survivor never owned the partition while it was loaded)' : 'catch-up or rebuild: the assignment moved during loading';
    const inPartition = [...expected].filter(([id]) => shardOf(id, SHARDS) === partition);
    const partitionReadings = inPartition.reduce((s, [, n]) => s + n, 0);
    const lost = after.filter((url) => url === victim.http).length;
    const lostReadings = [...expected].filter(([id]) => after[shardOf(id, SHARDS)] === victim.http).reduce((s, [, n]) => s + n, 0);
    const records = (await client.offsets(topics.telemetry)).find((o) => o.partition === partition);

    progress(`cluster: takeover: SIGKILL node-${victim.index}, the owner of ${device}'s partition ${partition}`);
    const killedAt = performance.now();
    await victim.kill('SIGKILL');
    // Bounded: the session timeout, then 1 ms per loaded reading (a rebuild slower than 1,000 readings/s fails), and 2 minutes.
    const deadline = killedAt + SESSION_TIMEOUT_MS + TAKEOVER + 120_000;
    let reassignedMs: number | undefined;
    let queryableMs: number | undefined;
    const refused = { before: 0, after: 0 };
    while (queryableMs === undefined) {
      if (performance.now() > deadline) throw new TributaryError('StoreUnavailable', `takeover: ${device} not queryable on node-${survivor.index} ${fmt(performance.now() - killedAt)} ms after the kill`);
      owners.invalidate();
      if (reassignedMs === undefined && (await owners.urlOf(partition)) === survivor.http) reassignedMs = performance.now() - killedAt;
      const count = await queriedCount(survivor, device);
      if (count === undefined) refused[reassignedMs === undefined ? 'before' : 'after']++;
      else if (count === expected.get(device)) queryableMs = performance.now() - killedAt;
      else throw new TributaryError('InternalError', `takeover: node-${survivor.index} answered ${device}'s range query with ${count} of ${expected.get(device)} readings`);
      await sleep(100);
    }
    reassignedMs ??= queryableMs;
    // The rest of the partition came back with it.
    await checkQueries([survivor], inPartition.map(([id]) => id), expected);

    return [
      {
        case: `takeover: load ${fmt(TAKEOVER)} readings into 2 nodes (HTTP, arrays of ${fmt(PER_REQUEST)})`,
        measured: `${fmt(TAKEOVER / loadedSec)} readings/s acked`,
        baseline: '—',
        ratio: '—',
        note: `${fmt(expected.size)} devices; all stored and queryable ${fmt(storedSec, 1)} s after the first request`,
      },
      {
        case: `takeover: SIGKILL → the group gives partition ${partition} to the survivor`,
        measured: `${fmt(reassignedMs / 1000, 1)} s`,
        baseline: `session timeout ${SESSION_TIMEOUT}`,
        ratio: `${fmt(reassignedMs / SESSION_TIMEOUT_MS, 2)}×`,
        note: `meanwhile the survivor answered all ${refused.before} queries 503 (the dead owner refuses the forward, then the group rebalances)`,
      },
      {
        case: `takeover: SIGKILL → ${device} answers 200 with all its readings`,
        measured: `${fmt(queryableMs / 1000, 1)} s`,
        baseline: '—',
        ratio: '—',
        note: `${mode}; partition ${partition}: ${fmt(partitionReadings)} readings in ${fmt((records?.high ?? 0) - (records?.low ?? 0))} records, 503 ×${refused.after} while rebuilding; the survivor took over ${lost} partitions, ${fmt(lostReadings)} readings`,
      },
    ];
  });
}

export async function benchCluster(): Promise<void> {
  const brokers = process.env.KAFKA_BROKERS;
  if (!brokers) {
    process.stderr.write('bench cluster: set KAFKA_BROKERS=host:port (test/kafka/start-kafka.sh starts a local broker)\n');
    return;
  }
  const client = await KafkaClient.connect({ brokers: brokers.split(','), clientId: 'tributary-bench', logger });
  const topics: string[] = [];
  try {
    printTable('cluster: the ack point, in process (one local Kafka broker; baseline: single-node embedded)', await inProcess(client, topics));
    printTable('cluster: MQTT ingest through node processes (one local Kafka broker; baseline: one embedded node, same run)', await ingestRows(client, brokers));
    printTable(`cluster: partition takeover after kill -9 (2 nodes, session timeout ${SESSION_TIMEOUT})`, await takeoverRows(client, brokers));
  } finally {
    for (const t of topics) await client.deleteTopic(t).catch(() => undefined);
    await client.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await benchCluster();

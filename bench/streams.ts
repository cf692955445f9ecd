/**
 * Streams benchmark, two cases, each against a server started from `dist/` as users run it:
 *
 * 1. Latency: publish → handler invocation through the whole pipeline (MQTT → synced
 *    commit → change log → function process) at 1,000 and 10,000 readings/s offered, with
 *    publish → PUBACK at the same rate as the same-run baseline: the difference is what the
 *    stream and the function runtime add.
 * 2. Throughput: a trigger with batchSize 100 on a no-op handler, started at TRIM_HORIZON
 *    over a pre-filled log, until every record has been delivered; the baseline is reading
 *    the same log raw (`ChangeLog.read`, 100 at a time) in this process, after the server
 *    has stopped.
 *
 * `BENCH_DURATION_MS` (default 5000) sets the latency runs' length, `BENCH_STREAM_RECORDS`
 * (default 100,000) the throughput run's log size.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';
import { Database } from '../store/database.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import { shardOf } from '../streams/shard.js';
import { NODE_FLAGS } from '../core/node-flags.js';
import { runLoad } from './load.js';
import { fmt, percentile, printTable, progress, scratchDir, type Row } from './harness.js';

const DIST = fileURLToPath(new URL('..', import.meta.url));
const PROBE_DIR = fileURLToPath(new URL('../../bench/fixtures/functions', import.meta.url));
const DURATION_MS = Number(process.env['BENCH_DURATION_MS'] ?? 5000);
const RECORDS = Number(process.env['BENCH_STREAM_RECORDS'] ?? 100_000);
const SHARDS = 4;

interface Server {
  child: ChildProcess;
  mqtt: string;
  http: string;
  stop(): Promise<void>;
}

async function startServer(dataDir: string, extra: string[] = []): Promise<Server> {
  const child = spawn(
    process.execPath,
    [...NODE_FLAGS, `${DIST}bin/tributary.js`, 'start', '--mqtt-port', '0', '--http-port', '0', '--data-dir', dataDir, '--stream-shards', String(SHARDS), '--log-level', 'error', ...extra],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const [mqttUrl, httpUrl] = await new Promise<[string, string]>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /MQTT {2}(mqtt:\/\/\S+)/.exec(out);
      const h = /HTTP {2}(http:\/\/\S+)/.exec(out);
      if (m && h) resolve([m[1] as string, h[1] as string]);
    });
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  return {
    child,
    mqtt: mqttUrl,
    http: httpUrl,
    stop: () =>
      new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

async function request(base: string, method: string, path: string, body: unknown): Promise<unknown> {
  const res = await fetch(`${base}${path}`, { method, body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text === '' ? undefined : JSON.parse(text);
}

/** Every line the probe logged (`{ invokedAt, sentAt }`), paged through the logs API. */
async function probeLatencies(http: string): Promise<number[]> {
  const latencies: number[] = [];
  for (let cursor: string | null = null, pages = 0; pages < 10_000; pages++) {
    const page = (await (await fetch(`${http}/v1/functions/latency-probe/logs?limit=10000${cursor === null ? '' : `&cursor=${cursor}`}`)).json()) as {
      items: Array<{ message: string }>;
      nextCursor: string | null;
    };
    for (const line of page.items) {
      const { invokedAt, sentAt } = JSON.parse(line.message) as { invokedAt: number; sentAt: number[] };
      for (const s of sentAt) latencies.push(invokedAt - s);
    }
    cursor = page.nextCursor;
    if (cursor === null) break;
  }
  return latencies;
}

async function measureLatencyAt(rate: number): Promise<Row> {
  const dir = scratchDir('streams');
  // No per-device pacing: 10,000/s over 50 devices is 200/s each, over the default rate of
  // 100/s, and the row would measure the pacing instead of the stream.
  const server = await startServer(dir.path, ['--functions-dir', PROBE_DIR, '--device-publish-rate', '0']);
  const load = await runLoad({
    url: server.mqtt,
    connections: 50,
    ratePerSecond: rate,
    durationMs: DURATION_MS,
    qos: 1,
    topic: (d) => `devices/device-${d}/telemetry`,
    payload: () => JSON.stringify({ sentAt: Date.now(), temp: 21.5 }),
  });
  let latencies: number[] = [];
  for (const deadline = Date.now() + 20_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 200))) {
    latencies = await probeLatencies(server.http);
    if (latencies.length >= load.count) break;
  }
  await server.stop();
  dir.cleanup();
  return {
    case: `${fmt(rate)} readings/s offered: publish→handler p50 / p99`,
    measured: `${fmt(percentile(latencies, 50), 1)} / ${fmt(percentile(latencies, 99), 1)} ms`,
    baseline: `${fmt(load.p50, 1)} / ${fmt(load.p99, 1)} ms publish→PUBACK`,
    ratio: `${fmt(percentile(latencies, 99) / load.p99, 2)}× (p99)`,
    note: `${fmt(load.rate)} readings/s achieved; ${fmt(latencies.length)} of ${fmt(load.count)} seen by the handler; ms clock resolution`,
  };
}

/** One device id per shard, so that a last reading on each marks the end of every shard. */
function sentinels(): string[] {
  const ids: string[] = [];
  for (let i = 0; ids.length < SHARDS && i < 10_000; i++) {
    const id = `sentinel-${i}`;
    if (!ids.some((x) => shardOf(x, SHARDS) === shardOf(id, SHARDS))) ids.push(id);
  }
  return ids;
}

async function measureThroughput(): Promise<Row> {
  const dir = scratchDir('streams-throughput');
  const server = await startServer(dir.path);
  // Pre-fill: arrays of readings over HTTP, a few requests in flight.
  const perRequest = 500;
  let written = 0;
  const fill = async (worker: number) => {
    for (let r = worker; r * perRequest < RECORDS; r += 4) {
      const readings = Array.from({ length: Math.min(perRequest, RECORDS - r * perRequest) }, (_, i) => ({ ts: 1_700_000_000_000 + r * perRequest + i, values: { temp: 20 + (i % 10), ok: true } }));
      await request(server.http, 'POST', `/v1/devices/device-${r % 97}/telemetry`, readings);
      written += readings.length;
    }
  };
  await Promise.all([0, 1, 2, 3].map(fill));
  const ends = sentinels();
  for (const id of ends) await request(server.http, 'POST', `/v1/devices/${id}/telemetry`, { end: true });
  const total = written + ends.length;

  const code = `export async function handler(event, context) {
    for (const r of event.Records) if (r.dynamodb.Keys.deviceId.S.startsWith('sentinel-')) await context.publish('bench-observer', { name: 'end', payload: r.dynamodb.Keys.deviceId.S });
  }`;
  await request(server.http, 'PUT', '/v1/functions/noop', { code });
  const observer = mqtt.connect(server.mqtt, { reconnectPeriod: 0 });
  await new Promise<void>((resolve) => observer.once('connect', () => resolve()));
  await observer.subscribeAsync('devices/bench-observer/commands/end', { qos: 0 });
  const seen = new Set<string>();
  const allSeen = new Promise<void>((resolve) => {
    observer.on('message', (_t, payload) => {
      seen.add(JSON.parse(payload.toString()) as string);
      if (seen.size === ends.length) resolve();
    });
  });
  const t0 = performance.now();
  await request(server.http, 'POST', '/v1/functions/noop/triggers', { batchSize: 100, startingPosition: 'TRIM_HORIZON' });
  await allSeen;
  const viaHandler = total / ((performance.now() - t0) / 1000);
  await observer.endAsync(true);
  await server.stop();

  // Baseline: the same log read raw, 100 records at a time, in this process.
  const db = await Database.open(dir.path);
  const log = await EmbeddedChangeLog.open(db, { shards: SHARDS });
  const t1 = performance.now();
  let read = 0;
  for (let shard = 0; shard < SHARDS; shard++) {
    for (let after = 0; ; ) {
      const page = await log.read(shard, after, 100);
      if (page.length === 0) break;
      read += page.length;
      after = (page[page.length - 1] as { sequenceNumber: number }).sequenceNumber;
    }
  }
  const raw = read / ((performance.now() - t1) / 1000);
  await db.close();
  dir.cleanup();
  return {
    case: `trigger, batchSize 100, no-op handler, ${fmt(total)} records from TRIM_HORIZON`,
    measured: `${fmt(viaHandler)} records/s`,
    baseline: `${fmt(raw)} records/s raw ChangeLog.read (100 per read)`,
    ratio: `${fmt(viaHandler / raw, 2)}×`,
    note: `${SHARDS} shards; raw read of ${fmt(read)} records`,
  };
}

export async function benchStreams(): Promise<void> {
  const rows: Row[] = [];
  for (const rate of [1000, 10_000]) {
    progress(`streams: ${fmt(rate)} readings/s for ${DURATION_MS} ms`);
    rows.push(await measureLatencyAt(rate));
  }
  progress(`streams: throughput over ${fmt(RECORDS)} records`);
  rows.push(await measureThroughput());
  printTable('streams → functions', rows);
}

// Kept for a quick look at one case: `node dist/bench/streams.js throughput`.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const which = process.argv[2];
  const rows = which === 'throughput' ? [await measureThroughput()] : [await measureLatencyAt(Number(which ?? 1000))];
  printTable('streams → functions', rows);
}

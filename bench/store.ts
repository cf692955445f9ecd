/**
 * Store benchmarks: durable write throughput and range-query latency, each against raw
 * classic-level doing the same I/O in the same run.
 */
import { ClassicLevel } from 'classic-level';
import { Database } from '../store/database.js';
import { LevelTelemetryStore } from '../store/level-store.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import { fmt, median, percentile, printTable, progress, repeat, sampleValues, scratchDir, type Row } from './harness.js';

const DEVICES = Number(process.env.BENCH_DEVICES ?? 1000);
const WRITES = Number(process.env.BENCH_WRITES ?? 200_000);
const PER_DEVICE = Number(process.env.BENCH_PER_DEVICE ?? 1000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const START = Date.UTC(2026, 10, 1);

async function openStore(path: string) {
  const database = await Database.open(path);
  const changeLog = await EmbeddedChangeLog.open(database, { shards: 4 });
  const store = await LevelTelemetryStore.open({ database, changeLog, partitionWindowMs: 86_400_000, maxBatch: 2000, maxDelayMs: 0 });
  return { database, store };
}

/** Durable writes through the store: many concurrent single-reading requests, as ingest makes them. */
async function storeWrites(n: number): Promise<number> {
  const dir = scratchDir('store-write');
  const { database, store } = await openStore(dir.path);
  const concurrency = 4000;
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        const i = next++;
        await store.write({ deviceId: `device-${i % DEVICES}`, readings: [{ ts: START + i, values: sampleValues(i) }] });
      }
    }),
  );
  const rate = n / ((performance.now() - t0) / 1000);
  await store.close();
  await database.close();
  dir.cleanup();
  return rate;
}

/** The baseline: raw classic-level `batch()` of 1,000 puts with `sync: true`, same keys and values. */
async function rawWrites(n: number): Promise<number> {
  const dir = scratchDir('raw-write');
  const db = new ClassicLevel<string, string>(dir.path);
  await db.open();
  const t0 = performance.now();
  for (let i = 0; i < n; i += 1000) {
    const ops = [];
    for (let j = i; j < Math.min(n, i + 1000); j++) {
      ops.push({ type: 'put' as const, key: `T${Math.floor((START + j) / 86_400_000)}device-${j % DEVICES}\u0000${START + j}`, value: JSON.stringify(sampleValues(j)) });
    }
    await db.batch(ops, { sync: true });
  }
  const rate = n / ((performance.now() - t0) / 1000);
  await db.close();
  dir.cleanup();
  return rate;
}

async function queries(): Promise<Row[]> {
  const dir = scratchDir('store-query');
  const { database, store } = await openStore(dir.path);
  progress(`loading ${fmt(DEVICES * PER_DEVICE)} readings (${DEVICES} devices × ${PER_DEVICE})`);
  for (let k = 0; k < PER_DEVICE; k += 10) {
    const writes = [];
    for (let d = 0; d < DEVICES; d++) {
      const readings = Array.from({ length: 10 }, (_, j) => ({ ts: START + (k + j) * 1000, values: sampleValues(k + j) }));
      writes.push(store.write({ deviceId: `device-${d}`, readings }));
    }
    await Promise.all(writes);
  }
  const samples = 300;
  const ours: number[] = [];
  const raw: number[] = [];
  const to = START + PER_DEVICE * 1000;
  for (let i = 0; i < samples; i++) {
    const deviceId = `device-${(i * 7919) % DEVICES}`;
    let t0 = performance.now();
    const page = await store.query({ deviceId, from: START, to, order: 'desc', limit: 1000 });
    ours.push(performance.now() - t0);
    if (page.items.length !== Math.min(1000, PER_DEVICE)) throw new Error(`query returned ${page.items.length} rows`);
    // Baseline: a raw reverse iterator over the same telemetry keys, values parsed as the store must.
    const prefix = Buffer.concat([Buffer.from('T'), Buffer.alloc(4), Buffer.from(deviceId), Buffer.of(0)]);
    prefix.writeUInt32BE(Math.floor(START / 86_400_000), 1);
    t0 = performance.now();
    const it = database.db.iterator({ gte: prefix, lt: Buffer.concat([prefix.subarray(0, -1), Buffer.of(1)]), reverse: true, limit: 1000 });
    let rows = 0;
    for (;;) {
      const chunk = await it.nextv(1000);
      if (chunk.length === 0) break;
      for (const [, v] of chunk) rows += JSON.parse(v.toString()) ? 1 : 0;
    }
    await it.close();
    raw.push(performance.now() - t0);
    if (rows !== page.items.length) throw new Error(`raw scan returned ${rows} rows`);
  }
  await store.close();
  await database.close();
  dir.cleanup();
  return [
    { case: 'query last 1,000 of one device: p50', measured: `${fmt(percentile(ours, 50), 2)} ms`, baseline: `${fmt(percentile(raw, 50), 2)} ms raw iterator`, ratio: `${fmt(percentile(ours, 50) / percentile(raw, 50), 2)}×` },
    { case: 'query last 1,000 of one device: p99', measured: `${fmt(percentile(ours, 99), 2)} ms`, baseline: `${fmt(percentile(raw, 99), 2)} ms raw iterator`, ratio: `${fmt(percentile(ours, 99) / percentile(raw, 99), 2)}×`, note: 'target ≤ 1.5×' },
  ];
}

export async function benchStore(): Promise<void> {
  progress(`store: ${RUNS} runs of ${fmt(WRITES)} durable writes, store and raw`);
  const ours = await repeat(RUNS, () => storeWrites(WRITES));
  const raw = await repeat(RUNS, () => rawWrites(WRITES));
  const rows: Row[] = [
    {
      case: `durable writes, ${DEVICES} devices (readings/s, median of ${RUNS})`,
      measured: fmt(median(ours)),
      baseline: `${fmt(median(raw))} raw batch(1000) sync`,
      ratio: `${fmt(median(ours) / median(raw), 2)}×`,
      note: 'store writes data + change record + latest + registry; target ≥ 0.7×',
    },
    ...(await queries()),
  ];
  printTable('store', rows);
}

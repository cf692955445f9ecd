/**
 * Store benchmarks, each against a baseline measured in the same run: durable write
 * throughput and range-query latency (raw classic-level doing the same I/O),
 * aggregation (a raw scan of the same keys), and retention (dropping a partition of a
 * million readings: time and bytes given back; bytes on disk per reading).
 *
 * Environment: BENCH_DEVICES, BENCH_WRITES, BENCH_PER_DEVICE, BENCH_RUNS (writes and
 * queries); BENCH_AGG_READINGS (default 86,400: one day at one reading a second);
 * BENCH_DROP_READINGS (default 1,000,000) and BENCH_DROP_REMOVE_READINGS (default
 * 100,000; 0 skips the REMOVE-records case).
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ClassicLevel } from 'classic-level';
import { Database, sizingOptions } from '../store/database.js';
import { MAX_U32, partitionOf, telemetryKey } from '../store/keys.js';
import { LevelTelemetryStore, type LevelTelemetryStoreOptions } from '../store/level-store.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import { fmt, median, percentile, printTable, progress, repeat, sampleValues, scratchDir, type Row } from './harness.js';

const DEVICES = Number(process.env.BENCH_DEVICES ?? 1000);
const WRITES = Number(process.env.BENCH_WRITES ?? 200_000);
const PER_DEVICE = Number(process.env.BENCH_PER_DEVICE ?? 1000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const AGG_READINGS = Number(process.env.BENCH_AGG_READINGS ?? 86_400);
const DROP_READINGS = Number(process.env.BENCH_DROP_READINGS ?? 1_000_000);
const DROP_REMOVE_READINGS = Number(process.env.BENCH_DROP_REMOVE_READINGS ?? 100_000);
const START = Date.UTC(2026, 10, 1);
const DAY = 86_400_000;

async function openStore(path: string, opts: Partial<LevelTelemetryStoreOptions> = {}) {
  const database = await Database.open(path);
  const changeLog = await EmbeddedChangeLog.open(database, { shards: 4 });
  const store = await LevelTelemetryStore.open({ database, changeLog, partitionWindowMs: DAY, maxBatch: 2000, maxDelayMs: 0, ...opts });
  return { database, store };
}

/** Bytes of the files in a (flat) directory: LevelDB's tables, logs and manifest. */
function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((sum, name) => sum + statSync(join(dir, name)).size, 0);
}

function mb(bytes: number): string {
  return `${fmt(bytes / 1024 / 1024, 1)} MB`;
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

/** The baseline: raw classic-level `batch()` of 1,000 puts with `sync: true`, same keys and values, same write buffer. */
async function rawWrites(n: number): Promise<number> {
  const dir = scratchDir('raw-write');
  const db = new ClassicLevel<string, string>(dir.path, sizingOptions());
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

/** One day of one device at one reading a second, aggregated into 1-minute buckets, against a raw scan + parse of the same keys. */
async function aggregation(): Promise<Row[]> {
  const n = AGG_READINGS;
  const dir = scratchDir('store-aggregate');
  const { database, store } = await openStore(dir.path);
  const deviceId = 'agg-device';
  progress(`aggregation: loading ${fmt(n)} readings of one device (one a second)`);
  for (let k = 0; k < n; k += 1000) {
    await store.write({ deviceId, readings: Array.from({ length: Math.min(1000, n - k) }, (_, j) => ({ ts: START + (k + j) * 1000, values: sampleValues(k + j) })) });
  }
  // Another device in the same partition, so the scanned range is a slice of it, not all of it.
  for (let k = 0; k < n; k += 1000) {
    await store.write({ deviceId: 'agg-other', readings: Array.from({ length: Math.min(1000, n - k) }, (_, j) => ({ ts: START + (k + j) * 1000, values: sampleValues(j) })) });
  }
  const from = START;
  const to = START + n * 1000 - 1;
  const buckets = Math.ceil(n / 60);
  const runs = 15;
  const ours: number[] = [];
  const oneKey: number[] = [];
  const raw: number[] = [];
  for (let i = 0; i <= runs; i++) {
    let t0 = performance.now();
    const all = await store.aggregate({ deviceId, from, to, intervalMs: 60_000, aggs: ['avg', 'min', 'max', 'count'] });
    const tAll = performance.now() - t0;
    if (all.buckets.length !== buckets) throw new Error(`aggregate returned ${all.buckets.length} buckets, expected ${buckets}`);
    t0 = performance.now();
    const temp = await store.aggregate({ deviceId, from, to, intervalMs: 60_000, aggs: ['avg', 'min', 'max'], keys: ['temp'] });
    const tTemp = performance.now() - t0;
    if (temp.buckets.length !== buckets) throw new Error(`aggregate returned ${temp.buckets.length} buckets`);
    // Baseline: a raw iterator over the same keys, every value parsed (what any aggregation has to do at least).
    t0 = performance.now();
    let rows = 0;
    for (let p = partitionOf(from, DAY); p <= partitionOf(to, DAY); p++) {
      // Values decoded to strings natively, as the store streams them (the fastest raw way).
      const it = database.db.iterator<Buffer, string>({ gte: telemetryKey(p, deviceId, from, 0), lte: telemetryKey(p, deviceId, to, MAX_U32), valueEncoding: 'utf8' });
      for (;;) {
        const chunk = await it.nextv(4096);
        if (chunk.length === 0) break;
        for (const [, v] of chunk) rows += JSON.parse(v) ? 1 : 0;
      }
      await it.close();
    }
    const tRaw = performance.now() - t0;
    if (rows !== n) throw new Error(`raw scan returned ${rows} rows`);
    if (i === 0) continue; // warm-up
    ours.push(tAll);
    oneKey.push(tTemp);
    raw.push(tRaw);
  }
  await store.close();
  await database.close();
  dir.cleanup();
  const rate = (ms: number): string => `${fmt(n / (ms / 1000))} rows/s`;
  return [
    {
      case: `aggregate ${fmt(n)} readings → ${fmt(buckets)} 1-min buckets, all 6 keys, avg/min/max/count (median of ${runs})`,
      measured: `${fmt(median(ours), 1)} ms (${rate(median(ours))})`,
      baseline: `${fmt(median(raw), 1)} ms raw scan + parse (${rate(median(raw))})`,
      ratio: `${fmt(median(ours) / median(raw), 2)}×`,
      note: 'target < 100 ms',
    },
    {
      case: `aggregate ${fmt(n)} readings → ${fmt(buckets)} 1-min buckets, keys=temp, avg/min/max`,
      measured: `${fmt(median(oneKey), 1)} ms (${rate(median(oneKey))})`,
      baseline: `${fmt(median(raw), 1)} ms raw scan + parse`,
      ratio: `${fmt(median(oneKey) / median(raw), 2)}×`,
      note: 'target < 100 ms',
    },
  ];
}

/** Writes `n` readings spread over `devices` devices and one day starting at `dayStart`, 8 requests of 1,000 in flight. */
async function loadDay(store: LevelTelemetryStore, n: number, devices: number, dayStart: number, label: string): Promise<void> {
  const perDevice = Math.ceil(n / devices);
  const step = Math.max(1, Math.floor(DAY / perDevice));
  const requests: Array<{ deviceId: string; first: number; count: number }> = [];
  for (let d = 0; d < devices; d++) {
    for (let k = 0; k < perDevice; k += 1000) requests.push({ deviceId: `device-${d}`, first: k, count: Math.min(1000, perDevice - k) });
  }
  let next = 0;
  let written = 0;
  let reported = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < requests.length) {
        const r = requests[next++] as (typeof requests)[number];
        await store.write({ deviceId: r.deviceId, readings: Array.from({ length: r.count }, (_, j) => ({ ts: dayStart + (r.first + j) * step, values: sampleValues(r.first + j) })) });
        written += r.count;
        if (written - reported >= n / 10) {
          reported = written;
          progress(`${label}: ${fmt(written)} / ${fmt(perDevice * devices)} readings written`);
        }
      }
    }),
  );
}

/**
 * Drops a partition of DROP_READINGS readings (silently, the default) while the next
 * day's partition stays live: time taken, bytes given back, and bytes on disk per
 * reading once everything is compacted.
 */
async function retention(): Promise<Row[]> {
  const n = DROP_READINGS;
  const live = Math.ceil(n / 10);
  const dir = scratchDir('store-retention');
  const dbDir = join(dir.path, 'db');
  let now = START;
  const { database, store } = await openStore(dir.path, { retentionMs: DAY, retentionCheckMs: 0, now: () => now });
  progress(`retention: loading ${fmt(n)} readings into one day's partition and ${fmt(live)} into the next`);
  const t0 = performance.now();
  await loadDay(store, n, 100, START, 'expiring partition');
  await loadDay(store, live, 100, START + DAY, 'live partition');
  progress(`retention: loaded in ${fmt((performance.now() - t0) / 1000, 1)} s; compacting everything so sizes compare settled tables`);
  await database.db.compactRange(Buffer.of(0x00), Buffer.of(0xff));
  const readings = n + live;
  const before = dirBytes(dbDir);
  const expiringT = await store.approximatePartitionSize(partitionOf(START, DAY));
  const liveT = await store.approximatePartitionSize(partitionOf(START + DAY, DAY));
  const jsonBytes = JSON.stringify(sampleValues(1)).length;
  now = START + 2 * DAY + 1; // the first day is now wholly older than the retention; the second is not
  progress(`retention: dropping the partition of ${fmt(n)} readings`);
  const result = await store.dropExpired();
  if (result.partitions !== 1) throw new Error(`dropped ${result.partitions} partitions`);
  const after = dirBytes(dbDir);
  const liveAfter = await store.approximatePartitionSize(partitionOf(START + DAY, DAY));
  const check = await store.query({ deviceId: 'device-0', from: 0, to: START + 3 * DAY, order: 'asc', limit: 10_000 });
  if (check.items.length !== Math.ceil(live / 100)) throw new Error(`live partition holds ${check.items.length} readings of device-0 after the drop`);
  await store.close();
  await database.close();
  dir.cleanup();

  const rows: Row[] = [
    {
      case: `retention drop of one partition of ${fmt(n)} readings (silent, the default)`,
      measured: `${fmt(result.ms)} ms (${fmt(n / (result.ms / 1000))} readings/s)`,
      baseline: `${mb(before - after)} given back: dir ${mb(before)} → ${mb(after)}`,
      ratio: `${fmt((100 * (before - after)) / before, 0)}% of dir`,
      note: `clear + del P + compactRange of the range; live partition ${mb(liveT)} → ${mb(liveAfter)} (est.)`,
    },
    {
      case: `on-disk bytes per reading after compaction (${fmt(readings)} readings)`,
      measured: `${fmt(before / readings, 1)} B/reading (data dir)`,
      baseline: `${jsonBytes} B of values JSON + ~${Buffer.byteLength(telemetryKey(0, 'device-00', 0, 0))} B key`,
      ratio: `${fmt(before / readings / jsonBytes, 2)}×`,
      note: `dir includes change records; telemetry alone ~${fmt(expiringT / n, 1)} B/reading (LevelDB estimate)`,
    },
  ];
  if (DROP_REMOVE_READINGS > 0) rows.push(await retentionWithRecords(DROP_REMOVE_READINGS));
  return rows;
}

/** The same drop with `retentionRemoveRecords`: every reading leaves through the commit path with a REMOVE record. */
async function retentionWithRecords(n: number): Promise<Row> {
  const dir = scratchDir('store-retention-records');
  let now = START;
  const { database, store } = await openStore(dir.path, { retentionMs: DAY, retentionCheckMs: 0, retentionRemoveRecords: true, now: () => now });
  progress(`retention with REMOVE records: loading ${fmt(n)} readings`);
  await loadDay(store, n, 100, START, 'expiring partition (REMOVE records)');
  now = START + 2 * DAY + 1;
  const result = await store.dropExpired();
  if (result.readings !== Math.ceil(n / 100) * 100) throw new Error(`removed ${result.readings} readings`);
  await store.close();
  await database.close();
  dir.cleanup();
  return {
    case: `retention drop of one partition of ${fmt(n)} readings with REMOVE records`,
    measured: `${fmt(result.ms)} ms (${fmt(n / (result.ms / 1000))} readings/s)`,
    baseline: `${fmt(n)} REMOVE records, 1,000 per synced batch`,
    ratio: '',
    note: 'records carry the OldImage and the TTL service identity',
  };
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
    ...(await aggregation()),
    ...(await retention()),
  ];
  printTable('store', rows);
}

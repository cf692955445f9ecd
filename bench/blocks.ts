/**
 * Storage engine v2's block codec (store/chunks/block-codec.ts) on issue 19's readings,
 * against DuckDB loaded with the same readings in the same run: bytes per reading, the
 * cost of sealing (encoding) and of reading back (decoding, against JSON.parse of the same
 * readings' JSON, today's per-row cost), and one device's day in 1-minute buckets from
 * decoded blocks against DuckDB's own query. The codec is not on the write path yet
 * (ADR 0005): these are the figures it goes in with.
 *
 * Environment: BENCH_BLOCK_READINGS (default 1,000,000), BENCH_BLOCK_DEVICES (10),
 * BENCH_RUNS (3).
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { DuckDBInstance } from '@duckdb/node-api';
import { decodeBlock, decodeColumns, encodeBlock, type BlockReading } from '../store/chunks/block-codec.js';
import { fmt, median, printTable, progress, repeat, scratchDir, type Row } from './harness.js';
import { dataset } from './telemetry-dataset.js';

const READINGS = Number(process.env.BENCH_BLOCK_READINGS ?? 1_000_000);
const DEVICES = Number(process.env.BENCH_BLOCK_DEVICES ?? 10);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const START = Date.UTC(2026, 10, 1);
const DAY = 86_400_000;
const MINUTE = 60_000;

function byDevice(): Map<string, BlockReading[]> {
  const out = new Map<string, BlockReading[]>();
  for (const r of dataset({ devices: DEVICES, readings: READINGS, start: START })) {
    let rs = out.get(r.deviceId);
    if (rs === undefined) out.set(r.deviceId, (rs = []));
    rs.push({ ts: r.ts, seq: 0, values: r.values });
  }
  return out;
}

function seal(devices: Map<string, BlockReading[]>, size: number): Map<string, Buffer[]> {
  const out = new Map<string, Buffer[]>();
  for (const [id, rs] of devices) {
    const blocks: Buffer[] = [];
    for (let i = 0; i < rs.length; i += size) blocks.push(encodeBlock(rs.slice(i, i + size)));
    out.set(id, blocks);
  }
  return out;
}

/** avg/min/max/count of `temp` per minute over one day, from the blocks' `temp` columns. */
function dayBuckets(blocks: Buffer[], from: number): number {
  const buckets = new Map<number, { sum: number; min: number; max: number; count: number }>();
  for (const block of blocks) {
    const { ts, columns } = decodeColumns(block, (path) => path.length === 1 && path[0] === 'temp');
    for (const { rows, values } of columns) {
      for (let i = 0; i < rows.length; i++) {
        const t = ts[rows[i] as number] as number;
        const v = values[i];
        if (t < from || t >= from + DAY || typeof v !== 'number') continue;
        const start = t - (t % MINUTE);
        const b = buckets.get(start);
        if (b === undefined) buckets.set(start, { sum: v, min: v, max: v, count: 1 });
        else {
          b.sum += v;
          if (v < b.min) b.min = v;
          if (v > b.max) b.max = v;
          b.count++;
        }
      }
    }
  }
  return buckets.size;
}

async function duckdb(): Promise<{ bytes: number; queryMs: number[]; dir: { cleanup: () => void } }> {
  const dir = scratchDir('duckdb');
  const file = join(dir.path, 'readings.duckdb');
  const instance = await DuckDBInstance.create(file);
  const connection = await instance.connect();
  await connection.run('CREATE TABLE readings (device VARCHAR, ts BIGINT, temp DOUBLE, humidity DOUBLE, battery BIGINT, rssi BIGINT, status VARCHAR)');
  const appender = await connection.createAppender('readings');
  for (const r of dataset({ devices: DEVICES, readings: READINGS, start: START })) {
    appender.appendVarchar(r.deviceId);
    appender.appendBigInt(BigInt(r.ts));
    appender.appendDouble(r.values.temp);
    appender.appendDouble(r.values.humidity);
    appender.appendBigInt(BigInt(r.values.battery));
    appender.appendBigInt(BigInt(r.values.rssi));
    appender.appendVarchar(r.values.status);
    appender.endRow();
  }
  appender.closeSync();
  await connection.run('CHECKPOINT');
  const bytes = statSync(file).size;
  const sql = `SELECT ts // ${MINUTE} AS minute, avg(temp), min(temp), max(temp), count(temp) FROM readings WHERE device = 'sensor-0000' AND ts >= ${START} AND ts < ${START + DAY} GROUP BY minute`;
  const queryMs = await repeat(RUNS * 5, async () => {
    const t0 = performance.now();
    await connection.runAndReadAll(sql);
    return performance.now() - t0;
  });
  connection.closeSync();
  instance.closeSync();
  return { bytes, queryMs, dir };
}

export async function benchBlocks(): Promise<void> {
  progress(`generating ${fmt(READINGS)} readings of ${DEVICES} devices`);
  const devices = byDevice();
  const rows: Row[] = [];
  progress('loading the same readings into DuckDB');
  const duck = await duckdb();
  try {
    const perReading = (bytes: number): string => `${fmt(bytes / READINGS, 2)} B/reading`;
    for (const size of [1024, 4096]) {
      const encodeUs: number[] = [];
      let sealed = new Map<string, Buffer[]>();
      for (let i = 0; i < RUNS; i++) {
        const t0 = performance.now();
        sealed = seal(devices, size);
        encodeUs.push(((performance.now() - t0) * 1000) / READINGS);
      }
      const bytes = [...sealed.values()].flat().reduce((n, b) => n + b.length, 0);
      rows.push({ case: `bytes per reading, blocks of ${size}`, measured: perReading(bytes), baseline: `DuckDB file ${perReading(duck.bytes)}`, ratio: `${fmt(bytes / duck.bytes, 2)}×`, note: 'the whole block: ts, seq, shape and 5 value columns' });
      rows.push({ case: `seal (encode), blocks of ${size}`, measured: `${fmt(median(encodeUs), 2)} µs/reading`, baseline: '', ratio: '' });
      const all = [...sealed.values()].flat();
      const json = [...devices.values()].flat().map((r) => JSON.stringify(r.values));
      const decodeUs = await repeat(RUNS, async () => {
        const t0 = performance.now();
        for (const b of all) decodeBlock(b);
        return ((performance.now() - t0) * 1000) / READINGS;
      });
      const parseUs = await repeat(RUNS, async () => {
        const t0 = performance.now();
        for (const text of json) JSON.parse(text);
        return ((performance.now() - t0) * 1000) / READINGS;
      });
      rows.push({ case: `decode, blocks of ${size}`, measured: `${fmt(median(decodeUs), 2)} µs/reading`, baseline: `JSON.parse ${fmt(median(parseUs), 2)} µs/reading`, ratio: `${fmt(median(decodeUs) / median(parseUs), 2)}×` });
      const blocks = sealed.get('sensor-0000') ?? [];
      const dayMs = await repeat(RUNS * 5, async () => {
        const t0 = performance.now();
        dayBuckets(blocks, START);
        return performance.now() - t0;
      });
      rows.push({ case: `1 device, 1 day → 1-min buckets from the temp column, blocks of ${size}`, measured: `p50 ${fmt(median(dayMs), 1)} ms`, baseline: `DuckDB p50 ${fmt(median(duck.queryMs), 1)} ms`, ratio: `${fmt(median(dayMs) / median(duck.queryMs), 2)}×`, note: 'rollups (issue 19) answer this without decoding' });
    }
  } finally {
    duck.dir.cleanup();
  }
  printTable(`Storage v2 block codec — ${fmt(READINGS)} readings, ${DEVICES} devices, 1/s, 5 values`, rows);
}

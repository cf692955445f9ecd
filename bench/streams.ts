/**
 * Streams benchmark: publish → handler invocation latency through the whole pipeline
 * (MQTT → synced commit → change log → function process), with publish→PUBACK
 * latency at the same offered rate as the same-run baseline: the difference is what
 * the stream and the function runtime add.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';
import { runLoad } from './load.js';
import { fmt, percentile, printTable, progress, scratchDir, type Row } from './harness.js';

const DIST = fileURLToPath(new URL('..', import.meta.url));
const PROBE_DIR = fileURLToPath(new URL('../../bench/fixtures/functions', import.meta.url));
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 5000);

async function measureAt(rate: number): Promise<Row> {
  const dir = scratchDir('streams');
  const child = spawn(process.execPath, [`${DIST}bin/tributary.js`, 'start', '--mqtt-port', '0', '--http-port', '0', '--data-dir', dir.path, '--functions-dir', PROBE_DIR, '--log-level', 'error'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /MQTT {2}(mqtt:\/\/\S+)/.exec(out);
      if (m) resolve(m[1] as string);
    });
    child.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
  });
  const observer = mqtt.connect(url, { reconnectPeriod: 0 });
  const latencies: number[] = [];
  observer.on('message', (_t, payload) => {
    const { invokedAt, sentAt } = JSON.parse(payload.toString()) as { invokedAt: number; sentAt: number[] };
    for (const s of sentAt) latencies.push(invokedAt - s);
  });
  await new Promise<void>((resolve) => observer.once('connect', () => resolve()));
  await observer.subscribeAsync('devices/bench-observer/commands/seen', { qos: 0 });
  const load = await runLoad({
    url,
    connections: 50,
    ratePerSecond: rate,
    durationMs: DURATION_MS,
    qos: 1,
    topic: (d) => `devices/device-${d}/telemetry`,
    payload: () => JSON.stringify({ sentAt: Date.now(), temp: 21.5 }),
  });
  const deadline = Date.now() + 10_000;
  while (latencies.length < load.count && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  await observer.endAsync(true);
  await new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
  dir.cleanup();
  return {
    case: `${fmt(rate)} readings/s offered: publish→handler p50 / p99`,
    measured: `${fmt(percentile(latencies, 50), 1)} / ${fmt(percentile(latencies, 99), 1)} ms`,
    baseline: `${fmt(load.p50, 1)} / ${fmt(load.p99, 1)} ms publish→PUBACK`,
    ratio: `${fmt(percentile(latencies, 99) / load.p99, 2)}× (p99)`,
    note: `${fmt(latencies.length)} of ${fmt(load.count)} readings seen by the handler; ms clock resolution`,
  };
}

export async function benchStreams(): Promise<void> {
  const rows: Row[] = [];
  for (const rate of [1000, 5000]) {
    progress(`streams: ${fmt(rate)} readings/s for ${DURATION_MS} ms`);
    rows.push(await measureAt(rate));
  }
  printTable('streams → functions', rows);
}

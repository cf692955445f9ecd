/**
 * Ingest benchmark: durable QoS 1 readings/s and publish→PUBACK latency through
 * Tributary, against bare aedes (no storage) and, when installed, Debian's mosquitto
 * (no persistence), all started by the bench as child processes on free ports.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { runLoad, type LoadResult } from './load.js';
import { fmt, median, printTable, progress, sampleValues, scratchDir, type Row } from './harness.js';

const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 5000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const DIST = fileURLToPath(new URL('..', import.meta.url));

interface Broker {
  url: string;
  stop: () => Promise<void>;
}

function waitForLine(child: ChildProcess, re: RegExp): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let out = '';
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = re.exec(out);
      if (m) {
        child.stdout?.off('data', onData);
        resolve(m);
      }
    };
    child.stdout?.on('data', onData);
    child.once('exit', (code) => reject(new Error(`broker exited with ${code}: ${out}`)));
  });
}

function stopper(child: ChildProcess, cleanup?: () => void): () => Promise<void> {
  return () =>
    new Promise((resolve) => {
      child.once('exit', () => {
        cleanup?.();
        resolve();
      });
      child.kill('SIGTERM');
    });
}

async function startTributary(): Promise<Broker> {
  const dir = scratchDir('ingest');
  const child = spawn(process.execPath, [`${DIST}bin/tributary.js`, 'start', '--mqtt-port', '0', '--http-port', '0', '--data-dir', dir.path, '--log-level', 'error'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const m = await waitForLine(child, /MQTT {2}(mqtt:\/\/\S+)/);
  return { url: m[1] as string, stop: stopper(child, dir.cleanup) };
}

async function startBareAedes(): Promise<Broker> {
  const child = spawn(process.execPath, [`${DIST}bench/bare-aedes.js`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const m = await waitForLine(child, /PORT (\d+)/);
  return { url: `mqtt://127.0.0.1:${m[1]}`, stop: stopper(child) };
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  await new Promise((r) => server.close(r));
  return port;
}

async function startMosquitto(): Promise<Broker | undefined> {
  if (spawnSync('sh', ['-c', 'command -v mosquitto']).status !== 0) return undefined;
  const port = await freePort();
  const dir = scratchDir('mosquitto');
  const conf = `${dir.path}/mosquitto.conf`;
  (await import('node:fs')).writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\nmax_queued_messages 100000\n`);
  const child = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  // mosquitto logs to stderr once listening; poll the port instead of parsing its log.
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(true));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(false)));
    });
    if (ok) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url: `mqtt://127.0.0.1:${port}`, stop: stopper(child, dir.cleanup) };
}

const payload = (i: number) => JSON.stringify(sampleValues(i));

async function measure(start: () => Promise<Broker | undefined>, connections: number, mode: { window?: number; ratePerSecond?: number }): Promise<LoadResult[] | undefined> {
  const results: LoadResult[] = [];
  for (let r = 0; r < RUNS; r++) {
    const broker = await start();
    if (!broker) return undefined;
    try {
      results.push(await runLoad({ url: broker.url, connections, durationMs: DURATION_MS, qos: 1, topic: (d) => `devices/device-${d}/telemetry`, payload, ...mode }));
    } finally {
      await broker.stop();
    }
  }
  return results;
}

function summarize(rs: LoadResult[] | undefined): { rate: number; p99: number } | undefined {
  return rs && { rate: median(rs.map((r) => r.rate)), p99: median(rs.map((r) => r.p99)) };
}

export async function benchIngest(): Promise<void> {
  const rows: Row[] = [];
  for (const connections of [1, 100]) {
    progress(`ingest: ${connections} connections, QoS 1, closed loop, ${RUNS}×${DURATION_MS} ms per broker`);
    const window = Math.max(1, Math.floor(1000 / connections));
    const ours = summarize(await measure(startTributary, connections, { window }));
    const bare = summarize(await measure(startBareAedes, connections, { window }));
    const mosq = summarize(await measure(startMosquitto, connections, { window }));
    if (!ours || !bare) throw new Error('broker failed to start');
    rows.push({
      case: `QoS 1 readings/s, ${connections} conn × ${window} in flight`,
      measured: fmt(ours.rate),
      baseline: `${fmt(bare.rate)} bare aedes${mosq ? `; ${fmt(mosq.rate)} mosquitto` : ''}`,
      ratio: `${fmt(ours.rate / bare.rate, 2)}× aedes${mosq ? `; ${fmt(ours.rate / mosq.rate, 2)}× mosquitto` : ''}`,
      note: 'durable (synced) vs nothing stored',
    });
  }
  progress('ingest: publish→PUBACK latency at 5,000 msg/s, 100 connections');
  const ours = summarize(await measure(startTributary, 100, { ratePerSecond: 5000 }));
  const bare = summarize(await measure(startBareAedes, 100, { ratePerSecond: 5000 }));
  if (ours && bare) {
    rows.push({ case: 'publish→PUBACK p99 at 5,000 msg/s', measured: `${fmt(ours.p99, 2)} ms`, baseline: `${fmt(bare.p99, 2)} ms bare aedes`, ratio: `${fmt(ours.p99 / bare.p99, 2)}×`, note: 'target < 3 ms' });
  }
  printTable('ingest (MQTT)', rows);
}

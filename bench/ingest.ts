/**
 * Ingest benchmark: durable readings/s at QoS 1 and QoS 0 over 1, 100 and 1,000
 * connections, and publish→PUBACK latency, through Tributary, against bare aedes (no
 * storage) and, when installed, Debian's mosquitto (no persistence), all started by the
 * bench as child processes on free ports. Also the
 * broker's CPU per reading (from /proc/<pid>/stat) and the load generator's, the memory
 * of many idle connections, and how long a reconnect storm takes.
 *
 * Tributary runs with `--device-publish-rate 0`: one connection here is one device with
 * up to 1,000 publishes in flight, far over the default per-device rate, and this
 * measures the durable write path, not the pacing. Its connection limit is raised above
 * the idle-connection count (bare aedes and mosquitto have none).
 *
 * Every measured run follows an uncounted warm-up on the same broker process
 * (`BENCH_WARMUP_MS`, default 1 s), so that the figures are steady state for all three.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, fdatasyncSync, openSync, readFileSync, writeSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { generate } from 'mqtt-packet';
import { NODE_FLAGS } from '../core/node-flags.js';
import { runLoad, type LoadResult } from './load.js';
import { fmt, median, percentile, printTable, progress, sampleValues, scratchDir, type Row } from './harness.js';

const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 5000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
/** Load before each measured run, not counted: JIT warm-up and the first files of a fresh database would otherwise land in the p99. */
const WARMUP_MS = Number(process.env.BENCH_WARMUP_MS ?? 1000);
const IDLE_CONNECTIONS = Number(process.env.BENCH_IDLE_CONNECTIONS ?? 10_000);
/**
 * One long run on one database: the short runs start on an empty database whose writes
 * mostly stay in LevelDB's write buffer, so compaction (a large share of a durable
 * reading's cost) is only paid in full when the load lasts. 0 skips it.
 */
const SUSTAINED_MS = Number(process.env.BENCH_SUSTAINED_MS ?? 45_000);
const DIST = fileURLToPath(new URL('..', import.meta.url));
const TICKS_PER_SECOND = 100; // USER_HZ on Linux

interface Broker {
  url: string;
  port: number;
  pid: number;
  stop: () => Promise<void>;
  /** Secured mode: the password (secret) of each provisioned client id. */
  secrets?: Map<string, string>;
  /** Tributary: its Prometheus endpoint. */
  metricsUrl?: string;
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

function broker(url: string, child: ChildProcess, cleanup?: () => void): Broker {
  return { url, port: Number(new URL(url).port), pid: child.pid as number, stop: stopper(child, cleanup) };
}

function spawnTributary(dir: string, extra: string[] = []): ChildProcess {
  return spawn(
    process.execPath,
    [...NODE_FLAGS, `${DIST}bin/tributary.js`, 'start', '--mqtt-port', '0', '--http-port', '0', '--data-dir', dir, '--log-level', 'error', '--device-publish-rate', '0', '--mqtt-max-connections', String(2 * IDLE_CONNECTIONS), ...extra],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
}

async function startTributary(): Promise<Broker> {
  const dir = scratchDir('ingest');
  const child = spawnTributary(dir.path);
  const m = await waitForLine(child, /MQTT {2}(mqtt:\/\/\S+)\n {2}HTTP {2}(http:\/\/\S+)/);
  return { ...broker(m[1] as string, child, dir.cleanup), metricsUrl: `${m[2] as string}/metrics` };
}

/** Tributary in secured mode with the idle-connection devices provisioned over the API (not timed). */
async function startTributarySecured(): Promise<Broker> {
  const dir = scratchDir('ingest-secured');
  const child = spawnTributary(dir.path, ['--secure', 'true']);
  const m = await waitForLine(child, /MQTT {2}(mqtt:\/\/\S+)\n {2}HTTP {2}(http:\/\/\S+)[\s\S]*admin API key \(shown once\): (\S+)/);
  const b = broker(m[1] as string, child, dir.cleanup);
  const [http, key] = [m[2] as string, m[3] as string];
  const secrets = new Map<string, string>();
  const ids = Array.from({ length: IDLE_CONNECTIONS }, (_, i) => `idle-${i}`);
  progress(`ingest: provisioning ${fmt(ids.length)} devices`);
  for (let i = 0; i < ids.length; i += 50) {
    await Promise.all(
      ids.slice(i, i + 50).map(async (id) => {
        const res = await fetch(`${http}/v1/devices/${id}/credentials`, { method: 'POST', headers: { authorization: `Bearer ${key}` } });
        if (res.status !== 201) throw new Error(`provisioning ${id}: HTTP ${res.status} ${await res.text()}`);
        secrets.set(id, ((await res.json()) as { secret: string }).secret);
      }),
    );
  }
  return { ...b, secrets };
}

async function startBareAedes(): Promise<Broker> {
  const child = spawn(process.execPath, [...NODE_FLAGS, `${DIST}bench/bare-aedes.js`], { stdio: ['ignore', 'pipe', 'inherit'] });
  const m = await waitForLine(child, /PORT (\d+)/);
  return broker(`mqtt://127.0.0.1:${m[1]}`, child);
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
  writeFileSync(conf, `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\nmax_queued_messages 100000\nmax_connections -1\nlog_type error\nlog_type warning\n`);
  // Errors and warnings only, straight to our stderr: a pipe nobody reads filled up with
  // a line per connection and froze mosquitto mid-run.
  const child = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'inherit'] });
  // Poll the port to know it is listening (its log says so only at a level we leave out).
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(true));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(false)));
    });
    if (ok) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return broker(`mqtt://127.0.0.1:${port}`, child, dir.cleanup);
}

/** CPU time (user + system) of a process so far, in µs. */
function cpuMicros(pid: number): number {
  // Fields 14 and 15 of /proc/<pid>/stat, counted after the ")" that ends the command name.
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return ((Number(fields[11]) + Number(fields[12])) * 1e6) / TICKS_PER_SECOND;
}

function rssKb(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

const payload = (i: number) => JSON.stringify(sampleValues(i));

interface Measured extends LoadResult {
  /** Broker CPU per acknowledged publish, µs. */
  brokerUs: number;
  /** Load generator CPU per acknowledged publish, µs. */
  generatorUs: number;
  /** Tributary: its synced commits during the run (`tributary_store_commit_seconds`). */
  commits?: CommitFigures;
}

interface CommitFigures {
  perSecond: number;
  /** Upper bounds of the histogram buckets holding the median and the 99th percentile, ms. */
  p50: number;
  p99: number;
}

/** Cumulative bucket counts of `tributary_store_commit_seconds`, by upper bound in seconds. */
async function commitBuckets(metricsUrl: string): Promise<Map<number, number>> {
  const text = await (await fetch(metricsUrl)).text();
  const buckets = new Map<number, number>();
  for (const m of text.matchAll(/^tributary_store_commit_seconds_bucket\{le="([^"]+)"\} (\d+)$/gm)) buckets.set(Number(m[1]), Number(m[2]));
  return buckets;
}

function commitFigures(before: Map<number, number>, after: Map<number, number>, seconds: number): CommitFigures {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const cumulative = bounds.map((le) => (after.get(le) ?? 0) - (before.get(le) ?? 0));
  const total = cumulative[cumulative.length - 1] ?? 0;
  const bound = (q: number) => 1000 * (bounds[cumulative.findIndex((c) => c >= q * total)] ?? Number.NaN);
  return { perSecond: total / seconds, p50: bound(0.5), p99: bound(0.99) };
}

async function measure(
  start: () => Promise<Broker | undefined>,
  connections: number,
  mode: { window?: number; ratePerSecond?: number; qos?: 0 | 1 },
  runs = RUNS,
  durationMs = DURATION_MS,
): Promise<Measured[] | undefined> {
  const results: Measured[] = [];
  for (let r = 0; r < runs; r++) {
    const b = await start();
    if (!b) return undefined;
    try {
      const options = { url: b.url, connections, qos: mode.qos ?? 1, topic: (d: number) => `devices/device-${d}/telemetry`, payload, window: mode.window, ratePerSecond: mode.ratePerSecond };
      if (WARMUP_MS > 0) await runLoad({ ...options, durationMs: WARMUP_MS });
      const buckets0 = b.metricsUrl === undefined ? undefined : await commitBuckets(b.metricsUrl);
      const cpu0 = cpuMicros(b.pid);
      const gen0 = process.cpuUsage();
      const load = await runLoad({ ...options, durationMs });
      const gen = process.cpuUsage(gen0);
      const measured: Measured = { ...load, brokerUs: (cpuMicros(b.pid) - cpu0) / load.count, generatorUs: (gen.user + gen.system) / load.count };
      if (b.metricsUrl !== undefined && buckets0 !== undefined) measured.commits = commitFigures(buckets0, await commitBuckets(b.metricsUrl), durationMs / 1000);
      results.push(measured);
    } finally {
      await b.stop();
    }
  }
  return results;
}

function summarize(rs: Measured[] | undefined): { rate: number; p99: number; brokerUs: number; generatorUs: number; commits?: CommitFigures } | undefined {
  if (!rs) return undefined;
  const summary = { rate: median(rs.map((r) => r.rate)), p99: median(rs.map((r) => r.p99)), brokerUs: median(rs.map((r) => r.brokerUs)), generatorUs: median(rs.map((r) => r.generatorUs)) };
  const commits = rs.flatMap((r) => (r.commits === undefined ? [] : [r.commits]));
  if (commits.length === 0) return summary;
  return { ...summary, commits: { perSecond: median(commits.map((c) => c.perSecond)), p50: median(commits.map((c) => c.p50)), p99: median(commits.map((c) => c.p99)) } };
}

/**
 * The disk's part of a durable acknowledgement: 4 KiB appends, each followed by
 * fdatasync, paced at `perSecond` (about the group-commit rate at 5,000 msg/s) in a
 * scratch directory on the file system the brokers' databases use. No broker can
 * acknowledge durably faster than this; its tail is every durable broker's tail too.
 */
function fdatasyncLatencies(durationMs: number, perSecond: number): { p50: number; p99: number; p999: number; max: number } {
  const dir = scratchDir('fdatasync');
  const fd = openSync(`${dir.path}/log`, 'w');
  const block = Buffer.alloc(4096, 0x61);
  const times: number[] = [];
  try {
    const start = performance.now();
    for (let i = 0; performance.now() - start < durationMs; i++) {
      const t0 = performance.now();
      writeSync(fd, block);
      fdatasyncSync(fd);
      times.push(performance.now() - t0);
      // Busy-wait to the next slot: a timer's resolution is coarser than the interval.
      while (performance.now() - start < ((i + 1) * 1000) / perSecond);
    }
  } finally {
    closeSync(fd);
    dir.cleanup();
  }
  return { p50: percentile(times, 50), p99: percentile(times, 99), p999: percentile(times, 99.9), max: Math.max(...times) };
}

/**
 * One raw MQTT connection (a CONNECT, no keepalive), far lighter than an mqtt.js client so
 * that one process can hold thousands. Like a device, it tries again (after a random pause
 * of up to 500 ms) when the connection fails or closes before its CONNACK; resolves at the
 * CONNACK.
 */
async function rawConnect(port: number, clientId: string, password?: string): Promise<Socket> {
  const login = password === undefined ? {} : { username: clientId, password: Buffer.from(password) };
  for (let attempt = 1; ; attempt++) {
    const socket = await new Promise<Socket | undefined>((resolve) => {
      const s = connect({ host: '127.0.0.1', port });
      s.setNoDelay(true);
      const fail = () => {
        s.destroy();
        resolve(undefined);
      };
      s.once('error', fail);
      s.once('close', fail);
      s.once('connect', () => s.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId, keepalive: 0, ...login })));
      s.once('data', (d: Buffer) => {
        if (d[0] !== 0x20 || d[3] !== 0) return fail();
        s.off('error', fail);
        s.off('close', fail);
        s.on('error', () => {});
        resolve(s);
      });
    });
    if (socket !== undefined) return socket;
    if (attempt === 20) throw new Error(`${clientId}: no CONNACK after ${attempt} attempts`);
    await new Promise((r) => setTimeout(r, Math.random() * 500));
  }
}

/** Connects `n` raw clients at once; resolves with the sockets and how long until the last CONNACK. */
async function connectAll(port: number, n: number, prefix: string, secrets?: Map<string, string>): Promise<{ sockets: Socket[]; ms: number }> {
  const t0 = performance.now();
  const sockets = await Promise.all(Array.from({ length: n }, (_, i) => rawConnect(port, `${prefix}-${i}`, secrets?.get(`${prefix}-${i}`))));
  return { sockets, ms: performance.now() - t0 };
}

function closeAll(sockets: Socket[]): Promise<void> {
  return Promise.all(sockets.map((s) => new Promise<void>((r) => (s.destroyed ? r() : (s.once('close', () => r()), s.destroy()))))).then(() => undefined);
}

interface ConnectionFigures {
  /** RSS per idle connection, KB. */
  kbPerConnection: number;
  /** All connecting at once on an idle broker, ms. */
  firstMs: number;
  /** All dropped and reconnecting at once (same client ids), ms. */
  reconnectMs: number;
}

async function connectionFigures(start: () => Promise<Broker | undefined>): Promise<ConnectionFigures | undefined> {
  const b = await start();
  if (!b) return undefined;
  try {
    await closeAll((await connectAll(b.port, 50, 'idle', b.secrets)).sockets);
    const before = rssKb(b.pid);
    const first = await connectAll(b.port, IDLE_CONNECTIONS, 'idle', b.secrets);
    // Let the broker settle (and collect what connecting left behind) before reading RSS.
    await new Promise((r) => setTimeout(r, 2000));
    const kbPerConnection = (rssKb(b.pid) - before) / IDLE_CONNECTIONS;
    await closeAll(first.sockets);
    const again = await connectAll(b.port, IDLE_CONNECTIONS, 'idle', b.secrets);
    await closeAll(again.sockets);
    return { kbPerConnection, firstMs: first.ms, reconnectMs: again.ms };
  } finally {
    await b.stop();
  }
}

export async function benchIngest(): Promise<void> {
  const rows: Row[] = [];
  let bare100: number | undefined;
  for (const [qos, connections] of [[1, 1], [1, 100], [1, 1000], [0, 1], [0, 100], [0, 1000]] as const) {
    progress(`ingest: ${connections} connections, QoS ${qos}, closed loop, ${RUNS}×${DURATION_MS} ms per broker`);
    const window = Math.max(1, Math.floor(1000 / connections));
    const ours = summarize(await measure(startTributary, connections, { window, qos }));
    const bare = summarize(await measure(startBareAedes, connections, { window, qos }));
    const mosq = summarize(await measure(startMosquitto, connections, { window, qos }));
    if (!ours || !bare) throw new Error('broker failed to start');
    if (qos === 1 && connections === 100) bare100 = bare.rate;
    rows.push({
      case: `QoS ${qos} readings/s, ${connections} conn × ${window} ${qos === 1 ? 'in flight' : 'writes pending'}`,
      measured: fmt(ours.rate),
      baseline: `${fmt(bare.rate)} bare aedes${mosq ? `; ${fmt(mosq.rate)} mosquitto` : ''}`,
      ratio: `${fmt(ours.rate / bare.rate, 2)}× aedes${mosq ? `; ${fmt(ours.rate / mosq.rate, 2)}× mosquitto` : ''}`,
      note: qos === 1 ? 'durable (synced) vs nothing stored; targets ≥ 0.8× aedes, ≥ 1.0× mosquitto' : 'until a QoS 1 PUBLISH sent after them is acknowledged on every connection (bench/load.ts)',
    });
    rows.push({
      case: `broker CPU µs per reading, QoS ${qos}, ${connections} conn`,
      measured: fmt(ours.brokerUs, 1),
      baseline: `${fmt(bare.brokerUs, 1)} bare aedes${mosq ? `; ${fmt(mosq.brokerUs, 1)} mosquitto` : ''}`,
      ratio: `${fmt(ours.brokerUs / bare.brokerUs, 2)}× aedes`,
      note: `load generator: ${fmt(ours.generatorUs, 1)} µs/reading (tributary run), ${fmt(bare.generatorUs, 1)} (aedes run)`,
    });
  }
  if (SUSTAINED_MS > 0 && bare100 !== undefined) {
    progress(`ingest: sustained, 100 connections × 10 in flight for ${fmt(SUSTAINED_MS / 1000)} s on one database`);
    const long = summarize(await measure(startTributary, 100, { window: 10 }, 1, SUSTAINED_MS));
    if (long) {
      rows.push({
        case: `QoS 1 readings/s sustained ${fmt(SUSTAINED_MS / 1000)} s, 100 conn × 10 in flight`,
        measured: `${fmt(long.rate)} (${fmt(long.brokerUs, 1)} µs CPU/reading)`,
        baseline: `${fmt(bare100)} bare aedes (short runs above)`,
        ratio: `${fmt(long.rate / bare100, 2)}× aedes`,
        note: 'one run: LevelDB compaction included',
      });
    }
  }
  progress('ingest: publish→PUBACK latency at 5,000 msg/s, 100 connections');
  const ours = summarize(await measure(startTributary, 100, { ratePerSecond: 5000 }));
  const bare = summarize(await measure(startBareAedes, 100, { ratePerSecond: 5000 }));
  if (ours && bare) {
    rows.push({ case: 'publish→PUBACK p99 at 5,000 msg/s', measured: `${fmt(ours.p99, 2)} ms`, baseline: `${fmt(bare.p99, 2)} ms bare aedes`, ratio: `${fmt(ours.p99 / bare.p99, 2)}×`, note: 'target < 3 ms' });
    if (ours.commits) {
      const c = ours.commits;
      rows.push({
        case: 'its group commits (write + fdatasync, in the broker) at 5,000 msg/s',
        measured: `p50 ≤ ${fmt(c.p50, 2)} · p99 ≤ ${fmt(c.p99, 2)} ms; ${fmt(c.perSecond)}/s, ${fmt(ours.rate / c.perSecond, 1)} readings each`,
        baseline: '—',
        ratio: '—',
        note: 'tributary_store_commit_seconds (bucket bounds); a publish waits for the commit in flight, then for its own',
      });
    }
  }
  progress('ingest: the disk alone, fdatasync of 4 KiB appends at 1,250/s for 10 s');
  const disk = fdatasyncLatencies(10_000, 1250);
  rows.push({
    case: 'fdatasync alone, 4 KiB appends at 1,250/s (the floor of a durable PUBACK)',
    measured: `p50 ${fmt(disk.p50, 2)} · p99 ${fmt(disk.p99, 2)} · p99.9 ${fmt(disk.p999, 2)} · max ${fmt(disk.max, 1)} ms`,
    baseline: '—',
    ratio: '—',
    note: 'a stall here holds the batch in flight and every publish queued behind it',
  });
  progress(`ingest: ${fmt(IDLE_CONNECTIONS)} idle connections, then all reconnecting at once`);
  const oursConn = await connectionFigures(startTributary);
  const securedConn = await connectionFigures(startTributarySecured);
  const bareConn = await connectionFigures(startBareAedes);
  if (oursConn && bareConn) {
    rows.push({
      case: `RSS per idle connection (${fmt(IDLE_CONNECTIONS)} connected)`,
      measured: `${fmt(oursConn.kbPerConnection, 1)} KB`,
      baseline: `${fmt(bareConn.kbPerConnection, 1)} KB bare aedes`,
      ratio: `${fmt(oursConn.kbPerConnection / bareConn.kbPerConnection, 2)}×`,
      note: 'target ≤ 50 KB',
    });
    rows.push({
      case: `${fmt(IDLE_CONNECTIONS)} devices (re)connecting at once: until all CONNACKed`,
      measured: `${fmt(oursConn.reconnectMs)} ms (first connect ${fmt(oursConn.firstMs)} ms)`,
      baseline: `${fmt(bareConn.reconnectMs)} ms bare aedes (first ${fmt(bareConn.firstMs)} ms)`,
      ratio: `${fmt(oursConn.reconnectMs / bareConn.reconnectMs, 2)}×`,
      note: 'clean sessions, no keepalive, open mode',
    });
  }
  if (securedConn && bareConn) {
    rows.push({
      case: `${fmt(IDLE_CONNECTIONS)} authenticated devices (re)connecting at once (secured mode)`,
      measured: `${fmt(securedConn.reconnectMs)} ms (first connect ${fmt(securedConn.firstMs)} ms)`,
      baseline: `${fmt(bareConn.reconnectMs)} ms bare aedes, anonymous (first ${fmt(bareConn.firstMs)} ms)`,
      ratio: `${fmt(securedConn.reconnectMs / bareConn.reconnectMs, 2)}×`,
      note: 'username = client id, secret checked (SHA-256, constant time) on every CONNECT',
    });
  }
  printTable('ingest (MQTT)', rows);
}

/**
 * Tributary node processes for bench/cluster: `tributary start` from dist with the
 * environment docker-compose gives a cluster node (test/cluster/node-env.ts), N of them on
 * one Kafka under a fresh topic prefix — or the same node without Kafka, the embedded
 * baseline. Also the HTTP reads the benchmark checks its figures with.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { clusterTopics, type ClusterTopics } from '../cluster/cluster-node.js';
import { TributaryError } from '../core/errors.js';
import { NODE_FLAGS } from '../core/node-flags.js';
import { parseDuration } from '../core/time.js';
import { shardOf } from '../streams/shard.js';
import { clusterNodeEnv, SHARED_NODE_ENV } from '../test/cluster/node-env.js';
import { freePort, waitFor } from '../test/helpers.js';
import { fmt, progress, scratchDir } from './harness.js';

const CLI = fileURLToPath(new URL('../bin/tributary.js', import.meta.url));
export const SHARDS = Number(SHARED_NODE_ENV.TRIBUTARY_STREAM_SHARDS);
/** The compose value, unless the bench's own environment sets another (Kafka refuses less than its group.min.session.timeout.ms, 6 s by default). */
export const SESSION_TIMEOUT = process.env.TRIBUTARY_KAFKA_SESSION_TIMEOUT || SHARED_NODE_ENV.TRIBUTARY_KAFKA_SESSION_TIMEOUT;
export const SESSION_TIMEOUT_MS = parseDuration(SESSION_TIMEOUT, 'TRIBUTARY_KAFKA_SESSION_TIMEOUT');
/** Starting a node and a group settling after it, on a loaded 2-core machine. */
const START_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 30_000;
/** Output kept per process, for the error when one fails. */
const OUTPUT_TAIL = 16_384;

export interface NodeProcess {
  /** 1-based, as node-<index> in docker-compose.yml. */
  index: number;
  http: string;
  mqtt: string;
  pid: number;
  /** Sends `signal` (unless it has exited) and resolves once the process is gone. */
  kill: (signal: NodeJS.Signals) => Promise<void>;
}

export interface Deployment {
  /** Kafka names of a cluster; undefined for the embedded node. */
  topics: ClusterTopics | undefined;
  nodes: NodeProcess[];
  /** SIGTERM to every node still running (SIGKILL past a bound), then their data directories go. */
  stop: () => Promise<void>;
}

/** One device id per partition, so that a node answering for all of them answers for every partition. */
const PROBES: string[] = (() => {
  const byShard = new Map<number, string>();
  for (let k = 0; byShard.size < SHARDS; k++) {
    const shard = shardOf(`probe-${k}`, SHARDS);
    if (!byShard.has(shard)) byShard.set(shard, `probe-${k}`);
  }
  return [...byShard.values()];
})();

/** A topic prefix no other run uses (as test/kafka/broker.ts `uniqueTopic`, which needs vitest). */
function uniquePrefix(label: string): string {
  return `tributary-bench.${label}.${Date.now().toString(36)}-${randomBytes(4).toString('hex')}.`;
}

async function startNode(index: number, env: Record<string, string>): Promise<NodeProcess> {
  // Unpaced: one bench connection carries many devices' worth of publishes (as bench/ingest.ts).
  const child = spawn(process.execPath, [...NODE_FLAGS, CLI, 'start', '--log-level', 'warn', '--device-publish-rate', '0'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let out = '';
  const keep = (d: Buffer) => (out = (out + d.toString()).slice(-OUTPUT_TAIL));
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const node: NodeProcess = { index, http: `http://127.0.0.1:${env.TRIBUTARY_HTTP_PORT}`, mqtt: `mqtt://127.0.0.1:${env.TRIBUTARY_MQTT_PORT}`, pid: child.pid as number, kill: (signal) => kill(child, signal, exited) };
  try {
    await waitFor(() => {
      if (child.exitCode !== null) throw new TributaryError('InternalError', `node-${index} exited with ${child.exitCode}: ${out}`);
      return out.includes('tributary is running');
    }, START_TIMEOUT_MS, `node-${index} to start`);
  } catch (err) {
    await node.kill('SIGKILL');
    throw err;
  }
  return node;
}

async function kill(child: ChildProcess, signal: NodeJS.Signals, exited: Promise<void>): Promise<void> {
  if (child.exitCode === null && child.signalCode === null) child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await exited;
  clearTimeout(timer);
}

/**
 * Starts `size` cluster nodes on `brokers` (a fresh topic prefix) one at a time — the first
 * creates the topics the others check — and waits until every node answers for every
 * partition. Without `brokers`: one embedded node, the same environment but no Kafka.
 */
export async function startDeployment(label: string, size: number, brokers?: string): Promise<Deployment> {
  const dir = scratchDir(`cluster-${label}`);
  const prefix = uniquePrefix(label);
  const nodes: NodeProcess[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((n) => n.kill('SIGTERM')));
    dir.cleanup();
  };
  try {
    for (let index = 1; index <= size; index++) {
      const env = clusterNodeEnv({ index, brokers: brokers ?? '', dataDir: join(dir.path, `node-${index}`), httpPort: await freePort(), mqttPort: await freePort(), topicPrefix: prefix });
      // No handler processes (compose runs functions/examples): the figures are of ingest, store and stream.
      env.TRIBUTARY_FUNCTIONS_DIR = '';
      env.TRIBUTARY_KAFKA_SESSION_TIMEOUT = SESSION_TIMEOUT;
      nodes.push(await startNode(index, env));
    }
    await waitFor(async () => {
      for (const node of nodes) for (const device of PROBES) if ((await readingsOf(node, device)) === undefined) return false;
      return true;
    }, START_TIMEOUT_MS, `every ${label} node to answer for every partition`);
  } catch (err) {
    await stop();
    throw err;
  }
  return { topics: brokers === undefined ? undefined : clusterTopics(prefix), nodes, stop };
}

async function getJson(url: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url);
  return { status: res.status, body: (await res.json()) as unknown };
}

/** What one node answers for `path`: the body on 200, null on 404 (no such device), undefined on 503 (partition moving). */
async function ownerRead(node: NodeProcess, path: string): Promise<unknown> {
  const { status, body } = await getJson(`${node.http}${path}`);
  if (status === 200) return body;
  if (status === 404) return null;
  if (status === 503) return undefined;
  throw new TributaryError('InternalError', `${node.http}${path} answered ${status}: ${JSON.stringify(body)}`);
}

/** The device's readings written, from its registry entry; undefined while its partition cannot answer. */
export async function readingsOf(node: NodeProcess, deviceId: string): Promise<number | undefined> {
  const body = await ownerRead(node, `/v1/devices/${encodeURIComponent(deviceId)}`);
  return body === undefined ? undefined : body === null ? 0 : (body as { readings: number }).readings;
}

/** The device's readings as a range query returns them, page by page; undefined while its partition cannot answer. */
export async function queriedCount(node: NodeProcess, deviceId: string): Promise<number | undefined> {
  let count = 0;
  for (let cursor: string | null = ''; cursor !== null; ) {
    const page = await ownerRead(node, `/v1/devices/${encodeURIComponent(deviceId)}/telemetry?from=0&to=now&limit=10000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    if (page === undefined) return undefined;
    if (page === null) return 0;
    const { items, nextCursor } = page as { items: unknown[]; nextCursor: string | null };
    count += items.length;
    cursor = nextCursor;
  }
  return count;
}

/**
 * Waits until every device's registry holds exactly its expected count of readings (read
 * through the nodes in turn, so most answers are forwarded), printing progress while it
 * waits. A device past its count fails at once: a reading was stored twice.
 */
export async function waitStored(nodes: readonly NodeProcess[], expected: ReadonlyMap<string, number>, what: string): Promise<void> {
  const total = [...expected.values()].reduce((s, n) => s + n, 0);
  // 1 ms per reading and 2 minutes: fails only below 1,000 readings/s, whatever the size.
  const timeoutMs = 120_000 + total;
  const deadline = performance.now() + timeoutMs;
  let shown = performance.now();
  let done = 0;
  for (const [device, count] of expected) {
    const node = nodes[done % nodes.length] as NodeProcess;
    for (;;) {
      const stored = await readingsOf(node, device);
      if (stored === count) break;
      if (stored !== undefined && stored > count) throw new TributaryError('InternalError', `${what}: ${device} holds ${stored} readings, ${count} were acknowledged`);
      if (performance.now() > deadline) throw new TributaryError('StoreUnavailable', `${what}: ${device} holds ${stored ?? '(503)'} of ${count} readings after ${fmt(timeoutMs)} ms`);
      if (performance.now() - shown > 5_000) {
        shown = performance.now();
        progress(`${what}: ${fmt(done)} of ${fmt(expected.size)} devices hold all their readings`);
      }
      await sleep(200);
    }
    done++;
  }
}

/** Every node's range query for each device returns its expected count (the owner answers itself, the others forward). */
export async function checkQueries(nodes: readonly NodeProcess[], devices: readonly string[], expected: ReadonlyMap<string, number>): Promise<void> {
  for (const device of devices) {
    for (const node of nodes) {
      const count = await queriedCount(node, device);
      if (count !== expected.get(device)) throw new TributaryError('InternalError', `${node.http}: the range query of ${device} returned ${count ?? '503'} readings, ${expected.get(device)} are stored`);
    }
  }
}

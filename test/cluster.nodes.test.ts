/**
 * Cluster mode end to end (ADR 0002): three `tributary start` processes on one real Kafka,
 * started with the environment docker-compose.yml gives its nodes (test/cluster/node-env.ts),
 * on loopback. Readings published to any node are queryable from any node; a node killed
 * with SIGKILL under QoS 1 load loses no acknowledged reading, stores none twice, and the
 * survivors run the handler over every record; a restarted node catches up without
 * duplicates.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { KafkaClient } from '../cluster/kafka-client.js';
import { decodeRecord } from '../streams/codec.js';
import { clusterNodeEnv } from './cluster/node-env.js';
import { tempDir, waitFor } from './helpers.js';
import { describeWithKafka, uniqueTopic } from './kafka/broker.js';
import { startServerOnFreePorts, startServerProcess, type ServerProcess } from './process.js';

const NODES = 3;
/** The session timeout (10 s) plus a rebuild, with room for a loaded 2-core machine. */
const TAKEOVER_MS = 90_000;

/** One handler invocation as the recorder function reports it. */
interface Invocation {
  pid: number;
  rows: Array<{ d: string; n: number; e: string }>;
}

interface Node {
  env: Record<string, string>;
  process: ServerProcess | undefined;
  http: string;
  mqtt: string;
}

async function getJson(url: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url);
  return { status: res.status, body: (await res.json()) as unknown };
}

/** The `n` values of every stored reading of a device, as one node answers (undefined while it cannot answer). */
async function storedValues(node: Node, deviceId: string): Promise<number[] | undefined> {
  const { status, body } = await getJson(`${node.http}/v1/devices/${deviceId}/telemetry?from=0&to=now&limit=10000`);
  if (status === 404) return [];
  if (status !== 200) return undefined;
  return (body as { items: Array<{ values: { n: number } }> }).items.map((r) => r.values.n);
}

describeWithKafka('cluster: three node processes on one Kafka', (brokers) => {
  const prefix = `${uniqueTopic('cluster')}.`;
  const work = tempDir('tributary-cluster-');
  const fnDir = join(work.path, 'functions');
  const nodes: Node[] = [];
  const invocations: Invocation[] = [];
  let collector: Server | undefined;

  beforeAll(async () => {
    mkdirSync(fnDir);
    // Each invocation posts its records to a collector here (function processes may not write files).
    collector = createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        invocations.push(JSON.parse(body) as Invocation);
        res.end('{}');
      });
    });
    await new Promise<void>((resolve) => collector?.listen(0, '127.0.0.1', resolve));
    const collectorUrl = `http://127.0.0.1:${(collector.address() as AddressInfo).port}/`;
    writeFileSync(
      join(fnDir, 'recorder.mjs'),
      `export async function handler(event) {
  const rows = event.Records.map((r) => ({ d: r.dynamodb.Keys.deviceId.S, n: Number(r.dynamodb.NewImage?.n?.N), e: r.eventName }));
  const res = await fetch(${JSON.stringify(collectorUrl)}, { method: 'POST', body: JSON.stringify({ pid: process.pid, rows }) });
  if (!res.ok) throw new Error('collector answered ' + res.status);
  return {};
}
`,
    );
    // One at a time: the first creates the topics the others check.
    for (let i = 1; i <= NODES; i++) {
      const started = await startServerOnFreePorts(({ httpPort, mqttPort }) => ({
        ...clusterNodeEnv({ index: i, brokers: brokers.join(','), dataDir: join(work.path, `node-${i}`), httpPort, mqttPort, topicPrefix: prefix }),
        TRIBUTARY_FUNCTIONS_DIR: fnDir,
      }));
      nodes.push({ env: started.env, process: started.process, http: `http://127.0.0.1:${started.httpPort}`, mqtt: `mqtt://127.0.0.1:${started.mqttPort}` });
    }
    await settled(nodes);
  }, 180_000);

  afterAll(async () => {
    await Promise.all(nodes.map((n) => n.process?.signal('SIGTERM')));
    await new Promise((resolve) => (collector ? collector.close(resolve) : resolve(undefined)));
    work.cleanup();
  }, 60_000);

  /** Until every node answers for every device of a sample (no 503 while partitions move). */
  async function settled(live: Node[]): Promise<void> {
    await waitFor(
      async () => {
        for (const node of live) for (let d = 0; d < 24; d++) if ((await storedValues(node, `probe-${d}`)) === undefined) return false;
        return true;
      },
      TAKEOVER_MS,
      'every node to answer for every partition',
    );
  }

  async function connect(node: Node, deviceId: string): Promise<MqttClient> {
    return mqtt.connectAsync(node.mqtt, { clientId: deviceId, reconnectPeriod: 0, connectTimeout: 5_000 });
  }

  it('answers for a reading published to any node from every node', async () => {
    const devices = Array.from({ length: 12 }, (_, i) => `any-${i}`);
    await Promise.all(
      devices.map(async (deviceId, i) => {
        const client = await connect(nodes[i % NODES] as Node, deviceId);
        for (let n = 1; n <= 20; n++) await client.publishAsync(`devices/${deviceId}/telemetry`, JSON.stringify({ n }), { qos: 1 });
        await client.endAsync();
      }),
    );
    for (const node of nodes) {
      for (const deviceId of devices) {
        const values = await waitFor(async () => {
          const v = await storedValues(node, deviceId);
          return v?.length === 20 ? v : undefined;
        }, 30_000, `${deviceId} through ${node.http}`);
        expect(values).toEqual(Array.from({ length: 20 }, (_, k) => k + 1));
      }
    }
  }, 120_000);

  it("applies a device's tags and its deletion through its partition, whichever node is asked", async () => {
    const [a, b, c] = nodes as [Node, Node, Node];
    const put = await fetch(`${a.http}/v1/devices/reg-1`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tags: { site: 'north' } }) });
    expect(put.status).toBe(201);
    const client = await connect(b, 'reg-2');
    for (let n = 1; n <= 5; n++) await client.publishAsync('devices/reg-2/telemetry', JSON.stringify({ n }), { qos: 1 });
    await client.endAsync();
    await waitFor(async () => (await storedValues(c, 'reg-2'))?.length === 5, 30_000, 'reg-2 stored');
    const deleted = await fetch(`${b.http}/v1/devices/reg-2`, { method: 'DELETE' });
    expect(deleted.status).toBeLessThan(300);
    for (const node of nodes) {
      expect((await getJson(`${node.http}/v1/devices/reg-1`)).body).toMatchObject({ deviceId: 'reg-1', tags: { site: 'north' } });
      expect(await storedValues(node, 'reg-2')).toEqual([]);
    }
  }, 120_000);

  it('shares the control plane: functions, triggers, rejects, commands and the device list', async () => {
    const [a, b, c] = nodes as [Node, Node, Node];
    const json = { 'content-type': 'application/json' };
    // A function deployed on one node, with a trigger, is known to every node.
    const deployed = await fetch(`${a.http}/v1/functions/shared`, { method: 'PUT', headers: json, body: JSON.stringify({ code: 'export async function handler() { return {}; }' }) });
    expect(deployed.status).toBeLessThan(300);
    const trigger = await fetch(`${b.http}/v1/functions/shared/triggers`, { method: 'POST', headers: json, body: JSON.stringify({ startingPosition: 'LATEST' }) });
    expect(trigger.status).toBe(201);
    for (const node of nodes) {
      await waitFor(async () => (await getJson(`${node.http}/v1/functions/shared`)).status === 200, 10_000, `the function on ${node.http}`);
      await waitFor(async () => ((await getJson(`${node.http}/v1/functions/shared/triggers`)).body as { items: unknown[] }).items.length === 1, 10_000, `the trigger on ${node.http}`);
    }
    // A payload rejected by one node is in every node's rejects log.
    const bad = await connect(a, 'rej-1');
    await bad.publishAsync('devices/rej-1/telemetry', '{not json', { qos: 1 });
    await bad.endAsync();
    for (const node of nodes) {
      await waitFor(async () => ((await getJson(`${node.http}/v1/rejects?deviceId=rej-1`)).body as { items: unknown[] }).items.length === 1, 10_000, `the reject on ${node.http}`);
    }
    // A command sent through one node reaches a device connected to another.
    const device = await connect(c, 'cmd-1');
    await device.subscribeAsync('devices/cmd-1/commands/#', { qos: 1 });
    const received = new Promise<string>((resolve) => device.once('message', (topic, payload) => resolve(`${topic} ${payload.toString()}`)));
    const sent = await fetch(`${a.http}/v1/devices/cmd-1/commands/reboot`, { method: 'POST', headers: json, body: JSON.stringify({ payload: { delay: 5 } }) });
    expect(sent.status).toBe(202);
    expect(await received).toBe('devices/cmd-1/commands/reboot {"delay":5}');
    await device.endAsync();
    // The device list, asked of any node, has every device of every partition.
    for (const node of nodes) {
      const listed = (await getJson(`${node.http}/v1/devices?limit=1000`)).body as { items: Array<{ deviceId: string }> };
      const ids = listed.items.map((d) => d.deviceId);
      for (let i = 0; i < 12; i++) expect(ids).toContain(`any-${i}`);
      expect(new Set(ids).size).toBe(ids.length);
    }
  }, 120_000);

  it("streams every node's change records to a live tail on any node", async () => {
    const [a, b] = nodes as [Node, Node];
    const devices = Array.from({ length: 12 }, (_, i) => `tail-${i}`);
    const seen = new Set<string>();
    const abort = new AbortController();
    const res = await fetch(`${a.http}/v1/streams/tail`, { signal: abort.signal });
    expect(res.status).toBe(200);
    const reading = (async () => {
      const decoder = new TextDecoder();
      let buffered = '';
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buffered += decoder.decode(chunk, { stream: true });
        for (let end = buffered.indexOf('\n\n'); end >= 0; end = buffered.indexOf('\n\n')) {
          const event = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          const data = /^data: (.*)$/m.exec(event)?.[1];
          if (data !== undefined) seen.add((JSON.parse(data) as { dynamodb: { Keys: { deviceId: { S: string } } } }).dynamodb.Keys.deviceId.S);
        }
      }
    })().catch(() => undefined);
    // Published through another node until the tail has seen every device (it follows other nodes' commits from when it starts).
    try {
      await waitFor(
        async () => {
          for (const d of devices) await fetch(`${b.http}/v1/devices/${d}/telemetry`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ n: 1 }) });
          await new Promise((resolve) => setTimeout(resolve, 300));
          return devices.every((d) => seen.has(d));
        },
        30_000,
        'the tail on node-1 to see records of every partition',
      );
    } finally {
      abort.abort();
      await reading;
    }
  }, 60_000);

  it('keeps every acknowledged reading once, on the store and the stream, when a node is killed under load; handlers go on', async () => {
    const devices = Array.from({ length: 12 }, (_, i) => `load-${i}`);
    const acked = new Map<string, number[]>(devices.map((d) => [d, []]));
    const victim = nodes[2] as Node;
    let stop = false;
    const load = devices.map(async (deviceId, i) => {
      const client = await connect(nodes[i % NODES] as Node, deviceId);
      client.on('error', () => undefined);
      // mqtt.js keeps an unacknowledged publish pending across a lost connection: the close ends the wait.
      const closed = new Promise<false>((resolve) => client.once('close', () => resolve(false)));
      // One QoS 1 publish at a time; a value counts once its PUBACK came back.
      for (let n = 1; !stop && n <= 5_000; n++) {
        const published = client.publishAsync(`devices/${deviceId}/telemetry`, JSON.stringify({ n }), { qos: 1 }).then(
          () => true,
          () => false,
        );
        if (!(await Promise.race([published, closed]))) break; // its node is gone
        acked.get(deviceId)?.push(n);
      }
      client.end(true);
    });
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(await victim.process?.signal('SIGKILL')).toBeNull();
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    stop = true;
    await Promise.all(load);
    const total = [...acked.values()].reduce((s, v) => s + v.length, 0);
    expect(total).toBeGreaterThan(100);

    // Stored exactly once: every acknowledged value, no value twice (unacknowledged ones may be there too).
    const survivors = nodes.slice(0, 2);
    for (const deviceId of devices) {
      const mine = acked.get(deviceId) as number[];
      const stored = await waitFor(async () => {
        const v = await storedValues(survivors[0] as Node, deviceId);
        return v !== undefined && mine.every((n) => v.includes(n)) ? v : undefined;
      }, TAKEOVER_MS, `every acknowledged reading of ${deviceId}`);
      expect(new Set(stored).size).toBe(stored.length);
    }

    // On the changes topic: an INSERT for every acknowledged value; count duplicates.
    const inserts = await changeInserts();
    for (const deviceId of devices) for (const n of acked.get(deviceId) as number[]) expect(inserts.get(`${deviceId}:${n}`) ?? 0, `${deviceId}:${n}`).toBeGreaterThanOrEqual(1);
    const duplicated = [...inserts.values()].filter((c) => c > 1).length;
    expect(duplicated).toBe(0);

    // Handlers on the survivors: every acknowledged value at least once, in order per device within each process.
    const unhandled = (): string[] => {
      const seen = handled();
      return devices.flatMap((d) => (acked.get(d) as number[]).filter((n) => !seen.all.has(`${d}:${n}`)).map((n) => `${d}:${n}`));
    };
    await waitFor(() => unhandled().length === 0, TAKEOVER_MS, 'the handlers to see every acknowledged reading').catch((err: unknown) => {
      const missing = unhandled();
      const logs = survivors.map((n) => n.process?.output().slice(-3000)).join('\n---\n');
      throw new Error(`${(err as Error).message}: ${missing.length} unhandled, e.g. ${missing.slice(0, 10).join(' ')}\nsurvivors' output:\n${logs}`);
    });
    for (const [, perDevice] of handled().byProcess) {
      for (const [deviceId, values] of perDevice) {
        const firsts = values.filter((n, i) => values.indexOf(n) === i);
        expect(firsts, `${deviceId} in order`).toEqual([...firsts].sort((a, b) => a - b));
      }
    }
  }, 300_000);

  it('catches a restarted node up without duplicates', async () => {
    const before = await changeInserts();
    const victim = nodes[2] as Node;
    victim.process = await startServerProcess([], victim.env);
    await settled(nodes);
    for (let i = 0; i < 12; i++) {
      const deviceId = `load-${i}`;
      const viaRestarted = await storedValues(victim, deviceId);
      const viaOther = await storedValues(nodes[0] as Node, deviceId);
      expect(viaRestarted).toEqual(viaOther);
      expect(new Set(viaRestarted).size).toBe(viaRestarted?.length);
    }
    // Registry changes travel with the readings: whoever rebuilt a partition applied them too.
    expect((await getJson(`${victim.http}/v1/devices/reg-1`)).body).toMatchObject({ tags: { site: 'north' } });
    expect(await storedValues(victim, 'reg-2')).toEqual([]);
    // The partitions moved again; whoever rebuilt or caught one up wrote no change record twice.
    expect(await changeInserts()).toEqual(before);
  }, 240_000);

  /** INSERT records on the changes topic, counted per device and value. */
  async function changeInserts(): Promise<Map<string, number>> {
    const client = await KafkaClient.connect({ brokers, clientId: 'cluster-test' });
    try {
      const counts = new Map<string, number>();
      for (const { partition, low, high } of await client.offsets(`${prefix}changes`)) {
        for (let offset = low; offset < high; ) {
          const batch = await client.fetch(`${prefix}changes`, partition, offset);
          if (batch.length === 0) break;
          for (const m of batch) {
            if (m.value === null) continue;
            const r = decodeRecord(partition, m.offset + 1, m.value);
            if (r.eventName === 'INSERT' && r.deviceId.startsWith('load-')) {
              const key = `${r.deviceId}:${(r.newValues as { n: number }).n}`;
              counts.set(key, (counts.get(key) ?? 0) + 1);
            }
          }
          offset = (batch[batch.length - 1]?.offset ?? offset) + 1;
        }
      }
      return counts;
    } finally {
      await client.close();
    }
  }

  /** What the handlers recorded: every device:value seen, and per function process the values per device in delivery order. */
  function handled(): { all: Set<string>; byProcess: Map<number, Map<string, number[]>> } {
    const all = new Set<string>();
    const byProcess = new Map<number, Map<string, number[]>>();
    for (const { pid, rows } of invocations) {
      const perDevice = byProcess.get(pid) ?? new Map<string, number[]>();
      byProcess.set(pid, perDevice);
      for (const row of rows) {
        if (row.e !== 'INSERT' || !row.d.startsWith('load-')) continue;
        all.add(`${row.d}:${row.n}`);
        perDevice.set(row.d, [...(perDevice.get(row.d) ?? []), row.n]);
      }
    }
    return { all, byProcess };
  }
});

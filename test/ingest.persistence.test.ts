/**
 * The broker's persistence (ingest/mqtt-persistence.ts): aedes-persistence's own
 * compliance suite run against it on a sublevel of our Database, then the behaviour
 * that matters to devices through the real app — QoS 1 messages queued for an offline
 * persistent session and retained messages survive a restart of the server, and queued
 * commands survive a kill -9 of the server process.
 */
import assert from 'node:assert';
import { createRequire } from 'node:module';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { levelPersistence, MQTT_SUBLEVEL } from '../ingest/mqtt-persistence.js';
import { Database } from '../store/database.js';
import { call, connectClient, startApp, type RunningApp } from './app-harness.js';
import { tempDir, waitFor } from './helpers.js';
import { startServerProcess, type ServerProcess } from './process.js';

type SuiteTest = (name: string, fn: (t: SuiteContext) => Promise<void>) => void;
interface SuiteContext {
  plan(count: number): void;
  diagnostic(message: string): void;
  assert: Pick<typeof assert, 'equal' | 'notEqual' | 'deepEqual' | 'ok'>;
}

const require = createRequire(import.meta.url);
const abstractPersistence = require('aedes-persistence/abstract.js') as (opts: { test: SuiteTest; persistence: () => unknown; testAsync: boolean }) => void;

describe('aedes-persistence abstract suite on a Database sublevel', () => {
  const dir = tempDir();
  let database: Database;
  let n = 0;
  beforeAll(async () => {
    database = await Database.open(dir.path);
  });
  afterAll(async () => {
    await database.close();
    dir.cleanup();
  });

  // node:test's context as the suite uses it: `t.assert` is node:assert's (non-strict)
  // functions, and `t.plan(n)` fails the test unless exactly n assertions ran.
  const test: SuiteTest = (name, fn) => {
    it(name, async () => {
      let planned: number | undefined;
      let count = 0;
      const counted =
        <A extends unknown[]>(f: (...args: A) => void) =>
        (...args: A): void => {
          count++;
          f(...args);
        };
      await fn({
        plan: (c) => {
          planned = c;
        },
        diagnostic: () => {},
        assert: { equal: counted(assert.equal), notEqual: counted(assert.notEqual), deepEqual: counted(assert.deepEqual), ok: counted(assert.ok) },
      });
      if (planned !== undefined) expect(count, 'assertions run against t.plan()').toBe(planned);
    });
  };

  // A fresh sublevel per test (the suite destroys each instance, which closes it).
  abstractPersistence({ test, persistence: () => levelPersistence(database.sublevel(`${MQTT_SUBLEVEL}${++n}`)), testAsync: true });
});

describe('broker state across a restart (real app, same data directory)', () => {
  const dir = tempDir();
  let running: RunningApp | undefined;
  afterAll(async () => {
    await running?.stop();
    dir.cleanup();
  });

  /** Connects with a persistent session, collecting messages from the first packet on. */
  async function persistentClient(url: string, clientId: string): Promise<{ client: MqttClient; messages: Array<{ topic: string; payload: string }>; sessionPresent: boolean }> {
    const messages: Array<{ topic: string; payload: string }> = [];
    const client = mqtt.connect(url, { clientId, clean: false, reconnectPeriod: 0, connectTimeout: 5000 });
    client.on('message', (topic, payload) => messages.push({ topic, payload: payload.toString() }));
    const connack = await new Promise<{ sessionPresent: boolean }>((resolve, reject) => {
      client.once('connect', resolve);
      client.once('error', reject);
    });
    return { client, messages, sessionPresent: connack.sessionPresent };
  }

  it('delivers QoS 1 messages queued for an offline persistent session, and keeps retained messages', async () => {
    running = await startApp({ dataDir: dir.path });
    const first = await persistentClient(running.addresses.mqtt, 'phone-1');
    expect(first.sessionPresent).toBe(false);
    await first.client.subscribeAsync('alerts/#', { qos: 1 });
    await first.client.endAsync();

    const publisher = await connectClient(running.addresses.mqtt);
    for (let i = 1; i <= 3; i++) await publisher.publishAsync('alerts/door', `open ${i}`, { qos: 1 });
    await publisher.publishAsync('status/gateway', 'online', { qos: 1, retain: true });
    await publisher.endAsync();
    await running.stop();

    running = await startApp({ dataDir: dir.path });
    const again = await persistentClient(running.addresses.mqtt, 'phone-1');
    try {
      expect(again.sessionPresent).toBe(true);
      await waitFor(() => again.messages.length >= 3, 5000, 'the queued messages');
      expect(again.messages).toEqual([1, 2, 3].map((i) => ({ topic: 'alerts/door', payload: `open ${i}` })));
    } finally {
      await again.client.endAsync();
    }

    const late = await connectClient(running.addresses.mqtt);
    try {
      const retained = new Promise<{ topic: string; payload: string; retain: boolean }>((resolve) =>
        late.once('message', (topic, payload, packet) => resolve({ topic, payload: payload.toString(), retain: packet.retain })),
      );
      await late.subscribeAsync('status/#', { qos: 1 });
      expect(await retained).toEqual({ topic: 'status/gateway', payload: 'online', retain: true });
    } finally {
      await late.endAsync();
    }
  });
});

describe('queued commands across kill -9 (the built CLI)', () => {
  const dir = tempDir();
  let server: ServerProcess | undefined;
  afterAll(async () => {
    await server?.signal('SIGKILL');
    dir.cleanup();
  });

  it('keeps QoS 1 commands queued for an offline device when the process is killed', async () => {
    server = await startServerProcess(['--data-dir', dir.path]);
    const first = await connectClient(server.mqttUrl, { clientId: 'pump-1', clean: false });
    await first.subscribeAsync('devices/pump-1/commands/#', { qos: 1 });
    await first.endAsync();
    // 202 comes once the broker has queued the command for the offline session.
    for (const speed of [1, 2]) {
      const res = await call(server.httpUrl, 'POST', '/v1/devices/pump-1/commands/speed', { payload: speed });
      expect(res.status).toBe(202);
    }
    await server.signal('SIGKILL');

    server = await startServerProcess(['--data-dir', dir.path]);
    const received: string[] = [];
    const back = mqtt.connect(server.mqttUrl, { clientId: 'pump-1', clean: false, reconnectPeriod: 0 });
    back.on('message', (topic, payload) => received.push(`${topic} ${payload.toString()}`));
    try {
      await waitFor(() => received.length >= 2, 5000, 'the queued commands');
      expect(received).toEqual(['devices/pump-1/commands/speed 1', 'devices/pump-1/commands/speed 2']);
    } finally {
      await back.endAsync();
    }
  });
});

/**
 * The broker's per-connection limits: the connection cap (CONNACK 3 beyond it, exact
 * under a burst), the per-client subscription cap (SUBACK 0x80), the inbound window of
 * QoS 1 PUBLISHes processed at once, and the drain timeout that cuts off a subscriber
 * that stopped reading. Real mqtt.js clients (or a raw socket) against the real broker.
 */
import { connect as tcpConnect, type Socket } from 'node:net';
import mqtt, { type MqttClient } from 'mqtt';
import { generate } from 'mqtt-packet';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../core/logger.js';
import { MqttBroker } from '../ingest/mqtt-broker.js';
import type { TelemetryIngest } from '../ingest/telemetry-ingest.js';
import { connectClient, startApp, type RunningApp } from './app-harness.js';
import { waitFor } from './helpers.js';

/** Connects and resolves with the CONNACK outcome instead of throwing. */
function tryConnect(url: string, clientId: string): Promise<{ client: MqttClient; code: number }> {
  const client = mqtt.connect(url, { clientId, reconnectPeriod: 0, connectTimeout: 5000 });
  return new Promise((resolve) => {
    client.once('connect', () => resolve({ client, code: 0 }));
    client.once('error', (err: Error & { code?: number }) => resolve({ client, code: typeof err.code === 'number' ? err.code : -1 }));
  });
}

async function connectedGauge(running: RunningApp): Promise<number> {
  return (await running.app.metrics.mqttConnectedClients.get()).values[0]?.value ?? 0;
}

describe('connection limit', () => {
  let running: RunningApp;
  const clients: MqttClient[] = [];
  beforeAll(async () => {
    running = await startApp({ mqttMaxConnections: 3 });
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.endAsync(true)));
    await running.destroy();
  });

  it('admits exactly the limit out of a burst and answers the rest with CONNACK 3, server unavailable', async () => {
    const attempts = await Promise.all(Array.from({ length: 10 }, (_, i) => tryConnect(running.addresses.mqtt, `burst-${i}`)));
    clients.push(...attempts.map((a) => a.client));
    const codes = attempts.map((a) => a.code);
    expect(codes.filter((c) => c === 0)).toHaveLength(3);
    expect(codes.filter((c) => c === 3)).toHaveLength(7);
    expect(await connectedGauge(running)).toBe(3);

    // WebSocket connections count against the same limit.
    expect((await tryConnect(running.addresses.ws, 'over-ws')).code).toBe(3);

    // A slot frees up when a client leaves.
    await attempts.find((a) => a.code === 0)?.client.endAsync();
    const next = await waitFor(async () => {
      const attempt = await tryConnect(running.addresses.mqtt, 'after-leave');
      clients.push(attempt.client);
      return attempt.code === 0 ? attempt : undefined;
    }, 5000, 'a free slot');
    expect(next.code).toBe(0);
  });
});

describe('subscription limit', () => {
  let running: RunningApp;
  let client: MqttClient;
  beforeAll(async () => {
    running = await startApp({ mqttMaxSubscriptions: 2 });
    client = await connectClient(running.addresses.mqtt);
  });
  afterAll(async () => {
    await client.endAsync();
    await running.destroy();
  });

  /** The SUBACK's return codes (mqtt.js rejects when one is a failure, with the SUBACK attached). */
  async function granted(topics: Record<string, { qos: 0 | 1 }>): Promise<number[]> {
    try {
      return (await client.subscribeAsync(topics)).map((g) => g.qos);
    } catch (err) {
      const codes = (err as { packet?: { granted?: number[] } }).packet?.granted;
      if (codes === undefined) throw err;
      return codes;
    }
  }

  it('refuses filters beyond the limit in the SUBACK and keeps the client connected', async () => {
    // One SUBSCRIBE with three filters: aedes authorizes them in parallel.
    expect(await granted({ 'a/#': { qos: 1 }, 'b/#': { qos: 1 }, 'c/#': { qos: 1 } })).toEqual([1, 1, 128]);
    // Re-subscribing to a held filter (to change its QoS) is not a new subscription.
    expect(await granted({ 'a/#': { qos: 0 } })).toEqual([0]);
    expect(await granted({ 'd/#': { qos: 1 } })).toEqual([128]);
    await client.unsubscribeAsync('a/#');
    expect(await granted({ 'd/#': { qos: 1 } })).toEqual([1]);
    expect(client.connected).toBe(true);
  });

  it('does not keep a refused filter in a persistent session (aedes would store it)', async () => {
    const session = { clientId: 'keeper', clean: false };
    const first = await connectClient(running.addresses.mqtt, session);
    await first.subscribeAsync({ 'x/#': { qos: 1 }, 'y/#': { qos: 1 }, 'z/#': { qos: 1 } }).catch(() => undefined);
    await first.endAsync();

    const publisher = await connectClient(running.addresses.mqtt);
    await publisher.publishAsync('z/1', 'refused filter', { qos: 1 });
    await publisher.publishAsync('x/1', 'granted filter', { qos: 1 });
    await publisher.endAsync();

    const received: string[] = [];
    const back = mqtt.connect(running.addresses.mqtt, { ...session, reconnectPeriod: 0 });
    back.on('message', (topic) => received.push(topic));
    try {
      await waitFor(() => received.includes('x/1'), 5000, 'the queued message of the granted filter');
      // Queued messages arrive in order: z/1 was published first, so it would be here by now.
      expect(received).toEqual(['x/1']);
    } finally {
      await back.endAsync();
    }
  });
});

describe('inbound window', () => {
  let broker: MqttBroker;
  let client: MqttClient | undefined;
  // A stand-in ingest that holds every write until the test releases it.
  let running = 0;
  let peak = 0;
  const held: Array<() => void> = [];
  const stored: string[] = [];
  const ingest = {
    ingestPayload: (deviceId: string, payload: Buffer) => {
      running++;
      peak = Math.max(peak, running);
      return new Promise((resolve) => {
        held.push(() => {
          running--;
          stored.push(`${deviceId}:${payload.toString()}`);
          resolve({ items: [] });
        });
      });
    },
    reject: () => undefined,
  } as unknown as TelemetryIngest;

  beforeAll(async () => {
    broker = await MqttBroker.start({ host: '127.0.0.1', port: 0, ingest, logger: createLogger('silent'), limits: { maxInflight: 4 } });
  });
  afterEach(async () => {
    await client?.endAsync(true);
  });
  afterAll(async () => {
    await broker.close();
  });

  it('processes at most maxInflight QoS 1 PUBLISHes of a client at once, in order, and acknowledges all', async () => {
    client = await connectClient(`mqtt://127.0.0.1:${broker.address.port}`);
    const c = client;
    const acks = Array.from({ length: 20 }, (_, i) => c.publishAsync('devices/w1/telemetry', String(i), { qos: 1 }));
    // Release the writes one at a time as they arrive; never more than the window is waiting.
    for (let released = 0; released < 20; released++) {
      await waitFor(() => held.length > 0, 5000, `write ${released}`);
      expect(running).toBeLessThanOrEqual(4);
      held.shift()?.();
    }
    await Promise.all(acks);
    expect(peak).toBe(4);
    expect(stored).toEqual(Array.from({ length: 20 }, (_, i) => `w1:${i}`));
  });
});

describe('drain timeout', () => {
  let running: RunningApp;
  let stuck: Socket | undefined;
  const clients: MqttClient[] = [];
  beforeAll(async () => {
    running = await startApp({ mqttDrainTimeoutMs: 300 });
  });
  afterAll(async () => {
    stuck?.destroy();
    await Promise.all(clients.map((c) => c.endAsync(true)));
    await running.destroy();
  });

  it('disconnects a subscriber that stops reading, and the others keep receiving', async () => {
    const url = new URL(running.addresses.mqtt);
    // A raw subscriber: CONNECT and SUBSCRIBE, wait for the SUBACK, then never read again.
    const socket = tcpConnect(Number(url.port), url.hostname);
    stuck = socket;
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    socket.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'stuck', keepalive: 0 }));
    socket.write(generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'firehose/#', qos: 0 }] }));
    let seen = Buffer.alloc(0);
    await waitFor(() => {
      const chunk = socket.read() as Buffer | null;
      if (chunk) seen = Buffer.concat([seen, chunk]);
      return seen.includes(0x90); // SUBACK
    }, 5000, 'the SUBACK');
    socket.pause();

    const healthy = await connectClient(running.addresses.mqtt, { clientId: 'healthy' });
    clients.push(healthy);
    await healthy.subscribeAsync('firehose/#', { qos: 0 });
    let healthyCount = 0;
    healthy.on('message', () => healthyCount++);
    const publisher = await connectClient(running.addresses.mqtt, { clientId: 'publisher' });
    clients.push(publisher);
    expect(await connectedGauge(running)).toBe(3);

    // Fill the stuck subscriber's socket buffers until the broker cuts it off (bounded: at most 32 MiB).
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let sent = 0;
    while (sent < 512 && (await connectedGauge(running)) === 3) {
      await publisher.publishAsync('firehose/data', chunk, { qos: 1 });
      sent++;
    }
    await waitFor(async () => (await connectedGauge(running)) === 2, 5000, 'the stuck subscriber to be cut off');

    // The broker delivers again: a message published now reaches the healthy subscriber.
    const before = healthyCount;
    const after = new Promise<string>((resolve) => healthy.on('message', (topic, payload) => payload.length < 100 && resolve(payload.toString())));
    await publisher.publishAsync('firehose/data', 'still flowing', { qos: 1 });
    expect(await after).toBe('still flowing');
    expect(healthyCount).toBeGreaterThan(before);
  });
});

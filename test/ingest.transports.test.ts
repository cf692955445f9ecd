/**
 * The broker's transports through the real app: MQTT over WebSocket at `/mqtt` on the
 * HTTP port, TLS for TCP, WebSocket and HTTP with a self-signed certificate made here,
 * and the clean refusal of MQTT 5 (aedes 1.2 speaks 3.1.1 only).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { createApp } from '../app.js';
import { ConfigError, configWith } from '../core/config.js';
import { createLogger } from '../core/logger.js';
import { connectClient, getJson, startApp, type RunningApp } from './app-harness.js';
import { tempDir } from './helpers.js';

/** Publishes a reading at QoS 1 and resolves on its PUBACK. */
function publishReading(client: MqttClient, deviceId: string, values: Record<string, number>): Promise<void> {
  return new Promise((resolve, reject) => client.publish(`devices/${deviceId}/telemetry`, JSON.stringify(values), { qos: 1 }, (err) => (err ? reject(err) : resolve())));
}

function nextMessage(client: MqttClient): Promise<{ topic: string; payload: string }> {
  return new Promise((resolve) => client.once('message', (topic, payload) => resolve({ topic, payload: payload.toString() })));
}

describe('MQTT over WebSocket', () => {
  let running: RunningApp;
  const clients: MqttClient[] = [];
  beforeAll(async () => {
    running = await startApp();
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.endAsync()));
    await running.destroy();
  });

  it('reports a ws:// URL on the HTTP port', () => {
    const http = new URL(running.addresses.http);
    const ws = new URL(running.addresses.ws);
    expect(ws.protocol).toBe('ws:');
    expect(ws.port).toBe(http.port);
    expect(ws.pathname).toBe('/mqtt');
  });

  it('stores telemetry published over WebSocket and delivers it to a TCP subscriber', async () => {
    const subscriber = await connectClient(running.addresses.mqtt);
    clients.push(subscriber);
    await subscriber.subscribeAsync('devices/+/telemetry', { qos: 1 });
    const wsClient = await connectClient(running.addresses.ws);
    clients.push(wsClient);
    const received = nextMessage(subscriber);

    await publishReading(wsClient, 'ws-sensor', { temp: 21.5 });

    // The PUBACK came back over WebSocket, so the reading is stored.
    const latest = await getJson(`${running.addresses.http}/v1/devices/ws-sensor/latest`);
    expect(latest.status).toBe(200);
    expect(latest.body).toMatchObject({ values: { temp: 21.5 } });
    expect(await received).toEqual({ topic: 'devices/ws-sensor/telemetry', payload: '{"temp":21.5}' });
  });

  it('closes a WebSocket connection that sends a packet over the size limit', async () => {
    // The limit is maxPayloadBytes (128 KiB) plus 128 KiB of headroom.
    const client = await connectClient(running.addresses.ws);
    clients.push(client);
    // Just under the limit is fine.
    await client.publishAsync('big/blob', Buffer.alloc(200 * 1024), { qos: 1 });
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    client.publish('big/blob', Buffer.alloc(300 * 1024), { qos: 0 });
    await closed;
    expect(client.connected).toBe(false);
  });

  it('answers 404 to a WebSocket upgrade on another path', async () => {
    const url = running.addresses.ws.replace(/\/mqtt$/, '/other');
    const status = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(url, 'mqtt');
      ws.once('unexpected-response', (_req, res) => {
        resolve(res.statusCode ?? 0);
        ws.terminate();
      });
      ws.once('open', () => reject(new Error('upgrade on /other was accepted')));
      ws.once('error', reject);
    });
    expect(status).toBe(404);
  });
});

describe('TLS', () => {
  const dir = tempDir();
  let cert: Buffer;
  let running: RunningApp;
  const clients: MqttClient[] = [];
  beforeAll(async () => {
    const certPath = join(dir.path, 'cert.pem');
    const keyPath = join(dir.path, 'key.pem');
    // A throwaway self-signed certificate for 127.0.0.1 (EC: fast to generate).
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' });
    cert = readFileSync(certPath);
    running = await startApp({ tlsCert: certPath, tlsKey: keyPath });
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.endAsync()));
    await running?.destroy();
    dir.cleanup();
  });

  it('reports mqtts, https and wss addresses', () => {
    expect(running.addresses.mqtt).toMatch(/^mqtts:\/\//);
    expect(running.addresses.http).toMatch(/^https:\/\//);
    expect(running.addresses.ws).toMatch(/^wss:\/\/.*\/mqtt$/);
  });

  it('takes telemetry over mqtts and wss, with the certificate verified', async () => {
    const tcp = await connectClient(running.addresses.mqtt, { ca: cert, rejectUnauthorized: true });
    clients.push(tcp);
    await publishReading(tcp, 'tls-sensor', { n: 1 });
    const ws = await connectClient(running.addresses.ws, { ca: cert, rejectUnauthorized: true });
    clients.push(ws);
    await publishReading(ws, 'tls-sensor', { n: 2 });

    // The HTTP API is HTTPS with the same certificate.
    const body = await new Promise<string>((resolve, reject) => {
      const req = httpsRequest(`${running.addresses.http}/v1/devices/tls-sensor/telemetry?from=0`, { ca: cert }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve(text));
      });
      req.once('error', reject);
      req.end();
    });
    const page = JSON.parse(body) as { items: Array<{ values: { n: number } }> };
    expect(page.items.map((i) => i.values.n)).toEqual([1, 2]);
  });

  it('refuses a client that does not trust the certificate, and a plain-TCP client', async () => {
    await expect(connectClient(running.addresses.mqtt, { rejectUnauthorized: true })).rejects.toThrow(/self[- ]signed/i);
    const plain = mqtt.connect(running.addresses.mqtt.replace(/^mqtts:/, 'mqtt:'), { reconnectPeriod: 0, connectTimeout: 2000 });
    const outcome = await new Promise<string>((resolve) => {
      plain.once('connect', () => resolve('connected'));
      plain.once('error', () => resolve('error'));
      plain.once('close', () => resolve('closed'));
    });
    plain.end(true);
    expect(outcome).not.toBe('connected');
  });
});

describe('TLS configuration', () => {
  it('refuses a certificate without its key, as a configuration error', async () => {
    const dir = tempDir();
    const app = createApp(configWith({ dataDir: dir.path, mqttPort: 0, httpPort: 0, tlsCert: join(dir.path, 'cert.pem') }), { logger: createLogger('silent') });
    try {
      await expect(app.start()).rejects.toBeInstanceOf(ConfigError);
    } finally {
      await app.stop();
      dir.cleanup();
    }
  });
});

describe('MQTT 5', () => {
  let running: RunningApp;
  beforeAll(async () => {
    running = await startApp();
  });
  afterAll(async () => {
    await running.destroy();
  });

  it('is refused with CONNACK "unacceptable protocol version", and 3.1.1 still works after', async () => {
    const v5 = mqtt.connect(running.addresses.mqtt, { protocolVersion: 5, reconnectPeriod: 0, connectTimeout: 5000 });
    const err = await new Promise<Error & { code?: number }>((resolve, reject) => {
      v5.once('error', resolve);
      v5.once('connect', () => reject(new Error('an MQTT 5 client was accepted')));
    });
    v5.end(true);
    expect(err.code).toBe(1);
    const v4 = await connectClient(running.addresses.mqtt);
    await v4.endAsync();
  });
});

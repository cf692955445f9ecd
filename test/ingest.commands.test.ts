/**
 * Commands to devices through the real app: `POST /v1/devices/{id}/commands/{name}`
 * and handlers' `context.publish` publish on `devices/{id}/commands/{name}`; a
 * connected device receives them, and one with a persistent session receives QoS 1
 * commands sent while it was offline when it comes back.
 */
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, startApp, type RunningApp } from './app-harness.js';
import { waitFor } from './helpers.js';

interface Received {
  topic: string;
  payload: unknown;
  qos: number;
}

/** A device subscribed to its commands, recording what it receives from the first packet on. */
async function device(url: string, deviceId: string, opts: { clean?: boolean } = {}): Promise<{ client: MqttClient; received: Received[] }> {
  const received: Received[] = [];
  const client = mqtt.connect(url, { clientId: deviceId, clean: opts.clean ?? true, reconnectPeriod: 0, connectTimeout: 5000 });
  client.on('message', (topic, payload, packet) => received.push({ topic, payload: JSON.parse(payload.toString()) as unknown, qos: packet.qos }));
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  return { client, received };
}

describe('commands to devices', () => {
  let running: RunningApp;
  let base: string;
  const send = (deviceId: string, name: string, body: unknown) => call(base, 'POST', `/v1/devices/${deviceId}/commands/${name}`, body);

  beforeAll(async () => {
    running = await startApp();
    base = running.addresses.http;
  });
  afterAll(async () => {
    await running.destroy();
  });

  it('publishes to a connected device (202) with the payload as JSON', async () => {
    const d = await device(running.addresses.mqtt, 'valve-1');
    try {
      await d.client.subscribeAsync('devices/valve-1/commands/#', { qos: 1 });
      const res = await send('valve-1', 'open', { payload: { percent: 40 } });
      expect(res).toEqual({ status: 202, body: { topic: 'devices/valve-1/commands/open', qos: 1 } });
      const qos0 = await send('valve-1', 'ping', {});
      expect(qos0.status).toBe(202);
      const qos0b = await send('valve-1', 'blink', { payload: 'fast', qos: 0 });
      expect(qos0b.body).toEqual({ topic: 'devices/valve-1/commands/blink', qos: 0 });
      await waitFor(() => d.received.length >= 3, 5000, 'three commands');
      expect(d.received).toEqual([
        { topic: 'devices/valve-1/commands/open', payload: { percent: 40 }, qos: 1 },
        { topic: 'devices/valve-1/commands/ping', payload: null, qos: 1 },
        { topic: 'devices/valve-1/commands/blink', payload: 'fast', qos: 0 },
      ]);
    } finally {
      await d.client.endAsync();
    }
  });

  it('queues QoS 1 commands for an offline device with a persistent session', async () => {
    const first = await device(running.addresses.mqtt, 'valve-2', { clean: false });
    await first.client.subscribeAsync('devices/valve-2/commands/+', { qos: 1 });
    await first.client.endAsync();

    expect((await send('valve-2', 'close', { payload: { at: 1 } })).status).toBe(202);
    expect((await send('valve-2', 'close', { payload: { at: 2 } })).status).toBe(202);
    // QoS 0 is not queued for an offline session ([MQTT-3.1.2-5] covers QoS 1 and 2 only).
    expect((await send('valve-2', 'note', { payload: 'dropped', qos: 0 })).status).toBe(202);

    const back = await device(running.addresses.mqtt, 'valve-2', { clean: false });
    try {
      await waitFor(() => back.received.length >= 2, 5000, 'the queued commands');
      expect(back.received).toEqual([
        { topic: 'devices/valve-2/commands/close', payload: { at: 1 }, qos: 1 },
        { topic: 'devices/valve-2/commands/close', payload: { at: 2 }, qos: 1 },
      ]);
    } finally {
      await back.client.endAsync();
    }
  });

  it('rejects wildcards, multi-level names, bad QoS and unknown fields with 400 InvalidParameter', async () => {
    for (const name of ['a%23', '%2B', 'a%2Fb', 'x'.repeat(129)]) {
      const res = await send('valve-1', name, { payload: 1 });
      expect(res.status, name).toBe(400);
      expect(res.body).toMatchObject({ error: { code: 'InvalidParameter', field: 'name' } });
    }
    expect((await send('bad id', 'open', {})).body).toMatchObject({ error: { code: 'InvalidParameter', field: 'id' } });
    for (const body of [{ qos: 2 }, { payload: 1, retain: true }]) {
      const res = await send('valve-1', 'open', body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect((res.body as { error: { code: string } }).error.code).toMatch(/^(InvalidParameter|ValidationError)$/);
    }
  });

  it('lets a handler send a command through context.publish', async () => {
    const d = await device(running.addresses.mqtt, 'valve-3');
    try {
      await d.client.subscribeAsync('devices/valve-3/commands/#', { qos: 1 });
      const code = `export async function handler(event, context) { await context.publish(event.deviceId, { name: 'reboot', payload: { delay: 5 } }); return 'sent'; }`;
      expect((await call(base, 'PUT', '/v1/functions/commander', { code })).status).toBe(201);
      const out = await call(base, 'POST', '/v1/functions/commander/invoke', { deviceId: 'valve-3' });
      expect(out.body).toMatchObject({ status: 'ok', result: 'sent' });
      await waitFor(() => d.received.length >= 1, 5000, 'the command');
      expect(d.received).toEqual([{ topic: 'devices/valve-3/commands/reboot', payload: { delay: 5 }, qos: 1 }]);

      // A name that is not one topic level is refused, not published.
      const bad = `export async function handler(event, context) { try { await context.publish('valve-3', { name: 'a/#' }); return 'sent'; } catch (err) { return err.message; } }`;
      expect((await call(base, 'PUT', '/v1/functions/bad-commander', { code: bad })).status).toBe(201);
      const refused = await call(base, 'POST', '/v1/functions/bad-commander/invoke', {});
      expect((refused.body as { result: string }).result).toMatch(/not a valid command name/);
    } finally {
      await d.client.endAsync();
    }
  });

  it('needs no subscriber: a command nobody listens to is accepted and dropped', async () => {
    expect((await send('nobody-home', 'wake', {})).status).toBe(202);
  });
});

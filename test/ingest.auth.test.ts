/**
 * The broker's access control, end to end: the whole app in secured mode (`--secure`),
 * real mqtt.js clients (and mosquitto_pub when installed) over TCP, devices provisioned
 * in the data directory before the start. Open mode stays anonymous and general-purpose.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeviceCredentials } from '../access/device-credentials.js';
import { Database } from '../store/database.js';
import { connectClient, startApp, type RunningApp } from './app-harness.js';
import { tempDir, waitFor } from './helpers.js';
import { hasTool, ROOT } from './process.js';

const run = promisify(execFile);

/** Issues secrets in the data directory (the app must not be running on it). */
async function provision(dataDir: string, ids: string[]): Promise<Record<string, string>> {
  const db = await Database.open(dataDir);
  try {
    const creds = await DeviceCredentials.open(db);
    const out: Record<string, string> = {};
    for (const id of ids) out[id] = (await creds.issue(id)).secret;
    return out;
  } finally {
    await db.close();
  }
}

/** Starts a secured app on a fresh data directory with these devices provisioned. */
async function securedApp(ids: string[], overrides: Record<string, unknown> = {}): Promise<{ running: RunningApp; secrets: Record<string, string> }> {
  const dir = tempDir();
  const secrets = await provision(dir.path, ids);
  const running = await startApp({ dataDir: dir.path, secure: true, ...overrides });
  return {
    running: { ...running, destroy: async () => (await running.stop(), dir.cleanup()) },
    secrets,
  };
}

/** The CONNACK return code a connection attempt is refused with, or the connected client. */
async function attempt(url: string, opts: IClientOptions): Promise<{ client?: MqttClient; code?: number }> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...opts });
  return new Promise((resolve) => {
    client.once('connect', () => resolve({ client }));
    client.once('error', (err: Error & { code?: number }) => {
      client.end(true);
      resolve({ code: err.code ?? -1 });
    });
  });
}

function closed(client: MqttClient): Promise<void> {
  return new Promise((resolve) => (client.connected ? client.once('close', () => resolve()) : resolve()));
}

/** HTTP headers the app wants: the admin key when secured mode generated one. */
function adminHeaders(dataDir: string): Record<string, string> {
  const file = join(dataDir, 'admin.key');
  return existsSync(file) ? { authorization: `Bearer ${readFileSync(file, 'utf8').trim()}` } : {};
}

async function failures(running: RunningApp, reason: string): Promise<number> {
  const text = await running.app.metrics.registry.getSingleMetricAsString('tributary_mqtt_auth_failures_total');
  const m = new RegExp(`reason="${reason}"} (\\d+)`).exec(text);
  return m ? Number(m[1]) : 0;
}

describe('secured mode: device logins and topic access', () => {
  // All clients come from 127.0.0.1: the failed secret checks below must stay within the
  // per-address allowance (20), or later logins here would be throttled.
  let running: RunningApp;
  let secrets: Record<string, string>;
  let url: string;
  const clients: MqttClient[] = [];
  const device = async (id: string, opts: IClientOptions = {}): Promise<MqttClient> => {
    const client = await connectClient(url, { clientId: id, username: id, password: secrets[id] ?? '', ...opts });
    clients.push(client);
    return client;
  };

  beforeAll(async () => {
    ({ running, secrets } = await securedApp(['dev-1', 'dev-2', 'dev-del', 'dev-rot', 'observer', 'dev-m'], { functionsDir: join(ROOT, 'test/fixtures/e2e-functions') }));
    url = running.addresses.mqtt;
  });
  afterEach(() => {
    for (const c of clients.splice(0)) c.end(true);
  });
  afterAll(async () => {
    await running.destroy();
  });

  it('a provisioned device logs in and its telemetry is stored', async () => {
    const dev = await device('dev-1');
    await dev.publishAsync('devices/dev-1/telemetry', '{"temp":21.5}', { qos: 1 });
    expect((await running.app.store.latest('dev-1'))?.values).toEqual({ temp: 21.5 });
  });

  it('refuses wrong secrets, unknown devices and missing credentials', async () => {
    expect((await attempt(url, { clientId: 'dev-1', username: 'dev-1', password: `${secrets['dev-1']}x` })).code).toBe(4);
    expect((await attempt(url, { clientId: 'dev-1', username: 'dev-1', password: secrets['dev-2'] })).code).toBe(4);
    expect((await attempt(url, { clientId: 'ghost', username: 'ghost', password: secrets['dev-1'] })).code).toBe(4);
    expect((await attempt(url, { clientId: 'dev-1' })).code).toBe(5);
    expect((await attempt(url, { clientId: 'dev-1', username: 'dev-1' })).code).toBe(5);
    expect(await failures(running, 'bad_secret')).toBeGreaterThanOrEqual(2);
    expect(await failures(running, 'unknown_device')).toBeGreaterThanOrEqual(1);
    expect(await failures(running, 'missing_credentials')).toBeGreaterThanOrEqual(2);
  });

  it('the client id must be the device id it logs in as, and a valid one', async () => {
    // Someone else's id with one's own secret, and one's own id under another client id.
    expect((await attempt(url, { clientId: 'dev-2', username: 'dev-1', password: secrets['dev-1'] })).code).toBe(2);
    expect((await attempt(url, { clientId: 'other', username: 'dev-1', password: secrets['dev-1'] })).code).toBe(2);
    // An empty client id gets a broker-assigned one, which is not the username.
    expect((await attempt(url, { clientId: '', clean: true, username: 'dev-1', password: secrets['dev-1'] })).code).toBe(2);
    for (const id of ['a+b', 'a/b', '#', '+', 'dev-1/#', 'a b', 'a\u0001b']) {
      expect((await attempt(url, { clientId: id, username: id, password: 'x' })).code, id).toBe(2);
    }
    expect(await failures(running, 'invalid_client_id')).toBeGreaterThanOrEqual(7);
  });

  it('publishing outside its own namespace disconnects the device and stores nothing', async () => {
    for (const [topic, retain] of [
      ['devices/dev-2/telemetry', false],
      ['devices/dev-2/commands/reboot', true],
      ['$SYS/broker/uptime', false],
      ['other/topic', true],
      ['devices/dev-1', false],
    ] as const) {
      const dev = await device('dev-1');
      dev.publish(topic, '{"temp":99}', { qos: 1, retain });
      await closed(dev);
    }
    expect(await running.app.store.latest('dev-2')).toBeUndefined();
    expect(await failures(running, 'publish_denied')).toBeGreaterThanOrEqual(5);

    // The retained command was refused: dev-2 gets only its own retained sentinel.
    const dev2 = await device('dev-2');
    await dev2.publishAsync('devices/dev-2/commands/sentinel', 'mine', { qos: 1, retain: true });
    const seen: string[] = [];
    dev2.on('message', (topic) => seen.push(topic));
    await dev2.subscribeAsync('devices/dev-2/commands/#', { qos: 1 });
    await waitFor(() => seen.includes('devices/dev-2/commands/sentinel'), 5000, 'the retained sentinel');
    expect(seen).toEqual(['devices/dev-2/commands/sentinel']);
  });

  it('subscriptions outside its own commands are refused (SUBACK 0x80) and the device stays connected', async () => {
    const dev = await device('dev-1');
    for (const filter of ['#', '+/#', 'devices/#', 'devices/+/commands/#', 'devices/dev-2/commands/#', 'devices/dev-1/telemetry', 'devices/dev-1/#', '$SYS/#', '$share/g/devices/dev-1/commands/#', '$share/g/devices/dev-2/commands/#', 'devices/dev-1/commandsx/#']) {
      await expect(dev.subscribeAsync(filter, { qos: 1 }), filter).rejects.toMatchObject({ packet: { granted: [0x80] } });
    }
    expect(dev.connected).toBe(true);
    const granted = await dev.subscribeAsync(['devices/dev-1/commands/#', 'devices/dev-1/commands/+/x', 'devices/dev-1/commands'], { qos: 1 });
    expect(granted.map((g) => g.qos)).toEqual([1, 1, 1]);
  });

  it('a device receives server publishes on its own commands subscription', async () => {
    // The e2e fixture function forwards every stream event to devices/observer/commands/event.
    const observer = await device('observer');
    const events: string[] = [];
    observer.on('message', (topic) => events.push(topic));
    await observer.subscribeAsync('devices/observer/commands/#', { qos: 1 });
    const dev = await device('dev-1');
    await dev.publishAsync('devices/dev-1/telemetry', '{"temp":22}', { qos: 1 });
    await waitFor(() => events.length > 0, 15_000, 'the command published by the function');
    expect(events[0]).toBe('devices/observer/commands/event');
  });

  it('a will must lie in the device namespace', async () => {
    const will = { topic: 'devices/dev-2/telemetry', payload: Buffer.from('{"temp":-1}'), qos: 1 as const, retain: false };
    expect((await attempt(url, { clientId: 'dev-1', username: 'dev-1', password: secrets['dev-1'], will })).code).toBe(5);
    expect((await attempt(url, { clientId: 'dev-1', username: 'dev-1', password: secrets['dev-1'], will: { ...will, topic: '$SYS/x', retain: true } })).code).toBe(5);
    expect(await failures(running, 'will_denied')).toBe(2);
    const ok = await device('dev-1', { will: { ...will, topic: 'devices/dev-1/status', payload: Buffer.from('offline') } });
    expect(ok.connected).toBe(true);
  });

  it('deleting a device revokes its secret and closes its connection', async () => {
    const dev = await device('dev-del');
    await dev.publishAsync('devices/dev-del/telemetry', '{"temp":1}', { qos: 1 });
    const gone = closed(dev);
    const res = await fetch(`${running.addresses.http}/v1/devices/dev-del`, { method: 'DELETE', headers: adminHeaders(running.dataDir) });
    expect(res.status).toBe(204);
    await gone;
    expect((await attempt(url, { clientId: 'dev-del', username: 'dev-del', password: secrets['dev-del'] })).code).toBe(4);
    expect(await running.app.store.latest('dev-del')).toBeUndefined();
  });

  it('rotating a secret closes the live connection; only the new secret works', async () => {
    const dev = await device('dev-rot');
    const gone = closed(dev);
    const res = await fetch(`${running.addresses.http}/v1/devices/dev-rot/credentials`, { method: 'POST', headers: adminHeaders(running.dataDir) });
    expect(res.status).toBe(201);
    const { secret, rotated } = (await res.json()) as { secret: string; rotated: boolean };
    expect(rotated).toBe(true);
    await gone;
    expect((await attempt(url, { clientId: 'dev-rot', username: 'dev-rot', password: secrets['dev-rot'] })).code).toBe(4);
    const again = await connectClient(url, { clientId: 'dev-rot', username: 'dev-rot', password: secret });
    clients.push(again);
    await again.publishAsync('devices/dev-rot/telemetry', '{"temp":5}', { qos: 1 });
    expect((await running.app.store.latest('dev-rot'))?.values).toEqual({ temp: 5 });
  });

  it('mosquitto_pub logs in with -i/-u/-P', async (ctx) => {
    if (!hasTool('mosquitto_pub')) return ctx.skip();
    const port = new URL(url).port;
    const base = ['-h', '127.0.0.1', '-p', port, '-i', 'dev-m', '-u', 'dev-m', '-t', 'devices/dev-m/telemetry', '-q', '1', '-m', '{"temp":7}'];
    await run('mosquitto_pub', [...base, '-P', secrets['dev-m'] ?? '']);
    expect((await running.app.store.latest('dev-m'))?.values).toEqual({ temp: 7 });
    const refused = await run('mosquitto_pub', [...base, '-P', 'wrong']).then(() => undefined, (err: { stderr: string; code: number }) => err);
    expect(refused?.code).not.toBe(0);
    expect(refused?.stderr).toMatch(/not authori[sz]ed|bad user name or password|Connection Refused/i);
  });
});

describe('secured mode: failed logins are throttled', () => {
  it('per client id, then per address, refusing even the right secret meanwhile', async () => {
    const { running, secrets } = await securedApp(['thr-1', 'thr-2']);
    try {
      const url = running.addresses.mqtt;
      const as = (id: string, password: string) => attempt(url, { clientId: id, username: id, password });
      // Five free failures for a client id (the default)...
      for (let i = 0; i < 5; i++) expect((await as('thr-1', 'wrong')).code).toBe(4);
      expect(await failures(running, 'throttled')).toBe(0);
      // ...after which the sixth failure blocks the id, so the right secret is refused too.
      expect((await as('thr-1', 'wrong')).code).toBe(4);
      expect((await as('thr-1', secrets['thr-1'] ?? '')).code).toBe(4);
      expect(await failures(running, 'throttled')).toBe(1);

      // Twenty free failures per address: 6 so far, 14 more guesses at other ids.
      for (let i = 0; i < 14; i++) expect((await as(`guess-${i}`, 'x')).code).toBe(4);
      const ok = await as('thr-2', secrets['thr-2'] ?? '');
      expect(ok.client?.connected).toBe(true);
      ok.client?.end(true);
      expect((await as('guess-last', 'x')).code).toBe(4);
      // The address is blocked now: a device with the right secret is refused from it.
      expect((await as('thr-2', secrets['thr-2'] ?? '')).code).toBe(4);
      expect(await failures(running, 'throttled')).toBe(2);
    } finally {
      await running.destroy();
    }
  });
});

describe('open mode', () => {
  it('stays anonymous and general-purpose', async () => {
    const running = await startApp();
    const clients: MqttClient[] = [];
    try {
      const watcher = await connectClient(running.addresses.mqtt);
      clients.push(watcher);
      const seen: string[] = [];
      watcher.on('message', (topic) => seen.push(topic));
      await watcher.subscribeAsync(['#', 'devices/+/commands/#'], { qos: 1 });
      const anyone = await connectClient(running.addresses.mqtt, { clientId: 'not-a-device+id', username: 'whoever', password: 'whatever' });
      clients.push(anyone);
      await anyone.publishAsync('home/kitchen/light', 'on', { qos: 1 });
      await anyone.publishAsync('devices/sensor-9/telemetry', '{"temp":3}', { qos: 1 });
      await waitFor(() => seen.includes('home/kitchen/light') && seen.includes('devices/sensor-9/telemetry'), 5000, 'both messages at the watcher');
      expect((await running.app.store.latest('sensor-9'))?.values).toEqual({ temp: 3 });
      expect(await failures(running, 'publish_denied')).toBe(0);
    } finally {
      for (const c of clients) c.end(true);
      await running.destroy();
    }
  });
});

/**
 * Device credentials over a real LevelDB (issue, rotate, verify, revoke, persistence),
 * the login throttle's policy with a fake clock, and the provisioning routes
 * (`POST /v1/devices/{id}/credentials`, `DELETE /v1/devices/{id}`) through `inject()`.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { buildApi } from '../api/index.js';
import { DeviceCredentials } from '../access/device-credentials.js';
import { addressKey, LoginThrottle } from '../access/login-throttle.js';
import { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { MemoryTelemetryStore } from '../store/index.js';
import { MemoryChangeLog } from '../streams/memory-log.js';
import { minimalApiDeps } from './app-harness.js';
import { tempDir } from './helpers.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function openDatabase(path?: string): Promise<{ db: Database; path: string }> {
  let dir = path;
  if (dir === undefined) {
    const t = tempDir();
    cleanups.push(t.cleanup);
    dir = t.path;
  }
  const db = await Database.open(dir);
  cleanups.push(() => db.close());
  return { db, path: dir };
}

describe('DeviceCredentials', () => {
  it('issues a secret that verifies, and only that secret', async () => {
    const { db } = await openDatabase();
    const creds = await DeviceCredentials.open(db, { now: () => 1_700_000_000_000 });
    const issued = await creds.issue('sensor-1');
    expect(issued).toEqual({ deviceId: 'sensor-1', secret: expect.stringMatching(/^tdk_[A-Za-z0-9_-]{32}$/) as unknown, createdAt: 1_700_000_000_000, rotated: false });
    expect(creds.verify('sensor-1', Buffer.from(issued.secret))).toBe(true);
    expect(creds.verify('sensor-1', issued.secret)).toBe(true);
    expect(creds.verify('sensor-1', `${issued.secret}x`)).toBe(false);
    expect(creds.verify('sensor-1', '')).toBe(false);
    expect(creds.verify('sensor-2', issued.secret)).toBe(false);
    expect(creds.has('sensor-1')).toBe(true);
    expect(creds.has('sensor-2')).toBe(false);
  });

  it('rotation replaces the secret at once', async () => {
    const { db } = await openDatabase();
    const creds = await DeviceCredentials.open(db);
    const first = await creds.issue('d1');
    const second = await creds.issue('d1');
    expect(second.rotated).toBe(true);
    expect(second.secret).not.toBe(first.secret);
    expect(creds.verify('d1', first.secret)).toBe(false);
    expect(creds.verify('d1', second.secret)).toBe(true);
  });

  it('stores only a digest, and survives a reopen; revocation too', async () => {
    const dir = tempDir();
    cleanups.push(dir.cleanup);
    const db1 = await Database.open(dir.path);
    const creds1 = await DeviceCredentials.open(db1);
    const kept = await creds1.issue('kept');
    const gone = await creds1.issue('gone');
    expect(await creds1.revoke('gone')).toBe(true);
    expect(await creds1.revoke('gone')).toBe(false);
    expect(creds1.verify('gone', gone.secret)).toBe(false);
    const raw = await db1.read((db) => db.iterator({ gte: Buffer.of(Prefix.credential), lt: Buffer.of(Prefix.credential + 1) }).all());
    expect(raw.map(([k]) => k.subarray(1).toString())).toEqual(['kept']);
    const stored = raw[0]?.[1].toString() ?? '';
    expect(stored).not.toContain(kept.secret);
    expect(JSON.parse(stored)).toEqual({ sha256: expect.any(String) as unknown, createdAt: kept.createdAt });
    await db1.close();

    const { db: db2 } = await openDatabase(dir.path);
    const creds2 = await DeviceCredentials.open(db2);
    expect(creds2.verify('kept', kept.secret)).toBe(true);
    expect(creds2.verify('gone', gone.secret)).toBe(false);
    expect(creds2.issuedAt('kept')).toBe(kept.createdAt);
  });

  it('refuses an id that is not a device id', async () => {
    const { db } = await openDatabase();
    const creds = await DeviceCredentials.open(db);
    for (const id of ['a+b', 'a/b', '#', '', 'x'.repeat(129), 'a\u0000b']) {
      await expect(creds.issue(id)).rejects.toMatchObject({ code: 'InvalidParameter' });
    }
  });

  it('a concurrent issue and revoke leave memory and disk agreeing', async () => {
    const dir = tempDir();
    cleanups.push(dir.cleanup);
    const db = await Database.open(dir.path);
    const creds = await DeviceCredentials.open(db);
    await creds.issue('race');
    const [issued] = await Promise.all([creds.issue('race'), creds.revoke('race')]);
    const inMemory = creds.verify('race', issued.secret);
    await db.close();
    const { db: reopened } = await openDatabase(dir.path);
    expect((await DeviceCredentials.open(reopened)).verify('race', issued.secret)).toBe(inMemory);
  });
});

describe('LoginThrottle', () => {
  function throttle(opts: ConstructorParameters<typeof LoginThrottle>[0] = {}) {
    const clock = { now: 1_000_000 };
    const t = new LoginThrottle({ now: () => clock.now, ...opts });
    return { t, clock };
  }

  it('lets a few failures pass, then backs off, doubling up to the ceiling', () => {
    const { t, clock } = throttle({ freeFailuresPerClient: 3, freeFailuresPerAddress: 1000, baseBackoffMs: 1000, maxBackoffMs: 4000 });
    for (let i = 0; i < 3; i++) {
      expect(t.check('d1', '10.0.0.1')).toBeUndefined();
      t.failure('d1', '10.0.0.1');
    }
    expect(t.check('d1', '10.0.0.1')).toBeUndefined();
    t.failure('d1', '10.0.0.1'); // 4th: 1 s
    expect(t.check('d1', '10.0.0.9')).toEqual({ by: 'clientId', until: clock.now + 1000 });
    expect(t.check('d2', '10.0.0.1')).toBeUndefined();
    const backoffs: number[] = [];
    for (let i = 0; i < 4; i++) {
      clock.now = (t.check('d1', '10.0.0.1') as { until: number }).until;
      expect(t.check('d1', '10.0.0.1')).toBeUndefined();
      t.failure('d1', '10.0.0.1');
      backoffs.push((t.check('d1', '10.0.0.1') as { until: number }).until - clock.now);
    }
    expect(backoffs).toEqual([2000, 4000, 4000, 4000]);
  });

  it('a success clears the client id, not the address', () => {
    const { t } = throttle({ freeFailuresPerClient: 1, freeFailuresPerAddress: 2 });
    t.failure('d1', 'addr');
    t.failure('d1', 'addr');
    expect(t.check('d1', 'other')?.by).toBe('clientId');
    t.success('d1');
    expect(t.check('d1', 'other')).toBeUndefined();
    t.failure('d2', 'addr');
    expect(t.check('d3', 'addr')?.by).toBe('address');
    t.success('d3');
    expect(t.check('d3', 'addr')?.by).toBe('address');
  });

  it('throttles an address that sprays many client ids', () => {
    const { t } = throttle({ freeFailuresPerClient: 5, freeFailuresPerAddress: 10 });
    for (let i = 0; i < 11; i++) t.failure(`guess-${i}`, '192.0.2.7');
    expect(t.check('fresh-id', '192.0.2.7')).toMatchObject({ by: 'address' });
    expect(t.check('fresh-id', '192.0.2.8')).toBeUndefined();
  });

  it('forgets a key after a quiet period', () => {
    const { t, clock } = throttle({ freeFailuresPerClient: 1, maxBackoffMs: 1000, baseBackoffMs: 1000, forgetAfterMs: 60_000 });
    t.failure('d1', 'a');
    t.failure('d1', 'a');
    expect(t.check('d1', 'a')).toBeDefined();
    clock.now += 60_000;
    expect(t.check('d1', 'a')).toBeUndefined();
    t.failure('d1', 'a'); // counts from zero again: free
    expect(t.check('d1', 'a')).toBeUndefined();
  });

  it('keeps memory bounded, dropping the least recently failed keys', () => {
    const { t } = throttle({ maxKeys: 100, freeFailuresPerClient: 0 });
    for (let i = 0; i < 10_000; i++) t.failure(`id-${i}`, `10.0.${i >> 8}.${i & 255}`);
    expect(t.size).toEqual({ clients: 100, addresses: 100 });
    expect(t.check('id-9999', 'x')).toBeDefined();
    expect(t.check('id-0', 'x')).toBeUndefined();
  });

  it('keys IPv4 addresses as they are and IPv6 addresses by their /64', () => {
    expect(addressKey('192.0.2.7')).toBe('192.0.2.7');
    expect(addressKey('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(addressKey('2001:db8:1:2:aaaa::1')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:db8:1:2:bbbb:cccc:dddd:eeee')).toBe('2001:db8:1:2::/64');
    expect(addressKey('2001:0db8::1')).toBe('2001:db8:0:0::/64');
    expect(addressKey('::1')).toBe('0:0:0:0::/64');
    expect(addressKey('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(addressKey('64:ff9b::192.0.2.7')).toBe('64:ff9b:0:0::/64');
    expect(addressKey('unknown')).toBe('unknown');
  });

  it('rejects nonsensical options', () => {
    expect(() => new LoginThrottle({ maxKeys: 0 })).toThrow(RangeError);
    expect(() => new LoginThrottle({ baseBackoffMs: 1000, maxBackoffMs: 10 })).toThrow(RangeError);
  });
});

describe('provisioning routes', () => {
  async function harness() {
    const { db } = await openDatabase();
    const credentials = await DeviceCredentials.open(db);
    const store = new MemoryTelemetryStore({ changeLog: new MemoryChangeLog({ shards: 1 }) });
    const disconnected: string[] = [];
    const app = buildApi({ ...minimalApiDeps(store), credentials, disconnectDevice: (id) => disconnected.push(id) });
    cleanups.push(() => app.close());
    return { app, store, credentials, disconnected };
  }

  it('POST issues a secret once (registering the device), and rotates it', async () => {
    const { app, credentials, disconnected } = await harness();
    const first = await app.inject({ method: 'POST', url: '/v1/devices/sensor-1/credentials' });
    expect(first.statusCode).toBe(201);
    expect(first.headers['cache-control']).toBe('no-store');
    const body = first.json<{ deviceId: string; secret: string; createdAt: number; rotated: boolean }>();
    expect(body).toMatchObject({ deviceId: 'sensor-1', rotated: false });
    expect(credentials.verify('sensor-1', body.secret)).toBe(true);
    expect(disconnected).toEqual([]);
    const device = await app.inject({ method: 'GET', url: '/v1/devices/sensor-1' });
    expect(device.statusCode).toBe(200);
    expect(device.json()).toMatchObject({ deviceId: 'sensor-1', firstSeen: null, tags: {} });

    const second = await app.inject({ method: 'POST', url: '/v1/devices/sensor-1/credentials' });
    expect(second.statusCode).toBe(201);
    expect(second.json()).toMatchObject({ rotated: true });
    expect(credentials.verify('sensor-1', body.secret)).toBe(false);
    // The live connection logged in with the old secret.
    expect(disconnected).toEqual(['sensor-1']);
  });

  it('keeps the tags of a registered device', async () => {
    const { app } = await harness();
    await app.inject({ method: 'PUT', url: '/v1/devices/d1', payload: { tags: { site: 'a' } } });
    expect((await app.inject({ method: 'POST', url: '/v1/devices/d1/credentials' })).statusCode).toBe(201);
    expect((await app.inject({ method: 'GET', url: '/v1/devices/d1' })).json()).toMatchObject({ tags: { site: 'a' } });
  });

  it('refuses a malformed id with InvalidParameter', async () => {
    const { app } = await harness();
    for (const id of ['a+b', '%23', 'a%2Fb']) {
      const res = await app.inject({ method: 'POST', url: `/v1/devices/${id}/credentials` });
      expect(res.statusCode).toBe(400);
      expect(res.json()).toMatchObject({ error: { code: 'InvalidParameter', field: 'id' } });
    }
  });

  it('DELETE revokes the secret and disconnects the device; 404 once nothing is left', async () => {
    const { app, credentials, disconnected } = await harness();
    const { secret } = (await app.inject({ method: 'POST', url: '/v1/devices/d1/credentials' })).json<{ secret: string }>();
    expect((await app.inject({ method: 'DELETE', url: '/v1/devices/d1' })).statusCode).toBe(204);
    expect(credentials.verify('d1', secret)).toBe(false);
    expect(disconnected).toEqual(['d1']);
    const again = await app.inject({ method: 'DELETE', url: '/v1/devices/d1' });
    expect(again.statusCode).toBe(404);
    expect(again.json()).toMatchObject({ error: { code: 'DeviceNotFound' } });
  });

  it('DELETE revokes a secret whose device has no registry entry', async () => {
    const { app, credentials } = await harness();
    const { secret } = await credentials.issue('orphan');
    expect((await app.inject({ method: 'DELETE', url: '/v1/devices/orphan' })).statusCode).toBe(204);
    expect(credentials.verify('orphan', secret)).toBe(false);
  });
});

/**
 * HTTP API tests against the in-memory store: every route's happy path, and that every
 * failure leaves in the `{ error: { code, message, field? } }` shape. All through
 * `app.inject()` (no socket) except graceful close, which is about sockets.
 */
import { Writable } from 'node:stream';
import type { FastifyInstance, LightMyRequestResponse } from 'fastify';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { buildApi, type ApiDeps } from '../api/index.js';
import { TributaryError } from '../core/errors.js';
import { MemoryTelemetryStore, type DeviceInfo, type Reading, type TelemetryStore, type Values } from '../store/index.js';
import { MemoryChangeLog } from '../streams/memory-log.js';
import { waitFor } from './helpers.js';

/** A stand-in for the lead's ingest decoder: `{ts, values}`, a bare object, or an array of either. */
function fakeIngest(store: TelemetryStore): ApiDeps['ingest'] {
  return async (deviceId, body) => {
    const list = Array.isArray(body) ? body : [body];
    const readings = list.map((r: Record<string, unknown>) => {
      if ('ts' in r && typeof r['ts'] !== 'number') throw new TributaryError('ValidationError', 'ts must be epoch milliseconds', { field: 'ts' });
      return 'values' in r ? { ts: r['ts'] as number, values: r['values'] as Values } : { values: r as Values };
    });
    const result = await store.write({ deviceId, readings });
    return { accepted: result.items.length, items: result.items };
  };
}

/** The in-memory store (same engine as the LevelDB one, no I/O). */
function memoryStore(): MemoryTelemetryStore {
  return new MemoryTelemetryStore({ changeLog: new MemoryChangeLog({ shards: 4 }) });
}

interface Harness {
  app: FastifyInstance;
  store: TelemetryStore;
  logs: Array<Record<string, unknown>>;
  setReady(v: boolean): void;
}

let current: Harness | undefined;
afterEach(async () => {
  await current?.app.close();
  await current?.store.close();
  current = undefined;
});

function harness(overrides: Partial<ApiDeps> = {}): Harness {
  const store = overrides.store ?? memoryStore();
  const logs: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) logs.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  let ready = true;
  const app = buildApi({
    store,
    logger: pino({ level: 'info' }, sink),
    ready: () => ready,
    ingest: fakeIngest(store),
    maxBodyBytes: 1024,
    ...overrides,
  });
  current = { app, store, logs, setReady: (v) => (ready = v) };
  return current;
}

/** Asserts the contract's error shape and returns its `error` object. */
function expectError(res: LightMyRequestResponse, status: number, code: string, field?: string): { code: string; message: string; field?: string } {
  expect(res.statusCode, res.body).toBe(status);
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  const body = res.json<{ error: { code: string; message: string; field?: string } }>();
  expect(Object.keys(body)).toEqual(['error']);
  expect(body.error.code).toBe(code);
  expect(typeof body.error.message).toBe('string');
  expect(body.error.message.length).toBeGreaterThan(0);
  if (field === undefined) expect(body.error).not.toHaveProperty('field');
  else expect(body.error.field).toBe(field);
  return body.error;
}

async function post(app: FastifyInstance, deviceId: string, payload: unknown) {
  return app.inject({ method: 'POST', url: `/v1/devices/${deviceId}/telemetry`, payload: payload as object });
}

describe('probes', () => {
  it('GET /healthz answers ok', async () => {
    const { app } = harness();
    const res = await app.inject('/healthz');
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ status: 'ok' });
    expect(res.headers['x-request-id']).toBeTruthy();
  });

  it('GET /readyz is 200 when ready and 503 StoreUnavailable when not', async () => {
    const h = harness();
    expect((await h.app.inject('/readyz')).json()).toEqual({ status: 'ready' });
    h.setReady(false);
    expectError(await h.app.inject('/readyz'), 503, 'StoreUnavailable');
  });

  it('GET /metrics serves the registry as Prometheus text when one is given', async () => {
    const { app } = harness({ metrics: { contentType: 'text/plain; version=0.0.4; charset=utf-8', metrics: async () => 'up 1\n' } });
    const res = await app.inject('/metrics');
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(res.body).toBe('up 1\n');
  });

  it('has no /metrics route without a registry', async () => {
    const { app } = harness();
    expectError(await app.inject('/metrics'), 404, 'NotFound');
  });
});

describe('ingest and read back', () => {
  it('POST accepts one reading, {ts, values}, and arrays, answering 201 {accepted, items}', async () => {
    const { app } = harness();
    const t = Date.now() - 60_000;
    const one = await post(app, 'dev-1', { temp: 21.5, gps: { lat: 1, lon: 2 } });
    expect(one.statusCode).toBe(201);
    expect(one.json()).toMatchObject({ accepted: 1, items: [{ change: 'INSERT' }] });

    const many = await post(app, 'dev-1', [{ ts: t, values: { temp: 20 } }, { ts: t + 1, values: { temp: 20.5 } }]);
    expect(many.statusCode).toBe(201);
    expect(many.json()).toEqual({ accepted: 2, items: [{ ts: t, seq: expect.any(Number), change: 'INSERT' }, { ts: t + 1, seq: expect.any(Number), change: 'INSERT' }] });
  });

  it('GET telemetry returns {items, nextCursor} in order, pages with the cursor, and projects keys', async () => {
    const { app } = harness();
    const t = Date.now() - 10_000;
    await post(app, 'dev-1', [1, 2, 3].map((i) => ({ ts: t + i, values: { temp: i, hum: 50 + i, gps: { lat: i } } })));

    const all = await app.inject('/v1/devices/dev-1/telemetry');
    expect(all.statusCode).toBe(200);
    const page = all.json<{ items: Reading[]; nextCursor: string | null }>();
    expect(page.items.map((r) => r.ts)).toEqual([t + 1, t + 2, t + 3]);
    expect(page.items[0]).toEqual({ deviceId: 'dev-1', ts: t + 1, seq: expect.any(Number), values: { temp: 1, hum: 51, gps: { lat: 1 } } });
    expect(page.nextCursor).toBeNull();

    const first = (await app.inject('/v1/devices/dev-1/telemetry?order=desc&limit=2')).json<{ items: Reading[]; nextCursor: string }>();
    expect(first.items.map((r) => r.ts)).toEqual([t + 3, t + 2]);
    expect(typeof first.nextCursor).toBe('string');
    const second = (await app.inject(`/v1/devices/dev-1/telemetry?order=desc&limit=2&cursor=${encodeURIComponent(first.nextCursor)}`)).json<{ items: Reading[] }>();
    expect(second.items.map((r) => r.ts)).toEqual([t + 1]);

    const projected = (await app.inject('/v1/devices/dev-1/telemetry?keys=temp,%20hum&limit=1')).json<{ items: Reading[] }>();
    expect(projected.items[0]?.values).toEqual({ temp: 1, hum: 51 });
  });

  it('GET telemetry defaults to the last 24 h and accepts epoch ms, ISO-8601, now and offsets', async () => {
    const { app } = harness();
    const now = Date.now();
    const old = now - 2 * 86_400_000;
    await post(app, 'dev-1', [{ ts: old, values: { v: 1 } }, { ts: now - 3_600_000, values: { v: 2 } }, { ts: now - 60_000, values: { v: 3 } }]);
    const tsOf = async (qs: string) => (await app.inject(`/v1/devices/dev-1/telemetry${qs}`)).json<{ items: Reading[] }>().items.map((r) => r.values['v']);

    expect(await tsOf('')).toEqual([2, 3]);
    expect(await tsOf(`?from=${old}&to=${old}`)).toEqual([1]);
    expect(await tsOf(`?from=${new Date(old - 1).toISOString()}&to=-2h`)).toEqual([1]);
    expect(await tsOf('?from=-15m&to=now')).toEqual([3]);
  });

  it('GET latest returns the reading with the highest ts', async () => {
    const { app } = harness();
    const t = Date.now();
    await post(app, 'dev-1', [{ ts: t, values: { v: 'newest' } }, { ts: t - 1000, values: { v: 'older' } }]);
    const res = await app.inject('/v1/devices/dev-1/latest');
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ deviceId: 'dev-1', ts: t, seq: expect.any(Number), values: { v: 'newest' } });
  });

  it('GET /v1/devices lists devices with a cursor; GET /v1/devices/:id returns one', async () => {
    const { app } = harness();
    for (const id of ['a', 'b', 'c']) await post(app, id, { v: 1 });
    const first = (await app.inject('/v1/devices?limit=2')).json<{ items: DeviceInfo[]; nextCursor: string }>();
    expect(first.items.map((d) => d.deviceId)).toEqual(['a', 'b']);
    const second = (await app.inject(`/v1/devices?limit=2&cursor=${first.nextCursor}`)).json<{ items: DeviceInfo[]; nextCursor: string | null }>();
    expect(second).toEqual({ items: [expect.objectContaining({ deviceId: 'c' })], nextCursor: null });

    const one = await app.inject('/v1/devices/b');
    expect(one.statusCode).toBe(200);
    expect(one.json()).toEqual({ deviceId: 'b', firstSeen: expect.any(Number), lastSeen: expect.any(Number), readings: 1, readingsPerMinute: expect.any(Number), tags: {} });
  });

  it('accepts the longest legal device id (128 characters) and every allowed character', async () => {
    const { app } = harness();
    for (const id of ['x'.repeat(128), 'site-1.floor_2:sensor-A']) {
      expect((await post(app, id, { v: 1 })).statusCode).toBe(201);
      expect((await app.inject(`/v1/devices/${id}`)).statusCode).toBe(200);
    }
  });
});

describe('aggregation, per-key latest and the registry', () => {
  it('GET telemetry/aggregate buckets the range by interval with the chosen aggregates and keys', async () => {
    const { app } = harness();
    const minute = Math.floor(Date.now() / 60_000) * 60_000 - 10 * 60_000;
    await post(app, 'dev-1', [
      { ts: minute + 1000, values: { temp: 20, hum: 40, status: 'ok' } },
      { ts: minute + 2000, values: { temp: 24, hum: 42 } },
      { ts: minute + 2 * 60_000, values: { temp: 30, status: 'hot' } },
    ]);
    const res = await app.inject(`/v1/devices/dev-1/telemetry/aggregate?from=${minute}&to=${minute + 5 * 60_000}&interval=1m&agg=avg,max,count&keys=temp,status`);
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toEqual({
      deviceId: 'dev-1',
      from: minute,
      to: minute + 5 * 60_000,
      intervalMs: 60_000,
      buckets: [
        { start: minute, end: minute + 60_000, values: { temp: { avg: 22, max: 24, count: 2 }, status: { avg: null, max: null, count: 1 } } },
        { start: minute + 2 * 60_000, end: minute + 3 * 60_000, values: { temp: { avg: 30, max: 30, count: 1 }, status: { avg: null, max: null, count: 1 } } },
      ],
    });
    // Defaults: the last 24 h, avg of every key; an interval may be given in milliseconds.
    const defaults = (await app.inject('/v1/devices/dev-1/telemetry/aggregate?interval=3600000')).json<{ intervalMs: number; buckets: Array<{ values: Record<string, unknown> }> }>();
    expect(defaults.intervalMs).toBe(3_600_000);
    expect(defaults.buckets.flatMap((b) => Object.keys(b.values)).sort()).toEqual(expect.arrayContaining(['hum', 'status', 'temp']));
    const first = (await app.inject(`/v1/devices/dev-1/telemetry/aggregate?from=${minute}&interval=1h&agg=first,last,sum,min&keys=status`)).json<{ buckets: Array<{ values: unknown }> }>();
    expect(first.buckets.map((b) => b.values)).toContainEqual({ status: expect.objectContaining({ sum: null, min: null }) });
  });

  it('GET latest?keys= answers per-key latest values', async () => {
    const { app } = harness();
    const t = Date.now() - 60_000;
    await post(app, 'dev-1', [{ ts: t, values: { temp: 20, hum: 40, gps: { lat: 1 } } }, { ts: t + 1000, values: { temp: 21 } }]);
    const res = await app.inject('/v1/devices/dev-1/latest?keys=temp,hum,gps,nope');
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({
      deviceId: 'dev-1',
      values: { temp: { ts: t + 1000, seq: 0, value: 21 }, hum: { ts: t, seq: 0, value: 40 }, 'gps.lat': { ts: t, seq: 0, value: 1 } },
    });
    // Without keys: the latest reading, as before.
    expect((await app.inject('/v1/devices/dev-1/latest')).json()).toEqual({ deviceId: 'dev-1', ts: t + 1000, seq: 0, values: { temp: 21 } });
  });

  it('PUT /v1/devices/:id registers a device (201) or replaces its tags (200); GET lists by tag', async () => {
    const { app } = harness();
    const created = await app.inject({ method: 'PUT', url: '/v1/devices/pump-1', payload: { tags: { site: 'north', kind: 'pump' } } });
    expect(created.statusCode, created.body).toBe(201);
    expect(created.json()).toEqual({ deviceId: 'pump-1', firstSeen: null, lastSeen: null, readings: 0, readingsPerMinute: 0, tags: { site: 'north', kind: 'pump' } });
    expect((await app.inject('/v1/devices/pump-1')).json()).toMatchObject({ firstSeen: null, tags: { site: 'north' } });
    // Registered without readings: latest is NotFound, not DeviceNotFound; per-key latest is empty.
    expectError(await app.inject('/v1/devices/pump-1/latest'), 404, 'NotFound');
    expect((await app.inject('/v1/devices/pump-1/latest?keys=temp')).json()).toEqual({ deviceId: 'pump-1', values: {} });

    const updated = await app.inject({ method: 'PUT', url: '/v1/devices/pump-1', payload: { tags: { site: 'south' } } });
    expect(updated.statusCode).toBe(200);
    expect(updated.json()).toMatchObject({ tags: { site: 'south' } });
    await app.inject({ method: 'PUT', url: '/v1/devices/pump-2', payload: { tags: { site: 'north' } } });
    await post(app, 'sensor-1', { v: 1 });
    const ids = async (qs: string) => (await app.inject(`/v1/devices${qs}`)).json<{ items: DeviceInfo[] }>().items.map((d) => d.deviceId);
    expect(await ids('?tag=site=north')).toEqual(['pump-2']);
    expect(await ids('?tag=site%3Dnorth')).toEqual(['pump-2']);
    expect(await ids('?tag=site')).toEqual(['pump-1', 'pump-2']);
    expect(await ids('?tag=kind')).toEqual([]);
    expect(await ids('')).toEqual(['pump-1', 'pump-2', 'sensor-1']);
    // The `key:value` form of old, or any key a tag cannot have, is refused: never a silent empty list.
    for (const qs of ['?tag=site:north', '?tag==north', '?tag=si%20te']) {
      const res = await app.inject(`/v1/devices${qs}`);
      expect(res.statusCode, qs).toBe(400);
      expect(res.json(), qs).toMatchObject({ error: { code: 'InvalidParameter', field: 'tag' } });
    }
  });

  it('PUT rejects bad tags and unknown body fields with 400 ValidationError', async () => {
    const { app } = harness();
    const bad = async (payload: unknown, field?: string) => expectError(await app.inject({ method: 'PUT', url: '/v1/devices/d', payload: payload as object }), 400, 'ValidationError', field);
    await bad({ tags: { 'a:b': 'x' } }, 'tags');
    await bad({ tags: { a: { nested: true } } }, 'tags.a');
    await bad({ tags: {}, name: 'x' }, 'name');
    expectError(await app.inject({ method: 'PUT', url: '/v1/devices/a+b', payload: {} }), 400, 'InvalidParameter', 'id');
    expectError(await app.inject('/v1/devices/d'), 404, 'DeviceNotFound', 'id');
  });

  it('DELETE /v1/devices/:id removes the device and its data (204); afterwards it is 404', async () => {
    const changeLog = new MemoryChangeLog({ shards: 1 });
    const store = new MemoryTelemetryStore({ changeLog });
    const { app } = harness({ store });
    const t = Date.now() - 60_000;
    await post(app, 'dev-1', [{ ts: t, values: { v: 1 } }, { ts: t + 1, values: { v: 2 } }]);
    await post(app, 'dev-2', { v: 3 });
    const res = await app.inject({ method: 'DELETE', url: '/v1/devices/dev-1' });
    expect(res.statusCode, res.body).toBe(204);
    expect(res.body).toBe('');
    for (const url of ['/v1/devices/dev-1', '/v1/devices/dev-1/telemetry', '/v1/devices/dev-1/latest']) expectError(await app.inject(url), 404, 'DeviceNotFound', 'id');
    expectError(await app.inject({ method: 'DELETE', url: '/v1/devices/dev-1' }), 404, 'DeviceNotFound', 'id');
    expect((await app.inject('/v1/devices')).json<{ items: DeviceInfo[] }>().items.map((d) => d.deviceId)).toEqual(['dev-2']);
    const records = await changeLog.read(0, 0, 100);
    expect(records.filter((r) => r.eventName === 'REMOVE').map((r) => [r.deviceId, r.ts, r.byService])).toEqual([
      ['dev-1', t, undefined],
      ['dev-1', t + 1, undefined],
    ]);
  });
});

describe('error shape: bad parameters', () => {
  const cases: Array<[string, string, string]> = [
    ['bad from', '/v1/devices/dev-1/telemetry?from=yesterday', 'from'],
    ['bad to', '/v1/devices/dev-1/telemetry?to=-5x', 'to'],
    ['from after to', '/v1/devices/dev-1/telemetry?from=2000&to=1000', 'from'],
    ['limit 0', '/v1/devices/dev-1/telemetry?limit=0', 'limit'],
    ['limit above max', '/v1/devices/dev-1/telemetry?limit=10001', 'limit'],
    ['limit not a number', '/v1/devices/dev-1/telemetry?limit=ten', 'limit'],
    ['limit fractional', '/v1/devices?limit=1.5', 'limit'],
    ['bad order', '/v1/devices/dev-1/telemetry?order=sideways', 'order'],
    ['bad cursor', '/v1/devices/dev-1/telemetry?cursor=%25%25not-a-cursor', 'cursor'],
    ['empty cursor', '/v1/devices?cursor=', 'cursor'],
    ['bad device-list cursor', '/v1/devices?cursor=not*a*cursor', 'cursor'],
    ['empty key in keys', '/v1/devices/dev-1/telemetry?keys=temp,,hum', 'keys'],
    ['unknown query parameter', '/v1/devices/dev-1/telemetry?form=-1h', 'form'],
    ['device id with a space', '/v1/devices/bad%20id', 'id'],
    ['device id with an encoded slash', '/v1/devices/a%2Fb/latest', 'id'],
    ['device id with a wildcard', '/v1/devices/dev%2B1/telemetry', 'id'],
    ['device id of 129 characters', `/v1/devices/${'x'.repeat(129)}`, 'id'],
    ['aggregate without interval', '/v1/devices/dev-1/telemetry/aggregate', 'interval'],
    ['aggregate with a bad interval', '/v1/devices/dev-1/telemetry/aggregate?interval=soon', 'interval'],
    ['aggregate with too many buckets', '/v1/devices/dev-1/telemetry/aggregate?interval=1ms&from=-1d', 'interval'],
    ['aggregate with an unknown aggregate', '/v1/devices/dev-1/telemetry/aggregate?interval=1m&agg=avg,median', 'agg'],
    ['aggregate with an empty key', '/v1/devices/dev-1/telemetry/aggregate?interval=1m&keys=a,,b', 'keys'],
    ['aggregate with from after to', '/v1/devices/dev-1/telemetry/aggregate?interval=1m&from=2000&to=1000', 'from'],
    ['latest with an empty key', '/v1/devices/dev-1/latest?keys=temp,', 'keys'],
    ['latest with a malformed key', '/v1/devices/dev-1/latest?keys=gps..lat', 'keys'],
    ['latest with an unknown parameter', '/v1/devices/dev-1/latest?key=temp', 'key'],
  ];
  it.each(cases)('%s → 400 InvalidParameter naming the field', async (_name, url, field) => {
    const { app, store } = harness();
    await store.write({ deviceId: 'dev-1', readings: [{ ts: 1500, values: { v: 1 } }] });
    const err = expectError(await app.inject(url), 400, 'InvalidParameter', field);
    expect(err.message).toContain(field === 'id' ? 'device id' : field);
  });

  it('says which values are allowed', async () => {
    const { app, store } = harness();
    await store.write({ deviceId: 'dev-1', readings: [{ values: { v: 1 } }] });
    const err = expectError(await app.inject('/v1/devices/dev-1/telemetry?order=up'), 400, 'InvalidParameter', 'order');
    expect(err.message).toBe('query parameter order must be one of asc, desc');
  });

  it('answers a malformed URL in the same shape', async () => {
    const { app } = harness();
    expectError(await app.inject('/v1/devices/%E0%A4%A'), 400, 'InvalidParameter');
  });
});

describe('error shape: not found', () => {
  it('unknown routes → 404 NotFound', async () => {
    const { app } = harness();
    const err = expectError(await app.inject('/v2/nothing?x=1'), 404, 'NotFound');
    expect(err.message).toBe('no route matches GET /v2/nothing');
  });

  it('a path that exists with other methods → 405 MethodNotAllowed with Allow', async () => {
    const { app } = harness();
    const res = await app.inject({ method: 'DELETE', url: '/healthz' });
    expectError(res, 405, 'MethodNotAllowed');
    expect(res.headers['allow']).toBe('GET, HEAD');
  });

  it.each(['/v1/devices/ghost', '/v1/devices/ghost/telemetry', '/v1/devices/ghost/latest', '/v1/devices/ghost/latest?keys=temp', '/v1/devices/ghost/telemetry/aggregate?interval=1m'])('%s → 404 DeviceNotFound', async (url) => {
    const { app } = harness();
    expectError(await app.inject(url), 404, 'DeviceNotFound', 'id');
  });

  it('latest of a known device without readings → 404 NotFound, not DeviceNotFound', async () => {
    // Stands in for a provisioned device: registered, but `latest` finds nothing.
    const store = memoryStore();
    await store.write({ deviceId: 'quiet', readings: [{ values: { v: 1 } }] });
    store.latestRaw = async () => undefined;
    const { app } = harness({ store });
    expectError(await app.inject('/v1/devices/quiet/latest'), 404, 'NotFound');
  });
});

describe('error shape: request bodies', () => {
  it('an oversized body → 413 PayloadTooLarge, and nothing is written', async () => {
    const { app, store } = harness();
    const res = await post(app, 'dev-1', { blob: 'x'.repeat(2000) });
    const err = expectError(res, 413, 'PayloadTooLarge');
    expect(err.message).toContain('1024');
    expect(await store.getDevice('dev-1')).toBeUndefined();
  });

  it('malformed JSON → 400 ValidationError', async () => {
    const { app } = harness();
    const res = await app.inject({ method: 'POST', url: '/v1/devices/dev-1/telemetry', headers: { 'content-type': 'application/json' }, payload: '{"temp": 21,' });
    expectError(res, 400, 'ValidationError');
  });

  it('an empty JSON body → 400 ValidationError', async () => {
    const { app } = harness();
    const res = await app.inject({ method: 'POST', url: '/v1/devices/dev-1/telemetry', headers: { 'content-type': 'application/json' }, payload: '' });
    expectError(res, 400, 'ValidationError');
  });

  it('a body that is neither a reading nor an array of readings → 400 ValidationError', async () => {
    const { app } = harness();
    for (const payload of ['42', '"hot"', '[1, 2]', 'null']) {
      const res = await app.inject({ method: 'POST', url: '/v1/devices/dev-1/telemetry', headers: { 'content-type': 'application/json' }, payload });
      const err = expectError(res, 400, 'ValidationError');
      expect(err.message).toMatch(/^body must be a reading/);
    }
  });

  it('a non-JSON content type → 400 ValidationError', async () => {
    const { app } = harness();
    const res = await app.inject({ method: 'POST', url: '/v1/devices/dev-1/telemetry', headers: { 'content-type': 'application/xml' }, payload: '<temp>1</temp>' });
    expectError(res, 400, 'ValidationError');
  });

  it('a reading older than the retention → 400 ValidationError on ts, and nothing is written', async () => {
    const store = new MemoryTelemetryStore({ changeLog: new MemoryChangeLog({ shards: 1 }), retentionMs: 86_400_000, retentionCheckMs: 0 });
    const { app } = harness({ store });
    const err = expectError(await post(app, 'dev-1', [{ ts: Date.now(), values: { v: 1 } }, { ts: Date.now() - 2 * 86_400_000, values: { v: 2 } }]), 400, 'ValidationError', 'ts');
    expect(err.message).toContain('is older than the retention of 1d');
    expect(await store.getDevice('dev-1')).toBeUndefined();
  });

  it('passes ingest errors through with their code and field', async () => {
    const { app } = harness();
    expectError(await post(app, 'dev-1', { ts: 'noon', values: { v: 1 } }), 400, 'ValidationError', 'ts');
  });

  it('rejects a bad device id on POST before calling ingest', async () => {
    let called = false;
    const { app } = harness({
      ingest: async () => {
        called = true;
        return { accepted: 0, items: [] };
      },
    });
    expectError(await post(app, 'a+b', { v: 1 }), 400, 'InvalidParameter', 'id');
    expect(called).toBe(false);
  });
});

describe('error shape: internal errors', () => {
  it('a store that throws → 500 InternalError with a generic message; the real error is only logged', async () => {
    const broken = memoryStore();
    broken.getDevice = async () => {
      throw new Error('EIO: disk on fire at /var/lib/secret');
    };
    const { app, logs } = harness({ store: broken });
    const res = await app.inject('/v1/devices/dev-1');
    const err = expectError(res, 500, 'InternalError');
    expect(res.body).not.toMatch(/disk on fire|secret|stack|\s+at\s/);
    expect(err.message).toContain(String(res.headers['x-request-id']));
    const logged = logs.find((l) => l['level'] === 50);
    expect(JSON.stringify(logged)).toContain('disk on fire');
  });

  it('a TributaryError from the store keeps its code and status (StoreUnavailable → 503)', async () => {
    const closed = memoryStore();
    closed.listDevices = async () => {
      throw new TributaryError('StoreUnavailable', 'the store is closed');
    };
    const { app } = harness({ store: closed });
    expectError(await app.inject('/v1/devices'), 503, 'StoreUnavailable');
  });
});

describe('graceful close', () => {
  it('a response in flight when close() starts carries Connection: close, so close() does not wait for keep-alive', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let entered!: () => void;
    const inHandler = new Promise<void>((r) => (entered = r));
    const slow = memoryStore();
    slow.getDevice = async () => {
      entered();
      await gate;
      return undefined;
    };
    const { app } = harness({ store: slow });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const { port } = app.server.address() as { port: number };

    const inflight = fetch(`http://127.0.0.1:${port}/v1/devices/x`);
    await inHandler;
    const closed = app.close();
    // The listener stops after the preClose hooks ran, i.e. once the API knows it is closing.
    await waitFor(() => !app.server.listening, 5000, 'the listener to stop');
    release();
    const res = await inflight;
    expect(res.status).toBe(404);
    expect(res.headers.get('connection')).toBe('close');
    await res.text();
    // Without the header this waits for fastify's 72 s keepAliveTimeout.
    await closed;
  }, 10_000);
});

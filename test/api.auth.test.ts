/**
 * Access control over real HTTP on a real app in secured mode: the bootstrap admin key,
 * 401 and 403, the allow/deny matrix of a few least-privilege keys, list filtering
 * (devices, stream records, the SSE tail), key deletion, the audit log, and every
 * documented route declaring an action. One app for the file (starting one per test
 * would dominate the run); tests that change state use their own keys and devices.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_KEY_ID, ApiKeyStore, newApiKeyToken } from '../access/api-keys.js';
import { AuditLog } from '../access/audit-log.js';
import { secretDigest } from '../access/secrets.js';
import { buildApi, type ApiDeps } from '../api/index.js';
import { MemoryTelemetryStore } from '../store/index.js';
import { MemoryChangeLog } from '../streams/memory-log.js';
import { minimalApiDeps, startApp, type RunningApp } from './app-harness.js';
import { tempDir, waitFor } from './helpers.js';

let running: RunningApp;
let base: string;
let admin: string;
const data = tempDir();

interface Res {
  status: number;
  body: unknown;
  headers: Headers;
}

async function req(key: string | undefined, method: string, path: string, body?: unknown): Promise<Res> {
  const headers: Record<string, string> = {};
  if (key !== undefined) headers['authorization'] = `Bearer ${key}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${base}${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = text === '' ? undefined : JSON.parse(text);
  } catch {
    // Not JSON (metrics, docs): keep the text.
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

function codeOf(res: Res): string | undefined {
  return (res.body as { error?: { code?: string } } | undefined)?.error?.code;
}

async function createKey(name: string, statements: Array<{ actions: string[]; devices: string[] }>): Promise<{ id: string; key: string }> {
  const res = await req(admin, 'POST', '/v1/keys', { name, policy: { statements } });
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  return res.body as { id: string; key: string };
}

const keys: Record<string, string> = {};

beforeAll(async () => {
  running = await startApp({ dataDir: data.path, secure: true });
  base = running.addresses.http;
  admin = running.addresses.adminKey as string;
  keys['reader7'] = (await createKey('site-7 reader', [{ actions: ['telemetry:Read', 'streams:Read'], devices: ['site-7-*'] }])).key;
  keys['writer7'] = (await createKey('site-7 writer', [{ actions: ['telemetry:Write'], devices: ['site-7-*'] }])).key;
  keys['manager7'] = (await createKey('site-7 manager', [{ actions: ['devices:Manage'], devices: ['site-7-*'] }])).key;
  keys['deployer'] = (await createKey('deployer', [{ actions: ['functions:Deploy', 'functions:Invoke'], devices: ['*'] }])).key;
  keys['deployer7'] = (await createKey('site-7 deployer', [{ actions: ['functions:Deploy'], devices: ['site-7-*'] }])).key;
  keys['scraper'] = (await createKey('metrics scraper', [])).key;
  for (const id of ['site-7-a', 'site-7-b', 'site-8-a']) {
    const res = await req(admin, 'POST', `/v1/devices/${id}/telemetry`, { temp: 20 });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
  }
}, 30_000);

afterAll(async () => {
  await running?.stop();
  data.cleanup();
});

describe('the bootstrap admin key', () => {
  it('is generated on the first secured start, returned once and written to admin.key with mode 0600', () => {
    expect(admin).toMatch(/^tak_admin_[A-Za-z0-9_-]{32}$/);
    const file = join(data.path, 'admin.key');
    expect(readFileSync(file, 'utf8').trim()).toBe(admin);
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('lets the admin call admin routes; the admin key is not listed and cannot be deleted', async () => {
    const list = await req(admin, 'GET', '/v1/keys');
    expect(list.status).toBe(200);
    const items = (list.body as { items: Array<{ id: string; name: string }> }).items;
    expect(items.map((k) => k.name).sort()).toEqual(['deployer', 'metrics scraper', 'site-7 deployer', 'site-7 manager', 'site-7 reader', 'site-7 writer']);
    expect(JSON.stringify(list.body)).not.toContain('tak_');
    const del = await req(admin, 'DELETE', '/v1/keys/admin');
    expect(del.status).toBe(409);
  });
});

describe('authentication', () => {
  it('leaves the probes and the self-description open', async () => {
    for (const path of ['/healthz', '/readyz', '/openapi.json', '/docs', '/docs/static/swagger-ui.css', '/docs/json']) {
      expect((await req(undefined, 'GET', path)).status, path).toBe(200);
    }
  });

  it.each([
    ['no Authorization header', undefined],
    ['a wrong scheme', 'Basic YWRtaW46YWRtaW4='],
    ['an unknown key', 'Bearer tak_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'],
    ['a mangled admin key', 'mangled'],
    ['garbage', 'Bearer '],
  ])('answers 401 Unauthorized with WWW-Authenticate for %s', async (_name, header) => {
    // Its last character changed (to another one: a key ending in x stayed valid, 1 run in 64).
    const value = header === 'mangled' ? `Bearer ${admin.slice(0, -1)}${admin.endsWith('x') ? 'y' : 'x'}` : header;
    const res = await fetch(`${base}/v1/devices`, value === undefined ? {} : { headers: { authorization: value } });
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('Unauthorized');
  });

  it('lets any valid key scrape /metrics, and no one without a key', async () => {
    expect((await req(undefined, 'GET', '/metrics')).status).toBe(401);
    const res = await req(keys['scraper'], 'GET', '/metrics');
    expect(res.status).toBe(200);
    expect(String(res.body)).toContain('tributary_');
  });

  it('does not check keys on unknown paths: they answer 404', async () => {
    expect((await req(undefined, 'GET', '/v1/nope')).status).toBe(404);
  });
});

describe('the allow/deny matrix', () => {
  // [key, method, path, body, expected status]
  const MATRIX: Array<[string, string, string, unknown, number]> = [
    ['reader7', 'GET', '/v1/devices/site-7-a/latest', undefined, 200],
    ['reader7', 'GET', '/v1/devices/site-8-a/latest', undefined, 403],
    ['reader7', 'GET', '/v1/devices/site-7-a/telemetry?from=0', undefined, 200],
    ['reader7', 'GET', '/v1/devices/site-8-a/telemetry?from=0', undefined, 403],
    ['reader7', 'GET', '/v1/devices/site-7-a/telemetry/aggregate?from=-1h&interval=1m', undefined, 200],
    ['reader7', 'GET', '/v1/devices/site-8-a/telemetry/aggregate?from=-1h&interval=1m', undefined, 403],
    ['reader7', 'GET', '/v1/devices/site-7-a', undefined, 200],
    ['reader7', 'GET', '/v1/devices/site-8-a', undefined, 403],
    ['reader7', 'POST', '/v1/devices/site-7-a/telemetry', { temp: 1 }, 403],
    ['reader7', 'PUT', '/v1/devices/site-7-c', {}, 403],
    ['reader7', 'GET', '/v1/streams/shards', undefined, 200],
    ['reader7', 'GET', '/v1/keys', undefined, 403],
    ['reader7', 'POST', '/v1/keys', { name: 'escalate', policy: { statements: [{ actions: ['admin:*'], devices: ['*'] }] } }, 403],
    ['reader7', 'GET', '/v1/audit', undefined, 403],
    ['reader7', 'GET', '/v1/functions', undefined, 403],
    ['writer7', 'POST', '/v1/devices/site-7-a/telemetry', { temp: 2 }, 201],
    ['writer7', 'POST', '/v1/devices/site-8-a/telemetry', { temp: 2 }, 403],
    ['writer7', 'GET', '/v1/devices/site-7-a/latest', undefined, 403],
    ['writer7', 'GET', '/v1/streams/shards', undefined, 403],
    ['manager7', 'PUT', '/v1/devices/site-7-m', { tags: { room: 'boiler' } }, 201],
    ['manager7', 'PUT', '/v1/devices/site-8-m', {}, 403],
    ['manager7', 'DELETE', '/v1/devices/site-8-a', undefined, 403],
    ['manager7', 'DELETE', '/v1/devices/site-7-m', undefined, 204],
    ['deployer', 'GET', '/v1/functions', undefined, 200],
    ['deployer', 'GET', '/v1/devices/site-7-a/latest', undefined, 403],
    ['deployer7', 'GET', '/v1/functions', undefined, 403],
    ['deployer', 'GET', '/v1/dlq', undefined, 200],
    ['deployer7', 'GET', '/v1/dlq', undefined, 403],
    ['reader7', 'GET', '/v1/dlq', undefined, 403],
    ['deployer7', 'GET', '/v1/functions/fn/logs', undefined, 403],
    ['reader7', 'GET', '/v1/functions/fn/logs', undefined, 403],
    ['reader7', 'POST', '/v1/functions/fn/invoke', {}, 403],
    ['reader7', 'GET', '/v1/rejects?deviceId=site-7-a', undefined, 200],
    ['reader7', 'GET', '/v1/rejects?deviceId=site-8-a', undefined, 403],
    ['scraper', 'GET', '/v1/devices', undefined, 403],
    ['scraper', 'GET', '/v1/devices/site-7-a/latest', undefined, 403],
    ['admin', 'GET', '/v1/devices/site-8-a/latest', undefined, 200],
    ['admin', 'GET', '/v1/audit', undefined, 200],
  ];

  it.each(MATRIX)('%s %s %s (body %j) → %i', async (who, method, path, body, expected) => {
    const res = await req(who === 'admin' ? admin : keys[who], method, path, body);
    expect(res.status, JSON.stringify(res.body)).toBe(expected);
    if (expected === 403) expect(codeOf(res)).toBe('AccessDenied');
  });
});

describe('list filtering by policy', () => {
  it('lists only the devices the key may read', async () => {
    const res = await req(keys['reader7'], 'GET', '/v1/devices?limit=1000');
    expect(res.status).toBe(200);
    const ids = (res.body as { items: Array<{ deviceId: string }> }).items.map((d) => d.deviceId);
    expect(ids).toContain('site-7-a');
    expect(ids.every((id) => id.startsWith('site-7-'))).toBe(true);
    const all = await req(admin, 'GET', '/v1/devices?limit=1000');
    expect((all.body as { items: Array<{ deviceId: string }> }).items.map((d) => d.deviceId)).toContain('site-8-a');
  });

  it('leaves other devices out of the rejects log', async () => {
    for (const id of ['site-7-a', 'site-8-a']) expect((await req(admin, 'POST', `/v1/devices/${id}/telemetry`, { ts: 'not a time', values: { t: 1 } })).status).toBe(400);
    const devicesIn = async (key: string) => ((await req(key, 'GET', '/v1/rejects?limit=1000')).body as { items: Array<{ deviceId: string | null }> }).items.map((r) => r.deviceId);
    expect(await devicesIn(admin)).toEqual(expect.arrayContaining(['site-7-a', 'site-8-a']));
    const seen = await devicesIn(keys['reader7'] as string);
    expect(seen).toContain('site-7-a');
    expect(seen.every((id) => id?.startsWith('site-7-'))).toBe(true);
  });

  it('leaves other devices out of stream reads', async () => {
    const shards = (await req(keys['reader7'], 'GET', '/v1/streams/shards')).body as { items: Array<{ shardId: string }> };
    const seen = new Set<string>();
    const seenByAdmin = new Set<string>();
    for (const { shardId } of shards.items) {
      for (const [key, into] of [[keys['reader7'], seen], [admin, seenByAdmin]] as const) {
        const res = await req(key, 'GET', `/v1/streams/shards/${shardId}/records?limit=1000`);
        expect(res.status).toBe(200);
        for (const r of (res.body as { items: Array<{ dynamodb: { Keys: { deviceId: { S: string } } } }> }).items) into.add(r.dynamodb.Keys.deviceId.S);
      }
    }
    expect(seenByAdmin.has('site-8-a')).toBe(true);
    expect(seen.has('site-7-a')).toBe(true);
    expect([...seen].every((id) => id.startsWith('site-7-'))).toBe(true);
  });

  it('leaves other devices out of the SSE tail, and refuses a tail of a device outside the policy', async () => {
    expect((await req(keys['reader7'], 'GET', '/v1/streams/tail?deviceId=site-8-a')).status).toBe(403);
    const controller = new AbortController();
    const res = await fetch(`${base}/v1/streams/tail`, { headers: { authorization: `Bearer ${keys['reader7']}` }, signal: controller.signal });
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let text = '';
    const decoder = new TextDecoder();
    try {
      // Connected once the first comment arrives; then write to both sites, site 8 first.
      while (!text.includes(': tail')) text += decoder.decode((await reader.read()).value);
      expect((await req(admin, 'POST', '/v1/devices/site-8-a/telemetry', { tail: 8 })).status).toBe(201);
      expect((await req(admin, 'POST', '/v1/devices/site-7-a/telemetry', { tail: 7 })).status).toBe(201);
      for (let i = 0; i < 100 && !text.includes('"site-7-a"'); i++) text += decoder.decode((await reader.read()).value);
    } finally {
      controller.abort();
    }
    expect(text).toContain('"site-7-a"');
    expect(text).not.toContain('site-8-a');
  });
});

describe('key lifecycle and the audit log', () => {
  it('a deleted key stops working at once', async () => {
    const { id, key } = await createKey('short-lived', [{ actions: ['telemetry:Read'], devices: ['*'] }]);
    expect((await req(key, 'GET', '/v1/devices')).status).toBe(200);
    expect((await req(admin, 'DELETE', `/v1/keys/${id}`)).status).toBe(204);
    expect((await req(key, 'GET', '/v1/devices')).status).toBe(401);
    expect((await req(admin, 'DELETE', `/v1/keys/${id}`)).status).toBe(404);
  });

  it('records administrative requests with their key and outcome, refusals included, newest first', async () => {
    const denied = await req(keys['manager7'], 'PUT', '/v1/devices/site-8-audit', {});
    expect(denied.status).toBe(403);
    const res = await req(admin, 'GET', '/v1/audit?limit=1000');
    expect(res.status).toBe(200);
    const items = (res.body as { items: Array<{ keyId: string | null; method: string; route: string; path: string; status: number; time: number }> }).items;
    expect(items.map((e) => e.time)).toEqual([...items.map((e) => e.time)].sort((a, b) => b - a));
    expect(items).toEqual(expect.arrayContaining([expect.objectContaining({ keyId: 'admin', method: 'POST', route: '/v1/keys', status: 201 })]));
    const refusal = items.find((e) => e.path === '/v1/devices/site-8-audit');
    expect(refusal).toMatchObject({ method: 'PUT', route: '/v1/devices/:id', status: 403 });
    expect(refusal?.keyId).toMatch(/^[0-9a-f]{16}$/);
    // Reads and telemetry writes are not administrative.
    expect(items.some((e) => e.method === 'GET' || e.route.endsWith('/telemetry'))).toBe(false);
    const byKey = await req(admin, 'GET', `/v1/audit?keyId=${refusal?.keyId ?? ''}`);
    const mine = (byKey.body as { items: Array<{ keyId: string }> }).items;
    expect(mine.length).toBeGreaterThan(0);
    expect(mine.every((e) => e.keyId === refusal?.keyId)).toBe(true);
  });
});

describe('every documented route declares an action', () => {
  it('no route of /openapi.json answers the admin key with 403 (an undeclared route would: fail closed)', async () => {
    const doc = (await req(undefined, 'GET', '/openapi.json')).body as { paths: Record<string, Record<string, unknown>> };
    const params: Record<string, string> = { id: 'zz-placeholder', name: 'zz-placeholder', shardId: 'shardId-0000' };
    let checked = 0;
    for (const [path, item] of Object.entries(doc.paths)) {
      for (const method of Object.keys(item)) {
        if (path === '/v1/streams/tail') continue; // never ends; checked above
        const url = path.replace(/\{(\w+)\}/g, (_m, p: string) => params[p] ?? 'zz-placeholder');
        const res = await req(admin, method.toUpperCase(), url, ['post', 'put', 'patch'].includes(method) ? {} : undefined);
        expect(res.status, `${method} ${path}: ${JSON.stringify(res.body)}`).not.toBe(403);
        expect(res.status, `${method} ${path}`).toBeLessThan(500);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(20);
  });
});

describe('restart', () => {
  it('keeps the admin key (not shown again) and the keys created over the API', async () => {
    await running.stop();
    running = await startApp({ dataDir: data.path, secure: true });
    base = running.addresses.http;
    expect(running.addresses.adminKey).toBeUndefined();
    await waitFor(async () => (await req(undefined, 'GET', '/readyz')).status === 200, 5000, 'readiness');
    expect((await req(admin, 'GET', '/v1/keys')).status).toBe(200);
    expect((await req(keys['reader7'], 'GET', '/v1/devices/site-7-a/latest')).status).toBe(200);
    expect((await req(keys['reader7'], 'GET', '/v1/devices/site-8-a/latest')).status).toBe(403);
  }, 30_000);
});

describe('CORS and per-key rate limits (their own API instance)', () => {
  let api: FastifyInstance | undefined;
  let store: MemoryTelemetryStore | undefined;
  const adminToken = newApiKeyToken(ADMIN_KEY_ID);

  async function listen(extra: Partial<ApiDeps>): Promise<string> {
    store = new MemoryTelemetryStore({ changeLog: new MemoryChangeLog({ shards: 1 }) });
    const keys = await ApiKeyStore.open({ adminDigest: secretDigest(adminToken) });
    api = buildApi({ ...minimalApiDeps(store), access: { mode: 'secured', keys }, ...extra });
    await api.listen({ host: '127.0.0.1', port: 0 });
    return `http://127.0.0.1:${(api.server.address() as AddressInfo).port}`;
  }

  afterEach(async () => {
    await api?.close();
    await store?.close();
    api = undefined;
  });

  it('denies a route that declares no action, even to the admin key (fail closed)', async () => {
    store = new MemoryTelemetryStore({ changeLog: new MemoryChangeLog({ shards: 1 }) });
    const keys = await ApiKeyStore.open({ adminDigest: secretDigest(adminToken) });
    api = buildApi({ ...minimalApiDeps(store), access: { mode: 'secured', keys } });
    api.get('/v1/forgotten', async () => ({ secret: true }));
    const res = await api.inject({ url: '/v1/forgotten', headers: { authorization: `Bearer ${adminToken}` } });
    expect(res.statusCode).toBe(403);
    expect(res.json()).toMatchObject({ error: { code: 'AccessDenied', message: expect.stringContaining('declares no action') } });
  });

  it('audits administrative requests in open mode too, with no key', async () => {
    store = new MemoryTelemetryStore({ changeLog: new MemoryChangeLog({ shards: 1 }) });
    const audit = new AuditLog();
    api = buildApi({ ...minimalApiDeps(store), access: { mode: 'open', keys: await ApiKeyStore.open({}), audit } });
    expect((await api.inject({ method: 'PUT', url: '/v1/devices/d1', payload: {} })).statusCode).toBe(201);
    expect((await api.inject('/v1/devices/d1')).statusCode).toBe(200);
    const res = await api.inject('/v1/audit');
    expect(res.statusCode).toBe(200);
    expect(res.json<{ items: unknown[] }>().items).toEqual([expect.objectContaining({ keyId: null, method: 'PUT', route: '/v1/devices/:id', path: '/v1/devices/d1', status: 201 })]);
  });

  it('is off by default: no CORS headers', async () => {
    const url = await listen({});
    const res = await fetch(`${url}/healthz`, { headers: { origin: 'https://dash.example' } });
    expect(res.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('answers preflights without a key and allows the configured origins only', async () => {
    const url = await listen({ corsOrigins: ['https://dash.example'] });
    const preflight = await fetch(`${url}/v1/devices`, {
      method: 'OPTIONS',
      headers: { origin: 'https://dash.example', 'access-control-request-method': 'GET', 'access-control-request-headers': 'authorization' },
    });
    expect(preflight.status).toBe(204);
    expect(preflight.headers.get('access-control-allow-origin')).toBe('https://dash.example');
    const res = await fetch(`${url}/v1/devices`, { headers: { origin: 'https://dash.example', authorization: `Bearer ${adminToken}` } });
    expect(res.status).toBe(200);
    expect(res.headers.get('access-control-allow-origin')).toBe('https://dash.example');
    const other = await fetch(`${url}/v1/devices`, { headers: { origin: 'https://evil.example', authorization: `Bearer ${adminToken}` } });
    expect(other.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('throttles a key past its rate with 429 Throttled and Retry-After, per key, probes exempt', async () => {
    const url = await listen({ rateLimit: 3 });
    const keys = await Promise.all(
      ['a', 'b'].map(async (name) => {
        const res = await fetch(`${url}/v1/keys`, {
          method: 'POST',
          headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' },
          body: JSON.stringify({ name, policy: { statements: [{ actions: ['telemetry:Read'], devices: ['*'] }] } }),
        });
        return ((await res.json()) as { key: string }).key;
      }),
    );
    const get = (key: string) => fetch(`${url}/v1/devices`, { headers: { authorization: `Bearer ${key}` } });
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await get(keys[0] as string)).status);
    expect(statuses).toEqual([200, 200, 200, 429]);
    const throttled = await get(keys[0] as string);
    expect(throttled.status).toBe(429);
    expect(throttled.headers.get('retry-after')).toMatch(/^\d+$/);
    expect(((await throttled.json()) as { error: { code: string } }).error.code).toBe('Throttled');
    // Another key has its own budget; probes are not limited.
    expect((await get(keys[1] as string)).status).toBe(200);
    for (let i = 0; i < 5; i++) expect((await fetch(`${url}/healthz`)).status).toBe(200);
  });
});

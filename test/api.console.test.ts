/**
 * The console's assets and the public routes it is built on, over real HTTP against the
 * whole app: CSP and caching of the files, `--console false`, whoami, server info, store
 * statistics, device search by prefix, the metrics summary as far as a key's policy
 * reaches, and the live function-log tail.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gunzipSync } from 'node:zlib';
import { request } from 'node:http';
import { startApp, type RunningApp } from './app-harness.js';
import { waitFor } from './helpers.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- answers are inspected field by field; each expect checks the shape
async function json(base: string, method: string, path: string, key?: string, body?: unknown): Promise<{ status: number; body: any }> {
  const headers: Record<string, string> = {};
  if (key !== undefined) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(`${base}${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const text = await res.text();
  return { status: res.status, body: text === '' ? undefined : JSON.parse(text) };
}

/** A raw GET (fetch would decompress), resolving with status, headers and body bytes. */
function rawGet(url: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('console assets and routes (open mode)', () => {
  let app: RunningApp;
  let base: string;
  beforeAll(async () => {
    app = await startApp();
    base = app.addresses.http;
  });
  afterAll(async () => app.destroy());

  it('serves the page under a strict CSP, its scripts, and uPlot from the package', async () => {
    const redirect = await rawGet(`${base}/console`);
    expect(redirect.status).toBe(302);
    expect(redirect.headers.location).toBe('/console/');
    const page = await rawGet(`${base}/console/`);
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    const csp = String(page.headers['content-security-policy']);
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain('unsafe-inline');
    expect(page.headers['x-content-type-options']).toBe('nosniff');
    const html = page.body.toString('utf8');
    // No inline script: every <script> has a src.
    for (const tag of html.match(/<script[^>]*>/g) ?? []) expect(tag).toContain('src=');
    expect(html).not.toMatch(/https?:\/\//);
    for (const src of [...html.matchAll(/(?:src|href)="([^"#]+)"/g)].map((m) => m[1] as string)) {
      const asset = await rawGet(`${base}/console/${src}`);
      expect(asset.status, src).toBe(200);
    }
    const uplot = await rawGet(`${base}/console/vendor/uPlot.iife.min.js`);
    expect(uplot.headers['content-type']).toBe('text/javascript; charset=utf-8');
    expect(uplot.body.toString('utf8')).toContain('uPlot');
  });

  it('gzips for clients that accept it and answers 304 to a matching ETag', async () => {
    const plain = await rawGet(`${base}/console/main.js`);
    const gz = await rawGet(`${base}/console/main.js`, { 'accept-encoding': 'gzip' });
    expect(gz.headers['content-encoding']).toBe('gzip');
    expect(gunzipSync(gz.body).equals(plain.body)).toBe(true);
    const etag = String(plain.headers.etag);
    const again = await rawGet(`${base}/console/main.js`, { 'if-none-match': etag });
    expect(again.status).toBe(304);
    expect((await rawGet(`${base}/console/nope.js`)).status).toBe(404);
  });

  it('keeps the console out of the OpenAPI document and documents the new routes', async () => {
    const doc = (await json(base, 'GET', '/openapi.json')).body;
    const paths = Object.keys(doc.paths);
    expect(paths.some((p) => p.startsWith('/console'))).toBe(false);
    for (const p of ['/v1/whoami', '/v1/server', '/v1/store/stats', '/v1/metrics/summary', '/v1/functions/{name}/logs/tail']) expect(paths).toContain(p);
    expect(Object.keys(doc.paths['/v1/functions/{name}/logs/tail'].get.responses['200'].content)).toEqual(['text/event-stream']);
  });

  it('whoami and server info say open mode', async () => {
    expect((await json(base, 'GET', '/v1/whoami')).body).toEqual({ mode: 'open', keyId: null, name: null, policy: null });
    const server = (await json(base, 'GET', '/v1/server')).body;
    expect(server).toMatchObject({ name: 'tributary', mode: 'open', nodeVersion: process.version });
    expect(server.version).toMatch(/^\d+\.\d+\.\d+/);
    expect(server.uptimeSeconds).toBeGreaterThanOrEqual(0);
  });

  it('searches devices by id prefix, with paging and with a tag', async () => {
    for (const id of ['site-6-z', 'site-7-a', 'site-7-b', 'site-7-c', 'site-70', 'site-8-a']) {
      expect((await json(base, 'POST', `/v1/devices/${id}/telemetry`, undefined, { temp: 1 })).status).toBe(201);
    }
    await json(base, 'PUT', '/v1/devices/site-7-b', undefined, { tags: { room: 'lab' } });
    const ids = async (q: string) => ((await json(base, 'GET', `/v1/devices?${q}`)).body.items as Array<{ deviceId: string }>).map((d) => d.deviceId);
    expect(await ids('prefix=site-7-')).toEqual(['site-7-a', 'site-7-b', 'site-7-c']);
    expect(await ids('prefix=site-7')).toEqual(['site-7-a', 'site-7-b', 'site-7-c', 'site-70']);
    expect(await ids('prefix=site-7-b')).toEqual(['site-7-b']);
    expect(await ids('prefix=site-9')).toEqual([]);
    const first = (await json(base, 'GET', '/v1/devices?prefix=site-7-&limit=2')).body;
    expect(first.items.map((d: { deviceId: string }) => d.deviceId)).toEqual(['site-7-a', 'site-7-b']);
    const second = (await json(base, 'GET', `/v1/devices?prefix=site-7-&limit=2&cursor=${first.nextCursor}`)).body;
    expect(second.items.map((d: { deviceId: string }) => d.deviceId)).toEqual(['site-7-c']);
    expect(second.nextCursor).toBeNull();
    const bad = await json(base, 'GET', '/v1/devices?prefix=a%2Fb');
    expect(bad.status).toBe(400);
    expect(bad.body.error.code).toBe('InvalidParameter');
  });

  it('reports store statistics', async () => {
    const stats = (await json(base, 'GET', '/v1/store/stats')).body;
    expect(stats.devices).toBeGreaterThanOrEqual(6);
    expect(stats.readings).toBeGreaterThanOrEqual(6);
    expect(stats.partitions).toBeGreaterThanOrEqual(1);
    expect(stats.sizeBytes).toBeGreaterThan(0);
    expect(stats.rollupTiers).toEqual([]);
  });

  it('summarizes metrics with rates over a window', async () => {
    const summary = (await json(base, 'GET', '/v1/metrics/summary')).body;
    expect(summary.ingest.readingsTotal).toBeGreaterThanOrEqual(6);
    expect(summary.ingest.readingsPerSecond).toBeGreaterThan(0);
    expect(summary.ingest.durableLatencyP99Seconds).toBeGreaterThan(0);
    expect(Array.isArray(summary.functions)).toBe(true);
    expect(summary.dlqDepth).toBe(0);
  });

  it('tails a function\'s log lines live, filtered by level', async () => {
    const code = 'export async function handler(event) { console.log("hello", event.n); console.error("oops", event.n); return event.n; }';
    expect((await json(base, 'PUT', '/v1/functions/greeter', undefined, { code })).status).toBeLessThan(300);
    expect((await json(base, 'GET', '/v1/functions/missing/logs/tail')).status).toBe(404);
    // node:http rather than fetch: destroying the request closes its socket at once.
    let text = '';
    const res = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => request(`${base}/v1/functions/greeter/logs/tail?level=error`, resolve).on('error', reject).end());
    expect(res.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => (text += chunk));
    // The first comment says the tail is live; only then invoke.
    await waitFor(() => text.includes('\n\n'), 5000, 'the tail to open');
    await json(base, 'POST', '/v1/functions/greeter/invoke', undefined, { n: 42 });
    await waitFor(() => /event: log\ndata: .*\n\n/.test(text), 10_000, 'a log line');
    res.destroy();
    const line = JSON.parse(/event: log\ndata: (.*)\n/.exec(text)?.[1] as string);
    expect(line).toMatchObject({ level: 'error', functionVersion: 1 });
    expect(line.message).toContain('oops 42');
    expect(text).not.toContain('hello 42');
  });
});

describe('console routes in secured mode', () => {
  let app: RunningApp;
  let base: string;
  let admin: string;
  let site7: string;
  let metricsOnly: string;
  beforeAll(async () => {
    app = await startApp({ secure: true });
    base = app.addresses.http;
    admin = app.addresses.adminKey as string;
    const created = await json(base, 'POST', '/v1/keys', admin, { name: 'site 7 reader', policy: { statements: [{ actions: ['telemetry:Read', 'streams:Read'], devices: ['site-7-*'] }] } });
    site7 = created.body.key;
    metricsOnly = (await json(base, 'POST', '/v1/keys', admin, { name: 'scraper', policy: { statements: [] } })).body.key;
    for (const id of ['site-7-a', 'site-8-a']) await json(base, 'POST', `/v1/devices/${id}/telemetry`, admin, { temp: 1 });
  });
  afterAll(async () => app.destroy());

  it('serves the console without a key, but nothing of the API', async () => {
    expect((await rawGet(`${base}/console/`)).status).toBe(200);
    expect((await json(base, 'GET', '/v1/whoami')).status).toBe(401);
  });

  it('whoami names the key and its policy', async () => {
    const me = (await json(base, 'GET', '/v1/whoami', site7)).body;
    expect(me).toMatchObject({ mode: 'secured', name: 'site 7 reader', policy: { statements: [{ devices: ['site-7-*'] }] } });
    expect(me.keyId).toMatch(/^[0-9a-f]{16}$/);
    expect((await json(base, 'GET', '/v1/whoami', admin)).body).toMatchObject({ keyId: 'admin', policy: { statements: [{ actions: ['admin:*'], devices: ['*'] }] } });
    expect((await json(base, 'GET', '/v1/server', metricsOnly)).body.mode).toBe('secured');
  });

  it('filters device search by the policy and keeps store-wide figures for keys on every device', async () => {
    const ids = (await json(base, 'GET', '/v1/devices?prefix=site-', site7)).body.items.map((d: { deviceId: string }) => d.deviceId);
    expect(ids).toEqual(['site-7-a']);
    expect((await json(base, 'GET', '/v1/store/stats', site7)).status).toBe(403);
    expect((await json(base, 'GET', '/v1/store/stats', admin)).body.devices).toBe(2);
  });

  it('leaves out of the metrics summary what the policy does not cover', async () => {
    const scoped = (await json(base, 'GET', '/v1/metrics/summary', site7)).body;
    expect(scoped.ingest).toBeDefined();
    expect(scoped.functions).toBeUndefined();
    expect(scoped.dlqDepth).toBeUndefined();
    const bare = (await json(base, 'GET', '/v1/metrics/summary', metricsOnly)).body;
    expect(Object.keys(bare)).toEqual(['at']);
    const full = (await json(base, 'GET', '/v1/metrics/summary', admin)).body;
    expect(full.functions).toEqual([]);
    expect(full.dlqDepth).toBe(0);
  });
});

describe('--console false', () => {
  it('serves no console', async () => {
    const app = await startApp({ console: false });
    try {
      expect((await rawGet(`${app.addresses.http}/console/`)).status).toBe(404);
      await waitFor(async () => (await json(app.addresses.http, 'GET', '/v1/server')).status === 200);
    } finally {
      await app.destroy();
    }
  });
});

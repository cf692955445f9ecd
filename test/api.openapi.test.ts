/**
 * The API's self-description: `GET /openapi.json` is an OpenAPI 3 document that covers
 * every route fastify registered (other than the document and the docs themselves),
 * and `GET /docs` serves Swagger UI with its assets from the installed package.
 * All through `app.inject()`, with every optional route (metrics, streams) enabled.
 */
import { readFileSync } from 'node:fs';
import type { FastifyInstance, RouteOptions } from 'fastify';
import { ApiKeyStore } from '../access/api-keys.js';
import { AuditLog } from '../access/audit-log.js';
import { minimalApiDeps, startApp, type RunningApp } from './app-harness.js';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildApi } from '../api/index.js';
import { MemoryTelemetryStore } from '../store/index.js';
import { MemoryChangeLog } from '../streams/memory-log.js';

interface Operation {
  summary?: string;
  description?: string;
  requestBody?: { required?: boolean };
  tags?: string[];
  parameters?: Array<{ name: string; in: string; required?: boolean; description?: string }>;
  responses: Record<string, { description?: string; content?: Record<string, { schema?: JsonSchema }> }>;
}
interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
}
interface OpenApiDocument {
  openapi: string;
  info: { title: string; version: string };
  servers?: unknown;
  tags?: Array<{ name: string }>;
  paths: Record<string, Record<string, Operation>>;
  components?: { securitySchemes?: Record<string, { type: string; scheme?: string }> };
  security?: Array<Record<string, string[]>>;
}

const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options', 'trace'];
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };

/** Routes of the document and the docs: served, but not described. */
function isSelfDescription(url: string): boolean {
  return url === '/openapi.json' || url === '/docs' || url.startsWith('/docs/');
}

let app: FastifyInstance;
let store: MemoryTelemetryStore;
/** Every (method, url) fastify registered, as seen by an onRoute hook. */
let routes: Array<{ method: string; url: string }>;
/** The registered routes' options, kept by reference: later onRoute hooks (access control) may still amend them. */
let routeOptions: RouteOptions[];

beforeEach(async () => {
  store = new MemoryTelemetryStore({ changeLog: new MemoryChangeLog({ shards: 2 }) });
  app = buildApi({
    ...minimalApiDeps(store),
    metrics: { contentType: 'text/plain; version=0.0.4; charset=utf-8', metrics: async () => 'up 1\n' },
    changeLog: store.changeLog,
    access: { mode: 'open', keys: await ApiKeyStore.open({}), audit: new AuditLog() },
  });
  routes = [];
  routeOptions = [];
  // Added before ready(): the route plugins load later and inherit the root's hook.
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) routes.push({ method, url: route.url });
    routeOptions.push(route);
  });
  await app.ready();
});

afterEach(async () => {
  await app.close();
  await store.close();
});

async function fetchDocument(): Promise<OpenApiDocument> {
  const res = await app.inject('/openapi.json');
  expect(res.statusCode, res.body).toBe(200);
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  return res.json<OpenApiDocument>();
}

/** All operations of the document as [`METHOD path`, operation]. */
function operations(doc: OpenApiDocument): Array<[string, Operation]> {
  return Object.entries(doc.paths).flatMap(([path, item]) =>
    Object.entries(item)
      .filter(([method]) => HTTP_METHODS.includes(method))
      .map(([method, op]): [string, Operation] => [`${method.toUpperCase()} ${path}`, op]),
  );
}

describe('GET /openapi.json', () => {
  it('is an OpenAPI 3 document titled Tributary with the package version and no absolute servers', async () => {
    const doc = await fetchDocument();
    expect(doc.openapi).toMatch(/^3\.\d+\.\d+$/);
    expect(doc.info.title).toBe('Tributary');
    expect(doc.info.version).toBe(pkg.version);
    if (doc.servers !== undefined) {
      for (const s of doc.servers as Array<{ url: string }>) expect(s.url).not.toMatch(/^[a-z]+:\/\//i);
    }
    expect(typeof doc.paths).toBe('object');
    const ops = operations(doc);
    expect(ops.length).toBeGreaterThan(0);
    for (const [name, op] of ops) {
      expect(Object.keys(op.responses), name).not.toHaveLength(0);
      for (const [status, response] of Object.entries(op.responses)) {
        expect(status, name).toMatch(/^([1-5]\d\d|[1-5]XX|default)$/);
        expect(typeof response.description, `${name} ${status}`).toBe('string');
      }
    }
  });

  it('describes every registered route with its method, and nothing else', async () => {
    const doc = await fetchDocument();
    const gets = new Set(routes.filter((r) => r.method === 'GET').map((r) => r.url));
    const expected = routes
      .filter((r) => !isSelfDescription(r.url))
      // Fastify adds a HEAD route for every GET; the document leaves those implied.
      .filter((r) => !(r.method === 'HEAD' && gets.has(r.url)))
      .map((r) => `${r.method} ${r.url.replace(/:(\w+)/g, '{$1}')}`);
    // The optional routes are on, so the list is the whole API.
    expect(expected).toEqual(
      expect.arrayContaining([
        'GET /healthz',
        'GET /metrics',
        'PUT /v1/devices/{id}',
        'POST /v1/devices/{id}/telemetry',
        'GET /v1/streams/shards/{shardId}/records',
        'GET /v1/streams/tail',
      ]),
    );
    const documented = operations(doc).map(([name]) => name);
    expect(documented.sort()).toEqual([...new Set(expected)].sort());
    for (const path of Object.keys(doc.paths)) {
      expect(path).not.toContain(':');
      expect(isSelfDescription(path), path).toBe(false);
    }
  });

  it('declares each path parameter as a required `in: path` parameter', async () => {
    const doc = await fetchDocument();
    for (const [name, op] of operations(doc)) {
      const inPath = [...name.matchAll(/\{(\w+)\}/g)].map((m) => m[1]);
      const declared = (op.parameters ?? []).filter((p) => p.in === 'path');
      expect(declared.map((p) => p.name).sort(), name).toEqual(inPath.sort());
      for (const p of declared) expect(p.required, `${name} ${p.name}`).toBe(true);
    }
  });

  it('gives every operation a summary and a declared tag', async () => {
    const doc = await fetchDocument();
    const tags = new Set((doc.tags ?? []).map((t) => t.name));
    for (const [name, op] of operations(doc)) {
      expect(op.summary, name).toBeTruthy();
      expect(op.tags, name).toHaveLength(1);
      expect(tags.has(op.tags?.[0] ?? ''), name).toBe(true);
    }
  });

  it('labels the text responses (metrics, SSE tail) with their media type, not JSON', async () => {
    const doc = await fetchDocument();
    expect(Object.keys(doc.paths['/metrics']?.['get']?.responses['200']?.content ?? {})).toEqual(['text/plain; version=0.0.4']);
    expect(Object.keys(doc.paths['/v1/streams/tail']?.['get']?.responses['200']?.content ?? {})).toEqual(['text/event-stream']);
    expect(Object.keys(doc.paths['/healthz']?.['get']?.responses['200']?.content ?? {})).toEqual(['application/json']);
  });

  it('documents the error body for the 4xx responses routes declare', async () => {
    const doc = await fetchDocument();
    let checked = 0;
    for (const [name, op] of operations(doc)) {
      const errors = Object.entries(op.responses).filter(([status]) => /^4(XX|\d\d)$/.test(status));
      // Every route declares its errors (schemas.ts `errorResponses`).
      expect(errors.length, name).toBeGreaterThan(0);
      for (const [status, response] of errors) {
        const schema = response.content?.['application/json']?.schema;
        expect(schema, `${name} ${status}`).toBeDefined();
        expect(schema?.required, `${name} ${status}`).toEqual(['error']);
        const error = schema?.properties?.['error'];
        expect(error?.type).toBe('object');
        expect(error?.required?.sort()).toEqual(['code', 'message']);
        expect(Object.keys(error?.properties ?? {}).sort()).toEqual(['code', 'field', 'message']);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(0);
  });
});

describe('access control in the document', () => {
  it('in secured mode, declares the bearer scheme as the default and lifts it on the public probes', async () => {
    const secured = buildApi({ ...minimalApiDeps(store), access: { mode: 'secured', keys: await ApiKeyStore.open({}), audit: new AuditLog() } });
    try {
      const doc = (await secured.inject('/openapi.json')).json<OpenApiDocument>();
      expect(doc.components?.securitySchemes?.['apiKey']).toMatchObject({ type: 'http', scheme: 'bearer' });
      expect(doc.security).toEqual([{ apiKey: [] }]);
      const security = (path: string) => (doc.paths[path]?.['get'] as { security?: unknown } | undefined)?.security;
      expect(security('/healthz')).toEqual([]);
      expect(security('/readyz')).toEqual([]);
      expect(security('/v1/devices')).toBeUndefined();
      expect(doc.paths['/v1/keys']).toBeDefined();
      expect(doc.paths['/v1/audit']).toBeDefined();
    } finally {
      await secured.close();
    }
  });

  it('in open mode, requires no security anywhere (anonymous requests are accepted)', async () => {
    const doc = await fetchDocument();
    expect(doc.security).toBeUndefined();
    for (const [name, op] of operations(doc)) expect((op as { security?: unknown }).security, name).toBeUndefined();
    // The scheme stays described, for a server started with --secure.
    expect(doc.components?.securitySchemes?.['apiKey']).toMatchObject({ type: 'http', scheme: 'bearer' });
  });

  it('every registered route declares its access (undeclared ones would be denied in secured mode)', () => {
    const undeclared = routeOptions.filter((r) => r.config?.access === undefined).map((r) => `${[r.method].flat().join(',')} ${r.url}`);
    expect(undeclared).toEqual([]);
    expect(routeOptions.length).toBeGreaterThan(10);
  });
});

describe('GET /docs', () => {
  it('serves Swagger UI whose scripts and styles come from this server', async () => {
    const res = await app.inject('/docs');
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/html/);
    // No CDN: every asset the page loads is a path on this server.
    expect(res.body).not.toMatch(/(src|href)="(https?:)?\/\//);
    const assets = [...res.body.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1] ?? '');
    const scripts = assets.filter((a) => a.endsWith('.js'));
    const styles = assets.filter((a) => a.endsWith('.css'));
    expect(scripts).toEqual(expect.arrayContaining(['/docs/static/swagger-ui-bundle.js', '/docs/static/swagger-initializer.js']));
    expect(styles).toContain('/docs/static/swagger-ui.css');
    for (const url of assets) {
      const asset = await app.inject(url);
      expect(asset.statusCode, url).toBe(200);
      if (url.endsWith('.js')) expect(asset.headers['content-type'], url).toMatch(/javascript/);
      if (url.endsWith('.css')) expect(asset.headers['content-type'], url).toMatch(/^text\/css/);
      expect(asset.rawPayload.length, url).toBeGreaterThan(0);
    }
  });

  it('the page loads the same document as /openapi.json', async () => {
    const ui = await app.inject('/docs/json');
    expect(ui.statusCode).toBe(200);
    expect(ui.json()).toEqual(await fetchDocument());
  });

  it('also answers with a trailing slash, and unknown doc files answer 404 in the error shape', async () => {
    expect((await app.inject('/docs/')).statusCode).toBe(200);
    const missing = await app.inject('/docs/static/nope.js');
    expect(missing.statusCode).toBe(404);
    expect(missing.json()).toMatchObject({ error: { code: 'NotFound' } });
  });
});

describe('the document of the whole running server', () => {
  let running: RunningApp;
  let doc: OpenApiDocument;
  beforeAll(async () => {
    running = await startApp();
    const res = await fetch(`${running.addresses.http}/openapi.json`);
    expect(res.status).toBe(200);
    doc = (await res.json()) as OpenApiDocument;
  });
  afterAll(async () => {
    await running.destroy();
  });
  const op = (method: string, path: string): Operation => {
    const found = doc.paths[path]?.[method];
    expect(found, `${method} ${path}`).toBeDefined();
    return found as Operation;
  };

  it('marks the trigger bodies optional, as the server takes a request without one', async () => {
    expect(op('post', '/v1/functions/{name}/triggers').requestBody?.required).toBe(false);
    expect(op('patch', '/v1/functions/{name}/triggers/{id}').requestBody?.required).toBe(false);
    // Schemas with a type do need their body.
    expect(op('put', '/v1/functions/{name}').requestBody?.required).toBe(true);
    expect(op('post', '/v1/devices/{id}/telemetry').requestBody?.required).toBe(true);
    // And the server does take a trigger without a body.
    const base = running.addresses.http;
    const deployed = await fetch(`${base}/v1/functions/bodiless`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ code: 'export async function handler() {}' }) });
    expect(deployed.status).toBe(201);
    expect((await fetch(`${base}/v1/functions/bodiless/triggers`, { method: 'POST' })).status).toBe(201);
  });

  it('says on every cursor parameter which values it takes', () => {
    const cursors = operations(doc).flatMap(([name, o]) => (o.parameters ?? []).filter((p) => p.in === 'query' && p.name === 'cursor').map((p) => [name, p.description] as const));
    expect(cursors.length).toBeGreaterThan(5);
    for (const [name, description] of cursors) expect(description, name).toMatch(/unchanged.*400 InvalidParameter/);
  });

  it('describes the rules the schemas cannot say: interval > 0, `{}` and `[]` bodies', () => {
    const interval = op('get', '/v1/devices/{id}/telemetry/aggregate').parameters?.find((p) => p.name === 'interval');
    expect(interval?.description).toMatch(/greater than zero/);
    const ingest = op('post', '/v1/devices/{id}/telemetry').description ?? '';
    expect(ingest).toContain('`{}` answers 400');
    expect(ingest).toContain('`[]`');
  });
});

/**
 * The function registry through the HTTP API of the whole app (real HTTP, real function
 * processes, LevelDB on a temporary directory): deploy ESM and CommonJS handlers, invoke
 * them, versions, list/get/delete, validation, restart, and the permission model.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, type RunningApp } from './app-harness.js';
import { cliCwd, runCli } from './cli-run.js';
import { createApp } from '../app.js';
import { configWith } from '../core/config.js';
import { createLogger } from '../core/logger.js';
import { tempDir } from './helpers.js';

interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

interface VersionBody {
  name: string;
  version: number;
  codeSha256: string;
  codeSize: number;
  moduleType: string;
  timeoutMs: number;
  memoryMb: number;
  environment: Record<string, string>;
  network: boolean;
  createdAt: number;
}

interface InvokeBody {
  requestId: string;
  status: string;
  result?: unknown;
  errorType?: string;
  errorMessage?: string;
  durationMs: number;
  logs: Array<{ ts: number; level: string; message: string }>;
}

const ESM_HANDLER = `
export async function handler(event, context) {
  console.log('esm got', JSON.stringify(event));
  return { doubled: event.n * 2, name: context.functionName, greeting: process.env.GREETING ?? null };
}
`;
const CJS_HANDLER = `
exports.handler = async (event) => {
  console.warn('cjs got', event.n);
  return { tripled: event.n * 3, type: typeof require };
};
`;

async function call(base: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    init.headers = { 'content-type': 'application/json' };
  }
  const res = await fetch(`${base}${path}`, init);
  const text = await res.text();
  return { status: res.status, body: text === '' ? undefined : (JSON.parse(text) as unknown) };
}

function expectError(res: { status: number; body: unknown }, status: number, code: string, field?: string): ErrorBody['error'] {
  expect(res.status, JSON.stringify(res.body)).toBe(status);
  const { error } = res.body as ErrorBody;
  expect(error.code).toBe(code);
  if (field !== undefined) expect(error.field).toBe(field);
  return error;
}

describe('functions API', () => {
  let running: RunningApp;
  let base: string;
  const deploy = (name: string, body: unknown) => call(base, 'PUT', `/v1/functions/${name}`, body);
  const invoke = async (name: string, event?: unknown) => {
    const res = await call(base, 'POST', `/v1/functions/${name}/invoke`, event);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return res.body as InvokeBody;
  };

  beforeAll(async () => {
    running = await startApp();
    base = running.addresses.http;
  });
  afterAll(async () => {
    await running.destroy();
  });

  it('deploys an ES module (201, version 1, metadata only) and invokes it with results and logs', async () => {
    const res = await deploy('esm-fn', { code: ESM_HANDLER, environment: { GREETING: 'hi' } });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    const v = res.body as VersionBody & { code?: string };
    expect(v).toEqual({
      name: 'esm-fn',
      source: 'api',
      version: 1,
      codeSha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      codeSize: Buffer.byteLength(ESM_HANDLER),
      moduleType: 'esm',
      timeoutMs: 3000,
      memoryMb: 128,
      environment: { GREETING: 'hi' },
      network: true,
      createdAt: expect.any(Number),
    });
    expect(existsSync(join(running.dataDir, 'functions', 'esm-fn', 'v1', 'index.mjs'))).toBe(true);

    const out = await invoke('esm-fn', { n: 21 });
    expect(out).toMatchObject({ status: 'ok', result: { doubled: 42, name: 'esm-fn', greeting: 'hi' }, requestId: expect.any(String), durationMs: expect.any(Number) });
    expect(out.logs).toEqual([expect.objectContaining({ level: 'info', message: expect.stringContaining('esm got {"n":21}') })]);
  });

  it('deploys CommonJS handlers (detected or declared) and invokes them', async () => {
    const detected = await deploy('cjs-fn', { code: CJS_HANDLER });
    expect(detected.status).toBe(201);
    expect(detected.body).toMatchObject({ moduleType: 'commonjs', version: 1 });
    expect(existsSync(join(running.dataDir, 'functions', 'cjs-fn', 'v1', 'index.cjs'))).toBe(true);
    const out = await invoke('cjs-fn', { n: 5 });
    expect(out).toMatchObject({ status: 'ok', result: { tripled: 15, type: 'function' } });
    expect(out.logs).toEqual([expect.objectContaining({ level: 'warn', message: 'cjs got 5' })]);

    const declared = await deploy('cjs-exports', { code: 'module.exports = { handler: async () => "plain" };', moduleType: 'commonjs', timeoutMs: 1000, memoryMb: 64 });
    expect(declared.body).toMatchObject({ moduleType: 'commonjs', timeoutMs: 1000, memoryMb: 64 });
    expect(await invoke('cjs-exports')).toMatchObject({ status: 'ok', result: 'plain' });
  });

  it('redeploying makes version 2, which invocations run; earlier versions are kept', async () => {
    const v1 = await deploy('counter', { code: 'export const handler = async () => "one";' });
    expect(v1.body).toMatchObject({ version: 1 });
    expect(await invoke('counter')).toMatchObject({ status: 'ok', result: 'one' });
    const v2 = await deploy('counter', { code: 'export const handler = async () => "two";' });
    expect(v2.status).toBe(201);
    expect(v2.body).toMatchObject({ version: 2 });
    expect(await invoke('counter')).toMatchObject({ status: 'ok', result: 'two' });

    const got = await call(base, 'GET', '/v1/functions/counter');
    expect(got.status).toBe(200);
    const info = got.body as VersionBody & { versions: Array<{ version: number; codeSha256: string }> };
    expect(info.version).toBe(2);
    expect(info.versions.map((x) => x.version)).toEqual([1, 2]);
    expect(info.versions[1]?.codeSha256).toBe(info.codeSha256);
    expect(info).not.toHaveProperty('code');
    expect(info).not.toHaveProperty('codePath');
    expect(readFileSync(join(running.dataDir, 'functions', 'counter', 'v1', 'index.mjs'), 'utf8')).toContain('"one"');
  });

  it('reports handler errors, timeouts and a missing handler as outcomes (200)', async () => {
    await deploy('thrower', { code: 'export async function handler() { throw new RangeError("nope"); }' });
    expect(await invoke('thrower', {})).toMatchObject({ status: 'error', errorType: 'RangeError', errorMessage: 'nope' });

    await deploy('sleeper', { code: 'export const handler = () => new Promise((r) => setTimeout(r, 10_000));', timeoutMs: 200 });
    expect(await invoke('sleeper', {})).toMatchObject({ status: 'timeout', errorType: 'Sandbox.Timedout', errorMessage: 'Task timed out after 200 ms' });

    // A module that exports no handler does not deploy (test/functions.sandbox.test.ts);
    // one whose default export the deploy check cannot see into fails when it is loaded.
    expectError(await deploy('no-handler', { code: 'export const other = 1;' }), 400, 'InvalidFunctionCode', 'code');
    await deploy('not-a-function', { code: 'const handler = 1;\nexport default { handler };' });
    expect(await invoke('not-a-function', {})).toMatchObject({ status: 'error', errorType: 'Runtime.HandlerNotFound' });
  });

  it('keeps the handler to its own folder: reading the data directory is ERR_ACCESS_DENIED', async () => {
    await deploy('snoop', { code: 'import { readFileSync } from "node:fs";\nexport const handler = async (e) => readFileSync(e.path, "utf8");' });
    const out = await invoke('snoop', { path: join(running.dataDir, 'db', 'CURRENT') });
    expect(out.status).toBe('error');
    expect(out.errorMessage).toContain('ERR_ACCESS_DENIED');
  });

  it('lists functions by name with a cursor', async () => {
    for (const name of ['list-a', 'list-b', 'list-c']) expect((await deploy(name, { code: ESM_HANDLER })).status).toBe(201);
    await deploy('list-b', { code: CJS_HANDLER });
    const names: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const res = await call(base, 'GET', `/v1/functions?limit=2${cursor === null ? '' : `&cursor=${cursor}`}`);
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      const page = res.body as { items: VersionBody[]; nextCursor: string | null };
      expect(page.items.length).toBeLessThanOrEqual(2);
      names.push(...page.items.map((i) => i.name));
      const b = page.items.find((i) => i.name === 'list-b');
      if (b) expect(b).toMatchObject({ version: 2, moduleType: 'commonjs' });
      cursor = page.nextCursor;
      pages++;
    } while (cursor !== null && pages < 100);
    expect(names).toEqual([...names].sort());
    expect(names).toEqual(expect.arrayContaining(['list-a', 'list-b', 'list-c']));
    expect(new Set(names).size).toBe(names.length);
    expectError(await call(base, 'GET', '/v1/functions?cursor=%25%25'), 400, 'InvalidParameter', 'cursor');
    expectError(await call(base, 'GET', '/v1/functions?limit=0'), 400, 'InvalidParameter', 'limit');
  });

  it('deletes a function (204): metadata and code go, later calls are 404, a new deploy continues the numbering', async () => {
    await deploy('doomed', { code: 'export const handler = async () => "old";' });
    expect(await invoke('doomed')).toMatchObject({ result: 'old' });
    const del = await call(base, 'DELETE', '/v1/functions/doomed');
    expect(del.status).toBe(204);
    expect(del.body).toBeUndefined();
    expect(existsSync(join(running.dataDir, 'functions', 'doomed'))).toBe(false);
    expectError(await call(base, 'GET', '/v1/functions/doomed'), 404, 'FunctionNotFound', 'name');
    expectError(await call(base, 'POST', '/v1/functions/doomed/invoke', {}), 404, 'FunctionNotFound', 'name');
    expectError(await call(base, 'DELETE', '/v1/functions/doomed'), 404, 'FunctionNotFound', 'name');
    const listed = (await call(base, 'GET', '/v1/functions?limit=10000')).body as { items: VersionBody[] };
    expect(listed.items.map((i) => i.name)).not.toContain('doomed');

    // The warm process of the deleted code must not answer for the new one.
    const again = await deploy('doomed', { code: 'export const handler = async () => "new";' });
    expect(again.body).toMatchObject({ version: 2 });
    expect(await invoke('doomed')).toMatchObject({ result: 'new' });
    expect((await call(base, 'GET', '/v1/functions/doomed')).body).toMatchObject({ versions: [{ version: 2 }] });
  });

  it('gives concurrent deploys of one name distinct versions', async () => {
    const codes = [1, 2, 3].map((i) => `export const handler = async () => ${i};`);
    const results = await Promise.all(codes.map((code) => deploy('racy', { code })));
    expect(results.map((r) => r.status)).toEqual([201, 201, 201]);
    expect(results.map((r) => (r.body as VersionBody).version).sort()).toEqual([1, 2, 3]);
    const latest = results.find((r) => (r.body as VersionBody).version === 3)?.body as VersionBody;
    expect((await call(base, 'GET', '/v1/functions/racy')).body).toMatchObject({ version: 3, codeSha256: latest.codeSha256 });
  });

  it('takes any JSON value as the event', async () => {
    await deploy('echo', { code: 'export const handler = async (e) => e;' });
    expect(await invoke('echo', [1, 'two'])).toMatchObject({ status: 'ok', result: [1, 'two'] });
    expect(await invoke('echo', '"text"')).toMatchObject({ status: 'ok', result: 'text' });
    expect(await invoke('echo')).toMatchObject({ status: 'ok', result: {} });
  });

  it('describes its routes in the OpenAPI document', async () => {
    const doc = (await call(base, 'GET', '/openapi.json')).body as { paths: Record<string, Record<string, unknown>> };
    expect(Object.keys(doc.paths['/v1/functions'] ?? {})).toEqual(['get']);
    expect(Object.keys(doc.paths['/v1/functions/{name}'] ?? {}).sort()).toEqual(['delete', 'get', 'put']);
    expect(Object.keys(doc.paths['/v1/functions/{name}/invoke'] ?? {})).toEqual(['post']);
  });

  it('answers 404 FunctionNotFound for unknown functions', async () => {
    for (const [method, path] of [['GET', '/v1/functions/ghost'], ['DELETE', '/v1/functions/ghost'], ['POST', '/v1/functions/ghost/invoke']] as const) {
      expectError(await call(base, method, path, method === 'POST' ? {} : undefined), 404, 'FunctionNotFound', 'name');
    }
  });

  it('validates names, code, limits, environment and module type', async () => {
    expectError(await deploy('bad.name', { code: ESM_HANDLER }), 400, 'InvalidParameter', 'name');
    expectError(await deploy('x'.repeat(65), { code: ESM_HANDLER }), 400, 'InvalidParameter', 'name');
    expectError(await call(base, 'GET', '/v1/functions/bad%20name'), 400, 'InvalidParameter', 'name');
    expectError(await deploy('v', { code: '' }), 400, 'ValidationError', 'code');
    expectError(await deploy('v', {}), 400, 'ValidationError', 'code');
    expectError(await deploy('v', { code: { source: 'x' } }), 400, 'ValidationError', 'code');
    expectError(await deploy('v', { code: ESM_HANDLER, timeoutMs: 0 }), 400, 'ValidationError', 'timeoutMs');
    expectError(await deploy('v', { code: ESM_HANDLER, timeoutMs: 900_001 }), 400, 'ValidationError', 'timeoutMs');
    expectError(await deploy('v', { code: ESM_HANDLER, memoryMb: 15 }), 400, 'ValidationError', 'memoryMb');
    expectError(await deploy('v', { code: ESM_HANDLER, memoryMb: 10_241 }), 400, 'ValidationError', 'memoryMb');
    expectError(await deploy('v', { code: ESM_HANDLER, environment: { '1BAD': 'x' } }), 400, 'ValidationError', 'environment');
    expectError(await deploy('v', { code: ESM_HANDLER, environment: { NODE_OPTIONS: '--inspect' } }), 400, 'ValidationError', 'environment');
    expectError(await deploy('v', { code: ESM_HANDLER, environment: { A: { nested: 'x' } } }), 400, 'ValidationError', 'environment.A');
    expectError(await deploy('v', { code: ESM_HANDLER, moduleType: 'amd' }), 400, 'ValidationError', 'moduleType');
    expectError(await deploy('v', { code: ESM_HANDLER, handler: 'index.handler' }), 400, 'ValidationError', 'handler');
    expectError(await deploy('v', '{"code": '), 400, 'ValidationError');
    expectError(await call(base, 'GET', '/v1/functions/v'), 404, 'FunctionNotFound');
  });

  it('takes code up to 5 MiB and refuses more with 413 PayloadTooLarge', async () => {
    const filler = `// ${'x'.repeat(5 * 1024 * 1024 - 200)}\n`;
    const big = await deploy('big', { code: `${filler}export const handler = async () => "big";` });
    expect(big.status, JSON.stringify(big.body)).toBe(201);
    expect((big.body as VersionBody).codeSize).toBeGreaterThan(5 * 1024 * 1024 - 200);
    expectError(await deploy('too-big', { code: `${filler}${'y'.repeat(1024)}` }), 413, 'PayloadTooLarge');
    expectError(await deploy('too-big', { code: 'z'.repeat(13 * 1024 * 1024) }), 413, 'PayloadTooLarge');
    expectError(await call(base, 'GET', '/v1/functions/too-big'), 404, 'FunctionNotFound');
  });
});

describe('functions survive a restart', () => {
  it('get and invoke still work on the same data directory', async () => {
    const dir = tempDir();
    try {
      const first = await startApp({ dataDir: dir.path });
      const base1 = first.addresses.http;
      expect((await call(base1, 'PUT', '/v1/functions/durable', { code: ESM_HANDLER, environment: { GREETING: 'again' } })).status).toBe(201);
      expect((await call(base1, 'PUT', '/v1/functions/durable-cjs', { code: CJS_HANDLER })).status).toBe(201);
      await first.stop();
      // Leftovers of a crash (code written, metadata never committed) are removed at open.
      mkdirSync(join(dir.path, 'functions', 'durable', 'v7'), { recursive: true });
      writeFileSync(join(dir.path, 'functions', 'durable', 'v7', 'index.mjs'), 'export const handler = () => 7;');
      mkdirSync(join(dir.path, 'functions', 'never-committed', 'v1'), { recursive: true });

      const second = await startApp({ dataDir: dir.path });
      try {
        const base2 = second.addresses.http;
        expect(existsSync(join(dir.path, 'functions', 'durable', 'v7'))).toBe(false);
        expect(existsSync(join(dir.path, 'functions', 'never-committed'))).toBe(false);
        expect(existsSync(join(dir.path, 'functions', 'durable', 'v1', 'index.mjs'))).toBe(true);
        const got = await call(base2, 'GET', '/v1/functions/durable');
        expect(got.status).toBe(200);
        expect(got.body).toMatchObject({ name: 'durable', version: 1, environment: { GREETING: 'again' } });
        const out = await call(base2, 'POST', '/v1/functions/durable/invoke', { n: 4 });
        expect(out.body).toMatchObject({ status: 'ok', result: { doubled: 8, greeting: 'again' } });
        const cjs = await call(base2, 'POST', '/v1/functions/durable-cjs/invoke', { n: 4 });
        expect(cjs.body).toMatchObject({ status: 'ok', result: { tripled: 12 } });
        // Versions continue after a restart.
        expect((await call(base2, 'PUT', '/v1/functions/durable', { code: ESM_HANDLER })).body).toMatchObject({ version: 2 });
      } finally {
        await second.stop();
      }
    } finally {
      dir.cleanup();
    }
  });
});

afterAll(() => cliCwd.cleanup());

describe('functions from --functions-dir and from the API share one namespace', () => {
  it('lists and shows --functions-dir functions marked file-managed, with triggers, and refuses PUT and DELETE of them', async () => {
    const data = tempDir();
    const fnDir = tempDir('tributary-fndir-');
    try {
      const file = join(fnDir.path, 'b-file.mjs');
      const code = 'export async function handler(e) { return { records: e.Records?.length ?? 0 }; }';
      writeFileSync(file, code);
      const app = await startApp({ dataDir: data.path, functionsDir: fnDir.path });
      try {
        const base = app.addresses.http;
        for (const name of ['a-api', 'c-api']) expect((await call(base, 'PUT', `/v1/functions/${name}`, { code: ESM_HANDLER })).status).toBe(201);
        const list = (await call(base, 'GET', '/v1/functions')).body as { items: Array<VersionBody & { source: string; file?: string }>; nextCursor: string | null };
        expect(list.items.map((f) => [f.name, f.source])).toEqual([['a-api', 'api'], ['b-file', 'functions-dir'], ['c-api', 'api']]);
        expect(list.items[1]).toMatchObject({ name: 'b-file', source: 'functions-dir', file, version: 1, moduleType: 'esm', codeSize: Buffer.byteLength(code), codeSha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
        // Pages of one cross the file function in name order.
        const p1 = (await call(base, 'GET', '/v1/functions?limit=1')).body as { items: Array<{ name: string }>; nextCursor: string };
        const p2 = (await call(base, 'GET', `/v1/functions?limit=1&cursor=${p1.nextCursor}`)).body as { items: Array<{ name: string }>; nextCursor: string };
        const p3 = (await call(base, 'GET', `/v1/functions?limit=1&cursor=${p2.nextCursor}`)).body as { items: Array<{ name: string }>; nextCursor: string | null };
        expect([p1, p2, p3].map((p) => p.items.map((f) => f.name))).toEqual([['a-api'], ['b-file'], ['c-api']]);
        expect(p3.nextCursor).toBeNull();

        const shown = await call(base, 'GET', '/v1/functions/b-file');
        expect(shown.status).toBe(200);
        expect(shown.body).toMatchObject({ name: 'b-file', source: 'functions-dir', file, versions: [{ version: 1, moduleType: 'esm' }] });

        // Triggers work for it as for a deployed function.
        expect((await call(base, 'GET', '/v1/functions/b-file/triggers')).body).toEqual({ items: [], nextCursor: null });
        const trigger = await call(base, 'POST', '/v1/functions/b-file/triggers', { batchSize: 5 });
        expect(trigger.status, JSON.stringify(trigger.body)).toBe(201);
        expect(((await call(base, 'GET', '/v1/functions/b-file/triggers')).body as { items: unknown[] }).items).toEqual([expect.objectContaining({ functionName: 'b-file', batchSize: 5 })]);

        expect(expectError(await call(base, 'PUT', '/v1/functions/b-file', { code: ESM_HANDLER }), 409, 'Conflict', 'name').message).toContain(file);
        expect(expectError(await call(base, 'DELETE', '/v1/functions/b-file'), 409, 'Conflict', 'name').message).toContain(file);

        const cli = await runCli(['fn', 'list', '--url', base]);
        expect(cli.code, cli.stderr).toBe(0);
        const row = cli.stdout.split('\n').find((l) => l.startsWith('b-file'));
        expect(row).toMatch(/^b-file\s+file\s+1\s+esm\b.*\s+\S*b-file\.mjs$/);
        expect(cli.stdout).toMatch(/^a-api\s+api\s+1\s+esm/m);
      } finally {
        await app.stop();
      }
    } finally {
      data.cleanup();
      fnDir.cleanup();
    }
  });

  it('refuses to deploy a name a --functions-dir file holds, invokes the file over the API, and refuses to start over a clash', async () => {
    const data = tempDir();
    const fnDir = tempDir('tributary-fndir-');
    try {
      writeFileSync(join(fnDir.path, 'from-dir.mjs'), 'export async function handler(e) { console.log("dir", e.n); return { from: "dir", n: e.n }; }');
      const first = await startApp({ dataDir: data.path, functionsDir: fnDir.path });
      try {
        const base1 = first.addresses.http;
        const clash = expectError(await call(base1, 'PUT', '/v1/functions/from-dir', { code: ESM_HANDLER }), 409, 'Conflict', 'name');
        expect(clash.message).toContain(join(fnDir.path, 'from-dir.mjs'));
        const out = await call(base1, 'POST', '/v1/functions/from-dir/invoke', { n: 3 });
        expect(out.body).toMatchObject({ status: 'ok', result: { from: 'dir', n: 3 } });
        const logs = (await call(base1, 'GET', '/v1/functions/from-dir/logs')).body as { items: Array<{ message: string }> };
        expect(logs.items.map((l) => l.message)).toEqual(['dir 3']);
        // Deployed over the API while the file is absent ...
        expect((await call(base1, 'PUT', '/v1/functions/api-first', { code: ESM_HANDLER })).status).toBe(201);
      } finally {
        await first.stop();
      }
      // ... then a file of the same name appears: one name would be two functions.
      writeFileSync(join(fnDir.path, 'api-first.mjs'), 'export const handler = async () => 1;');
      const config = configWith({ mqttPort: 0, httpPort: 0, logLevel: 'silent', dataDir: data.path, functionsDir: fnDir.path });
      const refused = createApp(config, { logger: createLogger('silent') });
      try {
        await expect(refused.start()).rejects.toThrow(/function api-first is deployed over the API \(version 1\) and is also the --functions-dir file/);
      } finally {
        await refused.stop();
      }
    } finally {
      data.cleanup();
      fnDir.cleanup();
    }
  });
});

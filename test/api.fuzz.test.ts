/**
 * Fuzzes every operation of `/openapi.json` on a real app (secured mode, real HTTP,
 * real LevelDB) with fast-check: path and query parameters from the documented ones
 * (valid-looking and hostile values, some left out, unknown ones added), bodies from
 * arbitrary JSON to broken text, and now and then a bad or missing key. Whatever
 * arrives, the answer must not be a 5xx, and every error must have the API's error
 * shape with a catalog code and the catalog's status for it. The server must still be
 * healthy afterwards.
 *
 * `FUZZ_CASES` sets the cases per operation (default 20).
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CATALOG, type ErrorCode } from '../core/errors.js';
import { startApp, type RunningApp } from './app-harness.js';

const CASES = Number(process.env['FUZZ_CASES'] ?? 20);

interface Parameter {
  name: string;
  in: 'path' | 'query' | 'header';
  schema?: { type?: string | string[]; enum?: string[] };
}
interface Operation {
  parameters?: Parameter[];
  requestBody?: unknown;
}

let running: RunningApp;
let base: string;
let admin: string;
let operations: Array<{ method: string; path: string; op: Operation }> = [];

beforeAll(async () => {
  running = await startApp({ secure: true });
  base = running.addresses.http;
  admin = running.addresses.adminKey as string;
  const doc = (await (await fetch(`${base}/openapi.json`)).json()) as { paths: Record<string, Record<string, Operation>> };
  operations = Object.entries(doc.paths).flatMap(([path, item]) => Object.entries(item).map(([method, op]) => ({ method: method.toUpperCase(), path, op })));
}, 30_000);

afterAll(async () => {
  await running?.destroy();
});

/** Strings a careless or hostile client might send. */
const hostile = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.constantFrom('', ' ', '0', '-1', '1e309', 'NaN', 'null', 'true', '[]', '{}', '%', '%00', '../../etc/passwd', 'a'.repeat(2000), '-15m', 'now', '2026-01-01T00:00:00Z', 'shardId-0000', 'TRIM_HORIZON', '__proto__', 'constructor'),
  fc.integer({ min: -1e12, max: 1e13 }).map(String),
);

function valueFor(p: Parameter): fc.Arbitrary<string> {
  // A long poll would only make the run slow; its bounds are checked like any integer's.
  if (p.name === 'waitMs') return fc.constantFrom('0', '-1', 'x', '20001');
  const enumValues = p.schema?.enum;
  return enumValues === undefined ? hostile : fc.oneof(fc.constantFrom(...enumValues), hostile);
}

const body = fc.oneof(
  fc.constant(undefined),
  fc.json({ maxDepth: 3 }).map((text) => ({ text })),
  fc.jsonValue({ maxDepth: 3 }).map((v) => ({ text: JSON.stringify(v) })),
  fc.constantFrom('{', '[1,', '{"a":', 'null', '""', '{"__proto__":{"x":1}}', '{"policy":{"statements":[{"actions":["admin:*"],"devices":["*"]}]},"name":"x"}').map((text) => ({ text })),
  fc.record({ name: hostile, policy: fc.jsonValue({ maxDepth: 3 }), code: hostile, tags: fc.dictionary(hostile, hostile, { maxKeys: 3 }) }, { requiredKeys: [] }).map((v) => ({ text: JSON.stringify(v) })),
);

const auth = fc.oneof(
  { weight: 8, arbitrary: fc.constant('admin') },
  { weight: 1, arbitrary: fc.constantFrom('none', 'Bearer', 'Bearer tak_0123456789abcdef_x', 'Basic Zm9vOmJhcg==', 'Bearer tak_admin_x') },
);

function requestFor(op: { path: string; op: Operation }) {
  const params = op.op.parameters ?? [];
  const pathParams = params.filter((p) => p.in === 'path');
  const queryParams = params.filter((p) => p.in === 'query');
  return fc.record({
    path: fc.tuple(...pathParams.map(valueFor)),
    query: fc.tuple(...queryParams.map((p) => fc.option(valueFor(p), { nil: undefined }))),
    extra: fc.option(fc.tuple(fc.string({ minLength: 1, maxLength: 10 }), hostile), { nil: undefined, freq: 5 }),
    body,
    auth,
    contentType: fc.constantFrom('application/json', 'application/json', 'application/json', 'text/plain', 'application/x-www-form-urlencoded'),
  });
}

function assertErrorShape(status: number, text: string, what: string): void {
  let parsed: unknown;
  expect(() => (parsed = JSON.parse(text)), `${what}: error body is not JSON: ${text.slice(0, 200)}`).not.toThrow();
  const error = (parsed as { error?: { code?: unknown; message?: unknown; field?: unknown } }).error;
  expect(error, what).toBeTypeOf('object');
  expect(Object.keys(error ?? {}).every((k) => ['code', 'message', 'field'].includes(k)), what).toBe(true);
  expect(error?.message, what).toBeTypeOf('string');
  if (error?.field !== undefined) expect(error.field, what).toBeTypeOf('string');
  const code = error?.code as ErrorCode;
  expect(Object.keys(ERROR_CATALOG), what).toContain(code);
  expect(ERROR_CATALOG[code].status, `${what}: status of ${code}`).toBe(status);
}

describe('every route of /openapi.json under fuzzed input', () => {
  it('answers no 5xx, and every error in the error shape with its catalog status', async () => {
    // The tail never ends by itself; its parameters are validated like any other route's, before it starts.
    const fuzzed = operations.filter((o) => o.path !== '/v1/streams/tail');
    expect(fuzzed.length).toBeGreaterThan(20);
    for (const o of fuzzed) {
      await fc.assert(
        fc.asyncProperty(requestFor(o), async (r) => {
          let i = 0;
          const path = o.path.replace(/\{\w+\}/g, () => encodeURIComponent(r.path[i++] ?? ''));
          const search = new URLSearchParams();
          (o.op.parameters ?? []).filter((p) => p.in === 'query').forEach((p, j) => {
            const v = r.query[j];
            if (v !== undefined) search.append(p.name, v);
          });
          if (r.extra !== undefined) search.append(r.extra[0], r.extra[1]);
          const headers: Record<string, string> = {};
          if (r.auth === 'admin') headers['authorization'] = `Bearer ${admin}`;
          else if (r.auth !== 'none') headers['authorization'] = r.auth;
          const sendsBody = r.body !== undefined && o.method !== 'GET' && o.method !== 'HEAD';
          if (sendsBody) headers['content-type'] = r.contentType;
          const url = `${base}${path}${search.size > 0 ? `?${search}` : ''}`;
          const res = await fetch(url, { method: o.method, headers, ...(sendsBody ? { body: r.body?.text } : {}) });
          const text = await res.text();
          const what = `${o.method} ${url} ${sendsBody ? (r.body?.text ?? '').slice(0, 100) : ''}`;
          expect(res.status, `${what} → ${text.slice(0, 300)}`).toBeLessThan(500);
          if (res.status >= 400) assertErrorShape(res.status, text, what);
        }),
        { numRuns: CASES },
      );
    }
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
  }, 300_000);
});

/**
 * Function logs: the LevelDB store on its own (queries, pages, filters, the size budget,
 * age retention, durability across a reopen), then through the whole app over real HTTP:
 * what a deployed function prints is readable at `GET /v1/functions/{name}/logs`.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TributaryError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { FunctionLogStore, type FunctionLogLine } from '../functions/logs.js';
import type { InvokeLog, InvokeResult } from '../functions/types.js';
import { Database } from '../store/database.js';
import { call, startApp, type RunningApp } from './app-harness.js';
import { tempDir } from './helpers.js';

const logger = createLogger('silent');

function result(requestId: string, logs: Array<[number, InvokeLog['level'], string]>, functionVersion = 1): InvokeResult {
  return { requestId, functionVersion, outcome: { status: 'ok', result: null }, durationMs: 1, logs: logs.map(([ts, level, message]) => ({ ts, level, message })) };
}

describe('FunctionLogStore', () => {
  afterAll(() => dir.cleanup());
  let dir = tempDir('tributary-fnlogs-');
  let db: Database;
  let store: FunctionLogStore;
  const open = async (maxBytesPerFunction = 1024 * 1024) => {
    db = await Database.open(dir.path);
    store = new FunctionLogStore({ database: db, logger, retentionMs: 60_000, maxBytesPerFunction });
  };

  afterEach(async () => {
    await store.close();
    await db.close();
    dir.cleanup();
    dir = tempDir('tributary-fnlogs-');
  });

  it('keeps lines per function in time order, with request id, level and version, across a reopen', async () => {
    await open();
    store.append({ name: 'a', version: 1 }, result('r1', [[1000, 'info', 'one'], [1000, 'warn', 'two'], [1001, 'error', 'three']]));
    store.append({ name: 'b', version: 4 }, result('r2', [[999, 'info', 'other function']], 4));
    // Same millisecond: capture order decides.
    store.append({ name: 'a', version: 2 }, result('r3', [[1001, 'debug', 'four']], 2));
    const page = await store.query('a', { limit: 10 });
    expect(page).toEqual({
      items: [
        { time: 1000, level: 'info', message: 'one', requestId: 'r1', functionVersion: 1 },
        { time: 1000, level: 'warn', message: 'two', requestId: 'r1', functionVersion: 1 },
        { time: 1001, level: 'error', message: 'three', requestId: 'r1', functionVersion: 1 },
        { time: 1001, level: 'debug', message: 'four', requestId: 'r3', functionVersion: 2 },
      ],
      nextCursor: null,
    });
    await store.close();
    await db.close();
    await open();
    expect((await store.query('a', { limit: 10 })).items).toHaveLength(4);
    expect((await store.query('b', { limit: 10 })).items.map((l) => l.message)).toEqual(['other function']);
    expect((await store.query('c', { limit: 10 })).items).toEqual([]);
  });

  it('filters by time window, minimum level and request id, and pages both ways with a cursor', async () => {
    await open();
    for (let i = 0; i < 10; i++) store.append({ name: 'f', version: 1 }, result(`r${i % 2}`, [[100 + i, i % 3 === 0 ? 'error' : 'info', `line ${i}`]]));
    const messages = (lines: FunctionLogLine[]) => lines.map((l) => l.message);
    expect(messages((await store.query('f', { limit: 100, from: 103, to: 106 })).items)).toEqual(['line 3', 'line 4', 'line 5']);
    expect(messages((await store.query('f', { limit: 100, level: 'warn' })).items)).toEqual(['line 0', 'line 3', 'line 6', 'line 9']);
    expect(messages((await store.query('f', { limit: 100, requestId: 'r1', level: 'error' })).items)).toEqual(['line 3', 'line 9']);

    const seen: string[] = [];
    let cursor: string | undefined;
    for (let pages = 0; pages < 10; pages++) {
      const page = await store.query('f', { limit: 3, order: 'desc', ...(cursor === undefined ? {} : { cursor }) });
      seen.push(...messages(page.items));
      if (page.nextCursor === null) break;
      cursor = page.nextCursor;
    }
    expect(seen).toEqual(Array.from({ length: 10 }, (_, i) => `line ${9 - i}`));

    const first = await store.query('f', { limit: 4, requestId: 'r0' });
    expect(messages(first.items)).toEqual(['line 0', 'line 2', 'line 4', 'line 6']);
    const second = await store.query('f', { limit: 4, requestId: 'r0', cursor: first.nextCursor as string });
    expect(second).toEqual({ items: [expect.objectContaining({ message: 'line 8' })], nextCursor: null });

    const bad = await store.query('f', { limit: 1, cursor: 'not-a-cursor' }).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(TributaryError);
    expect(bad).toMatchObject({ code: 'InvalidParameter', field: 'cursor' });
  });

  it('keeps each function under its byte budget by deleting its oldest lines', async () => {
    const budget = 64 * 1024;
    await open(budget);
    const line = 'x'.repeat(1000);
    for (let i = 0; i < 200; i++) {
      store.append({ name: 'chatty', version: 1 }, result(`r${i}`, [[1000 + i, 'info', `${i} ${line}`]]));
      if (i % 50 === 49) await store.flush();
    }
    store.append({ name: 'quiet', version: 1 }, result('q', [[1, 'info', 'kept']]));
    await store.flush();
    const kept = (await store.query('chatty', { limit: 1000 })).items;
    // About a thousand bytes per line: at most the budget's worth, and the newest ones.
    expect(kept.length).toBeGreaterThan(20);
    expect(kept.length).toBeLessThanOrEqual(64);
    expect(kept[kept.length - 1]?.message.startsWith('199 ')).toBe(true);
    expect(kept[0]?.requestId).toBe(`r${200 - kept.length}`);
    expect((await store.query('quiet', { limit: 10 })).items).toHaveLength(1);
  });

  it('trims lines older than the retention, of every function', async () => {
    await open();
    for (const name of ['a', 'b', 'c']) store.append({ name, version: 1 }, result('r', [[1000, 'info', 'old'], [5000, 'info', 'new']]));
    await store.flush();
    expect(await store.trim(2000)).toBe(3);
    for (const name of ['a', 'b', 'c']) expect((await store.query(name, { limit: 10 })).items.map((l) => l.message)).toEqual(['new']);
  });
});

describe('GET /v1/functions/{name}/logs', () => {
  let running: RunningApp;
  let base: string;

  beforeAll(async () => {
    running = await startApp();
    base = running.addresses.http;
    const code = `export async function handler(event, context) {
      console.log('hello', event.n);
      context.logger.warn('careful', event.n);
      if (event.fail) throw new Error('bad input ' + event.n);
      return event.n;
    }`;
    expect((await call(base, 'PUT', '/v1/functions/talker', { code })).status).toBe(201);
  });
  afterAll(async () => {
    await running.destroy();
  });

  interface Page {
    items: FunctionLogLine[];
    nextCursor: string | null;
  }

  it('shows what invocations printed, at once, filtered by request id and level', async () => {
    const a = (await call(base, 'POST', '/v1/functions/talker/invoke', { n: 1 })).body as { requestId: string };
    const b = (await call(base, 'POST', '/v1/functions/talker/invoke', { n: 2, fail: true })).body as { requestId: string };

    const all = await call(base, 'GET', '/v1/functions/talker/logs');
    expect(all.status).toBe(200);
    const page = all.body as Page;
    expect(page.nextCursor).toBeNull();
    expect(page.items.filter((l) => l.requestId === a.requestId)).toEqual([
      { time: expect.any(Number), level: 'info', message: 'hello 1', requestId: a.requestId, functionVersion: 1 },
      { time: expect.any(Number), level: 'warn', message: 'careful 1', requestId: a.requestId, functionVersion: 1 },
    ]);

    const failed = (await call(base, 'GET', `/v1/functions/talker/logs?requestId=${b.requestId}&level=error`)).body as Page;
    expect(failed.items).toHaveLength(1);
    expect(failed.items[0]?.message).toMatch(/^Invoke Error: Error: bad input 2/);

    const recent = (await call(base, 'GET', '/v1/functions/talker/logs?from=-1m&order=desc&limit=1')).body as Page;
    expect(recent.items.map((l) => l.requestId)).toEqual([b.requestId]);
    expect(recent.nextCursor).toEqual(expect.any(String));

    // The same invocations in the per-function metrics.
    const metrics = await (await fetch(`${base}/metrics`)).text();
    expect(metrics).toContain('tributary_function_invocations_total{function="talker",outcome="ok"} 1');
    expect(metrics).toContain('tributary_function_invocations_total{function="talker",outcome="error"} 1');
    expect(metrics).toContain('tributary_function_errors_total{function="talker"} 1');
    expect(metrics).toContain('tributary_function_duration_seconds_count{function="talker"} 2');
  });

  it('answers 404 for a name that has neither logs nor a function, 400 for bad parameters', async () => {
    const missing = await call(base, 'GET', '/v1/functions/nobody/logs');
    expect(missing.status).toBe(404);
    expect(missing.body).toMatchObject({ error: { code: 'FunctionNotFound' } });
    const badLevel = await call(base, 'GET', '/v1/functions/talker/logs?level=loud');
    expect(badLevel.status).toBe(400);
    const badFrom = await call(base, 'GET', '/v1/functions/talker/logs?from=yesterday');
    expect(badFrom.body).toMatchObject({ error: { code: 'InvalidParameter', field: 'from' } });
  });

  it('keeps the logs of a deleted function', async () => {
    const code = 'export const handler = async () => { console.log("last words"); };';
    expect((await call(base, 'PUT', '/v1/functions/ephemeral', { code })).status).toBe(201);
    await call(base, 'POST', '/v1/functions/ephemeral/invoke', {});
    expect((await call(base, 'DELETE', '/v1/functions/ephemeral')).status).toBe(204);
    const page = (await call(base, 'GET', '/v1/functions/ephemeral/logs')).body as Page;
    expect(page.items.map((l) => l.message)).toEqual(['last words']);
  });
});

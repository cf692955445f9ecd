/**
 * Replay of a stream window through a function: the job logic against an in-memory change
 * log with a fake runtime (window bounds, batching, filters, failures, throttling, cancel,
 * truncation), then the whole app over real HTTP with real function processes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TributaryError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { ReplayManager, type ReplayJob } from '../functions/replay.js';
import type { FunctionRuntime, FunctionSpec, InvokeOutcome, InvokeResult } from '../functions/types.js';
import type { DynamoDBStreamEvent } from '../streams/lambda-event.js';
import { MemoryChangeLog } from '../streams/memory-log.js';
import type { BatchOp, ChangeLog, ChangeRecord } from '../streams/types.js';
import { call, startApp, type RunningApp } from './app-harness.js';
import { waitFor } from './helpers.js';

const logger = createLogger('silent');

/** Commits one record per device id at commit time `at`. */
function write(log: ChangeLog, deviceIds: string[], at: number): ChangeRecord[] {
  const ops: BatchOp[] = [];
  const records = log.stage(
    ops,
    deviceIds.map((deviceId, i) => ({ eventName: 'INSERT' as const, deviceId, ts: at + i, seq: 0, newValues: { n: i, kind: deviceId.startsWith('hot') ? 'hot' : 'cold' } })),
    at,
  );
  log.commit(records);
  return records;
}

class FakeRuntime implements FunctionRuntime {
  readonly events: DynamoDBStreamEvent[] = [];
  outcome: (event: DynamoDBStreamEvent) => InvokeOutcome = () => ({ status: 'ok', result: null });
  throttleNext = 0;
  async invoke(fn: FunctionSpec, event: unknown): Promise<InvokeResult> {
    if (this.throttleNext > 0) {
      this.throttleNext--;
      throw new TributaryError('Throttled', 'busy');
    }
    const e = event as DynamoDBStreamEvent;
    this.events.push(e);
    return { requestId: `req-${this.events.length}`, functionVersion: fn.version, outcome: this.outcome(e), durationMs: 1, logs: [] };
  }
  async close(): Promise<void> {}
  delivered(): string[] {
    return this.events.flatMap((e) => e.Records.map((r) => `${r.dynamodb.Keys['deviceId']?.S}`));
  }
}

async function finished(manager: ReplayManager, job: ReplayJob): Promise<ReplayJob> {
  return waitFor(() => {
    const j = manager.get(job.functionName, job.id);
    return j.status === 'running' ? undefined : j;
  }, 5000, 'the replay to finish');
}

describe('ReplayManager', () => {
  function setup(versions: number[] = [1]) {
    const log = new MemoryChangeLog({ shards: 2 });
    const runtime = new FakeRuntime();
    let resolves = 0;
    const resolve = async (name: string): Promise<FunctionSpec> => {
      if (name !== 'fn') throw new TributaryError('FunctionNotFound', `no function named ${name}`);
      const version = versions[Math.min(resolves++, versions.length - 1)] as number;
      return { name, version, codePath: '/nowhere', timeoutMs: 1000, memoryMb: 64, environment: {} };
    };
    const manager = new ReplayManager({ log, runtime, resolve, logger });
    return { log, runtime, manager };
  }

  it('delivers the records committed in [from, to), in batches of one shard, in order', async () => {
    const { log, runtime, manager } = setup();
    write(log, ['a1', 'b1'], 1000); // before the window
    write(log, ['a2', 'b2', 'c2', 'd2', 'e2'], 2000);
    write(log, ['a3'], 2999);
    write(log, ['a4', 'b4'], 3000); // at `to`: outside
    const job = await manager.start('fn', { from: 2000, to: 3000, batchSize: 2 });
    expect(job).toMatchObject({ status: 'running', from: 2000, to: 3000, batchSize: 2, shardCount: 2 });
    const done = await finished(manager, job);
    expect(done).toMatchObject({ status: 'completed', records: 6, failedBatches: 0, filtered: 0, shardsDone: 2, truncated: false, functionVersions: [1] });
    expect(done.finishedAt).toEqual(expect.any(Number));
    expect(runtime.delivered().sort()).toEqual(['a2', 'a3', 'b2', 'c2', 'd2', 'e2']);
    for (const e of runtime.events) {
      expect(e.Records.length).toBeLessThanOrEqual(2);
      const shards = new Set(e.Records.map((r) => log.shardOf(r.dynamodb.Keys['deviceId']?.S as string)));
      expect(shards.size).toBe(1);
      const seqs = e.Records.map((r) => Number(r.dynamodb.SequenceNumber));
      expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    }
    expect(done.invocations).toBe(runtime.events.length);
  });

  it('applies filterCriteria, lists failed batches and goes on, and waits out Throttled', async () => {
    const { log, runtime, manager } = setup([1, 2]);
    write(log, ['hot-1', 'cold-1', 'hot-2', 'cold-2', 'hot-3'], 1000);
    runtime.throttleNext = 2;
    runtime.outcome = (e) => (e.Records.some((r) => r.dynamodb.Keys['deviceId']?.S === 'hot-2') ? { status: 'error', errorType: 'Error', errorMessage: 'boom' } : { status: 'ok', result: null });
    const filterCriteria = { filters: [{ pattern: JSON.stringify({ dynamodb: { NewImage: { kind: { S: ['hot'] } } } }) }] };
    const done = await finished(manager, await manager.start('fn', { from: 0, to: 5000, batchSize: 1, filterCriteria }));
    expect(runtime.delivered().sort()).toEqual(['hot-1', 'hot-2', 'hot-3']);
    expect(done).toMatchObject({ status: 'completed', records: 3, filtered: 2, invocations: 3, failedBatches: 1 });
    expect(done.failures).toEqual([
      { shard: log.shardOf('hot-2'), firstSequenceNumber: expect.any(Number), lastSequenceNumber: expect.any(Number), count: 1, requestId: expect.any(String), status: 'error', errorType: 'Error', errorMessage: 'boom' },
    ]);
    expect(done.functionVersions.length).toBeGreaterThanOrEqual(1);
  });

  it('validates the request and refuses a second running replay of the function', async () => {
    const { log, manager, runtime } = setup();
    write(log, ['a'], 1000);
    const code = async (p: Promise<unknown>) => ((await p.catch((e: unknown) => e)) as TributaryError).code;
    expect(await code(manager.start('nope', { from: 0 }))).toBe('FunctionNotFound');
    expect(await code(manager.start('fn', { from: 5000, to: 4000 }))).toBe('ValidationError');
    expect(await code(manager.start('fn', { from: 0, batchSize: 0 }))).toBe('ValidationError');
    expect(await code(manager.start('fn', { from: 0, filterCriteria: { filters: [{ pattern: '{not json' }] } }))).toBe('ValidationError');
    // Hold the first job in a throttle wait so that it is still running.
    runtime.throttleNext = 1000;
    const first = await manager.start('fn', { from: 0 });
    expect(await code(manager.start('fn', { from: 0 }))).toBe('Conflict');
    const cancelled = await manager.cancel('fn', first.id);
    expect(cancelled).toMatchObject({ status: 'cancelled', records: 0 });
    expect(manager.list('fn').map((j) => j.id)).toEqual([first.id]);
    expect(() => manager.get('fn', 'unknown')).toThrow(TributaryError);
  });

  it('fails the job, with the reason, when the function is deleted under it', async () => {
    const log = new MemoryChangeLog({ shards: 1 });
    write(log, ['a', 'b', 'c'], 1000);
    let calls = 0;
    const resolve = async (name: string): Promise<FunctionSpec> => {
      if (calls++ > 1) throw new TributaryError('FunctionNotFound', `no function named ${name}`);
      return { name, version: 1, codePath: '/x', timeoutMs: 1, memoryMb: 16, environment: {} };
    };
    const runtime = new FakeRuntime();
    const manager = new ReplayManager({ log, runtime, resolve, logger });
    const done = await finished(manager, await manager.start('fn', { from: 0, to: 5000, batchSize: 1 }));
    expect(done).toMatchObject({ status: 'failed', records: 1, error: 'FunctionNotFound: no function named fn' });
  });

  it('says when retention has trimmed the start of the window', async () => {
    const { log, runtime, manager } = setup();
    write(log, ['a', 'a', 'a'], 1000);
    write(log, ['a'], 9000);
    const view = Object.create(log) as ChangeLog;
    // Shard of `a` has lost its first two records.
    const shard = log.shardOf('a');
    view.shards = async () => (await log.shards()).map((s) => (s.shard === shard ? { ...s, firstSequenceNumber: 3 } : s));
    view.read = async (s, after, limit) => log.read(s, s === shard ? Math.max(after, 2) : after, limit);
    view.readFromTime = async (s, t, limit) => (await log.readFromTime(s, t, limit + 2)).filter((r) => s !== shard || r.sequenceNumber >= 3).slice(0, limit);
    const trimmedManager = new ReplayManager({ log: view, runtime, resolve: async (name) => ({ name, version: 1, codePath: '/x', timeoutMs: 1, memoryMb: 16, environment: {} }), logger });
    const done = await finished(trimmedManager, await trimmedManager.start('fn', { from: 500, to: 10_000 }));
    expect(done).toMatchObject({ status: 'completed', records: 2, truncated: true });
    await manager.close();
  });
});

describe('POST /v1/functions/{name}/replay', () => {
  let running: RunningApp;
  let base: string;
  let from: number;

  beforeAll(async () => {
    running = await startApp();
    base = running.addresses.http;
    const code = `export async function handler(event, context) {
      for (const r of event.Records) console.log('seen', r.dynamodb.Keys.deviceId.S, r.dynamodb.NewImage.n.N);
      if (event.Records.some((r) => r.dynamodb.NewImage.n.N === '13')) throw new Error('unlucky');
      if (process.env.SLOW) await new Promise((resolve) => setTimeout(resolve, Number(process.env.SLOW)));
    }`;
    expect((await call(base, 'PUT', '/v1/functions/replayer', { code })).status).toBe(201);
    expect((await call(base, 'PUT', '/v1/functions/slow', { code, environment: { SLOW: '200' } })).status).toBe(201);
    from = Date.now();
    for (let n = 10; n < 16; n++) expect((await call(base, 'POST', `/v1/devices/dev-${n % 3}/telemetry`, { n })).status).toBe(201);
  });
  afterAll(async () => {
    await running.destroy();
  });

  const job = async (name: string, id: string): Promise<ReplayJob> =>
    waitFor(async () => {
      const res = await call(base, 'GET', `/v1/functions/${name}/replays/${id}`);
      expect(res.status).toBe(200);
      const j = res.body as ReplayJob;
      return j.status === 'running' ? undefined : j;
    }, 10_000, 'the replay to finish');

  it('runs a job (202) that re-processes the window and records a summary in the logs', async () => {
    const res = await call(base, 'POST', '/v1/functions/replayer/replay', { from, batchSize: 1 });
    expect(res.status, JSON.stringify(res.body)).toBe(202);
    const started = res.body as ReplayJob;
    expect(started).toMatchObject({ functionName: 'replayer', status: 'running', from, batchSize: 1 });
    const done = await job('replayer', started.id);
    expect(done).toMatchObject({ status: 'completed', records: 6, invocations: 6, failedBatches: 1, functionVersions: [1] });
    expect(done.failures[0]).toMatchObject({ status: 'error', errorMessage: 'unlucky' });

    const logs = (await call(base, 'GET', '/v1/functions/replayer/logs?limit=1000')).body as { items: Array<{ message: string; requestId: string }> };
    const seen = logs.items.filter((l) => l.message.startsWith('seen ')).map((l) => l.message.split(' ')[2]);
    expect(seen.sort()).toEqual(['10', '11', '12', '13', '14', '15']);
    const summary = logs.items.filter((l) => l.requestId === started.id);
    expect(summary).toHaveLength(1);
    expect(summary[0]?.message).toMatch(/^replay .* completed: .* 6 records in 6 invocations, 1 failed batches/);

    const listed = (await call(base, 'GET', '/v1/functions/replayer/replays')).body as { items: ReplayJob[] };
    expect(listed.items.map((j) => j.id)).toEqual([started.id]);
  });

  it('leaves a trigger of the function alone: no redelivery, no skipped record', async () => {
    expect((await call(base, 'PUT', '/v1/functions/watched', { code: `export async function handler(event) {
      for (const r of event.Records) console.log('seen', r.dynamodb.NewImage.n.N);
    }` })).status).toBe(201);
    expect((await call(base, 'POST', '/v1/functions/watched/triggers', { startingPosition: 'LATEST' })).status).toBe(201);
    const seen = async (): Promise<string[]> => {
      const page = (await call(base, 'GET', '/v1/functions/watched/logs?limit=1000')).body as { items: Array<{ message: string }> };
      return page.items.filter((l) => l.message.startsWith('seen ')).map((l) => l.message.slice(5)).sort();
    };
    const windowStart = Date.now();
    for (const n of [20, 21, 22]) expect((await call(base, 'POST', `/v1/devices/watched-${n}/telemetry`, { n })).status).toBe(201);
    await waitFor(async () => (await seen()).length === 3, 10_000, 'the trigger to deliver');
    const res = await call(base, 'POST', '/v1/functions/watched/replay', { from: windowStart });
    expect(await job('watched', (res.body as ReplayJob).id)).toMatchObject({ status: 'completed', records: 3 });
    expect((await call(base, 'POST', '/v1/devices/watched-23/telemetry', { n: 23 })).status).toBe(201);
    await waitFor(async () => (await seen()).includes('23'), 10_000, 'the trigger to deliver the next reading');
    // Three from the trigger, three from the replay, then only the new one.
    expect(await seen()).toEqual(['20', '20', '21', '21', '22', '22', '23']);
  });

  it('takes ISO-8601 and relative times, and an empty window ends at once', async () => {
    const res = await call(base, 'POST', '/v1/functions/replayer/replay', { from: new Date(Date.now() + 60_000).toISOString(), to: '+2m' });
    expect(res.status).toBe(202);
    const done = await job('replayer', (res.body as ReplayJob).id);
    expect(done).toMatchObject({ status: 'completed', records: 0 });
  });

  it('refuses a second replay while one runs (409), and cancels one', async () => {
    const first = await call(base, 'POST', '/v1/functions/slow/replay', { from, batchSize: 1 });
    expect(first.status).toBe(202);
    const id = (first.body as ReplayJob).id;
    const second = await call(base, 'POST', '/v1/functions/slow/replay', { from });
    expect(second.status).toBe(409);
    expect(second.body).toMatchObject({ error: { code: 'Conflict' } });
    const cancelled = await call(base, 'POST', `/v1/functions/slow/replays/${id}/cancel`);
    expect(cancelled.status).toBe(200);
    expect(cancelled.body).toMatchObject({ id, status: 'cancelled' });
    expect((cancelled.body as ReplayJob).records).toBeLessThan(6);
  });

  it('forgets the replays of a deleted function: not listed, not served, not shown to a new function of that name', async () => {
    const code = 'export async function handler() { await new Promise((resolve) => setTimeout(resolve, 200)); }';
    expect((await call(base, 'PUT', '/v1/functions/doomed', { code })).status).toBe(201);
    const started = await call(base, 'POST', '/v1/functions/doomed/replay', { from, batchSize: 1 });
    expect(started.status).toBe(202);
    const id = (started.body as ReplayJob).id;
    expect(((await call(base, 'GET', '/v1/functions/doomed/replays')).body as { items: ReplayJob[] }).items.map((j) => j.id)).toEqual([id]);
    expect((await call(base, 'DELETE', '/v1/functions/doomed')).status).toBe(204);
    expect((await call(base, 'GET', `/v1/functions/doomed/replays/${id}`)).status).toBe(404);
    expect((await call(base, 'GET', '/v1/functions/doomed/replays')).body).toEqual({ items: [], nextCursor: null });
    expect((await call(base, 'PUT', '/v1/functions/doomed', { code })).status).toBe(201);
    expect((await call(base, 'GET', '/v1/functions/doomed/replays')).body).toEqual({ items: [], nextCursor: null });
    expect((await call(base, 'GET', `/v1/functions/doomed/replays/${id}`)).status).toBe(404);
  });

  it('answers 400 for a bad window or filter, 404 for an unknown function or job', async () => {
    const backwards = await call(base, 'POST', '/v1/functions/replayer/replay', { from, to: from - 1 });
    expect(backwards.status).toBe(400);
    expect(backwards.body).toMatchObject({ error: { code: 'ValidationError', field: 'to' } });
    const badTime = await call(base, 'POST', '/v1/functions/replayer/replay', { from: 'last tuesday' });
    expect(badTime.body).toMatchObject({ error: { code: 'InvalidParameter', field: 'from' } });
    const badFilter = await call(base, 'POST', '/v1/functions/replayer/replay', { from, filterCriteria: { filters: 'all' } });
    expect(badFilter.status).toBe(400);
    expect((await call(base, 'POST', '/v1/functions/ghost/replay', { from })).status).toBe(404);
    expect((await call(base, 'GET', '/v1/functions/replayer/replays/00000000-0000-0000-0000-000000000000')).status).toBe(404);
  });
});

/**
 * The dead-letter queue: one suite against both implementations (add/list/pagination/
 * get/delete, and durability across a reopen for the LevelDB one), redrive against an
 * in-memory change log with a fake invoker, and the `/v1/dlq` routes through
 * `app.inject()` with the in-memory implementations.
 */
import type { FastifyInstance } from 'fastify';
import { minimalApiDeps } from './app-harness.js';
import { afterEach, describe, expect, it } from 'vitest';
import { buildApi } from '../api/index.js';
import { TributaryError } from '../core/errors.js';
import { LevelDeadLetterQueue, MemoryDeadLetterQueue, type DeadLetterEntry, type DeadLetterQueue, type RedriveDeps } from '../functions/dlq.js';
import type { DiscardMetadata, MappingDeps } from '../functions/event-source-mapping.js';
import type { InvokeOutcome, InvokeResult } from '../functions/types.js';
import { Database } from '../store/database.js';
import { MemoryTelemetryStore } from '../store/index.js';
import type { DynamoDBStreamEvent } from '../streams/lambda-event.js';
import { MemoryChangeLog } from '../streams/memory-log.js';
import type { BatchOp, ChangeLog, ChangeRecord } from '../streams/types.js';
import { tempDir } from './helpers.js';

const ARN = new MemoryChangeLog({ shards: 1 }).streamArn;

function metadata(overrides: Partial<DiscardMetadata> = {}): DiscardMetadata {
  return {
    function: 'on-change',
    functionVersion: 3,
    triggerId: 'trigger-1',
    shard: 0,
    streamArn: ARN,
    firstSequenceNumber: 1,
    lastSequenceNumber: 3,
    count: 3,
    reason: 'RetryAttemptsExhausted',
    firstRecordAt: 1000,
    lastRecordAt: 2000,
    invocations: 3,
    lastOutcome: { status: 'error', errorType: 'Error', errorMessage: 'boom' },
    discardedAt: 3000,
    ...overrides,
  };
}

async function expectCode(p: Promise<unknown>, code: string): Promise<TributaryError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TributaryError);
  expect((err as TributaryError).code).toBe(code);
  return err as TributaryError;
}

interface Impl {
  open(): Promise<DeadLetterQueue>;
  /** Closes and opens again on the same storage (undefined: not durable). */
  reopen?: () => Promise<DeadLetterQueue>;
  cleanup(): Promise<void>;
}

const implementations: Array<[string, () => Impl]> = [
  [
    'MemoryDeadLetterQueue',
    () => ({
      open: async () => new MemoryDeadLetterQueue(),
      cleanup: async () => {},
    }),
  ],
  [
    'LevelDeadLetterQueue',
    () => {
      const dir = tempDir('tributary-dlq-');
      let db: Database | undefined;
      return {
        open: async () => {
          db = await Database.open(dir.path);
          return new LevelDeadLetterQueue(db);
        },
        reopen: async () => {
          await db?.close();
          db = await Database.open(dir.path);
          return new LevelDeadLetterQueue(db);
        },
        cleanup: async () => {
          await db?.close();
          dir.cleanup();
        },
      };
    },
  ],
];

describe.each(implementations)('%s', (_name, make) => {
  let impl: Impl;
  afterEach(async () => {
    await impl.cleanup();
  });

  async function queue(): Promise<DeadLetterQueue> {
    impl = make();
    return impl.open();
  }

  it('adds entries with time-ordered ids, and gets and deletes them', async () => {
    const q = await queue();
    const before = Date.now();
    const a = await q.add(metadata());
    expect(a).toMatchObject({ ...metadata(), redrives: 0 });
    expect(a.id).toMatch(/^[0-9]{15}-[0-9a-f]{16}$/);
    expect(a.createdAt).toBeGreaterThanOrEqual(before);
    expect(Number(a.id.slice(0, 15))).toBe(a.createdAt);
    expect(await q.get(a.id)).toEqual(a);
    await q.delete(a.id);
    await expectCode(q.get(a.id), 'NotFound');
    await expectCode(q.delete(a.id), 'NotFound');
    await expectCode(q.get('not-an-id'), 'NotFound');
  });

  it('lists oldest first, in pages, filtered by function', async () => {
    const q = await queue();
    const added: DeadLetterEntry[] = [];
    for (let i = 0; i < 7; i++) {
      added.push(await q.add(metadata({ function: i % 2 === 0 ? 'even' : 'odd', firstSequenceNumber: i + 1, lastSequenceNumber: i + 1, count: 1 })));
      // Distinct milliseconds, so that id order is add order.
      const t = Date.now();
      while (Date.now() === t) await new Promise((r) => setTimeout(r, 1));
    }
    const all = await q.list({ limit: 100 });
    expect(all).toEqual({ items: added, nextCursor: null });

    const seen: DeadLetterEntry[] = [];
    let cursor: string | undefined;
    for (let pages = 0; ; pages++) {
      expect(pages).toBeLessThan(10);
      const page = await q.list(cursor === undefined ? { limit: 3 } : { limit: 3, cursor });
      seen.push(...page.items);
      if (page.nextCursor === null) break;
      expect(page.items).toHaveLength(3);
      cursor = page.nextCursor;
    }
    expect(seen).toEqual(added);

    const odd = await q.list({ functionName: 'odd', limit: 2 });
    expect(odd.items.map((e) => e.firstSequenceNumber)).toEqual([2, 4]);
    expect(odd.nextCursor).not.toBeNull();
    const rest = await q.list({ functionName: 'odd', limit: 2, cursor: odd.nextCursor as string });
    expect(rest).toEqual({ items: [added[5]], nextCursor: null });
    expect(await q.list({ functionName: 'none', limit: 5 })).toEqual({ items: [], nextCursor: null });

    await expectCode(q.list({ limit: 1, cursor: 'garbage' }), 'InvalidParameter');
  });

  it('keeps entries across a reopen (LevelDB only)', async () => {
    const q = await queue();
    if (impl.reopen === undefined) return;
    const a = await q.add(metadata());
    const b = await q.add(metadata({ function: 'other' }));
    await q.delete(a.id);
    const again = await impl.reopen();
    expect(await again.list({ limit: 10 })).toEqual({ items: [b], nextCursor: null });
    expect(await again.get(b.id)).toEqual(b);
  });

  it('fits MappingDeps.onDiscard', async () => {
    const q = await queue();
    const onDiscard: MappingDeps['onDiscard'] = q.onDiscard;
    await onDiscard?.(metadata());
    expect((await q.list({ limit: 10 })).items).toHaveLength(1);
  });
});

/** Commits one record per change on `log` (as the store's write path does). */
function write(log: ChangeLog, deviceIds: string[], now = Date.now()): ChangeRecord[] {
  const ops: BatchOp[] = [];
  const records = log.stage(
    ops,
    deviceIds.map((deviceId, i) => ({ eventName: 'INSERT' as const, deviceId, ts: now + i, seq: 0, newValues: { n: i } })),
    now,
  );
  log.commit(records);
  return records;
}

/** A view of `log` whose shards have lost every record before `firstKept` (as retention trims them). */
function trimmed(log: ChangeLog, firstKept: number): ChangeLog {
  const view = Object.create(log) as ChangeLog;
  view.read = async (shard, after, limit) => log.read(shard, Math.max(after, firstKept - 1), limit);
  return view;
}

class FakeInvoker {
  readonly calls: Array<{ functionName: string; event: DynamoDBStreamEvent }> = [];
  outcome: InvokeOutcome = { status: 'ok', result: null };
  /** The version the runtime reports it ran; unset like a runtime that does not say. */
  functionVersion: number | undefined;

  readonly invoke = async (functionName: string, event: DynamoDBStreamEvent): Promise<InvokeResult> => {
    this.calls.push({ functionName, event });
    const result: InvokeResult = { requestId: `req-${this.calls.length}`, outcome: this.outcome, durationMs: 2, logs: [{ ts: 1, level: 'info', message: 'handled' }] };
    if (this.functionVersion !== undefined) result.functionVersion = this.functionVersion;
    return result;
  };
}

describe('redrive', () => {
  function setup() {
    const log = new MemoryChangeLog({ shards: 1 });
    write(log, ['a', 'b']); // 1, 2: before the entry
    const records = write(log, ['c', 'd', 'e']); // 3..5: the discarded batch
    write(log, ['f']); // 6: after it
    const q = new MemoryDeadLetterQueue();
    const invoker = new FakeInvoker();
    const deps: RedriveDeps = { log, invoke: invoker.invoke };
    const meta = metadata({ firstSequenceNumber: 3, lastSequenceNumber: 5, count: 3, firstRecordAt: (records[0] as ChangeRecord).createdAt, lastRecordAt: (records[2] as ChangeRecord).createdAt });
    return { log, q, invoker, deps, meta };
  }

  it('re-reads exactly the entry\'s records, invokes once, and deletes the entry on success', async () => {
    const { q, invoker, deps, meta } = setup();
    const entry = await q.add(meta);
    const r = await q.redrive(entry.id, deps);
    expect(r.deleted).toBe(true);
    expect(r.result.outcome.status).toBe('ok');
    expect(invoker.calls).toHaveLength(1);
    const call = invoker.calls[0] as (typeof invoker.calls)[number];
    expect(call.functionName).toBe('on-change');
    expect(call.event.Records.map((x) => x.dynamodb.SequenceNumber)).toEqual(['3', '4', '5']);
    expect(call.event.Records.map((x) => x.dynamodb.Keys['deviceId']?.S)).toEqual(['c', 'd', 'e']);
    expect(call.event.Records[0]?.eventSourceARN).toBe(ARN);
    await expectCode(q.get(entry.id), 'NotFound');
  });

  it('redrives an entry written under another region, account or the earlier arn:tributary form, and refuses one of another stream', async () => {
    const { q, invoker, deps, meta } = setup();
    const label = ARN.slice(ARN.lastIndexOf('/') + 1);
    for (const streamArn of [`arn:tributary:dynamodb:local:000000000000:table/telemetry/stream/${label}Z`, `arn:aws:dynamodb:eu-west-1:123456789012:table/telemetry/stream/${label}`]) {
      const entry = await q.add({ ...meta, streamArn });
      expect((await q.redrive(entry.id, deps)).deleted).toBe(true);
      // Rendered with the ARN of the stream as configured now.
      expect(invoker.calls.at(-1)?.event.Records[0]?.eventSourceARN).toBe(ARN);
    }
    const other = await q.add({ ...meta, streamArn: ARN.replace(label, '2026-01-01T00:00:00.000') });
    const err = await expectCode(q.redrive(other.id, deps), 'Conflict');
    expect(err.message).toMatch(/belongs to stream/);
    expect(invoker.calls).toHaveLength(2);
  });

  it('keeps the entry on failure, counting the attempt', async () => {
    const { q, invoker, deps, meta } = setup();
    const entry = await q.add(meta);
    invoker.outcome = { status: 'timeout' };
    const r = await q.redrive(entry.id, deps);
    expect(r.deleted).toBe(false);
    expect(r.result.outcome).toEqual({ status: 'timeout' });
    const kept = await q.get(entry.id);
    expect(kept).toEqual({ ...entry, invocations: entry.invocations + 1, redrives: 1, lastOutcome: { status: 'timeout' } });
    expect(r.entry).toEqual(kept);

    // A partial-batch response naming a record of the batch is a failure too.
    invoker.outcome = { status: 'ok', result: { batchItemFailures: [{ itemIdentifier: '4' }] } };
    expect((await q.redrive(entry.id, deps)).deleted).toBe(false);
    expect((await q.get(entry.id)).redrives).toBe(2);

    invoker.outcome = { status: 'ok', result: { batchItemFailures: [] } };
    expect((await q.redrive(entry.id, deps)).deleted).toBe(true);
  });

  it('records the version a failed redrive ran (the latest), not the one that failed first', async () => {
    const { q, invoker, deps, meta } = setup();
    const entry = await q.add(meta);
    expect(entry.functionVersion).toBe(3);
    invoker.outcome = { status: 'error', errorType: 'Error', errorMessage: 'still broken' };
    invoker.functionVersion = 5;
    const r = await q.redrive(entry.id, deps);
    expect(r.entry.functionVersion).toBe(5);
    expect((await q.get(entry.id)).functionVersion).toBe(5);
  });

  it('fails with Conflict, without invoking, when records were trimmed', async () => {
    const { log, q, invoker, meta } = setup();
    const entry = await q.add(meta);
    for (const firstKept of [4, 6, 7]) {
      const err = await expectCode(q.redrive(entry.id, { log: trimmed(log, firstKept), invoke: invoker.invoke }), 'Conflict');
      expect(err.message).toMatch(/no longer in the change log/);
    }
    expect(invoker.calls).toHaveLength(0);
    expect(await q.get(entry.id)).toEqual(entry);
    await expectCode(q.redrive(entry.id, { log: new MemoryChangeLog({ shards: 1 }), invoke: invoker.invoke }), 'Conflict');
    await expectCode(q.redrive('000000000000001-0000000000000000', { log, invoke: invoker.invoke }), 'NotFound');
  });

  it('refuses a second redrive, or a delete, while a redrive of the entry is running', async () => {
    const { q, invoker, deps, meta } = setup();
    const entry = await q.add(meta);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const slow: RedriveDeps = {
      log: deps.log,
      invoke: async (name, event) => {
        await held;
        return invoker.invoke(name, event);
      },
    };
    invoker.outcome = { status: 'crashed', reason: 'out of memory' };
    const first = q.redrive(entry.id, slow);
    await expectCode(q.redrive(entry.id, deps), 'Conflict');
    await expectCode(q.delete(entry.id), 'Conflict');
    release();
    expect((await first).deleted).toBe(false);
    expect(invoker.calls).toHaveLength(1);
    await q.delete(entry.id);
  });

  it('reads a batch larger than one read page', async () => {
    const log = new MemoryChangeLog({ shards: 1 });
    const ids = Array.from({ length: 2500 }, (_, i) => `d${i}`);
    write(log, ids);
    const q = new MemoryDeadLetterQueue();
    const invoker = new FakeInvoker();
    const entry = await q.add(metadata({ firstSequenceNumber: 2, lastSequenceNumber: 2400, count: 2399 }));
    expect((await q.redrive(entry.id, { log, invoke: invoker.invoke })).deleted).toBe(true);
    const seqs = invoker.calls[0]?.event.Records.map((x) => Number(x.dynamodb.SequenceNumber)) ?? [];
    expect(seqs).toHaveLength(2399);
    expect([seqs[0], seqs[seqs.length - 1]]).toEqual([2, 2400]);
  });
});

describe('/v1/dlq', () => {
  let app: FastifyInstance | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  function api() {
    const store = new MemoryTelemetryStore({ changeLog: new MemoryChangeLog({ shards: 1 }) });
    const log = store.changeLog;
    write(log, ['a', 'b', 'c']);
    const queue = new MemoryDeadLetterQueue();
    const invoker = new FakeInvoker();
    app = buildApi({
      ...minimalApiDeps(store),
      dlq: { queue, redrive: { log, invoke: invoker.invoke } },
    });
    return { app, queue, invoker, meta: metadata({ streamArn: log.streamArn, firstSequenceNumber: 1, lastSequenceNumber: 3, count: 3 }) };
  }

  it('lists, gets and deletes entries', async () => {
    const { app, queue, meta } = api();
    const a = await queue.add(meta);
    const b = await queue.add({ ...meta, function: 'other' });

    let res = await app.inject('/v1/dlq');
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json<{ items: DeadLetterEntry[] }>().items.map((e) => e.id).sort()).toEqual([a.id, b.id].sort());

    res = await app.inject('/v1/dlq?functionName=other&limit=1');
    expect(res.json()).toEqual({ items: [b], nextCursor: null });

    res = await app.inject('/v1/dlq?limit=1');
    const first = res.json<{ items: DeadLetterEntry[]; nextCursor: string }>();
    expect(first.items).toHaveLength(1);
    res = await app.inject(`/v1/dlq?limit=1&cursor=${encodeURIComponent(first.nextCursor)}`);
    expect(res.json<{ nextCursor: string | null }>().nextCursor).toBeNull();

    res = await app.inject(`/v1/dlq/${a.id}`);
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual(a);

    res = await app.inject({ method: 'DELETE', url: `/v1/dlq/${a.id}` });
    expect(res.statusCode).toBe(204);
    res = await app.inject(`/v1/dlq/${a.id}`);
    expect(res.statusCode).toBe(404);
    expect(res.json<{ error: { code: string } }>().error.code).toBe('NotFound');
    res = await app.inject({ method: 'DELETE', url: `/v1/dlq/${a.id}` });
    expect(res.statusCode).toBe(404);

    res = await app.inject('/v1/dlq?limit=0');
    expect(res.statusCode).toBe(400);
    res = await app.inject('/v1/dlq?cursor=nope');
    expect(res.statusCode).toBe(400);
    expect(res.json<{ error: { code: string; field?: string } }>().error).toMatchObject({ code: 'InvalidParameter', field: 'cursor' });
  });

  it('redrives: 200 with the outcome; kept on failure, deleted on success; 404 and 409', async () => {
    const { app, queue, invoker, meta } = api();
    const entry = await queue.add(meta);

    invoker.outcome = { status: 'error', errorType: 'TypeError', errorMessage: 'nope' };
    let res = await app.inject({ method: 'POST', url: `/v1/dlq/${entry.id}/redrive` });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toMatchObject({ deleted: false, records: 3, status: 'error', errorType: 'TypeError', errorMessage: 'nope', requestId: 'req-1', entry: { id: entry.id, redrives: 1 } });

    invoker.outcome = { status: 'ok', result: { done: true } };
    res = await app.inject({ method: 'POST', url: `/v1/dlq/${entry.id}/redrive` });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.json()).toMatchObject({ deleted: true, records: 3, status: 'ok', result: { done: true } });
    expect(res.json()).not.toHaveProperty('entry');
    expect(invoker.calls[1]?.event.Records).toHaveLength(3);

    res = await app.inject({ method: 'POST', url: `/v1/dlq/${entry.id}/redrive` });
    expect(res.statusCode).toBe(404);

    const gone = await queue.add({ ...meta, firstSequenceNumber: 10, lastSequenceNumber: 12 });
    res = await app.inject({ method: 'POST', url: `/v1/dlq/${gone.id}/redrive` });
    expect(res.statusCode).toBe(409);
    expect(res.json<{ error: { code: string } }>().error.code).toBe('Conflict');
  });

  it('documents the routes under the functions tag', async () => {
    const { app } = api();
    const doc = (await app.inject('/openapi.json')).json<{ paths: Record<string, Record<string, { tags?: string[]; summary?: string }>> }>();
    for (const [path, method] of [
      ['/v1/dlq', 'get'],
      ['/v1/dlq/{id}', 'get'],
      ['/v1/dlq/{id}', 'delete'],
      ['/v1/dlq/{id}/redrive', 'post'],
    ] as const) {
      const op = doc.paths[path]?.[method];
      expect(op, `${method} ${path}`).toBeDefined();
      expect(op?.tags).toEqual(['functions']);
      expect(op?.summary).toBeTruthy();
    }
  });
});

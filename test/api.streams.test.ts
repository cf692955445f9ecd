/**
 * Change-stream routes (`/v1/streams/...`) against an in-memory change log whose
 * records the tests stage and commit directly. Shards, iterators, paging and errors go
 * through `app.inject()`; long polls and the SSE tail use real sockets (fetch against
 * a server listening on an ephemeral port), since they are about waiting, streaming and
 * clients going away.
 */
import { get, type IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import { fastify, type FastifyInstance, type LightMyRequestResponse } from 'fastify';
import { minimalApiDeps } from './app-harness.js';
import { afterEach, describe, expect, it } from 'vitest';
import { buildApi } from '../api/index.js';
import { errorHandling } from '../api/errors.js';
import { streamRoutes, type StreamRoutesOptions } from '../api/routes/streams.js';
import { MemoryTelemetryStore } from '../store/index.js';
import { toStreamRecord, type DynamoDBStreamRecord } from '../streams/lambda-event.js';
import { MemoryChangeLog } from '../streams/memory-log.js';
import type { Change, ChangeRecord } from '../streams/types.js';
import { waitFor } from './helpers.js';

/** A memory log that counts its live commit listeners, to check that routes unsubscribe. */
class CountingChangeLog extends MemoryChangeLog {
  activeListeners = 0;
  /** Records numbered up to this one are "trimmed" (as retention would drop them). */
  trimmedThrough = 0;

  override onCommit(listener: (records: readonly ChangeRecord[]) => void): () => void {
    const off = super.onCommit(listener);
    this.activeListeners++;
    let subscribed = true;
    return () => {
      if (subscribed) this.activeListeners--;
      subscribed = false;
      off();
    };
  }

  override async read(shard: number, after: number, limit: number): Promise<ChangeRecord[]> {
    return super.read(shard, Math.max(after, this.trimmedThrough), limit);
  }

  protected override async firstSequenceNumber(shard: number): Promise<number | null> {
    return (await this.read(shard, 0, 1))[0]?.sequenceNumber ?? null;
  }
}

const SHARDS = 4;

function insert(deviceId: string, v: number): Change {
  return { eventName: 'INSERT', deviceId, ts: 1_700_000_000_000 + v, seq: 0, newValues: { v, nested: { ok: true } } };
}

/** Stages and commits one batch, as the store's write path does. */
function commit(log: MemoryChangeLog, changes: Change[], now = Date.now()): ChangeRecord[] {
  const records = log.stage([], changes, now);
  log.commit(records);
  return records;
}

/** Device ids that land in distinct shards, one per shard. */
function devicePerShard(log: MemoryChangeLog): string[] {
  const out = new Array<string | undefined>(log.shardCount).fill(undefined);
  for (let i = 0; out.includes(undefined); i++) {
    const id = `device-${i}`;
    out[log.shardOf(id)] ??= id;
  }
  return out as string[];
}

interface Harness {
  app: FastifyInstance;
  log: CountingChangeLog;
  /** Devices in shards 0..3 (`devices[s]` maps to `shardId-000s`). */
  devices: string[];
}

const open: FastifyInstance[] = [];
afterEach(async () => {
  for (const app of open.splice(0)) await app.close();
});

/** The whole API, as `app.ts` builds it, with the streams routes over a counting memory log. */
function harness(): Harness {
  const log = new CountingChangeLog({ shards: SHARDS });
  const store = new MemoryTelemetryStore({ changeLog: new MemoryChangeLog({ shards: 1 }) });
  const app = buildApi({
    ...minimalApiDeps(store),
    changeLog: log,
  });
  app.addHook('onClose', () => store.close());
  open.push(app);
  return { app, log, devices: devicePerShard(log) };
}

/** Just the streams plugin (with the error handling), for options buildApi does not expose. */
function pluginHarness(options: Omit<StreamRoutesOptions, 'changeLog'>): Harness {
  const log = new CountingChangeLog({ shards: SHARDS });
  const app = fastify({ logger: false });
  void app.register(errorHandling);
  void app.register(streamRoutes, { prefix: '/v1', changeLog: log, ...options });
  open.push(app);
  return { app, log, devices: devicePerShard(log) };
}

async function listen(app: FastifyInstance): Promise<string> {
  return app.listen({ host: '127.0.0.1', port: 0 });
}

interface Page {
  items: DynamoDBStreamRecord[];
  nextSequenceNumber: string;
}

function page(res: LightMyRequestResponse): Page {
  expect(res.statusCode, res.body).toBe(200);
  return res.json<Page>();
}

function seqs(p: Page): number[] {
  return p.items.map((r) => Number(r.dynamodb.SequenceNumber));
}

function expectError(res: LightMyRequestResponse, status: number, code: string, field?: string): { code: string; message: string; field?: string } {
  expect(res.statusCode, res.body).toBe(status);
  const body = res.json<{ error: { code: string; message: string; field?: string } }>();
  expect(Object.keys(body)).toEqual(['error']);
  expect(body.error.code).toBe(code);
  expect(body.error.message.length).toBeGreaterThan(0);
  if (field === undefined) expect(body.error).not.toHaveProperty('field');
  else expect(body.error.field).toBe(field);
  return body.error;
}

describe('GET /v1/streams/shards', () => {
  it('lists every shard with first and last sequence numbers as decimal strings, null when empty', async () => {
    const { app, log, devices } = harness();
    const empty = await app.inject('/v1/streams/shards');
    expect(empty.statusCode).toBe(200);
    expect(empty.json()).toEqual({
      streamArn: log.streamArn,
      items: [0, 1, 2, 3].map((s) => ({ shardId: `shardId-000${s}`, firstSequenceNumber: null, lastSequenceNumber: null })),
    });

    commit(log, [insert(devices[0] as string, 1), insert(devices[0] as string, 2), insert(devices[2] as string, 3)]);
    commit(log, [insert(devices[0] as string, 4)]);
    log.trimmedThrough = 1;
    const res = (await app.inject('/v1/streams/shards')).json<{ items: unknown[] }>();
    expect(res.items).toEqual([
      { shardId: 'shardId-0000', firstSequenceNumber: '2', lastSequenceNumber: '3' },
      { shardId: 'shardId-0001', firstSequenceNumber: null, lastSequenceNumber: null },
      // Shard 2's only record is trimmed: no first, but the last number stays.
      { shardId: 'shardId-0002', firstSequenceNumber: null, lastSequenceNumber: '1' },
      { shardId: 'shardId-0003', firstSequenceNumber: null, lastSequenceNumber: null },
    ]);
  });

  it('rejects query parameters', async () => {
    const { app } = harness();
    expectError(await app.inject('/v1/streams/shards?limit=1'), 400, 'InvalidParameter', 'limit');
  });
});

describe('GET /v1/streams/shards/:shardId/records', () => {
  it('TRIM_HORIZON (the default) returns the records exactly as a Lambda handler receives them', async () => {
    const { app, log, devices } = harness();
    const d0 = devices[0] as string;
    const written = [
      ...commit(log, [insert(d0, 1), insert(devices[1] as string, 2)]),
      ...commit(log, [{ eventName: 'MODIFY', deviceId: d0, ts: 1_700_000_000_001, seq: 0, newValues: { v: 10 }, oldValues: { v: 1 } }]),
      ...commit(log, [{ eventName: 'REMOVE', deviceId: d0, ts: 1_700_000_000_001, seq: 0, oldValues: { v: 10 }, byService: true }]),
    ];
    const expected = written.filter((r) => r.shard === 0).map((r) => toStreamRecord(r, log.streamArn));
    const all = page(await app.inject('/v1/streams/shards/shardId-0000/records'));
    expect(all).toEqual({ items: expected, nextSequenceNumber: '3' });
    expect(page(await app.inject('/v1/streams/shards/shardId-0000/records?iterator=TRIM_HORIZON'))).toEqual(all);
    expect(all.items[2]?.userIdentity).toEqual({ type: 'Service', principalId: 'dynamodb.amazonaws.com' });
    expect(all.items[0]?.dynamodb.NewImage).toEqual({ deviceId: { S: d0 }, tsSeq: { N: '1700000000001' }, ts: { N: '1700000000001' }, seq: { N: '0' }, v: { N: '1' }, nested: { M: { ok: { BOOL: true } } } });
  });

  it('pages with limit and continues with AFTER_SEQUENCE_NUMBER=nextSequenceNumber', async () => {
    const { app, log, devices } = harness();
    const d = devices[1] as string;
    for (let i = 0; i < 7; i++) commit(log, [insert(d, i)]);
    const url = '/v1/streams/shards/shardId-0001/records';
    const first = page(await app.inject(`${url}?limit=3`));
    expect(seqs(first)).toEqual([1, 2, 3]);
    expect(first.nextSequenceNumber).toBe('3');
    const second = page(await app.inject(`${url}?iterator=AFTER_SEQUENCE_NUMBER&sequenceNumber=${first.nextSequenceNumber}&limit=3`));
    expect(seqs(second)).toEqual([4, 5, 6]);
    const third = page(await app.inject(`${url}?iterator=AFTER_SEQUENCE_NUMBER&sequenceNumber=${second.nextSequenceNumber}&limit=3`));
    expect(seqs(third)).toEqual([7]);
    // At the end: nothing, and the position stays where it was for the next poll.
    const fourth = page(await app.inject(`${url}?iterator=AFTER_SEQUENCE_NUMBER&sequenceNumber=${third.nextSequenceNumber}`));
    expect(fourth).toEqual({ items: [], nextSequenceNumber: '7' });
    commit(log, [insert(d, 8)]);
    expect(seqs(page(await app.inject(`${url}?iterator=AFTER_SEQUENCE_NUMBER&sequenceNumber=${fourth.nextSequenceNumber}`)))).toEqual([8]);
  });

  it('defaults to 100 records and allows up to 1000', async () => {
    const { app, log, devices } = harness();
    commit(log, Array.from({ length: 1001 }, (_, i) => insert(devices[3] as string, i)));
    expect(page(await app.inject('/v1/streams/shards/shardId-0003/records')).items).toHaveLength(100);
    const max = page(await app.inject('/v1/streams/shards/shardId-0003/records?limit=1000'));
    expect(max.items).toHaveLength(1000);
    expect(max.nextSequenceNumber).toBe('1000');
  });

  it('AT_SEQUENCE_NUMBER includes the record, AFTER_SEQUENCE_NUMBER starts after it; beyond the last is empty', async () => {
    const { app, log, devices } = harness();
    for (let i = 0; i < 5; i++) commit(log, [insert(devices[0] as string, i)]);
    const at = async (it: string, n: string) => page(await app.inject(`/v1/streams/shards/shardId-0000/records?iterator=${it}&sequenceNumber=${n}`));
    expect(seqs(await at('AT_SEQUENCE_NUMBER', '3'))).toEqual([3, 4, 5]);
    expect(seqs(await at('AFTER_SEQUENCE_NUMBER', '3'))).toEqual([4, 5]);
    expect(seqs(await at('AT_SEQUENCE_NUMBER', '0'))).toEqual([1, 2, 3, 4, 5]);
    expect(seqs(await at('AFTER_SEQUENCE_NUMBER', '0'))).toEqual([1, 2, 3, 4, 5]);
    expect(await at('AT_SEQUENCE_NUMBER', '6')).toEqual({ items: [], nextSequenceNumber: '5' });
    expect(await at('AFTER_SEQUENCE_NUMBER', '5')).toEqual({ items: [], nextSequenceNumber: '5' });
    expect(await at('AFTER_SEQUENCE_NUMBER', '999')).toEqual({ items: [], nextSequenceNumber: '999' });
  });

  it('a sequence number older than the trim horizon reads from the oldest retained record', async () => {
    const { app, log, devices } = harness();
    for (let i = 0; i < 6; i++) commit(log, [insert(devices[0] as string, i)]);
    log.trimmedThrough = 3;
    const url = '/v1/streams/shards/shardId-0000/records';
    expect(seqs(page(await app.inject(`${url}?iterator=AT_SEQUENCE_NUMBER&sequenceNumber=2`)))).toEqual([4, 5, 6]);
    expect(seqs(page(await app.inject(`${url}?iterator=AFTER_SEQUENCE_NUMBER&sequenceNumber=1`)))).toEqual([4, 5, 6]);
    expect(seqs(page(await app.inject(url)))).toEqual([4, 5, 6]);
  });

  it('LATEST returns only records committed after the request', async () => {
    const { app, log, devices } = harness();
    commit(log, [insert(devices[2] as string, 1), insert(devices[2] as string, 2)]);
    const latest = page(await app.inject('/v1/streams/shards/shardId-0002/records?iterator=LATEST'));
    expect(latest).toEqual({ items: [], nextSequenceNumber: '2' });
    commit(log, [insert(devices[2] as string, 3)]);
    expect(seqs(page(await app.inject(`/v1/streams/shards/shardId-0002/records?iterator=AFTER_SEQUENCE_NUMBER&sequenceNumber=${latest.nextSequenceNumber}`)))).toEqual([3]);
    // An empty shard stands at 0.
    expect(page(await app.inject('/v1/streams/shards/shardId-0001/records?iterator=LATEST'))).toEqual({ items: [], nextSequenceNumber: '0' });
  });

  it('AT_TIMESTAMP starts at the first record committed at or after the time (epoch ms, ISO-8601, relative)', async () => {
    const { app, log, devices } = harness();
    const d = devices[1] as string;
    const now = Date.now();
    commit(log, [insert(d, 1)], now - 3_600_000);
    commit(log, [insert(d, 2), insert(d, 3)], now - 1_800_000);
    commit(log, [insert(d, 4)], now - 60_000);
    const at = async (t: string, extra = '') => page(await app.inject(`/v1/streams/shards/shardId-0001/records?iterator=AT_TIMESTAMP&timestamp=${encodeURIComponent(t)}${extra}`));
    expect(seqs(await at('0'))).toEqual([1, 2, 3, 4]);
    expect(seqs(await at(String(now - 1_800_000)))).toEqual([2, 3, 4]);
    expect(seqs(await at(new Date(now - 1_800_001).toISOString()))).toEqual([2, 3, 4]);
    expect(seqs(await at('-45m'))).toEqual([2, 3, 4]);
    expect(seqs(await at('-15m'))).toEqual([4]);
    const limited = await at('-45m', '&limit=1');
    expect(limited).toEqual({ items: [expect.objectContaining({ eventName: 'INSERT' })], nextSequenceNumber: '2' });
    // Nothing that recent: empty, standing after the last record so that continuing misses nothing.
    expect(await at('now')).toEqual({ items: [], nextSequenceNumber: '4' });
  });

  it('viewType selects the images, as DynamoDB\'s StreamViewType does', async () => {
    const { app, log, devices } = harness();
    commit(log, [{ eventName: 'MODIFY', deviceId: devices[0] as string, ts: 5, seq: 0, newValues: { v: 2 }, oldValues: { v: 1 } }]);
    const view = async (v: string) => page(await app.inject(`/v1/streams/shards/shardId-0000/records?viewType=${v}`)).items[0]?.dynamodb;
    expect(await view('KEYS_ONLY')).toMatchObject({ StreamViewType: 'KEYS_ONLY', Keys: { tsSeq: { N: '5' } } });
    expect(await view('KEYS_ONLY')).not.toHaveProperty('NewImage');
    expect(await view('NEW_IMAGE')).not.toHaveProperty('OldImage');
    expect((await view('NEW_IMAGE'))?.NewImage).toMatchObject({ v: { N: '2' } });
    expect((await view('OLD_IMAGE'))?.OldImage).toMatchObject({ v: { N: '1' } });
    expect(await view('OLD_IMAGE')).not.toHaveProperty('NewImage');
    expect(await view('NEW_AND_OLD_IMAGES')).toMatchObject({ NewImage: { v: { N: '2' } }, OldImage: { v: { N: '1' } } });
  });

  it('an unknown shard → 404 NotFound naming shardId', async () => {
    const { app } = harness();
    for (const id of ['shardId-0004', 'shardId-9999', 'shard-1', 'nope']) {
      const err = expectError(await app.inject(`/v1/streams/shards/${id}/records`), 404, 'NotFound', 'shardId');
      expect(err.message).toContain(id);
    }
  });

  const bad: Array<[string, string, string]> = [
    ['AT_SEQUENCE_NUMBER without sequenceNumber', 'iterator=AT_SEQUENCE_NUMBER', 'sequenceNumber'],
    ['AFTER_SEQUENCE_NUMBER without sequenceNumber', 'iterator=AFTER_SEQUENCE_NUMBER', 'sequenceNumber'],
    ['a sequenceNumber that is not a number', 'iterator=AT_SEQUENCE_NUMBER&sequenceNumber=abc', 'sequenceNumber'],
    ['a negative sequenceNumber', 'iterator=AT_SEQUENCE_NUMBER&sequenceNumber=-1', 'sequenceNumber'],
    ['a sequenceNumber beyond 2^53', 'iterator=AT_SEQUENCE_NUMBER&sequenceNumber=99999999999999999999', 'sequenceNumber'],
    ['a sequenceNumber without a sequence iterator', 'sequenceNumber=5', 'sequenceNumber'],
    ['AT_TIMESTAMP without timestamp', 'iterator=AT_TIMESTAMP', 'timestamp'],
    ['a bad timestamp', 'iterator=AT_TIMESTAMP&timestamp=yesterday', 'timestamp'],
    ['a timestamp without AT_TIMESTAMP', 'iterator=LATEST&timestamp=now', 'timestamp'],
    ['an unknown iterator', 'iterator=OLDEST', 'iterator'],
    ['limit 0', 'limit=0', 'limit'],
    ['limit above 1000', 'limit=1001', 'limit'],
    ['waitMs above 20000', 'waitMs=20001', 'waitMs'],
    ['a negative waitMs', 'waitMs=-1', 'waitMs'],
    ['an unknown viewType', 'viewType=ALL', 'viewType'],
    ['an unknown parameter', 'shard=1', 'shard'],
  ];
  it.each(bad)('%s → 400 InvalidParameter naming the field', async (_name, qs, field) => {
    const { app } = harness();
    const err = expectError(await app.inject(`/v1/streams/shards/shardId-0000/records?${qs}`), 400, 'InvalidParameter', field);
    expect(err.message).toContain(field);
  });

  it('says which iterators exist', async () => {
    const { app } = harness();
    const err = expectError(await app.inject('/v1/streams/shards/shardId-0000/records?iterator=FIRST'), 400, 'InvalidParameter', 'iterator');
    expect(err.message).toBe('query parameter iterator must be one of TRIM_HORIZON, LATEST, AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, AT_TIMESTAMP');
  });
});

describe('long polling (waitMs)', () => {
  it('answers as soon as a record is committed to the shard, with that record', async () => {
    const { app, log, devices } = harness();
    const base = await listen(app);
    commit(log, [insert(devices[0] as string, 1)]);
    const started = Date.now();
    const pending = fetch(`${base}/v1/streams/shards/shardId-0000/records?iterator=LATEST&waitMs=10000`);
    await waitFor(() => log.activeListeners === 1, 5000, 'the long poll to subscribe');
    // A commit to another shard does not answer it.
    commit(log, [insert(devices[1] as string, 2)]);
    await new Promise((r) => setTimeout(r, 50));
    const [record] = commit(log, [insert(devices[0] as string, 3)]);
    const res = await pending;
    expect(res.status).toBe(200);
    const body = (await res.json()) as Page;
    expect(body).toEqual({ items: [toStreamRecord(record as ChangeRecord, log.streamArn)], nextSequenceNumber: '2' });
    expect(Date.now() - started).toBeLessThan(5000);
    expect(log.activeListeners).toBe(0);
  });

  it('answers at once when records are already there', async () => {
    const { app, log, devices } = harness();
    const base = await listen(app);
    commit(log, [insert(devices[0] as string, 1)]);
    const started = Date.now();
    const body = (await (await fetch(`${base}/v1/streams/shards/shardId-0000/records?waitMs=20000`)).json()) as Page;
    expect(seqs(body)).toEqual([1]);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(log.activeListeners).toBe(0);
  });

  it('answers empty after waitMs when nothing is committed', async () => {
    const { app, log, devices } = harness();
    const base = await listen(app);
    commit(log, [insert(devices[0] as string, 1)]);
    const started = Date.now();
    const res = await fetch(`${base}/v1/streams/shards/shardId-0000/records?iterator=AFTER_SEQUENCE_NUMBER&sequenceNumber=1&waitMs=200`);
    const elapsed = Date.now() - started;
    expect(await res.json()).toEqual({ items: [], nextSequenceNumber: '1' });
    expect(elapsed).toBeGreaterThanOrEqual(190);
    expect(elapsed).toBeLessThan(5000);
    expect(log.activeListeners).toBe(0);
  });

  it('unsubscribes when the client goes away, and server close ends a long poll at once', async () => {
    const { app, log } = harness();
    const base = await listen(app);
    // node:http rather than an aborted fetch: see openTail.
    const gone = get(`${base}/v1/streams/shards/shardId-0000/records?iterator=LATEST&waitMs=20000`, { agent: false });
    gone.on('error', () => {});
    await waitFor(() => log.activeListeners === 1, 5000, 'the long poll to subscribe');
    gone.destroy();
    await waitFor(() => log.activeListeners === 0, 5000, 'the long poll to unsubscribe');

    const pending = fetch(`${base}/v1/streams/shards/shardId-0000/records?iterator=LATEST&waitMs=20000`);
    await waitFor(() => log.activeListeners === 1, 5000, 'the second long poll to subscribe');
    const started = Date.now();
    await app.close();
    expect(Date.now() - started).toBeLessThan(5000);
    const res = await pending;
    expect(await res.json()).toEqual({ items: [], nextSequenceNumber: '0' });
    expect(log.activeListeners).toBe(0);
  });
});

/**
 * An SSE client: collects events and comments as they arrive. Over node:http without an
 * agent, so that closing it closes its socket and nothing else: fetch (undici) opens a
 * fresh connection after an aborted one, which Node 20's server.close() never reaps
 * (it sent no request), so fastify's close would wait for it.
 */
async function openTail(url: string, headers: Record<string, string> = {}) {
  const res = await new Promise<IncomingMessage>((resolve, reject) => {
    get(url, { agent: false, headers }, resolve).once('error', reject);
  });
  const events: Array<{ event: string; data: string }> = [];
  const comments: string[] = [];
  let ended = false;
  let buffer = '';
  res.setEncoding('utf8');
  res.on('data', (chunk: string) => {
    buffer += chunk;
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const fields = buffer.slice(0, end).split('\n');
      buffer = buffer.slice(end + 2);
      if (fields.every((f) => f.startsWith(':'))) comments.push(...fields.map((f) => f.slice(1).trim()));
      else {
        const event = fields.find((f) => f.startsWith('event: '))?.slice(7) ?? 'message';
        const data = fields.filter((f) => f.startsWith('data: ')).map((f) => f.slice(6)).join('\n');
        events.push({ event, data });
      }
    }
  });
  res.once('close', () => (ended = true));
  return {
    res,
    events,
    comments,
    records: () => events.filter((e) => e.event === 'record').map((e) => JSON.parse(e.data) as DynamoDBStreamRecord),
    ended: () => ended,
    /** The client goes away (closes its socket). */
    close: () => res.destroy(),
  };
}

describe('GET /v1/streams/tail (Server-Sent Events)', () => {
  it('streams records committed after connecting, as `event: record` with the stream record as data', async () => {
    const { app, log, devices } = harness();
    const base = await listen(app);
    commit(log, [insert(devices[0] as string, 1)]);
    const tail = await openTail(`${base}/v1/streams/tail`);
    expect(tail.res.statusCode).toBe(200);
    expect(tail.res.headers['content-type']).toBe('text/event-stream; charset=utf-8');
    expect(tail.res.headers['cache-control']).toBe('no-cache');
    expect(tail.res.headers['x-request-id']).toBeTruthy();
    expect(log.activeListeners).toBe(1);

    const written = [...commit(log, [insert(devices[0] as string, 2), insert(devices[1] as string, 3)]), ...commit(log, [insert(devices[2] as string, 4)])];
    await waitFor(() => tail.records().length >= 3, 5000, 'three records');
    expect(tail.records()).toEqual(written.map((r) => toStreamRecord(r, log.streamArn)));
    expect(tail.comments[0]).toContain(log.streamArn);
    tail.close();
    await waitFor(() => log.activeListeners === 0, 5000, 'the tail to unsubscribe');
  });

  it('filters by deviceId and renders the requested viewType', async () => {
    const { app, log, devices } = harness();
    const base = await listen(app);
    const [d0, d1] = devices as [string, string];
    // A device in the same shard as d0, to check the filter is by device and not by shard.
    let sibling = 'sibling-0';
    for (let i = 1; log.shardOf(sibling) !== log.shardOf(d0); i++) sibling = `sibling-${i}`;
    const tail = await openTail(`${base}/v1/streams/tail?deviceId=${d0}&viewType=KEYS_ONLY`);
    commit(log, [insert(d1, 1), insert(sibling, 2), insert(d0, 3)]);
    commit(log, [insert(sibling, 4)]);
    commit(log, [insert(d0, 5)]);
    await waitFor(() => tail.records().length >= 2, 5000, 'two records of the device');
    // Give stray records a moment to (wrongly) arrive.
    await new Promise((r) => setTimeout(r, 50));
    const records = tail.records();
    expect(records.map((r) => [r.dynamodb.Keys['deviceId'], r.dynamodb.Keys['tsSeq']?.N])).toEqual([
      [{ S: d0 }, '1700000000003'],
      [{ S: d0 }, '1700000000005'],
    ]);
    expect(records.every((r) => r.dynamodb.StreamViewType === 'KEYS_ONLY' && r.dynamodb.NewImage === undefined)).toBe(true);
    tail.close();
    await waitFor(() => log.activeListeners === 0, 5000, 'the tail to unsubscribe');
  });

  it('answers bad parameters with 400 in the error shape, before streaming', async () => {
    const { app, log } = harness();
    expectError(await app.inject('/v1/streams/tail?deviceId=a%20b'), 400, 'InvalidParameter', 'deviceId');
    expectError(await app.inject('/v1/streams/tail?viewType=ALL'), 400, 'InvalidParameter', 'viewType');
    expectError(await app.inject('/v1/streams/tail?shard=1'), 400, 'InvalidParameter', 'shard');
    expect(log.activeListeners).toBe(0);
  });

  it('sends heartbeat comments', async () => {
    const { app, log } = pluginHarness({ heartbeatMs: 30 });
    const base = await listen(app);
    const tail = await openTail(`${base}/v1/streams/tail`);
    await waitFor(() => tail.comments.filter((c) => c === 'heartbeat').length >= 2, 5000, 'two heartbeats');
    tail.close();
    await waitFor(() => log.activeListeners === 0, 5000, 'the tail to unsubscribe');
  });

  it('server close ends every tail, so a graceful stop is not held up', async () => {
    const { app, log } = harness();
    const base = await listen(app);
    const tails = [await openTail(`${base}/v1/streams/tail`), await openTail(`${base}/v1/streams/tail?deviceId=x`)];
    expect(log.activeListeners).toBe(2);
    const started = Date.now();
    await app.close();
    expect(Date.now() - started).toBeLessThan(5000);
    await waitFor(() => tails.every((t) => t.ended()), 5000, 'the tails to end');
    expect(log.activeListeners).toBe(0);
  });

  it('does not cut off a client that reads, even for a record larger than the buffer bound', async () => {
    const { app, log, devices } = pluginHarness({ maxBufferedBytes: 64 * 1024 });
    const base = await listen(app);
    const tail = await openTail(`${base}/v1/streams/tail`);
    const big = 'x'.repeat(200_000);
    for (let i = 0; i < 5; i++) commit(log, [{ eventName: 'INSERT', deviceId: devices[0] as string, ts: i, seq: 0, newValues: { big } }]);
    await waitFor(() => tail.records().length === 5, 5000, 'five large records');
    expect(tail.events.some((e) => e.event === 'error')).toBe(false);
    expect(tail.records()[4]?.dynamodb.NewImage?.['big']).toEqual({ S: big });
    expect(log.activeListeners).toBe(1);
    tail.close();
    await waitFor(() => log.activeListeners === 0, 5000, 'the tail to unsubscribe');
  });

  it('cuts off a client that does not read, with a final `event: error`, instead of buffering without bound', async () => {
    const { app, log, devices } = pluginHarness({ maxBufferedBytes: 64 * 1024 });
    const base = new URL(await listen(app));
    const socket: Socket = connect(Number(base.port), base.hostname);
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    socket.write(`GET /v1/streams/tail HTTP/1.1\r\nHost: ${base.host}\r\n\r\n`);
    await waitFor(() => Buffer.concat(received).includes('\r\n\r\n') && log.activeListeners === 1, 5000, 'the tail to start');
    // Stop reading: the kernel's socket buffers fill, then the server's.
    socket.pause();
    const big = 'x'.repeat(100_000);
    const d = devices[0] as string;
    let i = 0;
    for (; i < 2000 && log.activeListeners > 0; i++) {
      commit(log, [{ eventName: 'INSERT', deviceId: d, ts: i, seq: 0, newValues: { big } }]);
      await new Promise((r) => setImmediate(r));
    }
    expect(log.activeListeners).toBe(0);
    // Reading again drains what was queued, ending with the error event, and the stream ends.
    socket.resume();
    await waitFor(() => socket.readableEnded || socket.destroyed || Buffer.concat(received).includes('event: error'), 10_000, 'the final event');
    const text = Buffer.concat(received).toString('utf8');
    const tailEnd = text.slice(text.lastIndexOf('event: '));
    expect(tailEnd).toMatch(/^event: error\ndata: \{"error":\{"code":"Throttled","message":"the client read the tail too slowly/);
    socket.destroy();
  });
});

import { afterEach, describe, expect, it } from 'vitest';
import { buildApi } from '../api/index.js';
import { KEPT_PAYLOAD_BYTES, RejectsLog, type RejectInput } from '../ingest/rejects-log.js';
import { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { MemoryTelemetryStore } from '../store/memory-store.js';
import { minimalApiDeps } from './app-harness.js';
import { tempDir } from './helpers.js';

const reject = (deviceId: string, n: number, extra: Partial<RejectInput> = {}): RejectInput => ({
  transport: 'mqtt',
  reason: 'invalid_json',
  message: `bad ${n}`,
  deviceId,
  clientId: deviceId,
  payload: Buffer.from(`garbage ${n}`),
  ...extra,
});

async function countKeys(db: Database): Promise<number> {
  const keys = await db.db.keys({ gte: Buffer.of(Prefix.reject), lt: Buffer.of(Prefix.reject + 1) }).all();
  return keys.length;
}

describe('RejectsLog (LevelDB table R)', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function open(opts: { retentionMs?: number; maxEntries?: number; now?: () => number } = {}, dir = tempDir()) {
    const database = await Database.open(dir.path);
    const log = await RejectsLog.open(database, { retentionMs: opts.retentionMs ?? 86_400_000, maxEntries: opts.maxEntries ?? 1000, ...(opts.now ? { now: opts.now } : {}) });
    cleanups.push(async () => {
      await log.close();
      await database.close();
    }, dir.cleanup);
    return { database, log, dir };
  }

  it('keeps entries in time order, pages both ways, filters by device and time, and continues its keys after a restart', async () => {
    let clock = 1_000_000;
    const dir = tempDir();
    const first = await Database.open(dir.path);
    const log1 = await RejectsLog.open(first, { retentionMs: 86_400_000 * 365 * 100, maxEntries: 1000, now: () => clock });
    // Several in the same millisecond: seq keeps them apart and in order.
    await Promise.all([0, 1, 2].map((n) => log1.append(reject(n === 1 ? 'b' : 'a', n))));
    clock += 10;
    await log1.append(reject('a', 3));
    await log1.close();
    await first.close();

    clock -= 5_000; // the clock stepped back across the restart: keys still go after the stored ones
    const { log } = await open({ retentionMs: 86_400_000 * 365 * 100, now: () => clock }, dir);
    await log.append(reject('a', 4));
    expect(log.size).toBe(5);

    const asc = await log.list({ from: 0, to: 2_000_000, order: 'asc', limit: 100 });
    expect(asc.items.map((e) => e.message)).toEqual(['bad 0', 'bad 1', 'bad 2', 'bad 3', 'bad 4']);
    expect(asc.nextCursor).toBeNull();

    const pages: string[][] = [];
    let cursor: string | undefined;
    do {
      const page = await log.list({ deviceId: 'a', from: 0, to: 2_000_000, order: 'desc', limit: 2, ...(cursor ? { cursor } : {}) });
      pages.push(page.items.map((e) => e.message));
      cursor = page.nextCursor ?? undefined;
    } while (cursor !== undefined && pages.length < 10);
    expect(pages).toEqual([['bad 4', 'bad 3'], ['bad 2', 'bad 0']]);

    const window = await log.list({ from: 1_000_001, to: 1_000_010, order: 'asc', limit: 10 });
    expect(window.items.map((e) => e.message)).toEqual(['bad 3', 'bad 4']);
    await expect(log.list({ from: 0, to: 2_000_000, order: 'asc', limit: 1, cursor: asc.nextCursor ?? 'bogus!' })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'cursor' });
    const descCursor = (await log.list({ from: 0, to: 2_000_000, order: 'desc', limit: 1 })).nextCursor as string;
    await expect(log.list({ from: 0, to: 2_000_000, order: 'asc', limit: 1, cursor: descCursor })).rejects.toMatchObject({ code: 'InvalidParameter' });
  });

  it(`keeps only the first ${KEPT_PAYLOAD_BYTES} bytes of a payload, and shows bytes that are not UTF-8 as base64`, async () => {
    const { log } = await open();
    await log.append(reject('a', 0, { payload: Buffer.alloc(100_000, 0x61) }));
    // 'é' is two bytes: a cut through it must not turn into U+FFFD.
    await log.append(reject('a', 1, { payload: Buffer.concat([Buffer.alloc(KEPT_PAYLOAD_BYTES - 1, 0x61), Buffer.from('é')]) }));
    await log.append(reject('a', 2, { payload: Buffer.from([0xff, 0xfe, 0x00]) }));
    const [big, cut, binary] = (await log.list({ from: 0, to: Date.now() + 1000, order: 'asc', limit: 10 })).items;
    expect(big).toMatchObject({ payloadBytes: 100_000, truncated: true, payloadEncoding: 'utf8' });
    expect(big?.payload).toBe('a'.repeat(KEPT_PAYLOAD_BYTES));
    expect(cut).toMatchObject({ payloadBytes: KEPT_PAYLOAD_BYTES + 1, truncated: true, payloadEncoding: 'base64' });
    expect(Buffer.from(cut?.payload ?? '', 'base64')).toHaveLength(KEPT_PAYLOAD_BYTES);
    expect(binary).toMatchObject({ payloadEncoding: 'base64', payload: Buffer.from([0xff, 0xfe, 0x00]).toString('base64'), truncated: false });
  });

  it('stays bounded: drops entries older than its retention and the oldest beyond maxEntries', async () => {
    let clock = 10_000_000;
    const { database, log } = await open({ retentionMs: 60_000, maxEntries: 100, now: () => clock });
    for (let i = 0; i < 50; i++) await log.append(reject('old', i));
    clock += 120_000;
    await log.trim();
    expect(await countKeys(database)).toBe(0);
    expect(log.size).toBe(0);

    // A flood: appends beyond the bound (plus its slack) trigger trimming of the oldest.
    await Promise.all(Array.from({ length: 350 }, (_, i) => log.append(reject('flood', i))));
    await log.trim();
    expect(await countKeys(database)).toBe(100);
    const newest = await log.list({ from: 0, to: clock, order: 'desc', limit: 1 });
    expect(newest.items[0]?.message).toBe('bad 349');
    const oldest = await log.list({ from: 0, to: clock, order: 'asc', limit: 1 });
    expect(oldest.items[0]?.message).toBe('bad 250');
  });

  it('GET /v1/rejects validates its parameters', async () => {
    const { log } = await open();
    await log.append(reject('dev-1', 0));
    const api = buildApi({ ...minimalApiDeps(new MemoryTelemetryStore()), rejects: log });
    cleanups.push(() => api.close());
    const ok = await api.inject({ method: 'GET', url: '/v1/rejects?deviceId=dev-1' });
    expect(ok.statusCode).toBe(200);
    expect(ok.json()).toMatchObject({ items: [{ deviceId: 'dev-1', reason: 'invalid_json', payload: 'garbage 0' }], nextCursor: null });
    for (const [query, field] of [
      ['deviceId=bad%20id', 'deviceId'],
      ['from=yesterday', 'from'],
      ['from=now&to=-1h', 'from'],
      ['limit=0', 'limit'],
      ['cursor=xyz', 'cursor'],
      ['order=up', 'order'],
      ['devceId=dev-1', undefined],
    ] as const) {
      const res = await api.inject({ method: 'GET', url: `/v1/rejects?${query}` });
      expect(res.statusCode, query).toBe(400);
      expect(res.json().error.code, query).toBe('InvalidParameter');
      if (field !== undefined) expect(res.json().error.field, query).toBe(field);
    }
  });
});

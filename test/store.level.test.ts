import { randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MAX_TIMESTAMP_MS } from '../core/time.js';
import { Database, LevelTelemetryStore } from '../store/index.js';
import { Prefix } from '../store/keyspace.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import type { Reading } from '../store/types.js';
import type { ChangeRecord } from '../streams/types.js';
import { tempDir } from './helpers.js';
import { runTelemetryStoreSuite, type StoreFactoryOptions } from './suites/telemetry-store.suite.js';

const DAY = 86_400_000;
const HOUR = 3_600_000;

/** Bytes of every file under `dir` (LevelDB's directory is flat). */
function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((sum, name) => sum + statSync(join(dir, name)).size, 0);
}

interface Opened {
  database: Database;
  changeLog: EmbeddedChangeLog;
  store: LevelTelemetryStore;
  changes: () => Promise<ChangeRecord[]>;
  /** Closes the store and the database, keeping the directory. */
  shut: () => Promise<void>;
}

async function openAt(dir: string, opts: StoreFactoryOptions & { maxBatch?: number; maxDelayMs?: number } = {}): Promise<Opened> {
  const database = await Database.open(dir);
  const changeLog = await EmbeddedChangeLog.open(database, { shards: 2 });
  const store = await LevelTelemetryStore.open({
    database,
    changeLog,
    partitionWindowMs: opts.partitionWindowMs ?? DAY,
    maxBatch: opts.maxBatch ?? 2000,
    maxDelayMs: opts.maxDelayMs ?? 0,
    ...(opts.retentionMs !== undefined ? { retentionMs: opts.retentionMs } : {}),
    ...(opts.retentionRemoveRecords !== undefined ? { retentionRemoveRecords: opts.retentionRemoveRecords } : {}),
    ...(opts.retentionCheckMs !== undefined ? { retentionCheckMs: opts.retentionCheckMs } : {}),
    ...(opts.now ? { now: opts.now } : {}),
    ...(opts.deliveryWindow !== undefined ? { deliveryWindow: opts.deliveryWindow } : {}),
  });
  return {
    database,
    changeLog,
    store,
    changes: async () => {
      const out: ChangeRecord[] = [];
      for (let shard = 0; shard < changeLog.shardCount; shard++) out.push(...(await changeLog.read(shard, 0, Number.MAX_SAFE_INTEGER)));
      return out;
    },
    shut: async () => {
      await store.close();
      await database.close();
    },
  };
}

runTelemetryStoreSuite({
  name: 'LevelDB',
  factory: async (opts) => {
    const dir = tempDir('tributary-store-');
    const o = await openAt(dir.path, opts);
    return {
      store: o.store,
      changes: o.changes,
      close: async () => {
        await o.shut();
        dir.cleanup();
      },
    };
  },
});

describe('LevelTelemetryStore (LevelDB only)', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    vi.restoreAllMocks();
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  async function fresh(opts: Parameters<typeof openAt>[1] = {}): Promise<Opened & { dir: string }> {
    const dir = tempDir('tributary-store-');
    cleanups.push(dir.cleanup);
    const o = await openAt(dir.path, opts);
    cleanups.push(o.shut);
    return { ...o, dir: dir.path };
  }

  it("reads a client's delivery window back after a reopen, also with another window size", async () => {
    const a = await fresh({ deliveryWindow: 4 });
    const send = (o: Opened, packetId: number) => o.store.write({ deviceId: 'd1', readings: [{ values: { packetId } }], delivery: { clientId: 'c1', packetId, payloadHash: packetId } });
    // Six deliveries in a window of four: slots 0 and 1 were written twice.
    const reopen = async (deliveryWindow: number): Promise<Opened> => {
      const o = await openAt(a.dir, { deliveryWindow });
      cleanups.push(o.shut);
      return o;
    };
    for (const p of [1, 2, 3, 4, 5, 6]) await send(a, p);
    await a.shut();
    const b = await reopen(4);
    expect((await send(b, 3)).status).toBe('duplicate');
    expect((await send(b, 6)).status).toBe('duplicate');
    expect((await send(b, 2)).status).toBe('committed');
    await b.shut();
    // A smaller window after the restart keeps the newest rows: 2 (just stored again) and 6.
    const c = await reopen(2);
    expect((await send(c, 6)).status).toBe('duplicate');
    expect((await send(c, 5)).status).toBe('committed');
    expect((await send(c, 2)).status).toBe('duplicate');
    expect((await send(c, 6)).status).toBe('committed');
  });

  it('keeps readings, latest, registry, delivery ids and change records across close and reopen', async () => {
    let t = 1_700_000_000_000;
    const now = (): number => t;
    const a = await fresh({ now });
    const delivery = { clientId: 'c1', packetId: 1, payloadHash: 0x21 };
    await a.store.write({ deviceId: 'd1', readings: [{ ts: 5, values: { v: 1 } }, { values: { v: 2 } }], delivery });
    await a.store.write({ deviceId: 'd2', readings: [{ ts: 6, values: { w: true } }] });
    await a.shut();

    const b = await openAt(a.dir, { now });
    cleanups.push(b.shut);
    expect((await b.store.query({ deviceId: 'd1', from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 10 })).items).toEqual([
      { deviceId: 'd1', ts: 5, seq: 0, values: { v: 1 } },
      { deviceId: 'd1', ts: t, seq: 0, values: { v: 2 } },
    ]);
    expect(await b.store.latest('d1')).toEqual({ deviceId: 'd1', ts: t, seq: 0, values: { v: 2 } });
    // The recent rate is kept in memory only: it starts again after a reopen.
    expect(await b.store.getDevice('d1')).toEqual({ deviceId: 'd1', firstSeen: t, lastSeen: t, readings: 2, readingsPerMinute: 0, tags: {} });
    expect((await b.store.listDevices({ limit: 10 })).items.map((d) => d.deviceId)).toEqual(['d1', 'd2']);
    expect((await b.changes()).map((r) => [r.deviceId, r.eventName, r.ts])).toEqual(
      expect.arrayContaining([
        ['d1', 'INSERT', 5],
        ['d1', 'INSERT', t],
        ['d2', 'INSERT', 6],
      ]),
    );
    // The redelivery guard survives the restart: that is what it is for.
    expect(await b.store.write({ deviceId: 'd1', readings: [{ ts: 5, values: { v: 1 } }, { values: { v: 2 } }], delivery })).toEqual({ status: 'duplicate', items: [] });
    // A server stamp in the same millisecond as before the restart does not overwrite.
    const stamped = await b.store.write({ deviceId: 'd1', readings: [{ values: { v: 3 } }] });
    expect(stamped.items[0]).toEqual({ ts: t, seq: 1, change: 'INSERT' });
    // Nor after the clock stepped back across the restart (the store has to look).
    t -= 1;
    await b.store.write({ deviceId: 'd1', readings: [{ ts: t, values: { pre: 0 } }, { ts: t, values: { pre: 1 } }] });
    await b.shut();
    const c = await openAt(a.dir, { now });
    cleanups.push(c.shut);
    expect((await c.store.write({ deviceId: 'd1', readings: [{ values: { v: 4 } }] })).items[0]).toEqual({ ts: t, seq: 2, change: 'INSERT' });
    expect((await c.store.getDevice('d1'))?.readings).toBe(6);
  });

  it('commits every write batch with sync: true', async () => {
    const o = await fresh();
    // Record the options of every batch write, in either of abstract-level's forms:
    // db.batch(ops, options) or db.batch() ... .write(options).
    const writes: unknown[] = [];
    const db = o.database.db as unknown as { batch: (...args: unknown[]) => unknown };
    const realBatch = db.batch.bind(db);
    db.batch = (...args: unknown[]) => {
      if (args.length > 0) {
        writes.push(args[1]);
        return realBatch(...args);
      }
      const chained = realBatch() as { write: (options?: unknown) => Promise<void> };
      const realWrite = chained.write.bind(chained);
      chained.write = (options?: unknown) => {
        writes.push(options);
        return realWrite(options);
      };
      return chained;
    };
    await Promise.all(Array.from({ length: 20 }, (_, i) => o.store.write({ deviceId: `d${i % 4}`, readings: [{ ts: i, values: { i } }] })));
    await o.store.write({ deviceId: 'd0', readings: [{ values: { server: true } }], delivery: { clientId: 'c', packetId: 9, payloadHash: 0x31 } });
    expect(writes.length).toBeGreaterThan(0);
    for (const options of writes) expect(options).toMatchObject({ sync: true });
  });

  it('group-commits concurrent writes from many devices into fewer batches', async () => {
    const o = await fresh();
    const commit = vi.spyOn(o.database, 'commit');
    const writes = Array.from({ length: 200 }, (_, i) => o.store.write({ deviceId: `dev-${i}`, readings: [{ values: { i } }] }));
    const results = await Promise.all(writes);
    expect(results.every((r) => r.status === 'committed')).toBe(true);
    expect(commit.mock.calls.length).toBeGreaterThan(0);
    expect(commit.mock.calls.length).toBeLessThan(writes.length / 10);
    expect((await o.store.listDevices({ limit: 1000 })).items).toHaveLength(200);
  });

  it('queues writes behind the batch in flight and caps batches at maxBatch readings', async () => {
    const o = await fresh({ maxBatch: 10 });
    const commit = vi.spyOn(o.database, 'commit');
    const writes = Array.from({ length: 55 }, (_, i) => o.store.write({ deviceId: `d${i % 7}`, readings: [{ ts: i, values: { i } }] }));
    // One request larger than maxBatch still commits whole (requests are atomic).
    writes.push(o.store.write({ deviceId: 'big', readings: Array.from({ length: 25 }, (_, i) => ({ ts: i, values: { i } })) }));
    await Promise.all(writes);
    const perBatch = commit.mock.calls.map(([ops]) => ops.filter((op) => op.key[0] === Prefix.telemetry).length);
    expect(perBatch.reduce((a, b) => a + b, 0)).toBe(80);
    expect(perBatch.filter((n) => n > 10)).toEqual([25]);
    expect(perBatch.length).toBeGreaterThanOrEqual(7);
  });

  it('waits up to maxDelayMs to gather writes when idle', async () => {
    const o = await fresh({ maxDelayMs: 200 });
    const commit = vi.spyOn(o.database, 'commit');
    const first = o.store.write({ deviceId: 'a', readings: [{ values: { n: 1 } }] });
    await new Promise((resolve) => setImmediate(resolve));
    const second = o.store.write({ deviceId: 'b', readings: [{ values: { n: 2 } }] });
    await Promise.all([first, second]);
    expect(commit).toHaveBeenCalledTimes(1);
  });

  it('rejects every caller of a failed batch, aborts its change records and keeps serving', async () => {
    const o = await fresh();
    await o.store.write({ deviceId: 'd1', readings: [{ ts: 100, values: { v: 'kept' } }] });
    const diskFull = new Error('IO error: No space left on device');
    vi.spyOn(o.database, 'commit').mockRejectedValueOnce(diskFull);
    const failed = await Promise.allSettled([
      o.store.write({ deviceId: 'd1', readings: [{ ts: 200, values: { v: 'lost' } }] }),
      o.store.write({ deviceId: 'd2', readings: [{ values: { v: 'lost' } }], delivery: { clientId: 'c', packetId: 1, payloadHash: 0x11 } }),
    ]);
    for (const r of failed) {
      expect(r.status).toBe('rejected');
      expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'StoreUnavailable', retriable: true, cause: diskFull });
    }
    // Nothing of the failed batch is visible, in the data or in the caches.
    expect(await o.store.latest('d1')).toMatchObject({ ts: 100, values: { v: 'kept' } });
    expect(await o.store.getDevice('d2')).toBeUndefined();
    // The retry is not mistaken for a duplicate, and sequence numbers carry on without a gap.
    const retry = await o.store.write({ deviceId: 'd2', readings: [{ values: { v: 'again' } }], delivery: { clientId: 'c', packetId: 1, payloadHash: 0x11 } });
    expect(retry.status).toBe('committed');
    await o.store.write({ deviceId: 'd1', readings: [{ ts: 200, values: { v: 'again' } }] });
    const d1 = (await o.changes()).filter((r) => r.deviceId === 'd1');
    expect(d1.map((r) => r.sequenceNumber)).toEqual([d1[0]?.sequenceNumber, (d1[0]?.sequenceNumber ?? 0) + 1]);
    expect((await o.store.latest('d1'))?.values).toEqual({ v: 'again' });
  });

  it('indexes partitions and scans only those that exist and overlap the range', async () => {
    const W = 3_600_000;
    const o = await fresh({ partitionWindowMs: W });
    await o.store.write({ deviceId: 'd1', readings: [0, 5, 10, 11].map((p) => ({ ts: p * W + 1, values: { p } })) });
    await o.store.write({ deviceId: 'd1', readings: [{ ts: 5 * W + 2, values: { p: 5 } }] });
    const index = await o.database.db.keys({ gte: Buffer.of(Prefix.partition), lt: Buffer.of(Prefix.partition + 1) }).all();
    expect(index.map((k) => k.readUInt32BE(1))).toEqual([0, 5, 10, 11]);

    const iterator = vi.spyOn(o.database.db, 'iterator');
    const page = await o.store.query({ deviceId: 'd1', from: 2 * W, to: 10 * W + 5, order: 'desc', limit: 10 });
    expect(page.items.map((r) => r.values.p)).toEqual([10, 5, 5]);
    expect(iterator).toHaveBeenCalledTimes(2);
    iterator.mockClear();
    expect((await o.store.query({ deviceId: 'd1', from: W, to: 4 * W, order: 'asc', limit: 10 })).items).toEqual([]);
    expect(iterator).not.toHaveBeenCalled();
  });

  it('refuses to reopen a data directory with a different partition window', async () => {
    const o = await fresh({ partitionWindowMs: DAY });
    await expect(LevelTelemetryStore.open({ database: o.database, changeLog: o.changeLog, partitionWindowMs: 3_600_000, maxBatch: 10, maxDelayMs: 0 })).rejects.toMatchObject({ code: 'Conflict' });
    await expect(LevelTelemetryStore.open({ database: o.database, changeLog: o.changeLog, partitionWindowMs: 1000, maxBatch: 10, maxDelayMs: 0 })).rejects.toThrow(RangeError);
  });

  it('does not close the database it was given', async () => {
    const o = await fresh();
    await o.store.close();
    expect(o.database.db.status).toBe('open');
  });

  describe('retention drops (LevelDB)', () => {
    /** 4 devices; per device `perHour` readings of ~300 random bytes in each of hours 0..5, written with the clock at 0. */
    async function load(o: Opened, perHour: (h: number) => number): Promise<{ bytesByHour: number[] }> {
      const bytesByHour = [0, 0, 0, 0, 0, 0];
      for (let h = 0; h < 6; h++) {
        for (let d = 0; d < 4; d++) {
          const n = perHour(h);
          for (let k = 0; k < n; k += 500) {
            const readings = Array.from({ length: Math.min(500, n - k) }, (_, j) => ({ ts: h * HOUR + (k + j) * 100, values: { blob: randomBytes(225).toString('base64'), i: k + j } }));
            bytesByHour[h] = (bytesByHour[h] ?? 0) + readings.reduce((sum, r) => sum + JSON.stringify(r.values).length, 0);
            await o.store.write({ deviceId: `dev-${d}`, readings });
          }
        }
      }
      return { bytesByHour };
    }
    async function everything(o: Opened): Promise<Reading[]> {
      const out: Reading[] = [];
      for (let d = 0; d < 4; d++) {
        let cursor: string | undefined;
        do {
          const page = await o.store.query({ deviceId: `dev-${d}`, from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 5000, ...(cursor ? { cursor } : {}) });
          out.push(...page.items);
          cursor = page.nextCursor ?? undefined;
        } while (cursor !== undefined);
      }
      return out;
    }

    it('gives the disk space of dropped partitions back and leaves live partitions exactly as they were', async () => {
      let t = 0;
      const o = await fresh({ partitionWindowMs: HOUR, retentionMs: 2 * HOUR, retentionCheckMs: 0, now: () => t });
      // About 6 MB in hours 0-2 (expired below), 1 MB in hours 3-5 (live).
      const { bytesByHour } = await load(o, (h) => (h < 3 ? 1500 : 250));
      const dbDir = join(o.dir, 'db');
      // Settle both sides of the comparison into compacted tables, so only the drop differs.
      await o.database.db.compactRange(Buffer.of(0x00), Buffer.of(0xff));
      const before = dirBytes(dbDir);
      const liveBefore = (await everything(o)).filter((r) => r.ts >= 3 * HOUR);
      expect(liveBefore).toHaveLength(4 * 3 * 250);
      const compactions = vi.spyOn(o.database.db, 'compactRange');

      t = 5 * HOUR + 30 * 60_000;
      expect(await o.store.dropExpired()).toMatchObject({ partitions: 3 });

      const after = dirBytes(dbDir);
      const dropped = (bytesByHour[0] ?? 0) + (bytesByHour[1] ?? 0) + (bytesByHour[2] ?? 0);
      // The readings' bytes come back (their change records stay: the stream is not retention's to trim).
      expect(before - after).toBeGreaterThan(0.6 * dropped);
      expect(after).toBeLessThan(0.75 * before);
      // Each partition was compacted on its own key range only: T·p up to T·p·0xff.
      expect(compactions.mock.calls.map(([start, end]) => [(start as Buffer).toString('hex'), (end as Buffer).toString('hex')])).toEqual(
        [0, 1, 2].map((p) => [`54${p.toString(16).padStart(8, '0')}`, `54${p.toString(16).padStart(8, '0')}ff`]),
      );
      expect(await everything(o)).toEqual(liveBefore);
      const partitions = await o.database.db.keys({ gte: Buffer.of(Prefix.partition), lt: Buffer.of(Prefix.partition + 1) }).all();
      expect(partitions.map((k) => k.readUInt32BE(1))).toEqual([3, 4, 5]);
      expect(await o.database.db.keys({ gte: Buffer.of(Prefix.telemetry), lt: Buffer.of(Prefix.telemetry, 0, 0, 0, 3), limit: 1 }).all()).toEqual([]);
    });

    it('finishes a drop that was interrupted after the range delete', async () => {
      let t = 0;
      const o = await fresh({ partitionWindowMs: HOUR, retentionMs: HOUR, retentionCheckMs: 0, now: () => t });
      await o.store.write({ deviceId: 'd1', readings: [{ ts: 1, values: { v: 0 } }, { ts: 2 * HOUR, values: { v: 2 } }] });
      t = 3 * HOUR;
      // The range delete (first commit) lands; the index-entry delete (second) fails.
      const realCommit = o.database.commit.bind(o.database);
      let commits = 0;
      vi.spyOn(o.database, 'commit').mockImplementation((ops) => (++commits === 2 ? Promise.reject(new Error('IO error: No space left on device')) : realCommit(ops)));
      await expect(o.store.dropExpired()).rejects.toThrow(/No space left/);
      // The data went, the index entry stayed: the next pass finds the partition and finishes.
      expect((await o.store.query({ deviceId: 'd1', from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 10 })).items.map((r) => r.values.v)).toEqual([2]);
      expect(await o.store.dropExpired()).toMatchObject({ partitions: 1 });
      expect((await o.database.db.keys({ gte: Buffer.of(Prefix.partition), lt: Buffer.of(Prefix.partition + 1) }).all()).map((k) => k.readUInt32BE(1))).toEqual([2]);
    });
  });

  it('keeps per-key latest values across close and reopen', async () => {
    const a = await fresh();
    await a.store.write({ deviceId: 'd1', readings: [{ ts: 10, values: { temp: 1, gps: { lat: 5 } } }, { ts: 20, values: { temp: 2 } }, { ts: 5, values: { door: 'open' } }] });
    const expected = await a.store.latest('d1', { keys: ['temp', 'gps', 'door'] });
    expect(expected?.values).toEqual({ temp: { ts: 20, seq: 0, value: 2 }, 'gps.lat': { ts: 10, seq: 0, value: 5 }, door: { ts: 5, seq: 0, value: 'open' } });
    await a.shut();
    const b = await openAt(a.dir);
    cleanups.push(b.shut);
    expect(await b.store.latest('d1', { keys: ['temp', 'gps', 'door'] })).toEqual(expected);
    // And the write path picks up from the stored per-key state.
    await b.store.write({ deviceId: 'd1', readings: [{ ts: 30, values: { door: 'shut' } }] });
    expect((await b.store.latest('d1', { keys: ['temp', 'gps', 'door'] }))?.values).toEqual({
      temp: { ts: 20, seq: 0, value: 2 },
      'gps.lat': { ts: 10, seq: 0, value: 5 },
      door: { ts: 30, seq: 0, value: 'shut' },
    });
  });

  it('deleting a device leaves no key that names it', async () => {
    const o = await fresh({ partitionWindowMs: HOUR });
    await o.store.putDevice({ deviceId: 'gone', tags: { a: 'b' } });
    await o.store.write({ deviceId: 'gone', readings: [1, 2, 30].map((h) => ({ ts: h * HOUR, values: { h } })), delivery: { clientId: 'gone', packetId: 1, payloadHash: 0x31 } });
    await o.store.write({ deviceId: 'gone', readings: [{ values: { n: 1 } }], delivery: { clientId: 'gone', packetId: 2, payloadHash: 0x32 } });
    await o.store.write({ deviceId: 'gone2', readings: [{ ts: HOUR, values: { h: 1 } }], delivery: { clientId: 'gone2', packetId: 1, payloadHash: 0x33 } });
    const keysNaming = async (id: string): Promise<string[]> => {
      const all = await o.database.db.keys().all();
      return all
        .filter((k) => k[0] !== Prefix.change && k[0] !== Prefix.meta)
        .map((k) => k.toString('latin1'))
        .filter((k) => new RegExp(`^(T[\\s\\S]{4}|[LDQ])${id}(\u0000|$)`).test(k));
    };
    expect((await keysNaming('gone')).length).toBe(3 + 1 + 1 + 1 + 2);
    expect(await o.store.deleteDevice('gone')).toEqual({ readings: 4 });
    expect(await keysNaming('gone')).toEqual([]);
    expect((await keysNaming('gone2')).length).toBe(4);
  });
});

/**
 * The TelemetryStore compliance suite: every implementation runs it through its own
 * test file (`test/store.level.test.ts`, `test/store.memory.test.ts`) and is done when
 * it passes. It checks the contract of `store/types.ts` and `API.md`, not internals.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_TIMESTAMP_MS } from '../../core/time.js';
import type { Reading, TelemetryStore, WriteRequest } from '../../store/types.js';
import type { ChangeRecord } from '../../streams/types.js';

/** What a factory hands the suite: a fresh, empty store and a view of its change log. */
export interface StoreFixture {
  store: TelemetryStore;
  /** All change records in the log (committed ones), in per-shard order. */
  changes: () => Promise<ChangeRecord[]>;
  /** Closes the store and whatever the factory opened; must tolerate a store already closed. */
  close: () => Promise<void>;
}

/** Settings a test may need to control; anything omitted takes the factory's default. */
export interface StoreFactoryOptions {
  /** Clock of the store (server stamps, registry times). */
  now?: () => number;
  /** Width of a time partition, where the implementation has partitions. */
  partitionWindowMs?: number;
}

export interface TelemetryStoreSuiteOptions {
  name: string;
  factory: (opts?: StoreFactoryOptions) => Promise<StoreFixture>;
}

const HOUR = 3_600_000;

export function runTelemetryStoreSuite({ name, factory }: TelemetryStoreSuiteOptions): void {
  describe(`TelemetryStore compliance: ${name}`, () => {
    const open: StoreFixture[] = [];
    afterEach(async () => {
      for (const f of open.splice(0)) await f.close();
    });
    async function fixture(opts?: StoreFactoryOptions): Promise<StoreFixture> {
      const f = await factory(opts);
      open.push(f);
      return f;
    }
    /** A clock the test moves by hand. */
    function manualClock(start: number): { now: () => number; set: (t: number) => void } {
      let t = start;
      return { now: () => t, set: (v) => (t = v) };
    }
    async function all(store: TelemetryStore, deviceId: string, order: 'asc' | 'desc' = 'asc'): Promise<Reading[]> {
      return (await store.query({ deviceId, from: 0, to: MAX_TIMESTAMP_MS, order, limit: 10_000 })).items;
    }
    async function changesOf(f: StoreFixture, deviceId: string): Promise<ChangeRecord[]> {
      return (await f.changes()).filter((r) => r.deviceId === deviceId);
    }

    describe('writes and change classification', () => {
      it('INSERTs a new reading and records the change with its new image', async () => {
        const f = await fixture();
        const result = await f.store.write({ deviceId: 'd1', readings: [{ ts: 1000, values: { temp: 21.5, ok: true, gps: { lat: 1, lon: 2 } } }] });
        expect(result).toEqual({ status: 'committed', items: [{ ts: 1000, seq: 0, change: 'INSERT' }] });
        expect(await all(f.store, 'd1')).toEqual([{ deviceId: 'd1', ts: 1000, seq: 0, values: { temp: 21.5, ok: true, gps: { lat: 1, lon: 2 } } }]);
        const records = await changesOf(f, 'd1');
        expect(records).toHaveLength(1);
        expect(records[0]).toMatchObject({ eventName: 'INSERT', deviceId: 'd1', ts: 1000, seq: 0, newValues: { temp: 21.5, ok: true, gps: { lat: 1, lon: 2 } }, sequenceNumber: 1 });
        expect(records[0]?.oldValues).toBeUndefined();
      });

      it('re-sending a device-stamped reading is NONE: same key, no write, no change record', async () => {
        const f = await fixture();
        const req: WriteRequest = { deviceId: 'd1', readings: [{ ts: 1000, values: { a: 1, b: { c: 'x' } } }, { ts: 1000, values: { a: 2 } }, { ts: 2000, values: { a: 3 } }] };
        const first = await f.store.write(req);
        expect(first.items).toEqual([
          { ts: 1000, seq: 0, change: 'INSERT' },
          { ts: 1000, seq: 1, change: 'INSERT' },
          { ts: 2000, seq: 0, change: 'INSERT' },
        ]);
        const again = await f.store.write(req);
        expect(again.items.map((i) => i.change)).toEqual(['NONE', 'NONE', 'NONE']);
        expect(again.items.map((i) => [i.ts, i.seq])).toEqual([
          [1000, 0],
          [1000, 1],
          [2000, 0],
        ]);
        // Key order inside the values does not make them different.
        const reordered = await f.store.write({ deviceId: 'd1', readings: [{ ts: 1000, values: { b: { c: 'x' }, a: 1 } }] });
        expect(reordered.items[0]?.change).toBe('NONE');
        expect(await changesOf(f, 'd1')).toHaveLength(3);
        expect(await all(f.store, 'd1')).toHaveLength(3);
      });

      it('different values at an existing key are a MODIFY with the old image', async () => {
        const f = await fixture();
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 1000, values: { temp: 20 } }] });
        const result = await f.store.write({ deviceId: 'd1', readings: [{ ts: 1000, values: { temp: 25, hum: 40 } }] });
        expect(result.items).toEqual([{ ts: 1000, seq: 0, change: 'MODIFY' }]);
        const records = await changesOf(f, 'd1');
        expect(records.map((r) => r.eventName)).toEqual(['INSERT', 'MODIFY']);
        expect(records[1]).toMatchObject({ ts: 1000, seq: 0, newValues: { temp: 25, hum: 40 }, oldValues: { temp: 20 } });
        expect(records[1]?.sequenceNumber).toBe((records[0]?.sequenceNumber ?? 0) + 1);
        expect(await all(f.store, 'd1')).toEqual([{ deviceId: 'd1', ts: 1000, seq: 0, values: { temp: 25, hum: 40 } }]);
      });

      it('classifies against earlier readings of the same batch', async () => {
        const f = await fixture();
        const [a, b, c] = await Promise.all([
          f.store.write({ deviceId: 'd1', readings: [{ ts: 5, values: { v: 1 } }] }),
          f.store.write({ deviceId: 'd1', readings: [{ ts: 5, values: { v: 1 } }] }),
          f.store.write({ deviceId: 'd1', readings: [{ ts: 5, values: { v: 2 } }] }),
        ]);
        expect([a.items[0]?.change, b.items[0]?.change, c.items[0]?.change]).toEqual(['INSERT', 'NONE', 'MODIFY']);
        const records = await changesOf(f, 'd1');
        expect(records.map((r) => r.eventName)).toEqual(['INSERT', 'MODIFY']);
        expect(records[1]?.oldValues).toEqual({ v: 1 });
        expect(await all(f.store, 'd1')).toEqual([{ deviceId: 'd1', ts: 5, seq: 0, values: { v: 2 } }]);
      });

      it('records changes in write order per device, numbered without gaps per shard', async () => {
        const f = await fixture();
        for (let i = 0; i < 5; i++) await f.store.write({ deviceId: 'd1', readings: [{ ts: 100 + i, values: { i } }] });
        await f.store.write({ deviceId: 'd2', readings: [{ ts: 1, values: { i: 0 } }] });
        const records = await changesOf(f, 'd1');
        expect(records.map((r) => r.ts)).toEqual([100, 101, 102, 103, 104]);
        const shard = records[0]?.shard;
        expect(records.every((r) => r.shard === shard)).toBe(true);
        const inShard = (await f.changes()).filter((r) => r.shard === shard).map((r) => r.sequenceNumber);
        expect(inShard).toEqual(inShard.map((_, i) => i + 1));
      });
    });

    describe('server-stamped readings', () => {
      it('concurrent writes in the same millisecond get distinct keys', async () => {
        const clock = manualClock(1_700_000_000_000);
        const f = await fixture({ now: clock.now });
        const writes = Array.from({ length: 50 }, (_, i) =>
          f.store.write({ deviceId: 'd1', readings: [{ values: { i, part: 0 } }, { values: { i, part: 1 } }, { values: { i, part: 2 } }] }),
        );
        const results = await Promise.all(writes);
        const keys = results.flatMap((r) => r.items.map((item) => `${item.ts}:${item.seq}`));
        expect(new Set(keys).size).toBe(150);
        expect(results.every((r) => r.items.every((item) => item.ts === 1_700_000_000_000 && item.change === 'INSERT'))).toBe(true);
        // Readings of one publish keep their order.
        for (const r of results) expect(r.items.map((i) => i.seq)).toEqual([...r.items.map((i) => i.seq)].sort((a, b) => a - b));
        // A later write in the same millisecond continues the sequence.
        const later = await f.store.write({ deviceId: 'd1', readings: [{ values: { late: true } }] });
        expect(later.items[0]).toEqual({ ts: 1_700_000_000_000, seq: 150, change: 'INSERT' });
        expect(await all(f.store, 'd1')).toHaveLength(151);
        expect(await changesOf(f, 'd1')).toHaveLength(151);
      });

      it('never moves backwards when the clock does', async () => {
        const clock = manualClock(5000);
        const f = await fixture({ now: clock.now });
        const a = await f.store.write({ deviceId: 'd1', readings: [{ values: { n: 1 } }] });
        clock.set(4000);
        const b = await f.store.write({ deviceId: 'd1', readings: [{ values: { n: 2 } }] });
        clock.set(6000);
        const c = await f.store.write({ deviceId: 'd1', readings: [{ values: { n: 3 } }] });
        expect([a, b, c].map((r) => r.items[0])).toEqual([
          { ts: 5000, seq: 0, change: 'INSERT' },
          { ts: 5000, seq: 1, change: 'INSERT' },
          { ts: 6000, seq: 0, change: 'INSERT' },
        ]);
      });

      it('never overwrites device-stamped readings at the same millisecond', async () => {
        const clock = manualClock(7000);
        const f = await fixture({ now: clock.now });
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 7000, values: { dev: 0 } }, { ts: 7000, values: { dev: 1 } }] });
        // The device's clock runs ahead: it already has a reading in the server's future.
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 8000, values: { future: true } }] });
        const stamped = await f.store.write({ deviceId: 'd1', readings: [{ values: { server: true } }] });
        expect(stamped.items[0]).toEqual({ ts: 7000, seq: 2, change: 'INSERT' });
        clock.set(8000);
        const atFuture = await f.store.write({ deviceId: 'd1', readings: [{ values: { server: 2 } }] });
        expect(atFuture.items[0]).toEqual({ ts: 8000, seq: 1, change: 'INSERT' });
        expect((await all(f.store, 'd1')).map((r) => [r.ts, r.seq])).toEqual([
          [7000, 0],
          [7000, 1],
          [7000, 2],
          [8000, 0],
          [8000, 1],
        ]);
      });
    });

    describe('redelivery guard', () => {
      const delivery = { clientId: 'client-1', packetId: 7, payloadHash: 'aa11' };

      it('acknowledges a redelivered publish as duplicate without writing', async () => {
        const f = await fixture();
        const first = await f.store.write({ deviceId: 'd1', readings: [{ values: { n: 1 } }], delivery });
        expect(first.status).toBe('committed');
        const again = await f.store.write({ deviceId: 'd1', readings: [{ values: { n: 1 } }], delivery });
        expect(again).toEqual({ status: 'duplicate', items: [] });
        expect(await all(f.store, 'd1')).toHaveLength(1);
        expect(await changesOf(f, 'd1')).toHaveLength(1);
        expect((await f.store.getDevice('d1'))?.readings).toBe(1);
      });

      it('detects a duplicate inside one group commit', async () => {
        const f = await fixture();
        const results = await Promise.all([
          f.store.write({ deviceId: 'd1', readings: [{ values: { n: 1 } }], delivery }),
          f.store.write({ deviceId: 'd1', readings: [{ values: { n: 1 } }], delivery }),
        ]);
        expect(results.map((r) => r.status)).toEqual(['committed', 'duplicate']);
        expect(await all(f.store, 'd1')).toHaveLength(1);
      });

      it('a reused packet id with a different payload is a new message', async () => {
        const f = await fixture();
        await f.store.write({ deviceId: 'd1', readings: [{ values: { n: 1 } }], delivery });
        const next = await f.store.write({ deviceId: 'd1', readings: [{ values: { n: 2 } }], delivery: { ...delivery, payloadHash: 'bb22' } });
        expect(next.status).toBe('committed');
        // The packet id now names the second message, so the first payload is new again.
        const reused = await f.store.write({ deviceId: 'd1', readings: [{ values: { n: 1 } }], delivery });
        expect(reused.status).toBe('committed');
        // Other clients and packet ids are independent.
        const other = await f.store.write({ deviceId: 'd1', readings: [{ values: { n: 3 } }], delivery: { ...delivery, clientId: 'client-2' } });
        const otherPacket = await f.store.write({ deviceId: 'd1', readings: [{ values: { n: 3 } }], delivery: { ...delivery, packetId: 8 } });
        expect([other.status, otherPacket.status]).toEqual(['committed', 'committed']);
        expect(await all(f.store, 'd1')).toHaveLength(5);
      });
    });

    describe('latest', () => {
      it('is the reading with the highest ts, not the last to arrive', async () => {
        const f = await fixture();
        expect(await f.store.latest('d1')).toBeUndefined();
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 2000, values: { v: 'new' } }] });
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 1000, values: { v: 'old' } }, { ts: 1500, values: { v: 'older' } }] });
        expect(await f.store.latest('d1')).toEqual({ deviceId: 'd1', ts: 2000, seq: 0, values: { v: 'new' } });
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 2000, values: { v: 'second' } }, { ts: 2000, values: { v: 'third' } }] });
        // Same ts: the highest seq wins; the MODIFY of seq 0 does not take it back.
        expect(await f.store.latest('d1')).toEqual({ deviceId: 'd1', ts: 2000, seq: 1, values: { v: 'third' } });
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 2000, values: { v: 'second' } }, { ts: 2000, values: { v: 'third!' } }] });
        expect((await f.store.latest('d1'))?.values).toEqual({ v: 'third!' });
      });

      it('returns copies: editing a result does not change the store', async () => {
        const f = await fixture();
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 1, values: { a: 1 } }] });
        const got = await f.store.latest('d1');
        (got as Reading).values.a = 99;
        expect((await f.store.latest('d1'))?.values).toEqual({ a: 1 });
      });
    });

    describe('range queries', () => {
      async function seeded(opts?: StoreFactoryOptions): Promise<StoreFixture> {
        const f = await fixture(opts);
        // 25 readings, some sharing a millisecond.
        const readings = Array.from({ length: 25 }, (_, i) => ({ ts: 1000 + Math.floor(i / 2) * 10, values: { i } }));
        await f.store.write({ deviceId: 'd1', readings });
        await f.store.write({ deviceId: 'd10', readings: [{ ts: 1000, values: { other: true } }] });
        return f;
      }
      async function pages(store: TelemetryStore, order: 'asc' | 'desc', limit: number, from = 0, to = MAX_TIMESTAMP_MS): Promise<Reading[][]> {
        const out: Reading[][] = [];
        let cursor: string | undefined;
        do {
          const page = await store.query({ deviceId: 'd1', from, to, order, limit, ...(cursor ? { cursor } : {}) });
          out.push(page.items);
          cursor = page.nextCursor ?? undefined;
          expect(out.length).toBeLessThan(100);
        } while (cursor !== undefined);
        return out;
      }

      it('returns one device, ascending or descending by (ts, seq)', async () => {
        const f = await seeded();
        const asc = await all(f.store, 'd1', 'asc');
        expect(asc.map((r) => r.values.i)).toEqual(Array.from({ length: 25 }, (_, i) => i));
        expect(asc.every((r) => r.deviceId === 'd1')).toBe(true);
        const desc = await all(f.store, 'd1', 'desc');
        expect(desc).toEqual([...asc].reverse());
      });

      it('treats from and to as inclusive', async () => {
        const f = await seeded();
        const page = await f.store.query({ deviceId: 'd1', from: 1010, to: 1030, order: 'asc', limit: 100 });
        expect(page.items.map((r) => r.values.i)).toEqual([2, 3, 4, 5, 6, 7]);
        expect(page.nextCursor).toBeNull();
        expect((await f.store.query({ deviceId: 'd1', from: 2000, to: 1000, order: 'asc', limit: 10 })).items).toEqual([]);
        expect((await f.store.query({ deviceId: 'nobody', from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 10 })).items).toEqual([]);
      });

      it('limits a page and pages through everything with cursors, in both orders', async () => {
        const f = await seeded();
        for (const order of ['asc', 'desc'] as const) {
          const full = await all(f.store, 'd1', order);
          for (const limit of [1, 4, 12, 25, 26]) {
            const got = await pages(f.store, order, limit);
            expect(got.slice(0, -1).every((p) => p.length === limit)).toBe(true);
            expect(got.flat()).toEqual(full);
          }
          // Within a sub-range too.
          const sub = await pages(f.store, order, 3, 1020, 1080);
          expect(sub.flat()).toEqual(full.filter((r) => r.ts >= 1020 && r.ts <= 1080));
        }
        const exact = await f.store.query({ deviceId: 'd1', from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 25 });
        expect(exact.nextCursor).toBeNull();
      });

      it('stays stable when readings are written between pages', async () => {
        const clock = manualClock(0);
        const f = await seeded({ now: clock.now });
        const before = await all(f.store, 'd1');
        const first = await f.store.query({ deviceId: 'd1', from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 10 });
        const boundary = first.items[first.items.length - 1] as Reading;
        // One reading behind the cursor (already paged past), one in the cursor's millisecond after it, one ahead.
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 1001, values: { late: 'behind' } }, { ts: 5000, values: { late: 'ahead' } }] });
        clock.set(boundary.ts);
        const sameMs = await f.store.write({ deviceId: 'd1', readings: [{ values: { late: 'same-ms' } }] });
        expect(sameMs.items[0]).toMatchObject({ ts: boundary.ts, change: 'INSERT' });
        const rest: Reading[] = [];
        let cursor = first.nextCursor;
        while (cursor !== null) {
          const page = await f.store.query({ deviceId: 'd1', from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 10, cursor });
          rest.push(...page.items);
          cursor = page.nextCursor;
        }
        const seen = [...first.items, ...rest];
        const ids = seen.map((r) => `${r.ts}:${r.seq}`);
        expect(new Set(ids).size).toBe(ids.length);
        // Every reading that existed is there once, in order; new ones appear only past the cursor.
        expect(seen.filter((r) => r.values.late === undefined)).toEqual(before);
        expect(seen.filter((r) => r.values.late !== undefined).map((r) => r.values.late)).toEqual(['same-ms', 'ahead']);
      });

      it('rejects a malformed cursor or one from the other order', async () => {
        const f = await seeded();
        const page = await f.store.query({ deviceId: 'd1', from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 5 });
        for (const cursor of ['not a cursor!', '', 'AAAA', `${page.nextCursor}x`]) {
          await expect(f.store.query({ deviceId: 'd1', from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 5, cursor })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'cursor' });
        }
        await expect(f.store.query({ deviceId: 'd1', from: 0, to: MAX_TIMESTAMP_MS, order: 'desc', limit: 5, cursor: page.nextCursor as string })).rejects.toMatchObject({
          code: 'InvalidParameter',
          field: 'cursor',
        });
      });

      it('rejects bad parameters', async () => {
        const f = await seeded();
        const base = { deviceId: 'd1', from: 0, to: 10, order: 'asc' as const, limit: 5 };
        await expect(f.store.query({ ...base, limit: 0 })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'limit' });
        await expect(f.store.query({ ...base, from: 1.5 })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'from' });
        await expect(f.store.query({ ...base, to: Number.NaN })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'to' });
        await expect(f.store.query({ ...base, deviceId: 'a/b' })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'deviceId' });
        await expect(f.store.query({ ...base, keys: ['a..b'] })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'keys' });
      });
    });

    describe('projection', () => {
      it('keeps only the listed dotted paths', async () => {
        const f = await fixture();
        await f.store.write({
          deviceId: 'd1',
          readings: [
            { ts: 1, values: { temp: 20, status: 'ok', gps: { lat: 52.1, lon: 4.3, fix: { sats: 7, hdop: 0.9 } } } },
            { ts: 2, values: { status: 'idle' } },
            { ts: 3, values: { gps: 'none' } },
          ],
        });
        const q = async (keys: string[]): Promise<unknown[]> => (await f.store.query({ deviceId: 'd1', from: 0, to: 10, order: 'asc', limit: 10, keys })).items.map((r) => r.values);
        expect(await q(['temp', 'gps.lat'])).toEqual([{ temp: 20, gps: { lat: 52.1 } }, {}, {}]);
        expect(await q(['gps.fix.sats', 'gps.lon'])).toEqual([{ gps: { lon: 4.3, fix: { sats: 7 } } }, {}, {}]);
        expect(await q(['gps', 'gps.lat'])).toEqual([{ gps: { lat: 52.1, lon: 4.3, fix: { sats: 7, hdop: 0.9 } } }, {}, { gps: 'none' }]);
        expect(await q(['missing'])).toEqual([{}, {}, {}]);
        // Readings stay in the page even when the projection leaves them empty.
        expect((await f.store.query({ deviceId: 'd1', from: 0, to: 10, order: 'desc', limit: 10, keys: ['status'] })).items.map((r) => [r.ts, r.values])).toEqual([
          [3, {}],
          [2, { status: 'idle' }],
          [1, { status: 'ok' }],
        ]);
      });
    });

    describe('time partitions', () => {
      it('queries across window boundaries, in both orders and across pages', async () => {
        const f = await fixture({ partitionWindowMs: HOUR });
        const W = HOUR;
        const times = [W - 1, W, W + 1, 2 * W - 1, 2 * W, 5 * W + 3, 9 * W];
        await f.store.write({ deviceId: 'd1', readings: times.map((ts) => ({ ts, values: { ts } })) });
        await f.store.write({ deviceId: 'd0', readings: times.map((ts) => ({ ts, values: { other: ts } })) });
        const range = async (from: number, to: number, order: 'asc' | 'desc', limit = 100): Promise<number[]> => {
          const out: number[] = [];
          let cursor: string | undefined;
          do {
            const page = await f.store.query({ deviceId: 'd1', from, to, order, limit, ...(cursor ? { cursor } : {}) });
            out.push(...page.items.map((r) => r.ts));
            cursor = page.nextCursor ?? undefined;
          } while (cursor !== undefined);
          return out;
        };
        expect(await range(W - 1, 2 * W, 'asc')).toEqual([W - 1, W, W + 1, 2 * W - 1, 2 * W]);
        expect(await range(W - 1, 2 * W, 'desc')).toEqual([2 * W, 2 * W - 1, W + 1, W, W - 1]);
        expect(await range(W, 2 * W - 1, 'asc', 1)).toEqual([W, W + 1, 2 * W - 1]);
        expect(await range(0, MAX_TIMESTAMP_MS, 'desc', 2)).toEqual([...times].reverse());
        expect(await range(3 * W, 5 * W + 2, 'asc')).toEqual([]);
        expect(await range(3 * W, 10 * W, 'asc', 1)).toEqual([5 * W + 3, 9 * W]);
      });
    });

    describe('device registry', () => {
      it('records first and last arrival and counts inserted readings', async () => {
        const clock = manualClock(10_000);
        const f = await fixture({ now: clock.now });
        expect(await f.store.getDevice('d1')).toBeUndefined();
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 1, values: { a: 1 } }, { ts: 2, values: { a: 2 } }] });
        clock.set(20_000);
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 1, values: { a: 1 } }, { ts: 2, values: { a: 3 } }, { values: { a: 4 } }] });
        expect(await f.store.getDevice('d1')).toEqual({ deviceId: 'd1', firstSeen: 10_000, lastSeen: 20_000, readings: 3, tags: {} });
      });

      it('lists devices by id with cursor pagination', async () => {
        const f = await fixture();
        const ids = ['b', 'a', 'c.1', 'C', 'a-2', 'zz', 'a1'];
        await Promise.all(ids.map((deviceId) => f.store.write({ deviceId, readings: [{ values: { x: 1 } }] })));
        const sorted = [...ids].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
        const seen: string[] = [];
        let cursor: string | undefined;
        do {
          const page = await f.store.listDevices({ limit: 3, ...(cursor ? { cursor } : {}) });
          expect(page.items.length).toBeLessThanOrEqual(3);
          seen.push(...page.items.map((d) => d.deviceId));
          expect(page.items.every((d) => d.readings === 1)).toBe(true);
          cursor = page.nextCursor ?? undefined;
        } while (cursor !== undefined);
        expect(seen).toEqual(sorted);
        expect((await f.store.listDevices({ limit: 7 })).nextCursor).toBeNull();
        await expect(f.store.listDevices({ limit: 3, cursor: '***' })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'cursor' });
        await expect(f.store.listDevices({ limit: 0 })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'limit' });
      });
    });

    describe('validation', () => {
      it('rejects readings whose ts cannot be stored, and writes nothing of the request', async () => {
        const f = await fixture();
        for (const ts of [-1, 1.5, MAX_TIMESTAMP_MS + 1, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 60]) {
          await expect(f.store.write({ deviceId: 'd1', readings: [{ ts: 1, values: { ok: true } }, { ts, values: { bad: true } }] })).rejects.toMatchObject({
            code: 'ValidationError',
            field: 'ts',
          });
        }
        await expect(f.store.write({ deviceId: 'd1', readings: [{ ts: '5' as unknown as number, values: {} }] })).rejects.toMatchObject({ code: 'ValidationError', field: 'ts' });
        expect(await all(f.store, 'd1')).toEqual([]);
        expect(await f.changes()).toEqual([]);
        expect(await f.store.getDevice('d1')).toBeUndefined();
        // The bounds themselves are fine.
        const ok = await f.store.write({ deviceId: 'd1', readings: [{ ts: 0, values: {} }, { ts: MAX_TIMESTAMP_MS, values: {} }] });
        expect(ok.items.map((i) => i.change)).toEqual(['INSERT', 'INSERT']);
      });

      it('rejects an invalid device id', async () => {
        const f = await fixture();
        for (const deviceId of ['', 'a/b', 'dev#1', 'x'.repeat(129), 'a b', 'a\u0000b']) {
          await expect(f.store.write({ deviceId, readings: [{ values: { a: 1 } }] })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'deviceId' });
        }
        await expect(f.store.latest('a/b')).rejects.toMatchObject({ code: 'InvalidParameter' });
        expect(await f.changes()).toEqual([]);
      });

      it('rejects empty requests and non-object values', async () => {
        const f = await fixture();
        await expect(f.store.write({ deviceId: 'd1', readings: [] })).rejects.toMatchObject({ code: 'ValidationError', field: 'readings' });
        await expect(f.store.write({ deviceId: 'd1', readings: [{ values: [1, 2] as unknown as { a: number } }] })).rejects.toMatchObject({ code: 'ValidationError', field: 'values' });
      });
    });

    describe('close', () => {
      it('commits queued writes, then refuses new ones', async () => {
        const f = await fixture();
        const pending = [f.store.write({ deviceId: 'd1', readings: [{ ts: 1, values: { a: 1 } }] }), f.store.write({ deviceId: 'd2', readings: [{ ts: 1, values: { a: 1 } }] })];
        await f.store.close();
        const results = await Promise.all(pending);
        expect(results.map((r) => r.status)).toEqual(['committed', 'committed']);
        await expect(f.store.write({ deviceId: 'd1', readings: [{ ts: 2, values: { a: 2 } }] })).rejects.toMatchObject({ code: 'StoreUnavailable' });
        expect((await f.changes()).length).toBe(2);
        await f.store.close();
      });
    });
  });
}

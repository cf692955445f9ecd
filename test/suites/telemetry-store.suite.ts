/**
 * The TelemetryStore compliance suite: every implementation runs it through its own
 * test file (`test/store.level.test.ts`, `test/store.memory.test.ts`) and is done when
 * it passes. It checks the contract of `store/types.ts` and `API.md`, not internals.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MAX_TIMESTAMP_MS } from '../../core/time.js';
import type { RangeQuery, Reading, TelemetryStore, WriteRequest } from '../../store/types.js';
import type { ChangeRecord } from '../../streams/types.js';
import { waitFor } from '../helpers.js';

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
  /** Retention (0: keep forever). */
  retentionMs?: number;
  /** REMOVE records for retention drops. */
  retentionRemoveRecords?: boolean;
  /** Interval of the background retention pass; 0 disables it. */
  retentionCheckMs?: number;
  /** Deliveries per client the redelivery guard remembers. */
  deliveryWindow?: number;
}

export interface TelemetryStoreSuiteOptions {
  name: string;
  factory: (opts?: StoreFactoryOptions) => Promise<StoreFixture>;
}

const HOUR = 3_600_000;
const MINUTE = 60_000;

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
      const delivery = { clientId: 'client-1', packetId: 7, payloadHash: 0xaa11 };

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
        const next = await f.store.write({ deviceId: 'd1', readings: [{ values: { n: 2 } }], delivery: { ...delivery, payloadHash: 0xbb22 } });
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

      const send = (f: StoreFixture, packetId: number, payloadHash = packetId) =>
        f.store.write({ deviceId: 'd1', readings: [{ values: { packetId } }], delivery: { clientId: 'client-1', packetId, payloadHash } });

      it("remembers the client's last `deliveryWindow` deliveries, and only those", async () => {
        const f = await fixture({ deliveryWindow: 4 });
        for (const p of [1, 2, 3, 4]) expect((await send(f, p)).status).toBe('committed');
        expect((await send(f, 1)).status).toBe('duplicate');
        // A redelivery takes no place in the window: 1 is still among the last four.
        expect((await send(f, 1)).status).toBe('duplicate');
        expect((await send(f, 5)).status).toBe('committed');
        // Four deliveries came after 1: it is forgotten, and its re-send is stored again.
        expect((await send(f, 1)).status).toBe('committed');
        expect((await send(f, 4)).status).toBe('duplicate');
        expect((await send(f, 2)).status).toBe('committed');
        expect(await all(f.store, 'd1')).toHaveLength(7);
      });

      it('wraps around the window inside one group commit', async () => {
        const f = await fixture({ deliveryWindow: 4 });
        const first = await Promise.all([1, 2, 3, 4, 5, 6].map((p) => send(f, p)));
        expect(first.map((r) => r.status)).toEqual(Array(6).fill('committed'));
        const again = await Promise.all([6, 5, 4, 3].map((p) => send(f, p)));
        expect(again.map((r) => r.status)).toEqual(Array(4).fill('duplicate'));
        expect((await send(f, 2)).status).toBe('committed');
        expect((await send(f, 6)).status).toBe('duplicate');
      });

      it('still knows a client whose window the store stopped caching', async () => {
        // 2.56 million cached entries hold 100 windows of 25,600.
        const f = await fixture({ deliveryWindow: 25_600 });
        const write = (client: number) => f.store.write({ deviceId: 'd1', readings: [{ ts: client, values: { client } }], delivery: { clientId: `c${client}`, packetId: 1, payloadHash: client } });
        for (let c = 0; c < 150; c += 50) {
          const results = await Promise.all(Array.from({ length: 50 }, (_, i) => write(c + i)));
          expect(results.every((r) => r.status === 'committed')).toBe(true);
        }
        expect((await write(0)).status).toBe('duplicate');
        expect((await write(149)).status).toBe('duplicate');
        expect((await write(1)).status).toBe('duplicate');
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

    describe('raw reads (values as their stored JSON text)', () => {
      // Key order, nesting, escapes and non-ASCII text must survive byte for byte.
      const odd = { z: 1, a: { y: 'naïve "quoted" \\ \u2028', b: true }, n: -0.5e-7, e: '😀' };

      it('queryRaw pages exactly as query does, with the stored text as valuesJson', async () => {
        const f = await fixture({ partitionWindowMs: HOUR });
        const readings = Array.from({ length: 12 }, (_, i) => ({ ts: HOUR - 3 + Math.floor(i / 2) * 1000, values: i === 5 ? odd : { i, gps: { lat: i / 3 } } }));
        await f.store.write({ deviceId: 'd1', readings });
        await f.store.write({ deviceId: 'd10', readings: [{ ts: HOUR, values: { other: true } }] });
        for (const order of ['asc', 'desc'] as const) {
          for (const limit of [1, 5, 12, 13]) {
            for (const keys of [undefined, ['gps.lat', 'e']]) {
              const base = { deviceId: 'd1', from: 0, to: MAX_TIMESTAMP_MS, order, limit, ...(keys ? { keys } : {}) };
              let cursor: string | undefined;
              let pages = 0;
              do {
                const q = { ...base, ...(cursor ? { cursor } : {}) };
                const [parsed, raw] = await Promise.all([f.store.query(q), f.store.queryRaw(q)]);
                expect(raw.nextCursor).toBe(parsed.nextCursor);
                expect(raw.items.map(({ valuesJson, ...key }) => ({ ...key, values: JSON.parse(valuesJson) as unknown }))).toEqual(parsed.items);
                cursor = raw.nextCursor ?? undefined;
                expect(++pages).toBeLessThan(20);
              } while (cursor !== undefined);
            }
          }
        }
        const whole = await f.store.queryRaw({ deviceId: 'd1', from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 100 });
        expect(whole.items[5]?.valuesJson).toBe(JSON.stringify(odd));
        expect((await f.store.queryRaw({ deviceId: 'nobody', from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 10 })).items).toEqual([]);
      });

      it('queryRaw rejects what query rejects', async () => {
        const f = await fixture();
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 1, values: { a: 1 } }, { ts: 2, values: { a: 2 } }] });
        const base = { deviceId: 'd1', from: 0, to: 10, order: 'asc' as const, limit: 1 };
        const cursor = (await f.store.queryRaw(base)).nextCursor as string;
        const cases: Array<[RangeQuery, string]> = [
          [{ ...base, limit: 0 }, 'limit'],
          [{ ...base, from: 1.5 }, 'from'],
          [{ ...base, deviceId: 'a/b' }, 'deviceId'],
          [{ ...base, keys: ['a..b'] }, 'keys'],
          [{ ...base, cursor: 'not a cursor!' }, 'cursor'],
          [{ ...base, order: 'desc', cursor }, 'cursor'],
        ];
        for (const [q, field] of cases) {
          await expect(f.store.queryRaw(q)).rejects.toMatchObject({ code: 'InvalidParameter', field });
        }
      });

      it('latestRaw is the latest reading with its stored text', async () => {
        const f = await fixture();
        expect(await f.store.latestRaw('d1')).toBeUndefined();
        await f.store.putDevice({ deviceId: 'd1', tags: {} });
        expect(await f.store.latestRaw('d1')).toBeUndefined();
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 5, values: odd }, { ts: 3, values: { older: 1 } }] });
        expect(await f.store.latestRaw('d1')).toEqual({ deviceId: 'd1', ts: 5, seq: 0, valuesJson: JSON.stringify(odd) });
        await expect(f.store.latestRaw('a/b')).rejects.toMatchObject({ code: 'InvalidParameter', field: 'deviceId' });
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
        // Readings a minute, recently (a one-minute moving average): 2 at 10 s, decayed for
        // 10 s (e^-1/6), plus the 1 inserted at 20 s.
        expect(await f.store.getDevice('d1')).toEqual({ deviceId: 'd1', firstSeen: 10_000, lastSeen: 20_000, readings: 3, readingsPerMinute: 2.7, tags: {} });
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

      it('lists the devices whose id starts with a prefix, paged, with tags', async () => {
        const f = await fixture();
        // Ids just below the prefix `s-7`, the prefix itself, inside its range, just above it, and in another case.
        const ids = ['s-6', 's-6zzzz', 's-7', 's-7-a', 's-7-b', 's-7.c', 's-70', 's-8', 's-7z', 'S-7-a'];
        await Promise.all(ids.map((deviceId) => f.store.write({ deviceId, readings: [{ values: { x: 1 } }] })));
        await f.store.putDevice({ deviceId: 's-7-b', tags: { room: 'lab' } });
        const all = async (q: { prefix: string; tags?: Record<string, string | undefined> }, limit: number): Promise<string[]> => {
          const seen: string[] = [];
          let cursor: string | undefined;
          do {
            const page = await f.store.listDevices({ limit, ...q, ...(cursor ? { cursor } : {}) });
            seen.push(...page.items.map((d) => d.deviceId));
            cursor = page.nextCursor ?? undefined;
          } while (cursor !== undefined);
          return seen;
        };
        expect(await all({ prefix: 's-7' }, 100)).toEqual(['s-7', 's-7-a', 's-7-b', 's-7.c', 's-70', 's-7z']);
        expect(await all({ prefix: 's-7' }, 2)).toEqual(['s-7', 's-7-a', 's-7-b', 's-7.c', 's-70', 's-7z']);
        expect(await all({ prefix: 's-7-' }, 1)).toEqual(['s-7-a', 's-7-b']);
        expect(await all({ prefix: 's-7', tags: { room: 'lab' } }, 100)).toEqual(['s-7-b']);
        expect(await all({ prefix: 'zz' }, 100)).toEqual([]);
        // A cursor from before the prefix's range starts at the range.
        const first = await f.store.listDevices({ limit: 1 });
        expect((await f.store.listDevices({ limit: 1, prefix: 's-8', cursor: first.nextCursor as string })).items.map((d) => d.deviceId)).toEqual(['s-8']);
      });
    });

    describe('per-key latest', () => {
      it('answers each key from the reading with the highest (ts, seq) that carried it', async () => {
        const f = await fixture();
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 1000, values: { temp: 20, hum: 40, gps: { lat: 1, lon: 2 } } }] });
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 3000, values: { temp: 22 } }] });
        // Arrives late, carries a key the latest reading lacks, and an older temp that must not win.
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 2000, values: { temp: 99, hum: 45, door: 'open' } }] });
        expect(await f.store.latest('d1', { keys: ['temp', 'hum', 'door', 'gps.lat', 'missing'] })).toEqual({
          deviceId: 'd1',
          values: {
            temp: { ts: 3000, seq: 0, value: 22 },
            hum: { ts: 2000, seq: 0, value: 45 },
            door: { ts: 2000, seq: 0, value: 'open' },
            'gps.lat': { ts: 1000, seq: 0, value: 1 },
          },
        });
        // A key naming an object covers its leaves.
        expect((await f.store.latest('d1', { keys: ['gps'] }))?.values).toEqual({ 'gps.lat': { ts: 1000, seq: 0, value: 1 }, 'gps.lon': { ts: 1000, seq: 0, value: 2 } });
        // A newer reading carrying the key takes it over; same ts: the higher seq wins.
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 4000, values: { hum: 50 } }, { ts: 4000, values: { hum: 51, ok: false } }] });
        expect((await f.store.latest('d1', { keys: ['temp', 'hum', 'ok'] }))?.values).toEqual({
          temp: { ts: 3000, seq: 0, value: 22 },
          hum: { ts: 4000, seq: 1, value: 51 },
          ok: { ts: 4000, seq: 1, value: false },
        });
        // The whole-reading latest is unchanged by all this.
        expect(await f.store.latest('d1')).toEqual({ deviceId: 'd1', ts: 4000, seq: 1, values: { hum: 51, ok: false } });
      });

      it('is undefined for an unknown device, empty for keys a device never sent, and checks keys', async () => {
        const f = await fixture();
        expect(await f.store.latest('nobody', { keys: ['temp'] })).toBeUndefined();
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 1, values: { a: 1 } }] });
        expect(await f.store.latest('d1', { keys: ['b'] })).toEqual({ deviceId: 'd1', values: {} });
        await expect(f.store.latest('d1', { keys: [] })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'keys' });
        await expect(f.store.latest('d1', { keys: ['a..b'] })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'keys' });
      });

      it('keeps track within one group commit, and of a MODIFY', async () => {
        const f = await fixture();
        await Promise.all([
          f.store.write({ deviceId: 'd1', readings: [{ ts: 10, values: { a: 1, b: 1 } }] }),
          f.store.write({ deviceId: 'd1', readings: [{ ts: 30, values: { a: 3 } }] }),
          f.store.write({ deviceId: 'd1', readings: [{ ts: 20, values: { b: 2, c: 2 } }] }),
        ]);
        expect((await f.store.latest('d1', { keys: ['a', 'b', 'c'] }))?.values).toEqual({
          a: { ts: 30, seq: 0, value: 3 },
          b: { ts: 20, seq: 0, value: 2 },
          c: { ts: 20, seq: 0, value: 2 },
        });
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 20, values: { b: 5, c: 2 } }] });
        expect((await f.store.latest('d1', { keys: ['b'] }))?.values).toEqual({ b: { ts: 20, seq: 0, value: 5 } });
      });
    });

    describe('aggregation', () => {
      const AGGS = ['avg', 'min', 'max', 'sum', 'count', 'first', 'last'] as const;

      it('buckets by epoch-aligned intervals, omits empty buckets and computes every aggregate', async () => {
        const f = await fixture({ partitionWindowMs: HOUR });
        const base = 5 * HOUR - 2 * MINUTE; // buckets cross a partition boundary
        await f.store.write({
          deviceId: 'd1',
          readings: [
            { ts: base + 5_000, values: { temp: 10, hum: 50 } },
            { ts: base + 5_000, values: { temp: 14 } },
            { ts: base + 59_999, values: { temp: 12 } },
            { ts: base + MINUTE, values: { temp: 30, hum: 40 } },
            // nothing in the third minute
            { ts: base + 3 * MINUTE + 1, values: { temp: -5 } },
          ],
        });
        await f.store.write({ deviceId: 'd10', readings: [{ ts: base + 1, values: { temp: 1000 } }] });
        const result = await f.store.aggregate({ deviceId: 'd1', from: base + 1000, to: base + 4 * MINUTE, intervalMs: MINUTE, aggs: [...AGGS] });
        expect(result).toEqual({
          deviceId: 'd1',
          intervalMs: MINUTE,
          buckets: [
            {
              start: base,
              end: base + MINUTE,
              values: { temp: { avg: 12, min: 10, max: 14, sum: 36, count: 3, first: 10, last: 12 }, hum: { avg: 50, min: 50, max: 50, sum: 50, count: 1, first: 50, last: 50 } },
            },
            {
              start: base + MINUTE,
              end: base + 2 * MINUTE,
              values: { temp: { avg: 30, min: 30, max: 30, sum: 30, count: 1, first: 30, last: 30 }, hum: { avg: 40, min: 40, max: 40, sum: 40, count: 1, first: 40, last: 40 } },
            },
            { start: base + 3 * MINUTE, end: base + 4 * MINUTE, values: { temp: { avg: -5, min: -5, max: -5, sum: -5, count: 1, first: -5, last: -5 } } },
          ],
        });
        // from and to are inclusive; only the requested aggregates appear.
        const edge = await f.store.aggregate({ deviceId: 'd1', from: base + 59_999, to: base + MINUTE, intervalMs: MINUTE, aggs: ['count', 'max'] });
        expect(edge.buckets.map((b) => [b.start, b.values])).toEqual([
          [base, { temp: { count: 1, max: 12 } }],
          [base + MINUTE, { temp: { count: 1, max: 30 }, hum: { count: 1, max: 40 } }],
        ]);
      });

      it('counts any value but averages numbers only; flattens nested keys; selects keys', async () => {
        const f = await fixture();
        await f.store.write({
          deviceId: 'd1',
          readings: [
            { ts: 1000, values: { status: 'ok', door: true, gps: { lat: 1, lon: 10 }, mixed: 'n/a' } },
            { ts: 2000, values: { status: 'fault', door: false, gps: { lat: 3, lon: 20 }, mixed: 4 } },
            { ts: 3000, values: { temp: 5 } },
          ],
        });
        const all = await f.store.aggregate({ deviceId: 'd1', from: 0, to: 10_000, intervalMs: 10_000, aggs: [...AGGS] });
        expect(all.buckets).toHaveLength(1);
        expect(all.buckets[0]?.values).toEqual({
          status: { avg: null, min: null, max: null, sum: null, count: 2, first: 'ok', last: 'fault' },
          door: { avg: null, min: null, max: null, sum: null, count: 2, first: true, last: false },
          'gps.lat': { avg: 2, min: 1, max: 3, sum: 4, count: 2, first: 1, last: 3 },
          'gps.lon': { avg: 15, min: 10, max: 20, sum: 30, count: 2, first: 10, last: 20 },
          mixed: { avg: 4, min: 4, max: 4, sum: 4, count: 2, first: 'n/a', last: 4 },
          temp: { avg: 5, min: 5, max: 5, sum: 5, count: 1, first: 5, last: 5 },
        });
        const some = await f.store.aggregate({ deviceId: 'd1', from: 0, to: 10_000, intervalMs: 1000, aggs: ['avg'], keys: ['gps', 'temp'] });
        expect(some.buckets.map((b) => [b.start, b.values])).toEqual([
          [1000, { 'gps.lat': { avg: 1 }, 'gps.lon': { avg: 10 } }],
          [2000, { 'gps.lat': { avg: 3 }, 'gps.lon': { avg: 20 } }],
          [3000, { temp: { avg: 5 } }],
        ]);
        // A bucket whose readings lack every selected key is empty, hence omitted.
        expect((await f.store.aggregate({ deviceId: 'd1', from: 0, to: 10_000, intervalMs: 1000, aggs: ['count'], keys: ['gps.lat'] })).buckets.map((b) => b.start)).toEqual([1000, 2000]);
      });

      it('streams ranges larger than one chunk, across partitions', async () => {
        const f = await fixture({ partitionWindowMs: HOUR });
        const n = 10_000;
        const start = 10 * HOUR - 5_000 * 1000; // half before, half after a partition boundary
        for (let k = 0; k < n; k += 2500) {
          await f.store.write({ deviceId: 'd1', readings: Array.from({ length: 2500 }, (_, j) => ({ ts: start + (k + j) * 1000, values: { i: k + j } })) });
        }
        const result = await f.store.aggregate({ deviceId: 'd1', from: start, to: start + n * 1000, intervalMs: 1000 * 1000, aggs: ['count', 'sum', 'first', 'last'] });
        expect(result.buckets).toHaveLength(10);
        result.buckets.forEach((b, i) => {
          expect(b.start).toBe(start + i * 1_000_000);
          expect(b.values.i).toEqual({ count: 1000, sum: (i * 1000 * 2 + 999) * 500, first: i * 1000, last: i * 1000 + 999 });
        });
      });

      it('sums with compensation: a bucket of 1e16, 1, -1e16 sums to 1 (plain addition gives 0)', async () => {
        const f = await fixture();
        await f.store.write({ deviceId: 'd1', readings: [1e16, 1, -1e16, 0.1, 0.2].map((v, i) => ({ ts: 1000 + i, values: { v } })) });
        const result = await f.store.aggregate({ deviceId: 'd1', from: 0, to: 10_000, intervalMs: 1000, aggs: ['sum', 'avg', 'count'] });
        expect(1e16 + 1 - 1e16).toBe(0);
        expect(result.buckets[0]?.values['v']).toEqual({ sum: 1 + 0.1 + 0.2, avg: (1 + 0.1 + 0.2) / 5, count: 5 });
      });

      it('rejects bad parameters and caps the bucket count', async () => {
        const f = await fixture();
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 1, values: { a: 1 } }] });
        const base = { deviceId: 'd1', from: 0, to: 1000, intervalMs: 100, aggs: ['avg' as const] };
        await expect(f.store.aggregate({ ...base, intervalMs: 0 })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'interval' });
        await expect(f.store.aggregate({ ...base, intervalMs: 1.5 })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'interval' });
        await expect(f.store.aggregate({ ...base, aggs: [] })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'agg' });
        await expect(f.store.aggregate({ ...base, aggs: ['median' as 'avg'] })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'agg' });
        await expect(f.store.aggregate({ ...base, keys: ['a..b'] })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'keys' });
        await expect(f.store.aggregate({ ...base, from: 'x' as unknown as number })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'from' });
        await expect(f.store.aggregate({ ...base, deviceId: 'a/b' })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'deviceId' });
        // 100,000 buckets are fine; 100,001 are not.
        expect((await f.store.aggregate({ ...base, from: 0, to: 100_000 * 100 - 1 })).buckets).toHaveLength(1);
        const tooMany = f.store.aggregate({ ...base, from: 0, to: 100_000 * 100 });
        await expect(tooMany).rejects.toMatchObject({ code: 'InvalidParameter', field: 'interval' });
        await expect(tooMany).rejects.toThrow(/100001 buckets; at most 100000/);
        expect(await f.store.aggregate({ ...base, from: 2000, to: 1000 })).toEqual({ deviceId: 'd1', intervalMs: 100, buckets: [] });
        expect(await f.store.aggregate({ ...base, deviceId: 'nobody' })).toEqual({ deviceId: 'nobody', intervalMs: 100, buckets: [] });
      });
    });

    describe('retention', () => {
      const WINDOW = HOUR;
      const retention = { partitionWindowMs: WINDOW, retentionMs: 2 * HOUR, retentionCheckMs: 0 };
      /** Readings at h·HOUR + 1 for h = 0..5 for two devices whose ids prefix each other, written while the clock is at 0. */
      async function sixHours(f: StoreFixture): Promise<void> {
        for (const deviceId of ['d1', 'd10']) {
          await f.store.write({ deviceId, readings: Array.from({ length: 6 }, (_, h) => ({ ts: h * HOUR + 1, values: { h, deviceId } })) });
        }
      }

      it('drops every partition wholly older than now - retention, silently by default; keeps latest and the registry', async () => {
        const clock = manualClock(0);
        const f = await fixture({ now: clock.now, ...retention });
        await sixHours(f);
        const before = await f.changes();
        const deviceBefore = await f.store.getDevice('d1');
        clock.set(5 * HOUR + 30 * MINUTE); // horizon 3h30: partitions 0, 1, 2 are wholly older; 3 straddles it
        const result = await f.store.dropExpired();
        expect(result.partitions).toBe(3);
        expect(result.readings).toBeUndefined();
        expect(result.ms).toBeGreaterThanOrEqual(0);
        for (const deviceId of ['d1', 'd10']) expect((await all(f.store, deviceId)).map((r) => r.values.h)).toEqual([3, 4, 5]);
        // Silent on the stream: dropping millions of readings would otherwise flood it.
        expect(await f.changes()).toEqual(before);
        expect(await f.store.latest('d1')).toMatchObject({ ts: 5 * HOUR + 1 });
        // The registry is kept; only the recent rate has decayed in the 5.5 h that passed.
        expect(await f.store.getDevice('d1')).toEqual({ ...deviceBefore, readingsPerMinute: 0 });
        // Idempotent: nothing more to drop.
        expect((await f.store.dropExpired()).partitions).toBe(0);
        // The partition straddling the horizon goes once it is wholly older.
        expect((await f.store.dropExpired(6 * HOUR)).partitions).toBe(1);
        expect((await all(f.store, 'd1')).map((r) => r.values.h)).toEqual([4, 5]);
      });

      it('refuses readings older than the retention, also after the clock steps back', async () => {
        const clock = manualClock(0);
        const f = await fixture({ now: clock.now, ...retention, retentionMs: 30 * 24 * HOUR });
        const DAY = 24 * HOUR;
        clock.set(40 * DAY);
        const old = f.store.write({ deviceId: 'd1', readings: [{ ts: 20 * DAY, values: { ok: true } }, { ts: 9 * DAY, values: { old: true } }] });
        await expect(old).rejects.toMatchObject({ code: 'ValidationError', field: 'ts' });
        await expect(old).rejects.toThrow(/reading 1: ts 777600000 \(1970-01-10T00:00:00.000Z\) is older than the retention of 30d/);
        expect(await f.store.getDevice('d1')).toBeUndefined();
        expect(await f.changes()).toEqual([]);
        // At the horizon is fine, server stamps are always fine.
        expect((await f.store.write({ deviceId: 'd1', readings: [{ ts: 10 * DAY, values: { edge: true } }, { values: { now: true } }] })).items.map((i) => i.change)).toEqual(['INSERT', 'INSERT']);
        clock.set(0);
        await expect(f.store.write({ deviceId: 'd1', readings: [{ ts: 9 * DAY, values: { again: true } }] })).rejects.toMatchObject({ code: 'ValidationError', field: 'ts' });
      });

      it('with retentionRemoveRecords, stream a REMOVE with the service identity for every reading dropped', async () => {
        const clock = manualClock(0);
        const f = await fixture({ now: clock.now, ...retention, retentionRemoveRecords: true });
        await sixHours(f);
        clock.set(5 * HOUR + 30 * MINUTE);
        const result = await f.store.dropExpired();
        expect(result).toMatchObject({ partitions: 3, readings: 6 });
        const changes = await f.changes();
        const removes = changes.filter((r) => r.eventName === 'REMOVE');
        expect(removes.map((r) => [r.deviceId, r.ts]).sort()).toEqual(
          ['d1', 'd10'].flatMap((d) => [0, 1, 2].map((h) => [d, h * HOUR + 1])).sort(),
        );
        for (const r of removes) {
          expect(r.byService).toBe(true);
          expect(r.oldValues).toEqual({ h: Math.floor(r.ts / HOUR), deviceId: r.deviceId });
          expect(r.newValues).toBeUndefined();
          expect(r.createdAt).toBe(5 * HOUR + 30 * MINUTE);
        }
        // Sequence numbers stay gap-free per shard, REMOVEs after the INSERTs they undo.
        for (const shard of new Set(changes.map((r) => r.shard))) {
          const inShard = changes.filter((r) => r.shard === shard);
          expect(inShard.map((r) => r.sequenceNumber)).toEqual(inShard.map((_, i) => i + 1));
        }
        for (const deviceId of ['d1', 'd10']) expect((await all(f.store, deviceId)).map((r) => r.values.h)).toEqual([3, 4, 5]);
      });

      it('runs by itself at open and then periodically', async () => {
        const clock = manualClock(0);
        const first = await fixture({ now: clock.now, ...retention, retentionCheckMs: 20 });
        await sixHours(first);
        clock.set(5 * HOUR + 30 * MINUTE);
        await waitFor(async () => (await all(first.store, 'd1')).length === 3, 5000, 'the background pass to drop three partitions');
        clock.set(6 * HOUR + 30 * MINUTE);
        await waitFor(async () => (await all(first.store, 'd1')).length === 2, 5000, 'the next background pass');
      });

      it('is a no-op when retention is off', async () => {
        const f = await fixture({ partitionWindowMs: WINDOW });
        await sixHours(f);
        expect(await f.store.dropExpired(MAX_TIMESTAMP_MS)).toMatchObject({ partitions: 0 });
        expect(await all(f.store, 'd1')).toHaveLength(6);
      });
    });

    describe('device registry: provisioning and deletion', () => {
      it('PUT creates a device with tags and no readings, then replaces its tags; writes keep them', async () => {
        const clock = manualClock(5000);
        const f = await fixture({ now: clock.now });
        expect(await f.store.putDevice({ deviceId: 'd1', tags: { site: 'north', floor: '2' } })).toEqual({
          created: true,
          device: { deviceId: 'd1', firstSeen: null, lastSeen: null, readings: 0, readingsPerMinute: 0, tags: { site: 'north', floor: '2' } },
        });
        expect(await f.store.getDevice('d1')).toEqual({ deviceId: 'd1', firstSeen: null, lastSeen: null, readings: 0, readingsPerMinute: 0, tags: { site: 'north', floor: '2' } });
        expect(await f.store.latest('d1')).toBeUndefined();
        expect(await f.store.latest('d1', { keys: ['temp'] })).toEqual({ deviceId: 'd1', values: {} });
        clock.set(6000);
        await f.store.write({ deviceId: 'd1', readings: [{ values: { temp: 1 } }] });
        expect(await f.store.getDevice('d1')).toEqual({ deviceId: 'd1', firstSeen: 6000, lastSeen: 6000, readings: 1, readingsPerMinute: 1, tags: { site: 'north', floor: '2' } });
        const updated = await f.store.putDevice({ deviceId: 'd1', tags: { site: 'south' } });
        expect(updated).toEqual({ created: false, device: { deviceId: 'd1', firstSeen: 6000, lastSeen: 6000, readings: 1, readingsPerMinute: 1, tags: { site: 'south' } } });
        clock.set(7000);
        await f.store.write({ deviceId: 'd1', readings: [{ values: { temp: 2 } }] });
        expect(await f.store.getDevice('d1')).toMatchObject({ lastSeen: 7000, readings: 2, tags: { site: 'south' } });
        // Registering is not a change of any item: nothing on the stream.
        expect((await f.changes()).map((r) => r.eventName)).toEqual(['INSERT', 'INSERT']);
      });

      it('validates tags', async () => {
        const f = await fixture();
        for (const tags of [{ 'a:b': 'x' }, { '': 'x' }, { a: 5 }, { a: 'x'.repeat(257) }, Object.fromEntries(Array.from({ length: 51 }, (_, i) => [`k${i}`, 'v'])), null, ['x']]) {
          await expect(f.store.putDevice({ deviceId: 'd1', tags: tags as Record<string, string> })).rejects.toMatchObject({ code: 'ValidationError', field: 'tags' });
        }
        await expect(f.store.putDevice({ deviceId: 'a/b', tags: {} })).rejects.toMatchObject({ code: 'InvalidParameter', field: 'deviceId' });
        expect(await f.store.getDevice('d1')).toBeUndefined();
      });

      it('filters the device list by tag, paging with the cursor', async () => {
        const f = await fixture();
        for (let i = 0; i < 12; i++) await f.store.putDevice({ deviceId: `dev-${String(i).padStart(2, '0')}`, tags: i % 3 === 0 ? { site: 'north', even: String(i % 2 === 0) } : { site: 'south' } });
        await f.store.write({ deviceId: 'untagged', readings: [{ values: { v: 1 } }] });
        const collect = async (tags: Record<string, string | undefined>, limit: number): Promise<string[]> => {
          const ids: string[] = [];
          let cursor: string | undefined;
          do {
            const page = await f.store.listDevices({ limit, tags, ...(cursor ? { cursor } : {}) });
            expect(page.items.length).toBeLessThanOrEqual(limit);
            ids.push(...page.items.map((d) => d.deviceId));
            cursor = page.nextCursor ?? undefined;
          } while (cursor !== undefined);
          return ids;
        };
        expect(await collect({ site: 'north' }, 2)).toEqual(['dev-00', 'dev-03', 'dev-06', 'dev-09']);
        expect(await collect({ site: 'north', even: 'true' }, 10)).toEqual(['dev-00', 'dev-06']);
        expect(await collect({ even: undefined }, 3)).toEqual(['dev-00', 'dev-03', 'dev-06', 'dev-09']);
        expect(await collect({ site: 'east' }, 5)).toEqual([]);
        expect((await f.store.listDevices({ limit: 4, tags: { site: 'north' } })).nextCursor).toBeNull();
      });

      it('DELETE removes every reading with a REMOVE record, then the latest and registry entries and the client’s delivery ids', async () => {
        const clock = manualClock(50_000);
        const f = await fixture({ now: clock.now, partitionWindowMs: HOUR });
        await f.store.putDevice({ deviceId: 'd1', tags: { site: 'x' } });
        const delivery = { clientId: 'd1', packetId: 3, payloadHash: 0x23 };
        const gateway = { clientId: 'gateway', packetId: 4, payloadHash: 0x24 };
        await f.store.write({ deviceId: 'd1', readings: [0, 1, 5].map((h) => ({ ts: h * HOUR + 7, values: { h } })), delivery });
        await f.store.write({ deviceId: 'd1', readings: [{ ts: 9 * HOUR, values: { via: 'gateway' } }], delivery: gateway });
        await f.store.write({ deviceId: 'd10', readings: [{ ts: 7, values: { other: true } }] });
        const inserts = (await changesOf(f, 'd1')).length;

        expect(await f.store.deleteDevice('d1')).toEqual({ readings: 4 });
        expect(await f.store.getDevice('d1')).toBeUndefined();
        expect(await f.store.latest('d1')).toBeUndefined();
        expect(await f.store.latest('d1', { keys: ['h'] })).toBeUndefined();
        expect(await all(f.store, 'd1')).toEqual([]);
        expect((await f.store.listDevices({ limit: 10 })).items.map((d) => d.deviceId)).toEqual(['d10']);
        const removes = (await changesOf(f, 'd1')).slice(inserts);
        expect(removes.map((r) => [r.eventName, r.ts, r.oldValues, r.byService])).toEqual([
          ['REMOVE', 7, { h: 0 }, undefined],
          ['REMOVE', HOUR + 7, { h: 1 }, undefined],
          ['REMOVE', 5 * HOUR + 7, { h: 5 }, undefined],
          ['REMOVE', 9 * HOUR, { via: 'gateway' }, undefined],
        ]);
        // Other devices are untouched.
        expect(await all(f.store, 'd10')).toHaveLength(1);
        expect(await f.store.deleteDevice('d1')).toBeUndefined();
        // The device's own client starts afresh; a gateway's delivery ids are the gateway's.
        expect((await f.store.write({ deviceId: 'd1', readings: [{ ts: 7, values: { h: 0 } }], delivery })).status).toBe('committed');
        expect((await f.store.write({ deviceId: 'd1', readings: [{ ts: 8, values: {} }], delivery: gateway })).status).toBe('duplicate');
        // It comes back as a new device, its rate counted afresh.
        expect(await f.store.getDevice('d1')).toEqual({ deviceId: 'd1', firstSeen: 50_000, lastSeen: 50_000, readings: 1, readingsPerMinute: 1, tags: {} });
        expect(await all(f.store, 'd1')).toHaveLength(1);
      });

      it('DELETE goes in bounded batches and orders itself with concurrent writes', async () => {
        const f = await fixture();
        const n = 2500;
        await f.store.write({ deviceId: 'd1', readings: Array.from({ length: n }, (_, i) => ({ ts: 1000 + i, values: { i } })) });
        // Asked for before the delete: deleted with the device. Asked for after: the new device's first reading.
        const before = f.store.write({ deviceId: 'd1', readings: [{ ts: 1, values: { before: true } }] });
        const deleted = f.store.deleteDevice('d1');
        const again = f.store.deleteDevice('d1');
        const after = f.store.write({ deviceId: 'd1', readings: [{ ts: 2, values: { after: true } }] });
        const others = Array.from({ length: 20 }, (_, i) => f.store.write({ deviceId: 'd2', readings: [{ ts: i, values: { i } }] }));
        await Promise.all([before, after, ...others]);
        expect(await deleted).toEqual({ readings: n + 1 });
        expect(await again).toEqual({ readings: n + 1 });
        expect(await all(f.store, 'd1')).toEqual([{ deviceId: 'd1', ts: 2, seq: 0, values: { after: true } }]);
        expect(await f.store.getDevice('d1')).toMatchObject({ readings: 1 });
        expect(await all(f.store, 'd2')).toHaveLength(20);
        const d1 = await changesOf(f, 'd1');
        expect(d1.filter((r) => r.eventName === 'REMOVE')).toHaveLength(n + 1);
        expect(d1[d1.length - 1]).toMatchObject({ eventName: 'INSERT', ts: 2 });
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

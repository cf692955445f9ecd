/**
 * The ChangeLog compliance suite: every implementation of `streams/types.ts`'s
 * `ChangeLog` runs it through its own test file (`test/change-log.embedded.test.ts`,
 * `test/change-log.memory.test.ts`, a Kafka log later) and is done when it passes. It
 * checks the contract — the stage → commit | abort protocol, per-shard gap-free
 * numbering, visibility, listeners, shard info, the stream ARN — not internals.
 *
 * What an implementation can do is declared in `supports` (as abstract-level's
 * manifest does), and decides which cases apply: no ad-hoc skips.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { BatchOp, Change, ChangeLog, ChangeRecord } from '../../streams/types.js';

/** What a factory hands the suite: a fresh, empty log and the means to commit its batches. */
export interface ChangeLogFixture {
  log: ChangeLog;
  /**
   * Commits the staged ops durably, as the store does between `stage` and `commit`
   * (the embedded log: `database.commit`; the memory log: nothing to do). After a
   * `reopen` it commits to the reopened log's storage.
   */
  commitOps: (ops: BatchOp[]) => Promise<void>;
  /**
   * Closes the log's storage and opens it again with `shards` shards (default: the
   * factory's). Only for implementations that declare `supports.durable`. After a
   * successful reopen `log` is the reopened log.
   */
  reopen?: (opts?: { shards?: number }) => Promise<ChangeLog>;
  /** Closes whatever the factory opened; must tolerate being called after a failed reopen. */
  close: () => Promise<void>;
}

/** The implementation's capability manifest. */
export interface ChangeLogSupports {
  /** Records survive closing and reopening the log's storage; the fixture has `reopen`. */
  durable: boolean;
}

export interface ChangeLogSuiteOptions {
  name: string;
  supports: ChangeLogSupports;
  factory: (opts: { shards: number }) => Promise<ChangeLogFixture>;
}

const SHARDS = 4;
const NOW = 1_700_000_000_000;
const ARN = /^arn:aws:dynamodb:us-east-1:000000000000:table\/telemetry\/stream\/(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})$/;

function insert(deviceId: string, ts: number, values: Change['newValues'] = { v: ts }): Change {
  return { eventName: 'INSERT', deviceId, ts, seq: 0, newValues: values };
}

export function runChangeLogSuite({ name, supports, factory }: ChangeLogSuiteOptions): void {
  describe(`ChangeLog compliance: ${name}`, () => {
    const open: ChangeLogFixture[] = [];
    afterEach(async () => {
      vi.restoreAllMocks();
      for (const f of open.splice(0)) await f.close();
    });
    async function fixture(shards = SHARDS): Promise<ChangeLogFixture> {
      const f = await factory({ shards });
      open.push(f);
      return f;
    }
    /** stage → durable commit of the ops → commit, as the store's write path does. */
    async function write(f: ChangeLogFixture, changes: Change[], now = NOW): Promise<ChangeRecord[]> {
      const ops: BatchOp[] = [];
      const records = f.log.stage(ops, changes, now);
      await f.commitOps(ops);
      f.log.commit(records);
      return records;
    }
    async function readAll(log: ChangeLog, shard: number): Promise<ChangeRecord[]> {
      return log.read(shard, 0, Number.MAX_SAFE_INTEGER);
    }
    /** Device ids that land in distinct shards, one per shard, found by asking the log. */
    function devicePerShard(log: ChangeLog): string[] {
      const out = new Array<string | undefined>(log.shardCount).fill(undefined);
      for (let i = 0; out.includes(undefined); i++) {
        if (i > 10_000) throw new Error('shardOf never reaches some shard');
        const id = `device-${i}`;
        const s = log.shardOf(id);
        if (out[s] === undefined) out[s] = id;
      }
      return out as string[];
    }

    describe('shards and identity', () => {
      it('shardOf is stable, in range, and spreads devices over the shards', async () => {
        const a = await fixture();
        const b = await fixture();
        expect(a.log.shardCount).toBe(SHARDS);
        const seen = new Set<number>();
        for (let i = 0; i < 200; i++) {
          const id = `dev-${i}-ünï`;
          const s = a.log.shardOf(id);
          expect(Number.isInteger(s)).toBe(true);
          expect(s).toBeGreaterThanOrEqual(0);
          expect(s).toBeLessThan(SHARDS);
          expect(a.log.shardOf(id)).toBe(s);
          // Any instance with the same shard count puts the device in the same shard.
          expect(b.log.shardOf(id)).toBe(s);
          seen.add(s);
        }
        expect(seen.size).toBe(SHARDS);
      });

      it("streamArn has AWS's form, labelled with the creation time as AWS's StreamLabel writes it", async () => {
        const f = await fixture();
        const m = ARN.exec(f.log.streamArn);
        expect(m, f.log.streamArn).not.toBeNull();
        const label = m?.[1] as string;
        expect(new Date(`${label}Z`).toISOString()).toBe(`${label}Z`);
      });

      it('shards() lists every shard, empty ones with null sequence numbers', async () => {
        const f = await fixture();
        const shards = await f.log.shards();
        expect(shards.map((s) => s.shard)).toEqual([0, 1, 2, 3]);
        for (const s of shards) {
          expect(s.shardId).toMatch(/^shardId-\d{4,}$/);
          expect(s.firstSequenceNumber).toBeNull();
          expect(s.lastSequenceNumber).toBeNull();
        }
        expect(new Set(shards.map((s) => s.shardId)).size).toBe(SHARDS);
      });

      it('shards() reports the first and last committed sequence numbers', async () => {
        const f = await fixture();
        const [d0, d1] = devicePerShard(f.log) as [string, string];
        await write(f, [insert(d0, 1), insert(d0, 2), insert(d1, 3)]);
        await write(f, [insert(d0, 4)]);
        // Staged only: not part of what shards() reports.
        const staged = f.log.stage([], [insert(d1, 5)], NOW);
        const shards = await f.log.shards();
        expect(shards[0]).toMatchObject({ shard: 0, firstSequenceNumber: 1, lastSequenceNumber: 3 });
        expect(shards[1]).toMatchObject({ shard: 1, firstSequenceNumber: 1, lastSequenceNumber: 1 });
        expect(shards[2]).toMatchObject({ firstSequenceNumber: null, lastSequenceNumber: null });
        f.log.abort(staged);
      });
    });

    describe('stage, commit, abort', () => {
      it('assigns gap-free sequence numbers per shard, starting at 1', async () => {
        const f = await fixture();
        const ids = devicePerShard(f.log);
        const changes: Change[] = [];
        for (let round = 0; round < 3; round++) for (const id of ids) changes.push(insert(id, round));
        const records = await write(f, changes);
        await write(f, [insert(ids[2] as string, 99)]);
        for (let shard = 0; shard < SHARDS; shard++) {
          const staged = records.filter((r) => r.shard === shard).map((r) => r.sequenceNumber);
          expect(staged).toEqual([1, 2, 3]);
          const expected = shard === 2 ? [1, 2, 3, 4] : [1, 2, 3];
          expect((await readAll(f.log, shard)).map((r) => r.sequenceNumber)).toEqual(expected);
        }
      });

      it('stage returns each change with its shard, sequence number and commit time', async () => {
        const f = await fixture();
        const change: Change = { eventName: 'MODIFY', deviceId: 'd1', ts: 5, seq: 2, newValues: { a: 2 }, oldValues: { a: 1 } };
        const [r] = f.log.stage([], [change], NOW + 7);
        expect(r).toEqual({ ...change, shard: f.log.shardOf('d1'), sequenceNumber: 1, createdAt: NOW + 7 });
        f.log.abort(r ? [r] : []);
      });

      it("keeps one device's records in one shard, in commit order", async () => {
        const f = await fixture();
        for (let i = 0; i < 10; i++) await write(f, [insert('dA', i), insert('dB', 100 + i), insert('dA', 1000 + i)]);
        for (const id of ['dA', 'dB']) {
          const shard = f.log.shardOf(id);
          const mine = (await readAll(f.log, shard)).filter((r) => r.deviceId === id);
          expect(mine.every((r) => r.shard === shard)).toBe(true);
          const expected = id === 'dA' ? Array.from({ length: 10 }, (_, i) => [i, 1000 + i]).flat() : Array.from({ length: 10 }, (_, i) => 100 + i);
          expect(mine.map((r) => r.ts)).toEqual(expected);
          for (let s = 0; s < SHARDS; s++) if (s !== shard) expect((await readAll(f.log, s)).some((r) => r.deviceId === id)).toBe(false);
        }
      });

      it('reads back every field of a record as staged', async () => {
        const f = await fixture();
        const changes: Change[] = [
          { eventName: 'INSERT', deviceId: 'dev/ü-1', ts: NOW - 5, seq: 0, newValues: { temp: -21.5, ok: true, label: 'naïve ✓', big: 2 ** 40, gps: { lat: 51.5, lon: -0.12, fix: { sats: 7 } } } },
          { eventName: 'MODIFY', deviceId: 'dev/ü-1', ts: NOW - 5, seq: 0, newValues: { temp: 3 }, oldValues: { temp: -21.5, ok: true } },
          { eventName: 'REMOVE', deviceId: 'dev/ü-1', ts: NOW - 5, seq: 0, oldValues: { temp: 3 }, byService: true },
          { eventName: 'REMOVE', deviceId: 'dev/ü-1', ts: 1, seq: 65_000, oldValues: {} },
        ];
        const records = await write(f, changes, NOW + 123);
        const back = await readAll(f.log, f.log.shardOf('dev/ü-1'));
        expect(back).toStrictEqual(records);
        expect(back[2]?.byService).toBe(true);
        expect(back[3]).not.toHaveProperty('byService');
        expect(back[3]).not.toHaveProperty('newValues');
      });

      it('read(shard, after, limit) respects after and limit', async () => {
        const f = await fixture();
        const shard = f.log.shardOf('d1');
        await write(f, Array.from({ length: 10 }, (_, i) => insert('d1', i)));
        const seqs = async (after: number, limit: number): Promise<number[]> => (await f.log.read(shard, after, limit)).map((r) => r.sequenceNumber);
        expect(await seqs(0, 3)).toEqual([1, 2, 3]);
        expect(await seqs(3, 100)).toEqual([4, 5, 6, 7, 8, 9, 10]);
        expect(await seqs(7, 2)).toEqual([8, 9]);
        expect(await seqs(9, 1)).toEqual([10]);
        expect(await seqs(10, 5)).toEqual([]);
        expect(await seqs(50, 5)).toEqual([]);
        expect(await seqs(0, 0)).toEqual([]);
        const other = (shard + 1) % SHARDS;
        expect(await f.log.read(other, 0, 10)).toEqual([]);
      });

      it('readFromTime(shard, t, limit) starts at the first record committed at or after t', async () => {
        const f = await fixture();
        const shard = f.log.shardOf('d1');
        expect(await f.log.readFromTime(shard, 0, 10)).toEqual([]);
        // Batches of 1, 2 and 3 records committed at NOW, NOW + 10 and NOW + 20, and one at NOW + 30.
        await write(f, [insert('d1', 1)], NOW);
        await write(f, [insert('d1', 2), insert('d1', 3)], NOW + 10);
        await write(f, [insert('d1', 4), insert('d1', 5), insert('d1', 6)], NOW + 20);
        await write(f, [insert('d1', 7)], NOW + 30);
        const seqs = async (t: number, limit = 100): Promise<number[]> => (await f.log.readFromTime(shard, t, limit)).map((r) => r.sequenceNumber);
        expect(await seqs(0)).toEqual([1, 2, 3, 4, 5, 6, 7]);
        expect(await seqs(NOW)).toEqual([1, 2, 3, 4, 5, 6, 7]);
        expect(await seqs(NOW + 1)).toEqual([2, 3, 4, 5, 6, 7]);
        expect(await seqs(NOW + 10)).toEqual([2, 3, 4, 5, 6, 7]);
        expect(await seqs(NOW + 11, 2)).toEqual([4, 5]);
        expect(await seqs(NOW + 20)).toEqual([4, 5, 6, 7]);
        expect(await seqs(NOW + 30)).toEqual([7]);
        expect(await seqs(NOW + 31)).toEqual([]);
        expect(await seqs(NOW, 0)).toEqual([]);
        // Other shards are untouched; staged (uncommitted) records are invisible here too.
        expect(await f.log.readFromTime((shard + 1) % SHARDS, 0, 10)).toEqual([]);
        const staged = f.log.stage([], [insert('d1', 8)], NOW + 40);
        expect(await seqs(NOW + 31)).toEqual([]);
        f.log.abort(staged);
        const full = await f.log.readFromTime(shard, NOW + 20, 1);
        expect(full).toStrictEqual(await f.log.read(shard, 3, 1));
      });

      it('readFromTime finds the boundary in a long shard', async () => {
        const f = await fixture();
        const shard = f.log.shardOf('d1');
        for (let i = 0; i < 300; i++) await write(f, [insert('d1', i)], NOW + i * 1000);
        for (const i of [0, 1, 2, 127, 128, 255, 298, 299]) {
          expect((await f.log.readFromTime(shard, NOW + i * 1000, 1))[0]?.sequenceNumber).toBe(i + 1);
          expect((await f.log.readFromTime(shard, NOW + i * 1000 - 500, 1))[0]?.sequenceNumber).toBe(i + 1);
        }
        expect(await f.log.readFromTime(shard, NOW + 299 * 1000 + 1, 1)).toEqual([]);
      });

      it('staged records are invisible until commit, even once their ops are durable', async () => {
        const f = await fixture();
        const shard = f.log.shardOf('d1');
        await write(f, [insert('d1', 1)]);
        const ops: BatchOp[] = [];
        const staged = f.log.stage(ops, [insert('d1', 2), insert('d1', 3)], NOW);
        expect(staged.map((r) => r.sequenceNumber)).toEqual([2, 3]);
        expect((await readAll(f.log, shard)).map((r) => r.sequenceNumber)).toEqual([1]);
        expect(await f.log.read(shard, 1, 10)).toEqual([]);
        expect((await f.log.shards())[shard]?.lastSequenceNumber).toBe(1);
        await f.commitOps(ops);
        expect((await readAll(f.log, shard)).map((r) => r.sequenceNumber)).toEqual([1]);
        f.log.commit(staged);
        expect((await readAll(f.log, shard)).map((r) => r.sequenceNumber)).toEqual([1, 2, 3]);
        expect((await f.log.shards())[shard]?.lastSequenceNumber).toBe(3);
      });

      it('abort hands the sequence numbers back: the next stage reuses them, leaving no gap', async () => {
        const f = await fixture();
        const [d0, d1] = devicePerShard(f.log) as [string, string];
        await write(f, [insert(d0, 1)]);
        const failed = f.log.stage([], [insert(d0, 2), insert(d1, 3), insert(d0, 4)], NOW);
        expect(failed.map((r) => [r.shard, r.sequenceNumber])).toEqual([
          [0, 2],
          [1, 1],
          [0, 3],
        ]);
        f.log.abort(failed);
        expect((await readAll(f.log, 0)).map((r) => r.ts)).toEqual([1]);
        expect(await readAll(f.log, 1)).toEqual([]);
        expect((await f.log.shards())[1]?.lastSequenceNumber).toBeNull();
        const retried = await write(f, [insert(d1, 30), insert(d0, 20)]);
        expect(retried.map((r) => [r.shard, r.sequenceNumber])).toEqual([
          [1, 1],
          [0, 2],
        ]);
        await write(f, [insert(d0, 40)]);
        expect((await readAll(f.log, 0)).map((r) => [r.sequenceNumber, r.ts])).toEqual([
          [1, 1],
          [2, 20],
          [3, 40],
        ]);
        expect((await readAll(f.log, 1)).map((r) => [r.sequenceNumber, r.ts])).toEqual([[1, 30]]);
      });
    });

    describe('trim (retention)', () => {
      it('removes only the records committed before the cut, and read() starts after them', async () => {
        const f = await fixture();
        const [d0, d1] = devicePerShard(f.log) as [string, string];
        await write(f, [insert(d0, 1), insert(d1, 1)], NOW);
        await write(f, [insert(d0, 2), insert(d0, 3)], NOW + 10);
        await write(f, [insert(d0, 4), insert(d1, 4)], NOW + 20);
        expect(await f.log.trim(NOW)).toBe(0);
        // Shard 0: 1 (NOW), 2 and 3 (NOW + 10) go; shard 1: 1 (NOW) goes.
        expect(await f.log.trim(NOW + 20)).toBe(4);
        expect((await readAll(f.log, 0)).map((r) => [r.sequenceNumber, r.ts])).toEqual([[4, 4]]);
        expect((await readAll(f.log, 1)).map((r) => [r.sequenceNumber, r.ts])).toEqual([[2, 4]]);
        expect((await f.log.read(0, 0, 1)).map((r) => r.sequenceNumber)).toEqual([4]);
        expect((await f.log.read(0, 2, 10)).map((r) => r.sequenceNumber)).toEqual([4]);
        expect((await f.log.readFromTime(0, 0, 10)).map((r) => r.sequenceNumber)).toEqual([4]);
        const shards = await f.log.shards();
        expect(shards[0]).toMatchObject({ firstSequenceNumber: 4, lastSequenceNumber: 4 });
        expect(shards[1]).toMatchObject({ firstSequenceNumber: 2, lastSequenceNumber: 2 });
        expect(shards[2]).toMatchObject({ firstSequenceNumber: null, lastSequenceNumber: null });
        expect(await f.log.trim(NOW + 20)).toBe(0);
      });

      it('keeps the last committed record of every shard, however old', async () => {
        const f = await fixture();
        const [d0, d1] = devicePerShard(f.log) as [string, string];
        await write(f, [insert(d0, 1), insert(d0, 2), insert(d0, 3), insert(d1, 1)], NOW);
        // Staged only: neither removed nor counted as the shard's last record.
        const staged = f.log.stage([], [insert(d0, 9)], NOW);
        expect(await f.log.trim(NOW + 1_000_000)).toBe(2);
        f.log.abort(staged);
        expect((await readAll(f.log, 0)).map((r) => r.sequenceNumber)).toEqual([3]);
        expect((await readAll(f.log, 1)).map((r) => r.sequenceNumber)).toEqual([1]);
        expect((await f.log.shards()).slice(0, 2)).toMatchObject([
          { firstSequenceNumber: 3, lastSequenceNumber: 3 },
          { firstSequenceNumber: 1, lastSequenceNumber: 1 },
        ]);
      });

      it('trims a long shard in one call', async () => {
        const f = await fixture();
        const shard = f.log.shardOf('d1');
        for (let i = 0; i < 50; i++) await write(f, Array.from({ length: 50 }, (_, j) => insert('d1', i * 50 + j)), NOW + i * 1000);
        expect(await f.log.trim(NOW + 40 * 1000)).toBe(2000);
        const left = await readAll(f.log, shard);
        expect(left).toHaveLength(500);
        expect(left[0]?.sequenceNumber).toBe(2001);
        expect((await f.log.shards())[shard]).toMatchObject({ firstSequenceNumber: 2001, lastSequenceNumber: 2500 });
      });

      it('sequence numbering continues after a trim', async () => {
        const f = await fixture();
        const [d0] = devicePerShard(f.log) as [string];
        await write(f, [insert(d0, 1), insert(d0, 2)], NOW);
        expect(await f.log.trim(NOW + 1)).toBe(1);
        const next = await write(f, [insert(d0, 3)], NOW + 2);
        expect(next.map((r) => r.sequenceNumber)).toEqual([3]);
        expect((await readAll(f.log, 0)).map((r) => r.sequenceNumber)).toEqual([2, 3]);
        expect((await f.log.shards())[0]).toMatchObject({ firstSequenceNumber: 2, lastSequenceNumber: 3 });
      });
    });

    describe('commit listeners', () => {
      it('get each committed group in commit order, and stop after unsubscribing', async () => {
        const f = await fixture();
        const [d0, d1] = devicePerShard(f.log) as [string, string];
        const groups: Array<Array<[string, number]>> = [];
        const unsubscribe = f.log.onCommit((records) => groups.push(records.map((r) => [r.deviceId, r.sequenceNumber])));
        await write(f, [insert(d0, 1), insert(d1, 2), insert(d0, 3)]);
        const aborted = f.log.stage([], [insert(d0, 4)], NOW);
        f.log.abort(aborted);
        await write(f, [insert(d0, 5)]);
        expect(groups).toEqual([
          [
            [d0, 1],
            [d1, 1],
            [d0, 2],
          ],
          [[d0, 3]],
        ]);
        unsubscribe();
        await write(f, [insert(d0, 6)]);
        expect(groups).toHaveLength(2);
      });

      it('a throwing listener does not fail the commit nor starve the other listeners', async () => {
        const f = await fixture();
        // The log may report the failure as a process warning; keep the test output quiet.
        vi.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
        const before: number[] = [];
        const after: number[] = [];
        f.log.onCommit((records) => before.push(...records.map((r) => r.ts)));
        f.log.onCommit(() => {
          throw new Error('listener bug');
        });
        f.log.onCommit((records) => after.push(...records.map((r) => r.ts)));
        await write(f, [insert('d1', 1)]);
        await write(f, [insert('d1', 2)]);
        expect(before).toEqual([1, 2]);
        expect(after).toEqual([1, 2]);
        expect((await readAll(f.log, f.log.shardOf('d1'))).map((r) => r.ts)).toEqual([1, 2]);
      });
    });

    if (supports.durable) {
      describe('durability', () => {
        async function durable(): Promise<ChangeLogFixture & { reopen: NonNullable<ChangeLogFixture['reopen']> }> {
          const f = await fixture();
          if (!f.reopen) throw new Error(`${name} declares supports.durable but its fixture has no reopen()`);
          return f as ChangeLogFixture & { reopen: NonNullable<ChangeLogFixture['reopen']> };
        }

        it('reads back every record identically after reopen, with the same stream ARN', async () => {
          const f = await durable();
          const [d0, d1, d2] = devicePerShard(f.log) as [string, string, string];
          const written = [
            ...(await write(f, [insert(d0, 1, { t: 1.5, nested: { deep: { s: 'x' } } }), insert(d1, 2)], NOW)),
            ...(await write(f, [{ eventName: 'MODIFY', deviceId: d0, ts: 1, seq: 0, newValues: { t: 2 }, oldValues: { t: 1.5, nested: { deep: { s: 'x' } } } }], NOW + 1)),
            ...(await write(f, [{ eventName: 'REMOVE', deviceId: d2, ts: 3, seq: 4, oldValues: { gone: true }, byService: true }], NOW + 2)),
          ];
          const arn = f.log.streamArn;
          const shardsBefore = await f.log.shards();
          const log = await f.reopen();
          expect(f.log).toBe(log);
          expect(log.streamArn).toBe(arn);
          expect(log.shardCount).toBe(SHARDS);
          expect(await log.shards()).toEqual(shardsBefore);
          const back: ChangeRecord[] = [];
          for (let shard = 0; shard < SHARDS; shard++) back.push(...(await readAll(log, shard)));
          const byPlace = (a: ChangeRecord, b: ChangeRecord): number => a.shard - b.shard || a.sequenceNumber - b.sequenceNumber;
          expect(back).toStrictEqual([...written].sort(byPlace));
          for (const id of [d0, d1, d2]) expect(log.shardOf(id)).toBe(written.find((r) => r.deviceId === id)?.shard);
        });

        it('continues each shard’s sequence after reopen; records never made durable are gone', async () => {
          const f = await durable();
          const [d0, d1] = devicePerShard(f.log) as [string, string];
          await write(f, [insert(d0, 1), insert(d0, 2), insert(d1, 3)]);
          // Staged but never committed when the process stops: as if the batch failed.
          f.log.stage([], [insert(d0, 4), insert(d1, 5)], NOW);
          const log = await f.reopen();
          const next = await write(f, [insert(d0, 6), insert(d1, 7), insert(d1, 8)]);
          expect(next.map((r) => [r.shard, r.sequenceNumber])).toEqual([
            [0, 3],
            [1, 2],
            [1, 3],
          ]);
          expect((await readAll(log, 0)).map((r) => r.ts)).toEqual([1, 2, 6]);
          expect((await readAll(log, 1)).map((r) => r.ts)).toEqual([3, 7, 8]);
          expect((await log.shards()).slice(0, 2)).toMatchObject([
            { firstSequenceNumber: 1, lastSequenceNumber: 3 },
            { firstSequenceNumber: 1, lastSequenceNumber: 3 },
          ]);
        });

        it('continues each shard’s sequence after a trim and a reopen', async () => {
          const f = await durable();
          const [d0, d1] = devicePerShard(f.log) as [string, string];
          await write(f, [insert(d0, 1), insert(d0, 2), insert(d1, 3)], NOW);
          await write(f, [insert(d0, 4)], NOW + 10);
          expect(await f.log.trim(NOW + 1_000)).toBe(2);
          const log = await f.reopen();
          expect((await log.shards()).slice(0, 2)).toMatchObject([
            { firstSequenceNumber: 3, lastSequenceNumber: 3 },
            { firstSequenceNumber: 1, lastSequenceNumber: 1 },
          ]);
          const next = await write(f, [insert(d0, 5), insert(d1, 6)], NOW + 20);
          expect(next.map((r) => [r.shard, r.sequenceNumber])).toEqual([
            [0, 4],
            [1, 2],
          ]);
          expect((await readAll(log, 0)).map((r) => [r.sequenceNumber, r.ts])).toEqual([
            [3, 4],
            [4, 5],
          ]);
          expect((await readAll(log, 1)).map((r) => [r.sequenceNumber, r.ts])).toEqual([
            [1, 3],
            [2, 6],
          ]);
        });

        it('refuses to reopen with a different shard count (Conflict)', async () => {
          const f = await durable();
          await write(f, [insert('d1', 1)]);
          await expect(f.reopen({ shards: SHARDS + 1 })).rejects.toMatchObject({ code: 'Conflict' });
          await expect(f.reopen({ shards: 1 })).rejects.toMatchObject({ code: 'Conflict' });
          // The refusal changed nothing: the right count still opens the same log.
          const log = await f.reopen();
          expect((await readAll(log, log.shardOf('d1'))).map((r) => r.ts)).toEqual([1]);
        });
      });
    }
  });
}

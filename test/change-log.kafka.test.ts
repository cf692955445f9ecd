import { Packr } from 'msgpackr';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { KafkaClient } from '../cluster/kafka-client.js';
import { TributaryError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { Database } from '../store/database.js';
import { LevelTelemetryStore } from '../store/level-store.js';
import { decodeRecord, encodeRecord } from '../streams/codec.js';
import { changeKey } from '../streams/embedded-log.js';
import { KafkaChangeLog } from '../streams/kafka-log.js';
import { toStreamRecord } from '../streams/lambda-event.js';
import type { BatchOp, Change, ChangeLog, ChangeRecord } from '../streams/types.js';
import { tempDir } from './helpers.js';
import { describeWithKafka, uniqueTopic } from './kafka/broker.js';
import { runChangeLogSuite, type ChangeLogFixture } from './suites/change-log.suite.js';

// `source` is internal (cluster mode): encoded after `origin`, never rendered for handlers.
describe('change record codec: source', () => {
  const packr = new Packr({ useRecords: false });
  const base: ChangeRecord = { eventName: 'MODIFY', deviceId: 'd1', ts: 5, seq: 1, shard: 3, sequenceNumber: 9, createdAt: 1_700_000_000_000, newValues: { v: 2 }, oldValues: { v: 1 } };

  it('encodes a record without a source exactly as before sources existed', () => {
    expect(encodeRecord(base).equals(packr.pack([1, 'd1', 5, 1, base.createdAt, { v: 2 }, { v: 1 }, 0]))).toBe(true);
    const origin = { function: 'f', hops: 2 };
    expect(encodeRecord({ ...base, origin }).equals(packr.pack([1, 'd1', 5, 1, base.createdAt, { v: 2 }, { v: 1 }, 0, ['f', 2]]))).toBe(true);
    expect(decodeRecord(3, 9, packr.pack([1, 'd1', 5, 1, base.createdAt, { v: 2 }, { v: 1 }, 0, ['f', 2]]))).toStrictEqual({ ...base, origin });
  });

  it('round-trips source with and without origin, including source 0', () => {
    for (const record of [{ ...base, source: 0 }, { ...base, source: 2 ** 40 }, { ...base, origin: { function: 'f', hops: 1 }, source: 7 }]) {
      expect(decodeRecord(3, 9, encodeRecord(record))).toStrictEqual(record);
    }
  });

  it('renders no source field into the Lambda record', () => {
    // Only the event id may derive from it (de-duplication across writers).
    const arn = 'arn:aws:dynamodb:us-east-1:000000000000:table/telemetry/stream/2026-11-26T08:00:00.000';
    const { eventID: _withSource, ...rendered } = toStreamRecord({ ...base, source: 42 }, arn);
    const { eventID: _without, ...plain } = toStreamRecord(base, arn);
    expect(rendered).toStrictEqual(plain);
  });
});

describeWithKafka('ChangeLog compliance: kafka', (brokers) => {
  const logger = createLogger('silent');
  // One connection for the whole file; every fixture gets its own topics.
  let shared: Promise<KafkaClient> | undefined;
  const client = (): Promise<KafkaClient> => (shared ??= KafkaClient.connect({ brokers, clientId: 'tributary-test', logger }));
  afterAll(async () => {
    await (await shared)?.close();
  });

  // Owning every shard from open, and owning none until each is acquired: once its shards
  // are acquired, a cluster-mode log keeps the same contract.
  for (const owned of ['all', 'none'] as const) {
    runChangeLogSuite({
      name: owned === 'all' ? 'kafka' : 'kafka, every shard acquired',
      supports: { durable: true },
      factory: async ({ shards }) => {
        const kafka = await client();
        const dir = tempDir('tributary-kafkalog-');
        const topic = uniqueTopic('changes');
        let database = await Database.open(dir.path);
        const open = async (n: number): Promise<KafkaChangeLog> => {
          const log = await KafkaChangeLog.open({ client: kafka, database, topic, shards: n, replicationFactor: 1, retentionMs: 0, logger, owned });
          if (owned === 'none') for (let shard = 0; shard < n; shard++) await log.acquire(shard);
          return log;
        };
        let live: KafkaChangeLog | undefined = await open(shards);
        const fixture: ChangeLogFixture = {
          log: live,
          commitOps: (ops) => database.commit(ops),
          reopen: async (opts = {}): Promise<ChangeLog> => {
            await live?.close();
            live = undefined;
            await database.close();
            database = await Database.open(dir.path);
            live = await open(opts.shards ?? shards);
            fixture.log = live;
            return live;
          },
          close: async () => {
            await live?.close();
            await database.close();
            await kafka.deleteTopic(topic).catch(() => undefined);
            await kafka.deleteTopic(`${topic}.meta`).catch(() => undefined);
            dir.cleanup();
          },
        };
        return fixture;
      },
    });
  }

  // What the shared suite cannot see: the outbox, topic checks and a second writer.
  describe('KafkaChangeLog on a real broker', () => {
    const cleanups: Array<() => Promise<void>> = [];
    afterEach(async () => {
      vi.restoreAllMocks();
      for (const c of cleanups.splice(0).reverse()) await c();
    });
    const insert = (deviceId: string, ts: number): Change => ({ eventName: 'INSERT', deviceId, ts, seq: 0, newValues: { v: ts } });
    async function openDatabase(dir = tempDir('tributary-kafkalog-')): Promise<{ database: Database; path: string }> {
      const database = await Database.open(dir.path);
      cleanups.push(async () => {
        await database.close();
        dir.cleanup();
      });
      return { database, path: dir.path };
    }
    async function openLog(database: Database, topic: string, opts: { retentionMs?: number; owned?: 'all' | 'none' } = {}): Promise<KafkaChangeLog> {
      const kafka = await client();
      const log = await KafkaChangeLog.open({ client: kafka, database, topic, shards: 2, replicationFactor: 1, retentionMs: opts.retentionMs ?? 0, logger, owned: opts.owned ?? 'all' });
      cleanups.push(() => log.close());
      return log;
    }
    function dropTopicsAfter(topic: string): void {
      cleanups.unshift(async () => {
        const kafka = await client();
        for (const t of [topic, `${topic}.meta`]) await kafka.deleteTopic(t).catch(() => undefined);
      });
    }

    it('sends a batch that became durable but was never committed (a crash in between) at the next open, once', async () => {
      const topic = uniqueTopic('outbox');
      dropTopicsAfter(topic);
      const dir = tempDir('tributary-kafkalog-');
      let database = await Database.open(dir.path);
      const first = await KafkaChangeLog.open({ client: await client(), database, topic, shards: 2, replicationFactor: 1, retentionMs: 0, logger });
      const ops: BatchOp[] = [];
      const staged = first.stage(ops, [insert('d1', 1), insert('d1', 2), insert('d1', 3)], Date.now());
      await database.commit(ops);
      // The process dies here: the batch is on disk, commit() never ran, Kafka has nothing.
      await first.close();
      await database.close();
      database = await Database.open(dir.path);
      cleanups.push(async () => {
        await database.close();
        dir.cleanup();
      });
      const shard = first.shardOf('d1');
      const reopened = await openLog(database, topic);
      expect(await reopened.read(shard, 0, 100)).toStrictEqual(staged);
      // Opening again re-sends nothing: the records are on Kafka exactly once.
      await reopened.close();
      const again = await openLog(database, topic);
      expect((await again.shards())[shard]).toMatchObject({ firstSequenceNumber: 1, lastSequenceNumber: 3 });
      expect((await again.read(shard, 0, 100)).map((r) => r.sequenceNumber)).toEqual([1, 2, 3]);
    });

    it('refuses a compacted topic and one whose retention is shorter than the stream retention (Conflict)', async () => {
      const kafka = await client();
      const { database } = await openDatabase();
      const compacted = uniqueTopic('compacted');
      dropTopicsAfter(compacted);
      await kafka.ensureTopic({ name: compacted, partitions: 2, replicationFactor: 1, configs: { 'cleanup.policy': 'compact' } });
      await expect(openLog(database, compacted)).rejects.toMatchObject({ code: 'Conflict', message: expect.stringContaining('cleanup.policy') });
      const short = uniqueTopic('short');
      dropTopicsAfter(short);
      await kafka.ensureTopic({ name: short, partitions: 2, replicationFactor: 1, configs: { 'retention.ms': String(3_600_000) } });
      await expect(openLog(database, short, { retentionMs: 86_400_000 })).rejects.toMatchObject({ code: 'Conflict', message: expect.stringContaining('retention.ms=3600000') });
      await expect(openLog(database, short, { retentionMs: 0 })).rejects.toMatchObject({ code: 'Conflict' });
      // A topic created by the log keeps at least the stream retention.
      const made = uniqueTopic('made');
      dropTopicsAfter(made);
      await openLog(database, made, { retentionMs: 86_400_000 });
      await expect(openLog(database, made, { retentionMs: 2 * 86_400_000 })).rejects.toMatchObject({ code: 'Conflict' });
    });

    it("carries the store's writes to Kafka: the engine's batch holds the outbox", async () => {
      const topic = uniqueTopic('store');
      dropTopicsAfter(topic);
      const { database } = await openDatabase();
      const log = await openLog(database, topic);
      const store = await LevelTelemetryStore.open({ database, changeLog: log, partitionWindowMs: 86_400_000, maxBatch: 1000, maxDelayMs: 0 });
      cleanups.push(() => store.close());
      const devices = ['d1', 'd2', 'd3', 'd4', 'd5'];
      await Promise.all(devices.flatMap((deviceId) => Array.from({ length: 10 }, (_, i) => store.write({ deviceId, readings: [{ ts: 1_000 + i, values: { i } }] }))));
      await store.write({ deviceId: 'd1', readings: [{ ts: 1_000, values: { i: -1 } }] });
      const records = [];
      for (let shard = 0; shard < 2; shard++) records.push(...(await log.read(shard, 0, 1_000)));
      expect(records).toHaveLength(51);
      for (const deviceId of devices) {
        const mine = records.filter((r) => r.deviceId === deviceId);
        expect(mine.slice(0, 10).map((r) => [r.eventName, r.ts])).toEqual(Array.from({ length: 10 }, (_, i) => ['INSERT', 1_000 + i]));
      }
      expect(records.find((r) => r.eventName === 'MODIFY')).toMatchObject({ deviceId: 'd1', ts: 1_000, newValues: { i: -1 }, oldValues: { i: 0 } });
      // Another node reading the topic sees the same records: sequence number = offset + 1.
      const kafka = await client();
      const shard = log.shardOf('d1');
      const raw = await kafka.fetch(topic, shard, 0);
      expect(raw.map((m) => m.offset + 1)).toEqual((await log.read(shard, 0, 1_000)).map((r) => r.sequenceNumber));
    });

    it('re-sends from the outbox after a failed send, in order and without gaps', async () => {
      const topic = uniqueTopic('retry');
      dropTopicsAfter(topic);
      const { database } = await openDatabase();
      const log = await openLog(database, topic);
      const kafka = await client();
      // The broker is real; only the first send after this point fails, as if the connection dropped.
      const send = vi.spyOn(kafka, 'send').mockRejectedValueOnce(new Error('connection lost'));
      const shard = log.shardOf('d1');
      for (let i = 1; i <= 3; i++) {
        const ops: BatchOp[] = [];
        const records = log.stage(ops, [insert('d1', i)], Date.now());
        await database.commit(ops);
        log.commit(records);
      }
      expect((await log.read(shard, 0, 10)).map((r) => [r.sequenceNumber, r.ts])).toEqual([
        [1, 1],
        [2, 2],
        [3, 3],
      ]);
      expect(send.mock.calls.length).toBeGreaterThan(1);
    });

    it('stops taking writes when another writer has appended to its partition', async () => {
      const topic = uniqueTopic('two-writers');
      dropTopicsAfter(topic);
      const a = await openLog((await openDatabase()).database, topic);
      const { database: dbB } = await openDatabase();
      const b = await openLog(dbB, topic);
      const shard = a.shardOf('d1');
      const write = async (log: KafkaChangeLog, database: Database | undefined, change: Change): Promise<void> => {
        const ops: BatchOp[] = [];
        const records = log.stage(ops, [change], Date.now());
        if (database) await database.commit(ops);
        log.commit(records);
      };
      await write(a, undefined, insert('d1', 1));
      expect((await a.read(shard, 0, 10)).map((r) => r.ts)).toEqual([1]);
      // b still believes the partition is empty: Kafka puts its record at offset 1, not 0.
      await write(b, dbB, insert('d1', 2));
      await b.read(shard, 0, 10);
      expect(() => b.stage([], [insert('d1', 3)], Date.now())).toThrow(expect.objectContaining({ code: 'StoreUnavailable', message: expect.stringContaining('another node writes') }));
      // What Kafka holds is intact and in order.
      expect((await a.read(shard, 0, 10)).map((r) => [r.sequenceNumber, r.ts])).toEqual([
        [1, 1],
        [2, 2],
      ]);
    });

    describe('shards handed over (owned: none)', () => {
      const sourced = (deviceId: string, source: number, ts = source): Change => ({ ...insert(deviceId, ts), source });
      /** stage → durable batch → commit, as the store's write path does. */
      async function commitChanges(log: KafkaChangeLog, database: Database, changes: Change[]): Promise<ChangeRecord[]> {
        const ops: BatchOp[] = [];
        const records = log.stage(ops, changes, Date.now());
        await database.commit(ops);
        log.commit(records);
        return records;
      }
      /** [sequence number, source] of every outbox entry of the shard. */
      async function outbox(database: Database, shard: number): Promise<Array<[number, number | undefined]>> {
        const entries = await database.read((db) => db.iterator({ gte: changeKey(shard, 0), lt: changeKey(shard + 1, 0) }).all());
        return entries.map(([key, value]) => {
          const r = decodeRecord(shard, Number(key.readBigUInt64BE(3)), value);
          return [r.sequenceNumber, r.source];
        });
      }
      /** [sequence number, source] of every record Kafka has of the shard. */
      async function onTopic(log: KafkaChangeLog, shard: number): Promise<Array<[number, number | undefined]>> {
        return (await log.read(shard, 0, 10_000)).map((r) => [r.sequenceNumber, r.source]);
      }
      /** Two nodes, each with its own database, sharing `topic` and owning nothing yet; `shard` is d1's. */
      async function twoNodes(topic: string): Promise<{ a: KafkaChangeLog; b: KafkaChangeLog; dbA: Database; dbB: Database; shard: number }> {
        dropTopicsAfter(topic);
        const { database: dbA } = await openDatabase();
        const { database: dbB } = await openDatabase();
        const a = await openLog(dbA, topic, { owned: 'none' });
        const b = await openLog(dbB, topic, { owned: 'none' });
        return { a, b, dbA, dbB, shard: a.shardOf('d1') };
      }
      const notOwned = (shard: number): unknown => expect.objectContaining({ code: 'StoreUnavailable', message: expect.stringContaining(`shard ${shard} `) });

      it('hands a shard from node to node: numbering goes on gap-free and either node reads every record once, in order', async () => {
        const topic = uniqueTopic('handover');
        const { a, b, dbA, dbB, shard } = await twoNodes(topic);
        expect(a.ownedShards()).toEqual([]);
        expect(() => a.stage([], [sourced('d1', 0)], Date.now())).toThrow(notOwned(shard));
        await a.acquire(shard);
        expect(a.ownedShards()).toEqual([shard]);
        expect(a.owns(1 - shard)).toBe(false);
        await commitChanges(a, dbA, [0, 1, 2].map((s) => sourced('d1', s)));
        await a.release(shard);
        expect(a.owns(shard)).toBe(false);
        expect(() => a.stage([], [sourced('d1', 3)], Date.now())).toThrow(notOwned(shard));

        await b.acquire(shard);
        expect((await commitChanges(b, dbB, [3, 4].map((s) => sourced('d1', s)))).map((r) => r.sequenceNumber)).toEqual([4, 5]);
        const expected: Array<[number, number]> = [
          [1, 0],
          [2, 1],
          [3, 2],
          [4, 3],
          [5, 4],
        ];
        // The writer reads its own writes; then the other node sees the same.
        expect(await onTopic(b, shard)).toEqual(expected);
        expect(await onTopic(a, shard)).toEqual(expected);
        expect((await a.shards())[shard]).toMatchObject({ firstSequenceNumber: 1, lastSequenceNumber: 5 });
        expect((await a.readFromTime(shard, 0, 10)).map((r) => r.sequenceNumber)).toEqual([1, 2, 3, 4, 5]);

        // Back to the first node: its outbox entries are on Kafka (by source), so none is sent again.
        await b.release(shard);
        expect(await outbox(dbA, shard)).toEqual(expected.slice(0, 3));
        await a.acquire(shard);
        expect(await outbox(dbA, shard)).toEqual([]);
        expect((await commitChanges(a, dbA, [sourced('d1', 5)])).map((r) => r.sequenceNumber)).toEqual([6]);
        expect(await onTopic(a, shard)).toEqual([...expected, [6, 5]]);
        expect(await onTopic(b, shard)).toEqual([...expected, [6, 5]]);
      });

      it('on acquire, resends the outbox a crash left behind, renumbered after the end, and drops what Kafka has by source', async () => {
        const topic = uniqueTopic('handover-outbox');
        dropTopicsAfter(topic);
        const dirA = tempDir('tributary-kafkalog-');
        let dbA = await Database.open(dirA.path);
        const first = await KafkaChangeLog.open({ client: await client(), database: dbA, topic, shards: 2, replicationFactor: 1, retentionMs: 0, logger, owned: 'none' });
        const shard = first.shardOf('d1');
        await first.acquire(shard);
        await commitChanges(first, dbA, [0, 1, 2].map((s) => sourced('d1', s)));
        // Durable in the node's database, never handed to Kafka: the node dies here.
        const ops: BatchOp[] = [];
        first.stage(ops, [3, 4, 5].map((s) => sourced('d1', s)), Date.now());
        await dbA.commit(ops);
        await first.close();
        await dbA.close();

        // Meanwhile another node rebuilds the shard as far as source 3, then writes a retention record (no source).
        const { database: dbB } = await openDatabase();
        const b = await openLog(dbB, topic, { owned: 'none' });
        await b.acquire(shard);
        expect((await commitChanges(b, dbB, [0, 1, 2, 3].map((s) => sourced('d1', s)))).map((r) => [r.sequenceNumber, r.source])).toEqual([[4, 3]]);
        await commitChanges(b, dbB, [{ eventName: 'REMOVE', deviceId: 'd1', ts: 0, seq: 0, oldValues: { v: 0 }, byService: true }]);
        await b.release(shard);

        dbA = await Database.open(dirA.path);
        cleanups.push(async () => {
          await dbA.close();
          dirA.cleanup();
        });
        expect(await outbox(dbA, shard)).toEqual([0, 1, 2, 3, 4, 5].map((s) => [s + 1, s]));
        const a = await openLog(dbA, topic, { owned: 'none' });
        await a.acquire(shard);
        // Sources 0-3 are on Kafka (the last source is found behind the retention record): only 4 and 5 are sent.
        expect(await outbox(dbA, shard)).toEqual([
          [6, 4],
          [7, 5],
        ]);
        expect(await onTopic(a, shard)).toEqual([[1, 0], [2, 1], [3, 2], [4, 3], [5, undefined], [6, 4], [7, 5]]);
        expect((await commitChanges(a, dbA, [sourced('d1', 6)])).map((r) => r.sequenceNumber)).toEqual([8]);
        await a.trim(0);
        expect(await outbox(dbA, shard)).toEqual([]);
      });

      it('drops changes whose source is already published, and only those', async () => {
        const topic = uniqueTopic('suppress');
        dropTopicsAfter(topic);
        const { database } = await openDatabase();
        const log = await openLog(database, topic, { owned: 'none' });
        const shard = log.shardOf('d1');
        await log.acquire(shard);
        await commitChanges(log, database, [0, 1, 2].map((s) => sourced('d1', s)));
        // A failed batch does not count as published: its changes are staged again.
        const failed = log.stage([], [sourced('d1', 3)], Date.now());
        log.abort(failed);
        const staged = await commitChanges(log, database, [sourced('d1', 1), sourced('d1', 2), insert('d1', 100), sourced('d1', 3)]);
        expect(staged.map((r) => [r.sequenceNumber, r.ts, r.source])).toEqual([
          [4, 100, undefined],
          [5, 3, 3],
        ]);
        // One write's changes share its source; a later write with it again is dropped whole.
        expect((await commitChanges(log, database, [sourced('d1', 4, 40), sourced('d1', 4, 41)])).map((r) => r.sequenceNumber)).toEqual([6, 7]);
        expect(log.stage([], [sourced('d1', 4, 40), sourced('d1', 3)], Date.now())).toEqual([]);
        expect((await onTopic(log, shard)).map(([, source]) => source)).toEqual([0, 1, 2, undefined, 3, 4, 4]);

        // Acquired afresh by a node with no outbox, the shard remembers its last source from Kafka.
        await log.release(shard);
        const { database: other } = await openDatabase();
        const next = await openLog(other, topic, { owned: 'none' });
        await next.acquire(shard);
        expect(next.stage([], [sourced('d1', 4)], Date.now())).toEqual([]);
        expect((await commitChanges(next, other, [sourced('d1', 5)])).map((r) => r.sequenceNumber)).toEqual([8]);
      });

      it('when another writer got in, warns, acquires the shard again and resends only what Kafka lacks', async () => {
        const topic = uniqueTopic('rebalance');
        const { a, b, dbA, dbB, shard } = await twoNodes(topic);
        // A rebalance race: both nodes believe they own the shard, both saw it empty.
        await a.acquire(shard);
        await b.acquire(shard);
        await commitChanges(a, dbA, [sourced('d1', 0)]);
        expect(await onTopic(a, shard)).toEqual([[1, 0]]);
        const warn = vi.spyOn(logger, 'warn');
        // More than one send's worth: the first send lands at offset 1, not 0; the rest waits for the re-acquire.
        const staged = await commitChanges(b, dbB, Array.from({ length: 501 }, (_, i) => sourced('d1', i + 1)));
        expect(staged.map((r) => r.sequenceNumber)).toEqual(Array.from({ length: 501 }, (_, i) => i + 1));
        const records = await onTopic(b, shard);
        expect(records.map(([seq]) => seq)).toEqual(Array.from({ length: 502 }, (_, i) => i + 1));
        expect(records.map(([, source]) => source)).toEqual(Array.from({ length: 502 }, (_, i) => i));
        expect(warn).toHaveBeenCalledWith(expect.objectContaining({ shard }), expect.stringContaining('acquiring the shard again'));
        // Still the writer, numbering after what Kafka has; nothing left in its outbox but published records.
        expect(b.owns(shard)).toBe(true);
        expect((await commitChanges(b, dbB, [sourced('d1', 502)])).map((r) => r.sequenceNumber)).toEqual([503]);
        expect((await onTopic(b, shard)).at(-1)).toEqual([503, 502]);
        expect(await onTopic(a, shard)).toHaveLength(503);
      });

      it("never splits one write's records (one source) across sends", async () => {
        const topic = uniqueTopic('whole-writes');
        dropTopicsAfter(topic);
        const { database } = await openDatabase();
        const log = await openLog(database, topic, { owned: 'none' });
        const shard = log.shardOf('d1');
        await log.acquire(shard);
        const send = vi.spyOn(await client(), 'send');
        const many = (source: number, n: number): Change[] => Array.from({ length: n }, (_, i) => sourced('d1', source, source * 1_000 + i));
        await commitChanges(log, database, many(1, 700));
        expect(await onTopic(log, shard)).toHaveLength(700);
        await commitChanges(log, database, [...many(2, 500), ...many(3, 10)]);
        expect(await onTopic(log, shard)).toHaveLength(1_210);
        expect(send.mock.calls.map(([, , records]) => records.length)).toEqual([700, 500, 10]);
      });

      it('releases within a bound when Kafka takes nothing, leaving the records to the next acquire', async () => {
        const topic = uniqueTopic('release-offline');
        dropTopicsAfter(topic);
        const { database } = await openDatabase();
        const log = await openLog(database, topic, { owned: 'none' });
        const shard = log.shardOf('d1');
        await log.acquire(shard);
        vi.spyOn(await client(), 'send').mockRejectedValue(new TributaryError('StoreUnavailable', 'Kafka: sending failed: connection lost'));
        await commitChanges(log, database, [sourced('d1', 0), sourced('d1', 1)]);
        await log.release(shard);
        expect(log.owns(shard)).toBe(false);
        // Not this node's shard any more: trim leaves its outbox alone.
        await log.trim(Date.now());
        expect(await outbox(database, shard)).toEqual([
          [1, 0],
          [2, 1],
        ]);
        vi.restoreAllMocks();
        await log.acquire(shard);
        expect(await onTopic(log, shard)).toEqual([
          [1, 0],
          [2, 1],
        ]);
      });

      it('owning every shard, refuses handovers (Conflict)', async () => {
        const topic = uniqueTopic('all');
        dropTopicsAfter(topic);
        const log = await openLog((await openDatabase()).database, topic);
        expect(log.ownedShards()).toEqual([0, 1]);
        await expect(log.acquire(0)).rejects.toMatchObject({ code: 'Conflict' });
        await expect(log.release(0)).rejects.toMatchObject({ code: 'Conflict' });
      });
    });
  });
});

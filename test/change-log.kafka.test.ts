import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { KafkaClient } from '../cluster/kafka-client.js';
import { createLogger } from '../core/logger.js';
import { Database } from '../store/database.js';
import { LevelTelemetryStore } from '../store/level-store.js';
import { KafkaChangeLog } from '../streams/kafka-log.js';
import type { BatchOp, Change, ChangeLog } from '../streams/types.js';
import { tempDir } from './helpers.js';
import { describeWithKafka, uniqueTopic } from './kafka/broker.js';
import { runChangeLogSuite, type ChangeLogFixture } from './suites/change-log.suite.js';

describeWithKafka('ChangeLog compliance: kafka', (brokers) => {
  const logger = createLogger('silent');
  // One connection for the whole file; every fixture gets its own topics.
  let shared: Promise<KafkaClient> | undefined;
  const client = (): Promise<KafkaClient> => (shared ??= KafkaClient.connect({ brokers, clientId: 'tributary-test', logger }));
  afterAll(async () => {
    await (await shared)?.close();
  });

  runChangeLogSuite({
    name: 'kafka',
    supports: { durable: true },
    factory: async ({ shards }) => {
      const kafka = await client();
      const dir = tempDir('tributary-kafkalog-');
      const topic = uniqueTopic('changes');
      let database = await Database.open(dir.path);
      const open = (n: number): Promise<KafkaChangeLog> => KafkaChangeLog.open({ client: kafka, database, topic, shards: n, replicationFactor: 1, retentionMs: 0, logger });
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
    async function openLog(database: Database, topic: string, opts: { retentionMs?: number } = {}): Promise<KafkaChangeLog> {
      const kafka = await client();
      const log = await KafkaChangeLog.open({ client: kafka, database, topic, shards: 2, replicationFactor: 1, retentionMs: opts.retentionMs ?? 0, logger });
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
  });
});

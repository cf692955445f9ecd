/**
 * KafkaCheckpointStore against a real broker: checkpoints are committed offsets of a
 * memberless consumer group per mapping, the tumbling window rides in the commit's
 * metadata, and any node's store sees any other's commits.
 */
import { afterAll, afterEach, beforeAll, expect, it, vi } from 'vitest';
import { KafkaCheckpointStore, MAX_WINDOW_METADATA_BYTES } from '../cluster/kafka-checkpoints.js';
import { KafkaClient } from '../cluster/kafka-client.js';
import { TributaryError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { describeWithKafka, uniqueTopic } from './kafka/broker.js';

describeWithKafka('KafkaCheckpointStore', (brokers) => {
  const logger = createLogger('silent');
  const topic = uniqueTopic('checkpoints');
  let client: KafkaClient;
  /** A second connection: another node. */
  let other: KafkaClient;

  beforeAll(async () => {
    client = await KafkaClient.connect({ brokers, clientId: 'tributary-test', logger });
    other = await KafkaClient.connect({ brokers, clientId: 'tributary-test-other', logger });
    await client.ensureLogTopic({ name: topic, partitions: 4, replicationFactor: 1, retentionMs: 0, retentionOf: 'the test' });
  }, 60_000);

  afterAll(async () => {
    await client?.deleteTopic(topic).catch(() => undefined);
    await Promise.all([client?.close(), other?.close()]);
  }, 60_000);

  afterEach(() => {
    vi.restoreAllMocks();
  });

  /** A store on `kafka` with a prefix of its own, so that no two tests share a group. */
  function storeOn(kafka: KafkaClient, groupPrefix: string): KafkaCheckpointStore {
    return new KafkaCheckpointStore({ client: kafka, topic, groupPrefix });
  }

  it('round-trips checkpoints and windows as committed offsets; unknown ones are undefined', { timeout: 60_000 }, async () => {
    const store = storeOn(client, `${uniqueTopic('g')}.`);
    expect(await store.read('fn', 't1', 0)).toBeUndefined();
    expect(await store.get('fn', 't1', 0)).toBeUndefined();

    await store.set('fn', 't1', 0, 0);
    await store.set('fn', 't1', 1, 42, { start: 60_000, state: { count: 3, text: 'é' } });
    expect(await store.get('fn', 't1', 0)).toBe(0);
    expect(await store.window('fn', 't1', 0)).toBeUndefined();
    expect(await store.read('fn', 't1', 1)).toEqual({ sequenceNumber: 42, window: { start: 60_000, state: { count: 3, text: 'é' } } });
    // Shards, triggers and functions are kept apart.
    expect(await store.get('fn', 't1', 2)).toBeUndefined();
    expect(await store.get('fn', 't2', 1)).toBeUndefined();
    expect(await store.get('fn2', 't1', 1)).toBeUndefined();

    // A window closed: the next checkpoint has none.
    await store.set('fn', 't1', 1, 43);
    expect(await store.read('fn', 't1', 1)).toEqual({ sequenceNumber: 43 });

    // The committed offset is the sequence number (record s is at offset s - 1), in the mapping's group.
    const offsets = await client.fetchGroupOffsets(store.groupOf('fn', 't1'), topic, [0, 1, 2]);
    expect([...offsets.values()]).toEqual([
      { partition: 0, offset: 0 },
      { partition: 1, offset: 43 },
    ]);
  });

  it('a second store on another connection sees the first one\'s commits, and the other way round', { timeout: 60_000 }, async () => {
    const prefix = `${uniqueTopic('g')}.`;
    const a = storeOn(client, prefix);
    const b = storeOn(other, prefix);
    await a.set('fn', 't', 3, 10, { start: 0, state: { from: 'a' } });
    expect(await b.read('fn', 't', 3)).toEqual({ sequenceNumber: 10, window: { start: 0, state: { from: 'a' } } });
    await b.set('fn', 't', 3, 17);
    expect(await a.read('fn', 't', 3)).toEqual({ sequenceNumber: 17 });
  });

  it('refuses a window that does not fit in the commit metadata, and commits nothing', { timeout: 60_000 }, async () => {
    const store = storeOn(client, `${uniqueTopic('g')}.`);
    await store.set('fn', 't', 0, 5);
    const commit = vi.spyOn(client, 'commitGroupOffsets');
    const state = { blob: 'x'.repeat(MAX_WINDOW_METADATA_BYTES) };
    const refused = await store.set('fn', 't', 0, 6, { start: 0, state }).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(TributaryError);
    expect(refused).toMatchObject({ code: 'PayloadTooLarge', message: expect.stringMatching(/shard 0 is \d+ bytes.*at most 4000/) });
    expect(commit).not.toHaveBeenCalled();
    expect(await store.read('fn', 't', 0)).toEqual({ sequenceNumber: 5 });

    // Just under the limit goes through (the broker's own limit is 4096).
    const fits = { start: 0, state: { blob: '' } };
    fits.state.blob = 'y'.repeat(MAX_WINDOW_METADATA_BYTES - JSON.stringify(fits).length);
    await store.set('fn', 't', 0, 7, fits);
    expect(await store.read('fn', 't', 0)).toEqual({ sequenceNumber: 7, window: fits });
  });

  it('coalesces the writes of one key while one is in flight (the latest wins) and keeps keys apart', { timeout: 60_000 }, async () => {
    const store = storeOn(client, `${uniqueTopic('g')}.`);
    const commit = vi.spyOn(client, 'commitGroupOffsets');
    const sets: Array<Promise<void>> = [];
    for (let seq = 1; seq <= 30; seq++) sets.push(store.set('fn', 't', 0, seq, seq === 30 ? { start: 0, state: { n: seq } } : undefined));
    sets.push(store.set('fn', 't', 1, 9));
    await Promise.all(sets);
    // Shard 0: the first commit, then one for everything that came while it was in flight; shard 1: one.
    expect(commit).toHaveBeenCalledTimes(3);
    expect(commit.mock.calls.map(([, , entries]) => entries)).toEqual([
      [{ partition: 0, offset: 1 }],
      [{ partition: 1, offset: 9 }],
      [{ partition: 0, offset: 30, metadata: '{"start":0,"state":{"n":30}}' }],
    ]);
    expect(await store.read('fn', 't', 0)).toEqual({ sequenceNumber: 30, window: { start: 0, state: { n: 30 } } });
    expect(await store.get('fn', 't', 1)).toBe(9);
  });

  it('a commit that fails rejects with StoreUnavailable; the next one goes ahead', { timeout: 60_000 }, async () => {
    const store = storeOn(client, `${uniqueTopic('g')}.`);
    // A group with a live member refuses memberless commits (ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID): a real broker failure.
    const groupId = store.groupOf('fn', 't');
    const consumer = client.consumer(groupId, { sessionTimeoutMs: 10_000 });
    await consumer.connect();
    try {
      await consumer.subscribe({ topic, fromBeginning: true });
      let joined = false;
      consumer.on(consumer.events.GROUP_JOIN, () => {
        joined = true;
      });
      await consumer.run({ eachBatch: async () => {} });
      for (const deadline = Date.now() + 30_000; !joined && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 50));
      expect(joined).toBe(true);
      const refused = await store.set('fn', 't', 0, 1).catch((err: unknown) => err);
      expect(refused).toMatchObject({ code: 'StoreUnavailable' });
    } finally {
      await consumer.disconnect();
    }
    // Once the group is empty again, commits work.
    await store.set('fn', 't', 0, 2);
    expect(await store.get('fn', 't', 0)).toBe(2);
  });
});

/**
 * The rejects log across nodes: appends go through a replicated `MetadataWriter`
 * (cluster/kafka-metadata.ts on a real Kafka), so every node's LevelDB has every node's
 * rejects; two nodes appending in the same millisecond do not overwrite each other's
 * entries; an append resolves once the entry is in the appending node's database; and each
 * node trims its own copy by its own bound.
 */
import { expect, it } from 'vitest';
import { KafkaMetadata } from '../cluster/kafka-metadata.js';
import { RejectsLog, type RejectInput } from '../ingest/rejects-log.js';
import { Database } from '../store/database.js';
import { tempDir, waitFor } from './helpers.js';
import { describeWithKafka, kafkaTestKit, uniqueTopic } from './kafka/broker.js';

const reject = (node: string, n: number): RejectInput => ({ transport: 'mqtt', reason: 'invalid_json', message: `${node} ${n}`, deviceId: `dev-${node}`, payload: Buffer.from(`garbage ${n}`) });

describeWithKafka('the rejects log across nodes (real Kafka)', (brokers) => {
  const { kafka, logger, cleanups } = kafkaTestKit(brokers);

  /** A node's database, its replica of the rejects topic and its rejects log, on one fixed clock. */
  async function node(topic: string, maxEntries: number): Promise<RejectsLog> {
    const client = await kafka();
    const dir = tempDir();
    const database = await Database.open(dir.path);
    const metadata = await KafkaMetadata.open({ client, database, topic, replicationFactor: 1, cleanup: { retentionMs: 86_400_000 }, logger });
    const log = await RejectsLog.open(database, { retentionMs: 86_400_000, maxEntries, now: () => 1_800_000_000_000, metadata });
    cleanups.push(dir.cleanup, () => database.close(), () => metadata.close(), () => log.close());
    return log;
  }

  const messages = async (log: RejectsLog): Promise<string[]> => (await log.list({ from: 0, to: 2_000_000_000_000, order: 'asc', limit: 1000 })).items.map((e) => e.message).sort();

  it('every node keeps every reject; appends in the same millisecond on two nodes do not collide; each node trims its copy', async () => {
    const client = await kafka();
    const topic = uniqueTopic('rejects');
    cleanups.push(() => client.deleteTopic(topic));
    const a = await node(topic, 1000);
    const b = await node(topic, 20);

    await Promise.all([...Array.from({ length: 10 }, (_, i) => a.append(reject('a', i))), ...Array.from({ length: 10 }, (_, i) => b.append(reject('b', i)))]);
    const all = [...Array.from({ length: 10 }, (_, i) => `a ${i}`), ...Array.from({ length: 10 }, (_, i) => `b ${i}`)].sort();
    await waitFor(async () => (await messages(a)).length === 20 && (await messages(b)).length === 20, 30_000, 'every reject on both nodes');
    expect(await messages(a)).toEqual(all);
    expect(await messages(b)).toEqual(all);
    expect([a.size, b.size]).toEqual([20, 20]);

    // Resolved means in the appending node's database.
    await a.append(reject('a', 10));
    expect(await messages(a)).toContain('a 10');

    // Past b's bound (20): b trims its own copy (as its minutely pass would), a keeps everything.
    for (let i = 11; i < 35; i++) await a.append(reject('a', i));
    await waitFor(
      async () => {
        await b.trim();
        // Until b has applied a's last append too (it arrives asynchronously) and trimmed after it.
        const kept = await messages(b);
        return kept.length === 20 && kept.includes('a 34') && (await messages(a)).length === 45;
      },
      30_000,
      "b trimming its copy to its bound",
    );
    expect(b.size).toBe(20);
    expect((await messages(a)).length).toBe(45);
    expect(a.size).toBe(45);
  }, 90_000);
});

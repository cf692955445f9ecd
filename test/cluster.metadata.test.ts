/**
 * The control plane on Kafka (cluster/kafka-metadata.ts) against a real broker: two
 * "nodes" — two LevelDBs, each with its own KafkaMetadata on one topic — apply every
 * node's writes in one order; a restart resumes from the node's own position; and the
 * modules on top (device credentials, API keys and admin keys, the DLQ, the audit log)
 * see on one node what was written on the other.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { ADMIN_KEY_ID, ApiKeyStore, newApiKeyToken } from '../access/api-keys.js';
import { AuditLog } from '../access/audit-log.js';
import { DeviceCredentials } from '../access/device-credentials.js';
import { secretDigest } from '../access/secrets.js';
import { KafkaClient } from '../cluster/kafka-client.js';
import { KafkaMetadata, type KafkaMetadataOptions } from '../cluster/kafka-metadata.js';
import { readConsumerOffset } from '../cluster/offsets.js';
import type { DiscardMetadata } from '../functions/event-source-mapping.js';
import { LevelDeadLetterQueue } from '../functions/dlq.js';
import { FunctionRegistry } from '../functions/registry.js';
import { Database } from '../store/database.js';
import type { BatchOp } from '../streams/types.js';
import { tempDir, waitFor } from './helpers.js';
import { describeWithKafka, kafkaTestKit, uniqueTopic } from './kafka/broker.js';
import { blobPackage } from './package-archives.js';

const WAIT_MS = 20_000;
const TEST_MS = 90_000;

/** Keys under a byte no table uses, so the ops touch nothing but themselves. */
function testKey(name: string): Buffer {
  return Buffer.from(`~${name}`, 'utf8');
}
function put(name: string, value: string): BatchOp {
  return { type: 'put', key: testKey(name), value: Buffer.from(value, 'utf8') };
}
function del(name: string): BatchOp {
  return { type: 'del', key: testKey(name) };
}
async function valueOf(database: Database, name: string): Promise<string | undefined> {
  return (await database.read((db) => db.get(testKey(name))))?.toString('utf8');
}
/** What a listener saw, as `put name=value` / `del name`, in order. */
function describeOps(ops: readonly BatchOp[]): string[] {
  return ops.map((op) => `${op.type} ${op.key.subarray(1).toString('utf8')}${op.type === 'put' ? `=${(op.value as Buffer).toString('utf8')}` : ''}`);
}

describeWithKafka('control plane metadata on Kafka (real broker)', (brokers) => {
  // Creates and deletes the tests' topics. The nodes have clients of their own (as on two
  // machines), closed before the topic is deleted: a client that still asks for a deleted
  // topic's metadata fails every request.
  const { kafka: admin, logger, cleanups } = kafkaTestKit(brokers, 'tributary-test-admin');

  /** A topic for this test, deleted after it. */
  function newTopic(label: string): string {
    const topic = uniqueTopic(label);
    cleanups.push(async () => (await admin()).deleteTopic(topic));
    return topic;
  }

  /** A topic for this test and one Kafka client per node. */
  async function setup(label: string): Promise<{ topic: string; clients: [KafkaClient, KafkaClient] }> {
    const topic = newTopic(label);
    const clients: [KafkaClient, KafkaClient] = [
      await KafkaClient.connect({ brokers, clientId: 'tributary-test-node-a', logger }),
      await KafkaClient.connect({ brokers, clientId: 'tributary-test-node-b', logger }),
    ];
    cleanups.push(() => Promise.all(clients.map((c) => c.close())).then(() => undefined));
    return { topic, clients };
  }

  interface Node {
    dir: { path: string; cleanup: () => void };
    database: Database;
    metadata: KafkaMetadata;
    /** Closes the metadata log and the database (the directory stays). */
    stop: () => Promise<void>;
  }

  async function startNode(client: KafkaClient, topic: string, opts: { dir?: Node['dir']; cleanup?: KafkaMetadataOptions['cleanup'] } = {}): Promise<Node> {
    const dir = opts.dir ?? tempDir('tributary-metadata-');
    if (opts.dir === undefined) cleanups.push(dir.cleanup);
    const database = await Database.open(dir.path);
    let metadata: KafkaMetadata;
    try {
      metadata = await KafkaMetadata.open({ client, database, topic, replicationFactor: 1, cleanup: opts.cleanup ?? { compact: true }, logger });
    } catch (err) {
      await database.close();
      throw err;
    }
    let stopped = false;
    const stop = async (): Promise<void> => {
      if (stopped) return;
      stopped = true;
      await metadata.close();
      await database.close();
    };
    cleanups.push(stop);
    return { dir, database, metadata, stop };
  }

  /** Records every op a node applies, in order, and how the ops were grouped. */
  function recorder(metadata: KafkaMetadata): { ops: string[]; calls: string[][] } {
    const seen = { ops: [] as string[], calls: [] as string[][] };
    cleanups.push(
      metadata.onApplied((ops) => {
        const described = describeOps(ops);
        seen.ops.push(...described);
        seen.calls.push(described);
      }),
    );
    return seen;
  }

  it(
    "applies both nodes' commits on both, in one order, each commit whole; a commit is applied here when it resolves; tombstones delete",
    async () => {
      const { topic, clients } = await setup('metadata');
      const a = await startNode(clients[0], topic);
      const b = await startNode(clients[1], topic);
      const seenA = recorder(a.metadata);
      const seenB = recorder(b.metadata);

      // Interleaved commits from both nodes, two ops each.
      const commits: Array<Promise<void>> = [];
      for (let i = 0; i < 10; i++) {
        commits.push(a.metadata.commit([put(`a${i}`, `1-${i}`), put(`a${i}-pair`, `2-${i}`)]));
        commits.push(b.metadata.commit([put(`b${i}`, `1-${i}`), put(`b${i}-pair`, `2-${i}`)]));
      }
      await Promise.all(commits);
      await waitFor(() => seenA.ops.length === 40 && seenB.ops.length === 40, WAIT_MS, 'both nodes to apply all 40 ops');
      expect(seenA.ops).toEqual(seenB.ops);
      expect(new Set(seenA.ops).size).toBe(40);
      // A commit's two ops are adjacent in the one order (one record batch).
      for (let i = 0; i < 40; i += 2) expect((seenA.ops[i + 1] as string).startsWith((seenA.ops[i] as string).split('=')[0] as string)).toBe(true);
      for (const node of [a, b]) expect(await valueOf(node.database, 'b7-pair')).toBe('2-7');

      // Resolved = applied on the committing node: no waiting needed to read it back.
      await b.metadata.commit([put('read-your-write', 'yes')]);
      expect(await valueOf(b.database, 'read-your-write')).toBe('yes');

      // A delete is a tombstone: it deletes on every node.
      await a.metadata.commit([del('b3'), put('after-delete', 'x')]);
      expect(await valueOf(a.database, 'b3')).toBeUndefined();
      await waitFor(async () => (await valueOf(b.database, 'after-delete')) === 'x', WAIT_MS, 'node B to apply the delete');
      expect(await valueOf(b.database, 'b3')).toBeUndefined();
      expect(seenB.ops.slice(-2)).toEqual(['del b3', 'put after-delete=x']);
    },
    TEST_MS,
  );

  it(
    'a restarted node resumes from its own position without applying anything twice, and catches up at open with what the other wrote meanwhile',
    async () => {
      const { topic, clients } = await setup('metadata-restart');
      const a = await startNode(clients[0], topic);
      const b = await startNode(clients[1], topic);
      await a.metadata.commit([put('k1', 'from-a'), put('k2', 'from-a')]);
      await waitFor(async () => (await valueOf(b.database, 'k2')) === 'from-a', WAIT_MS, 'node B to apply the first commit');
      await a.stop();

      // While A is down: B writes, deletes and overwrites.
      await b.metadata.commit([put('k3', 'from-b')]);
      await b.metadata.commit([del('k2'), put('k1', 'again-from-b')]);

      // A marker the log never wrote: re-applying A's own first commit would overwrite it.
      const database = await Database.open(a.dir.path);
      await database.commit([put('k1', 'marker'), put('k2', 'marker')]);
      await database.close();
      const restarted = await startNode(clients[0], topic, { dir: a.dir });
      const seen = recorder(restarted.metadata);
      // open resolves once caught up: no waiting.
      expect(await valueOf(restarted.database, 'k3')).toBe('from-b');
      expect(await valueOf(restarted.database, 'k2')).toBeUndefined();
      expect(await valueOf(restarted.database, 'k1')).toBe('again-from-b');
      // Offsets 0-1 (A's commit), 2 (k3), 3-4: the next to apply is 5.
      expect(await readConsumerOffset(restarted.database, topic, 0)).toBe(5);

      await restarted.metadata.close();
      await restarted.database.commit([put('k1', 'marker')]);
      const again = await KafkaMetadata.open({ client: clients[0], database: restarted.database, topic, replicationFactor: 1, cleanup: { compact: true }, logger });
      cleanups.push(() => again.close());
      const seenAgain = recorder(again);
      expect(await valueOf(restarted.database, 'k1')).toBe('marker');

      await b.metadata.commit([put('k4', 'from-b')]);
      await waitFor(async () => (await valueOf(restarted.database, 'k4')) === 'from-b', WAIT_MS, 'the restarted node to apply a new commit');
      // Exactly the new op, once (the closed instance's listener saw nothing after its close).
      expect(seenAgain.ops).toEqual(['put k4=from-b']);
      expect(seen.ops).toEqual([]);
      expect(await readConsumerOffset(restarted.database, topic, 0)).toBe(6);
    },
    TEST_MS,
  );

  it(
    'a position below the log start (records deleted) restarts from the log start',
    async () => {
      const { topic, clients } = await setup('metadata-trimmed');
      const cleanup = { retentionMs: 0 };
      const a = await startNode(clients[0], topic, { cleanup });
      const b = await startNode(clients[1], topic, { cleanup });
      await a.metadata.commit([put('k1', 'v')]);
      await a.stop();
      await b.metadata.commit([put('k2', 'never seen by A')]);
      await clients[1].deleteRecordsBefore(topic, 0, 2);
      await b.metadata.commit([put('k3', 'v')]);
      const restarted = await startNode(clients[0], topic, { dir: a.dir, cleanup });
      expect(await valueOf(restarted.database, 'k3')).toBe('v');
      // Lost to A: a topic that deletes by age cannot give it back (a compacted one would keep the latest of each key).
      expect(await valueOf(restarted.database, 'k2')).toBeUndefined();
      expect(await readConsumerOffset(restarted.database, topic, 0)).toBe(3);
    },
    TEST_MS,
  );

  it(
    'refuses a topic with another partition count, cleanup policy or a shorter life of deletions, naming the topic and the setting',
    async () => {
      const kafka = await admin();
      const dir = tempDir('tributary-metadata-');
      cleanups.push(dir.cleanup);
      const database = await Database.open(dir.path);
      cleanups.push(() => database.close());
      const open = (topic: string, cleanup: KafkaMetadataOptions['cleanup']) => KafkaMetadata.open({ client: kafka, database, topic, replicationFactor: 1, cleanup, logger });

      const twoPartitions = newTopic('metadata-two');
      await kafka.ensureTopic({ name: twoPartitions, partitions: 2, replicationFactor: 1, configs: { 'cleanup.policy': 'compact' } });
      await expect(open(twoPartitions, { compact: true })).rejects.toMatchObject({ code: 'Conflict', message: expect.stringMatching(new RegExp(`${twoPartitions.replaceAll('.', '\\.')} has 2 partitions`)) as unknown });

      const deleting = newTopic('metadata-delete');
      await kafka.ensureTopic({ name: deleting, partitions: 1, replicationFactor: 1, configs: { 'cleanup.policy': 'delete' } });
      await expect(open(deleting, { compact: true })).rejects.toMatchObject({ code: 'Conflict', message: expect.stringContaining(`${deleting} has cleanup.policy=delete`) as unknown });

      // Compacted, but deletions go after a day (the broker's default): a node away longer would keep what was deleted.
      const forgetful = newTopic('metadata-forgetful');
      await kafka.ensureTopic({ name: forgetful, partitions: 1, replicationFactor: 1, configs: { 'cleanup.policy': 'compact' } });
      await expect(open(forgetful, { compact: true })).rejects.toMatchObject({ code: 'Conflict', message: expect.stringContaining(`${forgetful} drops deletions after delete.retention.ms=86400000`) as unknown });

      // Keeps deletions, but a function's code (one record of up to 5 MiB) would not fit.
      const narrow = newTopic('metadata-narrow');
      await kafka.ensureTopic({ name: narrow, partitions: 1, replicationFactor: 1, configs: { 'cleanup.policy': 'compact', 'delete.retention.ms': String(100 * 365 * 86_400_000) } });
      await expect(open(narrow, { compact: true })).rejects.toMatchObject({ code: 'Conflict', message: expect.stringContaining(`${narrow} takes records of at most max.message.bytes=`) as unknown });

      // The topic open creates is right for it, and refused as a log.
      const compacted = newTopic('metadata-compact');
      const fine = await open(compacted, { compact: true });
      await fine.close();
      await expect(open(compacted, { retentionMs: 0 })).rejects.toMatchObject({ code: 'Conflict', message: expect.stringContaining(`${compacted} is compacted`) as unknown });
      await (await open(compacted, { compact: true })).close();
    },
    TEST_MS,
  );

  it(
    'device credentials: issued on A verifies on B; rotated on A or revoked on B, the old secret fails on both and the other node hears of it',
    async () => {
      const { topic, clients } = await setup('metadata-credentials');
      const a = await startNode(clients[0], topic);
      const b = await startNode(clients[1], topic);
      const credsA = await DeviceCredentials.open(a.database, { metadata: a.metadata });
      const credsB = await DeviceCredentials.open(b.database, { metadata: b.metadata });
      const invalidatedA: string[] = [];
      const invalidatedB: string[] = [];
      cleanups.push(credsA.onInvalidated((id) => invalidatedA.push(id)));
      cleanups.push(credsB.onInvalidated((id) => invalidatedB.push(id)));

      const first = await credsA.issue('dev-1');
      expect(credsA.verify('dev-1', first.secret)).toBe(true);
      await waitFor(() => credsB.verify('dev-1', first.secret), WAIT_MS, 'node B to accept the secret issued on A');
      expect(invalidatedB).toEqual([]);

      const second = await credsA.issue('dev-1');
      expect(second.rotated).toBe(true);
      await waitFor(() => credsB.verify('dev-1', second.secret), WAIT_MS, 'node B to accept the rotated secret');
      expect(credsB.verify('dev-1', first.secret)).toBe(false);
      expect(invalidatedB).toEqual(['dev-1']);
      expect(invalidatedA).toEqual(['dev-1']);

      expect(await credsB.revoke('dev-1')).toBe(true);
      expect(credsB.verify('dev-1', second.secret)).toBe(false);
      await waitFor(() => !credsA.has('dev-1'), WAIT_MS, 'node A to apply the revoke');
      expect(credsA.verify('dev-1', second.secret)).toBe(false);
      expect(invalidatedA).toEqual(['dev-1', 'dev-1']);
      expect(invalidatedB).toEqual(['dev-1', 'dev-1']);

      // A node opened later loads what both wrote.
      await credsB.issue('dev-2');
      const late = await DeviceCredentials.open(a.database, { metadata: a.metadata });
      await waitFor(() => late.has('dev-2'), WAIT_MS, 'a later-opened instance to see dev-2');
      expect(late.has('dev-1')).toBe(false);
    },
    TEST_MS,
  );

  it(
    "API keys: created on A authorizes on B; deleted on B, it stops on A although A had verified it; any node's admin key works on every node, a rotated one stops everywhere",
    async () => {
      const { topic, clients } = await setup('metadata-keys');
      const a = await startNode(clients[0], topic);
      const b = await startNode(clients[1], topic);
      const adminA = newApiKeyToken(ADMIN_KEY_ID);
      const adminB = newApiKeyToken(ADMIN_KEY_ID);
      const keysA = await ApiKeyStore.open({ database: a.database, metadata: a.metadata, adminDigest: secretDigest(adminA), shareAdminKey: true });
      const keysB = await ApiKeyStore.open({ database: b.database, metadata: b.metadata, adminDigest: secretDigest(adminB), shareAdminKey: true });

      const { key, token } = await keysA.create({ name: 'reader', policy: { statements: [{ actions: ['telemetry:Read'], devices: ['site-*'] }] } });
      expect(keysA.verify(token)?.keyId).toBe(key.id);
      await waitFor(() => keysB.verify(token), WAIT_MS, 'node B to accept the key created on A');
      expect(keysB.list({ limit: 10 }).items).toEqual([key]);

      await keysB.delete(key.id);
      expect(keysB.verify(token)).toBeUndefined();
      await waitFor(() => keysA.verify(token) === undefined, WAIT_MS, 'node A to refuse the key deleted on B');
      expect(keysA.list({ limit: 10 }).items).toEqual([]);

      // Each node's bootstrap admin key, on both nodes; not listed as a key.
      await waitFor(() => keysB.verify(adminA) && keysA.verify(adminB), WAIT_MS, "each node to accept the other's admin key");
      expect(keysB.verify(adminA)?.keyId).toBe(ADMIN_KEY_ID);
      expect(keysB.list({ limit: 10 }).items).toEqual([]);
      expect(keysB.verify(newApiKeyToken(ADMIN_KEY_ID))).toBeUndefined();

      // A restarts with a rotated admin key (admin.key deleted): the old one stops working on B.
      const rotated = newApiKeyToken(ADMIN_KEY_ID);
      const keysA2 = await ApiKeyStore.open({ database: a.database, metadata: a.metadata, adminDigest: secretDigest(rotated), shareAdminKey: true });
      await waitFor(() => keysB.verify(rotated), WAIT_MS, "node B to accept A's rotated admin key");
      expect(keysB.verify(adminA)).toBeUndefined();
      expect(keysA2.verify(adminA)).toBeUndefined();
      expect(keysA2.verify(adminB)?.keyId).toBe(ADMIN_KEY_ID);
    },
    TEST_MS,
  );

  it(
    'a DLQ entry and an audit entry written on A are listed on B; a DLQ entry deleted on B is gone on A',
    async () => {
      const { topic, clients } = await setup('metadata-dlq');
      const a = await startNode(clients[0], topic);
      const b = await startNode(clients[1], topic);
      const dlqA = new LevelDeadLetterQueue(a.database, a.metadata);
      const dlqB = new LevelDeadLetterQueue(b.database, b.metadata);
      const discarded: DiscardMetadata = {
        function: 'fn',
        functionVersion: 1,
        triggerId: 't1',
        shard: 0,
        streamArn: 'arn:test',
        firstSequenceNumber: 1,
        lastSequenceNumber: 2,
        count: 2,
        reason: 'RetryAttemptsExhausted',
        firstRecordAt: 1,
        lastRecordAt: 2,
        invocations: 3,
        lastOutcome: { status: 'error', errorType: 'Error', errorMessage: 'boom' },
        discardedAt: 3,
      };
      const entry = await dlqA.add(discarded);
      await waitFor(async () => (await dlqB.list({ limit: 10 })).items.length === 1, WAIT_MS, 'node B to list the entry written on A');
      expect((await dlqB.list({ limit: 10 })).items).toEqual([entry]);
      await dlqB.delete(entry.id);
      await waitFor(async () => (await dlqA.list({ limit: 10 })).items.length === 0, WAIT_MS, 'node A to drop the entry deleted on B');
      await expect(dlqA.get(entry.id)).rejects.toMatchObject({ code: 'NotFound' });

      const auditA = new AuditLog(a.database, a.metadata);
      const auditB = new AuditLog(b.database, b.metadata);
      const recorded = await auditA.record({ keyId: 'k', method: 'DELETE', route: '/v1/keys/:id', path: '/v1/keys/k', status: 204, requestId: 'r1', sourceIp: '127.0.0.1' });
      const range = { from: 0, to: Date.now() + 60_000, limit: 10 };
      await waitFor(async () => (await auditB.list(range)).items.length === 1, WAIT_MS, 'node B to list the audit entry written on A');
      expect((await auditB.list(range)).items).toEqual([recorded]);
    },
    TEST_MS,
  );

  it(
    'a function package larger than one record of the topic (chunked) deployed on A is unpacked from the database on B',
    async () => {
      const { topic, clients } = await setup('metadata-package');
      const a = await startNode(clients[0], topic);
      const b = await startNode(clients[1], topic);
      const registry = async (node: Node) => FunctionRegistry.open({ database: node.database, metadata: node.metadata, dataDir: node.dir.path, defaults: { timeoutMs: 1000, memoryMb: 64 } });
      const [regA, regB] = [await registry(a), await registry(b)];
      // Incompressible, so the archive is larger than the 6 MiB a record of the topic takes.
      const archive = await blobPackage('export const handler = async () => 1;\n', 10 * 1024 * 1024);
      const deployed = await regA.deploy('big', { package: archive });
      expect(deployed.codeSize).toBeGreaterThan(6 * 1024 * 1024);
      await waitFor(async () => (await regB.list({ limit: 10 })).items.length === 1, WAIT_MS, 'node B to list the package deployed on A');
      const spec = await regB.spec('big');
      expect(spec.codeSha256).toBe(deployed.codeSha256);
      expect(statSync(join(b.dir.path, 'functions', 'big', 'v1', 'package', 'blob.bin')).size).toBe(10 * 1024 * 1024);
    },
    TEST_MS,
  );
});

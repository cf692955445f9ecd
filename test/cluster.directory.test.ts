/**
 * The device list across nodes (cluster/device-directory.ts): two real HTTP servers
 * serving `GET /v1/devices`, each a member of a real store group on Kafka that decides
 * which partitions it answers for. Each registry also holds stale entries of the other
 * node's partitions; the list asked of either node is every device once, as its owner
 * has it, paged like one node's list. And the merge of nodes' parts on its own.
 */
import fastify, { type FastifyInstance } from 'fastify';
import { describe, expect, it } from 'vitest';
import { DEVICE_LIST_FANOUT_HEADER, DEVICE_LIST_PARTITIONS_HEADER, deviceRoutes } from '../api/routes/devices.js';
import { errorHandling } from '../api/errors.js';
import { ClusterDeviceDirectory, mergeDevicePages } from '../cluster/device-directory.js';
import { KafkaClient } from '../cluster/kafka-client.js';
import { ownerUserData, PartitionOwners } from '../cluster/partition-owners.js';
import { StoreConsumer } from '../cluster/store-consumer.js';
import { encodeDeviceCursor } from '../store/cursor.js';
import { MemoryTelemetryStore } from '../store/memory-store.js';
import type { DeviceInfo, Page } from '../store/types.js';
import { shardOf } from '../streams/shard.js';
import { waitFor } from './helpers.js';
import { describeWithKafka, kafkaTestKit, uniqueTopic } from './kafka/broker.js';

const SHARDS = 4;

function info(deviceId: string, extra: Partial<DeviceInfo> = {}): DeviceInfo {
  return { deviceId, firstSeen: null, lastSeen: null, readings: 0, readingsPerMinute: 0, tags: {}, ...extra };
}
const ids = (page: Page<DeviceInfo>): string[] => page.items.map((d) => d.deviceId);

describe('mergeDevicePages', () => {
  it('stops at the smallest cursor of the parts that have more: nothing below it is missing', () => {
    // The first node looked up to d6 (a tag filter left some out); the second is done.
    const merged = mergeDevicePages(
      [
        { items: [info('d1'), info('d5')], nextCursor: encodeDeviceCursor('d6') },
        { items: [info('d2'), info('d3'), info('d7')], nextCursor: null },
      ],
      10,
    );
    expect(ids(merged)).toEqual(['d1', 'd2', 'd3', 'd5']);
    expect(merged.nextCursor).toBe(encodeDeviceCursor('d6'));
  });

  it('takes at most `limit` devices, the cursor at the last one, and ends with a null cursor', () => {
    const full = mergeDevicePages(
      [
        { items: [info('a'), info('c'), info('e')], nextCursor: encodeDeviceCursor('e') },
        { items: [info('b'), info('d'), info('f')], nextCursor: encodeDeviceCursor('f') },
      ],
      3,
    );
    expect(ids(full)).toEqual(['a', 'b', 'c']);
    expect(full.nextCursor).toBe(encodeDeviceCursor('c'));
    const last = mergeDevicePages([{ items: [info('x')], nextCursor: null }, { items: [], nextCursor: null }], 3);
    expect(last).toEqual({ items: [info('x')], nextCursor: null });
  });

  it('lists a device two nodes answer for (a handover) once, as the fresher node has it', () => {
    const merged = mergeDevicePages(
      [
        { items: [info('m', { lastSeen: 5, readings: 3, tags: { from: 'old' } })], nextCursor: null },
        { items: [info('m', { lastSeen: 9, readings: 4, tags: { from: 'new' } })], nextCursor: null },
      ],
      10,
    );
    expect(merged.items).toEqual([info('m', { lastSeen: 9, readings: 4, tags: { from: 'new' } })]);
  });
});

describeWithKafka('the device list across nodes (real Kafka, real HTTP)', (brokers) => {
  const { kafka, logger, cleanups } = kafkaTestKit(brokers);

  interface Node {
    url: string;
    store: MemoryTelemetryStore;
    consumer: () => StoreConsumer | undefined;
    join: () => Promise<void>;
    leave: () => Promise<void>;
  }

  /** A node: its registry and device routes on a real HTTP server; `join` makes it a member of the store group. */
  async function node(client: KafkaClient, topic: string): Promise<Node> {
    const store = new MemoryTelemetryStore();
    let consumer: StoreConsumer | undefined;
    const directory = new ClusterDeviceDirectory({
      owners: new PartitionOwners(client, `${topic}.store`, topic),
      shards: SHARDS,
      served: () => (consumer === undefined ? [] : consumer.partitions.filter((p) => consumer?.caughtUp(p))),
    });
    const app: FastifyInstance = fastify();
    await app.register(errorHandling);
    await app.register(deviceRoutes, { prefix: '/v1', store, directory });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const { port } = app.server.address() as { port: number };
    const url = `http://127.0.0.1:${port}`;
    const leave = async (): Promise<void> => {
      await consumer?.stop();
      consumer = undefined;
    };
    cleanups.push(async () => {
      await leave();
      await app.close();
      await store.close();
    });
    const join = async (): Promise<void> => {
      consumer = await StoreConsumer.start({ client, topic, groupId: `${topic}.store`, position: async () => undefined, apply: async () => {}, sessionTimeoutMs: 6_000, userData: ownerUserData(url), logger });
    };
    return { url, store, consumer: () => consumer, join, leave };
  }

  async function list(url: string, query: string, headers: Record<string, string> = {}): Promise<{ status: number; body: Page<DeviceInfo> & { error?: { code: string } }; partitions: string | null }> {
    const res = await fetch(`${url}/v1/devices?${query}`, { headers });
    return { status: res.status, body: (await res.json()) as Page<DeviceInfo>, partitions: res.headers.get(DEVICE_LIST_PARTITIONS_HEADER) };
  }

  /** Every page of the list asked of `url`, until the cursor is null (bounded). */
  async function allPages(url: string, query: string): Promise<{ devices: DeviceInfo[]; pages: number }> {
    const devices: DeviceInfo[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const res = await list(url, `${query}${cursor === null ? '' : `&cursor=${cursor}`}`);
      expect(res.status, JSON.stringify(res.body)).toBe(200);
      devices.push(...res.body.items);
      cursor = res.body.nextCursor;
      pages++;
    } while (cursor !== null && pages < 50);
    expect(cursor).toBeNull();
    return { devices, pages };
  }

  it('lists every device once, as its owner has it, from either node, with paging and tag filter', async () => {
    const client = await kafka();
    const topic = uniqueTopic('telemetry');
    await client.ensureLogTopic({ name: topic, partitions: SHARDS, replicationFactor: 1, retentionMs: 0, retentionOf: 'the test' });
    cleanups.push(() => client.deleteTopic(topic));
    const a = await node(client, topic);
    const b = await node(client, topic);

    // Nobody owns any partition yet: no list with holes, a retriable refusal.
    const early = await list(a.url, 'limit=10');
    expect(early.status).toBe(503);
    expect(early.body.error?.code).toBe('StoreUnavailable');

    await a.join();
    await b.join();
    const owners = new PartitionOwners(client, `${topic}.store`, topic);
    // Settled: the group's assignment (what the directory reads) is each node's own, and caught up.
    await waitFor(
      async () => {
        owners.invalidate();
        const assignment = await owners.assignment();
        return [a, b].every((n) => {
          const consumer = n.consumer();
          const assigned = [...assignment].filter(([, url]) => url === n.url).map(([p]) => p);
          return consumer !== undefined && assigned.length > 0 && JSON.stringify(assigned.sort()) === JSON.stringify(consumer.partitions) && consumer.partitions.every((p) => consumer.caughtUp(p));
        });
      },
      60_000,
      'both nodes owning partitions',
    );
    const ownedByA = new Set(a.consumer()?.partitions);

    // Each registry has the devices of its node's partitions and a stale copy of the others'.
    const devices = Array.from({ length: 30 }, (_, i) => `dev-${String(i).padStart(2, '0')}`);
    for (const [i, deviceId] of devices.entries()) {
      const kind = i % 2 === 0 ? 'even' : 'odd';
      const [owner, other] = ownedByA.has(shardOf(deviceId, SHARDS)) ? [a, b] : [b, a];
      await owner.store.putDevice({ deviceId, tags: { kind, copy: 'owner' } });
      if (i % 3 !== 0) await other.store.putDevice({ deviceId, tags: { kind, copy: 'stale' } });
    }
    expect(devices.some((d) => ownedByA.has(shardOf(d, SHARDS)))).toBe(true);
    expect(devices.some((d) => !ownedByA.has(shardOf(d, SHARDS)))).toBe(true);

    // A node asked by another answers with its own part, and names its partitions.
    const part = await list(a.url, 'limit=100', { [DEVICE_LIST_FANOUT_HEADER]: '1' });
    expect(part.status).toBe(200);
    expect(part.partitions).toBe(a.consumer()?.partitions.join(','));
    expect(ids(part.body)).toEqual(devices.filter((d) => ownedByA.has(shardOf(d, SHARDS))));

    for (const node of [a, b]) {
      const { devices: listed, pages } = await allPages(node.url, 'limit=7');
      expect(listed.map((d) => d.deviceId)).toEqual(devices);
      expect(listed.every((d) => d.tags.copy === 'owner')).toBe(true);
      expect(pages).toBe(5);
    }
    const even = await allPages(b.url, 'limit=4&tag=kind=even');
    expect(even.devices.map((d) => d.deviceId)).toEqual(devices.filter((_, i) => i % 2 === 0));
    expect(even.devices.every((d) => d.tags.copy === 'owner')).toBe(true);

    // B leaves the group: once A owns every partition, A's registry is the list (stale copies and all).
    await b.leave();
    await waitFor(
      async () => {
        const res = await list(a.url, 'limit=100');
        return res.status === 200 && res.body.items.some((d) => d.tags.copy === 'stale') ? res : undefined;
      },
      60_000,
      'A answering for every partition',
    );
    expect(a.consumer()?.partitions).toEqual([0, 1, 2, 3]);
  }, 180_000);
});

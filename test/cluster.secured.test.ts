/**
 * Cluster mode in secured mode, through the real app: two `tributary start --secure`
 * processes on one Kafka. Each node's bootstrap admin key works on the other, an API key
 * and a device secret made on one node work on the other, and a revoke on one node ends
 * the device's session on the other.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { clusterNodeEnv } from './cluster/node-env.js';
import { tempDir, waitFor } from './helpers.js';
import { describeWithKafka, uniqueTopic } from './kafka/broker.js';
import { startServerOnFreePorts, type ServerProcess } from './process.js';

interface SecuredNode {
  process: ServerProcess;
  http: string;
  mqtt: string;
  adminKey: string;
}

describeWithKafka('cluster: secured nodes share keys and credentials', (brokers) => {
  const prefix = `${uniqueTopic('secured')}.`;
  const work = tempDir('tributary-cluster-secured-');
  const nodes: SecuredNode[] = [];

  beforeAll(async () => {
    for (let i = 1; i <= 2; i++) {
      const { process, httpPort, mqttPort } = await startServerOnFreePorts((ports) => ({
        ...clusterNodeEnv({ index: i, brokers: brokers.join(','), dataDir: join(work.path, `node-${i}`), ...ports, topicPrefix: prefix }),
        TRIBUTARY_FUNCTIONS_DIR: '',
        TRIBUTARY_SECURE: 'true',
      }));
      const adminKey = /admin API key \(shown once\): (\S+)/.exec(process.output())?.[1];
      if (adminKey === undefined) throw new Error(`node-${i} printed no admin key: ${process.output()}`);
      nodes.push({ process, http: `http://127.0.0.1:${httpPort}`, mqtt: `mqtt://127.0.0.1:${mqttPort}`, adminKey });
    }
  }, 120_000);

  afterAll(async () => {
    await Promise.all(nodes.map((n) => n.process.signal('SIGTERM')));
    work.cleanup();
  }, 60_000);

  const call = async (node: SecuredNode, path: string, key: string, init: RequestInit = {}): Promise<{ status: number; body: unknown }> => {
    const headers: Record<string, string> = { authorization: `Bearer ${key}`, ...(init.body === undefined ? {} : { 'content-type': 'application/json' }) };
    const res = await fetch(`${node.http}${path}`, { ...init, headers });
    return { status: res.status, body: res.status === 204 ? undefined : ((await res.json()) as unknown) };
  };

  it("accepts each node's admin key, and an API key made on one node, on the other", async () => {
    const [a, b] = nodes as [SecuredNode, SecuredNode];
    await waitFor(async () => (await call(b, '/v1/keys', a.adminKey)).status === 200, 10_000, "node-1's admin key on node-2");
    await waitFor(async () => (await call(a, '/v1/keys', b.adminKey)).status === 200, 10_000, "node-2's admin key on node-1");
    expect((await call(b, '/v1/keys', 'tak_0000000000000000_nope')).status).toBe(401);

    const created = await call(a, '/v1/keys', a.adminKey, { method: 'POST', body: JSON.stringify({ name: 'reader', policy: { statements: [{ actions: ['telemetry:Read'], devices: ['*'] }] } }) });
    expect(created.status).toBe(201);
    const { key: token, id } = created.body as { key: string; id: string };
    // Allowed to read on the other node once it has applied the key (read-your-writes holds on the node that made it), and not allowed what the policy leaves out.
    await waitFor(async () => (await call(b, '/v1/devices/anyone/latest', token)).status === 404, 10_000, 'the new key on node-2');
    expect((await call(b, '/v1/keys', token)).status).toBe(403);
    // Deleted on node-2: refused on node-1 too.
    expect((await call(b, `/v1/keys/${id}`, b.adminKey, { method: 'DELETE' })).status).toBe(204);
    await waitFor(async () => (await call(a, '/v1/devices/anyone/latest', token)).status === 401, 10_000, 'the deleted key refused on node-1');
  }, 60_000);

  it('lets a device provisioned on one node log in on the other, and ends its session there when revoked', async () => {
    const [a, b] = nodes as [SecuredNode, SecuredNode];
    const issued = await call(a, '/v1/devices/sensor-9/credentials', a.adminKey, { method: 'POST', body: '{}' });
    expect(issued.status).toBe(201);
    const { secret } = issued.body as { secret: string };
    const device = await mqtt.connectAsync(b.mqtt, { clientId: 'sensor-9', username: 'sensor-9', password: secret, reconnectPeriod: 0 });
    await device.publishAsync('devices/sensor-9/telemetry', JSON.stringify({ temp: 21 }), { qos: 1 });
    // Stored by the partition's owner, readable through either node with either admin key.
    await waitFor(async () => (await call(a, '/v1/devices/sensor-9/latest', b.adminKey)).status === 200, 10_000, 'the reading through node-1');

    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    expect((await call(a, '/v1/devices/sensor-9', a.adminKey, { method: 'DELETE' })).status).toBe(204);
    await closed;
    const refused = await mqtt.connectAsync(b.mqtt, { clientId: 'sensor-9', username: 'sensor-9', password: secret, reconnectPeriod: 0 }).then(
      async (c) => {
        await c.endAsync();
        return false;
      },
      () => true,
    );
    expect(refused).toBe(true);
  }, 60_000);
});

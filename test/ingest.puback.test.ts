import { afterEach, describe, expect, it } from 'vitest';
import type { Packet } from 'mqtt';
import { createLogger } from '../core/logger.js';
import { MqttBroker } from '../ingest/mqtt-broker.js';
import { Database } from '../store/database.js';
import { LevelTelemetryStore } from '../store/level-store.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import type { BatchOp } from '../streams/types.js';
import { connectClient, standaloneIngest } from './app-harness.js';
import { tempDir, waitFor } from './helpers.js';

describe('QoS 1 PUBACK', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('is sent only after the reading and its change record are durably committed', async () => {
    const dir = tempDir();
    cleanups.push(dir.cleanup);
    const database = await Database.open(dir.path);
    cleanups.push(() => database.close());

    const changeLog = await EmbeddedChangeLog.open(database, { shards: 2 });
    const store = await LevelTelemetryStore.open({ database, changeLog, partitionWindowMs: 86_400_000, maxBatch: 1000, maxDelayMs: 0 });
    cleanups.push(() => store.close());
    // From now on, hold every commit open until the test releases it, and note when it really completed.
    const commits: Array<{ ops: BatchOp[]; release: () => void; done: boolean }> = [];
    const realCommit = database.commit.bind(database);
    database.commit = (ops: BatchOp[]) =>
      new Promise<void>((resolve, reject) => {
        const entry = {
          ops,
          done: false,
          release: () =>
            realCommit(ops).then(() => {
              entry.done = true;
              resolve();
            }, reject),
        };
        commits.push(entry);
      });

    const ingest = standaloneIngest(store);
    const broker = await MqttBroker.start({ host: '127.0.0.1', port: 0, ingest, logger: createLogger('silent') });
    cleanups.push(() => broker.close());

    const client = await connectClient(`mqtt://127.0.0.1:${broker.address.port}`, { clientId: 'dev-1' });
    cleanups.push(() => void client.end(true));
    const received: Array<{ cmd: string; messageId?: number; commitDone: boolean }> = [];
    client.on('packetreceive', (p: Packet) => {
      if (p.cmd === 'puback') received.push({ cmd: p.cmd, messageId: p.messageId, commitDone: commits[0]?.done ?? false });
    });

    const telemetry = client.publishAsync('devices/dev-1/telemetry', '{"temp":1}', { qos: 1 });
    await waitFor(() => commits.length === 1, 5000, 'the store to start its commit');
    const batch = (commits[0] as { ops: BatchOp[] }).ops.map((op) => String.fromCharCode(op.key[0] as number));
    expect(batch).toContain('T'); // the reading
    expect(batch).toContain('C'); // its change record, in the same batch

    // A later QoS 1 publish on a non-telemetry topic is acknowledged at once: the broker is
    // processing input, yet the telemetry PUBACK is still withheld.
    await client.publishAsync('other/topic', 'x', { qos: 1 });
    expect(received).toHaveLength(1);
    expect(commits[0]?.done).toBe(false);

    (commits[0] as { release: () => void }).release();
    await telemetry;
    expect(received).toHaveLength(2);
    expect(received[1]).toMatchObject({ cmd: 'puback', commitDone: true });
    const page = await store.query({ deviceId: 'dev-1', from: 0, to: Date.now() + 1000, order: 'asc', limit: 10 });
    expect(page.items.map((i) => i.values)).toEqual([{ temp: 1 }]);
  });
});

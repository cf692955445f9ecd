/**
 * Commands across nodes (cluster/command-topic.ts) on a real Kafka: two brokers, each
 * following the command topic; a command sent through one node's sender reaches devices
 * connected to either node and is queued for offline persistent sessions on both, in the
 * order sent; a node that was not following when a command was sent never publishes it.
 */
import mqtt, { type MqttClient } from 'mqtt';
import { describe, expect, it } from 'vitest';
import { CommandTopic } from '../cluster/command-topic.js';
import { MqttBroker } from '../ingest/mqtt-broker.js';
import { MemoryTelemetryStore } from '../store/memory-store.js';
import { standaloneIngest } from './app-harness.js';
import { waitFor } from './helpers.js';
import { describeWithKafka, kafkaTestKit, uniqueTopic } from './kafka/broker.js';

interface Received {
  topic: string;
  payload: unknown;
  qos: number;
}

/** A device subscribed to its commands on `broker`, recording what it receives. */
async function device(broker: MqttBroker, deviceId: string, opts: { clean?: boolean; subscribe?: boolean } = {}): Promise<{ client: MqttClient; received: Received[] }> {
  const received: Received[] = [];
  const { host, port } = broker.address;
  const client = mqtt.connect(`mqtt://${host}:${port}`, { clientId: deviceId, clean: opts.clean ?? true, reconnectPeriod: 0, connectTimeout: 5000 });
  client.on('message', (topic, payload, packet) => received.push({ topic, payload: JSON.parse(payload.toString()) as unknown, qos: packet.qos }));
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  if (opts.subscribe ?? true) await client.subscribeAsync(`devices/${deviceId}/commands/+`, { qos: 1 });
  return { client, received };
}

describeWithKafka('commands across nodes (real Kafka)', (brokers) => {
  const { kafka, logger, cleanups } = kafkaTestKit(brokers);

  /** A node: a broker and, unless told otherwise, its command topic follower. */
  async function node(topic: string): Promise<{ broker: MqttBroker; open: () => Promise<CommandTopic> }> {
    const broker = await MqttBroker.start({ host: '127.0.0.1', port: 0, ingest: standaloneIngest(new MemoryTelemetryStore()), logger });
    cleanups.push(() => broker.close());
    const open = async (): Promise<CommandTopic> => {
      const commands = await CommandTopic.open({ client: await kafka(), topic, replicationFactor: 1, deliver: (c) => broker.publishLocal(c), logger });
      // Before the broker (cleanups run in reverse).
      cleanups.push(() => commands.close());
      return commands;
    };
    return { broker, open };
  }

  async function commandTopic(): Promise<string> {
    const topic = uniqueTopic('commands');
    const client = await kafka();
    cleanups.push(() => client.deleteTopic(topic));
    return topic;
  }

  it('a command sent through one node reaches devices on both, in order, and is queued for offline persistent sessions', async () => {
    const topic = await commandTopic();
    const a = await node(topic);
    const b = await node(topic);
    const senderA = await a.open();
    const senderB = await b.open();

    const onB = await device(b.broker, 'pump-b');
    const onA = await device(a.broker, 'pump-a');
    // A persistent session on B that goes offline: B queues its QoS 1 commands.
    const away = await device(b.broker, 'pump-away', { clean: false });
    await away.client.endAsync();
    cleanups.push(() => onA.client.endAsync(), () => onB.client.endAsync());

    expect(await senderA.sendCommand('pump-b', 'start', { rpm: 1200 }, 1)).toBe('devices/pump-b/commands/start');
    await senderB.sendCommand('pump-b', 'set', { rpm: 1500 }, 0);
    await senderA.sendCommand('pump-b', 'stop', null, 1);
    await senderB.sendCommand('pump-a', 'start', 'now', 1);
    await senderA.sendCommand('pump-away', 'flush', { at: 1 }, 1);
    await senderA.sendCommand('pump-away', 'note', 'not queued', 0);

    await waitFor(() => onB.received.length >= 3 && onA.received.length >= 1, 20_000, 'the commands on both nodes');
    expect(onB.received).toEqual([
      { topic: 'devices/pump-b/commands/start', payload: { rpm: 1200 }, qos: 1 },
      { topic: 'devices/pump-b/commands/set', payload: { rpm: 1500 }, qos: 0 },
      { topic: 'devices/pump-b/commands/stop', payload: null, qos: 1 },
    ]);
    expect(onA.received).toEqual([{ topic: 'devices/pump-a/commands/start', payload: 'now', qos: 1 }]);

    // Once B has published everything (a later command seen on B), the offline session comes back to B.
    await senderA.sendCommand('pump-b', 'last', 1, 1);
    await waitFor(() => onB.received.length >= 4, 20_000, 'the last command on B');
    const back = await device(b.broker, 'pump-away', { clean: false, subscribe: false });
    cleanups.push(() => back.client.endAsync());
    await waitFor(() => back.received.length >= 1, 20_000, 'the queued command');
    // QoS 0 is not queued for an offline session; nothing else is on its way.
    await new Promise((r) => setTimeout(r, 300));
    expect(back.received).toEqual([{ topic: 'devices/pump-away/commands/flush', payload: { at: 1 }, qos: 1 }]);
  }, 90_000);

  it('a node follows from the end as of its start: a command sent while it was not following is not published there', async () => {
    const topic = await commandTopic();
    const a = await node(topic);
    const b = await node(topic);
    const senderA = await a.open();
    const onB = await device(b.broker, 'valve-1');
    cleanups.push(() => onB.client.endAsync());

    // B is "down" (not following) for the first command.
    await senderA.sendCommand('valve-1', 'open', 1, 1);
    await b.open();
    await senderA.sendCommand('valve-1', 'close', 2, 1);
    await waitFor(() => onB.received.length >= 1, 20_000, 'the command sent after B started following');
    await new Promise((r) => setTimeout(r, 300));
    expect(onB.received).toEqual([{ topic: 'devices/valve-1/commands/close', payload: 2, qos: 1 }]);
  }, 90_000);

  it('refuses a bad device id or command name before anything is sent, and skips records that are not commands', async () => {
    const topic = await commandTopic();
    const a = await node(topic);
    const sender = await a.open();
    const client = await kafka();
    await expect(sender.sendCommand('bad id', 'open', 1, 1)).rejects.toMatchObject({ code: 'InvalidParameter', field: 'id' });
    await expect(sender.sendCommand('valve-1', 'a/b', 1, 1)).rejects.toMatchObject({ code: 'InvalidParameter', field: 'name' });
    await expect(sender.sendCommand('valve-1', '#', 1, 1)).rejects.toMatchObject({ code: 'InvalidParameter', field: 'name' });
    expect((await client.offsets(topic))[0]?.high).toBe(0);

    const d = await device(a.broker, 'valve-1');
    cleanups.push(() => d.client.endAsync());
    const producer = await client.producer();
    cleanups.push(() => client.closeProducer(producer));
    await client.send(producer, topic, [{ partition: 0, key: 'x', value: Buffer.from('not msgpack of a command') }]);
    await sender.sendCommand('valve-1', 'open', { after: 'garbage' }, 1);
    await waitFor(() => d.received.length >= 1, 20_000, 'the command after the garbage');
    expect(d.received).toEqual([{ topic: 'devices/valve-1/commands/open', payload: { after: 'garbage' }, qos: 1 }]);
  }, 90_000);

  describe('the topic', () => {
    it('is created with one partition, delete policy and a one-hour retention; another partition count is refused', async () => {
      const client = await kafka();
      const topic = await commandTopic();
      const a = await node(topic);
      await a.open();
      const state = await client.ensureTopic({ name: topic, partitions: 1, replicationFactor: 1, configs: { 'cleanup.policy': '', 'retention.ms': '' } });
      expect(state).toMatchObject({ created: false, partitions: 1, configs: { 'cleanup.policy': 'delete', 'retention.ms': '3600000' } });

      const wrong = await commandTopic();
      await client.ensureTopic({ name: wrong, partitions: 2, replicationFactor: 1, configs: {} });
      await expect(CommandTopic.open({ client, topic: wrong, replicationFactor: 1, deliver: async () => {}, logger })).rejects.toMatchObject({ code: 'Conflict' });
    }, 60_000);
  });
});

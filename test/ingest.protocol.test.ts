/**
 * MQTT 3.1.1 strictness, shared subscriptions and non-telemetry publishes, against the
 * built server in a child process (`tributary start`): raw packets over `node:net` for
 * the rules aedes and mqtt-packet leave unchecked (ingest/mqtt-wire.ts), mosquitto_sub /
 * mosquitto_pub and mqtt.js for `$share` and for what is forwarded but not stored.
 */
import { execFile } from 'node:child_process';
import net from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { connectClient, getJson } from './app-harness.js';
import { connectBytes, encode, mqttString, PINGREQ, rawPacket } from './fuzz/packets.js';
import { tempDir, waitFor } from './helpers.js';
import { hasTool, startServerProcess, type ServerProcess } from './process.js';

const run = promisify(execFile);

const CONNACK = (code: number) => `200200${code.toString(16).padStart(2, '0')}`;
const PINGRESP = Buffer.from([0xd0, 0x00]);

let server: ServerProcess;
let dataDir: ReturnType<typeof tempDir>;

beforeAll(async () => {
  dataDir = tempDir('tributary-protocol-');
  server = await startServerProcess(['--data-dir', dataDir.path, '--log-level', 'info']);
});

afterAll(async () => {
  if (server) expect(await server.signal('SIGTERM')).toBe(0);
  dataDir?.cleanup();
});

/**
 * Sends `connect` on a fresh connection, then — once the broker has accepted it — `then`
 * and a PINGREQ. Resolves with the packets received (hex, PINGRESP left out) when the
 * broker closes the connection (`closed`), or when it has answered the PINGREQ and sent
 * `answers` packets (`open`: the connection survived). aedes handles the packets of one
 * read concurrently, so answers come in any order.
 */
function talk(connect: Buffer, then: Buffer[] = [], answers = 1): Promise<{ outcome: 'closed' | 'open'; packets: string[] }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: server.mqttPort });
    let pending = Buffer.alloc(0);
    const packets: string[] = [];
    let ponged = false;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`neither closed nor answered; received ${packets.join(' ')} ${pending.toString('hex')}`));
    }, 10_000);
    const finish = (outcome: 'closed' | 'open') => {
      clearTimeout(timer);
      socket.removeAllListeners('close');
      socket.destroy();
      resolve({ outcome, packets });
    };
    socket.on('error', () => {}); // ECONNRESET once the broker has dropped us
    socket.on('close', () => finish('closed'));
    socket.on('data', (d: Buffer) => {
      const first = packets.length === 0 && pending.length === 0;
      pending = Buffer.concat([pending, d]);
      // After a refusing CONNACK a client sends nothing more (aedes may still answer a PINGREQ then).
      if (first && pending.subarray(0, 4).toString('hex') === CONNACK(0)) socket.write(Buffer.concat([...then, PINGREQ]));
      // Every packet the broker sends here is short: a type byte, a one-byte length, the body.
      while (pending.length >= 2 && pending.length >= 2 + (pending[1] as number)) {
        const packet = pending.subarray(0, 2 + (pending[1] as number));
        pending = pending.subarray(packet.length);
        if (packet.equals(PINGRESP)) ponged = true;
        else packets.push(packet.toString('hex'));
      }
      if (ponged && packets.length >= answers) finish('open');
    });
    socket.on('connect', () => socket.write(connect));
  });
}

/** A 3.1.1 CONNECT with these flags, keep alive 0, and these payload fields as MQTT strings. */
const rawConnect = (flags: number, ...fields: Array<string | Uint8Array>) => rawPacket(0x10, Buffer.concat([mqttString('MQTT'), Buffer.from([4, flags, 0, 0]), ...fields.map((f) => mqttString(f))]));
const publish = (topic: Uint8Array | string, qos: number, packetId: number) =>
  rawPacket(0x30 | (qos << 1), Buffer.concat([mqttString(topic), qos > 0 ? Buffer.from([packetId >> 8, packetId & 0xff]) : Buffer.alloc(0), Buffer.from('{"temp":1}')]));

describe('MQTT 3.1.1 strictness (raw packets)', () => {
  it('answers an unknown protocol level with CONNACK 0x01, then closes [MQTT-3.1.2-2]; MQTT 5 gets the same as before', async () => {
    for (const level of [2, 6, 0x7f]) {
      expect(await talk(connectBytes(`lvl-${level}`, { protocolVersion: level as 4 }))).toEqual({ outcome: 'closed', packets: [CONNACK(1)] });
    }
    expect(await talk(connectBytes('lvl-5', { protocolVersion: 5 }))).toEqual({ outcome: 'closed', packets: [CONNACK(1)] });
    expect(await talk(connectBytes('lvl-4'))).toEqual({ outcome: 'open', packets: [CONNACK(0)] });
  });

  it('answers a zero-length client id with CleanSession 0 with CONNACK 0x02, then closes [MQTT-3.1.3-8]', async () => {
    expect(await talk(connectBytes('', { clean: false }))).toEqual({ outcome: 'closed', packets: [CONNACK(2)] });
    // With CleanSession 1 the server assigns an id [MQTT-3.1.3-6].
    expect(await talk(connectBytes('', { clean: true }))).toEqual({ outcome: 'open', packets: [CONNACK(0)] });
  });

  it('does the same over WebSocket: CONNACK 0x02, then the close', async () => {
    const ws = new WebSocket(`${server.httpUrl.replace(/^http/, 'ws')}/mqtt`, 'mqtt');
    const got: Buffer[] = [];
    ws.on('message', (data: Buffer) => got.push(data));
    ws.once('open', () => ws.send(connectBytes('', { clean: false })));
    await new Promise<void>((resolve, reject) => {
      ws.once('close', () => resolve());
      ws.once('error', reject);
    });
    expect(Buffer.concat(got).toString('hex')).toBe(CONNACK(2));
  });

  it.each([
    ['will QoS 3 [MQTT-3.1.2-14]', rawConnect(0x1e, 'w-qos3', 'devices/w-qos3/status', 'gone')],
    ['a password without a user name [MQTT-3.1.2-22]', rawConnect(0x42, 'pw-only', 'secret')],
    ['a client id that is not UTF-8 [MQTT-1.5.3-1]', rawConnect(0x02, Buffer.from([0x63, 0xff]))],
    ['a client id with a lone surrogate [MQTT-1.5.3-1]', rawConnect(0x02, Buffer.from([0x63, 0xed, 0xa0, 0x80]))],
    ['a client id with U+0000 [MQTT-1.5.3-2]', connectBytes('c\u0000d')],
    ['a will topic that is not UTF-8 [MQTT-1.5.3-1]', rawConnect(0x06, 'w-utf8', Buffer.from([0x77, 0xc0, 0x80]), 'gone')],
  ])('closes a CONNECT with %s without a CONNACK', async (_what, connect) => {
    expect(await talk(connect)).toEqual({ outcome: 'closed', packets: [] });
  });

  it.each([
    ['a topic that is not UTF-8 [MQTT-1.5.3-1]', publish(Buffer.from('devices/p-utf8/telemetry\xff', 'latin1'), 1, 1)],
    ['a topic with U+0000 [MQTT-1.5.3-2]', publish('devices/p-nul/telemetry\u0000', 0, 0)],
    ['a QoS 1 PUBLISH with packet id 0 [MQTT-2.3.1-1]', publish('devices/p-id0/telemetry', 1, 0)],
    ['a QoS 2 PUBLISH with packet id 0 [MQTT-2.3.1-1]', publish('devices/p-id0/telemetry', 2, 0)],
    ['an UNSUBSCRIBE without topic filters [MQTT-3.10.3-2]', rawPacket(0xa2, Buffer.from([0, 5]))],
    ['a SUBSCRIBE without topic filters [MQTT-3.8.3-3]', rawPacket(0x82, Buffer.from([0, 5]))],
    ['a SUBSCRIBE filter that is not UTF-8 [MQTT-1.5.3-1]', rawPacket(0x82, Buffer.concat([Buffer.from([0, 5]), mqttString(Buffer.from([0x61, 0x2f, 0xe2, 0x82])), Buffer.from([1])]))],
  ])('closes the connection on %s, answering nothing after the CONNACK', async (_what, packet) => {
    expect(await talk(connectBytes('strict-after-connect'), [packet])).toEqual({ outcome: 'closed', packets: [CONNACK(0)] });
  });

  it('still serves the well-formed packets next to those rules, and stores nothing a refused PUBLISH carried', async () => {
    const ok = await talk(
      connectBytes('strict-ok'),
      [
        publish('devices/strict-ok/telemetry', 1, 9),
        encode({ cmd: 'unsubscribe', messageId: 10, unsubscriptions: ['a/b'] }),
        publish('devices/strict-ok/\ufffd', 0, 0), // U+FFFD is a character like any other
      ],
      3,
    );
    expect(ok.outcome).toBe('open');
    expect(ok.packets.sort()).toEqual([CONNACK(0), '40020009', 'b002000a']); // PUBACK 9, UNSUBACK 10
    const stored = await getJson(`${server.httpUrl}/v1/devices/strict-ok/telemetry?from=-1h`);
    expect((stored.body as { items: unknown[] }).items).toHaveLength(1);
    expect((await getJson(`${server.httpUrl}/v1/devices/p-id0/telemetry?from=-1h`)).status).toBe(404);
  });
});

describe('shared subscriptions ($share/...)', () => {
  it('are refused with SUBACK 0x80 next to a granted filter, and the client stays connected (mqtt.js)', async () => {
    const client = await connectClient(server.mqttUrl, { clientId: 'share-mqttjs' });
    try {
      // mqtt.js rejects a SUBSCRIBE with a failure code in its SUBACK, with the SUBACK attached.
      const suback = await client.subscribeAsync(['$share/g/devices/+/telemetry', 'share/plain'], { qos: 1 }).catch((err: { packet?: { granted: number[] } }) => err.packet);
      expect(suback).toMatchObject({ granted: [0x80, 1] });
      expect(client.connected).toBe(true);
      const message = new Promise<string>((resolve) => client.once('message', (topic) => resolve(topic)));
      await client.publishAsync('share/plain', 'x', { qos: 1 });
      expect(await message).toBe('share/plain');
    } finally {
      await client.endAsync();
    }
  });

  it.skipIf(!hasTool('mosquitto_sub'))('are refused to mosquitto_sub, which says so and exits', async () => {
    const sub = await run('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(server.mqttPort), '-V', 'mqttv311', '-i', 'share-mosquitto', '-q', '1', '-t', '$share/g/devices/+/telemetry', '-W', '10', '-d'], { encoding: 'utf8', timeout: 15_000 }).catch(
      (err: { stdout: string; stderr: string }) => err,
    );
    const said = `${sub.stdout}${sub.stderr}`;
    expect(said).toMatch(/Subscribed \(mid: \d+\): 128/);
    expect(said).toContain('All subscription requests were denied.');
  });
});

describe('publishes outside the telemetry scheme', () => {
  const counted = async (): Promise<number> => {
    const text = await fetch(`${server.httpUrl}/metrics`).then((r) => r.text());
    const line = /^tributary_mqtt_non_telemetry_publishes_total (\d+)$/m.exec(text);
    expect(line, 'tributary_mqtt_non_telemetry_publishes_total in /metrics').not.toBeNull();
    return Number(line?.[1]);
  };
  const notices = (clientId: string) =>
    server
      .output()
      .split('\n')
      .filter((l) => l.includes(`"clientId":"${clientId}"`) && l.includes('outside devices/{deviceId}/telemetry'))
      .map((l) => JSON.parse(l) as { level: number; topic: string });

  it('are forwarded, not stored, counted in /metrics, and logged at info once per connection (mqtt.js)', async () => {
    const before = await counted();
    const client = await connectClient(server.mqttUrl, { clientId: 'other-mqttjs' });
    try {
      await client.publishAsync('sensors/x/telemetry', '{"temp":1}', { qos: 1 });
      await client.publishAsync('devices/other-mqttjs/data', '{"temp":2}', { qos: 1 });
      await client.publishAsync('devices/other-mqttjs/telemetry', '{"temp":3}', { qos: 1 }); // stored: not counted
    } finally {
      await client.endAsync();
    }
    // The counter moves before the PUBACK is written: no waiting.
    expect((await counted()) - before).toBe(2);
    const logged = await waitFor(() => notices('other-mqttjs').length > 0 && notices('other-mqttjs'), 5000, 'the info line');
    expect(logged).toEqual([expect.objectContaining({ level: 30, topic: 'sensors/x/telemetry' })]);
    const stored = (await getJson(`${server.httpUrl}/v1/devices/other-mqttjs/telemetry?from=-1h`)).body as { items: Array<{ values: unknown }> };
    expect(stored.items.map((i) => i.values)).toEqual([{ temp: 3 }]);
  });

  it.skipIf(!hasTool('mosquitto_pub'))('are counted and logged for mosquitto_pub too', async () => {
    const before = await counted();
    await run('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(server.mqttPort), '-i', 'other-mosquitto', '-q', '1', '-t', 'devices/other-mosquitto/data', '-m', '{"temp":4}'], { timeout: 15_000 });
    expect((await counted()) - before).toBe(1);
    await waitFor(() => notices('other-mosquitto').length === 1, 5000, 'the info line');
    expect((await getJson(`${server.httpUrl}/v1/devices/other-mosquitto/telemetry?from=-1h`)).status).toBe(404);
  });
});

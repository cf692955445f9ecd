import { describe, expect, it } from 'vitest';
import { connectBytes, encode, encodeConnect, mqttString, PINGREQ, rawPacket } from '../test/fuzz/packets.js';
import { PacketInspector, type WireViolation } from './mqtt-wire.js';

const LIMIT = 1 << 20;
const CONNECT = connectBytes('c1');
const id = (n: number) => Buffer.from([n >> 8, n & 0xff]);

/** The verdict on `bytes` fed whole, and the same verdict fed one byte at a time. */
function verdict(...packets: Buffer[]): WireViolation | undefined {
  const bytes = Buffer.concat(packets);
  const whole = new PacketInspector(LIMIT).feed(bytes);
  const bytewise = new PacketInspector(LIMIT);
  let split: WireViolation | undefined;
  for (const b of bytes) split ??= bytewise.feed(Buffer.from([b]));
  expect(split).toEqual(whole);
  return whole;
}

/** A 3.1.1 CONNECT with these flags, keep alive 0, and these payload fields as MQTT strings. */
const rawConnect = (flags: number, ...fields: Array<string | Uint8Array>) => rawPacket(0x10, Buffer.concat([mqttString('MQTT'), Buffer.from([4, flags, 0, 0]), ...fields.map((f) => mqttString(f))]));
const publish = (topic: Uint8Array | string, qos: number, packetId = 1) => rawPacket(0x30 | (qos << 1), Buffer.concat([mqttString(topic), qos > 0 ? id(packetId) : Buffer.alloc(0), Buffer.from('{"t":1}')]));

describe('PacketInspector', () => {
  it('passes well-formed 3.1.1 traffic, strings with U+FFFD and non-BMP characters included', () => {
    expect(
      verdict(
        encodeConnect({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: false, keepalive: 10, clientId: 'dev-ü', username: 'ü', password: Buffer.from([0, 0xff]), will: { topic: 'w/\ufffd', payload: Buffer.from([0, 0xff]), qos: 2, retain: false } }),
        publish('devices/x/telemetry', 1, 7),
        publish('a/😀', 0),
        encode({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'a/+', qos: 1 }, { topic: '#', qos: 0 }] }),
        encode({ cmd: 'unsubscribe', messageId: 2, unsubscriptions: ['a/+', '#'] }),
        PINGREQ,
      ),
    ).toBeUndefined();
    expect(verdict(connectBytes('', { clean: true }))).toBeUndefined();
    expect(verdict(encodeConnect({ cmd: 'connect', protocolId: 'MQIsdp', protocolVersion: 3, clean: true, keepalive: 0, clientId: 'c' }))).toBeUndefined();
  });

  it('answers an unknown protocol level with CONNACK 1 and lets an MQTT 5 CONNECT through to aedes', () => {
    for (const level of [0, 2, 6, 0x86]) expect(verdict(connectBytes('c', { protocolVersion: level as 4 }))).toMatchObject({ connack: 1 });
    expect(verdict(connectBytes('c', { protocolVersion: 5 }), publish(Buffer.from([0xff]), 1, 0))).toBeUndefined();
  });

  it('answers a zero-length client id with CleanSession 0 with CONNACK 2', () => {
    expect(verdict(connectBytes('', { clean: false }))).toEqual({ reason: expect.stringContaining('MQTT-3.1.3-8'), connack: 2 });
  });

  it.each([
    ['will QoS 3', rawConnect(0x1e, 'c', 'w', 'p'), 'MQTT-3.1.2-14'],
    ['a password without a user name', rawConnect(0x42, 'c', 'pw'), 'MQTT-3.1.2-22'],
    ['a client id that is not UTF-8 (over-long NUL)', rawConnect(0x02, Buffer.from([0xc0, 0x80])), 'MQTT-1.5.3-1'],
    ['a client id with U+0000', connectBytes('a\u0000b'), 'MQTT-1.5.3-2'],
    ['a lone surrogate in a will topic', rawConnect(0x06, 'c', Buffer.from([0xed, 0xa0, 0x80]), 'p'), 'MQTT-1.5.3-1'],
    ['a user name with U+0000', connectBytes('c', { username: '\u0000' }), 'MQTT-1.5.3-2'],
  ])('closes a CONNECT with %s, without CONNACK', (_what, packet, clause) => {
    const v = verdict(packet);
    expect(v?.reason).toContain(clause);
    expect(v?.connack).toBeUndefined();
  });

  it.each([
    ['a topic that is not UTF-8', publish(Buffer.from([0x61, 0xff]), 0), 'MQTT-1.5.3-1'],
    ['a topic with U+0000', publish('devices/x/telemetry\u0000', 1), 'MQTT-1.5.3-2'],
    ['a QoS 1 PUBLISH with packet id 0', publish('t', 1, 0), 'MQTT-2.3.1-1'],
    ['a QoS 2 PUBLISH with packet id 0', publish('t', 2, 0), 'MQTT-2.3.1-1'],
    ['an UNSUBSCRIBE without filters', rawPacket(0xa2, id(3)), 'MQTT-3.10.3-2'],
    ['a SUBSCRIBE without filters', rawPacket(0x82, id(3)), 'MQTT-3.8.3-3'],
    ['an UNSUBSCRIBE with packet id 0', encode({ cmd: 'unsubscribe', messageId: 0, unsubscriptions: ['a'] }), 'MQTT-2.3.1-1'],
    ['a SUBSCRIBE filter that is not UTF-8 (second of two)', rawPacket(0x82, Buffer.concat([id(3), mqttString('ok'), Buffer.from([0]), mqttString(Buffer.from([0xf4, 0x90, 0x80, 0x80])), Buffer.from([0])])), 'MQTT-1.5.3-1'],
    ['an UNSUBSCRIBE filter with U+0000', encode({ cmd: 'unsubscribe', messageId: 3, unsubscriptions: ['a', 'b\u0000'] }), 'MQTT-1.5.3-2'],
  ])('closes the connection on %s', (_what, packet, clause) => {
    expect(verdict(CONNECT, packet)?.reason).toContain(clause);
  });

  it('leaves a field that runs past its packet to mqtt-packet, and keeps framing after it', () => {
    // The topic claims 100 bytes of a 5-byte body: mqtt-packet refuses it; the inspector neither reads past nor loses the frame.
    const short = rawPacket(0x32, Buffer.from([0, 100, 0x61, 0x62, 0x63]));
    expect(verdict(CONNECT, short, PINGREQ)).toBeUndefined();
    expect(verdict(CONNECT, short, publish('t', 1, 0))?.reason).toContain('MQTT-2.3.1-1');
  });

  it('checks only the first CONNECT of a connection (a second one is aedes\' to refuse)', () => {
    expect(verdict(CONNECT, connectBytes('', { clean: false }))).toBeUndefined();
  });
});

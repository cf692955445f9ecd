/**
 * fast-check generators of malformed MQTT traffic for `test/ingest.fuzz.test.ts`.
 *
 * A case is what one raw TCP connection sends: a list of chunks, written one after the
 * other. Chunks are hex strings so that a counterexample printed by fast-check can be
 * pasted into a regression file (`test/fuzz/regressions/*.json`) as it is.
 *
 * Valid packets come from mqtt-packet's `generate`; packets it refuses to encode (bad
 * UTF-8, wildcards in PUBLISH topics, zero-length topics, reserved packet types) are
 * built byte by byte here. Then a mutation may damage the encoding: header bit flips,
 * reserved flag bits, QoS 3, truncation, remaining lengths that claim far more (up to
 * the 5-byte header announcing 256 MB) or less than is sent, over-long variable-length
 * encodings, overwritten bytes, trailing garbage.
 */
import fc from 'fast-check';
import { generate, type IConnectPacket, type Packet } from 'mqtt-packet';

export interface FuzzCase {
  /** Which generator and mutation produced it, for reports. */
  kind: string;
  /** Bytes to write, one chunk after the other, as hex. */
  chunks: string[];
}

/** A saved case (or sequence of cases) that once crashed the broker; replayed first in every run. */
export interface Regression {
  description: string;
  seed?: number;
  /** Replayed in order on one broker; the last one is the case that crashed it, the others ran just before. */
  cases: FuzzCase[];
}

/** The largest value a 4-byte MQTT variable-length integer can hold (256 MB). */
export const MAX_REMAINING_LENGTH = 268_435_455;

export const PINGREQ = Buffer.from([0xc0, 0x00]);

export function encodeRemainingLength(n: number): Buffer {
  const out: number[] = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return Buffer.from(out);
}

/** A packet from its first byte and body, with an honest remaining length. */
export function rawPacket(firstByte: number, body: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from([firstByte & 0xff]), encodeRemainingLength(body.length), body]);
}

/** An MQTT string: 2-byte big-endian length, then the bytes as they are (no UTF-8 check). */
export function mqttString(bytes: Uint8Array | string): Buffer {
  const b = typeof bytes === 'string' ? Buffer.from(bytes, 'utf8') : Buffer.from(bytes);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(Math.min(b.length, 0xffff));
  return Buffer.concat([len, b.subarray(0, 0xffff)]);
}

export function connectBytes(clientId: string, opts: Partial<IConnectPacket> = {}): Buffer {
  return encodeConnect({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 0, clientId, ...opts } as IConnectPacket);
}

/**
 * A CONNECT encoded here rather than by mqtt-packet, which refuses some that a broker
 * must still cope with (an empty client id with clean session 0, or under MQTT 3.1).
 */
export function encodeConnect(c: IConnectPacket): Buffer {
  const v5 = c.protocolVersion === 5;
  const props = v5 ? Buffer.from([0]) : Buffer.alloc(0);
  let flags = c.clean === false ? 0 : 0x02;
  const parts: Buffer[] = [mqttString(c.protocolId ?? 'MQTT'), Buffer.from([c.protocolVersion ?? 4, 0]), Buffer.from([(c.keepalive ?? 0) >> 8, (c.keepalive ?? 0) & 0xff]), props, mqttString(c.clientId)];
  if (c.will) {
    flags |= 0x04 | (((c.will.qos ?? 0) & 3) << 3) | (c.will.retain ? 0x20 : 0);
    parts.push(props, mqttString(c.will.topic), mqttString(Buffer.from(c.will.payload)));
  }
  if (c.username !== undefined) {
    flags |= 0x80;
    parts.push(mqttString(c.username));
  }
  if (c.password !== undefined) {
    flags |= 0x40;
    parts.push(mqttString(Buffer.from(c.password)));
  }
  (parts[1] as Buffer)[1] = flags;
  return rawPacket(0x10, Buffer.concat(parts));
}

/** mqtt-packet's `generate`, except for CONNECT (see `encodeConnect`). */
export function encode(packet: Packet): Buffer {
  return packet.cmd === 'connect' ? encodeConnect(packet) : generate(packet);
}

/**
 * Whether a byte string ends exactly at a packet boundary under MQTT framing (type byte,
 * 1–4 length bytes, body). When it does not, the broker is waiting for more and will not
 * answer a PINGREQ sent after it.
 */
export function endsOnPacketBoundary(bytes: Buffer): boolean {
  let i = 0;
  while (i < bytes.length) {
    i++; // type/flags
    let length = 0;
    let n = 0;
    for (;;) {
      if (i >= bytes.length) return false;
      const b = bytes[i++] as number;
      length += (b & 0x7f) * 128 ** n++;
      if (!(b & 0x80)) break;
      if (n === 4) return true; // invalid length: the broker drops the connection
    }
    if (i + length > bytes.length) return false;
    i += length;
  }
  return true;
}

// ---- building blocks ----

const deviceId = fc.stringMatching(/^[A-Za-z0-9._:-]{1,24}$/);
const packetId = fc.integer({ min: 1, max: 0xffff });
const qos = fc.constantFrom<0 | 1 | 2>(0, 1, 2);

/** Byte strings that are not valid UTF-8, or are UTF-8 that MQTT forbids ([MQTT-1.5.3]). */
const badUtf8 = fc.oneof(
  fc.constantFrom(
    [0xff],
    [0xc0, 0x80], // over-long NUL
    [0xed, 0xa0, 0x80], // lone surrogate U+D800
    [0xf4, 0x90, 0x80, 0x80], // beyond U+10FFFF
    [0xe2, 0x82], // truncated sequence
    [0x80, 0x80],
    [0x00], // U+0000 is forbidden in MQTT strings
    [0xef, 0xbf, 0xbf], // U+FFFF non-character
    [0xf0, 0x9f, 0x98], // truncated emoji
  ).map((b) => Uint8Array.from(b)),
  fc.uint8Array({ minLength: 1, maxLength: 40 }),
);

const asciiPrefix = fc.constantFrom('devices/', 'devices/x/', 'devices/dev-1/tele', '', 'a/', '$SYS/');

/** Topic bytes that are broken: bad UTF-8 (somewhere), empty, wildcards, reserved prefixes. */
const badTopicBytes = fc.oneof(
  fc.tuple(asciiPrefix, badUtf8, fc.constantFrom('', '/telemetry', 'telemetry')).map(([a, b, c]) => Buffer.concat([Buffer.from(a), b, Buffer.from(c)])),
  fc.constant(Buffer.alloc(0)),
  fc
    .constantFrom('#', '+', 'devices/+/telemetry', 'devices/#', 'devices/x/telemetry/#', 'devices/dev+1/telemetry', '/', '//', 'devices//telemetry', 'devices/x/telemetry\u0000', '$tributary/rejects/x', '$SYS/broker')
    .map((s) => Buffer.from(s)),
  fc.string({ unit: 'binary', maxLength: 30 }).map((s) => Buffer.from(s, 'utf8')),
);

/** Topics a real client could send, weighted toward the telemetry path. */
const topic = fc.oneof(
  { arbitrary: deviceId.map((id) => `devices/${id}/telemetry`), weight: 4 },
  { arbitrary: fc.constant('devices/x/telemetry'), weight: 2 },
  { arbitrary: deviceId.map((id) => `devices/${id}/commands/reboot`), weight: 1 },
  { arbitrary: fc.string({ minLength: 1, maxLength: 20 }).filter((s) => !/[#+]/.test(s) && !s.includes('\u0000')), weight: 1 },
  { arbitrary: fc.constantFrom('$tributary/rejects/x', 'devices/bad id/telemetry', 'devices/x', 'devices/'), weight: 1 },
);

const topicFilter = fc.oneof(fc.constantFrom('#', '+', 'devices/+/telemetry', '$tributary/rejects/#', 'devices/#', '$SYS/#', 'a/+/b/#'), topic);

const jsonReading = fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }), fc.oneof(fc.double(), fc.integer(), fc.string({ maxLength: 10 }), fc.boolean(), fc.constant(null)), { maxKeys: 5 });

/** Payloads for the telemetry topic: mostly garbage, sometimes almost right. */
export const telemetryPayload = fc.oneof(
  fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
  fc.json().map((s) => Buffer.from(s)),
  jsonReading.map((r) => Buffer.from(JSON.stringify(r))),
  fc.array(jsonReading, { maxLength: 20 }).map((r) => Buffer.from(JSON.stringify(r))),
  fc.record({ ts: fc.oneof(fc.integer(), fc.double(), fc.string({ maxLength: 30 }), fc.constant(-1), fc.constant(8.64e15 + 1)), values: jsonReading }).map((r) => Buffer.from(JSON.stringify(r))),
  fc.integer({ min: 1, max: 5000 }).map((n) => Buffer.from('['.repeat(n) + ']'.repeat(n))),
  fc.integer({ min: 1, max: 5000 }).map((n) => Buffer.from('{"a":'.repeat(n) + '1' + '}'.repeat(n))),
  fc.integer({ min: 3000, max: 9000 }).map((n) => Buffer.from(JSON.stringify({ blob: 'x'.repeat(n) }))),
  fc
    .constantFrom(
      '',
      'null',
      '{}',
      '[]',
      '{"temp":1e999}',
      '{"temp":NaN}',
      '{"__proto__":{"polluted":1}}',
      '{"constructor":{"prototype":{"x":1}}}',
      '{"ts":"-1h","temp":1}',
      '{"a":"\u0000"}',
      '{"a":1,"a":2}',
      '\ufeff{"temp":1}',
      '{"temp":22}',
      '[{"temp":1},{"temp":2}]',
      '"just a string"',
      '{"ts":1e20,"temp":1}',
      '{"' + 'k'.repeat(300) + '":1}',
    )
    .map((s) => Buffer.from(s)),
  badUtf8.map((b) => Buffer.concat([Buffer.from('{"s":"'), b, Buffer.from('"}')])),
);

const payload = fc.oneof({ arbitrary: telemetryPayload, weight: 3 }, { arbitrary: fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)), weight: 1 });

const clientId = fc.oneof(deviceId, fc.string({ maxLength: 30 }), fc.constant(''), fc.string({ minLength: 129, maxLength: 200 }));

/** A CONNECT mqtt-packet can encode: any version, flags, keepalive, maybe a will and credentials. */
export const connectPacket: fc.Arbitrary<IConnectPacket> = fc
  .record({
    clientId,
    protocolVersion: fc.constantFrom<3 | 4 | 5>(4, 4, 4, 3, 5),
    clean: fc.boolean(),
    keepalive: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffff })),
    will: fc.option(fc.record({ topic, payload, qos, retain: fc.boolean() }), { nil: undefined }),
    username: fc.option(fc.string({ maxLength: 10 }), { nil: undefined }),
    password: fc.option(fc.uint8Array({ maxLength: 10 }).map((b) => Buffer.from(b)), { nil: undefined }),
  })
  .map((c) => {
    const p: IConnectPacket = {
      cmd: 'connect',
      protocolId: c.protocolVersion === 3 ? 'MQIsdp' : 'MQTT',
      protocolVersion: c.protocolVersion,
      clientId: c.clientId,
      clean: c.clean,
      keepalive: c.keepalive,
    };
    if (c.will) p.will = { ...c.will, payload: c.will.payload };
    if (c.username !== undefined) {
      p.username = c.username;
      if (c.password !== undefined) p.password = c.password;
    }
    return p;
  });

/** Any packet a client may send, as mqtt-packet objects. */
const clientPacket: fc.Arbitrary<Packet> = fc.oneof(
  { arbitrary: fc.record({ topic, payload, qos, retain: fc.boolean(), dup: fc.boolean(), messageId: packetId }).map((p) => ({ cmd: 'publish' as const, ...p })), weight: 6 },
  {
    arbitrary: fc
      .record({ messageId: packetId, subscriptions: fc.array(fc.record({ topic: topicFilter, qos }), { minLength: 1, maxLength: 3 }) })
      .map((p) => ({ cmd: 'subscribe' as const, ...p })),
    weight: 1,
  },
  { arbitrary: fc.record({ messageId: packetId, unsubscriptions: fc.array(topicFilter, { minLength: 1, maxLength: 3 }) }).map((p) => ({ cmd: 'unsubscribe' as const, ...p })), weight: 1 },
  { arbitrary: fc.record({ cmd: fc.constantFrom('puback' as const, 'pubrec' as const, 'pubrel' as const, 'pubcomp' as const), messageId: packetId }), weight: 1 },
  { arbitrary: fc.constantFrom<Packet>({ cmd: 'pingreq' }, { cmd: 'disconnect' }), weight: 1 },
  { arbitrary: connectPacket, weight: 1 },
);

/** Packets mqtt-packet will not build: broken strings, empty or wildcard topics, types 0 and 15. */
const handBuiltPacket: fc.Arbitrary<{ name: string; bytes: Buffer }> = fc.oneof(
  fc
    .record({ topic: badTopicBytes, payload, qos, id: packetId })
    .map(({ topic: t, payload: p, qos: q, id }) => {
      const idBytes = q > 0 ? Buffer.from([id >> 8, id & 0xff]) : Buffer.alloc(0);
      return { name: 'publish-bad-topic', bytes: rawPacket(0x30 | (q << 1), Buffer.concat([mqttString(t), idBytes, p])) };
    }),
  fc.record({ id: badUtf8, keepalive: fc.integer({ min: 0, max: 0xffff }) }).map(({ id, keepalive }) => ({
    name: 'connect-bad-client-id',
    bytes: rawPacket(0x10, Buffer.concat([mqttString('MQTT'), Buffer.from([4, 0x02, keepalive >> 8, keepalive & 0xff]), mqttString(id)])),
  })),
  fc.record({ id: deviceId, willTopic: badTopicBytes, willPayload: payload }).map(({ id, willTopic, willPayload }) => ({
    name: 'connect-bad-will-topic',
    bytes: rawPacket(0x10, Buffer.concat([mqttString('MQTT'), Buffer.from([4, 0x0e, 0, 0]), mqttString(id), mqttString(willTopic), mqttString(willPayload)])),
  })),
  fc.record({ flags: fc.integer({ min: 0, max: 0xff }), level: fc.integer({ min: 0, max: 0xff }), name: fc.constantFrom('MQTT', 'MQIsdp', 'mqtt', '', 'MQTTX') }).map(({ flags, level, name }) => ({
    name: 'connect-bad-header',
    bytes: rawPacket(0x10, Buffer.concat([mqttString(name), Buffer.from([level, flags, 0, 10]), mqttString('c1'), mqttString('w'), mqttString('p'), mqttString('u'), mqttString('pw')])),
  })),
  fc.record({ filter: badTopicBytes, q: fc.integer({ min: 0, max: 255 }), id: fc.integer({ min: 0, max: 0xffff }) }).map(({ filter, q, id }) => ({
    name: 'subscribe-bad-filter',
    bytes: rawPacket(0x82, Buffer.concat([Buffer.from([id >> 8, id & 0xff]), mqttString(filter), Buffer.from([q])])),
  })),
  fc.record({ id: fc.integer({ min: 0, max: 0xffff }) }).map(({ id }) => ({ name: 'subscribe-empty', bytes: rawPacket(0x82, Buffer.from([id >> 8, id & 0xff])) })),
  fc.record({ type: fc.constantFrom(0, 15), flags: fc.integer({ min: 0, max: 15 }), body: fc.uint8Array({ maxLength: 20 }) }).map(({ type, flags, body }) => ({
    name: `type-${type}`,
    bytes: rawPacket((type << 4) | flags, body),
  })),
  fc.record({ id: fc.constantFrom(0, 1, 0xffff) }).map(({ id }) => ({ name: 'puback-id', bytes: rawPacket(0x40, Buffer.from([id >> 8, id & 0xff])) })),
  fc.uint8Array({ minLength: 1, maxLength: 64 }).map((b) => ({ name: 'random-bytes', bytes: Buffer.from(b) })),
);

/** Damage done to an encoded packet. */
type Mutation = { name: string; apply: (p: Buffer) => Buffer };

/** The first byte, the number of remaining-length bytes, and what follows them. */
function splitHeader(p: Buffer): { first: number; lengthBytes: number; body: Buffer } {
  let i = 1;
  while (i < p.length && i < 4 && ((p[i] as number) & 0x80) !== 0) i++;
  return { first: p[0] as number, lengthBytes: i, body: p.subarray(Math.min(i + 1, p.length)) };
}

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { arbitrary: fc.constant<Mutation>({ name: 'none', apply: (p) => p }), weight: 3 },
  {
    arbitrary: fc.integer({ min: 0, max: 7 }).map((bit): Mutation => ({ name: `flip-header-bit-${bit}`, apply: (p) => Buffer.concat([Buffer.from([(p[0] as number) ^ (1 << bit)]), p.subarray(1)]) })),
    weight: 2,
  },
  {
    arbitrary: fc.integer({ min: 1, max: 15 }).map((flags): Mutation => ({ name: `flags-${flags}`, apply: (p) => Buffer.concat([Buffer.from([((p[0] as number) & 0xf0) | flags]), p.subarray(1)]) })),
    weight: 2,
  },
  { arbitrary: fc.constant<Mutation>({ name: 'qos-3', apply: (p) => Buffer.concat([Buffer.from([(p[0] as number) | 0x06]), p.subarray(1)]) }), weight: 1 },
  {
    arbitrary: fc.integer({ min: 0, max: 15 }).map((type): Mutation => ({ name: `type-${type}`, apply: (p) => Buffer.concat([Buffer.from([(type << 4) | ((p[0] as number) & 0x0f)]), p.subarray(1)]) })),
    weight: 1,
  },
  { arbitrary: fc.double({ min: 0, max: 1, noNaN: true }).map((f): Mutation => ({ name: 'truncate', apply: (p) => p.subarray(0, Math.max(1, Math.floor(p.length * f))) })), weight: 2 },
  {
    arbitrary: fc.constantFrom(1, 2, 100, 4096, 1 << 20, 16 << 20, 17 << 20, MAX_REMAINING_LENGTH).map((extra): Mutation => ({
      name: `length-plus-${extra}`,
      apply: (p) => {
        const { first, body } = splitHeader(p);
        return Buffer.concat([Buffer.from([first]), encodeRemainingLength(Math.min(MAX_REMAINING_LENGTH, body.length + extra)), body]);
      },
    })),
    weight: 2,
  },
  {
    // The 5-byte header announcing 256 MB, followed by what there was.
    arbitrary: fc.constant<Mutation>({ name: 'length-256mb', apply: (p) => Buffer.concat([Buffer.from([p[0] as number, 0xff, 0xff, 0xff, 0x7f]), splitHeader(p).body]) }),
    weight: 1,
  },
  {
    arbitrary: fc.integer({ min: 1, max: 64 }).map((less): Mutation => ({
      name: `length-minus-${less}`,
      apply: (p) => {
        const { first, body } = splitHeader(p);
        return Buffer.concat([Buffer.from([first]), encodeRemainingLength(Math.max(0, body.length - less)), body]);
      },
    })),
    weight: 1,
  },
  {
    arbitrary: fc
      .constantFrom([0xff, 0xff, 0xff, 0xff, 0x7f], [0x80, 0x80, 0x80, 0x80, 0x01], [0x80, 0x00], [0x80, 0x80, 0x80, 0x00], [0xff])
      .map((header): Mutation => ({ name: `varint-${Buffer.from(header).toString('hex')}`, apply: (p) => Buffer.concat([Buffer.from([p[0] as number, ...header]), splitHeader(p).body]) })),
    weight: 1,
  },
  {
    arbitrary: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }).map((edits): Mutation => ({
      name: 'overwrite-bytes',
      apply: (p) => {
        const q = Buffer.from(p);
        for (const [at, v] of edits) if (q.length > 2) q[2 + (at % (q.length - 2))] = v;
        return q;
      },
    })),
    weight: 2,
  },
  { arbitrary: fc.uint8Array({ minLength: 1, maxLength: 32 }).map((g): Mutation => ({ name: 'append-garbage', apply: (p) => Buffer.concat([p, g]) })), weight: 1 },
);

/** One encoded client packet, maybe mutated. */
const mutatedPacket: fc.Arbitrary<{ name: string; bytes: Buffer }> = fc.oneof(
  { arbitrary: fc.tuple(clientPacket, mutation).map(([p, m]) => ({ name: `${p.cmd}/${m.name}`, bytes: m.apply(encode(p)) })), weight: 4 },
  { arbitrary: fc.tuple(handBuiltPacket, mutation).map(([p, m]) => ({ name: `${p.name}/${m.name}`, bytes: m.apply(p.bytes) })), weight: 2 },
  { arbitrary: handBuiltPacket, weight: 1 },
);

/** A valid v3.1.1 CONNECT, so the mutated packet after it reaches the connected-client code paths. */
const validConnect = fc.record({ id: deviceId, clean: fc.boolean() }).map(({ id, clean }) => connectBytes(`fz-${id}`, { clean }));

/** Splits bytes into chunks written separately, to exercise the parser's partial reads. */
function chunked(bytes: Buffer, cuts: number[]): string[] {
  if (bytes.length < 2 || cuts.length === 0) return [bytes.toString('hex')];
  const at = [...new Set(cuts.map((c) => 1 + (c % (bytes.length - 1))))].sort((a, b) => a - b);
  const out: string[] = [];
  let from = 0;
  for (const c of at) {
    out.push(bytes.subarray(from, c).toString('hex'));
    from = c;
  }
  out.push(bytes.subarray(from).toString('hex'));
  return out;
}

const cuts = fc.oneof({ arbitrary: fc.constant<number[]>([]), weight: 3 }, { arbitrary: fc.array(fc.nat(), { minLength: 1, maxLength: 4 }), weight: 1 });

/** Every kind of case, weighted toward a valid CONNECT followed by a damaged packet. */
export const fuzzCase: fc.Arbitrary<FuzzCase> = fc.oneof(
  {
    // A valid CONNECT, then one damaged packet.
    arbitrary: fc.tuple(validConnect, mutatedPacket, cuts).map(([c, p, k]) => ({ kind: `connect+${p.name}`, chunks: [c.toString('hex'), ...chunked(p.bytes, k)] })),
    weight: 10,
  },
  {
    // A valid CONNECT, then several packets in one write (aedes dispatches a read chunk concurrently).
    arbitrary: fc.tuple(validConnect, fc.array(mutatedPacket, { minLength: 2, maxLength: 5 })).map(([c, ps]) => ({
      kind: `connect+${ps.map((p) => p.name).join('+')}`,
      chunks: [Buffer.concat([c, ...ps.map((p) => p.bytes)]).toString('hex')],
    })),
    weight: 2,
  },
  {
    // PUBLISH garbage to the telemetry topic at every QoS, DUP and retain.
    arbitrary: fc.tuple(validConnect, fc.oneof(fc.constant('x'), deviceId), telemetryPayload, qos, packetId, fc.boolean(), fc.boolean()).map(([c, id, p, q, mid, dup, retain]) => ({
      kind: `connect+telemetry-qos${q}`,
      chunks: [c.toString('hex'), encode({ cmd: 'publish', topic: `devices/${id}/telemetry`, payload: p, qos: q, messageId: mid, dup, retain }).toString('hex')],
    })),
    weight: 3,
  },
  {
    // A damaged CONNECT.
    arbitrary: fc.tuple(connectPacket, mutation, cuts).map(([c, m, k]) => ({ kind: `connect/${m.name}`, chunks: chunked(m.apply(encode(c)), k) })),
    weight: 2,
  },
  {
    // Packets before any CONNECT ([MQTT-3.1.0-1]).
    arbitrary: mutatedPacket.map((p) => ({ kind: `before-connect:${p.name}`, chunks: [p.bytes.toString('hex')] })),
    weight: 2,
  },
  {
    // A second CONNECT on the same connection ([MQTT-3.1.0-2]).
    arbitrary: fc.tuple(validConnect, connectPacket).map(([c, second]) => ({ kind: 'second-connect', chunks: [c.toString('hex'), encode(second).toString('hex')] })),
    weight: 1,
  },
);

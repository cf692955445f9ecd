/**
 * Checks on the bytes of each MQTT packet before aedes' parser (mqtt-packet 9) sees them,
 * for what neither enforces:
 *
 * - the packet size: mqtt-packet buffers up to the 256 MB a header may announce, before
 *   CONNECT too, and neither has a limit;
 * - MQTT 3.1.1's rules for the CONNECT, PUBLISH, SUBSCRIBE and UNSUBSCRIBE fields that
 *   mqtt-packet parses without checking. mqtt-packet decodes every string with
 *   `toString('utf8')`, which turns ill-formed bytes into U+FFFD (mqttjs/mqtt-packet#59),
 *   so the bytes must be judged before that; it takes will QoS 3, a password without a
 *   user name, packet id 0, an UNSUBSCRIBE without filters (aedes answers it) and a
 *   SUBSCRIBE without any (dropped only because aedes' empty SUBACK fails to encode); it
 *   refuses a protocol level other than 3, 4 or 5 with an error, so aedes closes without
 *   the CONNACK 0x01 that [MQTT-3.1.2-2] asks for; and aedes accepts an empty client id
 *   with CleanSession 0, giving it a random one.
 *
 * A violation closes the connection at once ([MQTT-4.8.0-1]: a protocol violation closes
 * the network connection), after a CONNACK where the specification asks for one. Packets
 * that came in the same socket read are not processed either: none of them was
 * acknowledged. An MQTT 5 CONNECT passes unchecked: aedes answers it with CONNACK 0x01.
 *
 * @module
 */
import { isUtf8 } from 'node:buffer';
import type { Duplex } from 'node:stream';

/** Why a connection is closed; `connack`: the CONNACK return code to send first. */
export interface WireViolation {
  reason: string;
  /** 1: unacceptable protocol level, 2: identifier rejected (MQTT 3.1.1 §3.2.2.3). */
  connack?: 1 | 2;
}

/**
 * What a packet's check reads: it yields how many body bytes it wants next and gets them;
 * it returns a violation, or nothing when the packet is fine (the rest of the body is
 * skipped). A check that asks for more than the packet holds is dropped: mqtt-packet
 * refuses such a packet itself.
 */
type Check = Generator<number, WireViolation | undefined, Buffer>;

// Control packet types (MQTT 3.1.1 §2.2.1).
const CONNECT = 1;
const PUBLISH = 3;
const SUBSCRIBE = 8;
const UNSUBSCRIBE = 10;

const EMPTY = Buffer.alloc(0);

/**
 * Follows MQTT packet boundaries (one type/flags byte, a 1–4 byte remaining length, the
 * body) across the chunks of one connection and checks each packet; says what is wrong
 * with the first bad one. A check buffers at most one field (≤ 65,535 bytes).
 */
export class PacketInspector {
  private firstByte = 0;
  private body = 0; // bytes of the current packet's body still to come
  private inLength = false; // inside the variable-length field
  private length = 0;
  private lengthBytes = 0;
  private check: Check | undefined;
  private want = 0; // bytes the check asked for
  private held: Buffer[] = []; // what it has of them so far
  private heldBytes = 0;
  private connectSeen = false;
  private v5 = false;

  constructor(private readonly maxPacketBytes: number) {}

  feed(chunk: Buffer): WireViolation | undefined {
    let i = 0;
    while (i < chunk.length) {
      if (this.body > 0) {
        const n = Math.min(this.body, chunk.length - i);
        const piece = chunk.subarray(i, i + n);
        i += n;
        const violation = this.inspect(piece);
        if (violation !== undefined) return violation;
        continue;
      }
      const byte = chunk[i++] as number;
      if (!this.inLength) {
        this.firstByte = byte;
        this.inLength = true;
        this.length = 0;
        this.lengthBytes = 0;
        continue;
      }
      this.length += (byte & 0x7f) * 128 ** this.lengthBytes++;
      if (byte & 0x80) {
        if (this.lengthBytes === 4) return { reason: 'invalid MQTT remaining length (more than 4 bytes)' };
        continue;
      }
      this.inLength = false;
      if (this.length > this.maxPacketBytes) return { reason: `MQTT packet of ${this.length} bytes exceeds the limit of ${this.maxPacketBytes} bytes` };
      this.body = this.length;
      const check = this.checkFor(this.firstByte, this.length);
      if (check !== undefined) {
        this.check = check;
        const violation = this.advance(check.next());
        if (violation !== undefined) return violation;
      }
    }
    return undefined;
  }

  /** Hands body bytes to the packet's check, field by field; skips what it does not want. */
  private inspect(piece: Buffer): WireViolation | undefined {
    let at = 0;
    while (this.check !== undefined && at < piece.length) {
      const take = Math.min(this.want - this.heldBytes, piece.length - at);
      const part = piece.subarray(at, at + take);
      at += take;
      this.body -= take;
      let field = part;
      if (this.heldBytes > 0 || take < this.want) {
        this.held.push(part);
        this.heldBytes += take;
        if (this.heldBytes < this.want) continue;
        field = Buffer.concat(this.held);
        this.held = [];
        this.heldBytes = 0;
      }
      const violation = this.advance(this.check.next(field));
      if (violation !== undefined) return violation;
    }
    this.body -= piece.length - at;
    return undefined;
  }

  private advance(step: IteratorResult<number, WireViolation | undefined>): WireViolation | undefined {
    const check = this.check as Check;
    while (!step.done && step.value === 0) step = check.next(EMPTY);
    if (step.done) {
      this.check = undefined;
      return step.value;
    }
    if (step.value > this.body) this.check = undefined;
    else this.want = step.value;
    return undefined;
  }

  private checkFor(firstByte: number, length: number): Check | undefined {
    const type = firstByte >> 4;
    if (type === CONNECT) {
      // A second CONNECT is aedes' to refuse ([MQTT-3.1.0-2]).
      if (this.connectSeen) return undefined;
      this.connectSeen = true;
      return this.connect();
    }
    if (this.v5) return undefined;
    if (type === PUBLISH) return publish((firstByte >> 1) & 3);
    if (type === SUBSCRIBE) return filters('SUBSCRIBE', length, true);
    if (type === UNSUBSCRIBE) return filters('UNSUBSCRIBE', length, false);
    return undefined;
  }

  private *connect(): Check {
    const name = (yield* string()).toString('latin1');
    // mqtt-packet refuses any other protocol name, closing the connection ([MQTT-3.1.2-1] allows that).
    if (name !== 'MQTT' && name !== 'MQIsdp') return undefined;
    const header = yield 2;
    // Bit 7 is mosquitto's bridge flag, which mqtt-packet strips.
    const level = (header[0] as number) & 0x7f;
    const flags = header[1] as number;
    if (level === 5) {
      this.v5 = true;
      return undefined;
    }
    if (level !== 3 && level !== 4) return { reason: `unsupported MQTT protocol level ${level} [MQTT-3.1.2-2]`, connack: 1 };
    const will = (flags & 0x04) !== 0;
    if (will && ((flags >> 3) & 3) === 3) return { reason: 'will QoS 3 [MQTT-3.1.2-14]' };
    const userName = (flags & 0x80) !== 0;
    if ((flags & 0x40) !== 0 && !userName) return { reason: 'password without a user name [MQTT-3.1.2-22]' };
    yield 2; // keep alive
    const clientId = yield* string();
    const problem = badString(clientId, 'client id') ?? (will ? badString(yield* string(), 'will topic') : undefined);
    if (problem !== undefined) return problem;
    if (will) yield* string(); // the will message: any bytes
    if (userName) {
      const bad = badString(yield* string(), 'user name');
      if (bad !== undefined) return bad;
    }
    if (clientId.length === 0 && (flags & 0x02) === 0) return { reason: 'zero-length client id with CleanSession 0 [MQTT-3.1.3-8]', connack: 2 };
    return undefined;
  }
}

/** An MQTT string's bytes: a 2-byte big-endian length, then that many bytes. */
function* string(): Generator<number, Buffer, Buffer> {
  const length = (yield 2).readUInt16BE(0);
  return yield length;
}

function* publish(qos: number): Check {
  const bad = badString(yield* string(), 'topic name');
  if (bad !== undefined) return bad;
  // QoS 3 is mqtt-packet's to refuse.
  if ((qos === 1 || qos === 2) && (yield 2).readUInt16BE(0) === 0) return { reason: `QoS ${qos} PUBLISH with packet id 0 [MQTT-2.3.1-1]` };
  return undefined;
}

/** SUBSCRIBE (filter + options byte, repeated) and UNSUBSCRIBE (filters). */
function* filters(packet: 'SUBSCRIBE' | 'UNSUBSCRIBE', length: number, withOptions: boolean): Check {
  if ((yield 2).readUInt16BE(0) === 0) return { reason: `${packet} with packet id 0 [MQTT-2.3.1-1]` };
  // [MQTT-3.8.3-3], [MQTT-3.10.3-2]
  if (length === 2) return { reason: `${packet} without topic filters [${withOptions ? 'MQTT-3.8.3-3' : 'MQTT-3.10.3-2'}]` };
  let read = 2;
  while (read < length) {
    const filter = yield* string();
    const bad = badString(filter, 'topic filter');
    if (bad !== undefined) return bad;
    read += 2 + filter.length;
    if (withOptions) {
      yield 1; // requested QoS: mqtt-packet checks it
      read += 1;
    }
  }
  return undefined;
}

/** [MQTT-1.5.3-1]: well-formed UTF-8 (no surrogates, no over-long forms); [MQTT-1.5.3-2]: no U+0000. */
function badString(bytes: Buffer, what: string): WireViolation | undefined {
  if (!isUtf8(bytes)) return { reason: `${what} is not well-formed UTF-8 [MQTT-1.5.3-1]` };
  // In well-formed UTF-8 a zero byte is U+0000 and nothing else.
  if (bytes.includes(0)) return { reason: `${what} contains U+0000 [MQTT-1.5.3-2]` };
  return undefined;
}

/**
 * Puts a {@link PacketInspector} between `socket` and aedes, which only ever consumes a
 * connection through `read()` on 'readable': each chunk is inspected before aedes gets
 * it, and on a violation aedes gets nothing more and the connection is closed — over the
 * size limit before the body is buffered (the socket's own buffer stays bounded by its
 * highWaterMark, since nothing reads it any more).
 */
export function guardConnection(socket: Duplex, maxPacketBytes: number): void {
  const inspector = new PacketInspector(maxPacketBytes);
  const read = socket.read.bind(socket);
  let refused = false;
  socket.read = (size?: number) => {
    const chunk: unknown = read(size);
    if (refused || !Buffer.isBuffer(chunk)) return refused ? null : chunk;
    const violation = inspector.feed(chunk);
    if (violation === undefined) return chunk;
    refused = true;
    // The error reaches aedes through the socket's 'error' event ('connectionError' or 'clientError').
    const error = new Error(`MQTT protocol violation: ${violation.reason}`);
    // [MQTT-3.2.2-5]: after a CONNACK with a non-zero return code the server closes the connection.
    if (violation.connack === undefined) socket.destroy(error);
    else socket.write(Buffer.from([0x20, 0x02, 0x00, violation.connack]), () => socket.destroy(error));
    return null;
  };
}

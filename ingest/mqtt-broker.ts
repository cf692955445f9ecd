import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Aedes, type AedesOptions, type AedesPublishPacket, type Client, type PublishPacket } from 'aedes';
import type { Logger } from '../core/logger.js';
import { RejectedPayload } from './payload.js';
import type { TelemetryIngest } from './telemetry-ingest.js';
import { routeTopic } from './topics.js';

export interface MqttBrokerOptions {
  host: string;
  port: number;
  ingest: TelemetryIngest;
  logger: Logger;
  /**
   * Largest MQTT packet (remaining length) a client may announce; a connection that
   * announces more is dropped before its body is read. Default `DEFAULT_MAX_PACKET_BYTES`;
   * pass `maxPacketBytesFor(config.maxPayloadBytes)` to tie it to the payload limit.
   */
  maxPacketBytes?: number;
  /** Who may connect, publish and subscribe; without it every client is allowed (open mode). */
  access?: BrokerAccess;
}

/**
 * The broker's access control (ingest/mqtt-auth.ts implements it): aedes' own hooks for
 * CONNECT, SUBSCRIBE and forwarding, and a check that runs first in the publish path.
 */
export interface BrokerAccess {
  authenticate: NonNullable<AedesOptions['authenticate']>;
  authorizeSubscribe: NonNullable<AedesOptions['authorizeSubscribe']>;
  authorizeForward?: AedesOptions['authorizeForward'];
  /** An error when `client` may not publish `packet` (also called for its will and retained messages). */
  checkPublish(client: Client, packet: PublishPacket): Error | null;
}

/**
 * Room above the largest accepted payload for the rest of a PUBLISH: a topic of up to
 * 65,535 bytes plus its length, a packet id, and MQTT 5 properties.
 */
export const MQTT_PACKET_HEADROOM_BYTES = 128 * 1024;

/** The packet limit that goes with a payload limit. */
export function maxPacketBytesFor(maxPayloadBytes: number): number {
  return maxPayloadBytes + MQTT_PACKET_HEADROOM_BYTES;
}

/** Without an explicit limit: the ceiling of the `maxPayloadBytes` setting (16 MiB) plus headroom. */
export const DEFAULT_MAX_PACKET_BYTES = maxPacketBytesFor(16 * 1024 * 1024);

/**
 * Rejected telemetry is re-routed here instead of to its topic, so subscribers of
 * `devices/+/telemetry` never see it while a debugging client can watch
 * `$tributary/rejects/#` ([MQTT-4.7.2-1]: `#` never matches `$` topics).
 */
export const REJECTS_TOPIC_PREFIX = '$tributary/rejects/';

/**
 * The MQTT front door: aedes on a TCP listener. A telemetry PUBLISH is written to the
 * store inside aedes' `authorizePublish` hook, which runs before aedes writes the QoS 1
 * PUBACK (lib/handlers/publish.js: authorizePublish → enqueuePublish → PUBACK), so a
 * PUBACK means the reading is durable. The `published` hook would be too late: aedes
 * acknowledges before calling it.
 */
export class MqttBroker {
  private constructor(
    readonly aedes: Aedes,
    private readonly server: Server,
    private readonly logger: Logger,
  ) {}

  static async start(opts: MqttBrokerOptions): Promise<MqttBroker> {
    const logger = opts.logger;
    const aedes = await Aedes.createBroker({
      // Device ids may be up to 128 characters; aedes' default only applies to MQTT 3.1.
      maxClientsIdLength: 128,
      authorizePublish: (client, packet, callback) => {
        const denied = client !== null && opts.access !== undefined ? opts.access.checkPublish(client, packet) : null;
        if (denied !== null) return callback(denied);
        authorizePublish(opts.ingest, logger, client, packet, callback);
      },
      ...(opts.access === undefined
        ? {}
        : {
            authenticate: opts.access.authenticate,
            authorizeSubscribe: opts.access.authorizeSubscribe,
            ...(opts.access.authorizeForward === undefined ? {} : { authorizeForward: opts.access.authorizeForward }),
          }),
    });
    aedes.on('clientError', (client: Client, err: Error) => logger.debug({ clientId: client.id, err: err.message }, 'mqtt client error'));
    aedes.on('connectionError', (client: Client, err: Error) => logger.debug({ clientId: client?.id, err: err.message }, 'mqtt connection error'));

    const maxPacketBytes = opts.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES;
    const server = createServer((socket: Socket) => {
      // Nagle would hold a PUBACK for up to 40 ms behind a delayed ACK.
      socket.setNoDelay(true);
      guardPacketSize(socket, maxPacketBytes);
      aedes.handle(socket);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port, opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => logger.error({ err }, 'mqtt listener error'));
    return new MqttBroker(aedes, server, logger);
  }

  get address(): { host: string; port: number } {
    const a = this.server.address() as AddressInfo;
    return { host: a.address, port: a.port };
  }

  get listening(): boolean {
    return this.server.listening;
  }

  /** Publishes a message on behalf of the server (commands to devices). */
  publish(packet: Pick<PublishPacket, 'topic' | 'payload' | 'qos' | 'retain'>): Promise<void> {
    return new Promise((resolve, reject) => {
      this.aedes.publish({ cmd: 'publish', dup: false, ...packet } as PublishPacket, (err?: Error) => (err ? reject(err) : resolve()));
    });
  }

  /** Stops accepting connections and disconnects every client. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await new Promise<void>((resolve) => this.aedes.close(() => resolve()));
    await closed;
    this.logger.debug('mqtt broker closed');
  }
}

/**
 * mqtt-packet buffers a packet until all of its announced remaining length has arrived
 * (up to 268,435,455 bytes, before CONNECT too) and neither it nor aedes has a size
 * limit, so one connection could make the broker hold 256 MB. This watches the fixed
 * headers of the bytes aedes reads off the socket (aedes only ever consumes a
 * connection through `read()` on 'readable') and destroys the connection as soon as a
 * header announces more than `maxPacketBytes` — before the body is buffered. The
 * socket's own buffer stays bounded by its highWaterMark, since nothing reads it any
 * more. Framing is MQTT's: one type/flags byte, a 1–4 byte variable length, the body.
 */
function guardPacketSize(socket: Socket, maxPacketBytes: number): void {
  const frames = new PacketFramer(maxPacketBytes);
  const read = socket.read.bind(socket);
  socket.read = (size?: number) => {
    const chunk: unknown = read(size);
    if (!Buffer.isBuffer(chunk)) return chunk;
    const problem = frames.feed(chunk);
    if (problem === undefined) return chunk;
    // The error reaches aedes through the socket's 'error' event ('connectionError' or 'clientError').
    socket.destroy(new Error(problem));
    return null;
  };
}

/** Follows MQTT packet boundaries across chunks; says what is wrong with the first over-limit header. */
export class PacketFramer {
  private body = 0; // bytes of the current packet's body still to come
  private inLength = false; // inside the variable-length field
  private length = 0;
  private lengthBytes = 0;

  constructor(private readonly maxPacketBytes: number) {}

  feed(chunk: Buffer): string | undefined {
    let i = 0;
    while (i < chunk.length) {
      if (this.body > 0) {
        const n = Math.min(this.body, chunk.length - i);
        this.body -= n;
        i += n;
        continue;
      }
      const byte = chunk[i++] as number;
      if (!this.inLength) {
        // The type/flags byte; mqtt-packet judges it.
        this.inLength = true;
        this.length = 0;
        this.lengthBytes = 0;
        continue;
      }
      this.length += (byte & 0x7f) * 128 ** this.lengthBytes++;
      if (byte & 0x80) {
        if (this.lengthBytes === 4) return 'invalid MQTT remaining length (more than 4 bytes)';
        continue;
      }
      this.inLength = false;
      if (this.length > this.maxPacketBytes) return `MQTT packet of ${this.length} bytes exceeds the limit of ${this.maxPacketBytes} bytes`;
      this.body = this.length;
    }
    return undefined;
  }
}

function authorizePublish(
  ingest: TelemetryIngest,
  logger: Logger,
  client: Client | null,
  packet: PublishPacket,
  callback: (error?: Error | null) => void,
): void {
  const topic = packet.topic;
  if (topic.startsWith('$SYS/')) return callback(new Error('$SYS topics are reserved'));
  if (topic.startsWith(REJECTS_TOPIC_PREFIX)) return callback(new Error(`${REJECTS_TOPIC_PREFIX} topics are reserved`));
  // aedes passes no client only for wills left over from an earlier broker run (its
  // _clearWills at start); a live client's will comes with the client and is treated as
  // that client's publish.
  if (client === null) return callback(null);

  const route = routeTopic(topic);
  if (route.kind === 'other' || route.kind === 'device-other') return callback(null);
  if (route.kind === 'invalid-device') {
    ingest.reject('mqtt', 'invalid_topic', { clientId: client.id, topic }, `device id ${JSON.stringify(route.segment)} in topic is not a valid device id`);
    divert(packet, route.segment);
    return callback(null);
  }

  const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
  const delivery = packet.qos > 0 && packet.messageId !== undefined ? { clientId: client.id, packetId: packet.messageId } : undefined;
  ingest.ingestPayload(route.deviceId, payload, delivery).then(
    () => callback(null),
    (err: unknown) => {
      if (err instanceof RejectedPayload) {
        // MQTT 3.1.1 cannot refuse a PUBLISH; acknowledge it and keep the client connected.
        divert(packet, route.deviceId);
        return callback(null);
      }
      // Not stored: no PUBACK. Dropping the connection makes the client re-send after reconnecting.
      logger.error({ err, clientId: client.id, deviceId: route.deviceId }, 'telemetry write failed; disconnecting client without PUBACK');
      callback(err instanceof Error ? err : new Error(String(err)));
    },
  );
}

function divert(packet: PublishPacket | AedesPublishPacket, deviceId: string): void {
  packet.topic = `${REJECTS_TOPIC_PREFIX}${deviceId.replace(/[#+/]/g, '_') || '_'}`;
  packet.retain = false;
}

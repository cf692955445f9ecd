import { createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Aedes, type AedesPublishPacket, type Client, type PublishPacket } from 'aedes';
import type { Logger } from '../core/logger.js';
import { RejectedPayload } from './payload.js';
import type { TelemetryIngest } from './telemetry-ingest.js';
import { routeTopic } from './topics.js';

export interface MqttBrokerOptions {
  host: string;
  port: number;
  ingest: TelemetryIngest;
  logger: Logger;
}

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
      authorizePublish: (client, packet, callback) => authorizePublish(opts.ingest, logger, client, packet, callback),
    });
    aedes.on('clientError', (client: Client, err: Error) => logger.debug({ clientId: client.id, err: err.message }, 'mqtt client error'));
    aedes.on('connectionError', (client: Client, err: Error) => logger.debug({ clientId: client?.id, err: err.message }, 'mqtt connection error'));

    const server = createServer((socket: Socket) => {
      // Nagle would hold a PUBACK for up to 40 ms behind a delayed ACK.
      socket.setNoDelay(true);
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
  // Wills published after a client is gone have no client; they are not telemetry writes.
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

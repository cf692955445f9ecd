import type { EventEmitter } from 'node:events';
import type { IncomingMessage, Server as HttpServer } from 'node:http';
import type { AddressInfo, Server } from 'node:net';
import type { Duplex } from 'node:stream';
import { Aedes, type AedesOptions, type AedesPublishPacket, type Client, type PublishPacket, type Subscription } from 'aedes';
import { invalidParameter, isTributaryError } from '../core/errors.js';
import { isValidDeviceId } from '../core/ids.js';
import type { Logger } from '../core/logger.js';
import { memoryPersistence, onlyGrantedSubscriptions, type AedesAsyncPersistence } from './mqtt-persistence.js';
import { attachWebSocket, listenTcp, type TlsCredentials, type WebSocketTransport } from './mqtt-transports.js';
import { guardConnection } from './mqtt-wire.js';
import { RejectedPayload } from './payload.js';
import type { TelemetryIngest } from './telemetry-ingest.js';
import { COMMAND_NAME_PATTERN, commandTopic, routeTopic } from './topics.js';

/** Per-connection limits; AWS IoT Core's message-broker quotas where it has one. */
export interface BrokerLimits {
  /** Open MQTT connections (all transports). A CONNECT beyond it gets CONNACK 3, "server unavailable". */
  maxConnections: number;
  /**
   * QoS 1/2 PUBLISHes of one client being processed at once (AWS: 100 unacknowledged
   * inbound messages); the client's further packets wait, unread, until PUBACKs go out.
   */
  maxInflight: number;
  /** Subscriptions one client may hold (AWS: 50); a SUBSCRIBE beyond it is refused in its SUBACK (0x80). */
  maxSubscriptions: number;
  /** A subscriber whose socket stays full this long is disconnected; 0 waits forever. */
  drainTimeoutMs: number;
}

/** Without explicit limits (embedding, tests); the `mqttMax*` settings have the same defaults. */
export const DEFAULT_BROKER_LIMITS: BrokerLimits = { maxConnections: 10_000, maxInflight: 100, maxSubscriptions: 50, drainTimeoutMs: 10_000 };

/** What the broker reports to Prometheus (core/metrics.ts). */
export interface BrokerMetrics {
  connectedClients: { set(value: number): void };
  messagesOut: { inc(): void };
  /** Client PUBLISHes on topics other than `devices/{id}/telemetry`: forwarded, not stored. */
  nonTelemetryPublishes: { inc(): void };
}

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
  /** Where sessions, queued messages and retained messages live; default aedes' in-memory one. */
  persistence?: AedesAsyncPersistence;
  /** Serve the TCP listener over TLS with these. */
  tls?: TlsCredentials;
  limits?: Partial<BrokerLimits>;
  metrics?: BrokerMetrics;
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
 * Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 §4.8.2, and a common 3.1.1
 * extension) are refused with SUBACK 0x80: aedes 1.2 has none, and as a plain 3.1.1
 * filter it would be granted and match only topics that start with `$share/` — never
 * delivering what the client meant.
 */
const SHARED_SUBSCRIPTION_PREFIX = '$share/';

const COMMAND_NAME = new RegExp(COMMAND_NAME_PATTERN, 'u');

/**
 * Sends commands to devices (the API's `POST .../commands/{name}` and handlers'
 * `context.publish`). {@link MqttBroker} is the single-node implementation; in cluster
 * mode cluster/command-topic.ts sends through Kafka to every node's broker.
 */
export interface CommandSender {
  /**
   * Publishes `payload` as JSON on `devices/{deviceId}/commands/{name}`; resolves with
   * the topic once the command is on its way: here, once the broker has handed it to the
   * connected subscribers and queued it for offline persistent sessions (QoS 1). Nobody
   * subscribed is not an error.
   * @throws TributaryError `InvalidParameter` for a bad device id or command name.
   */
  sendCommand(deviceId: string, name: string, payload: unknown, qos: 0 | 1): Promise<string>;
}

/** A command as a broker publishes it. */
export interface Command {
  topic: string;
  /** The JSON of the command's payload. */
  payload: Buffer;
  qos: 0 | 1;
}

/**
 * Checks a command's device id and name and builds what is published; every
 * {@link CommandSender} validates through here, before anything leaves the node.
 * @throws TributaryError `InvalidParameter` for a bad device id or command name.
 */
export function commandOf(deviceId: string, name: string, payload: unknown, qos: 0 | 1): Command {
  if (!isValidDeviceId(deviceId)) throw invalidParameter('id', `${JSON.stringify(deviceId)} is not a valid device id (1-128 characters of A-Z a-z 0-9 . _ : -)`);
  if (!COMMAND_NAME.test(name)) throw invalidParameter('name', `${JSON.stringify(name)} is not a valid command name (one topic level of 1-128 characters, without / + # or control characters)`);
  return { topic: commandTopic(deviceId, name), payload: Buffer.from(JSON.stringify(payload ?? null)), qos };
}

/**
 * The MQTT front door: aedes behind the transports of ingest/mqtt-transports.ts (TCP or
 * TLS, and WebSocket on the HTTP server once {@link attachWebSocket} is called). A
 * telemetry PUBLISH is written to the store inside aedes' `authorizePublish` hook,
 * which runs before aedes writes the QoS 1 PUBACK (lib/handlers/publish.js:
 * authorizePublish → enqueuePublish → PUBACK), so a PUBACK means the reading is durable.
 * The `published` hook would be too late: aedes acknowledges before calling it.
 *
 * MQTT 3.1.1 (and 3.1) only: aedes 1.2 has no MQTT 5, and answers a v5 CONNECT with
 * CONNACK return code 1, "unacceptable protocol version" ([MQTT-3.1.2-2]). Every
 * connection's bytes pass ingest/mqtt-wire.ts first: the packet size limit and the
 * 3.1.1 rules that aedes and mqtt-packet leave unchecked.
 */
export class MqttBroker implements CommandSender {
  private webSocket: WebSocketTransport | undefined;

  private constructor(
    readonly aedes: Aedes,
    private readonly server: Server,
    private readonly logger: Logger,
    private readonly handleConnection: (stream: Duplex, req?: IncomingMessage) => void,
    private readonly maxPacketBytes: number,
  ) {}

  static async start(opts: MqttBrokerOptions): Promise<MqttBroker> {
    const logger = opts.logger;
    const limits = { ...DEFAULT_BROKER_LIMITS, ...opts.limits };
    const access = opts.access;
    const inflight = new InflightWindow(limits.maxInflight);
    const subscriptions = new SubscribeGate(limits.maxSubscriptions);
    const nonTelemetry = nonTelemetryNotice(logger, opts.metrics);
    // Connections (all transports) open now, and those that arrived over the limit.
    let open = 0;
    const overLimit = new WeakSet<Duplex>();

    const aedes = await Aedes.createBroker({
      // Device ids may be up to 128 characters; aedes' default only applies to MQTT 3.1.
      maxClientsIdLength: 128,
      drainTimeout: limits.drainTimeoutMs,
      persistence: onlyGrantedSubscriptions(opts.persistence ?? memoryPersistence(), (client: Client, topic) => subscriptions.granted(client, topic)),
      authenticate: (client, username, password, callback) => {
        if (overLimit.has(client.conn as Duplex)) {
          // [MQTT-3.2.2-5]: aedes sends CONNACK with this return code, then closes.
          return callback(Object.assign(new Error(`connection limit of ${limits.maxConnections} reached`), { returnCode: 3 }), false);
        }
        if (access === undefined) return callback(null, true);
        access.authenticate(client, username, password, callback);
      },
      authorizePublish: (client, packet, callback) => {
        const denied = client !== null && access !== undefined ? access.checkPublish(client, packet) : null;
        if (denied !== null) return callback(denied);
        if (client === null || packet.qos === 0) return authorizePublish(opts.ingest, logger, nonTelemetry, client, packet, callback);
        inflight.run(client, (release) =>
          authorizePublish(opts.ingest, logger, nonTelemetry, client, packet, (err) => {
            release();
            callback(err);
          }),
        );
      },
      authorizeSubscribe: (client, sub, callback) => {
        if (sub.topic.startsWith(SHARED_SUBSCRIPTION_PREFIX)) {
          logger.debug({ clientId: client.id, topic: sub.topic }, 'subscription refused: shared subscriptions are not supported');
          return callback(null, null as unknown as Subscription);
        }
        if (!subscriptions.admit(client, sub.topic)) {
          logger.debug({ clientId: client.id, topic: sub.topic, max: limits.maxSubscriptions }, 'subscription refused: per-client limit reached');
          return callback(null, null as unknown as Subscription);
        }
        if (access === undefined) {
          subscriptions.grant(client, sub.topic);
          return callback(null, sub);
        }
        access.authorizeSubscribe(client, sub, (err, result) => {
          if (!err && result) subscriptions.grant(client, result.topic);
          callback(err, result);
        });
      },
      authorizeForward: (client, packet) => {
        const forwarded = access?.authorizeForward === undefined ? packet : access.authorizeForward(client, packet);
        if (forwarded) opts.metrics?.messagesOut.inc();
        return forwarded;
      },
    });
    const reportClients = (): void => opts.metrics?.connectedClients.set(aedes.connectedClients);
    aedes.on('client', reportClients);
    aedes.on('clientDisconnect', reportClients);
    // A SUBSCRIBE is done; so is a reconnecting session's restore, which emits no 'subscribe'.
    aedes.on('subscribe', (_subs: Subscription[], client: Client) => subscriptions.settled(client));
    aedes.on('clientReady', (client: Client) => subscriptions.settled(client));
    aedes.on('clientError', (client: Client, err: Error) => logger.debug({ clientId: client.id, err: err.message }, 'mqtt client error'));
    aedes.on('connectionError', (client: Client, err: Error) => logger.debug({ clientId: client?.id, err: err.message }, 'mqtt connection error'));
    // aedes emits 'error' when its persistence fails while queueing for offline sessions;
    // unhandled, that would end the process.
    (aedes as EventEmitter).on('error', (err: Error) => logger.error({ err }, 'mqtt broker error'));

    const maxPacketBytes = opts.maxPacketBytes ?? DEFAULT_MAX_PACKET_BYTES;
    const handleConnection = (stream: Duplex, req?: IncomingMessage): void => {
      if (open >= limits.maxConnections) overLimit.add(stream);
      open++;
      stream.once('close', () => open--);
      readWholeBuffer(stream);
      guardConnection(stream, maxPacketBytes);
      aedes.handle(stream, req);
    };
    const server = await listenTcp({ host: opts.host, port: opts.port, ...(opts.tls === undefined ? {} : { tls: opts.tls }), onConnection: handleConnection, logger });
    return new MqttBroker(aedes, server, logger, handleConnection, maxPacketBytes);
  }

  /**
   * Serves MQTT over WebSocket at `/mqtt` on `server` (the HTTP API's; wss when it is
   * HTTPS). Call before the server listens.
   */
  attachWebSocket(server: HttpServer): void {
    // One WebSocket message carries one MQTT packet plus at most 5 bytes of fixed header.
    this.webSocket = attachWebSocket(server, { onConnection: this.handleConnection, maxMessageBytes: this.maxPacketBytes + 5, logger: this.logger });
  }

  get address(): { host: string; port: number } {
    const a = this.server.address() as AddressInfo;
    return { host: a.address, port: a.port };
  }

  /** Closes the connection of the client with this id, if it is connected (a revoked or deleted device). */
  disconnect(clientId: string): void {
    // aedes keeps connected clients by id; its type definitions do not declare the map.
    (this.aedes as unknown as { clients: Record<string, { close(): void } | undefined> }).clients[clientId]?.close();
  }

  get listening(): boolean {
    return this.server.listening;
  }

  /** Publishes a message on behalf of the server, on any topic (commands go through {@link sendCommand}). */
  publish(packet: Pick<PublishPacket, 'topic' | 'payload' | 'qos' | 'retain'>): Promise<void> {
    return new Promise((resolve, reject) => {
      this.aedes.publish({ cmd: 'publish', dup: false, ...packet } as PublishPacket, (err?: Error) => (err ? reject(err) : resolve()));
    });
  }

  async sendCommand(deviceId: string, name: string, payload: unknown, qos: 0 | 1): Promise<string> {
    const command = commandOf(deviceId, name, payload, qos);
    await this.publishLocal(command);
    return command.topic;
  }

  /**
   * Hands a command to this node's broker only: delivered to the subscribers connected
   * here and queued for the offline persistent sessions held here (QoS 1). Cluster mode's
   * command follower calls it for every node's commands.
   */
  publishLocal(command: Command): Promise<void> {
    return this.publish({ ...command, retain: false });
  }

  /** Stops accepting connections and disconnects every client. */
  async close(): Promise<void> {
    this.webSocket?.close();
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await new Promise<void>((resolve) => this.aedes.close(() => resolve()));
    await closed;
    this.logger.debug('mqtt broker closed');
  }
}

/**
 * The inbound window of one client: at most `max` of its QoS 1/2 PUBLISHes are being
 * authorized and stored at once; the rest wait in arrival order. aedes parses a whole
 * socket read before handling it and reads the socket again only after every packet
 * of that read is done, so while PUBLISHes wait here the client's further bytes stay
 * unread and TCP pushes back — AWS IoT's "no new messages are accepted from the client
 * until an ACK is returned".
 */
class InflightWindow {
  private readonly active = new WeakMap<Client, { running: number; waiting: Array<() => void> }>();

  constructor(private readonly max: number) {}

  run(client: Client, task: (release: () => void) => void): void {
    let slot = this.active.get(client);
    if (slot === undefined) {
      slot = { running: 0, waiting: [] };
      this.active.set(client, slot);
    }
    const state = slot;
    const start = (): void => {
      state.running++;
      let released = false;
      task(() => {
        if (released) return;
        released = true;
        state.running--;
        state.waiting.shift()?.();
      });
    };
    if (state.running < this.max) start();
    else state.waiting.push(start);
  }
}

/**
 * Decides SUBSCRIBE filters per client: counts subscriptions against `max`, and
 * remembers which filters of the SUBSCRIBE in progress were granted (the persistence
 * stores only those; see `onlyGrantedSubscriptions`). aedes authorizes the filters of
 * one SUBSCRIBE in parallel and adds them to `client.subscriptions` only afterwards, so
 * filters admitted but not yet added are counted here until aedes reports the SUBSCRIBE
 * done ('subscribe' event). Re-subscribing to a held filter never counts twice.
 */
class SubscribeGate {
  private readonly inProgress = new WeakMap<Client, { admitted: Set<string>; granted: Set<string> }>();

  constructor(private readonly max: number) {}

  /** False when `topic` would take the client past the limit. */
  admit(client: Client, topic: string): boolean {
    // Not in aedes' type declarations, but the map its SUBSCRIBE handler keeps (lib/client.js).
    const held = (client as Client & { subscriptions: Record<string, unknown> }).subscriptions;
    if (topic in held) return true;
    const { admitted } = this.state(client);
    if (admitted.has(topic)) return true;
    let count = Object.keys(held).length;
    for (const t of admitted) if (!(t in held)) count++;
    if (count >= this.max) return false;
    admitted.add(topic);
    return true;
  }

  /** Records that `topic` passed every check. */
  grant(client: Client, topic: string): void {
    this.state(client).granted.add(topic);
  }

  granted(client: Client, topic: string): boolean {
    return this.inProgress.get(client)?.granted.has(topic) ?? false;
  }

  settled(client: Client): void {
    this.inProgress.delete(client);
  }

  private state(client: Client): { admitted: Set<string>; granted: Set<string> } {
    let state = this.inProgress.get(client);
    if (state === undefined) {
      state = { admitted: new Set(), granted: new Set() };
      this.inProgress.set(client, state);
    }
    return state;
  }
}

/**
 * aedes reads a connection with one `read()` per 'readable' event and takes the result
 * for everything buffered, as `read()` without a size gives up to Node 24. From Node 26
 * it gives one buffered chunk, and the rest waits for a 'readable' event that never
 * comes when no more data arrives: an MQTT-over-WebSocket CONNECT, which mqtt.js sends as
 * several small messages (one chunk each), was never answered. Asking for the buffered
 * length returns all of it, joined, on every version.
 */
function readWholeBuffer(socket: Duplex): void {
  const read = socket.read.bind(socket);
  socket.read = (size?: number) => read(size ?? (socket.readableLength > 0 ? socket.readableLength : undefined));
}

/**
 * Counts client PUBLISHes that Tributary forwards without storing, and says so at info
 * the first time a connection sends one: a device publishing readings to
 * `sensors/x/telemetry` or `devices/x/data` would otherwise see PUBACKs and nothing stored.
 */
function nonTelemetryNotice(logger: Logger, metrics: BrokerMetrics | undefined): (client: Client, topic: string) => void {
  const told = new WeakSet<Client>();
  return (client, topic) => {
    metrics?.nonTelemetryPublishes.inc();
    if (told.has(client)) return;
    told.add(client);
    logger.info(
      { clientId: client.id, topic },
      'publish on a topic outside devices/{deviceId}/telemetry: forwarded to subscribers, not stored (the first from this connection; tributary_mqtt_non_telemetry_publishes_total counts them all)',
    );
  };
}

function authorizePublish(
  ingest: TelemetryIngest,
  logger: Logger,
  nonTelemetry: (client: Client, topic: string) => void,
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
  if (route.kind === 'other' || route.kind === 'device-other') {
    nonTelemetry(client, topic);
    return callback(null);
  }
  const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
  if (route.kind === 'invalid-device') {
    // Acknowledged once the reject record is durable, like any other reject (API.md).
    divert(packet, route.segment);
    ingest.reject('mqtt', 'invalid_topic', { clientId: client.id, topic, payload }, `device id ${JSON.stringify(route.segment)} in topic is not a valid device id`).then(
      () => callback(null),
      (err: unknown) => callback(err instanceof Error ? err : new Error(String(err))),
    );
    return;
  }

  const delivery = packet.qos > 0 && packet.messageId !== undefined ? { clientId: client.id, packetId: packet.messageId } : undefined;
  ingest.ingestPayload(route.deviceId, payload, delivery, { clientId: client.id, topic }).then(
    () => callback(null),
    (err: unknown) => {
      if (err instanceof RejectedPayload) {
        // MQTT 3.1.1 cannot refuse a PUBLISH; acknowledge it and keep the client connected.
        divert(packet, route.deviceId);
        return callback(null);
      }
      // Not stored: no PUBACK. Dropping the connection makes the client re-send after reconnecting.
      if (isTributaryError(err) && err.code === 'Throttled') logger.warn({ clientId: client.id, deviceId: route.deviceId, reason: err.message }, 'device far over its publish rate; disconnecting it without PUBACK');
      else logger.error({ err, clientId: client.id, deviceId: route.deviceId }, 'telemetry write failed; disconnecting client without PUBACK');
      callback(err instanceof Error ? err : new Error(String(err)));
    },
  );
}

function divert(packet: PublishPacket | AedesPublishPacket, deviceId: string): void {
  packet.topic = `${REJECTS_TOPIC_PREFIX}${deviceId.replace(/[#+/]/g, '_') || '_'}`;
  packet.retain = false;
}

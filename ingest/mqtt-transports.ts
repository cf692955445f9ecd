/**
 * The byte streams MQTT arrives on: a TCP listener (TLS when a certificate is
 * configured) and WebSocket on the HTTP API's own server at `/mqtt` (wss when that
 * server is HTTPS). Each accepted connection becomes a `Duplex` handed to the broker;
 * the transports know nothing about MQTT.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, Server as HttpServer } from 'node:http';
import { createServer as createTcpServer, type Server as NetServer, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { createSecureContext, createServer as createTlsServer } from 'node:tls';
import { createWebSocketStream, WebSocketServer } from 'ws';
import { ConfigError } from '../core/config.js';
import type { Logger } from '../core/logger.js';

/** Called with each new connection's stream (and, for WebSocket, the upgrade request). */
export type ConnectionHandler = (stream: Duplex, req?: IncomingMessage) => void;

/** A PEM certificate (chain) and its private key. */
export interface TlsCredentials {
  cert: Buffer | string;
  key: Buffer | string;
}

/**
 * Reads the `tlsCert`/`tlsKey` files; undefined when neither is set.
 * @throws ConfigError when only one is set or a file cannot be read.
 */
export function loadTlsCredentials(config: { tlsCert: string; tlsKey: string }): TlsCredentials | undefined {
  if (config.tlsCert === '' && config.tlsKey === '') return undefined;
  if (config.tlsCert === '' || config.tlsKey === '') throw new ConfigError('tlsCert and tlsKey go together: set both (TLS) or neither (plain TCP and HTTP)');
  const read = (path: string, key: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new ConfigError(`cannot read ${key} ${path}: ${(err as Error).message}`);
    }
  };
  const credentials = { cert: read(config.tlsCert, 'tlsCert'), key: read(config.tlsKey, 'tlsKey') };
  try {
    // Fails now on a malformed PEM or a key that does not match the certificate, not at the first handshake.
    createSecureContext(credentials);
  } catch (err) {
    throw new ConfigError(`tlsCert ${config.tlsCert} and tlsKey ${config.tlsKey} are not a usable certificate and key: ${(err as Error).message}`);
  }
  return credentials;
}

/** The path MQTT over WebSocket is served on, as Mosquitto, EMQX and mqtt.js' examples use. */
export const MQTT_WEBSOCKET_PATH = '/mqtt';

export interface TcpListenerOptions {
  host: string;
  port: number;
  /** With credentials the listener speaks TLS (mqtts); without, plain TCP. */
  tls?: TlsCredentials;
  onConnection: ConnectionHandler;
  logger: Logger;
}

/**
 * Connections the kernel may hold waiting to be accepted (it caps this at
 * net.core.somaxconn). At Node's default of 511, 10,000 devices reconnecting at once
 * overflowed the queue and the dropped SYNs were retried by the clients' kernels after
 * 1, 3, 7… s: the storm took 5–29 s from run to run, against 4–5 s at 4,096 (bench/ingest).
 */
export const LISTEN_BACKLOG = 4096;

/** Listens for MQTT over TCP or TLS; resolves once listening. */
export async function listenTcp(opts: TcpListenerOptions): Promise<NetServer> {
  const accept = (socket: Socket): void => {
    // Nagle would hold a PUBACK for up to 40 ms behind a delayed ACK.
    socket.setNoDelay(true);
    opts.onConnection(socket);
  };
  let server: NetServer;
  if (opts.tls === undefined) {
    server = createTcpServer(accept);
  } else {
    const tlsServer = createTlsServer({ cert: opts.tls.cert, key: opts.tls.key }, accept);
    // A failed handshake never reaches the broker; without this listener it would go unnoticed.
    tlsServer.on('tlsClientError', (err: Error) => opts.logger.debug({ err: err.message }, 'mqtt tls handshake failed'));
    server = tlsServer;
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: opts.port, host: opts.host, backlog: LISTEN_BACKLOG }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => opts.logger.error({ err }, 'mqtt listener error'));
  return server;
}

export interface WebSocketOptions {
  onConnection: ConnectionHandler;
  /**
   * Largest WebSocket message accepted; larger ones close the connection (1009). One
   * message carries one MQTT packet (mqtt.js, Paho and browsers frame it so).
   */
  maxMessageBytes: number;
  logger: Logger;
}

/** Serves MQTT over WebSocket on an existing HTTP(S) server; `close()` stops taking upgrades. */
export interface WebSocketTransport {
  close(): void;
}

/**
 * Takes WebSocket upgrades for {@link MQTT_WEBSOCKET_PATH} on `server` (the HTTP API's
 * server, so one port serves both, and HTTPS makes it wss). Upgrades bypass the HTTP
 * routes and their hooks: a WebSocket client authenticates with its MQTT CONNECT like a
 * TCP one. Sub-protocol `mqtt` (MQTT 3.1.1 §6) is chosen when offered.
 */
export function attachWebSocket(server: HttpServer, opts: WebSocketOptions): WebSocketTransport {
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: opts.maxMessageBytes,
    handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : (protocols.values().next().value ?? false)),
  });
  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    const path = (req.url ?? '').split('?', 1)[0];
    if (path !== MQTT_WEBSOCKET_PATH) {
      // Answer only when no one else takes upgrades on this server.
      if (server.listenerCount('upgrade') === 1) socket.end('HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const stream = createWebSocketStream(ws);
      // Socket-level errors (e.g. a message over maxPayload) close the stream; aedes sees the close.
      ws.on('error', (err) => opts.logger.debug({ err: err.message }, 'mqtt websocket error'));
      opts.onConnection(stream, req);
    });
  };
  server.on('upgrade', onUpgrade);
  return {
    close: () => {
      server.off('upgrade', onUpgrade);
      wss.close();
    },
  };
}

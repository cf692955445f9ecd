/**
 * Builds the HTTP API as a fastify instance that is not listening yet: the composition
 * root calls `listen()`, tests call `inject()` on the very same instance.
 *
 * @module
 */
import { AjvCompiler, type ValidatorFactory } from '@fastify/ajv-compiler';
import { fastify, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { DeadLetterQueue, RedriveDeps } from '../functions/dlq.js';
import type { TriggerManager } from '../functions/triggers.js';
import type { RejectsLog } from '../ingest/rejects-log.js';
import type { CommandSender } from '../ingest/mqtt-broker.js';
import type { TlsCredentials } from '../ingest/mqtt-transports.js';
import type { DeviceCredentials } from '../access/device-credentials.js';
import type { TelemetryStore } from '../store/types.js';
import type { ChangeLog } from '../streams/types.js';
import fastifyCors from '@fastify/cors';
import fastifyRateLimit from '@fastify/rate-limit';
import { accessControl, type AuthOptions } from './auth.js';
import { deviceForwarding, type DeviceRouter } from './forward.js';
import { ClientErrors, errorHandling, formatSchemaErrors, frameworkErrors } from './errors.js';
import { openApi } from './openapi.js';
import { aboutRoutes, type AboutOptions } from './routes/about.js';
import { auditRoutes } from './routes/audit.js';
import { consoleRoutes } from './routes/console.js';
import { functionLogTailRoutes } from './routes/function-log-tail.js';
import { credentialRoutes } from './routes/credentials.js';
import { deviceRoutes, type DeviceDirectory } from './routes/devices.js';
import { commandRoutes } from './routes/commands.js';
import { dlqRoutes } from './routes/dlq.js';
import { rejectRoutes } from './routes/rejects.js';
import { functionRoutes, type FunctionRoutesOptions } from './routes/functions.js';
import { healthRoutes, type MetricsSource } from './routes/health.js';
import { keyRoutes } from './routes/keys.js';
import { streamRoutes } from './routes/streams.js';
import { telemetryRoutes, type IngestFn } from './routes/telemetry.js';
import { triggerRoutes } from './routes/triggers.js';

/** What the API needs from the rest of Tributary. */
export interface ApiDeps {
  store: TelemetryStore;
  /** The API's logger (the caller passes a `{ module: 'api' }` child); fastify logs requests through it. */
  logger: Logger;
  /** True once the store is open and accepting writes (drives `/readyz`). */
  ready: () => boolean;
  /** Decodes and writes an ingest body (shared with MQTT ingest). */
  ingest: IngestFn;
  /** Largest accepted ingest body, in bytes. */
  maxBodyBytes: number;
  /** Prometheus registry for `GET /metrics`; the route exists only when one is given. */
  metrics?: MetricsSource;
  /** The change log behind `/v1/streams/...`; those routes exist only when one is given. */
  changeLog?: ChangeLog;
  /**
   * Deployed functions and the runtime that invokes them; `/v1/functions/...` exists only
   * when given (logs and replay routes only with `logs` / `replays`).
   */
  functions?: FunctionRoutesOptions;
  /** The dead-letter queue of stream mappings and what a redrive needs; `/v1/dlq` exists only when given. */
  dlq?: { queue: DeadLetterQueue; redrive: RedriveDeps };
  /** Event source mappings; `/v1/functions/{name}/triggers` exists only when given. */
  triggers?: TriggerManager;
  /** The rejects log of ingest; `GET /v1/rejects` exists only when given. */
  rejects?: Pick<RejectsLog, 'list'>;
  /** Device secrets: `POST /v1/devices/{id}/credentials` exists only when given, and `DELETE /v1/devices/{id}` revokes them. */
  credentials?: DeviceCredentials;
  /** Closes a device's live MQTT connection (after its secret is rotated or the device is deleted). */
  disconnectDevice?: (deviceId: string) => void;
  /**
   * Access control (api/auth.ts): the security mode, the keys that verify bearer tokens
   * and the audit log. `/v1/keys` and `/v1/audit` exist only when keys and audit log are
   * given. Absent: open mode.
   */
  access?: AuthOptions;
  /** Origins whose pages may call the API (CORS; `*`: any). Absent or empty: CORS off. */
  corsOrigins?: string[];
  /** Requests per second per API key (per client address in open mode). Absent or 0: no limit. */
  rateLimit?: number;
  /** The broker's command sender; `POST /v1/devices/{id}/commands/{name}` exists only when given. */
  commands?: CommandSender;
  /** Serve the API over HTTPS with this PEM certificate and key (and MQTT over WebSocket as wss). */
  https?: TlsCredentials;
  /** Cluster mode: routes of one device's stored data are answered by the node that owns it. */
  router?: DeviceRouter;
  /** Cluster mode: `GET /v1/devices` asks every node for the devices of the partitions it owns. */
  deviceDirectory?: DeviceDirectory;
  /** Server facts for `/v1/whoami`, `/v1/server`, `/v1/store/stats`, `/v1/metrics/summary`; those routes exist only when given. */
  about?: Pick<AboutOptions, 'version' | 'startedAt' | 'storeStats' | 'metrics'>;
  /** Serve the web console at `/console` (api/routes/console.ts). */
  console?: boolean;
  /** Longest a client may take to send a whole request (`--http-request-timeout-ms`); default {@link DEFAULT_REQUEST_TIMEOUT_MS}. */
  requestTimeoutMs?: number;
}

/** Default of {@link ApiDeps.requestTimeoutMs} (the setting's default). */
export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
/** The headers alone get at most this much of the request timeout (Node's default is 60 s). */
const MAX_HEADERS_TIMEOUT_MS = 10_000;

/**
 * Ajv validators that coerce query strings, path parameters and headers (text on the
 * wire: `?limit=10` must become a number) but never bodies. Fastify's one Ajv instance
 * coerces every part (`coerceTypes: 'array'`), which turned `"devices": [false]` into the
 * pattern `"false"`, `{"code": false}` into source code and `null` into `""` or 0: a
 * JSON body already has types, and one of the wrong type is refused with a 400.
 * Both come from fastify's own compiler factory, so every other Ajv default stays.
 */
function validatorsCoercingTextOnly(): ValidatorFactory {
  const factory = AjvCompiler();
  return (externalSchemas, options = {}) => {
    const text = factory(externalSchemas, options);
    // JTD schemas (not used here) have no coercion to turn off.
    const body = options.mode === 'JTD' ? text : factory(externalSchemas, { ...options, customOptions: { ...options.customOptions, coerceTypes: false } });
    return (route) => (route.httpPart === 'body' ? body : text)(route);
  };
}

/**
 * Longest path parameter the router accepts. Fastify's default (100) is shorter than
 * a device id may be (128); past the limit the router answers 404, so keep it well above
 * and let the schema's pattern reject over-long ids with a 400 that names the field.
 */
const MAX_PARAM_LENGTH = 1024;

/**
 * Builds the API: error handling first (so every route plugin inherits it), then
 * the probes at the root and the resource routes under `/v1`.
 */
export function buildApi(deps: ApiDeps): FastifyInstance {
  // Typed as fastify's base logger so the instance is a plain `FastifyInstance`.
  const loggerInstance: FastifyBaseLogger = deps.logger;
  // Node answers a request not received in full in time with 408 (its `clientError`, shaped
  // by `ClientErrors`): that is what ends dripped headers and bodies. No idle-socket
  // timeout (fastify's `connectionTimeout`): responses may be silent for long (an
  // invocation up to 15 min, long polls) and MQTT over WebSocket shares this server.
  const requestTimeout = deps.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const timeouts = {
    headersTimeout: Math.min(MAX_HEADERS_TIMEOUT_MS, requestTimeout),
    // How often Node looks for connections past their timeout (its default, 30 s, would let one run up to 30 s over).
    connectionsCheckingInterval: Math.min(1000, requestTimeout),
  };
  const clientErrors = new ClientErrors(deps.logger, { headersTimeout: timeouts.headersTimeout, requestTimeout });
  const app = fastify({
    loggerInstance,
    // Typed as plain HTTP: an HTTPS server is an http.Server to everything that uses it here.
    ...((deps.https === undefined ? { http: timeouts } : { https: { ...deps.https, ...timeouts } }) as object),
    requestTimeout,
    clientErrorHandler: clientErrors.handler,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    frameworkErrors,
    schemaErrorFormatter: formatSchemaErrors,
    schemaController: { compilersFactory: { buildValidator: validatorsCoercingTextOnly() } },
    // Fastify's closing fast path answers in its own body shape; the hook below does it in ours.
    return503OnClosing: false,
    ajv: {
      // Reject unknown properties (schemas say `additionalProperties: false`) instead of
      // silently stripping them, so `?form=` or `?format=csv` is an error, not ignored.
      customOptions: { removeAdditional: false },
    },
  });

  app.server.on('request', clientErrors.track);

  // Graceful close. `close()` only reaps sockets that are idle at that moment; a request
  // in flight would leave its keep-alive socket open until keepAliveTimeout (72 s) and
  // stall shutdown, so responses sent while closing ask the client to close the socket.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onRequest', async (request, reply) => {
    void reply.header('x-request-id', request.id);
    if (closing) throw new TributaryError('StoreUnavailable', 'the server is shutting down');
  });
  app.addHook('onSend', async (_request, reply, payload) => {
    if (closing) void reply.header('connection', 'close');
    return payload;
  });

  void app.register(errorHandling);
  // Before every route plugin (the self-description and CORS preflight included), so each route is checked.
  void app.register(accessControl, deps.access ?? { mode: 'open' });
  if (deps.router !== undefined) void app.register(deviceForwarding, { router: deps.router });
  if (deps.corsOrigins !== undefined && deps.corsOrigins.length > 0) {
    // Bearer keys, not cookies: no credentials mode. Preflights are answered in a hook, before auth.
    void app.register(fastifyCors, { origin: deps.corsOrigins.includes('*') ? '*' : deps.corsOrigins, exposedHeaders: ['x-request-id', 'retry-after'] });
  }
  const rateLimit = deps.rateLimit ?? 0;
  if (rateLimit > 0) {
    // Its per-route onRequest hook runs after the root's, so the key is already known.
    void app.register(fastifyRateLimit, {
      max: rateLimit,
      timeWindow: 1000,
      keyGenerator: (request) => (request.access?.keyId == null ? `ip:${request.ip}` : `key:${request.access.keyId}`),
      allowList: (request) => request.routeOptions.config.access === 'public',
      errorResponseBuilder: (_request, context) => new TributaryError('Throttled', `more than ${context.max} requests per second from this API key (or, in open mode, this address); retry in ${context.after}`),
    });
  }
  // Before the route plugins: the document generator only sees routes declared after it.
  void app.register(openApi, { secured: deps.access?.mode === 'secured' });
  void app.register(healthRoutes, deps.metrics === undefined ? { ready: deps.ready } : { ready: deps.ready, metrics: deps.metrics });
  void app.register(deviceRoutes, {
    prefix: '/v1',
    store: deps.store,
    ...(deps.credentials === undefined ? {} : { credentials: deps.credentials }),
    ...(deps.disconnectDevice === undefined ? {} : { disconnect: deps.disconnectDevice }),
    ...(deps.deviceDirectory === undefined ? {} : { directory: deps.deviceDirectory }),
  });
  if (deps.credentials !== undefined) {
    void app.register(credentialRoutes, {
      prefix: '/v1',
      credentials: deps.credentials,
      store: deps.store,
      ...(deps.disconnectDevice === undefined ? {} : { disconnect: deps.disconnectDevice }),
    });
  }
  void app.register(telemetryRoutes, { prefix: '/v1', store: deps.store, ingest: deps.ingest, maxBodyBytes: deps.maxBodyBytes });
  if (deps.rejects !== undefined) void app.register(rejectRoutes, { prefix: '/v1', rejects: deps.rejects });
  if (deps.changeLog !== undefined) void app.register(streamRoutes, { prefix: '/v1', changeLog: deps.changeLog });
  if (deps.functions !== undefined) void app.register(functionRoutes, { prefix: '/v1', ...deps.functions });
  const fnLogs = deps.functions?.logs;
  if (deps.functions !== undefined && fnLogs !== undefined) {
    const { registry } = deps.functions;
    void app.register(functionLogTailRoutes, { prefix: '/v1', logs: fnLogs, resolve: (name: string) => registry.spec(name) });
  }
  if (deps.about !== undefined) {
    const queue = deps.dlq?.queue;
    void app.register(aboutRoutes, {
      prefix: '/v1',
      ...deps.about,
      mode: deps.access?.mode ?? 'open',
      ...(deps.access?.keys === undefined ? {} : { keys: deps.access.keys }),
      ...(queue === undefined ? {} : { dlqDepth: (cap: number) => countDlq(queue, cap) }),
    });
  }
  if (deps.console === true) void app.register(consoleRoutes);
  if (deps.triggers !== undefined) void app.register(triggerRoutes, { prefix: '/v1', triggers: deps.triggers });
  if (deps.dlq !== undefined) void app.register(dlqRoutes, { prefix: '/v1', queue: deps.dlq.queue, redrive: deps.dlq.redrive });
  if (deps.commands !== undefined) void app.register(commandRoutes, { prefix: '/v1', commands: deps.commands });
  if (deps.access?.keys !== undefined) void app.register(keyRoutes, { prefix: '/v1', keys: deps.access.keys });
  if (deps.access?.audit !== undefined) void app.register(auditRoutes, { prefix: '/v1', audit: deps.access.audit });
  return app;
}

/** Entries of the dead-letter queue, counted a page at a time up to `cap`. */
async function countDlq(queue: DeadLetterQueue, cap: number): Promise<number> {
  let count = 0;
  let cursor: string | undefined;
  do {
    const page = await queue.list({ limit: Math.min(1000, cap - count), ...(cursor === undefined ? {} : { cursor }) });
    count += page.items.length;
    cursor = page.nextCursor ?? undefined;
  } while (cursor !== undefined && count < cap);
  return count;
}

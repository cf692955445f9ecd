/**
 * Builds the HTTP API as a fastify instance that is not listening yet: the composition
 * root calls `listen()`, tests call `inject()` on the very same instance.
 *
 * @module
 */
import { fastify, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { DeadLetterQueue, RedriveDeps } from '../functions/dlq.js';
import type { FunctionRegistry } from '../functions/registry.js';
import type { TriggerManager } from '../functions/triggers.js';
import type { FunctionRuntime } from '../functions/types.js';
import type { TelemetryStore } from '../store/types.js';
import type { ChangeLog } from '../streams/types.js';
import { errorHandling, formatSchemaErrors, frameworkErrors } from './errors.js';
import { openApi } from './openapi.js';
import { deviceRoutes } from './routes/devices.js';
import { dlqRoutes } from './routes/dlq.js';
import { functionRoutes } from './routes/functions.js';
import { healthRoutes, type MetricsSource } from './routes/health.js';
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
  /** Deployed functions and the runtime that invokes them; `/v1/functions/...` exists only when given. */
  functions?: { registry: FunctionRegistry; runtime: FunctionRuntime };
  /** The dead-letter queue of stream mappings and what a redrive needs; `/v1/dlq` exists only when given. */
  dlq?: { queue: DeadLetterQueue; redrive: RedriveDeps };
  /** Event source mappings; `/v1/functions/{name}/triggers` exists only when given. */
  triggers?: TriggerManager;
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
  const app = fastify({
    loggerInstance,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    frameworkErrors,
    schemaErrorFormatter: formatSchemaErrors,
    // Fastify's closing fast path answers in its own body shape; the hook below does it in ours.
    return503OnClosing: false,
    ajv: {
      // Reject unknown properties (schemas say `additionalProperties: false`) instead of
      // silently stripping them, so `?form=` or `?format=csv` is an error, not ignored.
      customOptions: { removeAdditional: false },
    },
  });

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
  // Before the route plugins: the document generator only sees routes declared after it.
  void app.register(openApi);
  void app.register(healthRoutes, deps.metrics === undefined ? { ready: deps.ready } : { ready: deps.ready, metrics: deps.metrics });
  void app.register(deviceRoutes, { prefix: '/v1', store: deps.store });
  void app.register(telemetryRoutes, { prefix: '/v1', store: deps.store, ingest: deps.ingest, maxBodyBytes: deps.maxBodyBytes });
  if (deps.changeLog !== undefined) void app.register(streamRoutes, { prefix: '/v1', changeLog: deps.changeLog });
  if (deps.functions !== undefined) void app.register(functionRoutes, { prefix: '/v1', registry: deps.functions.registry, runtime: deps.functions.runtime });
  if (deps.triggers !== undefined) void app.register(triggerRoutes, { prefix: '/v1', triggers: deps.triggers });
  if (deps.dlq !== undefined) void app.register(dlqRoutes, { prefix: '/v1', queue: deps.dlq.queue, redrive: deps.dlq.redrive });
  return app;
}

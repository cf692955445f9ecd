/**
 * What a dashboard needs to know about the server and the caller, as public routes (the
 * console is built on these and nothing else):
 *
 * - `GET /v1/whoami`: the caller's key id, name and policy (in open mode: that it is open);
 * - `GET /v1/server`: version, mode, start time and uptime;
 * - `GET /v1/store/stats`: size on disk, partitions, devices, readings, rollup tiers;
 * - `GET /v1/metrics/summary`: ingest rates and latency, MQTT connections, function and
 *   DLQ figures, each section only when the caller's policy covers it (`/metrics` is
 *   all-or-nothing for any key).
 *
 * @module
 */
import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import type { ApiKeyStore } from '../../access/api-keys.js';
import type { SecurityMode } from '../../access/mode.js';
import type { CompiledPolicy } from '../../access/policy.js';
import type { Metrics } from '../../core/metrics.js';
import type { RegistryStats } from '../../store/types.js';
import { bearerToken } from '../auth.js';
import { functionStats, MetricsWindow, sampleIngest, windowed } from '../metrics-summary.js';
import { errorResponses, NoQuery } from '../schemas.js';
import { PolicyBody } from './keys.js';

/** `GET /v1/store/stats` as the store reports it. */
export interface StoreStats extends RegistryStats {
  /** Bytes of the database's files on disk. */
  sizeBytes: number;
}

export interface AboutOptions {
  version: string;
  mode: SecurityMode;
  /** Epoch ms the server started. */
  startedAt: number;
  /** Verifies the caller's token again to read its policy (a map lookup); absent in open mode. */
  keys?: Pick<ApiKeyStore, 'verify' | 'describe'>;
  storeStats: () => Promise<StoreStats>;
  metrics?: Metrics;
  /** Entries in the dead-letter queue, counted up to `cap`. */
  dlqDepth?: (cap: number) => Promise<number>;
}

const Nullable = <T extends 'string' | 'number' | 'integer'>(type: T, description: string) => Type.Unsafe<T extends 'string' ? string | null : number | null>({ type: [type, 'null'], description });

const WhoAmI = Type.Object({
  mode: Type.Unsafe<SecurityMode>({ type: 'string', enum: ['open', 'secured'], description: '`open`: anonymous requests are allowed (loopback only) and everything is permitted; `secured`: every request needs a key.' }),
  keyId: Nullable('string', 'The key\'s id (`admin` for the bootstrap admin key); null in open mode.'),
  name: Nullable('string', 'The name the key was created with; null in open mode.'),
  policy: Type.Union([PolicyBody, Type.Null()], { description: 'The key\'s policy; null in open mode, where everything is allowed.' }),
});

const ServerInfo = Type.Object({
  name: Type.Literal('tributary'),
  version: Type.String(),
  mode: Type.Unsafe<SecurityMode>({ type: 'string', enum: ['open', 'secured'] }),
  startedAt: Type.Integer({ description: 'Epoch ms.' }),
  uptimeSeconds: Type.Number(),
  nodeVersion: Type.String({ description: 'The Node.js version the server runs on.' }),
});

const StoreStatsBody = Type.Object({
  sizeBytes: Type.Integer({ description: 'Bytes of the database files on disk (this node\'s, in cluster mode).' }),
  devices: Type.Integer(),
  readings: Type.Integer({ description: 'Readings written, summed over devices; retention drops do not lower it.' }),
  partitions: Type.Integer({ description: 'Time partitions holding data.' }),
  oldestPartitionStart: Nullable('integer', 'Start of the oldest partition, epoch ms; null when there is none.'),
  partitionWindowMs: Type.Integer(),
  rollupTiers: Type.Array(Type.Object({ interval: Type.String(), retention: Type.String() }), {
    description: 'Pre-aggregated tiers. None yet: storage engine v2 adds them; until then the aggregate route reads raw readings.',
  }),
});

const Summary = Type.Object({
  at: Type.Integer({ description: 'When the figures were taken, epoch ms.' }),
  ingest: Type.Optional(
    Type.Object(
      {
        windowSeconds: Type.Number({ description: 'What the rates and quantiles cover: since a sample taken by an earlier request 5-60 s ago, or since the start.' }),
        readingsPerSecond: Type.Number(),
        rejectsPerSecond: Type.Number(),
        messagesPerSecond: Type.Number(),
        durableLatencyP50Seconds: Nullable('number', 'Publish to durable (fsynced), median over the window; null without observations.'),
        durableLatencyP99Seconds: Nullable('number', 'The same, 99th percentile.'),
        readingsTotal: Type.Number({ description: 'Since the process started.' }),
        rejectsTotal: Type.Number(),
        connectedClients: Type.Number({ description: 'MQTT clients connected now.' }),
        queuedReadings: Type.Number({ description: 'Readings waiting for or in a group commit.' }),
      },
      { description: 'Present when the key may read telemetry of some device.' },
    ),
  ),
  functions: Type.Optional(
    Type.Array(
      Type.Object({
        name: Type.String(),
        invocations: Type.Number(),
        errors: Type.Number(),
        throttles: Type.Number(),
        iteratorAgeSeconds: Nullable('number', 'Largest iterator age among its triggers; null when none has run.'),
      }),
      { description: 'Since the process started; present when the key has functions:Deploy on every device (as the function routes need).' },
    ),
  ),
  dlqDepth: Type.Optional(Type.Integer({ description: 'Dead-letter queue entries (counted up to 10,000); present with functions:Deploy on every device.' })),
});

const DLQ_CAP = 10_000;

export const aboutRoutes: FastifyPluginAsync<AboutOptions> = async (app, opts) => {
  const window = new MetricsWindow();

  /** The caller's policy; undefined in open mode (everything allowed). */
  const policyOf = (request: FastifyRequest): CompiledPolicy | undefined => {
    if (opts.mode === 'open') return undefined;
    const token = bearerToken(request);
    // The access hook has verified the token already ('authenticated'), so this is a cache hit.
    return (token === undefined ? undefined : opts.keys?.verify(token))?.policy ?? { allows: () => false, allowsAny: () => false, allowsAll: () => false };
  };

  app.get(
    '/whoami',
    { config: { access: 'authenticated' }, schema: { tags: ['access'], summary: 'The calling API key: id, name and policy', querystring: NoQuery, response: { 200: WhoAmI, ...errorResponses } } },
    async (request) => {
      const keyId = request.access.keyId;
      const info = keyId === null ? undefined : opts.keys?.describe(keyId);
      return { mode: opts.mode, keyId: info?.id ?? null, name: info?.name ?? null, policy: info?.policy ?? null };
    },
  );

  app.get('/server', { config: { access: 'authenticated' }, schema: { tags: ['health'], summary: 'Server version, security mode and uptime', querystring: NoQuery, response: { 200: ServerInfo, ...errorResponses } } }, async () => {
    const now = Date.now();
    return { name: 'tributary' as const, version: opts.version, mode: opts.mode, startedAt: opts.startedAt, uptimeSeconds: (now - opts.startedAt) / 1000, nodeVersion: process.version };
  });

  app.get(
    '/store/stats',
    // Store-wide figures: for keys that may read every device.
    { config: { access: { action: 'telemetry:Read', allDevices: true } }, schema: { tags: ['telemetry'], summary: 'Store size on disk, partitions, devices and readings', description: 'Counts devices and readings by scanning the device registry (one read per 1,000 devices).', querystring: NoQuery, response: { 200: StoreStatsBody, ...errorResponses } } },
    async () => ({ ...(await opts.storeStats()), rollupTiers: [] }),
  );

  const metrics = opts.metrics;
  if (metrics !== undefined) {
    app.get(
      '/metrics/summary',
      { config: { access: 'authenticated' }, schema: { tags: ['health'], summary: 'Ingest rates and latency, connections, functions and DLQ depth, as far as the key\'s policy reaches', querystring: NoQuery, response: { 200: Summary, ...errorResponses } } },
      async (request) => {
        const policy = policyOf(request);
        const at = Date.now();
        const out: Record<string, unknown> = { at };
        if (policy === undefined || policy.allowsAny('telemetry:Read')) {
          const sample = await sampleIngest(metrics, at);
          const base = window.add(sample);
          out.ingest = {
            ...windowed(sample, base, opts.startedAt),
            readingsTotal: sample.readings,
            rejectsTotal: sample.rejects,
            connectedClients: (await metrics.mqttConnectedClients.get()).values[0]?.value ?? 0,
            queuedReadings: (await metrics.storeQueuedReadings.get()).values[0]?.value ?? 0,
          };
        }
        if (policy === undefined || policy.allowsAll('functions:Deploy')) {
          out.functions = await functionStats(metrics);
          if (opts.dlqDepth !== undefined) out.dlqDepth = await opts.dlqDepth(DLQ_CAP);
        }
        return out;
      },
    );
  }
};

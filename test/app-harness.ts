import mqtt, { type MqttClient, type IClientOptions } from 'mqtt';
import { createApp, type Addresses, type App } from '../app.js';
import { configWith, type SettingKey } from '../core/config.js';
import { createLogger } from '../core/logger.js';
import type { ApiDeps } from '../api/index.js';
import type { TelemetryStore } from '../store/types.js';
import { ingestMetricsOf, TelemetryIngest, type TelemetryIngestOptions } from '../ingest/telemetry-ingest.js';
import { createMetrics } from '../core/metrics.js';
import { tempDir } from './helpers.js';

export interface RunningApp {
  app: App;
  addresses: Addresses;
  dataDir: string;
  /** Stops the app (idempotent). */
  stop: () => Promise<void>;
  /** Stops the app and removes its data directory. */
  destroy: () => Promise<void>;
}

/** Starts the whole system on ephemeral ports with a temporary (or given) data directory. */
export async function startApp(overrides: Partial<Record<SettingKey, unknown>> = {}): Promise<RunningApp> {
  const dir = overrides.dataDir ? undefined : tempDir();
  const dataDir = (overrides.dataDir as string | undefined) ?? (dir as { path: string }).path;
  const config = configWith({ mqttPort: 0, httpPort: 0, logLevel: 'silent', ...overrides, dataDir });
  const app = createApp(config, { logger: createLogger(config.logLevel as 'silent') });
  const addresses = await app.start();
  const stop = () => app.stop();
  return {
    app,
    addresses,
    dataDir,
    stop,
    destroy: async () => {
      await stop();
      dir?.cleanup();
    },
  };
}

/** A TelemetryIngest over `store` without the rest of the app: silent, rejects not kept, limits that tests override. */
export function standaloneIngest(store: TelemetryStore, overrides: Partial<TelemetryIngestOptions> = {}): TelemetryIngest {
  return new TelemetryIngest({
    store,
    rejects: { append: async () => {} },
    logger: createLogger('silent'),
    metrics: ingestMetricsOf(createMetrics()),
    maxPayloadBytes: 1024,
    maxKeysPerReading: 256,
    maxClockSkewMs: 3_600_000,
    retentionMs: 0,
    ...overrides,
  });
}

/** A connected mqtt.js client. */
export async function connectClient(url: string, opts: IClientOptions = {}): Promise<MqttClient> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: 5000, ...opts });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  return client;
}

export async function getJson(url: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(url);
  return { status: res.status, body: await res.json() };
}

/** One JSON request over real HTTP; an empty body comes back as undefined. */
export async function call(base: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'content-type': 'application/json' };
  }
  const res = await fetch(`${base}${path}`, init);
  const text = await res.text();
  return { status: res.status, body: text === '' ? undefined : (JSON.parse(text) as unknown) };
}

/**
 * The dependencies `buildApi` needs when a test is about other routes: a silent logger,
 * always ready, an ingest that accepts nothing, a small body limit. Spread, then override.
 */
export function minimalApiDeps(store: TelemetryStore): Pick<ApiDeps, 'store' | 'logger' | 'ready' | 'ingest' | 'maxBodyBytes'> {
  return { store, logger: createLogger('silent'), ready: () => true, ingest: async () => ({ accepted: 0, items: [] }), maxBodyBytes: 1024 };
}

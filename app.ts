/**
 * The composition root: builds every module from one frozen config and wires them
 * through their interfaces. Nothing else constructs implementations; nothing here
 * reads `process.env` or argv (bin/ does).
 */
import type { FastifyInstance } from 'fastify';
import type { AddressInfo } from 'node:net';
import type { Config } from './core/config.js';
import { createLogger, type Logger } from './core/logger.js';
import { createMetrics, type Metrics } from './core/metrics.js';
import { buildApi } from './api/index.js';
import { LevelCheckpointStore } from './functions/checkpoints.js';
import { functionsFromDirectory } from './functions/directory.js';
import { DEFAULT_TRIGGER, EventSourceMapping } from './functions/event-source-mapping.js';
import { ProcessFunctionRuntime } from './functions/index.js';
import { LevelDeadLetterQueue } from './functions/dlq.js';
import { FunctionRegistry } from './functions/registry.js';
import type { FunctionSpec } from './functions/types.js';
import { TriggerManager } from './functions/triggers.js';
import type { FunctionRuntime } from './functions/types.js';
import { MqttBroker, maxPacketBytesFor } from './ingest/mqtt-broker.js';
import { TelemetryIngest } from './ingest/telemetry-ingest.js';
import { commandTopic } from './ingest/topics.js';
import { Database } from './store/database.js';
import { LevelTelemetryStore } from './store/level-store.js';
import type { TelemetryStore } from './store/types.js';
import { EmbeddedChangeLog } from './streams/embedded-log.js';
import type { ChangeLog } from './streams/types.js';

export interface Addresses {
  mqtt: string;
  http: string;
  dataDir: string;
}

export interface App {
  start(): Promise<Addresses>;
  /** Graceful stop: no new work, in-flight writes flushed, functions stopped, database closed. */
  stop(): Promise<void>;
  readonly logger: Logger;
  readonly metrics: Metrics;
  /** Set once started. */
  readonly store: TelemetryStore;
  readonly changeLog: ChangeLog;
}

export function createApp(config: Config, opts: { logger?: Logger } = {}): App {
  const logger = opts.logger ?? createLogger(config.logLevel as 'info');
  const metrics = createMetrics();
  let database: Database | undefined;
  let store: LevelTelemetryStore | undefined;
  let changeLog: EmbeddedChangeLog | undefined;
  let broker: MqttBroker | undefined;
  let api: FastifyInstance | undefined;
  let runtime: FunctionRuntime | undefined;
  const mappings: EventSourceMapping[] = [];
  let triggers: TriggerManager | undefined;
  let stopping: Promise<void> | undefined;
  let trimTimer: NodeJS.Timeout | undefined;
  let trimming: Promise<void> | undefined;

  async function start(): Promise<Addresses> {
    database = await Database.open(config.dataDir);
    metrics.storeWritable.set(1);
    database.onWritableChange((writable, error) => {
      metrics.storeWritable.set(writable ? 1 : 0);
      if (writable) logger.info('the database accepts writes again');
      else logger.error({ err: error }, 'the database refuses writes until it can be reopened; reads keep working');
    });
    changeLog = await EmbeddedChangeLog.open(database, { shards: config.streamShards });
    const openStore = await LevelTelemetryStore.open({
      database,
      changeLog,
      partitionWindowMs: config.partitionWindow,
      maxBatch: config.commitMaxBatch,
      maxDelayMs: config.commitMaxDelayMs,
      retentionMs: config.retention,
      retentionRemoveRecords: config.retentionRemoveRecords,
      logger: logger.child({ module: 'store' }),
    });
    store = openStore;
    // Stream retention, as DynamoDB Streams' 24 hours: trimmed once now and every minute.
    const streamLog = changeLog;
    const trimStream = (): void => {
      trimming ??= streamLog
        .trim(Date.now() - config.streamRetention)
        .then((removed) => {
          if (removed > 0) logger.debug({ removed }, 'trimmed the change stream');
        })
        .catch((err: unknown) => logger.error({ err }, 'change-stream trim failed'))
        .finally(() => {
          trimming = undefined;
        });
    };
    trimStream();
    trimTimer = setInterval(trimStream, 60_000);
    trimTimer.unref();
    const ingest = new TelemetryIngest({
      store: openStore,
      logger: logger.child({ module: 'ingest' }),
      metrics: { readings: metrics.ingestReadings, rejects: metrics.ingestRejects },
      maxPayloadBytes: config.maxPayloadBytes,
    });

    const mqtt = await MqttBroker.start({
      host: config.mqttHost,
      port: config.mqttPort,
      ingest,
      logger: logger.child({ module: 'mqtt' }),
      // A connection may announce at most one payload's worth (plus headers) before it is dropped.
      maxPacketBytes: maxPacketBytesFor(config.maxPayloadBytes),
    });
    broker = mqtt;

    const fnRuntime = new ProcessFunctionRuntime({
      logger: logger.child({ module: 'functions' }),
      services: {
        put: async (deviceId, reading) => {
          await ingest.ingestBody(deviceId, reading);
        },
        publish: async (deviceId, command) => {
          await mqtt.publish({ topic: commandTopic(deviceId, command.name), payload: Buffer.from(JSON.stringify(command.payload ?? null)), qos: 1, retain: false });
        },
      },
    });
    runtime = fnRuntime;
    // Functions deployed over the API (code under <dataDir>/functions).
    const registry = await FunctionRegistry.open({
      database,
      dataDir: config.dataDir,
      defaults: { timeoutMs: config.functionTimeoutMs, memoryMb: config.functionMemoryMb },
      logger: logger.child({ module: 'functions' }),
    });
    // Batches that mappings give up on (table X); listed, redriven and deleted under /v1/dlq.
    const dlq = new LevelDeadLetterQueue(database);
    const dirFunctions = new Map<string, FunctionSpec>();
    if (config.functionsDir) {
      const specs = functionsFromDirectory(config.functionsDir, { timeoutMs: config.functionTimeoutMs, memoryMb: config.functionMemoryMb });
      for (const fn of specs) {
        dirFunctions.set(fn.name, fn);
        const mapping = new EventSourceMapping(fn, { id: 'functions-dir', ...DEFAULT_TRIGGER }, {
          log: changeLog,
          runtime: fnRuntime,
          checkpoints: new LevelCheckpointStore(database),
          logger: logger.child({ module: 'functions' }),
          metrics,
          onDiscard: dlq.onDiscard,
        });
        await mapping.start();
        mappings.push(mapping);
        logger.info({ function: fn.name, codePath: fn.codePath }, 'function attached to the change stream');
      }
    }

    // Triggers created over the API: one mapping per enabled trigger, started now and
    // started/stopped at runtime as triggers change.
    const triggerManager = new TriggerManager({
      database,
      registry,
      mapping: { log: changeLog, runtime: fnRuntime, logger: logger.child({ module: 'functions' }), metrics, onDiscard: dlq.onDiscard },
      logger: logger.child({ module: 'triggers' }),
    });
    triggers = triggerManager;
    await triggerManager.start();

    api = buildApi({
      store: openStore,
      changeLog,
      logger: logger.child({ module: 'api' }),
      metrics: metrics.registry,
      // Not ready while writes would fail (e.g. a full disk): a balancer should send devices elsewhere.
      ready: () => Boolean(broker?.listening) && Boolean(database?.writable) && !stopping,
      ingest: async (deviceId, body) => {
        const result = await ingest.ingestBody(deviceId, body);
        return { accepted: result.items.length, items: result.items };
      },
      maxBodyBytes: config.maxPayloadBytes,
      functions: { registry, runtime: fnRuntime },
      triggers: triggerManager,
      dlq: {
        queue: dlq,
        redrive: { log: changeLog, invoke: async (name, event) => fnRuntime.invoke(dirFunctions.get(name) ?? (await registry.spec(name)), event) },
      },
    });
    await api.listen({ host: config.httpHost, port: config.httpPort });
    const httpAddr = api.server.address() as AddressInfo;
    return {
      mqtt: `mqtt://${formatHost(mqtt.address.host)}:${mqtt.address.port}`,
      http: `http://${formatHost(httpAddr.address)}:${httpAddr.port}`,
      dataDir: config.dataDir,
    };
  }

  function stop(): Promise<void> {
    stopping ??= (async () => {
      clearInterval(trimTimer);
      // Ingest first so no new writes arrive; then drain what is in flight.
      await broker?.close();
      await Promise.all(mappings.map((m) => m.stop()));
      await triggers?.stop();
      await runtime?.close();
      await store?.close();
      await api?.close();
      await trimming;
      await database?.close();
      logger.info('stopped');
    })();
    return stopping;
  }

  return {
    start,
    stop,
    logger,
    metrics,
    get store(): TelemetryStore {
      if (!store) throw new Error('app not started');
      return store;
    },
    get changeLog(): ChangeLog {
      if (!changeLog) throw new Error('app not started');
      return changeLog;
    },
  };
}

function formatHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/**
 * The composition root: builds every module from one frozen config and wires them
 * through their interfaces. Nothing else constructs implementations; nothing here
 * reads `process.env` or argv (bin/ does).
 */
import type { FastifyInstance } from 'fastify';
import type { AddressInfo } from 'node:net';
import { awsLocationOf } from './core/arn.js';
import { ConfigError, type Config } from './core/config.js';
import { createLogger, type Logger } from './core/logger.js';
import { createMetrics, type Metrics } from './core/metrics.js';
import { join } from 'node:path';
import { buildApi, packageVersion } from './api/index.js';
import { directoryBytes } from './store/disk-usage.js';
import { LevelCheckpointStore, type CheckpointStore } from './functions/checkpoints.js';
import { ClusterNode } from './cluster/cluster-node.js';
import { LocalMetadata, type MetadataWriter } from './store/metadata.js';
import { functionsFromDirectory } from './functions/directory.js';
import { DEFAULT_TRIGGER, EventSourceMapping } from './functions/event-source-mapping.js';
import { ProcessFunctionRuntime } from './functions/index.js';
import { LevelDeadLetterQueue } from './functions/dlq.js';
import { FunctionLogStore } from './functions/logs.js';
import { FunctionRegistry } from './functions/registry.js';
import { ReplayManager } from './functions/replay.js';
import type { FunctionSpec } from './functions/types.js';
import { TriggerManager } from './functions/triggers.js';
import type { FunctionRuntime } from './functions/types.js';
import { MqttBroker, maxPacketBytesFor, type CommandSender } from './ingest/mqtt-broker.js';
import { levelPersistence, MQTT_SUBLEVEL } from './ingest/mqtt-persistence.js';
import { loadTlsCredentials, MQTT_WEBSOCKET_PATH } from './ingest/mqtt-transports.js';
import { deviceAccess } from './ingest/mqtt-auth.js';
import { DeviceCredentials } from './access/device-credentials.js';
import { LoginThrottle } from './access/login-throttle.js';
import { securityMode } from './access/mode.js';
import { loadOrCreateAdminKey } from './access/admin-key.js';
import { ApiKeyStore } from './access/api-keys.js';
import { AuditLog } from './access/audit-log.js';
import { ingestMetricsOf, TelemetryIngest } from './ingest/telemetry-ingest.js';
import { PublishRate } from './ingest/publish-rate.js';
import { RejectsLog } from './ingest/rejects-log.js';
import { Database } from './store/database.js';
import { DEFAULT_DELIVERY_WINDOW } from './store/delivery-window.js';
import { LevelTelemetryStore } from './store/level-store.js';
import type { TelemetryStore } from './store/types.js';
import { EmbeddedChangeLog } from './streams/embedded-log.js';
import type { ChangeLog } from './streams/types.js';

export interface Addresses {
  /** `mqtt://` or, with TLS, `mqtts://`. */
  mqtt: string;
  /** `http://` or, with TLS, `https://`. */
  http: string;
  /** MQTT over WebSocket on the HTTP port: `ws://…/mqtt` or, with TLS, `wss://…/mqtt`. */
  ws: string;
  dataDir: string;
  /** The bootstrap admin key, only on the secured start that generated it (print it once; it is also in `<dataDir>/admin.key`). */
  adminKey?: string;
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
  let changeLog: ChangeLog | undefined;
  let cluster: ClusterNode | undefined;
  let broker: MqttBroker | undefined;
  let api: FastifyInstance | undefined;
  let runtime: FunctionRuntime | undefined;
  let functionLogs: FunctionLogStore | undefined;
  let replays: ReplayManager | undefined;
  const mappings: EventSourceMapping[] = [];
  let triggers: TriggerManager | undefined;
  let stopping: Promise<void> | undefined;
  let trimTimer: NodeJS.Timeout | undefined;
  let rejects: RejectsLog | undefined;
  let trimming: Promise<void> | undefined;

  async function start(): Promise<Addresses> {
    const startedAt = Date.now();
    // Before anything opens: a bad certificate or key is a configuration error.
    const tls = loadTlsCredentials(config);
    database = await Database.open(config.dataDir, { writeBufferBytes: config.storeWriteBufferBytes });
    metrics.storeWritable.set(1);
    database.onCommit((seconds) => metrics.storeCommitLatency.observe(seconds));
    database.onWritableChange((writable, error) => {
      metrics.storeWritable.set(writable ? 1 : 0);
      if (writable) logger.info('the database accepts writes again');
      else logger.error({ err: error }, 'the database refuses writes until it can be reopened; reads keep working');
    });
    if (config.kafkaBrokers !== '') {
      // REMOVE records of a retention drop would be written for every device of the node's
      // data, but a node may write only the change-log shards it owns.
      if (config.retentionRemoveRecords) throw new ConfigError('retentionRemoveRecords is not available in cluster mode (kafkaBrokers is set)');
      cluster = await ClusterNode.connect(config, database, logger);
      changeLog = cluster.changeLog;
    } else {
      changeLog = await EmbeddedChangeLog.open(database, { shards: config.streamShards, aws: awsLocationOf(config) });
    }
    const openStore = await LevelTelemetryStore.open({
      database,
      changeLog,
      partitionWindowMs: config.partitionWindow,
      maxBatch: config.commitMaxBatch,
      maxDelayMs: config.commitMaxDelayMs,
      retentionMs: config.retention,
      retentionRemoveRecords: config.retentionRemoveRecords,
      // Twice what a client may have in flight: everything it could re-send after a reconnect.
      deliveryWindow: Math.max(DEFAULT_DELIVERY_WINDOW, 2 * config.mqttMaxInflight),
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
    // The control plane (credentials, keys, audit, functions, triggers, DLQ): in cluster mode
    // written through a compacted Kafka topic that every node applies in one order.
    const metadata: MetadataWriter = cluster?.metadata ?? new LocalMetadata(database);
    // Rejected payloads with their reasons (table R), bounded by age and count; GET /v1/rejects.
    // In cluster mode every node keeps every node's rejects (trimmed locally).
    const rejectsLog = await RejectsLog.open(database, {
      retentionMs: config.rejectsRetention,
      maxEntries: config.rejectsMaxEntries,
      ...(cluster === undefined ? {} : { metadata: cluster.rejectsReplication }),
    });
    rejects = rejectsLog;
    const ingest = new TelemetryIngest({
      // Cluster mode: durable once the telemetry topic has it; the partition's owner stores it.
      store: cluster?.writer ?? openStore,
      rejects: rejectsLog,
      logger: logger.child({ module: 'ingest' }),
      metrics: ingestMetricsOf(metrics),
      maxPayloadBytes: config.maxPayloadBytes,
      maxKeysPerReading: config.maxKeysPerReading,
      maxClockSkewMs: config.maxClockSkew,
      retentionMs: config.retention,
      ...(config.devicePublishRate > 0 ? { publishRate: new PublishRate({ ratePerSecond: config.devicePublishRate }) } : {}),
    });

    // Device secrets (table S), held in memory; the broker checks them in secured mode.
    const credentials = await DeviceCredentials.open(database, { metadata });
    const mode = securityMode(config);
    const deviceLogins =
      mode === 'secured'
        ? { access: deviceAccess({ credentials, throttle: new LoginThrottle(), logger: logger.child({ module: 'mqtt-auth' }), failures: metrics.mqttAuthFailures }) }
        : {};
    const mqtt = await MqttBroker.start({
      host: config.mqttHost,
      port: config.mqttPort,
      ingest,
      logger: logger.child({ module: 'mqtt' }),
      // A connection may announce at most one payload's worth (plus headers) before it is dropped.
      maxPacketBytes: maxPacketBytesFor(config.maxPayloadBytes),
      ...deviceLogins,
      // Sessions, queued QoS 1 messages and retained messages, in the same database (!mqtt!).
      persistence: levelPersistence(database.sublevel(MQTT_SUBLEVEL)),
      ...(tls === undefined ? {} : { tls }),
      limits: { maxConnections: config.mqttMaxConnections, maxInflight: config.mqttMaxInflight, maxSubscriptions: config.mqttMaxSubscriptions, drainTimeoutMs: config.mqttDrainTimeoutMs },
      metrics: { connectedClients: metrics.mqttConnectedClients, messagesOut: metrics.mqttMessagesOut, nonTelemetryPublishes: metrics.mqttNonTelemetryPublishes },
    });
    broker = mqtt;
    // Cluster mode: commands go through Kafka and every node publishes them to the devices connected to it.
    const commands: CommandSender = cluster ? await cluster.openCommands((c) => mqtt.publishLocal(c)) : mqtt;
    // A secret rotated or revoked (on any node) ends the device's live session here too.
    credentials.onInvalidated((deviceId) => mqtt.disconnect(deviceId));

    // Captured function logs (table W): written in batches, trimmed by age and by size per function.
    const fnLogs = new FunctionLogStore({
      database,
      logger: logger.child({ module: 'functions' }),
      retentionMs: config.functionLogRetention,
      maxBytesPerFunction: config.functionLogMaxBytes,
    });
    functionLogs = fnLogs;
    fnLogs.startRetention();
    const fnRuntime = new ProcessFunctionRuntime({
      logger: logger.child({ module: 'functions' }),
      metrics,
      aws: awsLocationOf(config),
      onInvoked: fnLogs.onInvoked,
      services: {
        put: async (deviceId, reading, origin) => {
          await ingest.ingestBody(deviceId, reading, origin);
        },
        publish: async (deviceId, command) => {
          await commands.sendCommand(deviceId, command.name, command.payload, 1);
        },
      },
    });
    runtime = fnRuntime;
    const dirSpecs = config.functionsDir ? functionsFromDirectory(config.functionsDir, { timeoutMs: config.functionTimeoutMs, memoryMb: config.functionMemoryMb }) : [];
    // Functions deployed over the API (code under <dataDir>/functions) and those of --functions-dir, one namespace.
    const registry = await FunctionRegistry.open({
      database,
      metadata,
      dataDir: config.dataDir,
      defaults: { timeoutMs: config.functionTimeoutMs, memoryMb: config.functionMemoryMb },
      logger: logger.child({ module: 'functions' }),
      files: dirSpecs,
    });
    const resolveFunction = async (name: string): Promise<FunctionSpec> => registry.spec(name);
    // Replays of a stream window through a function (asynchronous jobs, /v1/functions/{name}/replay).
    const replayManager = new ReplayManager({ log: changeLog, runtime: fnRuntime, resolve: resolveFunction, logs: fnLogs, logger: logger.child({ module: 'functions' }) });
    replays = replayManager;
    // Batches that mappings give up on (table X); listed, redriven and deleted under /v1/dlq.
    const dlq = new LevelDeadLetterQueue(database, metadata);
    // Cluster mode: a shard's pollers run on the node that owns it, with checkpoints as Kafka committed offsets.
    const checkpoints: CheckpointStore = cluster?.checkpoints ?? new LevelCheckpointStore(database);
    const placement = cluster === undefined ? {} : { placement: cluster.placement };
    for (const fn of dirSpecs) {
      const mapping = new EventSourceMapping(fn, { id: 'functions-dir', ...DEFAULT_TRIGGER }, {
        log: changeLog,
        runtime: fnRuntime,
        checkpoints,
        ...placement,
        logger: logger.child({ module: 'functions' }),
        metrics,
        onDiscard: dlq.onDiscard,
      });
      await mapping.start();
      mappings.push(mapping);
      logger.info({ function: fn.name, codePath: fn.codePath }, 'function attached to the change stream');
    }

    // Triggers created over the API: one mapping per enabled trigger, started now and
    // started/stopped at runtime as triggers change.
    const triggerManager = new TriggerManager({
      database,
      metadata,
      registry,
      mapping: { log: changeLog, runtime: fnRuntime, checkpoints, ...placement, logger: logger.child({ module: 'functions' }), metrics, onDiscard: dlq.onDiscard },
      logger: logger.child({ module: 'triggers' }),
    });
    triggers = triggerManager;
    await triggerManager.start();

    // API keys (table A) and, in secured mode, the bootstrap admin key (<dataDir>/admin.key).
    const adminKey = mode === 'secured' ? loadOrCreateAdminKey(config.dataDir) : undefined;
    if (adminKey?.looseMode) logger.warn({ path: adminKey.path }, 'the admin key file is readable by other users; chmod 600 it');
    // In cluster mode each node's bootstrap admin key works on every node.
    const apiKeys = await ApiKeyStore.open({ database, metadata, shareAdminKey: cluster !== undefined, ...(adminKey === undefined ? {} : { adminDigest: adminKey.digest }) });

    api = buildApi({
      store: cluster?.deviceStore(openStore) ?? openStore,
      changeLog,
      logger: logger.child({ module: 'api' }),
      metrics: metrics.registry,
      // Not ready while writes would fail (e.g. a full disk): a balancer should send devices elsewhere.
      ready: () => Boolean(broker?.listening) && Boolean(database?.writable) && !stopping,
      ingest: async (deviceId, body, raw) => {
        const result = await ingest.ingestBody(deviceId, body, undefined, raw);
        return { accepted: result.items.length, items: result.items };
      },
      maxBodyBytes: config.maxPayloadBytes,
      access: { mode, keys: apiKeys, audit: new AuditLog(database, metadata) },
      corsOrigins: config.corsOrigins.split(',').map((o) => o.trim()).filter((o) => o !== ''),
      rateLimit: config.apiRateLimit,
      requestTimeoutMs: config.httpRequestTimeoutMs,
      functions: { registry, runtime: fnRuntime, logs: fnLogs, replays: replayManager },
      triggers: triggerManager,
      rejects: rejectsLog,
      credentials,
      commands,
      ...(tls === undefined ? {} : { https: tls }),
      ...(cluster === undefined
        ? {}
        : { router: cluster, deviceDirectory: cluster.deviceDirectory }),
      disconnectDevice: (deviceId) => mqtt.disconnect(deviceId),
      about: { version: packageVersion(), startedAt, metrics, storeStats: async () => ({ ...(await openStore.stats()), sizeBytes: await directoryBytes(join(config.dataDir, 'db')) }) },
      console: config.console,
      dlq: {
        queue: dlq,
        redrive: { log: changeLog, invoke: async (name, event) => fnRuntime.invoke(await resolveFunction(name), event) },
      },
    });
    // MQTT over WebSocket shares the HTTP server (its upgrade event), so it is attached before listening.
    mqtt.attachWebSocket(api.server);
    await api.listen({ host: config.httpHost, port: config.httpPort });
    const httpAddr = api.server.address() as AddressInfo;
    const httpUrl = `${tls ? 'https' : 'http'}://${formatHost(httpAddr.address)}:${httpAddr.port}`;
    // Last: once in the store group, this node materializes partitions and answers for them.
    await cluster?.startStore(openStore, config.advertisedHttpUrl || httpUrl);
    // Up: whoever started it gets the key now (the CLI prints it), so it need not be shown again.
    adminKey?.shown();
    return {
      mqtt: `${tls ? 'mqtts' : 'mqtt'}://${formatHost(mqtt.address.host)}:${mqtt.address.port}`,
      http: httpUrl,
      ws: `${tls ? 'wss' : 'ws'}://${formatHost(httpAddr.address)}:${httpAddr.port}${MQTT_WEBSOCKET_PATH}`,
      dataDir: config.dataDir,
      ...(adminKey?.generated === undefined ? {} : { adminKey: adminKey.generated }),
    };
  }

  function stop(): Promise<void> {
    stopping ??= (async () => {
      clearInterval(trimTimer);
      // Ingest first so no new writes arrive; then drain what is in flight.
      await cluster?.closeCommands();
      await broker?.close();
      // Leaving the store group hands this node's partitions to the others at once.
      await cluster?.stop();
      // Replays stop after their batch in flight, which closing the runtime cuts short.
      const replaysStopped = replays?.close();
      await Promise.all(mappings.map((m) => m.stop()));
      await triggers?.stop();
      await runtime?.close();
      await replaysStopped;
      // After the runtime: the last invocations' lines are written too.
      await functionLogs?.close();
      await store?.close();
      await rejects?.close();
      await api?.close();
      await trimming;
      // Last of what uses Kafka: the change log sends what the store committed, then the connection goes.
      await cluster?.close();
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

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Every Prometheus metric of the process, in one registry per app instance (so tests
 * can run several apps in one process without clashing). prom-client's process and
 * Node.js metrics keep their standard unprefixed names (`process_cpu_seconds_total`,
 * `nodejs_heap_size_used_bytes`, ...) so stock dashboards match them; Tributary's own
 * metrics are named `tributary_*`.
 */
export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const m = {
    registry,
    storeWritable: new Gauge({ name: 'tributary_store_writable', help: '1 while the database accepts writes, 0 after a failed write (e.g. a full disk) until it has been reopened.', registers: [registry] }),
    ingestReadings: new Counter({ name: 'tributary_ingest_readings_total', help: 'Readings accepted and durably stored, by transport.', labelNames: ['transport'], registers: [registry] }),
    ingestRejects: new Counter({ name: 'tributary_ingest_rejects_total', help: 'Payloads rejected, by reason and transport.', labelNames: ['reason', 'transport'], registers: [registry] }),
    ingestMessages: new Counter({ name: 'tributary_ingest_messages_total', help: 'Telemetry messages received (MQTT publishes, HTTP bodies), before validation, by transport.', labelNames: ['transport'], registers: [registry] }),
    ingestThrottled: new Counter({ name: 'tributary_ingest_throttled_total', help: 'MQTT telemetry publishes whose PUBACK was delayed because the device exceeded --device-publish-rate.', registers: [registry] }),
    ingestDurableLatency: new Histogram({
      name: 'tributary_ingest_publish_to_durable_seconds',
      help: 'From a telemetry message reaching ingest (after any rate pacing) until it is durable (fsynced) or durably rejected, by transport.',
      labelNames: ['transport'],
      buckets: [0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    storeCommitLatency: new Histogram({
      name: 'tributary_store_commit_seconds',
      help: 'Write and fsync of one synced database batch (a group commit of readings, or another durable write), queueing excluded: the floor under publish-to-durable latency.',
      buckets: [0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1, 0.5],
      registers: [registry],
    }),
    storeQueuedReadings: new Gauge({ name: 'tributary_store_queued_readings', help: 'Readings waiting for or in a group commit: how far the store is behind ingest.', registers: [registry] }),
    functionInvocations: new Counter({ name: 'tributary_function_invocations_total', help: 'Function invocations by function and outcome.', labelNames: ['function', 'outcome'], registers: [registry] }),
    functionErrors: new Counter({ name: 'tributary_function_errors_total', help: 'Function invocations that did not succeed (error, timeout or crash), by function.', labelNames: ['function'], registers: [registry] }),
    functionThrottles: new Counter({ name: 'tributary_function_throttles_total', help: 'Invocations refused with Throttled because too many of the function\'s invocations were waiting, by function.', labelNames: ['function'], registers: [registry] }),
    functionDuration: new Histogram({ name: 'tributary_function_duration_seconds', help: 'Function invocation duration.', labelNames: ['function'], buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30], registers: [registry] }),
    functionIteratorAge: new Histogram({ name: 'tributary_function_iterator_age_seconds', help: 'Age of the newest record of a batch when its function was invoked.', labelNames: ['function'], buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 60], registers: [registry] }),
    // Per event source mapping (trigger), as Lambda's per-mapping metrics; `trigger` is the trigger id ("functions-dir" for --functions-dir).
    mappingInvocations: new Counter({ name: 'tributary_mapping_invocations_total', help: 'Invocations by an event source mapping, by outcome (ok, error, timeout, crashed); errors are the outcomes other than ok.', labelNames: ['function', 'trigger', 'outcome'], registers: [registry] }),
    mappingThrottles: new Counter({ name: 'tributary_mapping_throttles_total', help: 'Invocations the function runtime refused as Throttled (too many waiting); the batch is retried after a backoff without spending a retry.', labelNames: ['function', 'trigger'], registers: [registry] }),
    mappingDuration: new Histogram({ name: 'tributary_mapping_duration_seconds', help: 'Duration of the invocations of an event source mapping.', labelNames: ['function', 'trigger'], buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30], registers: [registry] }),
    mappingIteratorAge: new Gauge({ name: 'tributary_mapping_iterator_age_seconds', help: 'Age of the newest record of the last batch an event source mapping sent (Lambda\'s IteratorAge).', labelNames: ['function', 'trigger'], registers: [registry] }),
    mappingSkipped: new Counter({ name: 'tributary_mapping_records_skipped_total', help: 'Records an event source mapping moved past without delivering them: filtered (filterCriteria), own_write (written by the same function through context.put), hop_limit (a chain of context.put writes too long), unrenderable (cannot be rendered as a stream record; sent to the dead-letter queue with the error).', labelNames: ['function', 'trigger', 'reason'], registers: [registry] }),
    mappingTrimmed: new Counter({ name: 'tributary_mapping_records_trimmed_total', help: 'Records removed by stream retention before an event source mapping delivered them (lost for it).', labelNames: ['function', 'trigger'], registers: [registry] }),
    mqttAuthFailures: new Counter({ name: 'tributary_mqtt_auth_failures_total', help: 'MQTT logins refused and publishes/subscriptions denied in secured mode, by reason.', labelNames: ['reason'], registers: [registry] }),
    mqttConnectedClients: new Gauge({ name: 'tributary_mqtt_connected_clients', help: 'MQTT clients connected now (CONNACK sent), all transports.', registers: [registry] }),
    mqttMessagesOut: new Counter({ name: 'tributary_mqtt_messages_out_total', help: 'PUBLISH packets the broker forwarded to subscribers (retained and queued ones included).', registers: [registry] }),
    mqttNonTelemetryPublishes: new Counter({ name: 'tributary_mqtt_non_telemetry_publishes_total', help: 'PUBLISHes from clients on topics other than devices/{deviceId}/telemetry: forwarded to subscribers as by any MQTT broker, not stored.', registers: [registry] }),
  };
  return m;
}

export type Metrics = ReturnType<typeof createMetrics>;

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Every Prometheus metric of the process, in one registry per app instance (so tests
 * can run several apps in one process without clashing).
 */
export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'tributary_process_' });
  const m = {
    registry,
    storeWritable: new Gauge({ name: 'tributary_store_writable', help: '1 while the database accepts writes, 0 after a failed write (e.g. a full disk) until it has been reopened.', registers: [registry] }),
    ingestReadings: new Counter({ name: 'tributary_ingest_readings_total', help: 'Readings accepted and durably stored, by transport.', labelNames: ['transport'], registers: [registry] }),
    ingestRejects: new Counter({ name: 'tributary_ingest_rejects_total', help: 'Payloads rejected, by reason and transport.', labelNames: ['reason', 'transport'], registers: [registry] }),
    functionInvocations: new Counter({ name: 'tributary_function_invocations_total', help: 'Function invocations by function and outcome.', labelNames: ['function', 'outcome'], registers: [registry] }),
    functionDuration: new Histogram({ name: 'tributary_function_duration_seconds', help: 'Function invocation duration.', labelNames: ['function'], buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30], registers: [registry] }),
    functionIteratorAge: new Histogram({ name: 'tributary_function_iterator_age_seconds', help: 'Age of the newest record of a batch when its function was invoked.', labelNames: ['function'], buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 60], registers: [registry] }),
  };
  return m;
}

export type Metrics = ReturnType<typeof createMetrics>;

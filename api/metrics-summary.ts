/**
 * The metrics summary behind `GET /v1/metrics/summary`: the process's Prometheus counters
 * read back as JSON, with rates and latency quantiles over a recent window, so that a
 * dashboard (the console) shows "readings/s now" without doing PromQL itself.
 *
 * Rates need two samples: every summary request takes one, and {@link MetricsWindow}
 * keeps the last minute of them, so a rate is the change since the newest sample at least
 * {@link MIN_WINDOW_MS} old (or since the process started, before there is one).
 *
 * @module
 */
import type { Metrics } from '../core/metrics.js';

/** The shortest window a rate is computed over (shorter ones jump around). */
export const MIN_WINDOW_MS = 5000;
/** How long samples are kept. */
const KEEP_MS = 60_000;

/** Counters at one moment; `latencyBuckets` are cumulative counts for {@link Sample.latencyBounds}. */
export interface Sample {
  at: number;
  readings: number;
  rejects: number;
  messages: number;
  latencyBounds: number[];
  latencyBuckets: number[];
}

/**
 * The `q` quantile (0..1) of a histogram from cumulative bucket counts, interpolating
 * linearly inside the bucket, as Prometheus' `histogram_quantile` does. Null without
 * observations; the highest finite bound when the rank falls in the `+Inf` bucket.
 */
export function histogramQuantile(q: number, bounds: readonly number[], cumulative: readonly number[]): number | null {
  const total = cumulative.at(-1) ?? 0;
  if (total <= 0) return null;
  const rank = q * total;
  for (let i = 0; i < cumulative.length; i++) {
    const count = cumulative[i] as number;
    if (count >= rank) {
      const upper = bounds[i] as number;
      if (!Number.isFinite(upper)) return bounds[i - 1] ?? null;
      const lower = i === 0 ? 0 : (bounds[i - 1] as number);
      const below = i === 0 ? 0 : (cumulative[i - 1] as number);
      const inBucket = count - below;
      return inBucket <= 0 ? upper : lower + ((upper - lower) * (rank - below)) / inBucket;
    }
  }
  return bounds.at(-2) ?? null;
}

/** Recent samples, oldest first, at most a minute of them. */
export class MetricsWindow {
  private samples: Sample[] = [];

  /** Adds `now` and returns the sample to compare it with (undefined: none old enough). */
  add(now: Sample): Sample | undefined {
    this.samples = this.samples.filter((s) => now.at - s.at <= KEEP_MS);
    let base: Sample | undefined;
    for (const s of this.samples) if (now.at - s.at >= MIN_WINDOW_MS) base = s;
    this.samples.push(now);
    return base;
  }
}

/** Rates and quantiles between two samples (`base` undefined: since the start, `startedAt`). */
export function windowed(now: Sample, base: Sample | undefined, startedAt: number) {
  const from = base ?? { at: startedAt, readings: 0, rejects: 0, messages: 0, latencyBuckets: now.latencyBuckets.map(() => 0) };
  const seconds = Math.max(0.001, (now.at - from.at) / 1000);
  const buckets = now.latencyBuckets.map((c, i) => c - (from.latencyBuckets[i] ?? 0));
  const quantile = (q: number) => histogramQuantile(q, now.latencyBounds, buckets);
  return {
    windowSeconds: Math.round(seconds * 1000) / 1000,
    readingsPerSecond: (now.readings - from.readings) / seconds,
    rejectsPerSecond: (now.rejects - from.rejects) / seconds,
    messagesPerSecond: (now.messages - from.messages) / seconds,
    durableLatencyP50Seconds: quantile(0.5),
    durableLatencyP99Seconds: quantile(0.99),
  };
}

type MetricValue = { value: number; labels: Record<string, string | number | undefined>; metricName?: string };

async function values(metric: { get(): Promise<{ values: MetricValue[] }> }): Promise<MetricValue[]> {
  return (await metric.get()).values;
}

const sum = (vs: MetricValue[]) => vs.reduce((n, v) => n + v.value, 0);

/** The ingest counters and the publish→durable histogram (all transports) now. */
export async function sampleIngest(metrics: Metrics, at: number): Promise<Sample> {
  const latency = await values(metrics.ingestDurableLatency);
  const byBound = new Map<number, number>();
  for (const v of latency) {
    if (v.metricName?.endsWith('_bucket') !== true) continue;
    const le = v.labels.le === '+Inf' ? Infinity : Number(v.labels.le);
    byBound.set(le, (byBound.get(le) ?? 0) + v.value);
  }
  const bounds = [...byBound.keys()].sort((a, b) => a - b);
  return {
    at,
    readings: sum(await values(metrics.ingestReadings)),
    rejects: sum(await values(metrics.ingestRejects)),
    messages: sum(await values(metrics.ingestMessages)),
    latencyBounds: bounds,
    latencyBuckets: bounds.map((b) => byBound.get(b) as number),
  };
}

/** One function's counters since the process started. */
export interface FunctionStats {
  name: string;
  invocations: number;
  errors: number;
  throttles: number;
  /** Largest iterator age among the function's triggers (Lambda's IteratorAge); null without a trigger that has run. */
  iteratorAgeSeconds: number | null;
}

/** Per-function invocation, error and throttle counts and iterator age. */
export async function functionStats(metrics: Metrics): Promise<FunctionStats[]> {
  const out = new Map<string, FunctionStats>();
  const entry = (name: string): FunctionStats => {
    let e = out.get(name);
    if (e === undefined) {
      e = { name, invocations: 0, errors: 0, throttles: 0, iteratorAgeSeconds: null };
      out.set(name, e);
    }
    return e;
  };
  for (const v of await values(metrics.functionInvocations)) entry(String(v.labels.function)).invocations += v.value;
  for (const v of await values(metrics.functionErrors)) entry(String(v.labels.function)).errors += v.value;
  for (const v of await values(metrics.functionThrottles)) entry(String(v.labels.function)).throttles += v.value;
  for (const v of await values(metrics.mappingIteratorAge)) {
    const e = entry(String(v.labels.function));
    e.iteratorAgeSeconds = Math.max(e.iteratorAgeSeconds ?? 0, v.value);
  }
  return [...out.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
}

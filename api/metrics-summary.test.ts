import { describe, expect, it } from 'vitest';
import { histogramQuantile, MetricsWindow, MIN_WINDOW_MS, windowed, type Sample } from './metrics-summary.js';

const bounds = [0.001, 0.01, 0.1, Infinity];

describe('histogramQuantile', () => {
  it('interpolates inside the bucket the rank falls in, as histogram_quantile', () => {
    // 10 observations ≤ 1 ms, 10 more ≤ 10 ms.
    expect(histogramQuantile(0.5, bounds, [10, 20, 20, 20])).toBeCloseTo(0.001);
    expect(histogramQuantile(0.75, bounds, [10, 20, 20, 20])).toBeCloseTo(0.0055);
    expect(histogramQuantile(0.25, bounds, [10, 20, 20, 20])).toBeCloseTo(0.0005);
  });
  it('is null without observations and the highest finite bound in the +Inf bucket', () => {
    expect(histogramQuantile(0.5, bounds, [0, 0, 0, 0])).toBeNull();
    expect(histogramQuantile(0.99, bounds, [0, 0, 0, 5])).toBe(0.1);
  });
});

describe('MetricsWindow', () => {
  const sample = (at: number, readings: number): Sample => ({ at, readings, rejects: 0, messages: readings, latencyBounds: bounds, latencyBuckets: [readings, readings, readings, readings] });
  it('compares with the newest sample at least the minimum window old, else since the start', () => {
    const w = new MetricsWindow();
    expect(w.add(sample(1000, 0))).toBeUndefined();
    expect(w.add(sample(1000 + MIN_WINDOW_MS - 1, 50))).toBeUndefined();
    expect(w.add(sample(1000 + MIN_WINDOW_MS, 60))?.at).toBe(1000);
    expect(w.add(sample(3000 + MIN_WINDOW_MS * 2, 200))?.at).toBe(1000 + MIN_WINDOW_MS);
    // Samples older than a minute are forgotten.
    expect(w.add(sample(200_000, 300))).toBeUndefined();
  });
  it('turns two samples into rates and windowed quantiles', () => {
    const now = sample(11_000, 100);
    const out = windowed(now, sample(1000, 50), 0);
    expect(out.windowSeconds).toBe(10);
    expect(out.readingsPerSecond).toBe(5);
    expect(out.durableLatencyP50Seconds).toBeCloseTo(0.0005);
    expect(windowed(now, undefined, 1000).readingsPerSecond).toBe(10);
  });
});

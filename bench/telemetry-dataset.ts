/**
 * The realistic readings the storage benchmarks load (issue 19): devices reporting once a
 * second with five values — a temperature and a humidity random walk, a battery level
 * that falls slowly, an RSSI, and a status string — from a fixed seed, so every run and
 * every baseline (DuckDB) sees the same data.
 */
import { prng } from '../core/prng.js';

export interface DatasetReading {
  deviceId: string;
  ts: number;
  values: { temp: number; humidity: number; battery: number; rssi: number; status: string };
}

export interface DatasetOptions {
  devices: number;
  readings: number;
  start: number;
  intervalMs?: number;
  seed?: number;
}

/** Yields `readings` readings in time order, round-robin over the devices. */
export function* dataset(opts: DatasetOptions): Generator<DatasetReading> {
  const rnd = prng(opts.seed ?? 20261208);
  const interval = opts.intervalMs ?? 1000;
  const state = Array.from({ length: opts.devices }, (_, d) => ({
    id: `sensor-${String(d).padStart(4, '0')}`,
    temp: 18 + rnd() * 6,
    humidity: 40 + rnd() * 20,
    battery: 100,
    drain: 1 / (3600 * (2 + rnd() * 4)), // one percent every 2–6 hours
    rssiMean: -55 - rnd() * 25,
  }));
  for (let i = 0; i < opts.readings; i++) {
    const s = state[i % opts.devices] as (typeof state)[number];
    const tick = Math.floor(i / opts.devices);
    s.temp += (rnd() - 0.5) * 0.1;
    s.humidity = Math.min(100, Math.max(0, s.humidity + (rnd() - 0.5) * 0.4));
    s.battery = Math.max(0, s.battery - s.drain);
    yield {
      deviceId: s.id,
      ts: opts.start + tick * interval,
      values: {
        temp: Math.round(s.temp * 100) / 100,
        humidity: Math.round(s.humidity * 10) / 10,
        battery: Math.round(s.battery),
        rssi: Math.round(s.rssiMean + (rnd() - 0.5) * 8),
        status: rnd() < 0.995 ? 'ok' : 'low-signal',
      },
    };
  }
}

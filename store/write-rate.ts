/**
 * Readings a minute per device, as an exponentially weighted moving average with a
 * one-minute time constant (as a Unix load average): two numbers per device, in memory
 * only, so a device's rate starts again from 0 after a restart. For dashboards (the
 * console's device list), not for billing or limits.
 */
export class WriteRates {
  private readonly rates = new Map<string, { perMs: number; at: number }>();

  constructor(private readonly tauMs = 60_000) {}

  /** `readings` were written for the device at `now`. */
  add(deviceId: string, readings: number, now: number): void {
    const r = this.rates.get(deviceId);
    if (r === undefined) {
      this.rates.set(deviceId, { perMs: readings / this.tauMs, at: now });
      return;
    }
    r.perMs = decayed(r.perMs, now - r.at, this.tauMs) + readings / this.tauMs;
    r.at = Math.max(r.at, now);
  }

  /** The device's recent readings a minute at `now`, one decimal. */
  perMinute(deviceId: string, now: number): number {
    const r = this.rates.get(deviceId);
    if (r === undefined) return 0;
    return Math.round(decayed(r.perMs, now - r.at, this.tauMs) * 60_000 * 10) / 10;
  }

  delete(deviceId: string): void {
    this.rates.delete(deviceId);
  }
}

function decayed(perMs: number, elapsedMs: number, tauMs: number): number {
  return elapsedMs > 0 ? perMs * Math.exp(-elapsedMs / tauMs) : perMs;
}

/**
 * Per-device publish rate: a token bucket per device id (`ratePerSecond` tokens a
 * second, holding at most one second's worth, so a device may burst that much after a
 * quiet second).
 *
 * A publish over the rate is not refused: {@link PublishRate.take} says how long to hold
 * it so that the device's publishes come out at its rate, and takes the token now (the
 * bucket goes into debt). The caller withholds the PUBACK that long; aedes reads no more
 * of that connection's socket until every packet of the chunk it is handling has been
 * answered (lib/client.js `_parsingBatch`), so TCP flow control slows the device itself
 * — MQTT 3.1.1 has no other way to push back on a PUBLISH. The debt is bounded by what
 * the device has in flight, since nothing more is read meanwhile.
 *
 * Memory is bounded: at most `maxDevices` buckets are kept, least recently used first
 * out. A bucket that has refilled is the same as none, so eviction only ever forgives
 * the debt of a device that has not published for a while.
 */
export interface PublishRateOptions {
  ratePerSecond: number;
  /** Most buckets kept. Default 100,000 (about 10 MB). */
  maxDevices?: number;
  now?: () => number;
}

interface Bucket {
  tokens: number;
  at: number;
}

export class PublishRate {
  private readonly perMs: number;
  private readonly capacity: number;
  private readonly maxDevices: number;
  private readonly now: () => number;
  /** Insertion order is recency order: a bucket is re-inserted each time it is used. */
  private readonly buckets = new Map<string, Bucket>();

  constructor(opts: PublishRateOptions) {
    if (!(opts.ratePerSecond > 0)) throw new RangeError(`ratePerSecond must be positive (got ${opts.ratePerSecond})`);
    this.perMs = opts.ratePerSecond / 1000;
    this.capacity = Math.max(1, opts.ratePerSecond);
    this.maxDevices = opts.maxDevices ?? 100_000;
    this.now = opts.now ?? Date.now;
  }

  /** Takes a token for one publish of `deviceId`; returns how many ms it must wait (0: none). */
  take(deviceId: string): number {
    const now = this.now();
    const b = this.buckets.get(deviceId);
    let tokens = this.capacity;
    if (b !== undefined) {
      tokens = Math.min(this.capacity, b.tokens + (now - b.at) * this.perMs);
      this.buckets.delete(deviceId);
    } else if (this.buckets.size >= this.maxDevices) {
      this.buckets.delete(this.buckets.keys().next().value as string);
    }
    tokens -= 1;
    this.buckets.set(deviceId, { tokens, at: now });
    return tokens >= 0 ? 0 : Math.ceil(-tokens / this.perMs);
  }

  /** Hands back a token taken by {@link take} for a publish that did not go ahead after all. */
  giveBack(deviceId: string): void {
    const b = this.buckets.get(deviceId);
    if (b !== undefined) b.tokens += 1;
  }

  /** Buckets kept (for tests). */
  get tracked(): number {
    return this.buckets.size;
  }
}

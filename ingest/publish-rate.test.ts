import { describe, expect, it } from 'vitest';
import { PublishRate } from './publish-rate.js';

describe('PublishRate', () => {
  it('lets a burst of one second through, then paces publishes to the rate', () => {
    let now = 0;
    const rate = new PublishRate({ ratePerSecond: 10, now: () => now });
    const waits = Array.from({ length: 13 }, () => rate.take('d'));
    expect(waits.slice(0, 10)).toEqual(Array(10).fill(0));
    // Each further publish waits one more tenth of a second: the device comes out at 10/s.
    expect(waits.slice(10)).toEqual([100, 200, 300]);
    now += 300; // the debt is paid off
    expect(rate.take('d')).toBe(100);
  });

  it('refills over time up to one second worth, and keeps devices apart', () => {
    let now = 0;
    const rate = new PublishRate({ ratePerSecond: 2, now: () => now });
    expect([rate.take('a'), rate.take('a'), rate.take('a')]).toEqual([0, 0, 500]);
    expect(rate.take('b')).toBe(0);
    now += 60_000;
    expect([rate.take('a'), rate.take('a'), rate.take('a')]).toEqual([0, 0, 500]);
  });

  it('giveBack undoes a take', () => {
    const rate = new PublishRate({ ratePerSecond: 1, now: () => 0 });
    expect(rate.take('a')).toBe(0);
    expect(rate.take('a')).toBe(1000);
    rate.giveBack('a');
    expect(rate.take('a')).toBe(1000);
  });

  it('tracks at most maxDevices buckets, forgetting the least recently used', () => {
    const now = 0;
    const rate = new PublishRate({ ratePerSecond: 1, maxDevices: 3, now: () => now });
    for (const d of ['a', 'b', 'c']) rate.take(d);
    rate.take('a'); // 'a' is now the most recent; 'b' the least
    rate.take('d');
    expect(rate.tracked).toBe(3);
    expect(rate.take('b')).toBe(0); // forgotten: a fresh bucket
    expect(rate.take('a')).toBe(2000); // still remembered, in debt
    for (let i = 0; i < 10_000; i++) rate.take(`dev-${i}`);
    expect(rate.tracked).toBe(3);
  });

  it('refuses a rate that is not positive', () => {
    expect(() => new PublishRate({ ratePerSecond: 0 })).toThrow(RangeError);
  });
});

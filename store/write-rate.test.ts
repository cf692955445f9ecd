import { describe, expect, it } from 'vitest';
import { WriteRates } from './write-rate.js';

describe('WriteRates', () => {
  it('settles at the rate a device writes, and decays when it stops', () => {
    const rates = new WriteRates();
    // One reading a second for ten minutes: 60 a minute (just after a write the average
    // stands a little above, by half a write's share: 60.5).
    for (let t = 0; t <= 600_000; t += 1000) rates.add('d', 1, t);
    expect(rates.perMinute('d', 600_000)).toBeGreaterThan(59);
    expect(rates.perMinute('d', 600_000)).toBeLessThan(61);
    // Batches of 10 every 5 s are the same rate.
    for (let t = 605_000; t <= 1_200_000; t += 5000) rates.add('e', 10, t);
    expect(rates.perMinute('e', 1_200_000)).toBeGreaterThan(110);
    expect(rates.perMinute('e', 1_200_000)).toBeLessThan(130);
    // A minute of silence leaves e^-1 of it, ten minutes next to nothing.
    expect(rates.perMinute('d', 660_000)).toBeCloseTo(60.5 / Math.E, 0);
    expect(rates.perMinute('d', 1_200_000)).toBe(0);
  });

  it('is 0 for a device never seen or deleted', () => {
    const rates = new WriteRates();
    expect(rates.perMinute('x', 1)).toBe(0);
    rates.add('x', 5, 1);
    rates.delete('x');
    expect(rates.perMinute('x', 1)).toBe(0);
  });
});

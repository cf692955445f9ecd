import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { SensorModel } from './simulate.js';

describe('SensorModel', () => {
  it('wanders like a sensor: temperature stays near its base, humidity within 0-100, battery only drains', () => {
    fc.assert(
      fc.property(fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 1, maxLength: 50 }), (draws) => {
        let i = 0;
        // Any sequence of random numbers, repeated: the bounds must hold whatever the draws.
        const model = new SensorModel(() => draws[i++ % draws.length] as number);
        const seen = { tempMin: Infinity, tempMax: -Infinity, humMin: Infinity, humMax: -Infinity, rssiMin: Infinity, rssiMax: -Infinity };
        let battery = Infinity;
        let drains = true;
        for (let step = 0; step < 2000; step++) {
          const r = model.next();
          seen.tempMin = Math.min(seen.tempMin, r.temp);
          seen.tempMax = Math.max(seen.tempMax, r.temp);
          seen.humMin = Math.min(seen.humMin, r.humidity);
          seen.humMax = Math.max(seen.humMax, r.humidity);
          seen.rssiMin = Math.min(seen.rssiMin, r.rssi);
          seen.rssiMax = Math.max(seen.rssiMax, r.rssi);
          drains &&= r.battery <= battery;
          battery = r.battery;
        }
        // The pull towards the base (1 % per step) bounds a walk of ±0.1 steps to base ± 10; bases are 18-24.
        expect(seen.tempMin).toBeGreaterThanOrEqual(8);
        expect(seen.tempMax).toBeLessThanOrEqual(34);
        expect(seen.humMin).toBeGreaterThanOrEqual(0);
        expect(seen.humMax).toBeLessThanOrEqual(100);
        expect(seen.rssiMin).toBeGreaterThanOrEqual(-90);
        expect(seen.rssiMax).toBeLessThanOrEqual(-60);
        expect(drains).toBe(true);
      }),
      { numRuns: 50 },
    );
  });
});

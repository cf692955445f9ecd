import { describe, expect, it } from 'vitest';
import { withOverrides } from './overrides.js';

class Counter {
  #n = 0;
  readonly label = 'c';
  add(k: number): number {
    this.#n += k;
    return this.#n;
  }
  twice(k: number): number {
    return this.add(k) + this.add(k);
  }
}

describe('withOverrides', () => {
  it('replaces the given methods and runs every other one on the original, private fields included', () => {
    const target = new Counter();
    const wrapped = withOverrides(target, { add: (k: number) => -k });
    expect(wrapped.add(5)).toBe(-5);
    // Not overridden: runs on the target, whose own calls reach its own methods.
    expect(wrapped.twice(1)).toBe(3);
    expect(target.add(0)).toBe(2);
    expect(wrapped.label).toBe('c');
  });

  it('binds each method once', () => {
    const wrapped = withOverrides(new Counter(), {});
    expect(wrapped.twice).toBe(wrapped.twice);
  });
});

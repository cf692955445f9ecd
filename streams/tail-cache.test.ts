import { describe, expect, it } from 'vitest';
import { TailCache } from './tail-cache.js';

const buf = (n: number, size = 1): Buffer => Buffer.alloc(size, n % 256);
const seqs = (out: Array<[number, Buffer]> | undefined): number[] | undefined => out?.map(([s]) => s);

describe('TailCache', () => {
  it('serves a contiguous run after a sequence number, up to the limit and upTo', () => {
    const c = new TailCache(8, 1024);
    for (let s = 1; s <= 5; s++) c.append(s, buf(s));
    expect(seqs(c.read(0, 5, 100))).toEqual([1, 2, 3, 4, 5]);
    expect(seqs(c.read(2, 5, 2))).toEqual([3, 4]);
    expect(seqs(c.read(2, 4, 100))).toEqual([3, 4]);
    expect(c.read(2, 5, 100)?.[0]?.[1]).toEqual(buf(3));
  });

  it('misses (undefined) when the next record is not cached: behind the cache, or past its end', () => {
    const c = new TailCache(8, 1024);
    expect(c.read(0, 10, 10)).toBeUndefined();
    for (let s = 11; s <= 13; s++) c.append(s, buf(s));
    expect(c.read(9, 13, 10)).toBeUndefined();
    expect(seqs(c.read(10, 13, 10))).toEqual([11, 12, 13]);
    expect(c.read(13, 13, 10)).toBeUndefined();
  });

  it('evicts the oldest past the record and byte bounds, keeping at least the newest', () => {
    const byCount = new TailCache(3, 1024);
    for (let s = 1; s <= 10; s++) byCount.append(s, buf(s));
    expect(byCount.read(6, 10, 10)).toBeUndefined();
    expect(seqs(byCount.read(7, 10, 10))).toEqual([8, 9, 10]);

    const byBytes = new TailCache(100, 10);
    for (let s = 1; s <= 4; s++) byBytes.append(s, buf(s, 4));
    expect(seqs(byBytes.read(2, 4, 10))).toEqual([3, 4]);
    expect(byBytes.read(1, 4, 10)).toBeUndefined();
    byBytes.append(5, buf(5, 50));
    expect(seqs(byBytes.read(4, 5, 10))).toEqual([5]);
    expect(byBytes.read(3, 5, 10)).toBeUndefined();
  });

  it('starts afresh when a record does not follow the last one, and forgets trimmed records', () => {
    const c = new TailCache(8, 1024);
    for (let s = 1; s <= 4; s++) c.append(s, buf(s));
    c.append(7, buf(7));
    expect(c.read(3, 7, 10)).toBeUndefined();
    expect(seqs(c.read(6, 7, 10))).toEqual([7]);
    for (let s = 8; s <= 10; s++) c.append(s, buf(s));
    c.dropBefore(9);
    expect(c.read(7, 10, 10)).toBeUndefined();
    expect(seqs(c.read(8, 10, 10))).toEqual([9, 10]);
    c.dropBefore(Infinity);
    expect(c.read(8, 10, 10)).toBeUndefined();
    c.append(11, buf(11));
    expect(seqs(c.read(10, 11, 10))).toEqual([11]);
  });
});

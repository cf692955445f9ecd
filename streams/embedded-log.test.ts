import { describe, expect, it } from 'vitest';
import { Prefix } from '../store/keyspace.js';
import { changeKey } from './embedded-log.js';

describe('changeKey', () => {
  it('writes the sequence number as a big-endian u64 across the 32-bit boundary', () => {
    for (const n of [0, 1, 0xffff_ffff, 0x1_0000_0000, 0x1_0000_0001, Number.MAX_SAFE_INTEGER]) {
      const key = changeKey(3, n);
      expect(key.length).toBe(11);
      expect(key[0]).toBe(Prefix.change);
      expect(key.readUInt16BE(1)).toBe(3);
      expect(key.readBigUInt64BE(3)).toBe(BigInt(n));
    }
  });

  it('sorts a shard in sequence order', () => {
    const ns = [Number.MAX_SAFE_INTEGER, 0x1_0000_0000, 2, 0xffff_ffff, 0x1_0000_0001];
    const sorted = ns.map((n) => changeKey(1, n)).sort(Buffer.compare);
    expect(sorted.map((k) => Number(k.readBigUInt64BE(3)))).toEqual([...ns].sort((a, b) => a - b));
  });
});

import { describe, expect, it } from 'vitest';
import { crc32c } from './crc32c.js';

describe('crc32c', () => {
  it('matches the standard check value and RFC 3720 (iSCSI) vectors', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(32, 0x00))).toBe(0x8a9136aa);
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i)))).toBe(0x46dd794e);
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)))).toBe(0x113fdb5c);
    expect(crc32c(Buffer.alloc(0))).toBe(0);
  });

  it('checks a sub-range the same as a copy of it, at every alignment', () => {
    const buf = Buffer.from(Array.from({ length: 100 }, (_, i) => (i * 37 + 11) & 0xff));
    for (let start = 0; start < 20; start++) {
      for (const end of [start, start + 1, start + 7, start + 8, start + 9, 100]) {
        expect(crc32c(buf, start, end)).toBe(crc32c(Buffer.from(buf.subarray(start, end))));
      }
    }
  });
});

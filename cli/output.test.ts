import { describe, expect, it } from 'vitest';
import { flatten, formatTable, formatTags } from './output.js';

describe('formatTable', () => {
  it('aligns columns under their headers, right-aligns numbers, and leaves no trailing spaces', () => {
    const rows = [
      { id: 'a', n: 1, note: '' },
      { id: 'longer-id', n: 1234, note: 'x' },
    ];
    const text = formatTable(
      [
        { header: 'ID', value: (r: (typeof rows)[number]) => r.id },
        { header: 'N', value: (r) => String(r.n), right: true },
        { header: 'NOTE', value: (r) => r.note },
      ],
      rows,
    );
    expect(text).toBe(['ID            N  NOTE', 'a             1', 'longer-id  1234  x', ''].join('\n'));
  });
});

describe('flatten', () => {
  it('addresses nested values by dotted path, as the API does, and keeps leaves as they are', () => {
    expect(flatten({ temp: 1, gps: { lat: 52.5, fix: { ok: true } }, label: 'x' })).toEqual({ temp: 1, 'gps.lat': 52.5, 'gps.fix.ok': true, label: 'x' });
  });
});

describe('formatTags', () => {
  it('prints tags as key=value pairs', () => {
    expect(formatTags({ site: '7', floor: '2' })).toBe('site=7 floor=2');
    expect(formatTags({})).toBe('');
  });
});

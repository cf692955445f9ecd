import { describe, expect, it } from 'vitest';
import { parseDuration, parseTime } from './time.js';

const NOW = 1_764_150_000_000;

describe('parseTime', () => {
  it.each([
    ['now', NOW],
    ['1764150000000', 1764150000000],
    ['-15m', NOW - 900_000],
    ['-24h', NOW - 86_400_000],
    ['+1s', NOW + 1000],
    ['2025-11-26T09:40:00Z', Date.parse('2025-11-26T09:40:00Z')],
    ['2025-11-26', Date.parse('2025-11-26')],
  ])('%s', (text, expected) => {
    expect(parseTime(text, 'from', NOW)).toBe(expected);
  });

  it.each(['yesterday', '', '-15', '15m', '1.5', '2025-13-45', '-1'])('rejects %j with the field named', (text) => {
    expect(() => parseTime(text, 'from', NOW)).toThrow(expect.objectContaining({ code: 'InvalidParameter', field: 'from' }));
  });
});

describe('parseDuration', () => {
  it.each([
    ['500ms', 500],
    ['15m', 900_000],
    ['1.5h', 5_400_000],
    ['30d', 2_592_000_000],
    ['1w', 604_800_000],
  ])('%s', (text, ms) => expect(parseDuration(text, 'interval')).toBe(ms));

  it.each(['0s', 'h', '10', '-5m', '5 minutes'])('rejects %j', (text) => {
    expect(() => parseDuration(text, 'interval')).toThrow(/interval must be/);
  });
});

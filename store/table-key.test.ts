import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_TIMESTAMP_MS } from '../core/time.js';
import { compareItemKeys } from './items.js';
import { parseTsSeq, tsSeqOf } from './table-key.js';

const MAX_TS = MAX_TIMESTAMP_MS;
const MAX_SEQ = 0xffff_ffff;

describe('the telemetry table sort key tsSeq', () => {
  it('is ts for seq 0 and ts + seq / 10^10 in exact decimal otherwise, trailing zeros trimmed', () => {
    expect(tsSeqOf(1764150000000, 0)).toBe('1764150000000');
    expect(tsSeqOf(1764150000000, 3)).toBe('1764150000000.0000000003');
    expect(tsSeqOf(1764150000000, 30)).toBe('1764150000000.000000003');
    expect(tsSeqOf(MAX_TS, MAX_SEQ)).toBe('253402300799999.4294967295');
    // Within DynamoDB's 38 significant digits.
    expect(tsSeqOf(MAX_TS, MAX_SEQ).replace('.', '').length).toBeLessThanOrEqual(38);
  });

  it('round-trips and orders numerically as (ts, seq)', () => {
    const key = fc.tuple(fc.integer({ min: 0, max: MAX_TS }), fc.integer({ min: 0, max: MAX_SEQ }));
    fc.assert(
      fc.property(key, key, ([ts, seq], [ts2, seq2]) => {
        expect(parseTsSeq(tsSeqOf(ts, seq))).toEqual({ ts, seq });
        // Compared as decimals (integer part, then the fraction padded to 10 digits), as DynamoDB compares N.
        const [a, b] = [tsSeqOf(ts, seq), tsSeqOf(ts2, seq2)].map((t) => {
          const [int, frac = ''] = t.split('.');
          return BigInt(int as string) * 10n ** 10n + BigInt(frac.padEnd(10, '0'));
        }) as [bigint, bigint];
        expect(Math.sign(Number(a - b))).toBe(Math.sign(compareItemKeys(ts, seq, ts2, seq2)));
      }),
    );
  });

  it('refuses text that is not a sort key', () => {
    for (const text of ['', 'x', '-1', '1.', '1.00000000001', '1e3']) expect(parseTsSeq(text)).toBeUndefined();
  });
});

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { NumberValue, numberOfLiteral, stringifyJson } from '../../core/numbers.js';
import type { Value, Values } from '../types.js';
import { decodeBlock, decodeColumns, encodeBlock, type BlockReading } from './block-codec.js';

const key = fc.oneof(fc.constantFrom('temp', 'gps', 'lat', 'a.b', 'constructor', 'toString', 'hasOwnProperty', ''), fc.string({ maxLength: 6 }));
const number = fc.oneof(
  fc.integer({ min: -1_000_000, max: 1_000_000 }),
  fc.integer({ min: -100_000, max: 100_000 }).map((n) => n / 100),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.constantFrom(0, -0, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER, 1e-300, 5e-324, 1.7976931348623157e308, 0.30000000000000004),
);
/** Numbers a double cannot hold, kept as their digits (core/numbers.ts). */
const keptDigits = fc.constantFrom('12345678901234567890', '-98765432109876543210123', '3.14159265358979323846').map((t) => numberOfLiteral(t));
const leaf: fc.Arbitrary<Value> = fc.oneof(number, fc.string({ maxLength: 8 }), fc.boolean(), keptDigits);
const values: fc.Arbitrary<Values> = fc.letrec<{ obj: Values }>((tie) => ({
  obj: fc.dictionary(key, fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, leaf, tie('obj')), { maxKeys: 5 }).filter((o) => !Object.hasOwn(o, '__proto__')),
})).obj;

/** Readings in ascending (ts, seq) order: steady, jittery and repeated timestamps. */
const readings = fc
  .array(fc.tuple(fc.oneof(fc.constant(1000), fc.integer({ min: 0, max: 5000 }), fc.constant(0)), values), { minLength: 1, maxLength: 200 })
  .map((steps) => {
    let ts = 1_764_150_000_000;
    let seq = 0;
    return steps.map(([step, v], i): BlockReading => {
      if (i > 0 && step === 0) seq++;
      else {
        ts += i === 0 ? 0 : step;
        seq = 0;
      }
      return { ts, seq, values: v };
    });
  });

describe('block codec', () => {
  it('round-trips any history: same keys, seqs, values and the same JSON text of every reading', () => {
    fc.assert(
      fc.property(readings, (rs) => {
        const decoded = decodeBlock(encodeBlock(rs));
        expect(decoded.map((r) => [r.ts, r.seq])).toEqual(rs.map((r) => [r.ts, r.seq]));
        // The store keeps values as JSON (so -0 is 0, as today): the same JSON text is the
        // contract, and it checks key order and nesting too.
        expect(decoded.map((r) => stringifyJson(r.values))).toEqual(rs.map((r) => stringifyJson(r.values)));
      }),
      { numRuns: 300 },
    );
  });

  it('gives the same leaves as columns, each with the readings it belongs to, decoding only the wanted ones', () => {
    fc.assert(
      fc.property(readings, fc.constantFrom('temp', 'gps', ''), (rs, wanted) => {
        const block = encodeBlock(rs);
        const expected = new Map<string, Array<[number, string]>>();
        rs.forEach((r, row) => {
          const walk = (v: Values, path: string[]): void =>
            Object.keys(v).forEach((k) => {
              const x = v[k] as Value;
              if (typeof x === 'object' && !(x instanceof NumberValue)) walk(x, [...path, k]);
              else {
                const key = JSON.stringify([...path, k]);
                if (path.length > 0 || k !== wanted) return;
                expected.set(key, [...(expected.get(key) ?? []), [row, stringifyJson(x)]]);
              }
            });
          walk(r.values, []);
        });
        const { ts, seq, columns } = decodeColumns(block, (path) => path.length === 1 && path[0] === wanted);
        expect(ts).toEqual(rs.map((r) => r.ts));
        expect(seq).toEqual(rs.map((r) => r.seq));
        const got = new Map(columns.map((c) => [JSON.stringify(c.path), c.rows.map((row, i): [number, string] => [row, stringifyJson(c.values[i])])]));
        expect(got).toEqual(expected);
      }),
      { numRuns: 200 },
    );
  });

  it('stores a steady sensor in about a byte or two a reading', () => {
    const rs: BlockReading[] = Array.from({ length: 1024 }, (_, i) => ({
      ts: 1_764_150_000_000 + i * 1000,
      seq: 0,
      values: { temp: Math.round((21 + Math.sin(i / 50)) * 100) / 100, battery: 97, status: 'ok', door: i % 100 === 0 },
    }));
    const block = encodeBlock(rs);
    expect(block.length / rs.length).toBeLessThan(2.5);
    expect(decodeBlock(block)).toEqual(rs);
  });

  it('refuses readings out of order and blocks of another version', () => {
    expect(() => encodeBlock([{ ts: 2, seq: 0, values: {} }, { ts: 1, seq: 0, values: {} }])).toThrow(/ascending/);
    expect(() => encodeBlock([{ ts: 1, seq: 1, values: {} }, { ts: 1, seq: 1, values: {} }])).toThrow(/ascending/);
    const block = encodeBlock([{ ts: 1, seq: 0, values: { a: 1 } }]);
    block[0] = 9;
    expect(() => decodeBlock(block)).toThrow(/block format 9/);
  });
});

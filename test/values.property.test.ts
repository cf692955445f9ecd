/**
 * Property test (issue 17, items 2 and 3): for generated readings — key names drawn from
 * arbitrary strings and the names of Object.prototype's members, numbers from doubles,
 * long integers and decimal literals of any exponent — the path ingest → LevelDB store
 * (and its change log, msgpack on disk) → stream record → `unmarshall` either refuses the
 * reading with the reason its content calls for, or gives back every name and every
 * value: strings and booleans as sent, numbers as the same decimal as the literal sent.
 * The stored text (what REST splices) holds the same decimals too.
 */
import { unmarshall, type NumberValue } from '@aws-sdk/util-dynamodb';
import fc from 'fast-check';
import { isLosslessNumber, parse as losslessParse } from 'lossless-json';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Database, LevelTelemetryStore } from '../store/index.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import { toStreamRecord } from '../streams/lambda-event.js';
import { RejectedPayload } from '../ingest/payload.js';
import { standaloneIngest } from './app-harness.js';
import { tempDir } from './helpers.js';

/** A generated reading: a tree of names over leaves given as their JSON text. */
type Leaf = { kind: 'string'; v: string } | { kind: 'bool'; v: boolean } | { kind: 'number'; text: string };
type Tree = Array<[string, Leaf | Tree]>;

const NAMES = ['constructor', 'toString', 'hasOwnProperty', 'valueOf', 'isPrototypeOf', 'propertyIsEnumerable', 'toLocaleString', '__defineGetter__', '__proto__', 'N', 'M', 'S', 'value', 'length'];
const name = fc.oneof(
  { arbitrary: fc.constantFrom(...NAMES.filter((n) => n !== '__proto__')), weight: 12 },
  // Dots address nested keys; a name with one is among the refused ones below.
  { arbitrary: fc.string({ minLength: 1, maxLength: 8 }).map((k) => k.replaceAll('.', '_')), weight: 12 },
  { arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 4 }).map((k) => k.replaceAll('.', '_')), weight: 8 },
  { arbitrary: fc.constantFrom('', 'a.b', 'deviceId', 'seq', '__proto__'), weight: 1 },
);

/** Integers of up to 20 digits mostly, sometimes up to 45 (past the 38 DynamoDB keeps). */
const digits = fc.oneof({ arbitrary: fc.bigInt({ min: -(10n ** 20n), max: 10n ** 20n }), weight: 6 }, { arbitrary: fc.bigInt({ min: -(10n ** 45n), max: 10n ** 45n }), weight: 1 });
/** Decimal literals by their digits and exponent: in and out of DynamoDB's range and precision. */
const decimalLiteral = fc
  .tuple(digits, fc.oneof({ arbitrary: fc.integer({ min: -40, max: 40 }), weight: 6 }, { arbitrary: fc.integer({ min: -180, max: 140 }), weight: 1 }), fc.boolean())
  .map(([digits, exp, plain]) => (plain && exp >= 0 && exp < 30 ? `${digits}${'0'.repeat(exp)}` : `${digits}e${exp}`));
const number = fc.oneof(
  fc.double({ noNaN: true, noDefaultInfinity: true }).map((d) => JSON.stringify(d)),
  fc.integer().map(String),
  digits.map(String),
  decimalLiteral,
);
const leaf: fc.Arbitrary<Leaf> = fc.oneof(
  fc.string().map((v) => ({ kind: 'string' as const, v })),
  fc.boolean().map((v) => ({ kind: 'bool' as const, v })),
  number.map((text) => ({ kind: 'number' as const, text })),
);
const inner: fc.Arbitrary<Tree> = fc.letrec<{ tree: Tree; node: Leaf | Tree }>((tie) => ({
  tree: fc.uniqueArray(fc.tuple(name, tie('node')), { minLength: 1, maxLength: 5, selector: ([k]) => k }),
  node: fc.oneof({ depthSize: 'small', withCrossShrink: true }, leaf, leaf, tie('tree')),
})).tree;
/** A reading's values; top-level `ts` and `values` would make it another shape (`{ts, values}`), tested elsewhere. */
const tree = inner.filter((t) => t.every(([k]) => k !== 'ts' && k !== 'values'));

function toJson(t: Tree): string {
  return `{${t.map(([k, v]) => `${JSON.stringify(k)}:${Array.isArray(v) ? toJson(v) : v.kind === 'number' ? v.text : JSON.stringify(v.v)}`).join(',')}}`;
}

/** The oracle: a literal as (negative, digits without leading/trailing zeros, exponent), with BigInt. */
function decimal(text: string): string {
  const m = /^(-?)(\d+)(?:\.(\d+))?(?:e([-+]?\d+))?$/i.exec(text);
  if (m === null) throw new Error(`not a literal: ${text}`);
  let digits = (m[2] ?? '') + (m[3] ?? '');
  let exp = Number(m[4] ?? 0) - (m[3] ?? '').length;
  digits = digits.replace(/^0+/, '');
  if (digits === '') return '0';
  const trimmed = digits.replace(/0+$/, '');
  exp += digits.length - trimmed.length;
  return `${m[1]}${trimmed}e${exp}`;
}

/** Why DynamoDB (and so ingest) refuses the literal, or undefined. */
function numberRefused(text: string): boolean {
  const d = decimal(text);
  if (d === '0') return false;
  const [, digits = '', e = '0'] = /^-?(\d+)e(-?\d+)$/.exec(d) ?? [];
  const exp = Number(e);
  const adjusted = exp + digits.length - 1;
  return digits.length > 38 || adjusted < -130 || adjusted > 125 || exp < -165;
}

/** What a correct pipeline must refuse the reading for (several reasons: any of them). */
function expectedRejects(t: Tree, top = true, depth = 1): Set<string> {
  const out = new Set<string>();
  if (depth > 8) out.add('invalid_value');
  for (const [k, v] of t) {
    if (k === '' || k.includes('.') || k === '__proto__' || (top && ['deviceId', 'ts', 'seq', 'values'].includes(k))) out.add('invalid_value');
    if (Array.isArray(v)) for (const r of expectedRejects(v, false, depth + 1)) out.add(r);
    else if (v.kind === 'number' && numberRefused(v.text)) out.add('number_out_of_range');
  }
  return out;
}

/** Checks that `got` (unmarshalled with wrapNumbers, or parsed losslessly) holds exactly the tree. */
function expectSame(t: Tree, got: Record<string, unknown>, where: string): void {
  expect(Object.keys(got).sort(), where).toEqual(t.map(([k]) => k).sort());
  for (const [k, v] of t) {
    const g = got[k];
    if (Array.isArray(v)) expectSame(v, g as Record<string, unknown>, `${where}.${k}`);
    else if (v.kind === 'number') {
      const text = isLosslessNumber(g) ? g.value : (g as NumberValue).value;
      expect(decimal(text), `${where}.${k}: ${v.text}`).toBe(decimal(v.text));
    } else expect(g, `${where}.${k}`).toBe(v.v);
  }
}

describe('generated key names and values through ingest, store, stream record and unmarshall', () => {
  const dir = tempDir('tributary-values-prop-');
  let database: Database;
  let changeLog: EmbeddedChangeLog;
  let store: LevelTelemetryStore;

  beforeAll(async () => {
    database = await Database.open(dir.path);
    changeLog = await EmbeddedChangeLog.open(database, { shards: 1 });
    store = await LevelTelemetryStore.open({ database, changeLog, partitionWindowMs: 86_400_000, maxBatch: 100, maxDelayMs: 0 });
  });
  afterAll(async () => {
    await store.close();
    await database.close();
    dir.cleanup();
  });

  it('refuses what must be refused, with its reason; round-trips everything else', async () => {
    const ingest = standaloneIngest(store, { maxPayloadBytes: 64 * 1024 });
    let position = 0;
    let accepted = 0;
    await fc.assert(
      fc.asyncProperty(tree, async (t) => {
        const text = toJson(t);
        const reasons = expectedRejects(t);
        let result;
        try {
          result = await ingest.ingestPayload('prop-1', Buffer.from(text, 'utf8'));
        } catch (err) {
          expect(err, text).toBeInstanceOf(RejectedPayload);
          expect([...reasons], `${text}: ${(err as Error).message}`).toContain((err as RejectedPayload).reason);
          return;
        }
        expect([...reasons], `${text} was accepted`).toEqual([]);
        accepted++;
        // The change record, read back from the log (msgpack on disk), as a handler receives it.
        const [record] = await changeLog.read(0, position, 10);
        expect(record).toBeDefined();
        position = record?.sequenceNumber ?? position;
        const wire = JSON.parse(JSON.stringify(toStreamRecord(record as NonNullable<typeof record>, changeLog.streamArn))) as { dynamodb: { NewImage: Record<string, never> } };
        const image = unmarshall(wire.dynamodb.NewImage, { wrapNumbers: true });
        expect(image['deviceId']).toBe('prop-1');
        const { deviceId: _d, tsSeq: _k, ts: _t, seq: _s, ...values } = image;
        expectSame(t, values, 'image');
        const item = result.items[0] as { ts: number; seq: number };
        // The stored text, as REST and the exports splice it.
        const page = await store.queryRaw({ deviceId: 'prop-1', from: item.ts, to: item.ts, order: 'asc', limit: 1000 });
        const stored = page.items.find((r) => r.seq === item.seq);
        expectSame(t, losslessParse(stored?.valuesJson ?? '{}') as Record<string, unknown>, 'stored');
      }),
      { numRuns: Number(process.env['FUZZ_CASES'] ?? 200) },
    );
    // The generators must reach the accepting side too, not only refusals.
    expect(accepted).toBeGreaterThan(10);
  }, 120_000);
});

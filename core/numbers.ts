/**
 * Numbers as DynamoDB has them (its Number type: at most 38 significant digits, zero or a
 * magnitude from 1E-130 to below 1E+126), decided once for every layer.
 *
 * A JSON number literal stays a JS `number` when a double holds it exactly as written
 * (at most 15 significant digits, or a literal whose shortest round-trip double text is
 * the same decimal, such as `0.30000000000000004`). Any other literal keeps its digits as
 * a {@link NumberValue} (from `@aws-sdk/util-dynamodb`) holding its canonical text
 * ({@link canonicalText}). Node 20's `JSON.parse` gives a reviver no source text, so the
 * lossless parse (`lossless-json`) runs only when a cheap scan finds a literal that may
 * need it; ordinary payloads take `JSON.parse` as before.
 *
 * @module
 */
import { NumberValueImpl as NumberValue } from '@aws-sdk/util-dynamodb';
import { parse as losslessParse } from 'lossless-json';
import { addExtension, Packr } from 'msgpackr';

/** The SDK's class for a number kept as its digits (`marshall` knows it). */
export { NumberValue };

/** A number of a reading's values: a double, or the exact digits of a literal a double cannot hold. */
export type Num = number | NumberValue;

/** DynamoDB's limits (Amazon DynamoDB Developer Guide, "Data types": Number). */
export const MAX_SIGNIFICANT_DIGITS = 38;
/** Adjusted exponent (of the first significant digit) bounds: 1E-130 ≤ |x| < 1E+126. */
const MIN_EXPONENT = -130;
const MAX_EXPONENT = 125;
/**
 * The lowest digit may not lie below 1E-165: boto3's `TypeDeserializer` (its decimal
 * context: prec 38, Emin -128, Underflow and Inexact trapped) fails on finer digits, and
 * a Python handler must never fail on a record. DynamoDB's own limit is 38 digits
 * from 1E-130, which reaches 1E-167; only such extremes are affected.
 */
const MIN_DIGIT_EXPONENT = -165;

/**
 * Whether the text may hold a literal a quick look cannot vouch for: 16 or more digits
 * (and dots) in a row, or an exponent of 3 or more digits (a double would round it to 0
 * or Infinity). This runs on every payload, so it looks at few characters: any 16 in a
 * row include exactly one at a position ≡ 15 (mod 16), so only those are tested (and a
 * run measured around a hit), and exponents are found with the native `indexOf`. The
 * regex `/[0-9.]{16}|[eE][-+]?[0-9]{3}/` backtracks at every digit and cost about as
 * much as `JSON.parse` itself.
 */
function needsLossless(text: string): boolean {
  const n = text.length;
  for (let i = 15; i < n; i += 16) {
    if (!isDigitOrDot(text.charCodeAt(i))) continue;
    let from = i;
    while (from > 0 && isDigitOrDot(text.charCodeAt(from - 1))) from--;
    let to = i + 1;
    while (to < n && to - from < 16 && isDigitOrDot(text.charCodeAt(to))) to++;
    if (to - from >= 16) return true;
  }
  return longExponent(text, 'e') || longExponent(text, 'E');
}

function isDigitOrDot(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || c === 0x2e;
}

/** Whether some `e` of the text is followed by an optional sign and 3 digits. */
function longExponent(text: string, e: string): boolean {
  for (let i = text.indexOf(e); i >= 0; i = text.indexOf(e, i + 1)) {
    let j = i + 1;
    const sign = text.charCodeAt(j);
    if (sign === 0x2b || sign === 0x2d) j++;
    if (isDigit(text.charCodeAt(j)) && isDigit(text.charCodeAt(j + 1)) && isDigit(text.charCodeAt(j + 2))) return true;
  }
  return false;
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}
const LITERAL = /^(-?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([-+]?[0-9]+))?$/;

/** A decimal: `(-1)^neg × digits × 10^exp`, digits without leading or trailing zeros ('' for zero). */
interface Decimal {
  neg: boolean;
  digits: string;
  exp: number;
}

function decimalOf(text: string): Decimal | undefined {
  const m = LITERAL.exec(text);
  if (m === null) return undefined;
  const int = m[2] ?? '';
  const frac = m[3] ?? '';
  let digits = int + frac;
  // Exponents past a million cannot be in range whatever the digits; clamping keeps them out of range.
  let exp = Math.max(-1e7, Math.min(1e7, Number(m[4] ?? '0'))) - frac.length;
  let start = 0;
  while (start < digits.length && digits.charCodeAt(start) === 0x30) start++;
  let end = digits.length;
  while (end > start && digits.charCodeAt(end - 1) === 0x30) end--;
  exp += digits.length - end;
  digits = digits.slice(start, end);
  return { neg: m[1] === '-', digits, exp: digits === '' ? 0 : exp };
}

/**
 * The one text of a decimal: ECMAScript's `Number::toString` layout (so a double's text
 * is its own), except that integers stay plain up to 38 digits, so a large integer
 * unmarshalls to a `bigint` and fits boto3's 38-digit context.
 */
function formatDecimal({ neg, digits, exp }: Decimal): string {
  if (digits === '') return '0';
  const k = digits.length;
  const n = exp + k; // value = 0.digits × 10^n
  let text: string;
  if (k <= n && n <= MAX_SIGNIFICANT_DIGITS) text = digits + '0'.repeat(n - k);
  else if (n > 0 && n <= MAX_SIGNIFICANT_DIGITS) text = `${digits.slice(0, n)}.${digits.slice(n)}`;
  else if (n > -6 && n <= 0) text = `0.${'0'.repeat(-n)}${digits}`;
  else text = `${digits[0] as string}${k > 1 ? `.${digits.slice(1)}` : ''}e${n - 1 >= 0 ? '+' : '-'}${Math.abs(n - 1)}`;
  return neg ? `-${text}` : text;
}

function sameDecimal(a: Decimal, b: Decimal): boolean {
  return a.digits === b.digits && a.exp === b.exp && (a.neg === b.neg || a.digits === '');
}

/** The canonical text of a number literal (see {@link formatDecimal}); undefined if it is not one. */
export function canonicalText(literal: string): string | undefined {
  const d = decimalOf(literal);
  return d === undefined ? undefined : formatDecimal(d);
}

/**
 * The value of a JSON number literal: a double when one holds it exactly as written,
 * else its digits. Out-of-range literals come back too (as digits when a double would
 * hide that: `1e-400` is not 0), for {@link numberProblem} to refuse.
 */
export function numberOfLiteral(literal: string): Num {
  const d = decimalOf(literal);
  if (d === undefined) throw new SyntaxError(`not a number: ${literal.slice(0, 60)}`);
  const x = Number(literal);
  if (d.digits === '') return d.neg ? -0 : 0;
  const adjusted = d.exp + d.digits.length - 1;
  // 15 digits always survive a double (DBL_DIG) in its normal range.
  if (d.digits.length <= 15 && adjusted >= -300 && adjusted <= 300) return x;
  if (Number.isFinite(x) && x !== 0) {
    const back = decimalOf(String(x));
    if (back !== undefined && sameDecimal(back, d)) return x;
  }
  return new NumberValue(formatDecimal(d));
}

/**
 * Why a number cannot be stored, or undefined when it can: not finite, more than 38
 * significant digits, or out of DynamoDB's range (see the module comment).
 */
export function numberProblem(v: Num): string | undefined {
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) return `${String(v)} is not a finite number`;
    const a = Math.abs(v);
    if (v === 0 || (a >= 1e-130 && a < 1e126)) return undefined;
    return `${String(v)} is out of range: numbers are 0 or of magnitude 1e-130 to below 1e126 (as DynamoDB's)`;
  }
  const d = decimalOf(v.value);
  if (d === undefined) return `${v.value.slice(0, 60)} is not a number`;
  if (d.digits === '') return undefined;
  const text = v.value.length > 60 ? `${v.value.slice(0, 57)}...` : v.value;
  if (d.digits.length > MAX_SIGNIFICANT_DIGITS) {
    return `${text} has ${d.digits.length} significant digits; at most ${MAX_SIGNIFICANT_DIGITS} can be stored (as DynamoDB's Number)`;
  }
  const adjusted = d.exp + d.digits.length - 1;
  if (adjusted < MIN_EXPONENT || adjusted > MAX_EXPONENT || d.exp < MIN_DIGIT_EXPONENT) {
    return `${text} is out of range: numbers are 0 or of magnitude 1e-130 to below 1e126 (as DynamoDB's), with no digit below 1e-165`;
  }
  return undefined;
}

/**
 * A number's text as a DynamoDB `N` attribute: a double's own text (integers from 1e21
 * on written out plainly up to 38 digits, as {@link formatDecimal}), or the kept digits.
 */
export function numberText(v: Num): string {
  if (typeof v !== 'number') return v.value;
  const text = String(v);
  return text.includes('e+') ? formatDecimal(decimalOf(text) as Decimal) : text;
}

/** `lossless-json` reads keys as `JSON.parse` does (`__proto__` an own key); a repeated key keeps the last value, as `JSON.parse`. */
const LOSSLESS_OPTIONS = { parseNumber: numberOfLiteral, onDuplicateKey: ({ newValue }: { newValue: unknown }) => newValue };

/**
 * `JSON.parse`, except that literals a double cannot hold exactly keep their digits
 * ({@link numberOfLiteral}). The lossless parser runs only when the text holds a literal
 * that may need it (or a long digit run in a string, which costs only time).
 * @throws SyntaxError on invalid JSON.
 */
export function parseJson(text: string): unknown {
  if (!needsLossless(text)) return JSON.parse(text);
  return losslessParse(text, undefined, LOSSLESS_OPTIONS);
}

/** What `JSON.stringify` makes of a NumberValue (its one own property): seeing it means the lossless writer is needed. */
const NUMBER_VALUE_MARK = '{"value":"';

/**
 * `JSON.stringify` that writes a {@link NumberValue} as its digits. Node 20 has no
 * `JSON.rawJSON`, so a value holding one is written by {@link writeLossless}; a cheap
 * look at the native output tells (a map whose first key is `value` also looks alike and
 * only costs the second pass).
 */
export function stringifyJson(value: unknown): string {
  const text = JSON.stringify(value);
  if (text === undefined || !text.includes(NUMBER_VALUE_MARK)) return text;
  return writeLossless(value) as string;
}

function writeLossless(v: unknown): string | undefined {
  if (v instanceof NumberValue) return v.value;
  if (typeof v !== 'object' || v === null) return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map((x) => writeLossless(x) ?? 'null').join(',')}]`;
  let out = '';
  for (const k of Object.keys(v)) {
    const inner = writeLossless((v as Record<string, unknown>)[k]);
    if (inner !== undefined) out += `${out === '' ? '' : ','}${JSON.stringify(k)}:${inner}`;
  }
  return `{${out}}`;
}

/**
 * msgpack extension type of a {@link NumberValue}: its text as the payload. Registered
 * for every `Packr` (msgpackr keeps extensions per module), so the change-log codec and
 * the cluster telemetry topic round-trip the digits alike. (A `bigint` would stop at 64
 * bits, and a NumberValue would otherwise become a plain `{value}` map.)
 */
export const NUMBER_EXTENSION_TYPE = 0x4e;
addExtension({ Class: NumberValue, type: NUMBER_EXTENSION_TYPE, write: (v: NumberValue) => v.value, read: (text: string) => new NumberValue(text) });

/** A msgpack codec for records that carry reading values (positional arrays, no record structures). */
export function valuesPackr(): Packr {
  return new Packr({ useRecords: false });
}

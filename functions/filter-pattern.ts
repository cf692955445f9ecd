/**
 * Event filtering for triggers (event source mappings), as AWS Lambda does it for
 * DynamoDB streams: `filterCriteria: { filters: [{ pattern: "<JSON>" }] }`.
 *
 * Sources followed (quoted where a semantic is copied):
 * - Lambda, "Control which events Lambda sends to your function"
 *   (https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventfiltering.html):
 *   filters are ORed, five per mapping by default (quota up to 10), Lambda uses the
 *   EventBridge rule syntax, and its operator table (null, empty, equals,
 *   equals-ignore-case, and, or, `$or`, anything-but, numeric =/range, exists,
 *   prefix, suffix).
 * - Lambda, "Using event filtering with a DynamoDB event source"
 *   (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb-filtering.html): key,
 *   image and Boolean-AND examples, the numeric note and the Exists note (below).
 * - EventBridge, "Content filtering in event patterns" / "Comparison operators"
 *   (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-create-pattern-operators.html)
 *   and aws/event-ruler (the open-source engine behind both): operator details,
 *   array matching, `$or`, the numeric limits.
 * - Lambda API `Filter` (https://docs.aws.amazon.com/lambda/latest/api/API_Filter.html):
 *   a pattern is at most 4096 characters.
 *
 * DynamoDB numbers. A stream record carries numbers as strings (`{"N": "21.5"}`), and
 * the Lambda DynamoDB page says: "DynamoDB event filtering doesn't support the use of
 * numeric operators (numeric equals and numeric range). Even if items in your table are
 * stored as numbers, these parameters are converted to strings in the JSON record
 * object." EventBridge numeric matching "works with values that are JSON numbers", so
 * on AWS such a rule is accepted and simply never matches. We do the same (a `numeric`
 * test, or a bare number like `[21.5]`, never matches a string) and report it in the
 * compiled filter's `warnings` so the API can tell the user. Match `N` values as
 * strings instead: `{"N": ["21.5"]}`, `{"N": [{"prefix": "2"}]}`.
 *
 * Numbers in exact matches are compared by their text: "For numbers, Lambda also uses
 * string representation. For example, 300, 300.0, and 3.0e2 are not considered equal."
 * That is why patterns are read with the small parser below (JSON.parse forgets how a
 * number was written); it also keeps duplicate keys, which AWS's own DynamoDB Boolean
 * example relies on (`{"dynamodb": {...NewImage...}, "dynamodb": {...OldImage...}}` is
 * an AND of both), so duplicate objects are merged instead of the last one winning.
 *
 * Exists: "The Exists operator only works on leaf nodes in the event JSON, so if your
 * filter pattern uses Exists to test for an intermediate node, it won't work"
 * (`{"NewImage": {"temp": [{"exists": true}]}}` never matches; write
 * `{"NewImage": {"temp": {"N": [{"exists": true}]}}}`). Following event-ruler,
 * `exists: false` on an intermediate node matches, since no leaf has that name.
 *
 * Arrays in a record are matched as EventBridge does: a leaf array matches when any
 * element matches, and objects inside arrays are matched element by element, so two
 * fields of one pattern object must come from the same element (event-ruler's
 * "array-consistent" matching).
 */
import { TributaryError } from '../core/errors.js';

/** Lambda's default number of filters per event source mapping. */
export const DEFAULT_MAX_FILTERS = 5;
/** The most a quota increase allows ("up to 10 filters for each event source"). */
export const MAX_FILTERS_QUOTA = 10;
/** `Filter.Pattern` length limit in the Lambda API. */
export const MAX_PATTERN_LENGTH = 4096;
/** EventBridge: numeric matching "is limited to values between -5.0e9 and +5.0e9 inclusive". */
export const NUMERIC_LIMIT = 5.0e9;

export interface FilterCriteria {
  filters: Array<{ pattern: string }>;
}

/**
 * A compiled filter: true when the record passes (any filter matches, or there are no
 * filters). `warnings` lists parts of the patterns that are valid but can never match a
 * DynamoDB stream record (numeric tests on `N`, attribute names used as leaves, ...).
 */
export type RecordFilter = ((record: unknown) => boolean) & { readonly warnings: readonly string[] };

export interface CompileFilterOptions {
  /** Filters allowed per trigger: Lambda's default quota of 5 unless raised (at most 10). */
  maxFilters?: number;
}

/**
 * Validates and compiles a trigger's filter criteria once. Throws a `ValidationError`
 * naming the filter and the problem for invalid JSON, unknown operators, bad operands
 * and too many filters. No criteria, or an empty list, lets every record through.
 */
export function compileFilterCriteria(criteria: FilterCriteria | undefined, options: CompileFilterOptions = {}): RecordFilter {
  const maxFilters = options.maxFilters ?? DEFAULT_MAX_FILTERS;
  if (!Number.isInteger(maxFilters) || maxFilters < 1 || maxFilters > MAX_FILTERS_QUOTA) {
    throw new RangeError(`maxFilters must be an integer from 1 to ${MAX_FILTERS_QUOTA}`);
  }
  const input: unknown = criteria;
  if (input === undefined || input === null) return withWarnings(() => true, []);
  if (typeof input !== 'object' || Array.isArray(input)) {
    throw invalid('filterCriteria', 'filterCriteria must be an object like {"filters": [{"pattern": "{...}"}]}');
  }
  const filters = (input as { filters?: unknown }).filters;
  // An empty criteria object or list clears filtering, as `--filter-criteria "{}"` does in Lambda.
  if (filters === undefined || filters === null) return withWarnings(() => true, []);
  if (!Array.isArray(filters)) throw invalid('filterCriteria.filters', 'filterCriteria.filters must be an array of {"pattern": "<JSON string>"}');
  if (filters.length > maxFilters) {
    throw invalid(
      'filterCriteria.filters',
      `filterCriteria.filters has ${filters.length} filters; at most ${maxFilters} are allowed per trigger (Lambda's default quota is ${DEFAULT_MAX_FILTERS})`,
    );
  }
  const warnings: string[] = [];
  const compiled: ObjectMatcher[] = filters.map((filter: unknown, i) => compileFilter(filter, i, warnings));
  if (compiled.length === 0) return withWarnings(() => true, warnings);
  if (compiled.length === 1) {
    const only = compiled[0] as ObjectMatcher;
    return withWarnings((record) => matchObject(only, record), warnings);
  }
  return withWarnings((record) => {
    for (const m of compiled) if (matchObject(m, record)) return true;
    return false;
  }, warnings);
}

function withWarnings(fn: (record: unknown) => boolean, warnings: string[]): RecordFilter {
  return Object.assign(fn, { warnings: Object.freeze(warnings) as readonly string[] });
}

function invalid(field: string, message: string): TributaryError {
  return new TributaryError('ValidationError', message, { field });
}

function compileFilter(filter: unknown, index: number, warnings: string[]): ObjectMatcher {
  const label = `filterCriteria.filters[${index}]`;
  if (typeof filter !== 'object' || filter === null || Array.isArray(filter)) {
    throw invalid(label, `${label} must be an object like {"pattern": "{...}"}`);
  }
  const pattern = (filter as { pattern?: unknown }).pattern;
  const field = `${label}.pattern`;
  if (pattern === undefined && 'Pattern' in filter) {
    throw invalid(field, `${label} has "Pattern"; trigger bodies use camelCase: {"pattern": "{...}"}`);
  }
  if (typeof pattern !== 'string') throw invalid(field, `${field} must be a string holding a JSON filter pattern`);
  if (pattern.length > MAX_PATTERN_LENGTH) {
    throw invalid(field, `${field} is ${pattern.length} characters long; the limit is ${MAX_PATTERN_LENGTH}`);
  }
  try {
    const root = new PatternParser(pattern).parseDocument();
    if (root.t !== 'obj') throw new PatternError('the pattern must be a JSON object, e.g. {"eventName": ["INSERT"]}');
    const ctx: CompileContext = { warnings: [] };
    const matcher = compileObject(root, [], '', ctx);
    for (const w of ctx.warnings) warnings.push(`${field}: ${w}`);
    return matcher;
  } catch (err) {
    if (err instanceof PatternError) throw invalid(field, `${field} is invalid: ${err.message}`);
    throw err;
  }
}

// ---------------------------------------------------------------------------
// Pattern JSON: a strict RFC 8259 reader that keeps number text and duplicate keys.

type JNode =
  | { t: 'obj'; entries: Array<[string, JNode]>; pos: number }
  | { t: 'arr'; items: JNode[]; pos: number }
  | { t: 'str'; v: string; pos: number }
  | { t: 'num'; raw: string; v: number; pos: number }
  | { t: 'bool'; v: boolean; pos: number }
  | { t: 'null'; pos: number };

class PatternError extends Error {}

const MAX_DEPTH = 64;
const ESCAPES = new Map([
  ['"', '"'],
  ['\\', '\\'],
  ['/', '/'],
  ['b', '\b'],
  ['f', '\f'],
  ['n', '\n'],
  ['r', '\r'],
  ['t', '\t'],
]);
const LITERALS: ReadonlyArray<readonly [string, { t: 'bool'; v: boolean } | { t: 'null' }]> = [
  ['true', { t: 'bool', v: true }],
  ['false', { t: 'bool', v: false }],
  ['null', { t: 'null' }],
];

class PatternParser {
  private i = 0;

  constructor(private readonly src: string) {}

  parseDocument(): JNode {
    this.ws();
    if (this.i >= this.src.length) throw new PatternError('not valid JSON: the pattern is empty');
    const node = this.value(0);
    this.ws();
    if (this.i < this.src.length) this.fail('unexpected text after the JSON value');
    return node;
  }

  private fail(what: string): never {
    if (this.i >= this.src.length) throw new PatternError(`not valid JSON: the pattern ends early (${what})`);
    const near = this.src.slice(this.i, this.i + 12);
    throw new PatternError(`not valid JSON at character ${this.i + 1}: ${what}${near ? ` (near ${JSON.stringify(near)})` : ''}`);
  }

  private ws(): void {
    for (;;) {
      const c = this.src.charCodeAt(this.i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) this.i++;
      else return;
    }
  }

  private value(depth: number): JNode {
    if (depth > MAX_DEPTH) this.fail(`nesting deeper than ${MAX_DEPTH} levels`);
    const pos = this.i;
    const c = this.src[this.i];
    if (c === '{') return this.object(depth);
    if (c === '[') return this.array(depth);
    if (c === '"') return { t: 'str', v: this.string(), pos };
    if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return this.number();
    for (const [word, node] of LITERALS) {
      if (this.src.startsWith(word, this.i)) {
        this.i += word.length;
        return { ...node, pos };
      }
    }
    return this.fail(c === undefined ? 'unexpected end of pattern' : `unexpected character ${JSON.stringify(c)}`);
  }

  private object(depth: number): JNode {
    const pos = this.i++;
    const entries: Array<[string, JNode]> = [];
    this.ws();
    if (this.src[this.i] === '}') {
      this.i++;
      return { t: 'obj', entries, pos };
    }
    for (;;) {
      this.ws();
      if (this.src[this.i] !== '"') this.fail('expected a quoted field name');
      const key = this.string();
      this.ws();
      if (this.src[this.i] !== ':') this.fail('expected ":" after a field name');
      this.i++;
      this.ws();
      entries.push([key, this.value(depth + 1)]);
      this.ws();
      const c = this.src[this.i];
      if (c !== ',' && c !== '}') this.fail('expected "," or "}"');
      this.i++;
      if (c === '}') return { t: 'obj', entries, pos };
    }
  }

  private array(depth: number): JNode {
    const pos = this.i++;
    const items: JNode[] = [];
    this.ws();
    if (this.src[this.i] === ']') {
      this.i++;
      return { t: 'arr', items, pos };
    }
    for (;;) {
      this.ws();
      items.push(this.value(depth + 1));
      this.ws();
      const c = this.src[this.i];
      if (c !== ',' && c !== ']') this.fail('expected "," or "]"');
      this.i++;
      if (c === ']') return { t: 'arr', items, pos };
    }
  }

  private string(): string {
    this.i++; // opening quote
    let out = '';
    let start = this.i;
    for (;;) {
      const c = this.src.charCodeAt(this.i);
      if (Number.isNaN(c)) this.fail('unterminated string');
      if (c === 0x22) {
        out += this.src.slice(start, this.i++);
        return out;
      }
      if (c < 0x20) this.fail('control character in a string (escape it)');
      if (c !== 0x5c) {
        this.i++;
        continue;
      }
      out += this.src.slice(start, this.i);
      const e = this.src[this.i + 1];
      const simple = e === undefined ? undefined : ESCAPES.get(e);
      if (simple !== undefined) {
        out += simple;
        this.i += 2;
      } else if (e === 'u' && /^[0-9a-fA-F]{4}$/.test(this.src.slice(this.i + 2, this.i + 6))) {
        out += String.fromCharCode(parseInt(this.src.slice(this.i + 2, this.i + 6), 16));
        this.i += 6;
      } else {
        this.fail('invalid escape in a string');
      }
      start = this.i;
    }
  }

  private number(): JNode {
    const pos = this.i;
    const m = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/.exec(this.src.slice(this.i, this.i + 400));
    if (!m) this.fail('malformed number');
    const raw = m[0];
    this.i += raw.length;
    const v = Number(raw);
    if (!Number.isFinite(v)) this.fail(`number ${raw} is out of range`);
    return { t: 'num', raw, v, pos };
  }
}

// ---------------------------------------------------------------------------
// Compiled form.

type Leaf = string | number | boolean | null | bigint;

interface LeafMatcher {
  exactStrings: Set<string> | null;
  /** Numbers as the pattern wrote them: exact matches compare text (see module comment). */
  exactNumbers: Set<string> | null;
  matchTrue: boolean;
  matchFalse: boolean;
  matchNull: boolean;
  existsTrue: boolean;
  existsFalse: boolean;
  tests: Array<(v: Leaf) => boolean>;
}

interface FieldMatcher {
  key: string;
  object: ObjectMatcher | null;
  leaf: LeafMatcher | null;
}

interface ObjectMatcher {
  fields: FieldMatcher[];
  /** Each entry is one `$or`: at least one alternative must match the same object. */
  ors: ObjectMatcher[][];
}

interface CompileContext {
  warnings: string[];
}

const OPERATORS = ['prefix', 'suffix', 'equals-ignore-case', 'anything-but', 'numeric', 'exists'] as const;
/** EventBridge operators that Lambda's operator table does not list; refused rather than guessed at. */
const UNSUPPORTED_OPERATORS: Record<string, string> = {
  wildcard: 'EventBridge supports "wildcard" on event buses only (not in pipes or Lambda event filtering)',
  cidr: '"cidr" (IP address matching) is not among the operators Lambda event filtering documents',
};
const RESERVED = new Set<string>([...OPERATORS, ...Object.keys(UNSUPPORTED_OPERATORS)]);

const RECORD_KEYS = new Set(['eventID', 'eventName', 'eventVersion', 'eventSource', 'awsRegion', 'eventSourceARN', 'dynamodb', 'userIdentity']);
const DYNAMODB_KEYS = new Set(['ApproximateCreationDateTime', 'Keys', 'NewImage', 'OldImage', 'SequenceNumber', 'SizeBytes', 'StreamViewType']);
const IMAGE_KEYS = new Set(['Keys', 'NewImage', 'OldImage']);

function where(display: string): string {
  return display === '' ? 'the top level' : display;
}

function join(display: string, key: string): string {
  return display === '' ? key : `${display}.${key}`;
}

/** Merges duplicate keys: objects merge (AND), anything else twice is ambiguous. */
function mergeEntries(node: Extract<JNode, { t: 'obj' }>, display: string): Map<string, JNode> {
  const merged = new Map<string, JNode>();
  for (const [key, value] of node.entries) {
    const prev = merged.get(key);
    if (prev === undefined) {
      merged.set(key, value);
    } else if (prev.t === 'obj' && value.t === 'obj') {
      merged.set(key, { t: 'obj', entries: [...prev.entries, ...value.entries], pos: prev.pos });
    } else {
      throw new PatternError(`field ${JSON.stringify(key)} appears twice at ${where(display)}; only nested objects may repeat (they are combined with AND)`);
    }
  }
  return merged;
}

function compileObject(node: Extract<JNode, { t: 'obj' }>, keys: string[], display: string, ctx: CompileContext): ObjectMatcher {
  const merged = mergeEntries(node, display);
  if (merged.size === 0) {
    throw new PatternError(display === '' ? 'the pattern has no fields; name at least one, e.g. {"eventName": ["INSERT"]}' : `${display} is an empty object; name a field inside it or remove it`);
  }
  const out: ObjectMatcher = { fields: [], ors: [] };
  for (const [key, value] of merged) {
    const path = join(display, key);
    if (key === '$or' && value.t === 'arr') {
      out.ors.push(compileOr(value, keys, path, ctx));
      continue;
    }
    const childKeys = [...keys, key];
    noteStructure(childKeys, value, ctx, path);
    if (value.t === 'obj') out.fields.push({ key, object: compileObject(value, childKeys, path, ctx), leaf: null });
    else if (value.t === 'arr') out.fields.push({ key, object: null, leaf: compileLeaf(value, childKeys, path, ctx) });
    else {
      throw new PatternError(
        `${path} must be an array of match values (e.g. ${JSON.stringify(key)}: [${rawJson(value)}]) or a nested object, not ${describe(value)}`,
      );
    }
  }
  return out;
}

/**
 * `$or` (Lambda's "Or (multiple fields)"): an array of two or more objects, each a
 * pattern for the same object; event-ruler requires at least two and no operator names
 * as their fields.
 */
function compileOr(node: Extract<JNode, { t: 'arr' }>, keys: string[], path: string, ctx: CompileContext): ObjectMatcher[] {
  if (node.items.length < 2) throw new PatternError(`${path} needs at least two alternatives, e.g. "$or": [{"a": ["x"]}, {"b": ["y"]}]`);
  return node.items.map((item, i) => {
    const itemPath = `${path}[${i}]`;
    if (item.t !== 'obj') throw new PatternError(`${itemPath} must be an object of fields, not ${describe(item)}`);
    for (const [k] of item.entries) {
      if (RESERVED.has(k)) {
        throw new PatternError(`${itemPath} uses the operator ${JSON.stringify(k)} as a field; operators go inside a field's array, e.g. {"a": [{"${k}": ...}]}`);
      }
    }
    return compileObject(item, keys, itemPath, ctx);
  });
}

function rawJson(node: JNode): string {
  switch (node.t) {
    case 'str':
      return JSON.stringify(node.v);
    case 'num':
      return node.raw;
    case 'bool':
      return String(node.v);
    case 'null':
      return 'null';
    default:
      return '...';
  }
}

function describe(node: JNode): string {
  return { obj: 'an object', arr: 'an array', str: 'a string', num: 'a number', bool: 'a boolean', null: 'null' }[node.t];
}

function compileLeaf(node: Extract<JNode, { t: 'arr' }>, keys: string[], path: string, ctx: CompileContext): LeafMatcher {
  if (node.items.length === 0) {
    throw new PatternError(`${path} is an empty array, which matches nothing; list values, e.g. ["x"], or [null] to match null`);
  }
  const m: LeafMatcher = {
    exactStrings: null,
    exactNumbers: null,
    matchTrue: false,
    matchFalse: false,
    matchNull: false,
    existsTrue: false,
    existsFalse: false,
    tests: [],
  };
  let comparesNumbers = false;
  node.items.forEach((item, i) => {
    const at = `${path}[${i}]`;
    switch (item.t) {
      case 'str':
        (m.exactStrings ??= new Set()).add(item.v);
        break;
      case 'num':
        (m.exactNumbers ??= new Set()).add(item.raw);
        comparesNumbers = true;
        break;
      case 'bool':
        if (item.v) m.matchTrue = true;
        else m.matchFalse = true;
        break;
      case 'null':
        m.matchNull = true;
        break;
      case 'arr':
        throw new PatternError(`${at} is a nested array; list the values directly in ${path}`);
      case 'obj':
        if (compileOperator(item, at, m)) comparesNumbers = true;
        break;
    }
  });
  const last = keys[keys.length - 1];
  if (comparesNumbers && (last === 'N' || last === 'NS') && keys[0] === 'dynamodb') {
    ctx.warnings.push(
      `${path} compares numbers, but DynamoDB stream records carry ${last} values as strings, so it never matches ` +
        '(Lambda: "DynamoDB event filtering doesn\'t support the use of numeric operators"); match the text instead, e.g. ["21.5"] or [{"prefix": "2"}]',
    );
  }
  return m;
}

/** Adds one operator object (`{"prefix": ...}` etc.); returns true when it compares numbers. */
function compileOperator(node: Extract<JNode, { t: 'obj' }>, at: string, m: LeafMatcher): boolean {
  if (node.entries.length !== 1) {
    throw new PatternError(`${at} must hold exactly one operator (${OPERATORS.join(', ')}); put alternatives in separate array entries`);
  }
  const [op, arg] = node.entries[0] as [string, JNode];
  const opAt = `${at}.${op}`;
  switch (op) {
    case 'prefix':
    case 'suffix': {
      const { text, ignoreCase } = stringOrIgnoreCase(arg, opAt);
      m.tests.push(affixTest(op, text, ignoreCase));
      return false;
    }
    case 'equals-ignore-case': {
      const want = requireString(arg, opAt).toLowerCase();
      m.tests.push((v) => typeof v === 'string' && v.toLowerCase() === want);
      return false;
    }
    case 'anything-but':
      return compileAnythingBut(arg, opAt, m);
    case 'numeric': {
      const test = compileNumeric(arg, opAt);
      m.tests.push((v) => typeof v === 'number' && test(v));
      return true;
    }
    case 'exists':
      if (arg.t !== 'bool') throw new PatternError(`${opAt} must be true or false`);
      if (arg.v) m.existsTrue = true;
      else m.existsFalse = true;
      return false;
    default: {
      const why = UNSUPPORTED_OPERATORS[op];
      if (why !== undefined) throw new PatternError(`${at}: ${why}`);
      throw new PatternError(`${at} uses the unknown operator ${JSON.stringify(op)}; supported operators are ${OPERATORS.join(', ')}`);
    }
  }
}

function requireString(node: JNode, at: string): string {
  if (node.t !== 'str') throw new PatternError(`${at} must be a string, not ${describe(node)}`);
  return node.v;
}

/** `"text"` or `{"equals-ignore-case": "text"}` (EventBridge's case-insensitive prefix/suffix). */
function stringOrIgnoreCase(node: JNode, at: string): { text: string; ignoreCase: boolean } {
  if (node.t === 'str') return { text: node.v, ignoreCase: false };
  if (node.t === 'obj' && node.entries.length === 1 && node.entries[0]?.[0] === 'equals-ignore-case') {
    return { text: requireString(node.entries[0][1], `${at}.equals-ignore-case`), ignoreCase: true };
  }
  throw new PatternError(`${at} must be a string or {"equals-ignore-case": "<string>"}`);
}

function affixTest(op: 'prefix' | 'suffix', text: string, ignoreCase: boolean): (v: Leaf) => boolean {
  if (ignoreCase) {
    const lower = text.toLowerCase();
    return op === 'prefix'
      ? (v) => typeof v === 'string' && v.toLowerCase().startsWith(lower)
      : (v) => typeof v === 'string' && v.toLowerCase().endsWith(lower);
  }
  return op === 'prefix' ? (v) => typeof v === 'string' && v.startsWith(text) : (v) => typeof v === 'string' && v.endsWith(text);
}

/**
 * anything-but: "You can use anything-but matching with strings and numeric values,
 * including lists that contain only strings, or only numbers", or with a prefix,
 * suffix or equals-ignore-case. It matches a present value that the inner match would
 * reject (so other types pass); like every value match it needs the field present.
 */
function compileAnythingBut(arg: JNode, at: string, m: LeafMatcher): boolean {
  if (arg.t === 'str') {
    const no = arg.v;
    m.tests.push((v) => v !== no);
    return false;
  }
  if (arg.t === 'num') {
    checkNumericOperand(arg, at);
    const no = arg.v;
    m.tests.push((v) => !(typeof v === 'number' && v === no));
    return true;
  }
  if (arg.t === 'arr') {
    if (arg.items.length === 0) throw new PatternError(`${at} is an empty list; give at least one value`);
    if (arg.items.every((x) => x.t === 'str')) {
      const no = new Set(arg.items.map((x) => (x as { v: string }).v));
      m.tests.push((v) => typeof v !== 'string' || !no.has(v));
      return false;
    }
    if (arg.items.every((x) => x.t === 'num')) {
      const no = new Set(arg.items.map((x, i) => checkNumericOperand(x, `${at}[${i}]`)));
      m.tests.push((v) => typeof v !== 'number' || !no.has(v));
      return true;
    }
    throw new PatternError(`${at} must list only strings or only numbers`);
  }
  if (arg.t === 'obj' && arg.entries.length === 1) {
    const [inner, value] = arg.entries[0] as [string, JNode];
    const innerAt = `${at}.${inner}`;
    if (inner === 'prefix' || inner === 'suffix') {
      const text = requireString(value, innerAt);
      const positive = affixTest(inner, text, false);
      m.tests.push((v) => !positive(v));
      return false;
    }
    if (inner === 'equals-ignore-case') {
      const list = value.t === 'arr' ? value.items : [value];
      if (list.length === 0) throw new PatternError(`${innerAt} is an empty list; give at least one string`);
      const no = new Set(list.map((x, i) => requireString(x, value.t === 'arr' ? `${innerAt}[${i}]` : innerAt).toLowerCase()));
      m.tests.push((v) => typeof v !== 'string' || !no.has(v.toLowerCase()));
      return false;
    }
    if (inner === 'wildcard') throw new PatternError(`${innerAt}: ${UNSUPPORTED_OPERATORS.wildcard}`);
  }
  throw new PatternError(
    `${at} must be a string, a number, a list of only strings or only numbers, or {"prefix": ...}, {"suffix": ...} or {"equals-ignore-case": ...}`,
  );
}

function checkNumericOperand(node: JNode, at: string): number {
  if (node.t !== 'num') throw new PatternError(`${at} must be a JSON number, not ${describe(node)}${node.t === 'str' ? ` (write ${node.v} without quotes)` : ''}`);
  if (Math.abs(node.v) > NUMERIC_LIMIT) throw new PatternError(`${at} is ${node.raw}; numeric matching is limited to -5.0e9..+5.0e9`);
  return node.v;
}

/** `["=", x]`, `["<" | "<=" | ">" | ">=", x]`, or a range of one lower and one upper bound. */
function compileNumeric(arg: JNode, at: string): (v: number) => boolean {
  const usage = 'e.g. [">", 0, "<=", 5] or ["=", 100]';
  if (arg.t !== 'arr' || (arg.items.length !== 2 && arg.items.length !== 4)) {
    throw new PatternError(`${at} must be an array of one or two comparisons, ${usage}`);
  }
  let lower: { v: number; inclusive: boolean } | null = null;
  let upper: { v: number; inclusive: boolean } | null = null;
  for (let i = 0; i < arg.items.length; i += 2) {
    const opNode = arg.items[i] as JNode;
    const op = opNode.t === 'str' ? opNode.v : null;
    const value = checkNumericOperand(arg.items[i + 1] as JNode, `${at}[${i + 1}]`);
    if (op === '=') {
      if (arg.items.length !== 2) throw new PatternError(`${at}: "=" cannot be combined with another comparison`);
      return (v) => v === value;
    }
    if (op === '>' || op === '>=') {
      if (lower) throw new PatternError(`${at} has two lower bounds; a range is one of ">"/">=" and one of "<"/"<=", ${usage}`);
      lower = { v: value, inclusive: op === '>=' };
    } else if (op === '<' || op === '<=') {
      if (upper) throw new PatternError(`${at} has two upper bounds; a range is one of ">"/">=" and one of "<"/"<=", ${usage}`);
      upper = { v: value, inclusive: op === '<=' };
    } else {
      throw new PatternError(`${at}[${i}] must be one of "=", "<", "<=", ">", ">=", not ${rawJson(opNode)}`);
    }
  }
  if (lower && upper && !(lower.v < upper.v)) {
    throw new PatternError(`${at} is an empty range: the lower bound ${lower.v} must be below the upper bound ${upper.v}`);
  }
  const lo = lower;
  const hi = upper;
  return (v) => (lo === null || (lo.inclusive ? v >= lo.v : v > lo.v)) && (hi === null || (hi.inclusive ? v <= hi.v : v < hi.v));
}

/** Warnings for parts of a pattern that are valid but cannot match a DynamoDB stream record. */
function noteStructure(keys: string[], value: JNode, ctx: CompileContext, path: string): void {
  if (keys.length === 1 && !RECORD_KEYS.has(keys[0] as string)) {
    ctx.warnings.push(`${path} is not a field of a DynamoDB stream record (fields: ${[...RECORD_KEYS].join(', ')}), so this filter never matches`);
  } else if (keys.length === 2 && keys[0] === 'dynamodb' && !DYNAMODB_KEYS.has(keys[1] as string)) {
    ctx.warnings.push(`${path} is not a field of a record's "dynamodb" object (fields: ${[...DYNAMODB_KEYS].join(', ')}), so this filter never matches`);
  } else if (keys.length === 3 && keys[0] === 'dynamodb' && IMAGE_KEYS.has(keys[1] as string) && value.t === 'arr') {
    ctx.warnings.push(
      `${path} tests an attribute name directly, but attribute values are typed objects such as {"S": "..."} or {"N": "..."}; ` +
        `this can only match with {"exists": false} (Lambda: Exists "only works on leaf nodes"), e.g. write ${path}.S or ${path}.N`,
    );
  }
}

// ---------------------------------------------------------------------------
// Matching. No allocation on the common path (plain objects, scalar leaves).

const EMPTY: Readonly<Record<string, unknown>> = Object.freeze({});
const hasOwn = Object.prototype.hasOwnProperty;

function isLeaf(v: unknown): v is Leaf {
  const t = typeof v;
  return v === null || t === 'string' || t === 'number' || t === 'boolean' || t === 'bigint';
}

function testLeaf(m: LeafMatcher, v: Leaf): boolean {
  if (typeof v === 'string') {
    if (m.exactStrings?.has(v)) return true;
  } else if (typeof v === 'number' || typeof v === 'bigint') {
    if (m.exactNumbers?.has(String(v))) return true;
  } else if (v === true) {
    if (m.matchTrue) return true;
  } else if (v === false) {
    if (m.matchFalse) return true;
  } else if (m.matchNull) {
    return true;
  }
  for (const test of m.tests) if (test(v)) return true;
  return false;
}

/** Walks nested arrays; reports whether any leaf was seen and whether one matched. */
function scanLeaves(m: LeafMatcher, arr: readonly unknown[], state: { seen: boolean }): boolean {
  for (const item of arr) {
    if (Array.isArray(item)) {
      if (scanLeaves(m, item, state)) return true;
    } else if (isLeaf(item)) {
      state.seen = true;
      if (testLeaf(m, item)) return true;
    }
  }
  return false;
}

function matchLeaf(m: LeafMatcher, v: unknown): boolean {
  if (isLeaf(v)) return m.existsTrue || testLeaf(m, v);
  if (Array.isArray(v)) {
    const state = { seen: false };
    if (scanLeaves(m, v, state)) return true;
    return state.seen ? m.existsTrue : m.existsFalse;
  }
  // Absent, or an intermediate node (object): no leaf carries this name.
  return m.existsFalse;
}

function matchObject(m: ObjectMatcher, v: unknown): boolean {
  if (typeof v === 'object' && v !== null) {
    if (!Array.isArray(v)) return matchOne(m, v as Record<string, unknown>);
    const state = { sawObject: false };
    if (matchElements(m, v, state)) return true;
    return state.sawObject ? false : matchOne(m, EMPTY);
  }
  return matchOne(m, EMPTY);
}

/** Objects inside an array are matched one element at a time (array-consistent matching). */
function matchElements(m: ObjectMatcher, arr: readonly unknown[], state: { sawObject: boolean }): boolean {
  for (const item of arr) {
    if (Array.isArray(item)) {
      if (matchElements(m, item, state)) return true;
    } else if (typeof item === 'object' && item !== null) {
      state.sawObject = true;
      if (matchOne(m, item as Record<string, unknown>)) return true;
    }
  }
  return false;
}

function matchOne(m: ObjectMatcher, o: Readonly<Record<string, unknown>>): boolean {
  for (const f of m.fields) {
    const child = hasOwn.call(o, f.key) ? o[f.key] : undefined;
    if (f.leaf !== null ? !matchLeaf(f.leaf, child) : !matchObject(f.object as ObjectMatcher, child)) return false;
  }
  for (const alternatives of m.ors) {
    let any = false;
    for (const alt of alternatives) {
      if (matchOne(alt, o)) {
        any = true;
        break;
      }
    }
    if (!any) return false;
  }
  return true;
}

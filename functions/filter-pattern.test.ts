import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { compileFilterCriteria, type RecordFilter } from './filter-pattern.js';
import { toStreamRecord } from '../streams/lambda-event.js';
import type { ChangeRecord } from '../streams/types.js';
import { TributaryError } from '../core/errors.js';

const one = (pattern: unknown): RecordFilter =>
  compileFilterCriteria({ filters: [{ pattern: typeof pattern === 'string' ? pattern : JSON.stringify(pattern) }] });

interface Case {
  name: string;
  pattern: unknown;
  match: unknown[];
  noMatch: unknown[];
}

function runTable(cases: Case[]): void {
  it.each(cases)('$name', ({ pattern, match, noMatch }) => {
    const f = one(pattern);
    for (const event of match) expect(f(event), `should match ${JSON.stringify(event)}`).toBe(true);
    for (const event of noMatch) expect(f(event), `should not match ${JSON.stringify(event)}`).toBe(false);
  });
}

// Lambda, "Control which events Lambda sends to your function", Filter rule syntax table
// (https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventfiltering.html#filtering-syntax).
describe('Lambda filter rule syntax table', () => {
  runTable([
    { name: 'Null: UserID is null', pattern: { UserID: [null] }, match: [{ UserID: null }], noMatch: [{ UserID: 'u1' }, {}, { UserID: 'null' }] },
    { name: 'Empty: LastName is empty', pattern: { LastName: [''] }, match: [{ LastName: '' }], noMatch: [{ LastName: 'Doe' }, {}, { LastName: null }] },
    { name: 'Equals: Name is "Alice"', pattern: { Name: ['Alice'] }, match: [{ Name: 'Alice' }], noMatch: [{ Name: 'alice' }, { Name: 'Alice ' }, {}] },
    {
      name: 'Equals (ignore case): Name is "Alice"',
      pattern: { Name: [{ 'equals-ignore-case': 'alice' }] },
      match: [{ Name: 'Alice' }, { Name: 'ALICE' }, { Name: 'alice' }],
      noMatch: [{ Name: 'Alicia' }, {}, { Name: 1 }],
    },
    {
      name: 'And: Location is "New York" and Day is "Monday"',
      pattern: { Location: ['New York'], Day: ['Monday'] },
      match: [{ Location: 'New York', Day: 'Monday', extra: 1 }],
      noMatch: [{ Location: 'New York', Day: 'Tuesday' }, { Location: 'New York' }, { Day: 'Monday' }],
    },
    {
      name: 'Or: PaymentType is "Credit" or "Debit"',
      pattern: { PaymentType: ['Credit', 'Debit'] },
      match: [{ PaymentType: 'Credit' }, { PaymentType: 'Debit' }],
      noMatch: [{ PaymentType: 'Cash' }, {}],
    },
    {
      name: 'Or (multiple fields): Location is "New York", or Day is "Monday"',
      pattern: { $or: [{ Location: ['New York'] }, { Day: ['Monday'] }] },
      match: [{ Location: 'New York' }, { Day: 'Monday' }, { Location: 'New York', Day: 'Monday' }],
      noMatch: [{ Location: 'Boston', Day: 'Friday' }, {}],
    },
    {
      name: 'Not: Weather is anything but "Raining"',
      pattern: { Weather: [{ 'anything-but': ['Raining'] }] },
      match: [{ Weather: 'Sunny' }],
      noMatch: [{ Weather: 'Raining' }, {}],
    },
    {
      name: 'Numeric (equals): Price is 100',
      pattern: { Price: [{ numeric: ['=', 100] }] },
      match: [{ Price: 100 }, { Price: 100.0 }],
      noMatch: [{ Price: 101 }, { Price: '100' }, {}],
    },
    {
      name: 'Numeric (range): Price is more than 10, and less than or equal to 20',
      pattern: { Price: [{ numeric: ['>', 10, '<=', 20] }] },
      match: [{ Price: 10.5 }, { Price: 20 }],
      noMatch: [{ Price: 10 }, { Price: 20.01 }, { Price: '15' }],
    },
    { name: 'Exists: ProductName exists', pattern: { ProductName: [{ exists: true }] }, match: [{ ProductName: 'x' }, { ProductName: null }], noMatch: [{}] },
    { name: 'Does not exist: ProductName does not exist', pattern: { ProductName: [{ exists: false }] }, match: [{}, { other: 1 }], noMatch: [{ ProductName: 'x' }] },
    { name: 'Begins with: Region is in the US', pattern: { Region: [{ prefix: 'us-' }] }, match: [{ Region: 'us-east-1' }], noMatch: [{ Region: 'eu-west-1' }, { Region: 'US-EAST-1' }] },
    { name: 'Ends with: FileName ends with .png', pattern: { FileName: [{ suffix: '.png' }] }, match: [{ FileName: 'a.png' }], noMatch: [{ FileName: 'a.PNG' }, { FileName: 'a.jpg' }] },
    {
      // "For numbers, Lambda also uses string representation. For example, 300, 300.0, and 3.0e2 are not considered equal."
      name: 'exact numbers compare by their text (300 vs 300.0 vs 3.0e2)',
      pattern: '{"a": [300]}',
      match: [{ a: 300 }],
      noMatch: [{ a: '300' }, { a: 301 }],
    },
    { name: '300.0 in a pattern does not equal the number 300', pattern: '{"a": [300.0]}', match: [], noMatch: [{ a: 300 }] },
    { name: '3.0e2 in a pattern does not equal the number 300', pattern: '{"a": [3.0e2]}', match: [], noMatch: [{ a: 300 }] },
    {
      // "the Exists operator only works on leaf nodes ... { "person": { "address": [ { "exists": true } ] } } wouldn't find a match"
      name: 'Exists does not match an intermediate node',
      pattern: { person: { address: [{ exists: true }] } },
      match: [],
      noMatch: [{ person: { name: 'John Doe', age: 30, address: { street: '123 Main St', city: 'Anytown', country: 'USA' } } }],
    },
    {
      // Multi-level filtering: "process only those records where the value of the sort key Number is 4567".
      name: 'multi-level: dynamodb.Keys.Number.N is "4567"',
      pattern: { dynamodb: { Keys: { Number: { N: ['4567'] } } } },
      match: [{ dynamodb: { Keys: { ID: { S: 'ABCD' }, Number: { N: '4567' } } } }],
      noMatch: [{ dynamodb: { Keys: { ID: { S: 'ABCD' }, Number: { N: '1234' } } } }],
    },
  ]);
});

// The record from "Using event filtering with a DynamoDB event source"
// (https://docs.aws.amazon.com/lambda/latest/dg/with-ddb-filtering.html).
const awsDocRecord = {
  eventID: '1',
  eventVersion: '1.0',
  dynamodb: {
    ApproximateCreationDateTime: '1678831218.0',
    Keys: { CustomerName: { S: 'AnyCompany Industries' } },
    NewImage: { AccountManager: { S: 'Pat Candella' }, PaymentTerms: { S: '60 days' }, CustomerName: { S: 'AnyCompany Industries' } },
    OldImage: { AccountManager: { S: 'Terry Whitlock' }, PaymentTerms: { S: '30 days' }, CustomerName: { S: 'AnyCompany Industries' } },
    SequenceNumber: '111',
    SizeBytes: 26,
    StreamViewType: 'NEW_AND_OLD_IMAGES',
  },
};
const withDoc = (patch: (r: typeof awsDocRecord) => void): unknown => {
  const copy = structuredClone(awsDocRecord);
  patch(copy);
  return copy;
};

describe('Lambda DynamoDB filtering examples', () => {
  runTable([
    {
      name: 'Filtering with table keys',
      pattern: '{ "dynamodb" : { "Keys" : { "CustomerName" : { "S" : [ "AnyCompany Industries" ] } } } }',
      match: [awsDocRecord],
      noMatch: [withDoc((r) => (r.dynamodb.Keys.CustomerName.S = 'Other Co'))],
    },
    {
      name: 'Filtering with table attributes (NewImage AccountManager is one of two)',
      pattern: '{ "dynamodb" : { "NewImage" : { "AccountManager" : { "S" : [ "Pat Candella", "Shirley Rodriguez" ] } } } }',
      match: [awsDocRecord, withDoc((r) => (r.dynamodb.NewImage.AccountManager.S = 'Shirley Rodriguez'))],
      noMatch: [withDoc((r) => (r.dynamodb.NewImage.AccountManager.S = 'Terry Whitlock'))],
    },
    {
      // The doc's pattern repeats the "dynamodb" key; AWS treats it as an AND of both.
      name: 'Filtering with Boolean expressions (duplicate "dynamodb" keys are ANDed)',
      pattern:
        '{ "dynamodb" : { "NewImage" : { "AccountManager" : { "S" : [ "Pat Candella" ] } } } , "dynamodb" : { "OldImage" : { "AccountManager" : { "S" : [ "Terry Whitlock" ] } } } }',
      match: [awsDocRecord],
      noMatch: [
        withDoc((r) => (r.dynamodb.OldImage.AccountManager.S = 'Someone Else')),
        withDoc((r) => (r.dynamodb.NewImage.AccountManager.S = 'Someone Else')),
      ],
    },
    {
      // "this filter pattern would never return a match because "Organizations" is not a leaf node"
      name: 'Exists on an attribute name (intermediate node) never matches',
      pattern: '{ "dynamodb" : { "NewImage" : { "Organizations" : [ { "exists": true } ] } } }',
      match: [],
      noMatch: [
        withDoc((r) => Object.assign(r.dynamodb.NewImage, { Organizations: { L: [{ S: 'Sales' }, { S: 'Marketing' }, { S: 'Support' }] } })),
      ],
    },
    {
      name: 'Exists through the typed value and list (the doc\'s corrected pattern)',
      pattern: '{ "dynamodb" : { "NewImage" : {"Organizations": {"L": {"S": [ {"exists": true } ] } } } } }',
      match: [withDoc((r) => Object.assign(r.dynamodb.NewImage, { Organizations: { L: [{ S: 'Sales' }, { S: 'Marketing' }, { S: 'Support' }] } }))],
      noMatch: [awsDocRecord, withDoc((r) => Object.assign(r.dynamodb.NewImage, { Organizations: { L: [] } }))],
    },
    {
      // "DynamoDB event filtering doesn't support the use of numeric operators ... converted to strings in the JSON record object."
      name: 'numeric operators never match DynamoDB N values (they are strings)',
      pattern: { dynamodb: { Keys: { Id: { N: [{ numeric: ['=', 101] }] } } } },
      match: [],
      noMatch: [{ dynamodb: { Keys: { Id: { N: '101' } } } }],
    },
    {
      name: 'N values match as text',
      pattern: { dynamodb: { Keys: { Id: { N: ['101'] } } } },
      match: [{ dynamodb: { Keys: { Id: { N: '101' } } } }],
      noMatch: [{ dynamodb: { Keys: { Id: { N: '1010' } } } }, { dynamodb: { Keys: { Id: { S: '101' } } } }],
    },
  ]);
});

// EventBridge, "Comparison operators for use in event patterns" / "Content filtering"
// (https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-create-pattern-operators.html),
// the syntax Lambda says it shares.
describe('EventBridge content filtering examples', () => {
  const ec2 = {
    time: '2017-10-02T18:43:48Z',
    resources: ['arn:aws:ec2:us-east-1:123456789012:instance/i-02ebd4584a2ebd341'],
    detail: { 'c-count': 5, 'd-count': 3, 'x-limit': 301.8, state: 'running', service: 'EventBridge', FileName: 'image.PNG' },
  };
  const detail = (d: Record<string, unknown>): unknown => ({ ...ec2, detail: { ...ec2.detail, ...d } });
  runTable([
    { name: 'prefix', pattern: { time: [{ prefix: '2017-10-02' }] }, match: [ec2], noMatch: [{ ...ec2, time: '2017-10-03T00:00:00Z' }, { time: 20171002 }] },
    {
      name: 'prefix with equals-ignore-case',
      pattern: { detail: { service: [{ prefix: { 'equals-ignore-case': 'EventB' } }] } },
      match: [ec2, detail({ service: 'EVENTBUS' }), detail({ service: 'eventb' })],
      noMatch: [detail({ service: 'Event' }), detail({ service: 'xEventB' })],
    },
    { name: 'suffix', pattern: { FileName: [{ suffix: '.png' }] }, match: [{ FileName: 'a/b.png' }], noMatch: [{ FileName: 'a/b.png.txt' }] },
    {
      name: 'suffix with equals-ignore-case',
      pattern: { detail: { FileName: [{ suffix: { 'equals-ignore-case': '.png' } }] } },
      match: [ec2, detail({ FileName: 'x.png' })],
      noMatch: [detail({ FileName: 'x.jpg' })],
    },
    {
      name: 'anything-but a string',
      pattern: { detail: { state: [{ 'anything-but': 'initializing' }] } },
      match: [ec2, detail({ state: 7 })],
      noMatch: [detail({ state: 'initializing' }), { detail: {} }],
    },
    {
      name: 'anything-but a number',
      pattern: { detail: { 'x-limit': [{ 'anything-but': 123 }] } },
      match: [ec2, detail({ 'x-limit': '123' })],
      noMatch: [detail({ 'x-limit': 123 })],
    },
    {
      name: 'anything-but a list of strings',
      pattern: { detail: { state: [{ 'anything-but': ['stopped', 'overloaded'] }] } },
      match: [ec2],
      noMatch: [detail({ state: 'stopped' }), detail({ state: 'overloaded' })],
    },
    {
      name: 'anything-but a list of numbers',
      pattern: { detail: { 'x-limit': [{ 'anything-but': [100, 200, 300] }] } },
      match: [ec2],
      noMatch: [detail({ 'x-limit': 200 })],
    },
    {
      name: 'anything-but prefix',
      pattern: { detail: { state: [{ 'anything-but': { prefix: 'init' } }] } },
      match: [ec2],
      noMatch: [detail({ state: 'initializing' }), { detail: {} }],
    },
    {
      name: 'anything-but suffix',
      pattern: { FileName: [{ 'anything-but': { suffix: '.png' } }] },
      match: [{ FileName: 'a.jpg' }],
      noMatch: [{ FileName: 'a.png' }],
    },
    {
      name: 'anything-but equals-ignore-case',
      pattern: { state: [{ 'anything-but': { 'equals-ignore-case': ['initializing', 'stopped'] } }] },
      match: [{ state: 'running' }],
      noMatch: [{ state: 'INITIALIZING' }, { state: 'Stopped' }],
    },
    {
      name: 'numeric (all fields must hold)',
      pattern: { detail: { 'c-count': [{ numeric: ['>', 0, '<=', 5] }], 'd-count': [{ numeric: ['<', 10] }], 'x-limit': [{ numeric: ['=', 3.018e2] }] } },
      match: [ec2],
      noMatch: [detail({ 'c-count': 0 }), detail({ 'd-count': 10 }), detail({ 'x-limit': 301.81 })],
    },
    { name: 'numeric >= and <', pattern: { n: [{ numeric: ['>=', -1.5, '<', 2] }] }, match: [{ n: -1.5 }, { n: 1.99 }], noMatch: [{ n: -1.51 }, { n: 2 }] },
    { name: 'numeric bounds in either order', pattern: { n: [{ numeric: ['<=', 5, '>', 0] }] }, match: [{ n: 5 }], noMatch: [{ n: 0 }] },
    {
      name: 'exists false matches a missing leaf',
      pattern: { detail: { 'c-count': [{ exists: false }] } },
      match: [{ detail: { state: ['initializing', 'running'] } }, { detail: { state: 'x', 'c-count': { c1: 100 } } }],
      noMatch: [ec2],
    },
    {
      name: 'arrays in the event: matches when the intersection is non-empty',
      pattern: { resources: ['arn:aws:ec2:us-east-1:123456789012:instance/i-02ebd4584a2ebd341', 'other'] },
      match: [ec2, { resources: ['x', 'other'] }],
      noMatch: [{ resources: ['x'] }, { resources: [] }],
    },
    {
      name: 'complex example combining operators',
      pattern: {
        time: [{ prefix: '2017-10-02' }],
        detail: {
          state: [{ 'anything-but': 'initializing' }],
          'c-count': [{ numeric: ['>', 0, '<=', 5] }],
          'd-count': [{ numeric: ['<', 10] }],
          'x-limit': [{ 'anything-but': [100, 200, 300] }],
        },
      },
      match: [ec2],
      noMatch: [detail({ state: 'initializing' }), { ...ec2, time: '2018-01-01' }],
    },
    {
      // event-ruler README: "Parallel Or" and "Or has an And inside".
      name: '$or nested and with an AND inside an alternative',
      pattern: {
        source: ['aws.cloudwatch'],
        $or: [{ metricName: ['CPUUtilization', 'ReadLatency'] }, { metricType: ['MetricType'], namespace: ['AWS/EC2', 'AWS/ES'] }, { scope: ['Service'] }],
      },
      match: [
        { source: 'aws.cloudwatch', metricName: 'ReadLatency' },
        { source: 'aws.cloudwatch', metricType: 'MetricType', namespace: 'AWS/ES' },
        { source: 'aws.cloudwatch', scope: 'Service' },
      ],
      noMatch: [{ source: 'aws.cloudwatch', metricType: 'MetricType' }, { source: 'aws.ec2', scope: 'Service' }],
    },
    {
      // event-ruler: "refuse to recognize any match in which any two fields are within JSON objects
      // that are in different elements of the same array".
      name: 'objects in arrays match element by element',
      pattern: { employees: { firstName: ['Anna'], lastName: ['Smith'] } },
      match: [{ employees: [{ firstName: 'John', lastName: 'Doe' }, { firstName: 'Anna', lastName: 'Smith' }] }],
      noMatch: [{ employees: [{ firstName: 'Anna', lastName: 'Doe' }, { firstName: 'Peter', lastName: 'Smith' }] }],
    },
    {
      name: 'booleans match exactly, not as strings',
      pattern: { dynamodb: { NewImage: { ok: { BOOL: [true] } } } },
      match: [{ dynamodb: { NewImage: { ok: { BOOL: true } } } }],
      noMatch: [{ dynamodb: { NewImage: { ok: { BOOL: false } } } }, { dynamodb: { NewImage: { ok: { S: 'true' } } } }],
    },
  ]);
});

// Records as Tributary renders them (streams/lambda-event.ts).
const ARN = 'arn:aws:dynamodb:us-east-1:000000000000:table/telemetry/stream/2026-11-26T08:00:00.000';
const base: ChangeRecord = { eventName: 'INSERT', deviceId: 'sensor-1', ts: 1764150000000, seq: 0, shard: 0, sequenceNumber: 1, createdAt: 1764150000123 };
const insert = toStreamRecord({ ...base, newValues: { temp: 31.5, site: 'north', gps: { lat: 52.1, lon: 4.3 } } }, ARN);
const modify = toStreamRecord({ ...base, eventName: 'MODIFY', newValues: { temp: 20 }, oldValues: { temp: 35 } }, ARN);
const remove = toStreamRecord({ ...base, eventName: 'REMOVE', oldValues: { temp: 19, site: 'south' } }, ARN);
const ttlRemove = toStreamRecord({ ...base, eventName: 'REMOVE', oldValues: { temp: 19 }, byService: true }, ARN);

describe('Tributary stream records', () => {
  runTable([
    { name: 'eventName', pattern: { eventName: ['INSERT'] }, match: [insert], noMatch: [modify, remove] },
    { name: 'eventName OR list', pattern: { eventName: ['INSERT', 'MODIFY'] }, match: [insert, modify], noMatch: [remove] },
    {
      name: 'nested map (NewImage M) by typed path',
      pattern: { dynamodb: { NewImage: { gps: { M: { lat: { N: ['52.1'] } } } } } },
      match: [insert],
      noMatch: [modify, remove],
    },
    {
      name: 'REMOVE records have no NewImage: value tests fail, exists:false passes',
      pattern: { eventName: ['REMOVE'], dynamodb: { NewImage: { temp: { N: [{ exists: false }] } }, OldImage: { temp: { N: [{ exists: true }] } } } },
      match: [remove, ttlRemove],
      noMatch: [insert, modify],
    },
    {
      name: 'missing fields never satisfy value tests (anything-but included)',
      pattern: { dynamodb: { NewImage: { site: { S: [{ 'anything-but': 'north' }] } } } },
      match: [],
      noMatch: [insert, modify, remove],
    },
    {
      name: 'TTL deletions by userIdentity (DynamoDB TTL docs)',
      pattern: { userIdentity: { type: ['Service'], principalId: ['dynamodb.amazonaws.com'] } },
      match: [ttlRemove],
      noMatch: [remove, insert],
    },
    {
      name: 'numeric on a JSON-number field of the record works (ApproximateCreationDateTime)',
      pattern: { dynamodb: { ApproximateCreationDateTime: [{ numeric: ['>=', 1764150000] }] } },
      match: [insert],
      noMatch: [toStreamRecord({ ...base, createdAt: 1000, newValues: { temp: 1 } }, ARN)],
    },
    {
      name: 'prefix on an N value (numbers are text)',
      pattern: { dynamodb: { NewImage: { temp: { N: [{ prefix: '3' }] } } } },
      match: [insert],
      noMatch: [modify],
    },
    {
      name: '$or across images',
      pattern: { dynamodb: { $or: [{ NewImage: { temp: { N: ['31.5'] } } }, { OldImage: { temp: { N: ['35'] } } }] } },
      match: [insert, modify],
      noMatch: [remove],
    },
    {
      name: 'the brief\'s example: numeric on N never matches, as on AWS',
      pattern: { eventName: ['INSERT'], dynamodb: { NewImage: { temp: { N: [{ numeric: ['>', 30] }] } } } },
      match: [],
      noMatch: [insert],
    },
  ]);

  it('ORs multiple filters: a record passes when any filter matches', () => {
    const f = compileFilterCriteria({
      filters: [
        { pattern: JSON.stringify({ eventName: ['REMOVE'] }) },
        { pattern: JSON.stringify({ dynamodb: { NewImage: { site: { S: ['north'] } } } }) },
      ],
    });
    expect([insert, modify, remove, ttlRemove].map(f)).toEqual([true, false, true, true]);
  });

  it('lets everything through without criteria or with an empty filter list', () => {
    for (const criteria of [undefined, { filters: [] }, {} as { filters: Array<{ pattern: string }> }]) {
      const f = compileFilterCriteria(criteria);
      expect(f(insert) && f(remove) && f(null) && f('x')).toBe(true);
      expect(f.warnings).toEqual([]);
    }
  });

  it('treats non-object records as having no fields', () => {
    const f = one({ a: [{ exists: false }] });
    expect([null, 42, 'text', [], undefined].map(f)).toEqual([true, true, true, true, true]);
    expect(one({ a: ['x'] })('x')).toBe(false);
  });

  it('does not read inherited properties of the record', () => {
    expect(one({ constructor: [{ exists: true }] })({})).toBe(false);
    expect(one({ toString: [{ exists: false }] })({})).toBe(true);
  });
});

describe('warnings for patterns that can never match a DynamoDB record', () => {
  it('warns about numbers compared with N values, citing the Lambda note', () => {
    const f = one({ eventName: ['INSERT'], dynamodb: { NewImage: { temp: { N: [{ numeric: ['>', 30] }] } } } });
    expect(f.warnings).toHaveLength(1);
    expect(f.warnings[0]).toMatch(/filters\[0\]\.pattern: dynamodb\.NewImage\.temp\.N compares numbers.*strings.*\["21\.5"\]/);
    expect(one({ dynamodb: { Keys: { ts: { N: [1764150000000] } } } }).warnings[0]).toMatch(/Keys\.ts\.N compares numbers/);
  });

  it('warns about attribute names used as leaves, unknown record fields and typos', () => {
    expect(one({ dynamodb: { NewImage: { temp: [{ exists: true }] } } }).warnings[0]).toMatch(/NewImage\.temp tests an attribute name directly/);
    expect(one({ NewImage: { temp: { S: ['x'] } } }).warnings[0]).toMatch(/NewImage is not a field of a DynamoDB stream record/);
    expect(one({ dynamodb: { newImage: { temp: { S: ['x'] } } } }).warnings[0]).toMatch(/dynamodb\.newImage is not a field/);
  });

  it('has no warnings for sound patterns', () => {
    expect(one({ eventName: ['INSERT'], dynamodb: { NewImage: { temp: { N: ['21.5'] } }, SizeBytes: [{ numeric: ['>', 0] }] } }).warnings).toEqual([]);
  });
});

describe('validation', () => {
  const bad: Array<[string, string, RegExp]> = [
    ['truncated JSON', '{"eventName": ["INSERT"]', /not valid JSON: the pattern ends early \(expected "," or "}"\)/],
    ['invalid JSON', '{"eventName": ["INSERT"] "x": 1}', /not valid JSON at character 26: expected "," or "}" \(near "\\"x\\": 1}"\)/],
    ['trailing text', '{"a": ["x"]} x', /unexpected text after the JSON value/],
    ['single quotes', "{'a': ['x']}", /expected a quoted field name/],
    ['empty string', '', /the pattern is empty/],
    ['not an object', '["INSERT"]', /must be a JSON object/],
    ['no fields', '{}', /has no fields/],
    ['empty nested object', '{"dynamodb": {}}', /dynamodb is an empty object/],
    ['bare value', '{"eventName": "INSERT"}', /eventName must be an array of match values \(e\.g\. "eventName": \["INSERT"\]\)/],
    ['empty array', '{"eventName": []}', /empty array.*\[null\]/],
    ['nested array', '{"a": [["x"]]}', /a\[0\] is a nested array/],
    ['unknown operator', '{"a": [{"prefx": "x"}]}', /a\[0\] uses the unknown operator "prefx"; supported operators are prefix, suffix/],
    ['two operators in one object', '{"a": [{"prefix": "x", "suffix": "y"}]}', /exactly one operator/],
    ['wildcard (event bus only)', '{"a": [{"wildcard": "*.png"}]}', /wildcard.*event buses only/],
    ['cidr', '{"a": [{"cidr": "10.0.0.0/24"}]}', /cidr/],
    ['prefix not a string', '{"a": [{"prefix": 1}]}', /a\[0\]\.prefix must be a string or \{"equals-ignore-case"/],
    ['equals-ignore-case not a string', '{"a": [{"equals-ignore-case": ["x"]}]}', /equals-ignore-case must be a string, not an array/],
    ['exists not boolean', '{"a": [{"exists": "true"}]}', /exists must be true or false/],
    ['numeric operand is a string', '{"a": [{"numeric": [">", "30"]}]}', /a\[0\]\.numeric\[1\] must be a JSON number, not a string \(write 30 without quotes\)/],
    ['numeric unknown operator', '{"a": [{"numeric": ["!=", 3]}]}', /numeric\[0\] must be one of "=", "<", "<=", ">", ">=", not "!="/],
    ['numeric odd length', '{"a": [{"numeric": [">", 0, "<"]}]}', /one or two comparisons/],
    ['numeric two lower bounds', '{"a": [{"numeric": [">", 0, ">=", 5]}]}', /two lower bounds/],
    ['numeric empty range', '{"a": [{"numeric": [">", 5, "<", 5]}]}', /empty range/],
    ['numeric = combined', '{"a": [{"numeric": ["=", 5, "<", 9]}]}', /"=" cannot be combined/],
    ['numeric out of range', '{"a": [{"numeric": [">", 6e9]}]}', /limited to -5\.0e9\.\.\+5\.0e9/],
    ['anything-but mixed list', '{"a": [{"anything-but": ["x", 1]}]}', /only strings or only numbers/],
    ['anything-but boolean', '{"a": [{"anything-but": true}]}', /anything-but must be a string, a number/],
    ['anything-but wildcard', '{"a": [{"anything-but": {"wildcard": "x*"}}]}', /wildcard.*event buses only/],
    ['$or with one alternative', '{"$or": [{"a": ["x"]}]}', /\$or needs at least two alternatives/],
    ['$or alternative not an object', '{"$or": [{"a": ["x"]}, ["b"]]}', /\$or\[1\] must be an object of fields/],
    ['$or with operators as fields', '{"$or": [{"numeric": [">", 1]}, {"prefix": ["a"]}]}', /\$or\[0\] uses the operator "numeric" as a field/],
    ['duplicate leaf key', '{"a": ["x"], "a": ["y"]}', /field "a" appears twice at the top level/],
    ['control character', '{"a": ["x\ny"]}', /control character/],
    ['deep nesting', `${'{"a":'.repeat(70)}["x"]${'}'.repeat(70)}`, /nesting deeper than 64/],
  ];

  it.each(bad)('rejects %s with a clear ValidationError', (_name, pattern, message) => {
    let error: unknown;
    try {
      compileFilterCriteria({ filters: [{ pattern: '{"eventName": ["INSERT"]}' }, { pattern }] });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(TributaryError);
    const e = error as TributaryError;
    expect(e.code).toBe('ValidationError');
    expect(e.status).toBe(400);
    expect(e.field).toBe('filterCriteria.filters[1].pattern');
    expect(e.message).toMatch(/^filterCriteria\.filters\[1\]\.pattern is invalid: /);
    expect(e.message).toMatch(message);
  });

  it('enforces the five-filter default and allows a raised quota up to ten', () => {
    const filters = Array.from({ length: 6 }, (_, i) => ({ pattern: JSON.stringify({ n: [i] }) }));
    expect(() => compileFilterCriteria({ filters })).toThrow(
      expect.objectContaining({ code: 'ValidationError', field: 'filterCriteria.filters', message: expect.stringMatching(/has 6 filters; at most 5/) }),
    );
    expect(compileFilterCriteria({ filters }, { maxFilters: 10 })({ n: 5 })).toBe(true);
    expect(() => compileFilterCriteria({ filters }, { maxFilters: 11 })).toThrow(RangeError);
  });

  it('enforces the 4096-character pattern limit', () => {
    const pattern = JSON.stringify({ a: ['x'.repeat(4100)] });
    expect(() => compileFilterCriteria({ filters: [{ pattern }] })).toThrow(/filters\[0\]\.pattern is 4\d{3} characters long; the limit is 4096/);
  });

  it('rejects malformed criteria shapes with the field that is wrong', () => {
    const cases: Array<[unknown, string, RegExp]> = [
      ['x', 'filterCriteria', /must be an object/],
      [{ filters: {} }, 'filterCriteria.filters', /must be an array/],
      [{ filters: ['{}'] }, 'filterCriteria.filters[0]', /must be an object like/],
      [{ filters: [{ Pattern: '{"a": ["x"]}' }] }, 'filterCriteria.filters[0].pattern', /camelCase/],
      [{ filters: [{ pattern: { a: ['x'] } }] }, 'filterCriteria.filters[0].pattern', /must be a string holding a JSON filter pattern/],
    ];
    for (const [criteria, field, message] of cases) {
      expect(() => compileFilterCriteria(criteria as never)).toThrow(expect.objectContaining({ code: 'ValidationError', field, message: expect.stringMatching(message) }));
    }
  });

  it('accepts escapes and unicode in strings', () => {
    const f = one('{"a": ["\\u00e9\\"\\\\\\/\\n"]}');
    expect(f({ a: 'é"\\/\n' })).toBe(true);
  });
});

describe('property: a pattern built from a record\'s own values matches it', () => {
  const scalar = fc.oneof(
    fc.string(),
    fc.integer({ min: -1e9, max: 1e9 }),
    fc.double({ noNaN: true, noDefaultInfinity: true, min: -1e9, max: 1e9 }),
    fc.boolean(),
    fc.constant(null),
  );
  const key = fc.string({ minLength: 1, maxLength: 8 });
  const { tree } = fc.letrec<{ tree: unknown; obj: Record<string, unknown> }>((tie) => ({
    tree: fc.oneof({ depthSize: 'small' }, scalar, tie('obj'), fc.array(scalar, { minLength: 1, maxLength: 3 })),
    obj: fc.dictionary(key, tie('tree'), { minKeys: 1, maxKeys: 4 }),
  }));
  const record = fc.dictionary(key, tree, { minKeys: 1, maxKeys: 5 }) as fc.Arbitrary<Record<string, unknown>>;

  /** Exact-match pattern of every leaf (arrays: one of their elements); empty objects are left out. */
  function patternOf(value: Record<string, unknown>, pick: number): Record<string, unknown> | undefined {
    // Object.fromEntries keeps keys such as "__proto__" as own fields.
    const out: Array<[string, unknown]> = [];
    for (const [k, v] of Object.entries(value)) {
      if (Array.isArray(v)) out.push([k, [v[pick % v.length]]]);
      else if (v !== null && typeof v === 'object') {
        const inner = patternOf(v as Record<string, unknown>, pick);
        if (inner) out.push([k, inner]);
      } else out.push([k, [v]]);
    }
    return out.length > 0 ? Object.fromEntries(out) : undefined;
  }

  it('holds for generic JSON records', () => {
    fc.assert(
      fc.property(record, fc.nat(), (r, pick) => {
        const pattern = patternOf(r, pick);
        fc.pre(pattern !== undefined);
        return compileFilterCriteria({ filters: [{ pattern: JSON.stringify(pattern) }] })(r);
      }),
      { numRuns: 300 },
    );
  });

  it('holds for Tributary stream records built from readings', () => {
    const reading = fc.dictionary(
      fc.stringMatching(/^[a-z][a-z0-9_]{0,7}$/),
      fc.oneof(fc.string(), fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }), fc.boolean()),
      { minKeys: 1, maxKeys: 5 },
    );
    fc.assert(
      fc.property(reading, fc.constantFrom<'INSERT' | 'MODIFY'>('INSERT', 'MODIFY'), fc.nat(), (values, eventName, pick) => {
        const r = toStreamRecord({ ...base, eventName, newValues: values, oldValues: eventName === 'MODIFY' ? values : undefined }, ARN);
        const plain = JSON.parse(JSON.stringify(r)) as Record<string, unknown>;
        const pattern = patternOf(plain, pick);
        const f = compileFilterCriteria({ filters: [{ pattern: JSON.stringify(pattern) }] });
        return f(r) && f.warnings.length === 0;
      }),
      { numRuns: 200 },
    );
  });
});

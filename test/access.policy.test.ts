/**
 * Policy evaluation as a table: which (action, device) each policy allows, how globs
 * match, and what `validatePolicy` refuses.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ACTIONS, compilePattern, compilePolicy, validatePolicy, type Action, type Policy } from '../access/policy.js';
import { isTributaryError } from '../core/errors.js';

describe('compilePattern', () => {
  it.each([
    ['*', 'anything', true],
    ['*', 'a', true],
    ['site-7-*', 'site-7-boiler', true],
    ['site-7-*', 'site-7-', true],
    ['site-7-*', 'site-70-boiler', false],
    ['site-7*', 'site-70', true],
    ['site-7:*', 'site-7:pump.2', true],
    ['*:boiler', 'site-7:boiler', true],
    ['*:boiler', 'site-7:boiler2', false],
    ['a.b', 'a.b', true],
    ['a.b', 'axb', false],
    ['s*-*x', 's1-2x', true],
    ['s*-*x', 's1x', false],
    ['exact', 'exact', true],
    ['exact', 'Exact', false],
    ['exact', 'exactly', false],
  ])('%s matches %s: %s', (pattern, id, expected) => {
    expect(compilePattern(pattern)(id)).toBe(expected);
  });

  it('a pattern without * matches exactly its own id, and * matches every id', () => {
    const id = fc.stringMatching(/^[A-Za-z0-9._:-]{1,32}$/);
    fc.assert(fc.property(id, id, (a, b) => compilePattern(a)(b) === (a === b) && compilePattern('*')(b)));
  });
});

const site7Reader: Policy = { statements: [{ actions: ['telemetry:Read', 'streams:Read'], devices: ['site-7-*'] }] };
const writerAndReader: Policy = {
  statements: [
    { actions: ['telemetry:Write'], devices: ['sensor-1', 'sensor-2'] },
    { actions: ['telemetry:Read'], devices: ['*'] },
  ],
};
const site7Admin: Policy = { statements: [{ actions: ['admin:*'], devices: ['site-7-*'] }] };
const deployer: Policy = { statements: [{ actions: ['functions:Deploy', 'functions:Invoke'], devices: ['*'] }] };
const scopedDeployer: Policy = { statements: [{ actions: ['functions:Deploy'], devices: ['site-7-*'] }] };
const admin: Policy = { statements: [{ actions: ['admin:*'], devices: ['*'] }] };
const empty: Policy = { statements: [] };

type Row = [name: string, policy: Policy, action: Action, device: string, allows: boolean];
const TABLE: Row[] = [
  ['site-7 reader reads site-7', site7Reader, 'telemetry:Read', 'site-7-a', true],
  ['site-7 reader cannot read site-8', site7Reader, 'telemetry:Read', 'site-8-a', false],
  ['site-7 reader cannot write site-7', site7Reader, 'telemetry:Write', 'site-7-a', false],
  ['site-7 reader streams site-7', site7Reader, 'streams:Read', 'site-7-a', true],
  ['site-7 reader cannot manage devices', site7Reader, 'devices:Manage', 'site-7-a', false],
  ['writer writes sensor-1', writerAndReader, 'telemetry:Write', 'sensor-1', true],
  ['writer cannot write sensor-3', writerAndReader, 'telemetry:Write', 'sensor-3', false],
  ['writer reads anything', writerAndReader, 'telemetry:Read', 'sensor-3', true],
  ['site-7 admin manages site-7', site7Admin, 'devices:Manage', 'site-7-x', true],
  ['site-7 admin cannot manage site-8', site7Admin, 'devices:Manage', 'site-8-x', false],
  ['deployer cannot read telemetry', deployer, 'telemetry:Read', 'x', false],
  ['admin reads', admin, 'telemetry:Read', 'x', true],
  ['admin manages', admin, 'devices:Manage', 'x', true],
  ['empty allows nothing', empty, 'telemetry:Read', 'x', false],
];

describe('compilePolicy', () => {
  it.each(TABLE)('%s', (_name, policy, action, device, allows) => {
    expect(compilePolicy(validatePolicy(policy)).allows(action, device)).toBe(allows);
  });

  it.each([
    ['site-7 reader', site7Reader, 'telemetry:Read', true, false],
    ['site-7 reader', site7Reader, 'telemetry:Write', false, false],
    ['writer', writerAndReader, 'telemetry:Read', true, true],
    ['writer', writerAndReader, 'telemetry:Write', true, false],
    ['deployer', deployer, 'functions:Deploy', true, true],
    ['scoped deployer (not every device)', scopedDeployer, 'functions:Deploy', true, false],
    ['site-7 admin: not key management', site7Admin, 'admin:*', true, false],
    ['admin', admin, 'admin:*', true, true],
    ['empty', empty, 'streams:Read', false, false],
  ] as Array<[string, Policy, Action, boolean, boolean]>)('%s: %s on some device %s, on every device %s', (_name, policy, action, any, all) => {
    const p = compilePolicy(policy);
    expect(p.allowsAny(action)).toBe(any);
    expect(p.allowsAll(action)).toBe(all);
  });

  it('admin:* on * allows every action on every device', () => {
    const p = compilePolicy(admin);
    for (const a of ACTIONS) expect(p.allowsAll(a)).toBe(true);
  });
});

describe('validatePolicy', () => {
  it.each([
    ['an unknown action', { statements: [{ actions: ['telemetry:Delete'], devices: ['*'] }] }, 'policy.statements[0].actions'],
    ['no actions', { statements: [{ actions: [], devices: ['*'] }] }, 'policy.statements[0].actions'],
    ['no devices', { statements: [{ actions: ['telemetry:Read'], devices: [] }] }, 'policy.statements[0].devices'],
    ['a slash in a pattern', { statements: [{ actions: ['telemetry:Read'], devices: ['site-7/*'] }] }, 'policy.statements[0].devices'],
    ['statements not an array', { statements: 'all' }, 'policy.statements'],
  ])('refuses %s with ValidationError naming the field', (_name, policy, field) => {
    let caught: unknown;
    try {
      validatePolicy(policy as unknown as Policy);
    } catch (err) {
      caught = err;
    }
    expect(isTributaryError(caught) && caught.code === 'ValidationError' && caught.field === field).toBe(true);
  });
});

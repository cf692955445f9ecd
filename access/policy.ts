/**
 * API key policies, IAM-like and least-privilege: a policy is a list of statements,
 * each allowing some actions on the devices whose ids match some patterns. Nothing is
 * allowed unless a statement allows it; there are no deny statements.
 *
 * Device patterns are globs over the whole device id: `*` matches any run of
 * characters (none included), every other character matches itself. Device ids cannot
 * contain `/` (API.md), so "everything of site 7" is written with the id's own
 * separator: `site-7-*` or `site-7:*`. (`site-7*` would match `site-70` too.) `*` alone
 * is every device.
 *
 * Actions on functions (deploy, invoke, logs, triggers, replay) and the dead-letter
 * queue are not about one device: a function sees every device's records and may
 * write to any device. So routes of that kind require the action on *every* device
 * (`allowsAll`), which only a statement with the pattern `*` gives.
 *
 * @module
 */
import { TributaryError } from '../core/errors.js';

/** The actions a statement can allow. `admin:*` allows every action, key and audit-log management included. */
export const ACTIONS = ['telemetry:Read', 'telemetry:Write', 'devices:Manage', 'functions:Deploy', 'functions:Invoke', 'streams:Read', 'admin:*'] as const;
export type Action = (typeof ACTIONS)[number];

/** A device pattern: 1-128 characters of the device-id alphabet plus `*`. */
export const DEVICE_PATTERN_PATTERN = '^[A-Za-z0-9._:*-]{1,128}$';
const DEVICE_PATTERN_RE = new RegExp(DEVICE_PATTERN_PATTERN);

/** Most statements in a policy, and most actions or patterns in a statement. */
export const MAX_STATEMENTS = 20;
export const MAX_ENTRIES = 50;

export interface PolicyStatement {
  actions: Action[];
  devices: string[];
}

export interface Policy {
  statements: PolicyStatement[];
}

/** The policy of the admin key (and of open mode): everything. */
export const ADMIN_POLICY: Policy = Object.freeze({ statements: [{ actions: ['admin:*'], devices: ['*'] }] }) as Policy;

/** A policy compiled for evaluation (patterns turned into matchers, once per key). */
export interface CompiledPolicy {
  /** True when `action` is allowed on `deviceId`. */
  allows(action: Action, deviceId: string): boolean;
  /** True when `action` is allowed on at least one device: the gate of a route that filters by device afterwards. */
  allowsAny(action: Action): boolean;
  /** True when `action` is allowed on every device (a statement with the pattern `*`). */
  allowsAll(action: Action): boolean;
}

type Matcher = (deviceId: string) => boolean;

/** Compiles one glob into a matcher; plain patterns compare, `*` alone matches all. */
export function compilePattern(pattern: string): Matcher {
  if (pattern === '*' || /^\*+$/.test(pattern)) return () => true;
  if (!pattern.includes('*')) return (id) => id === pattern;
  const source = pattern
    .split('*')
    .map((part) => part.replace(/[.]/g, '\\.'))
    .join('.*');
  const re = new RegExp(`^${source}$`);
  return (id) => re.test(id);
}

/**
 * Checks a policy's shape and values (the API's schema checks its JSON form; this is
 * the authority, also for the CLI and tests).
 * @throws TributaryError `ValidationError` naming the offending field.
 */
export function validatePolicy(policy: Policy): Policy {
  const fail = (field: string, message: string): never => {
    throw new TributaryError('ValidationError', message, { field });
  };
  if (!Array.isArray(policy.statements)) fail('policy.statements', 'policy.statements must be an array');
  if (policy.statements.length > MAX_STATEMENTS) fail('policy.statements', `a policy has at most ${MAX_STATEMENTS} statements`);
  policy.statements.forEach((s, i) => {
    const at = `policy.statements[${i}]`;
    if (!Array.isArray(s.actions) || s.actions.length === 0 || s.actions.length > MAX_ENTRIES) fail(`${at}.actions`, `${at}.actions must list 1-${MAX_ENTRIES} actions`);
    for (const a of s.actions) if (!(ACTIONS as readonly string[]).includes(a)) fail(`${at}.actions`, `unknown action ${JSON.stringify(a)}; actions: ${ACTIONS.join(', ')}`);
    if (!Array.isArray(s.devices) || s.devices.length === 0 || s.devices.length > MAX_ENTRIES) fail(`${at}.devices`, `${at}.devices must list 1-${MAX_ENTRIES} device patterns`);
    for (const d of s.devices) {
      if (typeof d !== 'string' || !DEVICE_PATTERN_RE.test(d)) fail(`${at}.devices`, `device pattern ${JSON.stringify(d)} must be 1-128 characters of A-Z a-z 0-9 . _ : - and * (a glob over the device id)`);
    }
  });
  return policy;
}

/** Compiles a (valid) policy. `admin:*` in a statement stands for every action of that statement's devices. */
export function compilePolicy(policy: Policy): CompiledPolicy {
  const statements = policy.statements.map((s) => ({
    actions: new Set<Action>(s.actions),
    matchers: s.devices.map(compilePattern),
    all: s.devices.some((d) => /^\*+$/.test(d)),
  }));
  const grants = (s: (typeof statements)[number], action: Action) => s.actions.has(action) || s.actions.has('admin:*');
  return {
    allows: (action, deviceId) => statements.some((s) => grants(s, action) && s.matchers.some((m) => m(deviceId))),
    allowsAny: (action) => statements.some((s) => grants(s, action)),
    allowsAll: (action) => statements.some((s) => grants(s, action) && s.all),
  };
}

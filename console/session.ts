/**
 * Who is signed in (`GET /v1/whoami`) and what their policy allows, so pages leave out
 * what the key may not see instead of asking and being refused. The server still decides
 * every request; this only mirrors its rule (access/policy.ts: a statement allows an
 * action on a device when it lists the action, or `admin:*`, and a glob matching the device).
 */
interface Statement {
  actions: string[];
  devices: string[];
}
export interface WhoAmI {
  mode: 'open' | 'secured';
  keyId: string | null;
  name: string | null;
  policy: { statements: Statement[] } | null;
}

let me: WhoAmI = { mode: 'open', keyId: null, name: null, policy: null };

export function setSession(who: WhoAmI): void {
  me = who;
}

const grants = (s: Statement, action: string) => s.actions.includes(action) || s.actions.includes('admin:*');

/** The action on every device (pattern `*`), as the function, DLQ and store-wide routes need. */
export function allowsAll(action: string): boolean {
  return me.policy === null || me.policy.statements.some((s) => grants(s, action) && s.devices.includes('*'));
}

/** The action on some device, as lists filtered by the policy need. */
export function allowsAny(action: string): boolean {
  return me.policy === null || me.policy.statements.some((s) => grants(s, action));
}

export function isSecured(): boolean {
  return me.mode === 'secured';
}

/** The admin pages (API keys, audit log) need admin:* on every device. */
export function isAdmin(): boolean {
  return allowsAll('admin:*');
}

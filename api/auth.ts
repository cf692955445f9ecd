/**
 * Access control of the HTTP API, declared per route and enforced in one place.
 *
 * Every route says what it needs in its `config.access`:
 * - `'public'`: open in every mode (`/healthz`, `/readyz`, `/openapi.json`, `/docs`,
 *   CORS preflights, which by the Fetch standard never carry credentials);
 * - `'authenticated'`: any valid key, whatever its policy (`/metrics`: a scraper gets a
 *   key with an empty policy instead of a powerful one);
 * - `{ action, device: 'id' }`: the action on the device named by that path parameter;
 * - `{ action, allDevices: true }`: the action on every device (functions and the
 *   dead-letter queue, whose work spans devices; see `access/policy.ts`);
 * - `{ action }`: the action on some device; the handler filters what it lists with
 *   `request.access.allowsDevice(id)` (device lists, stream reads, the tail, rejects).
 *
 * In secured mode a request needs `Authorization: Bearer <key>`: 401 Unauthorized
 * without one or with one that does not verify, 403 AccessDenied outside its policy.
 * A route that declares nothing is denied (fail closed). Unknown paths answer 404 as
 * usual: every route is listed in `/openapi.json` anyway. In open mode everything is
 * allowed and `request.access.allowsDevice` is always true.
 *
 * Administrative requests (non-GET routes whose action is `devices:Manage`,
 * `functions:Deploy` or `admin:*`) are written to the audit log before the response
 * leaves, refused ones included.
 *
 * @module
 */
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { ApiKeyStore, Principal } from '../access/api-keys.js';
import type { AuditLog } from '../access/audit-log.js';
import type { SecurityMode } from '../access/mode.js';
import type { Action } from '../access/policy.js';
import { TributaryError } from '../core/errors.js';
import { DOCS_PREFIX, OPENAPI_PATH } from './openapi.js';

/** What a route requires; see the module comment. */
export type RouteAccess = 'public' | 'authenticated' | { action: Action; device?: string; allDevices?: true };

/**
 * Route config of the routes that act on functions, their triggers and the DLQ: a
 * function sees every device's records, so these need their action on every device.
 */
export function onAllDevices(action: Action): { access: RouteAccess } {
  return { access: { action, allDevices: true } };
}

/** What a handler may ask about the request's key. */
export interface RequestAccess {
  /** The verified key; null in open mode and on public routes. */
  readonly keyId: string | null;
  /** True when the route's action is allowed on `deviceId` (always true in open mode). */
  allowsDevice(deviceId: string): boolean;
  /** True when the route's action is allowed on every device (always true in open mode): for entries that name no device. */
  allowsAllDevices(): boolean;
}

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: RouteAccess;
  }
  interface FastifyRequest {
    access: RequestAccess;
  }
}

export interface AuthOptions {
  mode: SecurityMode;
  /** Keys that verify bearer tokens (required in secured mode). */
  keys?: ApiKeyStore;
  /** Where administrative requests are recorded; none: not recorded. */
  audit?: AuditLog;
}

const ADMINISTRATIVE: ReadonlySet<Action> = new Set<Action>(['devices:Manage', 'functions:Deploy', 'admin:*']);

const OPEN: RequestAccess = Object.freeze({ keyId: null, allowsDevice: () => true, allowsAllDevices: () => true });
const NOBODY: RequestAccess = Object.freeze({ keyId: null, allowsDevice: () => false, allowsAllDevices: () => false });

/**
 * What the request's key may do. A route plugin registered without {@link accessControl}
 * (tested on its own) has no access control at all, so everything is allowed, as in open mode.
 */
export function accessOf(request: FastifyRequest): RequestAccess {
  return (request.access as RequestAccess | null | undefined) ?? OPEN;
}

/** The bearer token of a request, or undefined when there is none. */
export function bearerToken(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (header === undefined) return undefined;
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
  return m?.[1];
}

function unauthorized(reply: FastifyReply, message: string): TributaryError {
  // RFC 6750 section 3: a 401 names the scheme the client should use.
  void reply.header('www-authenticate', 'Bearer realm="tributary"');
  return new TributaryError('Unauthorized', message);
}

function denied(principal: Principal, what: string): TributaryError {
  return new TributaryError('AccessDenied', `API key ${principal.keyId} is not allowed ${what}`);
}

/** Routes registered by plugins that cannot carry a config: the self-description and CORS preflights. */
function impliedAccess(method: string | string[], url: string): RouteAccess | undefined {
  if (url === OPENAPI_PATH || url === DOCS_PREFIX || url.startsWith(`${DOCS_PREFIX}/`)) return 'public';
  if (method === 'OPTIONS' && url === '*') return 'public';
  return undefined;
}

/** Whether requests to a route are recorded in the audit log. */
export function isAdministrative(method: string, access: RouteAccess | undefined): boolean {
  return typeof access === 'object' && ADMINISTRATIVE.has(access.action) && method !== 'GET' && method !== 'HEAD';
}

/**
 * Decides a request in secured mode.
 * @throws TributaryError `Unauthorized` or `AccessDenied`.
 */
function authorize(request: FastifyRequest, reply: FastifyReply, keys: ApiKeyStore | undefined, access: RouteAccess | undefined): RequestAccess {
  if (access === 'public') return NOBODY;
  const token = bearerToken(request);
  if (token === undefined) {
    throw unauthorized(reply, request.headers.authorization === undefined ? 'this server is in secured mode: send an API key as `Authorization: Bearer <key>`' : 'the Authorization header must read `Bearer <key>`');
  }
  const principal = keys?.verify(token);
  if (principal === undefined) throw unauthorized(reply, 'the API key does not verify (unknown, deleted, or mistyped)');
  // Set before the policy checks, so that a refusal is audited under the key that was refused.
  request.access = { keyId: principal.keyId, allowsDevice: () => false, allowsAllDevices: () => false };
  if (access === 'authenticated') return request.access;
  // Fail closed: a route someone forgot to declare is nobody's.
  if (access === undefined) throw new TributaryError('AccessDenied', `${request.method} ${request.routeOptions.url ?? ''} declares no action, so no key may call it`);
  const { action } = access;
  const { policy } = principal;
  if (access.device !== undefined) {
    const deviceId = (request.params as Record<string, string | undefined>)[access.device] ?? '';
    if (!policy.allows(action, deviceId)) throw denied(principal, `${action} on device ${JSON.stringify(deviceId)}`);
  } else if (access.allDevices === true) {
    if (!policy.allowsAll(action)) throw denied(principal, `${action} (it needs the action on every device, pattern "*")`);
  } else if (!policy.allowsAny(action)) {
    throw denied(principal, action);
  }
  return { keyId: principal.keyId, allowsDevice: (id) => policy.allows(action, id), allowsAllDevices: () => policy.allowsAll(action) };
}

/**
 * Plugin: the access hooks. Marked `skip-override` (as `errorHandling` is) so they
 * apply to every route plugin registered after it; must also come before the
 * self-description (`openApi`), whose routes it marks public.
 */
export const accessControl: FastifyPluginAsync<AuthOptions> = async (app, opts) => {
  if (opts.mode === 'secured' && opts.keys === undefined) throw new Error('secured mode needs an API key store');
  // Null until the onRequest hook sets it (fastify 5 refuses object defaults, which would be shared).
  app.decorateRequest('access', null as unknown as RequestAccess);

  app.addHook('onRoute', (route) => {
    const implied = route.config?.access === undefined ? impliedAccess(route.method, route.url) : undefined;
    if (implied !== undefined) route.config = { ...route.config, access: implied };
  });

  const secured = opts.mode === 'secured';
  app.addHook('onRequest', async (request, reply) => {
    // No route matched: the 404 handler answers, and there is nothing to protect.
    if (request.is404) return;
    request.access = secured ? authorize(request, reply, opts.keys, request.routeOptions.config.access) : OPEN;
  });

  const audit = opts.audit;
  if (audit !== undefined) {
    app.addHook('onSend', async (request, reply, payload) => {
      // Access is unset when no key verified (401): no one to attribute, so logged, not audited.
      if (request.access === null || !isAdministrative(request.method, request.routeOptions.config.access)) return payload;
      try {
        await audit.record({
          keyId: request.access.keyId,
          method: request.method,
          route: request.routeOptions.url ?? '',
          path: (request.raw.url ?? '').split('?')[0] ?? '',
          status: reply.statusCode,
          requestId: String(request.id),
          sourceIp: request.ip,
        });
      } catch (err) {
        // The action has happened; failing its response would only hide that.
        request.log.error({ err }, 'could not write the audit log entry');
      }
      return payload;
    });
  }
};
Object.assign(accessControl, { [Symbol.for('skip-override')]: true, [Symbol.for('fastify.display-name')]: 'tributary-access' });

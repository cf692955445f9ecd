/**
 * Cluster mode (ADR 0002): a device's data lives on the node that owns its partition, so
 * the routes that read or change one device's stored data are answered there. Any node
 * takes the request, checks access as usual, and forwards it to the owner, passing the
 * answer back as it comes; the owner answers itself. While a partition moves (a node died,
 * a new owner is catching up) the answer is 503 StoreUnavailable, which clients retry.
 */
import { Readable } from 'node:stream';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { TributaryError } from '../core/errors.js';
import { stringifyJson } from '../core/numbers.js';

/** Where a device's queries are answered: here, at another node, or nowhere right now. */
export type DeviceRoute = { local: true } | { url: string } | { unavailable: string };

export interface DeviceRouter {
  route(deviceId: string): Promise<DeviceRoute>;
  /** A forward failed: drop cached ownership. */
  forwardFailed(): void;
}

/** The routes answered by the device's owner (method and route pattern). */
const OWNER_ROUTES = new Set([
  'GET /v1/devices/:id',
  'PUT /v1/devices/:id',
  'DELETE /v1/devices/:id',
  // Registers the device in its partition's registry before issuing the secret.
  'POST /v1/devices/:id/credentials',
  'GET /v1/devices/:id/telemetry',
  'GET /v1/devices/:id/telemetry/aggregate',
  'GET /v1/devices/:id/latest',
]);

/** Marks a forwarded request, so that a node that does not own the device (ownership moved meanwhile) refuses rather than forwards again. */
const FORWARDED = 'x-tributary-forwarded';
/** Request headers passed to the owner; the rest (host, connection, length) belong to the hop. */
const PASSED_REQUEST = ['authorization', 'accept', 'content-type', 'x-request-id'];
const PASSED_RESPONSE = ['content-type', 'content-disposition', 'retry-after', 'www-authenticate'];
const FORWARD_TIMEOUT_MS = 30_000;

async function forward(request: FastifyRequest, reply: FastifyReply, url: string, router: DeviceRouter): Promise<void> {
  const headers: Record<string, string> = { [FORWARDED]: '1' };
  for (const name of PASSED_REQUEST) {
    const value = request.headers[name];
    if (typeof value === 'string') headers[name] = value;
  }
  const hasBody = request.body !== undefined && request.method !== 'GET' && request.method !== 'HEAD';
  if (hasBody) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(new URL(request.url, url), {
      method: request.method,
      headers,
      // stringifyJson: a parsed ingest body may hold numbers kept as their digits.
      ...(hasBody ? { body: stringifyJson(request.body) } : {}),
      signal: AbortSignal.timeout(FORWARD_TIMEOUT_MS),
    });
  } catch (err) {
    router.forwardFailed();
    throw new TributaryError('StoreUnavailable', `cluster: the node that owns this device (${url}) did not answer; retry shortly`, { cause: err });
  }
  void reply.code(res.status);
  for (const name of PASSED_RESPONSE) {
    const value = res.headers.get(name);
    if (value !== null) void reply.header(name, value);
  }
  void reply.header(FORWARDED, url);
  await reply.send(res.body === null ? '' : Readable.fromWeb(res.body as import('node:stream/web').ReadableStream));
}

/** Plugin: forwards owner routes. Registered after access control, whose hooks run first. */
export const deviceForwarding: FastifyPluginAsync<{ router: DeviceRouter }> = async (app, { router }) => {
  app.addHook('preHandler', async (request, reply) => {
    if (!OWNER_ROUTES.has(`${request.method} ${request.routeOptions.url ?? ''}`)) return;
    const deviceId = (request.params as { id: string }).id;
    const route = await router.route(deviceId);
    if ('local' in route) return;
    if ('unavailable' in route) throw new TributaryError('StoreUnavailable', `cluster: ${route.unavailable}; retry shortly`);
    if (request.headers[FORWARDED] !== undefined) {
      throw new TributaryError('StoreUnavailable', 'cluster: the ownership of this device is moving between nodes; retry shortly');
    }
    await forward(request, reply, route.url, router);
    return reply;
  });
};
Object.assign(deviceForwarding, { [Symbol.for('skip-override')]: true, [Symbol.for('fastify.display-name')]: 'tributary-forwarding' });

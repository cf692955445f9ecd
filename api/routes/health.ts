/**
 * Liveness and readiness probes. They sit outside `/v1` because orchestrators
 * (Kubernetes, systemd, load balancers) probe fixed paths that must not move with
 * API versions.
 *
 * @module
 */
import type { FastifyPluginAsync } from 'fastify';
import { TributaryError } from '../../core/errors.js';
import { errorResponses, Health, NoQuery, Ready } from '../schemas.js';

/** Options of {@link healthRoutes}. */
export interface HealthRoutesOptions {
  /** True once the store is open and accepting writes. */
  ready: () => boolean;
}

/**
 * `GET /healthz`: the process answers (liveness; never touches the store, so a slow
 * disk does not get the process restarted). `GET /readyz`: the store accepts writes;
 * 503 StoreUnavailable otherwise, so a load balancer stops sending traffic.
 */
export const healthRoutes: FastifyPluginAsync<HealthRoutesOptions> = async (app, opts) => {
  app.get('/healthz', { schema: { querystring: NoQuery, response: { 200: Health, ...errorResponses } } }, async () => ({ status: 'ok' as const }));

  app.get('/readyz', { schema: { querystring: NoQuery, response: { 200: Ready, ...errorResponses } } }, async () => {
    if (!opts.ready()) throw new TributaryError('StoreUnavailable', 'the store is not ready');
    return { status: 'ready' as const };
  });
};

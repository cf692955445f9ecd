/**
 * Probes: liveness, readiness and Prometheus metrics. They sit outside `/v1` because
 * orchestrators and scrapers (Kubernetes, systemd, load balancers, Prometheus) use
 * fixed paths that must not move with API versions.
 *
 * @module
 */
import type { FastifyPluginAsync } from 'fastify';
import { Type } from '@sinclair/typebox';
import { TributaryError } from '../../core/errors.js';
import { errorResponses, Health, NoQuery, Ready } from '../schemas.js';

/** The part of a prom-client `Registry` that `/metrics` uses. */
export interface MetricsSource {
  readonly contentType: string;
  metrics(): Promise<string>;
}

/** Options of {@link healthRoutes}. */
export interface HealthRoutesOptions {
  /** True once the store is open and accepting writes. */
  ready: () => boolean;
  metrics?: MetricsSource;
}

/**
 * `GET /healthz`: the process answers (liveness; never touches the store, so a slow
 * disk does not get the process restarted). `GET /readyz`: the store accepts writes;
 * 503 StoreUnavailable otherwise, so a load balancer stops sending traffic.
 * `GET /metrics`: Prometheus text exposition, when a registry is given.
 */
export const healthRoutes: FastifyPluginAsync<HealthRoutesOptions> = async (app, opts) => {
  // Probes are open in every mode: orchestrators and load balancers carry no API key.
  app.get('/healthz', { config: { access: 'public' }, schema: { tags: ['health'], summary: 'Liveness probe', querystring: NoQuery, response: { 200: Health, ...errorResponses } } }, async () => ({ status: 'ok' as const }));

  app.get('/readyz', { config: { access: 'public' }, schema: { tags: ['health'], summary: 'Readiness probe: the store accepts writes', querystring: NoQuery, response: { 200: Ready, ...errorResponses } } }, async () => {
    if (!opts.ready()) throw new TributaryError('StoreUnavailable', 'the store is not ready');
    return { status: 'ready' as const };
  });

  const metrics = opts.metrics;
  if (metrics !== undefined) {
    app.get(
      '/metrics',
      // The 200 body is text, sent as-is (fastify serializes only JSON); the schema documents it.
      // Any valid key may scrape (in secured mode), so a scraper needs no powerful one.
      { config: { access: 'authenticated' }, schema: { tags: ['health'], summary: 'Prometheus metrics', querystring: NoQuery, response: { 200: Type.String({ description: 'Prometheus text exposition format.' }), ...errorResponses } } },
      async (_request, reply) => reply.type(metrics.contentType).send(await metrics.metrics()),
    );
  }
};

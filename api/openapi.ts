/**
 * The API's self-description: `GET /openapi.json`, an OpenAPI 3.1 document generated
 * by `@fastify/swagger` from the route schemas (so it cannot drift from what the
 * routes validate and serialize), and `GET /docs`, Swagger UI served from the files
 * of the installed `@fastify/swagger-ui` package (no CDN, nothing fetched at runtime).
 * Neither route appears in the document itself.
 *
 * Must be registered before the route plugins: `@fastify/swagger` collects routes
 * with an `onRoute` hook, which only sees routes declared after it.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifySwagger, { type SwaggerTransformObject } from '@fastify/swagger';
import fastifySwaggerUi from '@fastify/swagger-ui';
import type { FastifyPluginAsync } from 'fastify';

/** Where the document is served. */
export const OPENAPI_PATH = '/openapi.json';
/** Prefix of the browsable docs (Swagger UI). */
export const DOCS_PREFIX = '/docs';

/**
 * Tributary's version from its `package.json`. Found by walking up from this module,
 * which sits at `api/` when run from source and at `dist/api/` when compiled.
 */
export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'tributary' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // No (readable) package.json here; keep walking up.
    }
    const parent = dirname(dir);
    if (parent === dir) return '0.0.0';
    dir = parent;
  }
}

/** Tags of the document, in display order; route schemas refer to them by name. */
const TAGS = [
  { name: 'health', description: 'Liveness, readiness and Prometheus metrics.' },
  { name: 'devices', description: 'Device registry.' },
  { name: 'telemetry', description: 'Ingest, range queries, aggregation and latest readings.' },
  { name: 'streams', description: 'DynamoDB-Streams-style change stream: shards, records and a live tail.' },
  { name: 'functions', description: 'Deployed functions: versions and invocation.' },
  { name: 'access', description: 'API keys with their policies, and the audit log of administrative requests.' },
];

/**
 * Routes whose 200 body is text, not JSON: fastify serializes only JSON, so their
 * schemas declare a plain string, and the document would list it as
 * `application/json`. Keyed by the document's path; the value is the real media type.
 */
const TEXT_RESPONSES: Record<string, string> = {
  '/metrics': 'text/plain; version=0.0.4',
  '/v1/streams/tail': 'text/event-stream',
  '/v1/functions/{name}/logs/tail': 'text/event-stream',
};

type LooseDocument = { paths?: Record<string, { get?: { responses?: Record<string, { content?: Record<string, unknown> }> } }> };

/** Relabels the 200 responses of {@link TEXT_RESPONSES} with their media type. */
export function relabelTextResponses<T extends LooseDocument>(doc: T): T {
  for (const [path, mediaType] of Object.entries(TEXT_RESPONSES)) {
    const ok = doc.paths?.[path]?.get?.responses?.['200'];
    const json = ok?.content?.['application/json'];
    if (ok !== undefined && json !== undefined) ok.content = { [mediaType]: json };
  }
  return doc;
}

/**
 * Plugin: the document and the docs. Marked `skip-override` (as `errorHandling` is) so
 * that `@fastify/swagger`'s route collector sits on the root instance and sees the
 * routes of every sibling plugin registered after this one.
 */
export const openApi: FastifyPluginAsync = async (app) => {
  await app.register(fastifySwagger, {
    openapi: {
      // 3.1: its schema objects are JSON Schema 2020-12, so the route schemas' type
      // arrays (`["string", "null"]`) carry over unchanged.
      openapi: '3.1.0',
      info: {
        title: 'Tributary',
        version: packageVersion(),
        description:
          'Self-hosted IoT telemetry backend. Times are epoch milliseconds; every error answers with its HTTP status and `{ "error": { "code", "message", "field"? } }` (codes in docs/errors.md).',
      },
      // No `servers`: paths are relative to wherever the document was fetched from.
      tags: TAGS,
      components: {
        securitySchemes: {
          apiKey: {
            type: 'http',
            scheme: 'bearer',
            description: 'An API key (`tak_...`) as `Authorization: Bearer <key>`. Required in secured mode; open mode (loopback only) accepts anonymous requests.',
          },
        },
      },
      security: [{ apiKey: [] }],
    },
    // Routes open in every mode (api/auth.ts) say so: an empty `security` overrides the default.
    transform: ({ schema, url, route }) => ({ schema: route.config?.access === 'public' && schema !== undefined ? { ...schema, security: [] } : schema, url }),
    transformObject: (doc) => ('openapiObject' in doc ? relabelTextResponses(doc.openapiObject as LooseDocument) : doc.swaggerObject) as ReturnType<SwaggerTransformObject>,
  });

  await app.register(fastifySwaggerUi, {
    routePrefix: DOCS_PREFIX,
    // The UI loads the document from `/docs/json` (the same document, also hidden).
    // `validatorUrl` left unset renders as null: the page never calls validator.swagger.io.
  });

  app.get(OPENAPI_PATH, { schema: { hide: true } }, async () => app.swagger());
};
Object.assign(openApi, { [Symbol.for('skip-override')]: true, [Symbol.for('fastify.display-name')]: 'tributary-openapi' });

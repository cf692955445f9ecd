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

type LooseOperation = { requestBody?: { required?: boolean; content?: Record<string, { schema?: Record<string, unknown> }> }; responses?: Record<string, { content?: Record<string, unknown> }> };
type LooseDocument = { paths?: Record<string, Record<string, LooseOperation>> };

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
 * Marks request bodies optional where the route accepts none. `@fastify/swagger` marks
 * every declared body required, but a body schema without a type (the trigger settings,
 * validated by the trigger manager) accepts an absent body too: Ajv passes `undefined`.
 */
export function markOptionalBodies<T extends LooseDocument>(doc: T): T {
  for (const item of Object.values(doc.paths ?? {})) {
    for (const op of Object.values(item)) {
      const body = op.requestBody;
      const schemas = Object.values(body?.content ?? {}).map((media) => media.schema ?? {});
      if (body !== undefined && schemas.length > 0 && schemas.every((s) => s['type'] === undefined && s['anyOf'] === undefined && s['oneOf'] === undefined && s['allOf'] === undefined && s['$ref'] === undefined)) body.required = false;
    }
  }
  return doc;
}

/** What every `?cursor=` takes, beyond the string its schema says. */
export const CURSOR_RULE = 'Only a `nextCursor` of this list, unchanged and with the same other parameters, is accepted; any other value answers 400 InvalidParameter.';

type LooseParameter = { name?: string; in?: string; description?: string };

/** Adds {@link CURSOR_RULE} to every `cursor` query parameter (a rule no JSON Schema can say). */
export function describeCursors<T extends LooseDocument>(doc: T): T {
  for (const item of Object.values(doc.paths ?? {})) {
    for (const op of Object.values(item) as Array<{ parameters?: LooseParameter[] }>) {
      for (const p of op.parameters ?? []) {
        if (p.in === 'query' && p.name === 'cursor') p.description = p.description === undefined ? CURSOR_RULE : `${p.description} ${CURSOR_RULE}`;
      }
    }
  }
  return doc;
}

/** Options of {@link openApi}. */
export interface OpenApiOptions {
  /** Secured mode: every route but the public ones requires an API key. Open mode requires none. */
  secured: boolean;
}

/**
 * Plugin: the document and the docs. Marked `skip-override` (as `errorHandling` is) so
 * that `@fastify/swagger`'s route collector sits on the root instance and sees the
 * routes of every sibling plugin registered after this one.
 */
export const openApi: FastifyPluginAsync<OpenApiOptions> = async (app, { secured }) => {
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
      // Open mode (api/auth.ts) requires no credentials: no requirement is declared at all.
      ...(secured ? { security: [{ apiKey: [] }] } : {}),
    },
    // Routes open in every mode (api/auth.ts) say so: an empty `security` overrides the default.
    transform: ({ schema, url, route }) => ({ schema: secured && route.config?.access === 'public' && schema !== undefined ? { ...schema, security: [] } : schema, url }),
    transformObject: (doc) => ('openapiObject' in doc ? describeCursors(markOptionalBodies(relabelTextResponses(doc.openapiObject as LooseDocument))) : doc.swaggerObject) as ReturnType<SwaggerTransformObject>,
  });

  await app.register(fastifySwaggerUi, {
    routePrefix: DOCS_PREFIX,
    // The UI loads the document from `/docs/json` (the same document, also hidden).
    // `validatorUrl` left unset renders as null: the page never calls validator.swagger.io.
  });

  app.get(OPENAPI_PATH, { schema: { hide: true } }, async () => app.swagger());
};
Object.assign(openApi, { [Symbol.for('skip-override')]: true, [Symbol.for('fastify.display-name')]: 'tributary-openapi' });

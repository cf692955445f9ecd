/**
 * Function routes (`/v1/functions`): deploy (each `PUT` is a new version), list, get,
 * delete, and invoke once with a given event. Deployed functions are not attached to the
 * change stream here (that is what triggers do).
 *
 * @module
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import type { FunctionRegistry } from '../../functions/registry.js';
import type { FunctionRuntime } from '../../functions/types.js';
import { InvokeResultBody, invokeResultBody } from '../invoke-result.js';
import { DEFAULT_LIMIT, errorResponses, MAX_LIMIT, NoQuery } from '../schemas.js';

/** Options of {@link functionRoutes}. */
export interface FunctionRoutesOptions {
  registry: FunctionRegistry;
  runtime: FunctionRuntime;
}

/**
 * Largest deploy body. Code may be 5 MiB (checked by the registry, in bytes); its JSON
 * escaping (quotes, backslashes, newlines) can make the body larger than that.
 */
const DEPLOY_BODY_LIMIT = 12 * 1024 * 1024;
/** Largest event for an invocation: Lambda's limit for a synchronous payload. */
const INVOKE_BODY_LIMIT = 6 * 1024 * 1024;

const FunctionNameParams = Type.Object(
  { name: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'Function name: 1-64 characters of A-Z a-z 0-9 _ -' }) },
  { additionalProperties: false },
);
type FunctionNameParams = Static<typeof FunctionNameParams>;

const ModuleType = Type.Unsafe<'esm' | 'commonjs'>({
  type: 'string',
  enum: ['esm', 'commonjs'],
  description: '`esm` (stored as `index.mjs`) or `commonjs` (`index.cjs`); detected from the code when absent (`exports.handler` / `module.exports` without an `export` statement: commonjs).',
});

const Environment = Type.Record(Type.String(), Type.String(), {
  description: 'Environment variables of the function process: names of letters, digits and _ (not starting with a digit); at most 4 KiB in all.',
});

const DeployBody = Type.Object(
  {
    code: Type.String({ minLength: 1, description: 'The handler module source (at most 5 MiB of UTF-8), exporting `handler(event, context)`.' }),
    timeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 900_000, description: 'Invocation timeout; the server default (`--function-timeout-ms`) when absent.' })),
    memoryMb: Type.Optional(Type.Integer({ minimum: 16, maximum: 10_240, description: 'Memory cap; the server default (`--function-memory-mb`) when absent.' })),
    environment: Type.Optional(Environment),
    moduleType: Type.Optional(ModuleType),
  },
  { additionalProperties: false },
);
type DeployBody = Static<typeof DeployBody>;

const FunctionVersionBody = Type.Object({
  name: Type.String(),
  version: Type.Integer({ description: 'Versions count up from 1 with each deploy and never repeat.' }),
  codeSha256: Type.String({ description: 'SHA-256 of the code (hex).' }),
  codeSize: Type.Integer({ description: 'Bytes of code.' }),
  moduleType: ModuleType,
  timeoutMs: Type.Integer(),
  memoryMb: Type.Integer(),
  environment: Environment,
  createdAt: Type.Integer({ description: 'Deploy time, epoch ms.' }),
});

const FunctionInfoBody = Type.Object({
  ...FunctionVersionBody.properties,
  versions: Type.Array(
    Type.Object({ version: Type.Integer(), codeSha256: Type.String(), codeSize: Type.Integer(), moduleType: ModuleType, createdAt: Type.Integer() }),
    { description: 'Every kept version, oldest first; the function itself is the latest.' },
  ),
});

const FunctionPageBody = Type.Object({
  items: Type.Array(FunctionVersionBody, { description: 'The latest version of each function, by name.' }),
  nextCursor: Type.Unsafe<string | null>({ type: ['string', 'null'], description: 'Pass as `?cursor=` to get the next page; null on the last page.' }),
});

const ListFunctionsQuery = Type.Object(
  {
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_LIMIT, default: DEFAULT_LIMIT, description: `Page size, 1..${MAX_LIMIT}.` })),
    cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: 'Opaque cursor from the previous page\'s `nextCursor`.' })),
  },
  { additionalProperties: false },
);
type ListFunctionsQuery = Static<typeof ListFunctionsQuery>;

export const functionRoutes: FastifyPluginAsync<FunctionRoutesOptions> = async (app, { registry, runtime }) => {
  app.get<{ Querystring: ListFunctionsQuery }>(
    '/functions',
    { schema: { tags: ['functions'], summary: 'List functions (latest version of each)', querystring: ListFunctionsQuery, response: { 200: FunctionPageBody, ...errorResponses } } },
    async (request) => {
      const { limit = DEFAULT_LIMIT, cursor } = request.query;
      return registry.list(cursor === undefined ? { limit } : { limit, cursor });
    },
  );

  app.put<{ Params: FunctionNameParams; Body: DeployBody }>(
    '/functions/:name',
    {
      bodyLimit: DEPLOY_BODY_LIMIT,
      schema: { tags: ['functions'], summary: 'Deploy a new version of a function', params: FunctionNameParams, querystring: NoQuery, body: DeployBody, response: { 201: FunctionVersionBody, ...errorResponses } },
    },
    async (request, reply) => {
      const version = await registry.deploy(request.params.name, request.body);
      return reply.code(201).send(version);
    },
  );

  app.get<{ Params: FunctionNameParams }>(
    '/functions/:name',
    { schema: { tags: ['functions'], summary: 'Get a function: its latest version and the list of versions', params: FunctionNameParams, querystring: NoQuery, response: { 200: FunctionInfoBody, ...errorResponses } } },
    async (request) => registry.get(request.params.name),
  );

  app.delete<{ Params: FunctionNameParams }>(
    '/functions/:name',
    { schema: { tags: ['functions'], summary: 'Delete a function and every version of it', params: FunctionNameParams, querystring: NoQuery, response: { 204: { type: 'null', description: 'Deleted.' }, ...errorResponses } } },
    async (request, reply) => {
      await registry.delete(request.params.name);
      return reply.code(204).send();
    },
  );

  app.post<{ Params: FunctionNameParams; Body: unknown }>(
    '/functions/:name/invoke',
    {
      bodyLimit: INVOKE_BODY_LIMIT,
      schema: {
        tags: ['functions'],
        summary: 'Invoke the latest version once with the request body as the event',
        description: 'Answers 200 whatever the handler did; `status` says how it ended. Without a body the event is `{}`.',
        params: FunctionNameParams,
        querystring: NoQuery,
        response: { 200: InvokeResultBody, ...errorResponses },
      },
    },
    async (request) => {
      const fn = await registry.spec(request.params.name);
      const result = await runtime.invoke(fn, request.body ?? {});
      return invokeResultBody(result, fn.timeoutMs);
    },
  );
};

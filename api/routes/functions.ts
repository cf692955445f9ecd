/**
 * Function routes (`/v1/functions`): deploy (each `PUT` is a new version), list, get,
 * delete, invoke once with a given event, read captured logs, and replay a window of the
 * change stream (an asynchronous job). Deployed functions are not attached to the change
 * stream here (that is what triggers do).
 *
 * @module
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { parseTime } from '../../core/time.js';
import { LOG_LEVELS, type FunctionLogStore, type LogLevel } from '../../functions/logs.js';
import type { FunctionRegistry } from '../../functions/registry.js';
import { MAX_REPLAY_BATCH, type ReplayManager, type ReplayStatus } from '../../functions/replay.js';
import { MAX_PACKAGE_BYTES, MAX_PACKAGE_ENTRIES, MAX_UNPACKED_BYTES } from '../../functions/package.js';
import type { FunctionRuntime } from '../../functions/types.js';
import { TributaryError } from '../../core/errors.js';
import type { FilterCriteria } from '../../functions/filter-pattern.js';
import { InvokeResultBody, invokeResultBody } from '../invoke-result.js';
import { DEFAULT_LIMIT, errorResponses, MAX_LIMIT, NoQuery } from '../schemas.js';
import { onAllDevices } from '../auth.js';

/** Options of {@link functionRoutes}. */
export interface FunctionRoutesOptions {
  registry: FunctionRegistry;
  runtime: FunctionRuntime;
  /** Captured logs; `GET .../logs` exists only when given. */
  logs?: FunctionLogStore;
  /** Replay jobs; `.../replay` and `.../replays` exist only when given. */
  replays?: ReplayManager;
}

/**
 * Largest deploy body: a package of {@link MAX_PACKAGE_BYTES} in base64 (4/3 of it), or code
 * of 5 MiB (checked by the registry, in bytes), which JSON escaping (quotes, backslashes,
 * newlines) can make up to twice as large.
 */
const DEPLOY_BODY_LIMIT = Math.ceil(MAX_PACKAGE_BYTES / 3) * 4 + 64 * 1024;
const MIB = 1024 * 1024;
/** Largest event for an invocation: Lambda's limit for a synchronous payload. */
const INVOKE_BODY_LIMIT = 6 * 1024 * 1024;

export const FunctionNameParams = Type.Object(
  { name: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'Function name: 1-64 characters of A-Z a-z 0-9 _ -' }) },
  { additionalProperties: false },
);
export type FunctionNameParams = Static<typeof FunctionNameParams>;

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
    code: Type.Optional(Type.String({ minLength: 1, description: 'The handler module source (at most 5 MiB of UTF-8), exporting `handler(event, context)`. Give `code` or `package`.' })),
    package: Type.Optional(
      Type.String({
        minLength: 1,
        description:
          `A deployment package, base64 (as Lambda's \`ZipFile\`): a zip or a tarball (\`.tar.gz\`, \`.tgz\` or \`.tar\`) of the function's folder, files at its top, with \`package.json\` and \`node_modules\`. ` +
          `At most ${MAX_PACKAGE_BYTES / MIB} MiB as uploaded, ${MAX_UNPACKED_BYTES / MIB} MiB and ${MAX_PACKAGE_ENTRIES} entries unpacked; only files, folders and symbolic links that stay inside the package (no \`..\`, no absolute paths). Native addons (\`.node\`) cannot load.`,
      }),
    ),
    handler: Type.Optional(
      Type.String({ minLength: 1, maxLength: 256, description: "With `package`: Lambda's handler setting, the module's path in the package without its extension, then `.handler` (`src/app.handler` runs `src/app.js`, `.mjs` or `.cjs`, tried in that order). Default `index.handler`." }),
    ),
    timeoutMs: Type.Optional(Type.Integer({ minimum: 1, maximum: 900_000, description: 'Invocation timeout; the server default (`--function-timeout-ms`) when absent.' })),
    memoryMb: Type.Optional(Type.Integer({ minimum: 16, maximum: 10_240, description: 'Memory cap; the server default (`--function-memory-mb`) when absent.' })),
    environment: Type.Optional(Environment),
    moduleType: Type.Optional(ModuleType),
    network: Type.Optional(Type.Boolean({ description: 'Whether the function may open sockets (TCP, UDP, Unix-domain, DNS); default true, as in Lambda.' })),
  },
  { additionalProperties: false },
);
type DeployBody = Static<typeof DeployBody>;

const FunctionVersionBody = Type.Object({
  name: Type.String(),
  source: Type.Unsafe<'api' | 'functions-dir'>({
    type: 'string',
    enum: ['api', 'functions-dir'],
    description: '`api`: deployed with PUT. `functions-dir`: a file of `--functions-dir`, managed by that file (version 1; PUT and DELETE answer 409; invoke, logs, replay and triggers work as for any function).',
  }),
  file: Type.Optional(Type.String({ description: 'With source `functions-dir`: the file.' })),
  version: Type.Integer({ description: 'Versions count up from 1 with each deploy and never repeat.' }),
  codeSha256: Type.String({ description: 'SHA-256 of the code, or of the package as uploaded (hex).' }),
  codeSize: Type.Integer({ description: 'Bytes of code, or of the package as uploaded.' }),
  package: Type.Optional(
    Type.Object(
      {
        handler: Type.String({ description: 'The handler setting, e.g. `index.handler`.' }),
        module: Type.String({ description: 'The module it names, e.g. `index.mjs`.' }),
        format: Type.Unsafe<'zip' | 'tar'>({ type: 'string', enum: ['zip', 'tar'] }),
        entries: Type.Integer({ description: 'Files, folders and links unpacked.' }),
        unpackedBytes: Type.Integer(),
      },
      { description: 'Set when the version is a deployment package.' },
    ),
  ),
  moduleType: ModuleType,
  timeoutMs: Type.Integer(),
  memoryMb: Type.Integer(),
  environment: Environment,
  network: Type.Boolean({ description: 'Whether the function may open sockets.' }),
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

const TimeParam = (description: string) => Type.String({ minLength: 1, maxLength: 64, description: `${description} Epoch ms, ISO-8601, \`now\` or an offset such as \`-15m\`.` });

const LogsQuery = Type.Object(
  {
    from: Type.Optional(TimeParam('Oldest line (inclusive); default: the oldest kept.')),
    to: Type.Optional(TimeParam('End (exclusive); default: no end.')),
    level: Type.Optional(Type.Unsafe<LogLevel>({ type: 'string', enum: [...LOG_LEVELS], description: 'Lines at this level or more severe (`warn`: warn and error).' })),
    requestId: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Only the lines of this invocation (or replay job).' })),
    order: Type.Optional(Type.Unsafe<'asc' | 'desc'>({ type: 'string', enum: ['asc', 'desc'], default: 'asc', description: '`asc` (oldest first, the default) or `desc` (newest first).' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_LIMIT, default: DEFAULT_LIMIT, description: `Page size, 1..${MAX_LIMIT}.` })),
    cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: 'Opaque cursor from the previous page\'s `nextCursor` (same query).' })),
  },
  { additionalProperties: false },
);
type LogsQuery = Static<typeof LogsQuery>;

export const LogLineBody = Type.Object({
  time: Type.Integer({ description: 'When the line was written, epoch ms.' }),
  level: Type.Unsafe<LogLevel>({ type: 'string', enum: [...LOG_LEVELS] }),
  message: Type.String(),
  requestId: Type.String({ description: 'The invocation (or replay job) the line belongs to.' }),
  functionVersion: Type.Integer(),
});

const LogPageBody = Type.Object({
  items: Type.Array(LogLineBody),
  nextCursor: Type.Unsafe<string | null>({ type: ['string', 'null'], description: 'Pass as `?cursor=` (with the same query) to get the next page; null on the last page.' }),
});

const TimeValue = (description: string) =>
  Type.Union([Type.Integer({ minimum: 0 }), Type.String({ minLength: 1, maxLength: 64 })], { description: `${description} Epoch ms, ISO-8601, \`now\` or an offset such as \`-1h\`.` });

const ReplayBody = Type.Object(
  {
    from: TimeValue('Start of the window: records committed at or after it.'),
    to: Type.Optional(TimeValue('End of the window (exclusive); default: when the job starts.')),
    batchSize: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_REPLAY_BATCH, default: 100, description: 'Records per invocation (of one shard).' })),
    filterCriteria: Type.Optional(Type.Unknown({ description: 'As a trigger\'s: `{"filters": [{"pattern": "<JSON string>"}]}`; records matching no filter are skipped.' })),
  },
  { additionalProperties: false },
);
type ReplayBody = Static<typeof ReplayBody>;

const ReplayJobBody = Type.Object({
  id: Type.String(),
  functionName: Type.String(),
  from: Type.Integer({ description: 'Window start, epoch ms (inclusive).' }),
  to: Type.Integer({ description: 'Window end, epoch ms (exclusive).' }),
  batchSize: Type.Integer(),
  filterCriteria: Type.Optional(Type.Unknown()),
  status: Type.Unsafe<ReplayStatus>({
    type: 'string',
    enum: ['running', 'completed', 'cancelled', 'failed'],
    description: '`completed` even when some batches failed (see `failedBatches`); `failed` when the job could not go on (`error`).',
  }),
  createdAt: Type.Integer(),
  finishedAt: Type.Unsafe<number | null>({ type: ['integer', 'null'] }),
  records: Type.Integer({ description: 'Records handed to the function.' }),
  filtered: Type.Integer({ description: 'Records of the window left out by filterCriteria.' }),
  invocations: Type.Integer(),
  failedBatches: Type.Integer({ description: 'Invocations that failed (error, timeout, crash, or batchItemFailures); each batch is invoked once.' }),
  failures: Type.Array(
    Type.Object({
      shard: Type.Integer(),
      firstSequenceNumber: Type.Integer(),
      lastSequenceNumber: Type.Integer(),
      count: Type.Integer(),
      requestId: Type.String({ description: 'Find its logs with `GET .../logs?requestId=`.' }),
      status: Type.String(),
      errorType: Type.Optional(Type.String()),
      errorMessage: Type.Optional(Type.String()),
    }),
    { description: 'The first 10 failed batches.' },
  ),
  functionVersions: Type.Array(Type.Integer(), { description: 'Versions that got batches (each batch goes to the latest version at that moment).' }),
  shardsDone: Type.Integer(),
  shardCount: Type.Integer(),
  truncated: Type.Boolean({ description: 'True when retention had already trimmed records of the window\'s start.' }),
  error: Type.Optional(Type.String()),
});

const ReplayParams = Type.Object(
  { name: FunctionNameParams.properties.name, id: Type.String({ minLength: 1, maxLength: 64, description: 'Replay job id.' }) },
  { additionalProperties: false },
);
type ReplayParams = Static<typeof ReplayParams>;

/** A time given as epoch ms (number) or as the API's time text. */
function timeValue(v: string | number, field: string, now: number): number {
  return parseTime(typeof v === 'number' ? String(v) : v, field, now);
}

/**
 * A package's base64 text as bytes, line breaks allowed (as `base64` wraps). Node's decoder
 * skips characters outside the alphabet, so a round trip refuses them.
 */
function decodePackage(text: string): Buffer {
  const clean = text.replace(/\s+/g, '');
  const bytes = Buffer.from(clean, 'base64');
  if (bytes.length === 0 || bytes.toString('base64').replace(/=+$/, '') !== clean.replace(/=+$/, '')) {
    throw new TributaryError('ValidationError', 'package must be base64 (the bytes of a zip or tarball)', { field: 'package' });
  }
  return bytes;
}

export const functionRoutes: FastifyPluginAsync<FunctionRoutesOptions> = async (app, { registry, runtime, logs, replays }) => {
  const resolve = (name: string) => registry.spec(name);
  app.get<{ Querystring: ListFunctionsQuery }>(
    '/functions',
    { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'List functions (latest version of each)', description: 'Deployed ones (`source: api`) and those of `--functions-dir` (`source: functions-dir`), by name.', querystring: ListFunctionsQuery, response: { 200: FunctionPageBody, ...errorResponses } } },
    async (request) => {
      const { limit = DEFAULT_LIMIT, cursor } = request.query;
      return registry.list(cursor === undefined ? { limit } : { limit, cursor });
    },
  );

  app.put<{ Params: FunctionNameParams; Body: DeployBody }>(
    '/functions/:name',
    {
      bodyLimit: DEPLOY_BODY_LIMIT,
      config: onAllDevices('functions:Deploy'),
      schema: {
        tags: ['functions'],
        summary: 'Deploy a new version of a function',
        description: 'The body has `code` (one module) or `package` (a zip or tarball with node_modules, base64). 409 Conflict for a name of `--functions-dir`.',
        params: FunctionNameParams,
        querystring: NoQuery,
        body: DeployBody,
        response: { 201: FunctionVersionBody, ...errorResponses },
      },
    },
    async (request, reply) => {
      const { package: pkg, ...rest } = request.body;
      const version = await registry.deploy(request.params.name, pkg === undefined ? rest : { ...rest, package: decodePackage(pkg) });
      return reply.code(201).send(version);
    },
  );

  app.get<{ Params: FunctionNameParams }>(
    '/functions/:name',
    { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'Get a function: its latest version and the list of versions', params: FunctionNameParams, querystring: NoQuery, response: { 200: FunctionInfoBody, ...errorResponses } } },
    async (request) => registry.get(request.params.name),
  );

  app.delete<{ Params: FunctionNameParams }>(
    '/functions/:name',
    { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'Delete a function and every version of it', description: '409 Conflict for a function of `--functions-dir` (remove its file instead).', params: FunctionNameParams, querystring: NoQuery, response: { 204: { type: 'null', description: 'Deleted.' }, ...errorResponses } } },
    async (request, reply) => {
      await registry.delete(request.params.name);
      await replays?.forget(request.params.name);
      return reply.code(204).send();
    },
  );

  app.post<{ Params: FunctionNameParams; Body: unknown }>(
    '/functions/:name/invoke',
    {
      bodyLimit: INVOKE_BODY_LIMIT,
      config: onAllDevices('functions:Invoke'),
      schema: {
        tags: ['functions'],
        summary: 'Invoke the latest version once with the request body as the event',
        description:
          'Answers 200 whatever the handler did; `status` says how it ended. Without a body the event is `{}`. A function runs one invocation at a time; with 100 already waiting, 429 Throttled. Functions from `--functions-dir` can be invoked too.',
        params: FunctionNameParams,
        querystring: NoQuery,
        response: { 200: InvokeResultBody, ...errorResponses },
      },
    },
    async (request) => {
      const fn = await resolve(request.params.name);
      const result = await runtime.invoke(fn, request.body ?? {});
      return invokeResultBody(result, fn.timeoutMs);
    },
  );

  if (logs !== undefined) {
    app.get<{ Params: FunctionNameParams; Querystring: LogsQuery }>(
      '/functions/:name/logs',
      {
        config: onAllDevices('functions:Deploy'),
        schema: {
          tags: ['functions'],
          summary: 'Captured console output of a function\'s invocations',
          description: 'Lines kept for `--function-log-retention` and up to `--function-log-max-bytes` per function; they outlive a deleted function. 404 FunctionNotFound only when the name has no lines and no function.',
          params: FunctionNameParams,
          querystring: LogsQuery,
          response: { 200: LogPageBody, ...errorResponses },
        },
      },
      async (request) => {
        const { name } = request.params;
        const q = request.query;
        const now = Date.now();
        const page = await logs.query(name, {
          limit: q.limit ?? DEFAULT_LIMIT,
          ...(q.from === undefined ? {} : { from: parseTime(q.from, 'from', now) }),
          ...(q.to === undefined ? {} : { to: parseTime(q.to, 'to', now) }),
          ...(q.level === undefined ? {} : { level: q.level }),
          ...(q.requestId === undefined ? {} : { requestId: q.requestId }),
          ...(q.order === undefined ? {} : { order: q.order }),
          ...(q.cursor === undefined ? {} : { cursor: q.cursor }),
        });
        // An empty answer for a name that never existed is more likely a typo than a quiet function.
        if (page.items.length === 0 && q.cursor === undefined) await resolve(name);
        return page;
      },
    );
  }

  if (replays !== undefined) {
    app.post<{ Params: FunctionNameParams; Body: ReplayBody }>(
      '/functions/:name/replay',
      {
        config: onAllDevices('functions:Deploy'),
        schema: {
          tags: ['functions'],
          summary: 'Replay a window of the change stream through the function (an asynchronous job)',
          description:
            'Answers 202 with the job; follow it with `GET .../replays/{id}`. Records of the window go to the function in batches, shard by shard, without touching any trigger\'s checkpoint; each batch is invoked once and failures are counted. One replay per function at a time (409 Conflict otherwise). Jobs are kept in memory: a restart ends a running one.',
          params: FunctionNameParams,
          querystring: NoQuery,
          body: ReplayBody,
          response: { 202: ReplayJobBody, ...errorResponses },
        },
      },
      async (request, reply) => {
        const { from, to, batchSize, filterCriteria } = request.body;
        const now = Date.now();
        const job = await replays.start(request.params.name, {
          from: timeValue(from, 'from', now),
          ...(to === undefined ? {} : { to: timeValue(to, 'to', now) }),
          ...(batchSize === undefined ? {} : { batchSize }),
          ...(filterCriteria === undefined ? {} : { filterCriteria: filterCriteria as FilterCriteria }),
        });
        return reply.code(202).send(job);
      },
    );

    app.get<{ Params: FunctionNameParams }>(
      '/functions/:name/replays',
      {
        config: onAllDevices('functions:Deploy'),
        schema: {
          tags: ['functions'],
          summary: 'Replay jobs of a function, newest first (kept in memory, the last 100 finished)',
          params: FunctionNameParams,
          querystring: NoQuery,
          response: { 200: Type.Object({ items: Type.Array(ReplayJobBody), nextCursor: Type.Null() }), ...errorResponses },
        },
      },
      async (request) => ({ items: replays.list(request.params.name), nextCursor: null }),
    );

    app.get<{ Params: ReplayParams }>(
      '/functions/:name/replays/:id',
      { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'A replay job: progress, then its summary', params: ReplayParams, querystring: NoQuery, response: { 200: ReplayJobBody, ...errorResponses } } },
      async (request) => replays.get(request.params.name, request.params.id),
    );

    app.post<{ Params: ReplayParams }>(
      '/functions/:name/replays/:id/cancel',
      {
        config: onAllDevices('functions:Deploy'),
        schema: {
          tags: ['functions'],
          summary: 'Cancel a replay job after the batch in flight; answers the job once it has stopped',
          params: ReplayParams,
          querystring: NoQuery,
          response: { 200: ReplayJobBody, ...errorResponses },
        },
      },
      async (request) => replays.cancel(request.params.name, request.params.id),
    );
  }
};

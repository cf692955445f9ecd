/**
 * API keys (`/v1/keys`): list, create (the token is in the 201 answer and nowhere
 * else, ever), delete. Only a key with `admin:*` on every device may manage keys.
 *
 * @module
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { KEY_ID_PATTERN, type ApiKeyStore } from '../../access/api-keys.js';
import { ACTIONS, DEVICE_PATTERN_PATTERN, MAX_ENTRIES, MAX_STATEMENTS } from '../../access/policy.js';
import { invalidParameter } from '../../core/errors.js';
import type { RouteAccess } from '../auth.js';
import { DEFAULT_LIMIT, errorResponses, MAX_LIMIT, NoQuery } from '../schemas.js';

export interface KeyRoutesOptions {
  keys: ApiKeyStore;
}

const ADMIN: RouteAccess = { action: 'admin:*', allDevices: true };

export const PolicyBody = Type.Object(
  {
    statements: Type.Array(
      Type.Object(
        {
          actions: Type.Array(Type.Unsafe<(typeof ACTIONS)[number]>({ type: 'string', enum: [...ACTIONS] }), {
            minItems: 1,
            maxItems: MAX_ENTRIES,
            description: `Allowed actions: ${ACTIONS.join(', ')}. \`admin:*\` allows every action on the statement's devices; managing keys and reading the audit log need it on \`*\`.`,
          }),
          devices: Type.Array(Type.String({ pattern: DEVICE_PATTERN_PATTERN }), {
            minItems: 1,
            maxItems: MAX_ENTRIES,
            description: 'Device id globs: `*` matches any run of characters (`site-7-*`, `*:boiler`, `*` for every device). Function and DLQ actions need `*`.',
          }),
        },
        { additionalProperties: false },
      ),
      { maxItems: MAX_STATEMENTS, description: 'A request is allowed when some statement allows its action on its device; an empty list allows only `/metrics`.' },
    ),
  },
  { additionalProperties: false },
);

const KeyInfo = Type.Object({
  id: Type.String(),
  name: Type.String(),
  policy: PolicyBody,
  createdAt: Type.Integer({ description: 'Epoch ms.' }),
});

const CreatedKey = Type.Composite([KeyInfo, Type.Object({ key: Type.String({ description: 'The token, `tak_<id>_<secret>`: send it as `Authorization: Bearer <key>`. Shown only in this response.' }) })]);

const CreateKeyBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 200, description: 'What the key is for.' }),
    policy: PolicyBody,
  },
  { additionalProperties: false },
);
type CreateKeyBody = Static<typeof CreateKeyBody>;

const ListKeysQuery = Type.Object(
  {
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_LIMIT, default: DEFAULT_LIMIT, description: `Page size, 1..${MAX_LIMIT}.` })),
    cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'Opaque cursor from the previous page\'s `nextCursor`.' })),
  },
  { additionalProperties: false },
);
type ListKeysQuery = Static<typeof ListKeysQuery>;

const KeyIdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64, description: 'Key id, as listed.' }) }, { additionalProperties: false });
type KeyIdParams = Static<typeof KeyIdParams>;

const KEY_ID_RE = new RegExp(KEY_ID_PATTERN);

export const keyRoutes: FastifyPluginAsync<KeyRoutesOptions> = async (app, { keys }) => {
  app.get<{ Querystring: ListKeysQuery }>(
    '/keys',
    { config: { access: ADMIN }, schema: { tags: ['access'], summary: 'List API keys (never their tokens; the admin key is not listed)', querystring: ListKeysQuery, response: { 200: Type.Object({ items: Type.Array(KeyInfo), nextCursor: Type.Unsafe<string | null>({ type: ['string', 'null'] }) }), ...errorResponses } } },
    async (request) => {
      const { limit = DEFAULT_LIMIT, cursor } = request.query;
      const afterId = cursor === undefined ? undefined : Buffer.from(cursor, 'base64url').toString('utf8');
      if (afterId !== undefined && !KEY_ID_RE.test(afterId)) throw invalidParameter('cursor', 'cursor is malformed (pass nextCursor of a previous page unchanged)');
      const page = keys.list({ limit, ...(afterId === undefined ? {} : { afterId }) });
      return { items: page.items, nextCursor: page.nextId === undefined ? null : Buffer.from(page.nextId, 'utf8').toString('base64url') };
    },
  );

  app.post<{ Body: CreateKeyBody }>(
    '/keys',
    { config: { access: ADMIN }, schema: { tags: ['access'], summary: 'Create an API key with a policy; the token is shown once', querystring: NoQuery, body: CreateKeyBody, response: { 201: CreatedKey, ...errorResponses } } },
    async (request, reply) => {
      const { key, token } = await keys.create(request.body);
      return reply.code(201).send({ ...key, key: token });
    },
  );

  app.delete<{ Params: KeyIdParams }>(
    '/keys/:id',
    { config: { access: ADMIN }, schema: { tags: ['access'], summary: 'Delete an API key; requests with it fail at once', params: KeyIdParams, querystring: NoQuery, response: { 204: { type: 'null', description: 'Deleted.' }, ...errorResponses } } },
    async (request, reply) => {
      await keys.delete(request.params.id);
      return reply.code(204).send();
    },
  );
};

/**
 * The audit log (`GET /v1/audit`): administrative requests, newest first. Only a key
 * with `admin:*` on every device may read it.
 *
 * @module
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import type { AuditLog } from '../../access/audit-log.js';
import { invalidParameter } from '../../core/errors.js';
import { parseTime } from '../../core/time.js';
import { DEFAULT_LIMIT, errorResponses, MAX_LIMIT } from '../schemas.js';

export interface AuditRoutesOptions {
  audit: AuditLog;
}

const AuditQuery = Type.Object(
  {
    from: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'Inclusive lower bound: epoch ms, ISO-8601, `now` or an offset such as `-24h`. Default: the beginning.' })),
    to: Type.Optional(Type.String({ minLength: 1, maxLength: 64, default: 'now', description: 'Inclusive upper bound, same forms as `from`.' })),
    keyId: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'Only requests made with this API key (`admin` for the admin key).' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_LIMIT, default: DEFAULT_LIMIT, description: `Page size, 1..${MAX_LIMIT}.` })),
    cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Opaque cursor from the previous page\'s `nextCursor`.' })),
  },
  { additionalProperties: false },
);
type AuditQuery = Static<typeof AuditQuery>;

const AuditEntryBody = Type.Object({
  id: Type.String(),
  time: Type.Integer({ description: 'Epoch ms.' }),
  keyId: Type.Unsafe<string | null>({ type: ['string', 'null'], description: 'The API key used; null in open mode.' }),
  method: Type.String(),
  route: Type.String({ description: 'The route pattern, e.g. `/v1/devices/:id`.' }),
  path: Type.String({ description: 'The path requested, without its query string.' }),
  status: Type.Integer({ description: 'HTTP status of the answer (403: refused).' }),
  requestId: Type.String({ description: 'Also in the server log and the `x-request-id` response header.' }),
  sourceIp: Type.String(),
});

export const auditRoutes: FastifyPluginAsync<AuditRoutesOptions> = async (app, { audit }) => {
  app.get<{ Querystring: AuditQuery }>(
    '/audit',
    {
      config: { access: { action: 'admin:*', allDevices: true } },
      schema: {
        tags: ['access'],
        summary: 'Audit log of administrative requests, newest first',
        description: 'Every non-GET request to a route whose action is devices:Manage, functions:Deploy or admin:* (keys, devices, credentials, commands, deploys, triggers, DLQ, deletes), refused ones (403) included.',
        querystring: AuditQuery,
        response: { 200: Type.Object({ items: Type.Array(AuditEntryBody), nextCursor: Type.Unsafe<string | null>({ type: ['string', 'null'] }) }), ...errorResponses },
      },
    },
    async (request) => {
      const q = request.query;
      const now = Date.now();
      const from = q.from === undefined ? 0 : parseTime(q.from, 'from', now);
      const to = parseTime(q.to ?? 'now', 'to', now);
      if (from > to) throw invalidParameter('from', `from (${from}) is after to (${to})`);
      return audit.list({ from, to, limit: q.limit ?? DEFAULT_LIMIT, ...(q.keyId === undefined ? {} : { keyId: q.keyId }), ...(q.cursor === undefined ? {} : { cursor: q.cursor }) });
    },
  );
};

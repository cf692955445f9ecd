/**
 * The rejects log (`GET /v1/rejects`): payloads ingest refused, with the reason, who
 * sent them and the first bytes of the raw payload.
 *
 * @module
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { invalidParameter, TributaryError } from '../../core/errors.js';
import { DEVICE_ID_PATTERN } from '../../core/ids.js';
import { parseTime } from '../../core/time.js';
import { KEPT_PAYLOAD_BYTES, type RejectsLog } from '../../ingest/rejects-log.js';
import { accessOf } from '../auth.js';
import { DEFAULT_LIMIT, errorResponses, MAX_LIMIT } from '../schemas.js';

/** Options of {@link rejectRoutes}. */
export interface RejectRoutesOptions {
  rejects: Pick<RejectsLog, 'list'>;
}

const RejectsQuery = Type.Object(
  {
    deviceId: Type.Optional(Type.String({ pattern: DEVICE_ID_PATTERN, description: 'Only rejects of payloads for this device.' })),
    from: Type.Optional(Type.String({ minLength: 1, maxLength: 64, default: '-24h', description: 'Inclusive lower bound on the reject time: epoch ms, ISO-8601, `now` or an offset such as `-15m`.' })),
    to: Type.Optional(Type.String({ minLength: 1, maxLength: 64, default: 'now', description: 'Inclusive upper bound, same forms as `from`.' })),
    order: Type.Optional(Type.Unsafe<'asc' | 'desc'>({ type: 'string', enum: ['asc', 'desc'], default: 'desc', description: 'By reject time; newest first by default.' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_LIMIT, default: DEFAULT_LIMIT, description: `Page size, 1..${MAX_LIMIT}.` })),
    cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: "Opaque cursor from the previous page's `nextCursor`." })),
  },
  { additionalProperties: false },
);
type RejectsQuery = Static<typeof RejectsQuery>;

const Nullable = (description: string) => Type.Unsafe<string | null>({ type: ['string', 'null'], description });

const RejectEntryBody = Type.Object({
  receivedAt: Type.Integer({ description: 'When the payload was rejected, epoch ms.' }),
  deviceId: Nullable('The device the payload was for; null when the topic named no valid device id.'),
  transport: Type.String({ description: "`mqtt`, `http`, or `function` (a handler's `context.put`)." }),
  clientId: Nullable('MQTT client id, when known.'),
  topic: Nullable('MQTT topic, for MQTT rejects.'),
  reason: Type.String({ description: 'Why: the `reason` label of `tributary_ingest_rejects_total` (invalid_json, too_many_keys, timestamp_in_future, ...).' }),
  message: Type.String({ description: 'What exactly was wrong.' }),
  field: Nullable('The offending field (`ts`, `[2]gps.lat`, ...), when there is one.'),
  payloadBytes: Type.Integer({ description: 'Size of the whole payload.' }),
  payload: Type.String({ description: `The first ${KEPT_PAYLOAD_BYTES} bytes of the payload (HTTP: the request body as sent), as text, or base64 when they are not valid UTF-8.` }),
  payloadEncoding: Type.Unsafe<'utf8' | 'base64'>({ type: 'string', enum: ['utf8', 'base64'] }),
  truncated: Type.Boolean({ description: `True when the payload was longer than the ${KEPT_PAYLOAD_BYTES} bytes kept.` }),
});

const RejectsPageBody = Type.Object({
  items: Type.Array(RejectEntryBody),
  nextCursor: Nullable('Pass as `?cursor=` to get the next page; null on the last page.'),
});

export const rejectRoutes: FastifyPluginAsync<RejectRoutesOptions> = async (app, { rejects }) => {
  app.get<{ Querystring: RejectsQuery }>(
    '/rejects',
    {
      config: { access: { action: 'telemetry:Read' } },
      schema: {
        tags: ['telemetry'],
        summary: 'List rejected telemetry payloads with their reasons',
        description:
          'Every payload ingest refused (MQTT or HTTP): malformed JSON, wrong shape, too many keys, timestamps out of range, ... The log is bounded (`--rejects-retention`, `--rejects-max-entries`); counts by reason are on `/metrics` (`tributary_ingest_rejects_total`).',
        querystring: RejectsQuery,
        response: { 200: RejectsPageBody, ...errorResponses },
      },
    },
    async (request) => {
      const q = request.query;
      const now = Date.now();
      const from = parseTime(q.from ?? '-24h', 'from', now);
      const to = parseTime(q.to ?? 'now', 'to', now);
      if (from > to) throw invalidParameter('from', 'from must not be after to');
      const access = accessOf(request);
      if (q.deviceId !== undefined && !access.allowsDevice(q.deviceId)) {
        throw new TributaryError('AccessDenied', `API key ${access.keyId ?? ''} is not allowed telemetry:Read on device ${JSON.stringify(q.deviceId)}`, { field: 'deviceId' });
      }
      const page = await rejects.list({
        from,
        to,
        order: q.order ?? 'desc',
        limit: q.limit ?? DEFAULT_LIMIT,
        ...(q.deviceId === undefined ? {} : { deviceId: q.deviceId }),
        ...(q.cursor === undefined ? {} : { cursor: q.cursor }),
      });
      // Outside the key's policy: other devices' rejects, and those that named no valid device (only a key for every device sees them).
      return { ...page, items: page.items.filter((r) => (r.deviceId === null ? access.allowsAllDevices() : access.allowsDevice(r.deviceId))) };
    },
  );
};

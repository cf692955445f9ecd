/**
 * Dead-letter queue routes (`/v1/dlq`): the batches stream mappings gave up on, as
 * metadata (the records stay in the change log); redrive one (re-read its records and
 * invoke the function once with them) or delete it.
 *
 * @module
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import type { DeadLetterEntry, DeadLetterQueue, RedriveDeps } from '../../functions/dlq.js';
import { DLQ_ID_PATTERN } from '../../functions/dlq.js';
import type { InvokeOutcome } from '../../functions/types.js';
import { InvokeResultBody, invokeResultBody } from '../invoke-result.js';
import { DEFAULT_LIMIT, errorResponses, MAX_LIMIT, NoQuery } from '../schemas.js';
import { onAllDevices } from '../auth.js';

/** Options of {@link dlqRoutes}. */
export interface DlqRoutesOptions {
  queue: DeadLetterQueue;
  /** The change log and the invoker a redrive uses. */
  redrive: RedriveDeps;
}

const IdParams = Type.Object(
  { id: Type.String({ pattern: DLQ_ID_PATTERN, description: 'Entry id, as listed: `<createdAt ms, 15 digits>-<16 hex digits>`.' }) },
  { additionalProperties: false },
);
type IdParams = Static<typeof IdParams>;

const ListQuery = Type.Object(
  {
    functionName: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'Only entries of this function.' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_LIMIT, default: DEFAULT_LIMIT, description: `Page size, 1..${MAX_LIMIT}.` })),
    cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: 'Opaque cursor from the previous page\'s `nextCursor`.' })),
  },
  { additionalProperties: false },
);
type ListQuery = Static<typeof ListQuery>;

const Status = Type.Unsafe<InvokeOutcome['status']>({ type: 'string', enum: ['ok', 'error', 'timeout', 'crashed'] });

const OutcomeBody = Type.Object(
  {
    status: Status,
    result: Type.Optional(Type.Unknown({ description: 'What the handler returned (status ok, e.g. a batchItemFailures response).' })),
    errorType: Type.Optional(Type.String()),
    errorMessage: Type.Optional(Type.String()),
    reason: Type.Optional(Type.String({ description: 'Why the function process died (status crashed).' })),
  },
  { description: 'The outcome of the last invocation that carried the records.' },
);

const EntryBody = Type.Object({
  id: Type.String(),
  createdAt: Type.Integer({ description: 'When the entry was added, epoch ms.' }),
  function: Type.String({ description: 'The function the records were delivered to.' }),
  functionVersion: Type.Integer({ description: 'The version that failed on them last (after a failed redrive: the version the redrive ran).' }),
  triggerId: Type.String(),
  shard: Type.Integer(),
  streamArn: Type.String(),
  firstSequenceNumber: Type.Integer(),
  lastSequenceNumber: Type.Integer(),
  count: Type.Integer({ description: 'Records from first to last sequence number.' }),
  reason: Type.Unsafe<DeadLetterEntry['reason']>({ type: 'string', enum: ['RetryAttemptsExhausted', 'RecordAgeExceeded', 'RecordUnrenderable'] }),
  firstRecordAt: Type.Integer({ description: 'Commit time of the first record, epoch ms.' }),
  lastRecordAt: Type.Integer({ description: 'Commit time of the last record, epoch ms.' }),
  invocations: Type.Integer({ description: 'Invocations that carried the records, redrives included (Lambda\'s approximateInvokeCount).' }),
  lastOutcome: Type.Optional(OutcomeBody),
  discardedAt: Type.Integer({ description: 'When the mapping gave the records up, epoch ms.' }),
  redrives: Type.Integer({ description: 'Failed redrives so far.' }),
});

const PageBody = Type.Object({
  items: Type.Array(EntryBody, { description: 'Entries, oldest first.' }),
  nextCursor: Type.Unsafe<string | null>({ type: ['string', 'null'], description: 'Pass as `?cursor=` to get the next page; null on the last page.' }),
});

const RedriveBody = Type.Composite([
  Type.Object({
    deleted: Type.Boolean({ description: 'True when the invocation succeeded and the entry was deleted; false when it was kept.' }),
    records: Type.Integer({ description: 'Records delivered.' }),
    entry: Type.Optional(EntryBody),
  }),
  InvokeResultBody,
]);
type RedriveBody = Static<typeof RedriveBody>;

export const dlqRoutes: FastifyPluginAsync<DlqRoutesOptions> = async (app, { queue, redrive }) => {
  app.get<{ Querystring: ListQuery }>(
    '/dlq',
    { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'List dead-letter queue entries (batches stream mappings gave up on), oldest first', querystring: ListQuery, response: { 200: PageBody, ...errorResponses } } },
    async (request) => {
      const { functionName, limit = DEFAULT_LIMIT, cursor } = request.query;
      return queue.list({ limit, ...(functionName === undefined ? {} : { functionName }), ...(cursor === undefined ? {} : { cursor }) });
    },
  );

  app.get<{ Params: IdParams }>(
    '/dlq/:id',
    { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'Get a dead-letter queue entry', params: IdParams, querystring: NoQuery, response: { 200: EntryBody, ...errorResponses } } },
    async (request) => queue.get(request.params.id),
  );

  app.post<{ Params: IdParams }>(
    '/dlq/:id/redrive',
    {
      // Entries mix devices' records, so the DLQ needs its action on every device.
      config: onAllDevices('functions:Deploy'),
      schema: {
        tags: ['functions'],
        summary: 'Redrive an entry: re-read its records from the change log and invoke the function (latest version) once with them',
        description:
          'Answers 200 whatever the handler did; `status` says how it ended. On success the entry is deleted (`deleted: true`); otherwise it is kept with its counts updated (`entry`). 409 Conflict when the change log no longer holds the records (trimmed by retention).',
        params: IdParams,
        querystring: NoQuery,
        response: { 200: RedriveBody, ...errorResponses },
      },
    },
    async (request) => {
      const r = await queue.redrive(request.params.id, redrive);
      const body: RedriveBody = { deleted: r.deleted, records: r.entry.count, ...invokeResultBody(r.result) };
      if (!r.deleted) body.entry = r.entry;
      return body;
    },
  );

  app.delete<{ Params: IdParams }>(
    '/dlq/:id',
    { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'Delete a dead-letter queue entry', params: IdParams, querystring: NoQuery, response: { 204: { type: 'null', description: 'Deleted.' }, ...errorResponses } } },
    async (request, reply) => {
      await queue.delete(request.params.id);
      return reply.code(204).send();
    },
  );
};

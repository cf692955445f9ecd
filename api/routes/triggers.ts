/**
 * Trigger routes (`/v1/functions/{name}/triggers`): event source mappings of a deployed
 * function onto the change stream. Bodies use Lambda's settings, camel-cased; the
 * settings are validated by the trigger manager (functions/triggers.ts) so that the
 * errors name the field.
 *
 * @module
 */
import { Type } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import type { TriggerManager } from '../../functions/triggers.js';
import { errorResponses, NoQuery } from '../schemas.js';
import { onAllDevices } from '../auth.js';

/** Options of {@link triggerRoutes}. */
export interface TriggerRoutesOptions {
  triggers: TriggerManager;
}

const FunctionParams = Type.Object(
  { name: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'Function name' }) },
  { additionalProperties: false },
);
const TriggerParams = Type.Object(
  { name: FunctionParams.properties.name, id: Type.String({ minLength: 1, maxLength: 64, description: 'Trigger id (uuid)' }) },
  { additionalProperties: false },
);

const FilterCriteria = Type.Unknown({ description: 'Lambda\'s FilterCriteria: `{"filters": [{"pattern": "<JSON string>"}]}` (at most 5 filters); records that match no filter are skipped (not delivered) and the checkpoint moves past them.' });

const TriggerBody = Type.Object({
  id: Type.String(),
  functionName: Type.String(),
  batchSize: Type.Integer({ description: 'BatchSize: 1..10000, default 100.' }),
  maximumBatchingWindowMs: Type.Integer({ description: 'MaximumBatchingWindowInSeconds, in ms (0..300000, default 0): with fewer records waiting than batchSize × parallelizationFactor, gather for up to this long before invoking.' }),
  startingPosition: Type.String({ description: 'StartingPosition: TRIM_HORIZON, LATEST (default) or AT_TIMESTAMP (with startingPositionTimestamp).' }),
  startingPositionTimestamp: Type.Optional(Type.Integer({ description: 'StartingPositionTimestamp, in epoch ms: with AT_TIMESTAMP, the first record committed at or after it is delivered first.' })),
  filterCriteria: Type.Optional(FilterCriteria),
  maximumRetryAttempts: Type.Integer({ description: 'MaximumRetryAttempts: -1 (forever, as Lambda\'s default) or 0..10000; default 3.' }),
  bisectBatchOnFunctionError: Type.Boolean({ description: 'BisectBatchOnFunctionError; default false.' }),
  maximumRecordAgeSeconds: Type.Integer({ description: 'MaximumRecordAgeInSeconds: -1 (no limit, default) or 60..604800.' }),
  functionResponseTypes: Type.Array(Type.String(), { description: 'FunctionResponseTypes: [] or ["ReportBatchItemFailures"].' }),
  parallelizationFactor: Type.Integer({ description: 'ParallelizationFactor: 1..10, default 1. Concurrent batches per shard, each for a subset of the devices (a device\'s records stay in order).' }),
  tumblingWindowSeconds: Type.Integer({ description: 'TumblingWindowInSeconds: 0 (none, default)..900. The event carries window, state, shardId, isFinalInvokeForWindow, isWindowTerminatedEarly; the function must return { state }. Not with parallelizationFactor > 1.' }),
  enabled: Type.Boolean({ description: 'Enabled; default true.' }),
  createdAt: Type.Integer({ description: 'Epoch ms.' }),
  warnings: Type.Optional(Type.Array(Type.String(), { description: 'Parts of filterCriteria that are valid but can never match a record (e.g. a misspelt field); absent when there are none.' })),
});

const TriggerInput = Type.Unknown({
  description:
    'Trigger settings (all optional on create; on update, the ones given change and `null` resets one to its default). The body is optional: none (or `{}`) creates a trigger with every default, or changes nothing. A body that is not a JSON object (`[]`, a string) answers 400 ValidationError.',
});

const TriggerList = Type.Object({ items: Type.Array(TriggerBody), nextCursor: Type.Null() });

export const triggerRoutes: FastifyPluginAsync<TriggerRoutesOptions> = async (app, { triggers }) => {
  app.get<{ Params: { name: string } }>(
    '/functions/:name/triggers',
    { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'List the triggers of a function', params: FunctionParams, querystring: NoQuery, response: { 200: TriggerList, ...errorResponses } } },
    async (request) => ({ items: await triggers.list(request.params.name), nextCursor: null }),
  );

  app.post<{ Params: { name: string }; Body: unknown }>(
    '/functions/:name/triggers',
    { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'Attach a function to the change stream', params: FunctionParams, querystring: NoQuery, body: TriggerInput, response: { 201: TriggerBody, ...errorResponses } } },
    async (request, reply) => reply.code(201).send(await triggers.create(request.params.name, request.body)),
  );

  app.get<{ Params: { name: string; id: string } }>(
    '/functions/:name/triggers/:id',
    { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'Get a trigger', params: TriggerParams, querystring: NoQuery, response: { 200: TriggerBody, ...errorResponses } } },
    async (request) => triggers.get(request.params.name, request.params.id),
  );

  app.patch<{ Params: { name: string; id: string }; Body: unknown }>(
    '/functions/:name/triggers/:id',
    { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'Change a trigger (its mapping restarts from its checkpoint)', params: TriggerParams, querystring: NoQuery, body: TriggerInput, response: { 200: TriggerBody, ...errorResponses } } },
    async (request) => triggers.update(request.params.name, request.params.id, request.body),
  );

  app.delete<{ Params: { name: string; id: string } }>(
    '/functions/:name/triggers/:id',
    { config: onAllDevices('functions:Deploy'), schema: { tags: ['functions'], summary: 'Delete a trigger, its mapping and its checkpoints', params: TriggerParams, querystring: NoQuery, response: { 204: { type: 'null', description: 'Deleted.' }, ...errorResponses } } },
    async (request, reply) => {
      await triggers.delete(request.params.name, request.params.id);
      return reply.code(204).send();
    },
  );
};

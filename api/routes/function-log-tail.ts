/**
 * `GET /v1/functions/{name}/logs/tail`: a function's log lines as they are captured, as
 * Server-Sent Events (CloudWatch Logs' live tail). Read with `fetch` when the server is
 * secured: a browser's `EventSource` cannot send `Authorization`.
 *
 * @module
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { LOG_LEVELS, type FunctionLogStore, type LogLevel } from '../../functions/logs.js';
import type { FunctionSpec } from '../../functions/types.js';
import { onAllDevices } from '../auth.js';
import { errorResponses } from '../schemas.js';
import { DEFAULT_HEARTBEAT_MS, DEFAULT_MAX_BUFFERED_BYTES, openEventStream, sseEvent } from '../sse.js';
import { FunctionNameParams } from './functions.js';

const TailQuery = Type.Object(
  { level: Type.Optional(Type.Unsafe<LogLevel>({ type: 'string', enum: [...LOG_LEVELS], description: 'Lines at this level or more severe (`warn`: warn and error).' })) },
  { additionalProperties: false },
);
type TailQuery = Static<typeof TailQuery>;

export interface FunctionLogTailOptions {
  logs: Pick<FunctionLogStore, 'onLine'>;
  /** Resolves a function by name; throws FunctionNotFound (so a typo is a 404, not a silent tail). */
  resolve: (name: string) => Promise<FunctionSpec>;
  heartbeatMs?: number;
  maxBufferedBytes?: number;
}

export const functionLogTailRoutes: FastifyPluginAsync<FunctionLogTailOptions> = async (app, opts) => {
  const active = new Set<() => void>();
  app.addHook('preClose', async () => {
    for (const stop of [...active]) stop();
  });
  app.get<{ Params: FunctionNameParams; Querystring: TailQuery }>(
    '/functions/:name/logs/tail',
    {
      // The same access as reading the stored logs.
      config: onAllDevices('functions:Deploy'),
      schema: {
        tags: ['functions'],
        summary: 'Live tail of a function\'s log lines (Server-Sent Events)',
        params: FunctionNameParams,
        querystring: TailQuery,
        response: {
          200: Type.String({ description: 'text/event-stream: one `event: log` per captured line (data: `{time, level, message, requestId, functionVersion}`, as in `GET .../logs`), from the moment of connecting; a `: heartbeat` comment every 15 s.' }),
          ...errorResponses,
        },
      },
    },
    async (request, reply) => {
      const { name } = request.params;
      await opts.resolve(name);
      const minLevel = LOG_LEVELS.indexOf(request.query.level ?? 'debug');
      const stream = openEventStream(request, reply, `log tail of function ${name}`, {
        heartbeatMs: opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS,
        maxBufferedBytes: opts.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES,
        slowClientHint: 'reconnect, or page through GET /v1/functions/{name}/logs',
        onStop: () => {
          unsubscribe();
          active.delete(stream.stop);
        },
      });
      const unsubscribe = opts.logs.onLine((fn, line) => {
        if (fn === name && LOG_LEVELS.indexOf(line.level) >= minLevel) stream.send(sseEvent('log', line));
      });
      active.add(stream.stop);
      return reply;
    },
  );
};

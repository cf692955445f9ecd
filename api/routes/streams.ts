/**
 * Change-stream routes (`/v1/streams/...`), shaped after DynamoDB Streams:
 *
 * - `GET /streams/shards`: the shards with their first (oldest retained) and last
 *   sequence numbers, as decimal strings like DynamoDB's.
 * - `GET /streams/shards/:shardId/records`: a page of records from an iterator
 *   position (DynamoDB's `GetShardIterator` + `GetRecords` folded into one call), with
 *   optional long-polling (`waitMs`). Records are rendered exactly as a Lambda handler
 *   receives them (`toStreamRecord`).
 * - `GET /streams/tail`: a live tail as Server-Sent Events.
 *
 * A page carries `nextSequenceNumber`, always a string: pass it back as
 * `iterator=AFTER_SEQUENCE_NUMBER&sequenceNumber=<it>` to continue. It is the last
 * returned record's number, or, when nothing was returned, the position the request
 * stood at (so continuing never skips a record committed meanwhile). DynamoDB's null
 * `NextShardIterator` means "the shard is closed"; these shards never close.
 *
 * @module
 */
import type { ServerResponse } from 'node:http';
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyBaseLogger, FastifyPluginAsync } from 'fastify';
import { invalidParameter, TributaryError } from '../../core/errors.js';
import { DEVICE_ID_PATTERN } from '../../core/ids.js';
import { parseTime } from '../../core/time.js';
import { toStreamRecord, type DynamoDBStreamRecord, type StreamViewType } from '../../streams/lambda-event.js';
import { parseShardId } from '../../streams/shard.js';
import type { ChangeLog, ChangeRecord } from '../../streams/types.js';
import { accessOf } from '../auth.js';
import { errorResponses, NoQuery } from '../schemas.js';
import { DEFAULT_HEARTBEAT_MS, DEFAULT_MAX_BUFFERED_BYTES, openEventStream, sseEvent } from '../sse.js';

/** Largest page of `GET /streams/shards/:shardId/records` (DynamoDB's GetRecords allows 1,000). */
export const MAX_RECORDS_LIMIT = 1000;
/** Page size when `?limit=` is absent. */
export const DEFAULT_RECORDS_LIMIT = 100;
/** Longest long-poll (`?waitMs=`), as SQS's 20 s receive wait. */
export const MAX_WAIT_MS = 20_000;

const ITERATORS = ['TRIM_HORIZON', 'LATEST', 'AT_SEQUENCE_NUMBER', 'AFTER_SEQUENCE_NUMBER', 'AT_TIMESTAMP'] as const;
type IteratorType = (typeof ITERATORS)[number];
const VIEW_TYPES = ['NEW_AND_OLD_IMAGES', 'NEW_IMAGE', 'OLD_IMAGE', 'KEYS_ONLY'] as const satisfies readonly StreamViewType[];

/** A string enum as a plain `enum` keyword, so a validation error names the allowed values. */
function StringEnum<const T extends readonly string[]>(values: T, options: { default?: T[number]; description?: string } = {}) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });
}

function NullableString(options: { description?: string } = {}) {
  return Type.Unsafe<string | null>({ type: ['string', 'null'], ...options });
}

const ViewType = StringEnum(VIEW_TYPES, {
  default: 'NEW_AND_OLD_IMAGES',
  description: 'Which images records carry, as DynamoDB\'s StreamViewType: KEYS_ONLY, NEW_IMAGE, OLD_IMAGE or NEW_AND_OLD_IMAGES.',
});

export const ShardList = Type.Object({
  streamArn: Type.String(),
  items: Type.Array(
    Type.Object({
      shardId: Type.String({ description: 'E.g. `shardId-0003`; a device always maps to the same shard.' }),
      firstSequenceNumber: NullableString({ description: 'Oldest retained record, as a decimal string; null when the shard holds none.' }),
      lastSequenceNumber: NullableString({ description: 'Newest committed record, as a decimal string; null when the shard has never held one.' }),
    }),
  ),
});

export const ShardParams = Type.Object(
  { shardId: Type.String({ minLength: 1, maxLength: 64, description: 'A shard id from `GET /v1/streams/shards`, e.g. `shardId-0000`.' }) },
  { additionalProperties: false },
);
export type ShardParams = Static<typeof ShardParams>;

export const RecordsQuery = Type.Object(
  {
    iterator: Type.Optional(
      StringEnum(ITERATORS, {
        default: 'TRIM_HORIZON',
        description:
          'Where to start, as DynamoDB\'s ShardIteratorType: TRIM_HORIZON (oldest retained record), LATEST (only records committed after the request), AT_SEQUENCE_NUMBER / AFTER_SEQUENCE_NUMBER (with `sequenceNumber`), AT_TIMESTAMP (first record committed at or after `timestamp`).',
      }),
    ),
    sequenceNumber: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 32,
        description: 'Decimal sequence number, for AT_SEQUENCE_NUMBER and AFTER_SEQUENCE_NUMBER. One older than the oldest retained record reads from the oldest retained record; one beyond the last reads nothing (yet).',
      }),
    ),
    timestamp: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'For AT_TIMESTAMP: epoch ms, ISO-8601, `now` or an offset such as `-15m`.' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_RECORDS_LIMIT, default: DEFAULT_RECORDS_LIMIT, description: `Most records to return, 1..${MAX_RECORDS_LIMIT}.` })),
    waitMs: Type.Optional(
      Type.Integer({
        minimum: 0,
        maximum: MAX_WAIT_MS,
        default: 0,
        description: `Long poll: when no record is available, wait up to this many milliseconds (0..${MAX_WAIT_MS}) for one to be committed to the shard before answering.`,
      }),
    ),
    viewType: Type.Optional(ViewType),
  },
  { additionalProperties: false },
);
export type RecordsQuery = Static<typeof RecordsQuery>;

/** DynamoDB AttributeValue JSON (`{"S": ...}`, `{"N": "..."}`, `{"M": {...}}`, ...). */
const Image = Type.Object({}, { additionalProperties: true, description: 'DynamoDB AttributeValue JSON; `unmarshall` from @aws-sdk/util-dynamodb turns it into plain values.' });

/** One record exactly as a Lambda handler on a DynamoDB stream receives it (`streams/lambda-event.ts`). */
export const StreamRecord = Type.Object({
  eventID: Type.String({ description: 'Derived from (stream, shard, sequence number): the same record always has the same id.' }),
  eventName: Type.String({ description: 'INSERT, MODIFY or REMOVE.' }),
  eventVersion: Type.String(),
  eventSource: Type.String(),
  awsRegion: Type.String(),
  eventSourceARN: Type.String(),
  dynamodb: Type.Object({
    ApproximateCreationDateTime: Type.Integer({ description: 'Commit time, epoch seconds.' }),
    Keys: Image,
    NewImage: Type.Optional(Image),
    OldImage: Type.Optional(Image),
    SequenceNumber: Type.String(),
    SizeBytes: Type.Integer(),
    StreamViewType: Type.String(),
  }),
  userIdentity: Type.Optional(Type.Object({ type: Type.String(), principalId: Type.String() }, { description: 'Present on REMOVE records made by retention (DynamoDB\'s TTL marker).' })),
});

export const RecordPage = Type.Object({
  items: Type.Array(StreamRecord),
  nextSequenceNumber: Type.String({
    description: 'Pass back as `iterator=AFTER_SEQUENCE_NUMBER&sequenceNumber=<it>` to continue: the last record returned, or where the request stood when it returned none.',
  }),
});

export const TailQuery = Type.Object(
  {
    deviceId: Type.Optional(Type.String({ pattern: DEVICE_ID_PATTERN, description: 'Only records of this device.' })),
    viewType: Type.Optional(ViewType),
  },
  { additionalProperties: false },
);
export type TailQuery = Static<typeof TailQuery>;

/** Options of {@link streamRoutes}. */
export interface StreamRoutesOptions {
  changeLog: ChangeLog;
  /** SSE heartbeat interval; default {@link DEFAULT_HEARTBEAT_MS}. */
  heartbeatMs?: number;
  /** Unsent bytes a tail may queue before the client is cut off; default {@link DEFAULT_MAX_BUFFERED_BYTES}. */
  maxBufferedBytes?: number;
}

/**
 * The records as stream records, leaving out (with an error in the log) any that cannot
 * be rendered, so that one bad record does not fail every read of its shard; the
 * position still moves past it. Event source mappings send such a record to the
 * dead-letter queue (functions/event-source-mapping.ts).
 */
function renderAll(records: readonly ChangeRecord[], streamArn: string, viewType: StreamViewType, logger: FastifyBaseLogger): DynamoDBStreamRecord[] {
  const out: DynamoDBStreamRecord[] = [];
  for (const r of records) {
    try {
      out.push(toStreamRecord(r, streamArn, viewType));
    } catch (err) {
      logger.error({ err, shard: r.shard, sequenceNumber: r.sequenceNumber, deviceId: r.deviceId }, 'a change record cannot be rendered as a stream record; it is left out');
    }
  }
  return out;
}

/** Parses a decimal sequence number from the query. */
export function parseSequenceNumber(text: string): number {
  const n = /^\d+$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n)) throw invalidParameter('sequenceNumber', `sequenceNumber must be a decimal sequence number (got ${JSON.stringify(text)})`);
  return n;
}

/** One answer of a shard read: the records and where the next read continues. */
interface Page {
  records: ChangeRecord[];
  next: number;
}

/**
 * `GET /streams/shards`, `GET /streams/shards/:shardId/records` and `GET /streams/tail`.
 * Long polls and tails in progress end when the server closes (a long poll answers
 * with what it has, a tail's stream ends), so they never hold up a graceful stop.
 */
export const streamRoutes: FastifyPluginAsync<StreamRoutesOptions> = async (app, opts) => {
  const log = opts.changeLog;
  const heartbeatMs = opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
  const maxBufferedBytes = opts.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_BYTES;
  /** What to stop when the server closes: long polls waiting and tails streaming. */
  const active = new Set<() => void>();
  app.addHook('preClose', async () => {
    for (const stop of [...active]) stop();
  });

  // Shard ranges say nothing about devices; records are filtered by the key's policy below.
  app.get('/streams/shards', { config: { access: { action: 'streams:Read' } }, schema: { tags: ['streams'], summary: 'List shards with their sequence number range', querystring: NoQuery, response: { 200: ShardList, ...errorResponses } } }, async () => {
    const shards = await log.shards();
    return {
      streamArn: log.streamArn,
      items: shards.map((s) => ({
        shardId: s.shardId,
        firstSequenceNumber: s.firstSequenceNumber === null ? null : String(s.firstSequenceNumber),
        lastSequenceNumber: s.lastSequenceNumber === null ? null : String(s.lastSequenceNumber),
      })),
    };
  });

  /** Last committed sequence number of the shard (0 when it has none). */
  async function lastSequenceNumber(shard: number): Promise<number> {
    return (await log.shards())[shard]?.lastSequenceNumber ?? 0;
  }

  /**
   * Turns the iterator parameters into a function that reads one page. Positions are
   * fixed here, once: LATEST means "after the last record committed when the request
   * arrived", however long the long poll then waits.
   */
  async function reader(shard: number, query: RecordsQuery, limit: number): Promise<() => Promise<Page>> {
    const iterator: IteratorType = query.iterator ?? 'TRIM_HORIZON';
    const bySequence = iterator === 'AT_SEQUENCE_NUMBER' || iterator === 'AFTER_SEQUENCE_NUMBER';
    if (bySequence && query.sequenceNumber === undefined) throw invalidParameter('sequenceNumber', `sequenceNumber is required with iterator=${iterator}`);
    if (!bySequence && query.sequenceNumber !== undefined) {
      throw invalidParameter('sequenceNumber', 'sequenceNumber applies only to iterator=AT_SEQUENCE_NUMBER or AFTER_SEQUENCE_NUMBER');
    }
    if (iterator === 'AT_TIMESTAMP' && query.timestamp === undefined) throw invalidParameter('timestamp', 'timestamp is required with iterator=AT_TIMESTAMP');
    if (iterator !== 'AT_TIMESTAMP' && query.timestamp !== undefined) throw invalidParameter('timestamp', 'timestamp applies only to iterator=AT_TIMESTAMP');

    const fromPosition = (after: number) => async (): Promise<Page> => {
      const records = await log.read(shard, after, limit);
      return { records, next: records.at(-1)?.sequenceNumber ?? after };
    };
    switch (iterator) {
      // `read` returns the records numbered above `after` that are still retained. So a
      // position older than the trim horizon (records dropped by retention) reads from
      // the oldest retained record, as TRIM_HORIZON does, instead of failing as
      // DynamoDB's TrimmedDataAccessException would; one beyond the last reads nothing.
      case 'TRIM_HORIZON':
        return fromPosition(0);
      case 'AT_SEQUENCE_NUMBER':
        return fromPosition(Math.max(0, parseSequenceNumber(query.sequenceNumber as string) - 1));
      case 'AFTER_SEQUENCE_NUMBER':
        return fromPosition(parseSequenceNumber(query.sequenceNumber as string));
      case 'LATEST':
        return fromPosition(await lastSequenceNumber(shard));
      case 'AT_TIMESTAMP': {
        const timestamp = parseTime(query.timestamp as string, 'timestamp');
        return async () => {
          // The position is taken before the search: a record committed in between is
          // after it, so continuing from an empty answer cannot skip that record.
          const before = await lastSequenceNumber(shard);
          const records = await log.readFromTime(shard, timestamp, limit);
          return { records, next: records.at(-1)?.sequenceNumber ?? before };
        };
      }
    }
  }

  /**
   * Reads a page; when it is empty and `waitMs` > 0, waits for a commit to the shard (or
   * the deadline, the client going away, the server closing) and reads again.
   */
  async function readWithWait(shard: number, read: () => Promise<Page>, waitMs: number, res: ServerResponse): Promise<Page> {
    if (waitMs <= 0) return read();
    let committed = false;
    let wake: (() => void) | undefined;
    let stopped = false;
    const stop = (): void => {
      stopped = true;
      wake?.();
    };
    // Subscribed before the first read, so a commit between that read and the wait is not
    // missed; in cluster mode following other nodes' commits too (the shard may be theirs).
    const stopFollowing = log.followOthers?.();
    const unsubscribe = log.onCommit((records) => {
      if (records.some((r) => r.shard === shard)) {
        committed = true;
        wake?.();
      }
    });
    active.add(stop);
    // The response closing before it is sent means the client went away.
    res.once('close', stop);
    const deadline = Date.now() + waitMs;
    try {
      for (;;) {
        committed = false;
        const page = await read();
        const remaining = deadline - Date.now();
        if (page.records.length > 0 || remaining <= 0 || stopped) return page;
        if (!committed) {
          let timer: NodeJS.Timeout | undefined;
          await new Promise<void>((resolve) => {
            wake = resolve;
            timer = setTimeout(resolve, remaining);
          });
          clearTimeout(timer);
          wake = undefined;
        }
      }
    } finally {
      unsubscribe();
      stopFollowing?.();
      active.delete(stop);
      res.off('close', stop);
    }
  }

  app.get<{ Params: ShardParams; Querystring: RecordsQuery }>(
    '/streams/shards/:shardId/records',
    { config: { access: { action: 'streams:Read' } }, schema: { tags: ['streams'], summary: 'Read a page of change records from a shard', params: ShardParams, querystring: RecordsQuery, response: { 200: RecordPage, ...errorResponses } } },
    async (request, reply) => {
      const { shardId } = request.params;
      const shard = parseShardId(shardId, log.shardCount);
      if (shard === undefined) {
        throw new TributaryError('NotFound', `no shard ${JSON.stringify(shardId)} in this stream (GET /v1/streams/shards lists them)`, { field: 'shardId' });
      }
      const { limit = DEFAULT_RECORDS_LIMIT, waitMs = 0, viewType = 'NEW_AND_OLD_IMAGES' } = request.query;
      const readAll = await reader(shard, request.query, limit);
      // Records of devices outside the key's policy are left out; the position still
      // moves past them, so a page can be short (or empty) and continuing skips nothing.
      const access = accessOf(request);
      const read = async (): Promise<Page> => {
        const page = await readAll();
        return { records: page.records.filter((r) => access.allowsDevice(r.deviceId)), next: page.next };
      };
      const page = await readWithWait(shard, read, waitMs, reply.raw);
      return { items: renderAll(page.records, log.streamArn, viewType, request.log), nextSequenceNumber: String(page.next) };
    },
  );

  app.get<{ Querystring: TailQuery }>(
    '/streams/tail',
    {
      config: { access: { action: 'streams:Read' } },
      schema: {
        tags: ['streams'],
        summary: 'Live tail of change records (Server-Sent Events)',
        querystring: TailQuery,
        response: {
          200: Type.String({
            description:
              'text/event-stream: one `event: record` per committed change record (data: the stream record as JSON), from the moment of connecting; a `: heartbeat` comment every 15 s. A client that reads too slowly gets `event: error` and is disconnected.',
          }),
          ...errorResponses,
        },
      },
    },
    (request, reply) => {
      const { deviceId, viewType = 'NEW_AND_OLD_IMAGES' } = request.query;
      const access = accessOf(request);
      if (deviceId !== undefined && !access.allowsDevice(deviceId)) {
        throw new TributaryError('AccessDenied', `API key ${access.keyId ?? ''} is not allowed streams:Read on device ${JSON.stringify(deviceId)}`, { field: 'deviceId' });
      }
      let pending: ChangeRecord[] = [];
      let flushScheduled = false;
      const stream = openEventStream(request, reply, `tail of ${log.streamArn}${deviceId === undefined ? '' : ` for device ${deviceId}`}`, {
        heartbeatMs,
        maxBufferedBytes,
        slowClientHint: 'reconnect, or read the shards with GET /v1/streams/shards/{shardId}/records',
        onStop: () => {
          unsubscribe();
          stopFollowing?.();
          active.delete(stream.stop);
          pending = [];
        },
      });
      const flush = (): void => {
        flushScheduled = false;
        let out = '';
        for (const r of renderAll(pending, log.streamArn, viewType, request.log)) out += sseEvent('record', r);
        pending = [];
        if (out !== '') stream.send(out);
      };
      // The listener runs inside the store's commit: it only queues, and rendering waits
      // for the next turn of the event loop so that tails do not slow writes down.
      const deviceShard = deviceId === undefined ? undefined : log.shardOf(deviceId);
      const unsubscribe = log.onCommit((records) => {
        if (stream.stopped) return;
        for (const r of records) {
          if (deviceShard === undefined ? access.allowsDevice(r.deviceId) : r.shard === deviceShard && r.deviceId === deviceId) pending.push(r);
        }
        if (pending.length > 0 && !flushScheduled) {
          flushScheduled = true;
          setImmediate(flush);
        }
      });
      // Cluster mode: the records other nodes commit too.
      const stopFollowing = log.followOthers?.();
      active.add(stream.stop);
    },
  );
};

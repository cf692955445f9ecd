/**
 * Telemetry routes of one device (`/v1/devices/:id/...`): range query, aggregation,
 * latest reading (or per-key latest values), and HTTP ingest. The range query also
 * exports the whole range as NDJSON or CSV, streamed (api/export.ts).
 *
 * @module
 */
import { Type } from '@sinclair/typebox';
import { Readable } from 'node:stream';
import { errorCodes, type FastifyPluginAsync, type FastifySchemaValidationError } from 'fastify';
import { invalidParameter, TributaryError } from '../../core/errors.js';
import { parseJson, stringifyJson } from '../../core/numbers.js';
import { parseDuration, parseTime } from '../../core/time.js';
import { AGGREGATES, type Aggregate, type AggregateQuery as StoreAggregateQuery, type Page, type RangeQuery, type RawReading, type TelemetryStore } from '../../store/types.js';
import { formatSchemaErrors, type SchemaErrorDataVar } from '../errors.js';
import { csvExport, EXPORT_CONTENT_TYPES, ndjsonExport } from '../export.js';
import {
  AggregateQuery,
  AggregateResult,
  DEFAULT_LIMIT,
  DeviceIdParams,
  errorResponses,
  INGEST_BODY_MESSAGE,
  IngestBody,
  IngestResult,
  LatestQuery,
  LatestValues,
  NoQuery,
  Reading,
  ReadingPage,
  TelemetryQuery,
} from '../schemas.js';
import { deviceNotFound } from './devices.js';

/** What ingest reports for an accepted request (see `IngestResult` in schemas.ts). */
export interface IngestOutcome {
  accepted: number;
  items: Array<{ ts: number; seq: number; change: string }>;
}

/**
 * Decodes a request body into readings and writes them; shared with MQTT ingest so
 * that both transports accept and reject the same payloads. `raw` is the body as sent,
 * for the rejects log. Throws TributaryErrors.
 */
export type IngestFn = (deviceId: string, body: unknown, raw: Buffer) => Promise<IngestOutcome>;

/** Options of {@link telemetryRoutes}. */
export interface TelemetryRoutesOptions {
  store: TelemetryStore;
  ingest: IngestFn;
  /** Largest accepted request body for ingest, in bytes (`maxPayloadBytes`, as for MQTT). */
  maxBodyBytes: number;
}

/**
 * Splits `?keys=temp,gps.lat` into a projection. An empty segment (`a,,b`, a trailing
 * comma) is rejected rather than dropped: it is more likely a client bug than intent.
 */
export function parseKeys(text: string): string[] {
  const keys = text.split(',').map((k) => k.trim());
  if (keys.some((k) => k === '')) throw invalidParameter('keys', 'keys must be a comma-separated list of non-empty value keys (e.g. temp,gps.lat)');
  return keys;
}

/** `?interval=`: a duration (`1m`, `1h`) or a whole number of milliseconds. */
export function parseInterval(text: string): number {
  const t = text.trim();
  if (/^\d+$/.test(t)) {
    const ms = Number(t);
    if (Number.isSafeInteger(ms) && ms > 0) return ms;
    throw invalidParameter('interval', `interval must be a positive duration like 1m or 1h, or milliseconds (got ${JSON.stringify(text)})`);
  }
  return parseDuration(t, 'interval');
}

/** `?agg=avg,max` */
export function parseAggregates(text: string): Aggregate[] {
  const names = text.split(',').map((a) => a.trim());
  for (const name of names) {
    if (!(AGGREGATES as readonly string[]).includes(name)) {
      throw invalidParameter('agg', `agg must be a comma-separated list of ${AGGREGATES.join(', ')} (got ${JSON.stringify(name)})`);
    }
  }
  return names as Aggregate[];
}

/** The ingest body's `anyOf` error names no shape; say which shapes are accepted instead. */
function ingestSchemaErrors(errors: FastifySchemaValidationError[], dataVar: SchemaErrorDataVar): Error {
  if (dataVar === 'body' && errors[errors.length - 1]?.keyword === 'anyOf') return new Error(INGEST_BODY_MESSAGE);
  return formatSchemaErrors(errors, dataVar);
}

/** `from`/`to` with their defaults (the last 24 h), read against one clock reading so `from=-1h&to=now` spans exactly an hour. */
function timeRange(q: { from?: string; to?: string }): { from: number; to: number } {
  const now = Date.now();
  const from = parseTime(q.from ?? '-24h', 'from', now);
  const to = parseTime(q.to ?? 'now', 'to', now);
  if (from > to) throw invalidParameter('from', `from (${from}) is after to (${to})`);
  return { from, to };
}

/**
 * The `Reading` schema's JSON, spliced from the values' stored JSON text instead of
 * parsing it only for fast-json-stringify to write it back out. The routes that answer
 * with it keep their response schema: it documents the shape (OpenAPI) all the same.
 */
function readingJson(r: RawReading): string {
  // Device ids are plain ASCII without quotes or backslashes (core/ids.ts), so they need no escaping.
  return `{"deviceId":"${r.deviceId}","ts":${r.ts},"seq":${r.seq},"values":${r.valuesJson}}`;
}

/** A `ReadingPage` as JSON (cursors are base64url, so they need no escaping either). */
function readingPageJson(page: Page<RawReading>): string {
  let json = '{"items":[';
  const items = page.items;
  for (let i = 0; i < items.length; i++) json += (i === 0 ? '' : ',') + readingJson(items[i] as RawReading);
  return `${json}],"nextCursor":${page.nextCursor === null ? 'null' : `"${page.nextCursor}"`}}`;
}

const JSON_TYPE = 'application/json; charset=utf-8';

export const telemetryRoutes: FastifyPluginAsync<TelemetryRoutesOptions> = async (app, { store, ingest, maxBodyBytes }) => {
  // Ingest bodies are read as MQTT payloads are (ingest/payload.ts): numbers a double
  // cannot hold keep their digits, and every key is a plain key — `__proto__` too, which
  // ingest then refuses with its reason, where fastify's default parser (secure-json-parse)
  // refused the whole body as "not valid JSON". The body's bytes are kept as sent for the
  // rejects log, as MQTT does: a body that does not decode (nested thousands deep, say)
  // cannot always be serialized back.
  const rawBodies = new WeakMap<object, Buffer>();
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, raw, done) => {
    rawBodies.set(request, raw as Buffer);
    const text = (raw as Buffer).toString('utf8');
    if (text === '') return done(new errorCodes.FST_ERR_CTP_EMPTY_JSON_BODY(), undefined);
    try {
      done(null, parseJson(text));
    } catch {
      done(new errorCodes.FST_ERR_CTP_INVALID_JSON_BODY(), undefined);
    }
  });
  app.get<{ Params: DeviceIdParams; Querystring: TelemetryQuery }>(
    '/devices/:id/telemetry',
    { config: { access: { action: 'telemetry:Read', device: 'id' } }, schema: { tags: ['telemetry'], summary: 'Query readings in a time range', params: DeviceIdParams, querystring: TelemetryQuery, response: { 200: ReadingPage, ...errorResponses } } },
    async (request, reply) => {
      const { id } = request.params;
      const q = request.query;
      const { from, to } = timeRange(q);
      const range: RangeQuery = { deviceId: id, from, to, order: q.order ?? 'asc', limit: q.limit ?? DEFAULT_LIMIT };
      if (q.cursor !== undefined) range.cursor = q.cursor;
      const keys = q.keys === undefined ? undefined : parseKeys(q.keys);
      if (keys !== undefined) range.keys = keys;
      const format = q.format ?? 'json';
      if (format !== 'json' && q.cursor !== undefined) throw invalidParameter('cursor', `format=${format} streams the whole range; cursor applies to json pages only`);
      // An unknown device is a 404, not an empty page: a typo in the id should be visible.
      if ((await store.getDevice(id)) === undefined) throw deviceNotFound(id);
      if (format !== 'json') {
        const source = { store, range: { deviceId: id, from, to, order: range.order, ...(keys === undefined ? {} : { keys }) }, max: undefined };
        // Once streaming, a failure can only cut the response short: the status line is already sent.
        return reply.type(EXPORT_CONTENT_TYPES[format]).send(Readable.from(format === 'ndjson' ? ndjsonExport(source) : csvExport(source, keys)));
      }
      // A Buffer goes out as is, past the serializer; encoded here once, not measured and then encoded by the socket.
      return reply.type(JSON_TYPE).send(Buffer.from(readingPageJson(await store.queryRaw(range)), 'utf8'));
    },
  );

  app.get<{ Params: DeviceIdParams; Querystring: AggregateQuery }>(
    '/devices/:id/telemetry/aggregate',
    { config: { access: { action: 'telemetry:Read', device: 'id' } }, schema: { tags: ['telemetry'], summary: 'Aggregate readings into time buckets', params: DeviceIdParams, querystring: AggregateQuery, response: { 200: AggregateResult, ...errorResponses } } },
    async (request) => {
      const { id } = request.params;
      const q = request.query;
      const { from, to } = timeRange(q);
      const query: StoreAggregateQuery = { deviceId: id, from, to, intervalMs: parseInterval(q.interval), aggs: parseAggregates(q.agg ?? 'avg') };
      if (q.keys !== undefined) query.keys = parseKeys(q.keys);
      if ((await store.getDevice(id)) === undefined) throw deviceNotFound(id);
      const result = await store.aggregate(query);
      return { deviceId: id, from, to, intervalMs: result.intervalMs, buckets: result.buckets };
    },
  );

  app.get<{ Params: DeviceIdParams; Querystring: LatestQuery }>(
    '/devices/:id/latest',
    { config: { access: { action: 'telemetry:Read', device: 'id' } }, schema: { tags: ['telemetry'], summary: 'Latest reading, or latest value per key', params: DeviceIdParams, querystring: LatestQuery, response: { 200: Type.Union([Reading, LatestValues]), ...errorResponses } } },
    async (request, reply) => {
      const { id } = request.params;
      if (request.query.keys !== undefined) {
        const values = await store.latest(id, { keys: parseKeys(request.query.keys) });
        if (values === undefined) throw deviceNotFound(id);
        // Written here: the serializer would turn a kept-digit number into an object.
        return reply.type(JSON_TYPE).send(Buffer.from(stringifyJson(values), 'utf8'));
      }
      const reading = await store.latestRaw(id);
      if (reading !== undefined) return reply.type(JSON_TYPE).send(Buffer.from(readingJson(reading), 'utf8'));
      // Only on a miss: is the device unknown, or known without readings (provisioned)?
      if ((await store.getDevice(id)) === undefined) throw deviceNotFound(id);
      throw new TributaryError('NotFound', `device ${JSON.stringify(id)} has no readings yet`);
    },
  );

  app.post<{ Params: DeviceIdParams; Body: unknown }>(
    '/devices/:id/telemetry',
    {
      bodyLimit: maxBodyBytes,
      config: { access: { action: 'telemetry:Write', device: 'id' } },
      schemaErrorFormatter: ingestSchemaErrors,
      schema: {
        tags: ['telemetry'],
        summary: 'Ingest one reading or an array of readings',
        description:
          'Decoded and checked as an MQTT payload is. Beyond the schema: a reading needs at least one value (`{}` answers 400 ValidationError), an array at least one reading (`[]` too), and values nest at most 8 levels; a refused body is kept, as sent, in the rejects log (`GET /v1/rejects`).',
        params: DeviceIdParams,
        querystring: NoQuery,
        body: IngestBody,
        response: { 201: IngestResult, ...errorResponses },
      },
    },
    async (request, reply) => {
      const result = await ingest(request.params.id, request.body, rawBodies.get(request) ?? Buffer.alloc(0));
      return reply.code(201).send(result);
    },
  );
};

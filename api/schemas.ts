/**
 * JSON schemas of the HTTP API, written with TypeBox so that one declaration gives
 * both the runtime schema (Ajv validates requests, fast-json-stringify serializes
 * responses) and the TypeScript type of the handler's input.
 *
 * Request schemas reject unknown query parameters (`additionalProperties: false`,
 * with Ajv's `removeAdditional` turned off in `server.ts`): a typo such as `?form=`
 * or an unsupported option such as `?format=csv` answers 400 InvalidParameter instead
 * of being silently ignored.
 *
 * @module
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { DEVICE_ID_PATTERN } from '../core/ids.js';
import { COMMAND_NAME_PATTERN } from '../ingest/topics.js';
import { AGGREGATES } from '../store/types.js';

/** Largest page a list route returns (`API.md`: default 100, max 10,000). */
export const MAX_LIMIT = 10_000;
/** Page size when `?limit=` is absent. */
export const DEFAULT_LIMIT = 100;

/** Cursors are opaque to the API; the bound only keeps absurd inputs out of the store. */
const Cursor = Type.String({ minLength: 1, maxLength: 4096, description: 'Opaque cursor from the previous page\'s `nextCursor`.' });

const Limit = Type.Integer({ minimum: 1, maximum: MAX_LIMIT, default: DEFAULT_LIMIT, description: `Page size, 1..${MAX_LIMIT}.` });

/**
 * A string enum as a plain `enum` keyword. TypeBox's `Union` of literals compiles to
 * `anyOf`, whose validation errors ("must match a schema in anyOf") name no allowed
 * values; `enum` errors carry `allowedValues`.
 */
function StringEnum<const T extends readonly string[]>(values: T, options: { default?: T[number]; description?: string } = {}) {
  return Type.Unsafe<T[number]>({ type: 'string', enum: [...values], ...options });
}

/**
 * `string | null` as a type array: fast-json-stringify serializes it directly, whereas
 * an `anyOf` makes it try each branch in turn.
 */
function NullableString(options: { description?: string } = {}) {
  return Type.Unsafe<string | null>({ type: ['string', 'null'], ...options });
}

/** `number | null` as a type array (see {@link NullableString}). */
function Nullable(type: 'number' | 'integer', options: { description?: string } = {}) {
  return Type.Unsafe<number | null>({ type: [type, 'null'], ...options });
}

/** A list response: `{ items, nextCursor }` (the contract's list shape). */
function PageOf<T extends TSchema>(item: T) {
  return Type.Object({
    items: Type.Array(item),
    nextCursor: NullableString({ description: 'Pass as `?cursor=` to get the next page; null on the last page.' }),
  });
}

/** The error body every failure answers with. */
export const ErrorBody = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ description: 'Stable PascalCase code from the error catalog (docs/errors.md).' }),
      message: Type.String(),
      field: Type.Optional(Type.String({ description: 'The parameter or body field the error is about.' })),
    }),
  },
  { description: 'Error' },
);
export type ErrorBody = Static<typeof ErrorBody>;

/**
 * Response schemas shared by every route for its failures, so that errors are
 * serialized by the same fast path as successes and documented alike.
 */
export const errorResponses = { '4xx': ErrorBody, '5xx': ErrorBody } as const;

export const DeviceIdParams = Type.Object(
  { id: Type.String({ pattern: DEVICE_ID_PATTERN, description: 'Device id: 1-128 characters of A-Z a-z 0-9 . _ : -' }) },
  { additionalProperties: false },
);
export type DeviceIdParams = Static<typeof DeviceIdParams>;

/** `GET /v1/devices` */
export const ListDevicesQuery = Type.Object(
  {
    limit: Type.Optional(Limit),
    cursor: Type.Optional(Cursor),
    prefix: Type.Optional(Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9._:-]+$', description: 'Only devices whose id starts with this (e.g. `site-7-`); combines with `tag`.' })),
    tag: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 400,
        description:
          'Only devices with this tag: `key` (any value) or `key=value` (URL-encoded `key%3Dvalue` or as is); another form is a 400. A filtered page examines at most 10,000 registry entries, so it may hold fewer than `limit` devices with a non-null `nextCursor`.',
      }),
    ),
  },
  { additionalProperties: false },
);
export type ListDevicesQuery = Static<typeof ListDevicesQuery>;

/** A device registry entry (`DeviceInfo` of the store). */
export const DeviceInfo = Type.Object({
  deviceId: Type.String(),
  firstSeen: Nullable('integer', { description: 'Epoch ms of the first write; null for a registered device that has not written yet.' }),
  lastSeen: Nullable('integer', { description: 'Epoch ms of the last write; null until the device writes.' }),
  readings: Type.Integer({ description: 'Readings written (inserted) since the device was registered; retention drops do not lower it.' }),
  readingsPerMinute: Type.Number({ description: 'Readings inserted a minute, recently: an exponentially weighted average over about the last minute, kept in memory by the node that stores the device (0 after its restart until the device writes again).' }),
  tags: Type.Record(Type.String(), Type.String()),
});

/** `PUT /v1/devices/:id`: creates the device or replaces its tags. */
export const PutDeviceBody = Type.Object(
  {
    tags: Type.Optional(
      Type.Record(Type.String(), Type.String(), {
        description: 'The device\'s tags, replacing any it had (absent: none). At most 50; keys 1-64 characters of A-Z a-z 0-9 . _ -; values at most 256 characters.',
      }),
    ),
  },
  { additionalProperties: false },
);
export type PutDeviceBody = Static<typeof PutDeviceBody>;

export const DevicePage = PageOf(DeviceInfo);

/**
 * A reading's values are arbitrary (possibly nested) JSON objects, so the schema
 * leaves them open; fast-json-stringify then falls back to `JSON.stringify` for that
 * one property and keeps its compiled path for the key fields.
 */
const Values = Type.Object({}, { additionalProperties: true, description: 'Flat or nested object of numbers, strings and booleans.' });

/** A stored reading with its full item key. */
export const Reading = Type.Object({
  deviceId: Type.String(),
  ts: Type.Integer({ description: 'Epoch ms.' }),
  seq: Type.Integer({ description: 'Disambiguates readings of the same millisecond.' }),
  values: Values,
});

export const ReadingPage = PageOf(Reading);

/** Any leaf value of a reading (number, string or boolean), serialized as is. */
const LeafValue = Type.Unknown({ description: 'A number, string or boolean.' });

/** `GET /v1/devices/:id/latest` */
export const LatestQuery = Type.Object(
  {
    keys: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 4096,
        description:
          'Comma-separated value keys: answer with the latest value of each key instead of the latest reading. Dots address nested keys; a key naming an object covers its leaves (`gps` → `gps.lat`, `gps.lon`).',
      }),
    ),
  },
  { additionalProperties: false },
);
export type LatestQuery = Static<typeof LatestQuery>;

/** Per-key latest values (`?keys=`): each key's value in the reading with the highest (ts, seq) that carried it. */
export const LatestValues = Type.Object({
  deviceId: Type.String(),
  values: Type.Record(
    Type.String(),
    Type.Object({ ts: Type.Integer(), seq: Type.Integer(), value: LeafValue }),
    { description: 'By leaf path (`temp`, `gps.lat`); keys the device never sent are absent.' },
  ),
});

/** `GET /v1/devices/:id/telemetry/aggregate` */
export const AggregateQuery = Type.Object(
  {
    from: Type.Optional(Type.String({ minLength: 1, maxLength: 64, default: '-24h', description: 'Inclusive lower bound, as for the range query.' })),
    to: Type.Optional(Type.String({ minLength: 1, maxLength: 64, default: 'now', description: 'Inclusive upper bound, as for the range query.' })),
    interval: Type.String({
      minLength: 1,
      maxLength: 32,
      description: 'Bucket width, greater than zero: a duration (`1m`, `15m`, `1h`, `1d`) or milliseconds (`0`, `-1m` answer 400 InvalidParameter). Buckets start at multiples of it counted from the epoch; at most 100,000 buckets per request.',
    }),
    agg: Type.Optional(
      Type.String({ minLength: 1, maxLength: 128, default: 'avg', description: `Comma-separated aggregates: ${AGGREGATES.join(', ')}.` }),
    ),
    keys: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: 'Comma-separated value keys to aggregate (default: every key); dots address nested keys.' })),
  },
  { additionalProperties: false },
);
export type AggregateQuery = Static<typeof AggregateQuery>;

const NumericAggregate = Nullable('number', { description: 'Over the numbers among the values; null when there are none.' });

export const AggregateResult = Type.Object({
  deviceId: Type.String(),
  from: Type.Integer(),
  to: Type.Integer(),
  intervalMs: Type.Integer(),
  buckets: Type.Array(
    Type.Object({
      start: Type.Integer({ description: 'Inclusive, epoch ms (a multiple of the interval).' }),
      end: Type.Integer({ description: 'Exclusive, epoch ms.' }),
      values: Type.Record(
        Type.String(),
        Type.Object({
          avg: Type.Optional(NumericAggregate),
          min: Type.Optional(NumericAggregate),
          max: Type.Optional(NumericAggregate),
          sum: Type.Optional(NumericAggregate),
          count: Type.Optional(Type.Integer({ description: 'Values of any type.' })),
          first: Type.Optional(LeafValue),
          last: Type.Optional(LeafValue),
        }),
        { description: 'By leaf path (`temp`, `gps.lat`).' },
      ),
    }),
    { description: 'Buckets in time order; buckets without readings of the selected keys are left out.' },
  ),
});

/** `GET /v1/devices/:id/telemetry` */
export const TelemetryQuery = Type.Object(
  {
    from: Type.Optional(
      Type.String({ minLength: 1, maxLength: 64, default: '-24h', description: 'Inclusive lower bound: epoch ms, ISO-8601, `now` or an offset such as `-15m`.' }),
    ),
    to: Type.Optional(Type.String({ minLength: 1, maxLength: 64, default: 'now', description: 'Inclusive upper bound, same forms as `from`.' })),
    order: Type.Optional(StringEnum(['asc', 'desc'] as const, { default: 'asc', description: 'Sort by (ts, seq).' })),
    limit: Type.Optional(Limit),
    cursor: Type.Optional(Cursor),
    keys: Type.Optional(
      Type.String({ minLength: 1, maxLength: 4096, description: 'Comma-separated value keys to keep; dots address nested keys (`temp,gps.lat`).' }),
    ),
    format: Type.Optional(
      StringEnum(['json', 'ndjson', 'csv'] as const, {
        default: 'json',
        description:
          '`json`: one page (`limit`, `cursor`). `ndjson` (one reading per line) and `csv` (`ts,seq` and a column per value key, nested keys dotted; the columns are `keys` or every key in the range) stream the whole range without paging; `limit` and `cursor` do not apply.',
      }),
    ),
  },
  { additionalProperties: false },
);
export type TelemetryQuery = Static<typeof TelemetryQuery>;

/** Routes that take no query parameters still declare so, to reject unknown ones. */
export const NoQuery = Type.Object({}, { additionalProperties: false });

/**
 * One reading as a device sends it: a bare values object or `{ ts, values }`. The
 * ingest decoder (shared with MQTT) tells the two apart and checks the details; the
 * schema only guarantees an object, so that both transports reject alike.
 */
const ReadingBody = Type.Object({}, { additionalProperties: true });

/** `POST /v1/devices/:id/telemetry`: one reading or an array of readings. */
export const IngestBody = Type.Union([ReadingBody, Type.Array(ReadingBody)]);
/** Message for an ingest body of the wrong shape (the `anyOf` error itself names no shape). */
export const INGEST_BODY_MESSAGE = 'body must be a reading ({...} or {"ts": ..., "values": {...}}) or an array of readings';

export const IngestResult = Type.Object({
  accepted: Type.Integer({ description: 'Number of readings written.' }),
  items: Type.Array(
    Type.Object({
      ts: Type.Integer(),
      seq: Type.Integer(),
      change: Type.String({ description: 'INSERT, MODIFY, or NONE when a redelivery wrote nothing.' }),
    }),
  ),
});

export const Health = Type.Object({ status: Type.Literal('ok') });
export const Ready = Type.Object({ status: Type.Literal('ready') });

/** `POST /v1/devices/:id/commands/:name` (the name pattern is the broker's, ingest/mqtt-broker.ts). */
export const CommandParams = Type.Object(
  {
    id: Type.String({ pattern: DEVICE_ID_PATTERN, description: 'Device id: 1-128 characters of A-Z a-z 0-9 . _ : -' }),
    name: Type.String({ pattern: COMMAND_NAME_PATTERN, description: 'Command name: one MQTT topic level of 1-128 characters, without / + # or control characters' }),
  },
  { additionalProperties: false },
);
export type CommandParams = Static<typeof CommandParams>;

export const CommandBody = Type.Object(
  {
    payload: Type.Optional(Type.Unknown({ description: 'Any JSON value; the device receives it as JSON text. Absent: null.' })),
    // An `enum`, so that a wrong value's error names the allowed ones (see StringEnum).
    qos: Type.Optional(Type.Unsafe<0 | 1>({ type: 'integer', enum: [0, 1], description: 'MQTT QoS of the command (default 1). QoS 1 is queued for a device with a persistent session while it is offline.' })),
  },
  { additionalProperties: false },
);
export type CommandBody = Static<typeof CommandBody>;

export const CommandResult = Type.Object({
  topic: Type.String({ description: 'The topic the command was published on: devices/{id}/commands/{name}.' }),
  qos: Type.Integer(),
});

import { hash } from 'node:crypto';
import type { AttributeValue } from '@aws-sdk/client-dynamodb';
import { parseStreamArn, type StreamArnParts } from '../core/arn.js';
import { NumberValue, numberText } from '../core/numbers.js';
import { tsSeqOf } from '../store/table-key.js';
import type { Value, Values } from '../store/types.js';
import type { ChangeRecord, EventName } from './types.js';

export type StreamViewType = 'KEYS_ONLY' | 'NEW_IMAGE' | 'OLD_IMAGE' | 'NEW_AND_OLD_IMAGES';

type Image = Record<string, AttributeValue>;

/** One record of a DynamoDB stream as AWS Lambda delivers it. */
export interface DynamoDBStreamRecord {
  eventID: string;
  eventName: EventName;
  eventVersion: '1.1';
  eventSource: 'aws:dynamodb';
  awsRegion: string;
  eventSourceARN: string;
  dynamodb: {
    ApproximateCreationDateTime: number;
    Keys: Image;
    NewImage?: Image;
    OldImage?: Image;
    SequenceNumber: string;
    SizeBytes: number;
    StreamViewType: StreamViewType;
  };
  userIdentity?: { type: 'Service'; principalId: 'dynamodb.amazonaws.com' };
}

export interface DynamoDBStreamEvent {
  Records: DynamoDBStreamRecord[];
}

/**
 * One value as an AttributeValue. Written out here for the value model there is
 * (numbers, kept-digit numbers, strings, booleans, nested maps) rather than with
 * `marshall`, which tells a map by `value.constructor.name` and so took a value named
 * `constructor` for something else and threw.
 * @throws Error for anything else (a record this build cannot render).
 */
function attributeOf(v: Value, path: string): AttributeValue {
  switch (typeof v) {
    case 'string':
      return { S: v };
    case 'boolean':
      return { BOOL: v };
    case 'number':
      if (!Number.isFinite(v)) throw new Error(`value "${path}" is ${String(v)}, which a DynamoDB number cannot be`);
      return { N: numberText(v) };
  }
  if (v instanceof NumberValue) return { N: v.value };
  if (typeof v === 'object' && v !== null && !Array.isArray(v)) return { M: mapOf(v, `${path}.`) };
  throw new Error(`value "${path}" is ${v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v}, which a reading cannot hold`);
}

/** Each value as an attribute of `into`; every name is an own key (`__proto__` too, in records stored before it was refused). */
function mapOf(values: Values, prefix: string, into: Image = {}): Image {
  for (const k of Object.keys(values)) {
    const attr = attributeOf(values[k] as Value, prefix + k);
    if (k === '__proto__') Object.defineProperty(into, k, { value: attr, enumerable: true, writable: true, configurable: true });
    else into[k] = attr;
  }
  return into;
}

/** The item's key (store/table-key.ts): `tsSeq` as exact decimal text, which a JS number cannot hold. */
function itemKey(r: ChangeRecord): Image {
  return { deviceId: { S: r.deviceId }, tsSeq: { N: tsSeqOf(r.ts, r.seq) } };
}

/** Every image carries the key, `ts` and `seq`; set again after the values so that none of them can shadow these. */
function itemAttributes(r: ChangeRecord): Image {
  return { ...itemKey(r), ts: { N: String(r.ts) }, seq: { N: String(r.seq) } };
}

function image(r: ChangeRecord, values: Values): Image {
  // The item attributes again after the values: none of them can be shadowed.
  return Object.assign(mapOf(values, '', itemAttributes(r)), itemAttributes(r));
}

let lastArn: { arn: string; parts: StreamArnParts } | undefined;

/** The region and label of a stream ARN; one stream per process, so the last one parsed is kept. */
function streamOf(streamArn: string): StreamArnParts {
  if (lastArn?.arn !== streamArn) {
    const parts = parseStreamArn(streamArn);
    if (parts === undefined) throw new TypeError(`not a DynamoDB stream ARN: ${streamArn}`);
    lastArn = { arn: streamArn, parts };
  }
  return lastArn.parts;
}

/**
 * Renders a change record exactly as a Lambda handler attached to a DynamoDB stream
 * receives it: typed AttributeValue images, `ApproximateCreationDateTime` in epoch
 * seconds, `SequenceNumber` as a decimal string, `awsRegion` the region of the stream's
 * ARN. The event id is derived from the stream's label (its creation time) and the
 * record's place in the stream, so a redelivered record carries the same id; in cluster
 * mode from the label, the telemetry record it was made from and the item, so the same
 * change written twice (a zombie owner during a rebalance) carries the same id too.
 * Neither region nor account goes into it: configuring them changes no id.
 */
export function toStreamRecord(r: ChangeRecord, streamArn: string, viewType: StreamViewType = 'NEW_AND_OLD_IMAGES'): DynamoDBStreamRecord {
  const stream = streamOf(streamArn);
  const keys = itemKey(r);
  const dynamodb: DynamoDBStreamRecord['dynamodb'] = {
    ApproximateCreationDateTime: Math.floor(r.createdAt / 1000),
    Keys: keys,
    SequenceNumber: String(r.sequenceNumber),
    SizeBytes: 0,
    StreamViewType: viewType,
  };
  if (r.newValues && (viewType === 'NEW_IMAGE' || viewType === 'NEW_AND_OLD_IMAGES')) dynamodb.NewImage = image(r, r.newValues);
  if (r.oldValues && (viewType === 'OLD_IMAGE' || viewType === 'NEW_AND_OLD_IMAGES')) dynamodb.OldImage = image(r, r.oldValues);
  dynamodb.SizeBytes = Buffer.byteLength(JSON.stringify([dynamodb.Keys, dynamodb.NewImage, dynamodb.OldImage]));
  const record: DynamoDBStreamRecord = {
    // One-shot crypto.hash: the same digest as createHash, without a Hash object per record.
    eventID: hash('md5', r.source === undefined ? `${stream.label}|${r.shard}|${r.sequenceNumber}` : `${stream.label}|src|${r.source}|${r.deviceId}|${r.ts}|${r.seq}`, 'hex'),
    eventName: r.eventName,
    eventVersion: '1.1',
    eventSource: 'aws:dynamodb',
    awsRegion: stream.region,
    eventSourceARN: streamArn,
    dynamodb,
  };
  // DynamoDB marks TTL deletions this way; retention drops are our TTL.
  if (r.byService) record.userIdentity = { type: 'Service', principalId: 'dynamodb.amazonaws.com' };
  return record;
}

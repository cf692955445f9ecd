import { hash } from 'node:crypto';
import { marshall } from '@aws-sdk/util-dynamodb';
import type { AttributeValue } from '@aws-sdk/client-dynamodb';
import { NumberValue, numberText } from '../core/numbers.js';
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
  awsRegion: 'local';
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

function image(r: ChangeRecord, values: Values): Image {
  return mapOf(values, '', { deviceId: { S: r.deviceId }, ts: { N: String(r.ts) }, seq: { N: String(r.seq) } });
}

/**
 * Renders a change record exactly as a Lambda handler attached to a DynamoDB stream
 * receives it: typed AttributeValue images, `ApproximateCreationDateTime` in epoch
 * seconds, `SequenceNumber` as a decimal string. The event id is derived from the
 * record's place in the stream, so a redelivered record carries the same id; in cluster
 * mode from the telemetry record it was made from and the item, so the same change
 * written twice (a zombie owner during a rebalance) carries the same id too.
 */
export function toStreamRecord(r: ChangeRecord, streamArn: string, viewType: StreamViewType = 'NEW_AND_OLD_IMAGES'): DynamoDBStreamRecord {
  const keys = marshall({ deviceId: r.deviceId, ts: r.ts, seq: r.seq }) as Image;
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
    eventID: hash('md5', r.source === undefined ? `${streamArn}|${r.shard}|${r.sequenceNumber}` : `${streamArn}|src|${r.source}|${r.deviceId}|${r.ts}|${r.seq}`, 'hex'),
    eventName: r.eventName,
    eventVersion: '1.1',
    eventSource: 'aws:dynamodb',
    awsRegion: 'local',
    eventSourceARN: streamArn,
    dynamodb,
  };
  // DynamoDB marks TTL deletions this way; retention drops are our TTL.
  if (r.byService) record.userIdentity = { type: 'Service', principalId: 'dynamodb.amazonaws.com' };
  return record;
}

import { hash } from 'node:crypto';
import { marshall } from '@aws-sdk/util-dynamodb';
import type { AttributeValue } from '@aws-sdk/client-dynamodb';
import type { Values } from '../store/types.js';
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

// Numbers beyond 2^53 are kept as their decimal text (unmarshall turns them into bigint).
const MARSHALL_OPTIONS = { allowImpreciseNumbers: true, removeUndefinedValues: true } as const;

function image(r: ChangeRecord, values: Values): Image {
  return marshall({ deviceId: r.deviceId, ts: r.ts, seq: r.seq, ...values }, MARSHALL_OPTIONS) as Image;
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

import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import type { AttributeValue } from '@aws-sdk/client-dynamodb';
import { toStreamRecord } from './lambda-event.js';
import type { ChangeRecord } from './types.js';

const ARN = 'arn:aws:dynamodb:eu-west-1:123456789012:table/telemetry/stream/2026-11-26T08:00:00.000';

const modify: ChangeRecord = {
  eventName: 'MODIFY',
  deviceId: 'sensor-1',
  ts: 1764150000000,
  seq: 0,
  newValues: { temp: 21.5, ok: true, site: 'north', gps: { lat: 52.1, lon: 4.3 } },
  oldValues: { temp: 20 },
  shard: 2,
  sequenceNumber: 17,
  createdAt: 1764150000123,
};

describe('toStreamRecord', () => {
  it('renders the DynamoDB stream record shape with typed images', () => {
    const r = toStreamRecord(modify, ARN);
    expect(r).toMatchObject({
      eventName: 'MODIFY',
      eventVersion: '1.1',
      eventSource: 'aws:dynamodb',
      awsRegion: 'eu-west-1',
      eventSourceARN: ARN,
      dynamodb: {
        ApproximateCreationDateTime: 1764150000,
        Keys: { deviceId: { S: 'sensor-1' }, tsSeq: { N: '1764150000000' } },
        SequenceNumber: '17',
        StreamViewType: 'NEW_AND_OLD_IMAGES',
      },
    });
    expect(r.eventID).toMatch(/^[0-9a-f]{32}$/);
    expect(r.dynamodb.NewImage?.temp).toEqual({ N: '21.5' });
    expect(r.dynamodb.NewImage?.gps).toEqual({ M: { lat: { N: '52.1' }, lon: { N: '4.3' } } });
    expect(r.dynamodb.SizeBytes).toBeGreaterThan(0);
    expect(r.userIdentity).toBeUndefined();
  });

  it('round-trips images through unmarshall', () => {
    const r = toStreamRecord(modify, ARN);
    expect(unmarshall(r.dynamodb.NewImage as Record<string, AttributeValue>)).toEqual({ deviceId: 'sensor-1', tsSeq: 1764150000000, ts: 1764150000000, seq: 0, ...modify.newValues });
    expect(unmarshall(r.dynamodb.OldImage as Record<string, AttributeValue>)).toEqual({ deviceId: 'sensor-1', tsSeq: 1764150000000, ts: 1764150000000, seq: 0, temp: 20 });
  });

  it('honours the stream view type', () => {
    expect(toStreamRecord(modify, ARN, 'KEYS_ONLY').dynamodb).not.toHaveProperty('NewImage');
    expect(toStreamRecord(modify, ARN, 'NEW_IMAGE').dynamodb).not.toHaveProperty('OldImage');
    expect(toStreamRecord(modify, ARN, 'OLD_IMAGE').dynamodb).not.toHaveProperty('NewImage');
  });

  it('gives the same record the same event id and different records different ids', () => {
    expect(toStreamRecord(modify, ARN).eventID).toBe(toStreamRecord({ ...modify }, ARN).eventID);
    expect(toStreamRecord({ ...modify, sequenceNumber: 18 }, ARN).eventID).not.toBe(toStreamRecord(modify, ARN).eventID);
  });

  it('derives the event id in cluster mode from the telemetry record and the item, not the place in the stream', () => {
    const fromSource = { ...modify, source: 4_711 };
    // The same change written twice (at two places) keeps its id; another item or record does not.
    expect(toStreamRecord({ ...fromSource, sequenceNumber: 99, shard: 3 }, ARN).eventID).toBe(toStreamRecord(fromSource, ARN).eventID);
    expect(toStreamRecord({ ...fromSource, source: 4_712 }, ARN).eventID).not.toBe(toStreamRecord(fromSource, ARN).eventID);
    expect(toStreamRecord({ ...fromSource, seq: 1 }, ARN).eventID).not.toBe(toStreamRecord(fromSource, ARN).eventID);
    expect(toStreamRecord(fromSource, ARN).eventID).not.toBe(toStreamRecord(modify, ARN).eventID);
  });

  it('keys the item by deviceId and tsSeq, the exact decimal of ts + seq / 10^10, with ts and seq kept in the images', () => {
    const r = toStreamRecord({ ...modify, seq: 3 }, ARN);
    expect(r.dynamodb.Keys).toEqual({ deviceId: { S: 'sensor-1' }, tsSeq: { N: '1764150000000.0000000003' } });
    expect(r.dynamodb.NewImage).toMatchObject({ tsSeq: { N: '1764150000000.0000000003' }, ts: { N: '1764150000000' }, seq: { N: '3' } });
    expect(r.dynamodb.OldImage).toMatchObject({ tsSeq: { N: '1764150000000.0000000003' }, ts: { N: '1764150000000' }, seq: { N: '3' } });
  });

  it('never lets a value shadow an item attribute (a record stored before ingest refused such names)', () => {
    const r = toStreamRecord({ ...modify, newValues: { tsSeq: 'x', ts: 'y', seq: 'z', deviceId: 'other', temp: 1 } }, ARN);
    expect(unmarshall(r.dynamodb.NewImage as Record<string, AttributeValue>)).toEqual({ deviceId: 'sensor-1', tsSeq: 1764150000000, ts: 1764150000000, seq: 0, temp: 1 });
  });

  it('takes awsRegion from the ARN and leaves region and account out of the event id', () => {
    const other = 'arn:aws:dynamodb:ap-south-1:999999999999:table/telemetry/stream/2026-11-26T08:00:00.000';
    expect(toStreamRecord(modify, other)).toMatchObject({ awsRegion: 'ap-south-1', eventSourceARN: other });
    expect(toStreamRecord(modify, other).eventID).toBe(toStreamRecord(modify, ARN).eventID);
    expect(toStreamRecord({ ...modify, source: 7 }, other).eventID).toBe(toStreamRecord({ ...modify, source: 7 }, ARN).eventID);
    // The derivation, pinned: md5 of label | shard | sequence number.
    expect(toStreamRecord(modify, other).eventID).toBe(createHash('md5').update('2026-11-26T08:00:00.000|2|17').digest('hex'));
    // Another stream (another label) is another id space.
    expect(toStreamRecord(modify, ARN.replace('08:00:00.000', '08:00:00.001')).eventID).not.toBe(toStreamRecord(modify, ARN).eventID);
  });

  it('marks retention removals with the DynamoDB service identity', () => {
    const r = toStreamRecord({ ...modify, eventName: 'REMOVE', newValues: undefined, byService: true }, ARN);
    expect(r.userIdentity).toEqual({ type: 'Service', principalId: 'dynamodb.amazonaws.com' });
  });
});

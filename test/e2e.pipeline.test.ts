import { fileURLToPath } from 'node:url';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import type { AttributeValue } from '@aws-sdk/client-dynamodb';
import { afterEach, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import type { DynamoDBStreamRecord } from '../streams/lambda-event.js';
import { connectClient, getJson, startApp, type RunningApp } from './app-harness.js';
import { tempDir, waitFor } from './helpers.js';

const FUNCTIONS_DIR = fileURLToPath(new URL('./fixtures/e2e-functions', import.meta.url));

interface TelemetryPage {
  items: Array<{ deviceId: string; ts: number; seq: number; values: Record<string, unknown> }>;
  nextCursor: string | null;
}

describe('end to end: MQTT → store → change stream → handler → HTTP', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('stores a published reading durably, streams it to a handler and serves it over HTTP, across a restart', async () => {
    const dir = tempDir();
    cleanups.push(dir.cleanup);
    let running: RunningApp = await startApp({ dataDir: dir.path, functionsDir: FUNCTIONS_DIR });
    cleanups.push(() => running.stop());

    // The handler forwards each event it receives to this topic.
    const observer: MqttClient = await connectClient(running.addresses.mqtt);
    cleanups.push(() => void observer.end(true));
    const seen: DynamoDBStreamRecord[] = [];
    observer.on('message', (_topic, payload) => seen.push(...(JSON.parse(payload.toString()) as { Records: DynamoDBStreamRecord[] }).Records));
    await observer.subscribeAsync('devices/observer/commands/event', { qos: 1 });

    const device: MqttClient = await connectClient(running.addresses.mqtt, { clientId: 'sensor-1' });
    cleanups.push(() => void device.end(true));
    const before = Date.now();
    await device.publishAsync('devices/sensor-1/telemetry', '{"temp":21.5}', { qos: 1 });
    const after = Date.now();
    await device.publishAsync('devices/sensor-1/telemetry', '{"ts": 1764150000000, "values": {"temp": 30.5, "gps": {"lat": 52.1}}}', { qos: 1 });
    await device.publishAsync('devices/sensor-1/telemetry', '{"ts": "2025-11-26T09:41:00.000Z", "values": {"door": true, "mode": "eco"}}', { qos: 1 });

    // The handler saw exactly the DynamoDB stream records.
    await waitFor(() => seen.length >= 3, 5000, 'three stream records at the handler');
    expect(seen).toHaveLength(3);
    const [live, stamped, iso] = seen as [DynamoDBStreamRecord, DynamoDBStreamRecord, DynamoDBStreamRecord];
    for (const r of seen) {
      expect(r).toMatchObject({ eventName: 'INSERT', eventVersion: '1.1', eventSource: 'aws:dynamodb', awsRegion: 'us-east-1' });
      expect(r.eventSourceARN).toMatch(/^arn:aws:dynamodb:us-east-1:000000000000:table\/telemetry\/stream\/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}$/);
      expect(r.dynamodb.StreamViewType).toBe('NEW_AND_OLD_IMAGES');
      expect(r.dynamodb.Keys.deviceId).toEqual({ S: 'sensor-1' });
      expect(r.dynamodb.ApproximateCreationDateTime).toBeGreaterThanOrEqual(Math.floor(before / 1000));
      expect(r.dynamodb.ApproximateCreationDateTime).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000));
      expect(r.dynamodb.OldImage).toBeUndefined();
    }
    // One device → one shard → consecutive sequence numbers in publish order.
    expect(seen.map((r) => Number(r.dynamodb.SequenceNumber))).toEqual([1, 2, 3].map((i) => Number(live.dynamodb.SequenceNumber) + i - 1));
    const liveImage = unmarshall(live.dynamodb.NewImage as Record<string, AttributeValue>);
    expect(liveImage).toEqual({ deviceId: 'sensor-1', tsSeq: liveImage.ts, ts: expect.any(Number), seq: 0, temp: 21.5 });
    expect(liveImage.ts).toBeGreaterThanOrEqual(before);
    expect(liveImage.ts).toBeLessThanOrEqual(after);
    expect(unmarshall(stamped.dynamodb.NewImage as Record<string, AttributeValue>)).toEqual({ deviceId: 'sensor-1', tsSeq: 1764150000000, ts: 1764150000000, seq: 0, temp: 30.5, gps: { lat: 52.1 } });
    expect(stamped.dynamodb.NewImage?.temp).toEqual({ N: '30.5' });
    expect(unmarshall(iso.dynamodb.NewImage as Record<string, AttributeValue>)).toEqual({ deviceId: 'sensor-1', tsSeq: Date.parse('2025-11-26T09:41:00.000Z'), ts: Date.parse('2025-11-26T09:41:00.000Z'), seq: 0, door: true, mode: 'eco' });

    // The REST API returns the readings.
    const recent = await getJson(`${running.addresses.http}/v1/devices/sensor-1/telemetry?from=-1h`);
    expect(recent.status).toBe(200);
    expect((recent.body as TelemetryPage).items).toEqual([{ deviceId: 'sensor-1', ts: liveImage.ts, seq: 0, values: { temp: 21.5 } }]);
    const all = await getJson(`${running.addresses.http}/v1/devices/sensor-1/telemetry?from=0&to=now&limit=10`);
    expect((all.body as TelemetryPage).items.map((i) => i.ts)).toEqual([1764150000000, Date.parse('2025-11-26T09:41:00.000Z'), liveImage.ts]);

    // The same records can be read from the stream over HTTP.
    const shardId = `shardId-${String(running.app.changeLog.shardOf('sensor-1')).padStart(4, '0')}`;
    const records = await getJson(`${running.addresses.http}/v1/streams/shards/${shardId}/records?iterator=TRIM_HORIZON`);
    expect(records.status).toBe(200);
    expect((records.body as { items: DynamoDBStreamRecord[] }).items).toEqual(seen);

    // A clean stop and a second start reopen the same data.
    device.end(true);
    observer.end(true);
    await running.stop();
    running = await startApp({ dataDir: dir.path });
    const again = await getJson(`${running.addresses.http}/v1/devices/sensor-1/telemetry?from=0&to=now&limit=10`);
    expect(again.body).toEqual(all.body);
    const shards = await running.app.changeLog.shards();
    expect(shards.reduce((n, s) => n + (s.lastSequenceNumber ?? 0), 0)).toBe(3);
  });
});

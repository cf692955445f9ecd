import { afterEach, describe, expect, it } from 'vitest';
import { KEPT_PAYLOAD_BYTES, type RejectEntry } from '../ingest/rejects-log.js';
import { call, connectClient, getJson, startApp } from './app-harness.js';
import { waitFor } from './helpers.js';

type RejectsPage = { items: RejectEntry[]; nextCursor: string | null };

describe('bad telemetry input', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('over MQTT: acknowledged once recorded in the rejects log, counted by reason, diverted, never stored or streamed', async () => {
    const running = await startApp({ maxPayloadBytes: 1024, retention: '1d', maxKeysPerReading: 3, maxClockSkew: '1m' });
    cleanups.push(running.destroy);
    const http = running.addresses.http;
    const watcher = await connectClient(running.addresses.mqtt);
    cleanups.push(() => void watcher.end(true));
    const telemetrySeen: string[] = [];
    const rejectsSeen: string[] = [];
    watcher.on('message', (topic, payload) => (topic.startsWith('$tributary/rejects/') ? rejectsSeen : telemetrySeen).push(payload.toString()));
    await watcher.subscribeAsync(['devices/+/telemetry', '$tributary/rejects/#'], { qos: 1 });

    const device = await connectClient(running.addresses.mqtt, { clientId: 'dev-1' });
    cleanups.push(() => void device.end(true));
    const now = Date.now();
    const cases: Array<[reason: string, payload: string | Buffer]> = [
      ['invalid_json', 'not json'],
      ['invalid_encoding', Buffer.from([0x7b, 0x22, 0x74, 0x22, 0x3a, 0x22, 0xc3, 0x28, 0x22, 0x7d])], // {"t":"\xc3("}
      ['payload_too_large', JSON.stringify({ blob: 'x'.repeat(3000) })],
      ['invalid_shape', '[1,2,3]'],
      ['invalid_shape', '"just a string"'],
      ['too_many_keys', '{"a":1,"b":2,"c":3,"d":4}'],
      ['timestamp_in_future', JSON.stringify({ ts: now + 3_600_000, values: { temp: 1 } })],
      ['timestamp_too_old', '{"ts":1000,"values":{"temp":1}}'],
    ];
    for (const [reason, payload] of cases) {
      // MQTT 3.1.1 cannot refuse a PUBLISH: the PUBACK comes once the reject record is durable,
      // so the entry is listed the moment the publish resolves — no waiting.
      await device.publishAsync('devices/dev-1/telemetry', payload, { qos: 1 });
      const latest = (await getJson(`${http}/v1/rejects?deviceId=dev-1&limit=1`)).body as RejectsPage;
      expect(latest.items[0]?.reason, reason).toBe(reason);
      expect(device.connected).toBe(true);
    }
    await device.publishAsync('devices/bad id/telemetry', '{"temp":1}', { qos: 1 });
    await device.publishAsync('devices/dev-1/telemetry', 'qos 0 garbage', { qos: 0 });
    await device.publishAsync('devices/dev-1/telemetry', '{"temp":22}', { qos: 1 });
    expect(device.connected).toBe(true);

    await waitFor(() => rejectsSeen.length === cases.length + 2 && telemetrySeen.length === 1, 5000, 'rejects and the valid reading at the watcher');
    expect(telemetrySeen).toEqual(['{"temp":22}']);

    const page = await getJson(`${http}/v1/devices/dev-1/telemetry?from=-1h`);
    expect((page.body as { items: Array<{ values: unknown }> }).items.map((i) => i.values)).toEqual([{ temp: 22 }]);
    const shards = await running.app.changeLog.shards();
    expect(shards.reduce((n, s) => n + (s.lastSequenceNumber ?? 0), 0)).toBe(1);

    // The log, oldest first: every reject with its reason, client and raw payload.
    const all = (await getJson(`${http}/v1/rejects?order=asc`)).body as RejectsPage;
    expect(all.items.map((r) => r.reason)).toEqual([...cases.map(([r]) => r), 'invalid_topic', 'invalid_json']);
    const first = all.items[0] as RejectEntry;
    expect(first).toMatchObject({ deviceId: 'dev-1', transport: 'mqtt', clientId: 'dev-1', topic: 'devices/dev-1/telemetry', payload: 'not json', payloadEncoding: 'utf8', truncated: false, payloadBytes: 8 });
    expect(first.message).toMatch(/not valid JSON/);
    const badUtf8 = all.items[1] as RejectEntry;
    expect(badUtf8.payloadEncoding).toBe('base64');
    expect(Buffer.from(badUtf8.payload, 'base64')).toEqual(cases[1]?.[1]);
    expect(all.items[2]).toMatchObject({ payloadBytes: 3011, truncated: true });
    expect((all.items[2] as RejectEntry).payload).toHaveLength(KEPT_PAYLOAD_BYTES);
    expect(all.items[6]).toMatchObject({ field: 'ts' });
    // A bad device id in the topic keeps its payload too.
    expect(all.items[cases.length]).toMatchObject({ reason: 'invalid_topic', topic: 'devices/bad id/telemetry', payload: '{"temp":1}' });
    expect(all.items[8]).toMatchObject({ deviceId: null, topic: 'devices/bad id/telemetry' });

    const metrics = await running.app.metrics.registry.getSingleMetricAsString('tributary_ingest_rejects_total');
    for (const [reason, n] of [
      ['invalid_json', 2],
      ['invalid_encoding', 1],
      ['payload_too_large', 1],
      ['invalid_shape', 2],
      ['too_many_keys', 1],
      ['timestamp_in_future', 1],
      ['timestamp_too_old', 1],
      ['invalid_topic', 1],
    ] as const) {
      expect(metrics).toContain(`tributary_ingest_rejects_total{reason="${reason}",transport="mqtt"} ${n}`);
    }
    const text = await fetch(`${http}/metrics`).then((r) => r.text());
    expect(text).toMatch(/tributary_ingest_messages_total\{transport="mqtt"\} 10\b/); // the invalid topic never reaches ingest's decoder
    expect(text).toMatch(/tributary_ingest_publish_to_durable_seconds_bucket\{le="0.00025",transport="mqtt"\} \d+/);
    expect(text).toMatch(/tributary_ingest_publish_to_durable_seconds_count\{transport="mqtt"\} 10\b/);
    // Each reject record was a synced commit; their write + fsync times are exposed too.
    expect(text).toMatch(/tributary_store_commit_seconds_count [1-9]\d*\n/);
  });

  it('over HTTP: 400 with the reason, recorded in the rejects log as the body', async () => {
    const running = await startApp({ maxKeysPerReading: 2, maxClockSkew: '1m' });
    cleanups.push(running.destroy);
    const http = running.addresses.http;
    const tooMany = await call(http, 'POST', '/v1/devices/dev-h/telemetry', { a: 1, b: 2, c: 3 });
    expect(tooMany.status).toBe(400);
    expect(tooMany.body).toMatchObject({ error: { code: 'ValidationError' } });
    const future = await call(http, 'POST', '/v1/devices/dev-h/telemetry', [{ ts: Date.now() + 600_000, values: { a: 1 } }]);
    expect(future.status).toBe(400);
    expect(future.body).toMatchObject({ error: { code: 'ValidationError', field: 'ts' } });

    const page = (await getJson(`${http}/v1/rejects?deviceId=dev-h&order=asc`)).body as RejectsPage;
    expect(page.items.map((r) => [r.reason, r.transport, r.clientId, r.topic])).toEqual([
      ['too_many_keys', 'http', null, null],
      ['timestamp_in_future', 'http', null, null],
    ]);
    expect(JSON.parse((page.items[0] as RejectEntry).payload)).toEqual({ a: 1, b: 2, c: 3 });
  });
});

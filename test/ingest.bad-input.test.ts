import { afterEach, describe, expect, it } from 'vitest';
import { connectClient, getJson, startApp } from './app-harness.js';
import { waitFor } from './helpers.js';

describe('bad telemetry input over MQTT', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('is acknowledged, counted and diverted, never stored or streamed, and the broker keeps serving', async () => {
    const running = await startApp({ maxPayloadBytes: 1024, retention: '1d' });
    cleanups.push(running.destroy);
    const watcher = await connectClient(running.addresses.mqtt);
    cleanups.push(() => void watcher.end(true));
    const telemetrySeen: string[] = [];
    const rejectsSeen: string[] = [];
    watcher.on('message', (topic, payload) => (topic.startsWith('$tributary/rejects/') ? rejectsSeen : telemetrySeen).push(payload.toString()));
    await watcher.subscribeAsync(['devices/+/telemetry', '$tributary/rejects/#'], { qos: 1 });

    const device = await connectClient(running.addresses.mqtt, { clientId: 'dev-1' });
    cleanups.push(() => void device.end(true));
    // Each of these is acknowledged (MQTT 3.1.1 cannot refuse a PUBLISH) and the client stays connected.
    await device.publishAsync('devices/dev-1/telemetry', 'not json', { qos: 1 });
    await device.publishAsync('devices/dev-1/telemetry', JSON.stringify({ blob: 'x'.repeat(2000) }), { qos: 1 });
    await device.publishAsync('devices/dev-1/telemetry', '[1,2,3]', { qos: 1 });
    await device.publishAsync('devices/bad id/telemetry', '{"temp":1}', { qos: 1 });
    // Decodes fine, but the store refuses it: older than the retention.
    await device.publishAsync('devices/dev-1/telemetry', '{"ts":1000,"values":{"temp":1}}', { qos: 1 });
    await device.publishAsync('devices/dev-1/telemetry', '{"temp":22}', { qos: 1 });
    expect(device.connected).toBe(true);

    await waitFor(() => rejectsSeen.length === 5 && telemetrySeen.length === 1, 5000, 'rejects and the valid reading at the watcher');
    expect(telemetrySeen).toEqual(['{"temp":22}']);

    const page = await getJson(`${running.addresses.http}/v1/devices/dev-1/telemetry?from=-1h`);
    expect((page.body as { items: Array<{ values: unknown }> }).items.map((i) => i.values)).toEqual([{ temp: 22 }]);
    const shards = await running.app.changeLog.shards();
    expect(shards.reduce((n, s) => n + (s.lastSequenceNumber ?? 0), 0)).toBe(1);

    const metrics = await running.app.metrics.registry.getSingleMetricAsString('tributary_ingest_rejects_total');
    expect(metrics).toContain('tributary_ingest_rejects_total{reason="invalid_json",transport="mqtt"} 1');
    expect(metrics).toContain('tributary_ingest_rejects_total{reason="payload_too_large",transport="mqtt"} 1');
    expect(metrics).toContain('tributary_ingest_rejects_total{reason="invalid_shape",transport="mqtt"} 1');
    expect(metrics).toContain('tributary_ingest_rejects_total{reason="invalid_topic",transport="mqtt"} 1');
    expect(metrics).toContain('tributary_ingest_rejects_total{reason="rejected_by_store",transport="mqtt"} 1');
  });
});

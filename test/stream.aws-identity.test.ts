/**
 * What a handler and a stream reader see of the region, account, ARN, event id and item
 * key, through a real `tributary start` process: readings over MQTT and HTTP, a function
 * deployed and triggered over the API, the shard read over HTTP, a restart under another
 * region and account. And the names /metrics exposes.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { MqttClient } from 'mqtt';
import type { DynamoDBStreamRecord } from '../streams/lambda-event.js';
import { call, connectClient, getJson } from './app-harness.js';
import { tempDir, waitFor } from './helpers.js';
import { startServerProcess, type ServerProcess } from './process.js';

/** Forwards what the handler was given, and what it sees of its environment, to devices/observer/commands/event. */
const PROBE = `
export async function handler(event, context) {
  await context.publish('observer', { name: 'event', payload: {
    event,
    region: process.env.AWS_REGION,
    defaultRegion: process.env.AWS_DEFAULT_REGION,
    functionArn: context.invokedFunctionArn,
  } });
  return null;
}`;

interface Seen {
  event: { Records: DynamoDBStreamRecord[] };
  region: string;
  defaultRegion: string;
  functionArn: string;
}

const LABEL = String.raw`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}`;
const T = 1764150000000;

async function shardRecords(server: ServerProcess): Promise<DynamoDBStreamRecord[]> {
  const shards = (await getJson(`${server.httpUrl}/v1/streams/shards`)).body as { items: Array<{ shardId: string }> };
  const out: DynamoDBStreamRecord[] = [];
  for (const { shardId } of shards.items) {
    const page = await getJson(`${server.httpUrl}/v1/streams/shards/${shardId}/records?iterator=TRIM_HORIZON`);
    expect(page.status).toBe(200);
    out.push(...(page.body as { items: DynamoDBStreamRecord[] }).items);
  }
  return out;
}

describe('region, account, ARN, event id and item key (child process)', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('renders records and the function environment with the configured region and account; event ids survive a restart under another region', async () => {
    const dir = tempDir();
    cleanups.push(dir.cleanup);
    let server = await startServerProcess(['--data-dir', dir.path, '--aws-region', 'eu-west-1', '--aws-account-id', '123456789012']);
    cleanups.push(() => server.signal('SIGTERM'));

    expect((await call(server.httpUrl, 'PUT', '/v1/functions/probe', { code: PROBE })).status).toBe(201);
    expect((await call(server.httpUrl, 'POST', '/v1/functions/probe/triggers', { startingPosition: 'TRIM_HORIZON' })).status).toBe(201);
    const observer: MqttClient = await connectClient(server.mqttUrl);
    cleanups.push(() => observer.end(true));
    const seen: Seen[] = [];
    observer.on('message', (_topic, payload) => seen.push(JSON.parse(payload.toString()) as Seen));
    await observer.subscribeAsync('devices/observer/commands/event', { qos: 1 });

    // Two readings of one millisecond over MQTT (seq 0 and 1), one over HTTP.
    const device: MqttClient = await connectClient(server.mqttUrl, { clientId: 'sensor-1' });
    cleanups.push(() => device.end(true));
    await device.publishAsync('devices/sensor-1/telemetry', JSON.stringify([{ ts: T, values: { temp: 21.5 } }, { ts: T, values: { temp: 22 } }]), { qos: 1 });
    expect((await call(server.httpUrl, 'POST', '/v1/devices/sensor-2/telemetry', { ts: T + 5, values: { hum: 40 } })).status).toBe(201);
    // A value may not take an item attribute's name: that would be ambiguous in the images.
    const refused = await call(server.httpUrl, 'POST', '/v1/devices/sensor-2/telemetry', { tsSeq: 1, hum: 41 });
    expect(refused.status).toBe(400);
    expect(refused.body).toMatchObject({ error: { code: 'ValidationError', field: 'tsSeq' } });

    await waitFor(() => seen.flatMap((s) => s.event.Records).length >= 3, 15_000, 'three records at the handler');
    const delivered = seen.flatMap((s) => s.event.Records);
    expect(delivered).toHaveLength(3);
    for (const s of seen) {
      expect(s).toMatchObject({ region: 'eu-west-1', defaultRegion: 'eu-west-1', functionArn: 'arn:aws:lambda:eu-west-1:123456789012:function:probe' });
    }
    const arn = new RegExp(`^arn:aws:dynamodb:eu-west-1:123456789012:table/telemetry/stream/${LABEL}$`);
    for (const r of delivered) {
      expect(r.awsRegion).toBe('eu-west-1');
      expect(r.eventSourceARN).toMatch(arn);
      expect(Object.keys(r.dynamodb.Keys).sort()).toEqual(['deviceId', 'tsSeq']);
    }
    const byKey = new Map(delivered.map((r) => [`${r.dynamodb.Keys['deviceId']?.S} ${r.dynamodb.Keys['tsSeq']?.N}`, r]));
    expect([...byKey.keys()].sort()).toEqual([`sensor-1 ${T}`, `sensor-1 ${T}.0000000001`, `sensor-2 ${T + 5}`]);
    expect(byKey.get(`sensor-1 ${T}.0000000001`)?.dynamodb.NewImage).toMatchObject({
      deviceId: { S: 'sensor-1' },
      tsSeq: { N: `${T}.0000000001` },
      ts: { N: String(T) },
      seq: { N: '1' },
      temp: { N: '22' },
    });

    // The shard read over HTTP is what the handler got.
    const read = await shardRecords(server);
    expect(new Map(read.map((r) => [r.eventID, r]))).toEqual(new Map(delivered.map((r) => [r.eventID, r])));

    // Process and Node.js metrics under their standard names; Tributary's own prefixed once.
    const metrics = await fetch(`${server.httpUrl}/metrics`).then((res) => res.text());
    expect(metrics).toMatch(/^process_cpu_seconds_total /m);
    expect(metrics).toMatch(/^nodejs_heap_size_used_bytes /m);
    expect(metrics).toMatch(/^tributary_ingest_readings_total\{/m);
    expect(metrics).not.toMatch(/tributary_process_|tributary_nodejs_/);

    // Another region and account: the same records, the same ids, the new ARN.
    device.end(true);
    observer.end(true);
    expect(await server.signal('SIGTERM')).toBe(0);
    server = await startServerProcess(['--data-dir', dir.path, '--aws-region', 'ap-south-1', '--aws-account-id', '999999999999']);
    const again = await shardRecords(server);
    expect(again.map((r) => r.eventID).sort()).toEqual(read.map((r) => r.eventID).sort());
    const label = (read[0] as DynamoDBStreamRecord).eventSourceARN.split('/stream/')[1];
    for (const r of again) {
      expect(r.awsRegion).toBe('ap-south-1');
      expect(r.eventSourceARN).toBe(`arn:aws:dynamodb:ap-south-1:999999999999:table/telemetry/stream/${label}`);
    }
    const streams = (await getJson(`${server.httpUrl}/v1/streams/shards`)).body as { streamArn: string };
    expect(streams.streamArn).toBe(`arn:aws:dynamodb:ap-south-1:999999999999:table/telemetry/stream/${label}`);
  });

  it('refuses a region or account that does not fit an ARN, as a configuration error', async () => {
    const dir = tempDir();
    cleanups.push(dir.cleanup);
    for (const flags of [['--aws-region', 'eu:west'], ['--aws-account-id', '12345']]) {
      const err = await startServerProcess(['--data-dir', dir.path, ...flags]).then(
        () => undefined,
        (e: unknown) => String(e),
      );
      expect(err).toMatch(/server exited with 2/);
    }
  });
});

/**
 * Value names and numbers end to end (issue 17, items 2, 3 and 14), through a real
 * server, a real MQTT client and real HTTP: every key name but `__proto__` is a plain
 * key on every transport and every layer (store, REST, exports, the change stream, a
 * function trigger, the shard records route); `__proto__` and numbers DynamoDB cannot
 * hold are rejects with their reasons on MQTT, HTTP and `context.put` alike; numbers a
 * double cannot hold keep their digits; a change record that cannot be rendered goes to
 * the dead-letter queue and its shard goes on; a Python handler's `TypeDeserializer`
 * reads every image.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { unmarshall } from '@aws-sdk/util-dynamodb';
import type { AttributeValue } from '@aws-sdk/client-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, connectClient, startApp, type RunningApp } from './app-harness.js';
import { tempDir, waitFor } from './helpers.js';

type Image = Record<string, AttributeValue>;
interface StreamRecord {
  eventName: string;
  dynamodb: { Keys: Image; NewImage?: Image; SequenceNumber: string };
}

const T0 = Date.now() - 60_000;

/** Logs each record it gets (as JSON) so the test can read what the trigger delivered. */
const RECORDER = `export async function handler(event) {
  for (const r of event.Records) console.log(JSON.stringify({ keys: r.dynamodb.Keys, image: r.dynamodb.NewImage }));
  return {};
}`;

/** Writes through context.put in every form, and reports what each put answered. */
const PUTTER = `export async function handler(event, context) {
  const out = [];
  const tries = [
    ['flat', { tempF: 1 }],
    ['ts+values', { ts: event.ts, values: { tempF: 2 } }],
    ['array', [{ ts: event.ts + 1, values: { tempF: 3 } }, { ts: event.ts + 2, tempF: 4 }]],
    ['bigint', { ts: event.ts + 3, big: 12345678901234567890123n }],
    ['proto', JSON.parse('{"__proto__": 1}')],
    ['range', { huge: 1e300 }],
  ];
  for (const [name, reading] of tries) {
    try {
      await context.put('derived-1', reading);
      out.push([name, 'ok']);
    } catch (err) {
      out.push([name, err.message]);
    }
  }
  return out;
}`;

async function post(base: string, path: string, text: string): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: text });
  const raw = await res.text();
  return { status: res.status, body: raw === '' ? undefined : (JSON.parse(raw) as unknown) };
}

async function text(base: string, path: string): Promise<string> {
  const res = await fetch(`${base}${path}`);
  expect(res.status, path).toBe(200);
  return res.text();
}

async function counter(running: RunningApp, name: string, labels: Record<string, string>): Promise<number> {
  const metric = await running.app.metrics.registry.getSingleMetric(name)?.get();
  return metric?.values.find((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l))?.value ?? 0;
}

interface Reject {
  deviceId: string;
  transport: string;
  reason: string;
  message: string;
}

async function rejectsOf(base: string, deviceId: string): Promise<Reject[]> {
  return ((await call(base, 'GET', `/v1/rejects?deviceId=${deviceId}&from=0`)).body as { items: Reject[] }).items;
}

/** Every record of every shard, through `GET /v1/streams/shards/{id}/records` (each read must answer 200). */
async function allShardRecords(base: string): Promise<StreamRecord[]> {
  const shards = ((await call(base, 'GET', '/v1/streams/shards')).body as { items: Array<{ shardId: string }> }).items;
  const out: StreamRecord[] = [];
  for (const s of shards) {
    const res = await call(base, 'GET', `/v1/streams/shards/${s.shardId}/records?iterator=TRIM_HORIZON&limit=1000`);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    out.push(...(res.body as { items: StreamRecord[] }).items);
  }
  return out;
}

/** What the recorder function logged: one entry per delivered record. */
async function delivered(base: string): Promise<Array<{ keys: Image; image: Image }>> {
  const lines = ((await call(base, 'GET', '/v1/functions/recorder/logs?limit=1000')).body as { items: Array<{ message: string }> }).items;
  return lines.filter((l) => l.message.startsWith('{')).map((l) => JSON.parse(l.message) as { keys: Image; image: Image });
}

describe('value names and numbers through the real server', () => {
  let running: RunningApp;
  let http: string;
  const cleanups: Array<() => Promise<void> | void> = [];

  beforeAll(async () => {
    running = await startApp();
    http = running.addresses.http;
    cleanups.push(running.destroy);
    expect((await call(http, 'PUT', '/v1/functions/recorder', { code: RECORDER })).status).toBe(201);
    const trigger = await call(http, 'POST', '/v1/functions/recorder/triggers', { startingPosition: 'TRIM_HORIZON', batchSize: 100, maximumRetryAttempts: 0 });
    expect(trigger.status, JSON.stringify(trigger.body)).toBe(201);
  });
  afterAll(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('stores, streams, delivers and serves constructor, toString, hasOwnProperty (nested too) from MQTT and HTTP alike', async () => {
    const device = await connectClient(running.addresses.mqtt, { clientId: 'keys-1' });
    cleanups.push(() => void device.end(true));
    await device.publishAsync('devices/keys-1/telemetry', `{"ts":${T0},"values":{"constructor":1,"toString":"t","hasOwnProperty":true,"gps":{"constructor":"x"},"big":12345678901234567890}}`, { qos: 1 });
    const posted = await post(http, '/v1/devices/keys-1/telemetry', `{"ts":${T0 + 1},"values":{"constructor":2,"valueOf":"v","gps":{"constructor":"y","toString":1.5}}}`);
    expect(posted.status, JSON.stringify(posted.body)).toBe(201);
    // fastify's default parser refused this as "not valid JSON" (secure-json-parse); MQTT stored it.
    const poisoningLookalike = await post(http, '/v1/devices/keys-2/telemetry', '{"constructor":{"prototype":{"x":1}}}');
    expect(poisoningLookalike.status, JSON.stringify(poisoningLookalike.body)).toBe(201);
    expect(await text(http, '/v1/devices/keys-2/latest')).toContain('"values":{"constructor":{"prototype":{"x":1}}}');
    // A plain reading after them: the shard is not stalled.
    expect((await post(http, '/v1/devices/keys-1/telemetry', `{"ts":${T0 + 2},"temp":20}`)).status).toBe(201);

    // REST splices the stored text: the digits as sent, the names as sent.
    const page = await text(http, '/v1/devices/keys-1/telemetry?from=0');
    expect(page).toContain('"big":12345678901234567890');
    const items = (JSON.parse(page) as { items: Array<{ values: Record<string, unknown> }> }).items.map((i) => i.values);
    expect(items[0]).toMatchObject({ constructor: 1, toString: 't', hasOwnProperty: true, gps: { constructor: 'x' } });
    expect(items[1]).toEqual({ constructor: 2, valueOf: 'v', gps: { constructor: 'y', toString: 1.5 } });
    expect(await text(http, '/v1/devices/keys-1/telemetry?from=0&format=csv')).toMatch(/^ts,seq,big,constructor,gps\.constructor,gps\.toString,hasOwnProperty,temp,toString,valueOf\r\n\d+,0,12345678901234567890,1,x,,true,,t,\r\n/);
    expect(await text(http, '/v1/devices/keys-1/telemetry?from=0&format=ndjson')).toContain('"big":12345678901234567890');
    expect(await text(http, '/v1/devices/keys-1/latest?keys=big')).toContain('"value":12345678901234567890}');
    expect(await text(http, '/v1/devices/keys-1/latest')).toContain('"temp":20');
    // Aggregates compute in doubles.
    const agg = (await call(http, 'GET', '/v1/devices/keys-1/telemetry/aggregate?from=0&interval=1d&agg=sum,first&keys=big')).body as { buckets: Array<{ values: Record<string, { sum: number; first: unknown }> }> };
    expect(agg.buckets[0]?.values['big']).toEqual({ sum: Number('12345678901234567890'), first: Number('12345678901234567890') });

    // The trigger got all three, and the images unmarshall to the values that were sent.
    const got = await waitFor(async () => {
      const mine = (await delivered(http)).filter((d) => d.keys['deviceId']?.S === 'keys-1');
      return mine.length >= 3 ? mine : undefined;
    }, 20_000, 'the three records delivered to the trigger');
    const images = got.map((d) => unmarshall(d.image));
    expect(images[0]).toMatchObject({ deviceId: 'keys-1', constructor: 1, toString: 't', hasOwnProperty: true, gps: { constructor: 'x' }, big: 12345678901234567890n });
    expect(got[0]?.image['big']).toEqual({ N: '12345678901234567890' });
    expect(images[1]).toMatchObject({ constructor: 2, valueOf: 'v', gps: { constructor: 'y', toString: 1.5 } });
    expect(images[2]).toMatchObject({ temp: 20 });

    // The shard records route renders them the same.
    const records = (await allShardRecords(http)).filter((r) => r.dynamodb.Keys['deviceId']?.S === 'keys-1');
    const own = (image: Image | undefined, k: string): AttributeValue | undefined => (image !== undefined && Object.hasOwn(image, k) ? image[k] : undefined);
    expect(records.map((r) => own(r.dynamodb.NewImage, 'constructor'))).toEqual([{ N: '1' }, { N: '2' }, undefined]);
    expect(records[0]?.dynamodb.NewImage?.['gps']).toEqual({ M: { constructor: { S: 'x' } } });
    expect(await counter(running, 'tributary_mapping_records_skipped_total', { function: 'recorder', reason: 'unrenderable' })).toBe(0);
  });

  it('refuses __proto__ as a value name, top-level or nested, on MQTT and HTTP with its reason', async () => {
    const device = await connectClient(running.addresses.mqtt, { clientId: 'proto-1' });
    cleanups.push(() => void device.end(true));
    await device.publishAsync('devices/proto-1/telemetry', '{"__proto__":{"x":1}}', { qos: 1 });
    await device.publishAsync('devices/proto-1/telemetry', '{"a":{"__proto__":1}}', { qos: 1 });
    for (const body of ['{"__proto__":1}', '{"ts":1764150000000,"values":{"a":{"__proto__":"x"}}}']) {
      const res = await post(http, '/v1/devices/proto-1/telemetry', body);
      expect(res.status).toBe(400);
      expect(res.body).toMatchObject({ error: { code: 'ValidationError', message: expect.stringContaining('"__proto__" cannot be a value name') } });
    }
    const rejects = await rejectsOf(http, 'proto-1');
    expect(rejects.map((r) => [r.transport, r.reason]).sort()).toEqual([
      ['http', 'invalid_value'],
      ['http', 'invalid_value'],
      ['mqtt', 'invalid_value'],
      ['mqtt', 'invalid_value'],
    ]);
    // Nothing was stored: the device does not even exist.
    expect((await call(http, 'GET', '/v1/devices/proto-1/telemetry?from=0')).status).toBe(404);
  });

  it('rejects numbers DynamoDB cannot hold (1e300, 5e-324, 1e-400, 39 digits) on both transports, counted as number_out_of_range', async () => {
    const bad = ['1e300', '5e-324', '1e-400', '-1e126', '123456789012345678901234567890123456789', '0.123456789012345678901234567890123456789'];
    const device = await connectClient(running.addresses.mqtt, { clientId: 'num-1' });
    cleanups.push(() => void device.end(true));
    const before = await counter(running, 'tributary_ingest_rejects_total', { reason: 'number_out_of_range', transport: 'mqtt' });
    for (const n of bad) {
      await device.publishAsync('devices/num-1/telemetry', `{"v":${n}}`, { qos: 1 });
      const res = await post(http, '/v1/devices/num-1/telemetry', `{"gps":{"v":${n}}}`);
      expect(res.status, n).toBe(400);
      expect(res.body).toMatchObject({ error: { code: 'ValidationError', field: 'gps.v' } });
    }
    expect(await counter(running, 'tributary_ingest_rejects_total', { reason: 'number_out_of_range', transport: 'mqtt' })).toBe(before + bad.length);
    expect(await counter(running, 'tributary_ingest_rejects_total', { reason: 'number_out_of_range', transport: 'http' })).toBe(bad.length);
    expect((await rejectsOf(http, 'num-1')).every((r) => r.reason === 'number_out_of_range')).toBe(true);
    // The edges DynamoDB keeps are kept, with their digits.
    const edges = '{"a":1e-130,"b":-9.9999999999999999999999999999999999999e125,"c":12345678901234567890123456789012345678,"d":0.30000000000000004,"e":1e125}';
    expect((await post(http, '/v1/devices/num-1/telemetry', edges)).status).toBe(201);
    const page = await text(http, '/v1/devices/num-1/telemetry?from=0');
    expect(page).toContain('"values":{"a":1e-130,"b":-9.9999999999999999999999999999999999999e+125,"c":12345678901234567890123456789012345678,"d":0.30000000000000004,"e":1e+125}');
  });

  it('context.put takes every form the write path takes, keeps a bigint\'s digits, and refuses what ingest refuses', async () => {
    expect((await call(http, 'PUT', '/v1/functions/putter', { code: PUTTER })).status).toBe(201);
    const invoked = await call(http, 'POST', '/v1/functions/putter/invoke', { ts: T0 });
    expect(invoked.status).toBe(200);
    const answers = (invoked.body as { result: Array<[string, string]> }).result;
    expect(answers.slice(0, 4)).toEqual([
      ['flat', 'ok'],
      ['ts+values', 'ok'],
      ['array', 'ok'],
      ['bigint', 'ok'],
    ]);
    expect(answers[4]?.[1]).toContain('"__proto__" cannot be a value name');
    expect(answers[5]?.[1]).toContain('out of range');
    const stored = await text(http, '/v1/devices/derived-1/telemetry?from=0');
    expect(stored).toContain('"big":12345678901234567890123');
    const values = (JSON.parse(stored) as { items: Array<{ values: Record<string, unknown> }> }).items.map((i) => i.values);
    expect(values).toEqual(expect.arrayContaining([{ tempF: 1 }, { tempF: 2 }, { tempF: 3 }, { tempF: 4 }]));
    // Recorded like any reject (a direct invoke carries no mapping origin, so its transport is http).
    expect((await rejectsOf(http, 'derived-1')).map((r) => r.reason).sort()).toEqual(['invalid_value', 'number_out_of_range']);
  });

  it('sends a record that cannot be rendered to the DLQ with its error, counts it, and delivers the records after it', async () => {
    // Only a store write that skips ingest's checks can make one (a record of an older build could be one too).
    await running.app.store.write({ deviceId: 'poison-1', readings: [{ ts: T0, values: { a: null } as never }] });
    expect((await post(http, '/v1/devices/poison-1/telemetry', `{"ts":${T0 + 1},"after":1}`)).status).toBe(201);
    await waitFor(async () => (await delivered(http)).some((d) => d.keys['deviceId']?.S === 'poison-1' && d.image['after'] !== undefined), 20_000, 'the record after the poison one delivered');
    const dlq = ((await call(http, 'GET', '/v1/dlq?functionName=recorder')).body as { items: Array<{ reason: string; count: number; lastOutcome?: { errorType: string; errorMessage: string } }> }).items;
    expect(dlq).toEqual([expect.objectContaining({ reason: 'RecordUnrenderable', count: 1, lastOutcome: expect.objectContaining({ errorType: 'RecordRenderError', errorMessage: expect.stringContaining('value "a" is null') }) })]);
    expect(await counter(running, 'tributary_mapping_records_skipped_total', { function: 'recorder', reason: 'unrenderable' })).toBe(1);
    // The route still answers, without the record it cannot render.
    const records = (await allShardRecords(http)).filter((r) => r.dynamodb.Keys['deviceId']?.S === 'poison-1');
    expect(records.map((r) => r.dynamodb.NewImage?.['after'])).toEqual([{ N: '1' }]);
  });

  // .ci/run installs boto3; elsewhere the case skips without it (under CI=true it must run).
  const python = spawnSync('python3', ['-c', 'import boto3.dynamodb.types'], { stdio: 'ignore' }).status === 0 || process.env.CI === 'true';
  it.skipIf(!python)('every image of the stream deserializes with boto3\'s TypeDeserializer (what Python handlers use)', async () => {
    const images = (await allShardRecords(http)).flatMap((r) => (r.dynamodb.NewImage === undefined ? [] : [r.dynamodb.NewImage]));
    expect(images.length).toBeGreaterThan(5);
    const dir = tempDir('tributary-py-');
    cleanups.push(dir.cleanup);
    const file = join(dir.path, 'images.json');
    writeFileSync(file, JSON.stringify(images));
    const script = [
      'import json, sys',
      'from boto3.dynamodb.types import TypeDeserializer',
      'd = TypeDeserializer()',
      'images = json.load(open(sys.argv[1]))',
      'out = [{k: str(d.deserialize(v)) for k, v in img.items()} for img in images]',
      'print(json.dumps(out))',
    ].join('\n');
    const out = JSON.parse(execFileSync('python3', ['-c', script, file], { encoding: 'utf8' })) as Array<Record<string, string>>;
    expect(out).toHaveLength(images.length);
    expect(out.some((img) => img['big'] === '12345678901234567890')).toBe(true);
    expect(out.some((img) => img['c'] === '12345678901234567890123456789012345678')).toBe(true);
  });
});

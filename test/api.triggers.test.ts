/**
 * Triggers through the whole app (real HTTP, MQTT, function processes and LevelDB):
 * create with a filter, only matching records reach the handler, disable, delete,
 * validation, and a restart that resumes from the checkpoint.
 */
import type { MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import type { DynamoDBStreamRecord } from '../streams/lambda-event.js';
import { call, connectClient, startApp, type RunningApp } from './app-harness.js';
import { tempDir, waitFor } from './helpers.js';

const OBSERVE = `
export async function handler(event, context) {
  await context.publish('observer', { name: 'event', payload: event });
  return { received: event.Records.length };
}
`;

/** Only INSERTs whose temp starts with "3". */
const FILTER = { filters: [{ pattern: JSON.stringify({ eventName: ['INSERT'], dynamodb: { NewImage: { temp: { N: [{ prefix: '3' }] } } } }) }] };

interface TriggerBody {
  id: string;
  functionName: string;
  batchSize: number;
  enabled: boolean;
  startingPosition: string;
  maximumRetryAttempts: number;
  [k: string]: unknown;
}

function expectError(res: { status: number; body: unknown }, status: number, code: string, field?: string): void {
  expect(res.status, JSON.stringify(res.body)).toBe(status);
  const { error } = res.body as { error: { code: string; field?: string } };
  expect(error.code).toBe(code);
  if (field !== undefined) expect(error.field).toBe(field);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('triggers API', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function observe(running: RunningApp): Promise<DynamoDBStreamRecord[]> {
    const observer: MqttClient = await connectClient(running.addresses.mqtt);
    cleanups.push(() => void observer.end(true));
    const seen: DynamoDBStreamRecord[] = [];
    observer.on('message', (_topic, payload) => seen.push(...(JSON.parse(payload.toString()) as { Records: DynamoDBStreamRecord[] }).Records));
    await observer.subscribeAsync('devices/observer/commands/event', { qos: 1 });
    return seen;
  }

  async function device(running: RunningApp): Promise<(temp: number) => Promise<void>> {
    const client = await connectClient(running.addresses.mqtt, { clientId: 'sensor-1' });
    cleanups.push(() => void client.end(true));
    return async (temp) => {
      await client.publishAsync('devices/sensor-1/telemetry', JSON.stringify({ temp }), { qos: 1 });
    };
  }

  const temps = (seen: DynamoDBStreamRecord[]) => seen.map((r) => Number(r.dynamodb.NewImage?.temp?.N));

  it('delivers only matching records, stops when disabled, and resumes from the checkpoint after a restart', async () => {
    const dir = tempDir();
    cleanups.push(dir.cleanup);
    let running = await startApp({ dataDir: dir.path });
    cleanups.push(() => running.stop());
    let base = running.addresses.http;
    expect((await call(base, 'PUT', '/v1/functions/observe', { code: OBSERVE })).status).toBe(201);

    const created = await call(base, 'POST', '/v1/functions/observe/triggers', { filterCriteria: FILTER, batchSize: 10, startingPosition: 'TRIM_HORIZON' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const trigger = created.body as TriggerBody;
    expect(trigger).toMatchObject({
      id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      functionName: 'observe',
      batchSize: 10,
      maximumBatchingWindowMs: 0,
      startingPosition: 'TRIM_HORIZON',
      filterCriteria: FILTER,
      maximumRetryAttempts: 3,
      bisectBatchOnFunctionError: false,
      maximumRecordAgeSeconds: -1,
      functionResponseTypes: [],
      parallelizationFactor: 1,
      tumblingWindowSeconds: 0,
      enabled: true,
      createdAt: expect.any(Number),
    });
    expect(trigger).not.toHaveProperty('warnings');
    const listed = await call(base, 'GET', '/v1/functions/observe/triggers');
    expect(listed.body).toEqual({ items: [trigger], nextCursor: null });

    let seen = await observe(running);
    let publish = await device(running);
    for (const t of [31, 21, 35.5, 40, 3]) await publish(t);
    await waitFor(() => seen.length >= 3, 5000, 'three matching records');
    await sleep(300);
    expect(temps(seen)).toEqual([31, 35.5, 3]);

    // Disabled: nothing is delivered.
    const disabled = await call(base, 'PATCH', `/v1/functions/observe/triggers/${trigger.id}`, { enabled: false });
    expect(disabled.status).toBe(200);
    expect(disabled.body).toMatchObject({ id: trigger.id, enabled: false, batchSize: 10 });
    await publish(32);
    await sleep(500);
    expect(temps(seen)).toEqual([31, 35.5, 3]);

    // Restart: the trigger survives (still disabled); re-enabling delivers what was missed, once.
    for (const c of cleanups.splice(2).reverse()) await c();
    await running.stop();
    running = await startApp({ dataDir: dir.path });
    base = running.addresses.http;
    expect((await call(base, 'GET', '/v1/functions/observe/triggers')).body).toMatchObject({ items: [{ id: trigger.id, enabled: false }] });
    seen = await observe(running);
    publish = await device(running);
    const enabled = await call(base, 'PATCH', `/v1/functions/observe/triggers/${trigger.id}`, { enabled: true });
    expect(enabled.status).toBe(200);
    await waitFor(() => seen.length >= 1, 5000, 'the record published while disabled');
    await publish(33);
    await publish(20);
    await waitFor(() => seen.length >= 2, 5000, 'a new matching record');
    await sleep(300);
    expect(temps(seen)).toEqual([32, 33]);

    // An enabled trigger is started at boot and resumes after its checkpoint.
    for (const c of cleanups.splice(2).reverse()) await c();
    await running.stop();
    running = await startApp({ dataDir: dir.path });
    base = running.addresses.http;
    seen = await observe(running);
    publish = await device(running);
    await publish(34);
    await waitFor(() => seen.length >= 1, 5000, 'a record after the second restart');
    await sleep(300);
    expect(temps(seen)).toEqual([34]);

    // Delete: the mapping stops and the trigger is gone.
    expect((await call(base, 'DELETE', `/v1/functions/observe/triggers/${trigger.id}`)).status).toBe(204);
    await publish(36);
    await sleep(500);
    expect(temps(seen)).toEqual([34]);
    expect((await call(base, 'GET', '/v1/functions/observe/triggers')).body).toEqual({ items: [], nextCursor: null });
    expectError(await call(base, 'DELETE', `/v1/functions/observe/triggers/${trigger.id}`), 404, 'NotFound');
  });

  it('validates settings and names unknown functions and triggers', async () => {
    const running = await startApp();
    cleanups.push(() => running.destroy());
    const base = running.addresses.http;
    expect((await call(base, 'PUT', '/v1/functions/fn', { code: OBSERVE })).status).toBe(201);
    const post = (body: unknown) => call(base, 'POST', '/v1/functions/fn/triggers', body);

    expectError(await call(base, 'POST', '/v1/functions/nope/triggers', {}), 404, 'FunctionNotFound');
    expectError(await call(base, 'GET', '/v1/functions/nope/triggers'), 404, 'FunctionNotFound');
    expectError(await post({ batchSize: 0 }), 400, 'ValidationError', 'batchSize');
    expectError(await post({ batchSize: 10_001 }), 400, 'ValidationError', 'batchSize');
    expectError(await post({ batchSize: 'ten' }), 400, 'ValidationError', 'batchSize');
    expectError(await post({ maximumBatchingWindowMs: 300_001 }), 400, 'ValidationError', 'maximumBatchingWindowMs');
    expectError(await post({ maximumBatchingWindowMs: -1 }), 400, 'ValidationError', 'maximumBatchingWindowMs');
    expectError(await post({ parallelizationFactor: 0 }), 400, 'ValidationError', 'parallelizationFactor');
    expectError(await post({ parallelizationFactor: 11 }), 400, 'ValidationError', 'parallelizationFactor');
    expectError(await post({ tumblingWindowSeconds: 901 }), 400, 'ValidationError', 'tumblingWindowSeconds');
    expectError(await post({ tumblingWindowSeconds: 60, parallelizationFactor: 2 }), 400, 'ValidationError', 'parallelizationFactor');
    expectError(await post({ startingPosition: 'NOW' }), 400, 'ValidationError', 'startingPosition');
    expectError(await post({ startingPosition: 'AT_TIMESTAMP' }), 400, 'ValidationError', 'startingPositionTimestamp');
    expectError(await post({ startingPosition: 'AT_TIMESTAMP', startingPositionTimestamp: 1.5 }), 400, 'ValidationError', 'startingPositionTimestamp');
    expectError(await post({ startingPositionTimestamp: 1 }), 400, 'ValidationError', 'startingPositionTimestamp');
    expectError(await post({ maximumRetryAttempts: -2 }), 400, 'ValidationError', 'maximumRetryAttempts');
    expectError(await post({ maximumRecordAgeSeconds: 10 }), 400, 'ValidationError', 'maximumRecordAgeSeconds');
    expectError(await post({ functionResponseTypes: ['Other'] }), 400, 'ValidationError', 'functionResponseTypes');
    expectError(await post({ enabled: 'yes' }), 400, 'ValidationError', 'enabled');
    expectError(await post({ bogus: 1 }), 400, 'ValidationError', 'bogus');
    expectError(await post({ filterCriteria: { filters: [{ pattern: '{not json' }] } }), 400, 'ValidationError');
    expectError(await post({ filterCriteria: { filters: 'x' } }), 400, 'ValidationError', 'filterCriteria.filters');
    expect((await call(base, 'GET', '/v1/functions/fn/triggers')).body).toEqual({ items: [], nextCursor: null });

    const ok = await post({ maximumRetryAttempts: -1, functionResponseTypes: ['ReportBatchItemFailures'], bisectBatchOnFunctionError: true, maximumRecordAgeSeconds: 60, maximumBatchingWindowMs: 500, parallelizationFactor: 10 });
    expect(ok.status, JSON.stringify(ok.body)).toBe(201);
    expect(ok.body).toMatchObject({ maximumBatchingWindowMs: 500, parallelizationFactor: 10, tumblingWindowSeconds: 0 });
    const id = (ok.body as TriggerBody).id;
    expectError(await call(base, 'PATCH', `/v1/functions/fn/triggers/${id}`, { batchSize: -1 }), 400, 'ValidationError', 'batchSize');
    expectError(await call(base, 'PATCH', '/v1/functions/fn/triggers/missing', { batchSize: 5 }), 404, 'NotFound');
    expectError(await call(base, 'PATCH', `/v1/functions/fn/triggers/${id}`, { startingPosition: 'TRIM_HORIZON' }), 400, 'ValidationError', 'startingPosition');
    const reset = await call(base, 'PATCH', `/v1/functions/fn/triggers/${id}`, { maximumRetryAttempts: null, batchSize: 5 });
    expect(reset.body).toMatchObject({ maximumRetryAttempts: 3, batchSize: 5, bisectBatchOnFunctionError: true });
  });

  it('tells the caller about filter patterns that can never match', async () => {
    const running = await startApp();
    cleanups.push(() => running.destroy());
    const base = running.addresses.http;
    expect((await call(base, 'PUT', '/v1/functions/fn', { code: OBSERVE })).status).toBe(201);
    // "NewImag": a typo that is valid pattern syntax but names no field of a stream record.
    const misspelt = { filters: [{ pattern: JSON.stringify({ dynamodb: { NewImag: { temp: { N: [{ prefix: '3' }] } } } }) }] };
    const created = await call(base, 'POST', '/v1/functions/fn/triggers', { filterCriteria: misspelt });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const { id, warnings } = created.body as TriggerBody & { warnings: string[] };
    expect(warnings).toEqual([expect.stringContaining('NewImag')]);
    expect((await call(base, 'GET', `/v1/functions/fn/triggers/${id}`)).body).toMatchObject({ warnings });
    expect((await call(base, 'GET', '/v1/functions/fn/triggers')).body).toMatchObject({ items: [{ id, warnings }] });
    // Fixed: the warnings are gone, and they were never stored.
    const fixed = await call(base, 'PATCH', `/v1/functions/fn/triggers/${id}`, { filterCriteria: FILTER });
    expect(fixed.status).toBe(200);
    expect(fixed.body).not.toHaveProperty('warnings');
  });

  it('runs tumbling windows: state carried between invocations, a final invocation per window', async () => {
    const running = await startApp();
    cleanups.push(() => running.destroy());
    const base = running.addresses.http;
    const code = `
export async function handler(event, context) {
  const state = { count: (event.state.count ?? 0) + event.Records.length };
  await context.publish('observer', { name: 'event', payload: { Records: [], window: event.window, state: event.state, final: event.isFinalInvokeForWindow, shardId: event.shardId } });
  return { state };
}`;
    expect((await call(base, 'PUT', '/v1/functions/win', { code })).status).toBe(201);
    expect((await call(base, 'POST', '/v1/functions/win/triggers', { tumblingWindowSeconds: 1, batchSize: 1 })).status).toBe(201);
    const observer = await connectClient(running.addresses.mqtt);
    cleanups.push(() => void observer.end(true));
    const events: Array<{ window: { start: string; end: string }; state: { count?: number }; final: boolean; shardId: string }> = [];
    observer.on('message', (_topic, payload) => events.push(JSON.parse(payload.toString()) as (typeof events)[number]));
    await observer.subscribeAsync('devices/observer/commands/event', { qos: 1 });
    const publish = await device(running);
    await publish(1);
    await publish(2);
    await waitFor(() => events.some((e) => e.final), 10_000, 'a final invocation');
    // Both readings may fall into one window or two; each window ends with its count of them.
    await waitFor(() => events.filter((e) => e.final).reduce((n, e) => n + (e.state.count ?? 0), 0) === 2, 10_000, 'both readings counted in final states');
    // The first invocation of each window starts from an empty state.
    expect(events[0]?.state).toEqual({});
    for (const e of events) {
      expect(Date.parse(e.window.end) - Date.parse(e.window.start)).toBe(1000);
      expect(e.shardId).toMatch(/^shardId-\d{4}$/);
    }
  });

  it('sends each batch to the latest deployed version', async () => {
    const running = await startApp();
    cleanups.push(() => running.destroy());
    const base = running.addresses.http;
    const versioned = (v: number) => `export async function handler(event, context) { await context.publish('observer', { name: 'v${v}', payload: event }); }`;
    expect((await call(base, 'PUT', '/v1/functions/ver', { code: versioned(1) })).status).toBe(201);
    expect((await call(base, 'POST', '/v1/functions/ver/triggers', {})).status).toBe(201);

    const observer = await connectClient(running.addresses.mqtt);
    cleanups.push(() => void observer.end(true));
    const seen: string[] = [];
    observer.on('message', (topic) => seen.push(topic.split('/').pop() as string));
    await observer.subscribeAsync('devices/observer/commands/+', { qos: 1 });
    const publish = await device(running);

    await publish(1);
    await waitFor(() => seen.length >= 1, 5000, 'an event from version 1');
    expect((await call(base, 'PUT', '/v1/functions/ver', { code: versioned(2) })).status).toBe(201);
    await publish(2);
    await waitFor(() => seen.length >= 2, 5000, 'an event from version 2');
    expect(seen).toEqual(['v1', 'v2']);
  });

  it('starts AT_TIMESTAMP at the first record committed at or after the timestamp', async () => {
    const running = await startApp();
    cleanups.push(() => running.destroy());
    const base = running.addresses.http;
    expect((await call(base, 'PUT', '/v1/functions/at', { code: OBSERVE })).status).toBe(201);
    const publish = await device(running);
    await publish(1);
    await publish(2);
    await sleep(20);
    const from = Date.now();
    await sleep(20);
    await publish(3);
    await publish(4);
    const created = await call(base, 'POST', '/v1/functions/at/triggers', { startingPosition: 'AT_TIMESTAMP', startingPositionTimestamp: from });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect(created.body).toMatchObject({ startingPosition: 'AT_TIMESTAMP', startingPositionTimestamp: from });
    const seen = await observe(running);
    await publish(5);
    await waitFor(() => seen.length >= 3, 5000, 'records from the timestamp on');
    await sleep(200);
    expect(temps(seen)).toEqual([3, 4, 5]);
  });

  it('keeps the triggers of a deleted function listed and deletable', async () => {
    const running = await startApp();
    cleanups.push(() => running.destroy());
    const base = running.addresses.http;
    expect((await call(base, 'PUT', '/v1/functions/gone', { code: OBSERVE })).status).toBe(201);
    const id = ((await call(base, 'POST', '/v1/functions/gone/triggers', {})).body as TriggerBody).id;
    expect((await call(base, 'DELETE', '/v1/functions/gone')).status).toBe(204);
    expect((await call(base, 'GET', '/v1/functions/gone/triggers')).body).toMatchObject({ items: [{ id }] });
    expectError(await call(base, 'PATCH', `/v1/functions/gone/triggers/${id}`, { batchSize: 5 }), 404, 'FunctionNotFound');
    expect((await call(base, 'DELETE', `/v1/functions/gone/triggers/${id}`)).status).toBe(204);
    expectError(await call(base, 'GET', '/v1/functions/gone/triggers'), 404, 'FunctionNotFound');
  });
});

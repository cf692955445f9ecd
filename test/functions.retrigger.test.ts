/**
 * The self-retrigger guard end to end: a handler that writes derived telemetry with
 * `context.put` onto the very device whose records it receives must not be invoked
 * again by its own write (which would loop forever), while the write itself is stored
 * and flows on the change stream like any other.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { call, startApp, type RunningApp } from './app-harness.js';
import { tempDir, waitFor } from './helpers.js';

const HANDLER = `
export async function handler(event, context) {
  for (const record of event.Records) {
    const deviceId = record.dynamodb.Keys.deviceId.S;
    const temp = Number(record.dynamodb.NewImage.temp?.N ?? 0);
    await context.put(deviceId, { values: { temp_f: temp * 9 / 5 + 32 } });
  }
}
`;

async function counter(running: RunningApp, name: string, labels: Record<string, string>): Promise<number> {
  const metric = await running.app.metrics.registry.getSingleMetric(name)?.get();
  const value = metric?.values.find((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l));
  return value?.value ?? 0;
}

describe('context.put onto the device a handler reads', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('stores and streams the derived reading but does not re-invoke the handler with it', async () => {
    const fnDir = tempDir();
    cleanups.push(fnDir.cleanup);
    writeFileSync(join(fnDir.path, 'to-fahrenheit.mjs'), HANDLER);
    const running = await startApp({ functionsDir: fnDir.path });
    cleanups.push(running.destroy);

    const posted = await call(running.addresses.http, 'POST', '/v1/devices/boiler-1/telemetry', { ts: 1_764_150_000_000, values: { temp: 100 } });
    expect(posted.status).toBe(201);

    // The mapping saw the derived reading on the stream and skipped it as its own write.
    await waitFor(async () => (await counter(running, 'tributary_mapping_records_skipped_total', { function: 'to-fahrenheit', reason: 'own_write' })) === 1);
    const readings = await call(running.addresses.http, 'GET', '/v1/devices/boiler-1/telemetry?from=0');
    const items = (readings.body as { items: Array<{ values: Record<string, number> }> }).items;
    expect(items.map((i) => i.values)).toEqual(expect.arrayContaining([{ temp: 100 }, { temp_f: 212 }]));
    expect(items).toHaveLength(2);
    // Once for the posted reading; its own write was skipped, not delivered.
    expect(await counter(running, 'tributary_function_invocations_total', { function: 'to-fahrenheit', outcome: 'ok' })).toBe(1);
  });
});

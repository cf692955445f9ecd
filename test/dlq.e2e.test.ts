/**
 * The dead-letter queue through the whole app: a trigger whose function keeps failing
 * gives up on the batch, the batch's metadata lands in /v1/dlq, and after a fixed
 * redeploy a redrive re-reads the records from the stream, delivers them and clears
 * the entry.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { call, connectClient, startApp } from './app-harness.js';
import { waitFor } from './helpers.js';

const FAILING = `export async function handler() { throw new Error('poison'); }`;
const FIXED = `export async function handler(event) { return { got: event.Records.map((r) => r.dynamodb.NewImage.temp.N) }; }`;

interface DlqEntry {
  id: string;
  function: string;
  count: number;
  reason: string;
  firstSequenceNumber: number;
}

describe('dead-letter queue (end to end)', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('keeps a batch the function gave up on and redrives it after a fix', async () => {
    const running = await startApp();
    cleanups.push(running.destroy);
    const http = running.addresses.http;
    expect((await call(http, 'PUT', '/v1/functions/ingest-check', { code: FAILING })).status).toBe(201);
    const trigger = await call(http, 'POST', '/v1/functions/ingest-check/triggers', { startingPosition: 'LATEST', maximumRetryAttempts: 0, batchSize: 10 });
    expect(trigger.status, JSON.stringify(trigger.body)).toBe(201);

    const device = await connectClient(running.addresses.mqtt, { clientId: 'dev-1' });
    cleanups.push(() => void device.end(true));
    await device.publishAsync('devices/dev-1/telemetry', '{"temp":21.5}', { qos: 1 });

    const entries = await waitFor(async () => {
      const res = await call(http, 'GET', '/v1/dlq?functionName=ingest-check');
      const items = (res.body as { items: DlqEntry[] }).items;
      return items.length > 0 ? items : undefined;
    }, 10_000, 'the discarded batch in the DLQ');
    expect(entries).toHaveLength(1);
    expect(entries[0]).toMatchObject({ function: 'ingest-check', count: 1, reason: 'RetryAttemptsExhausted' });

    // Still failing: the entry stays.
    const failed = await call(http, 'POST', `/v1/dlq/${entries[0]?.id}/redrive`);
    expect(failed.status).toBe(200);
    expect((failed.body as { status: string }).status).not.toBe('ok');
    expect(((await call(http, 'GET', '/v1/dlq')).body as { items: unknown[] }).items).toHaveLength(1);

    expect((await call(http, 'PUT', '/v1/functions/ingest-check', { code: FIXED })).status).toBe(201);
    const redriven = await call(http, 'POST', `/v1/dlq/${entries[0]?.id}/redrive`);
    expect(redriven.status).toBe(200);
    expect(redriven.body).toMatchObject({ status: 'ok', result: { got: ['21.5'] } });
    expect(((await call(http, 'GET', '/v1/dlq')).body as { items: unknown[] }).items).toHaveLength(0);
  });
});

/**
 * Isolation of handlers from the server (the whole app: real HTTP, LevelDB and function
 * processes): a handler that throws, spins forever, allocates without bound or calls
 * process.exit fails its own invocation only. While it misbehaves the server keeps
 * answering queries; the failed batch goes to the dead-letter queue with the outcome that
 * says what happened; and the function process is restarted, so the next record is
 * handled.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { call, startApp, type RunningApp } from './app-harness.js';
import { waitFor } from './helpers.js';

/**
 * Handles readings of device `sensor`: marks each one on device `seen-<name>` through
 * context.put (so the test can watch with queries), then misbehaves if the reading says
 * `bad: 1`.
 */
function handlerSource(misbehaviour: string): string {
  return `
export async function handler(event, context) {
  for (const r of event.Records) {
    const n = Number(r.dynamodb.NewImage.n.N);
    await context.put(process.env.MARKER, { values: { n, pid: process.pid } });
    if (r.dynamodb.NewImage.bad?.N === '1') {
      ${misbehaviour}
    }
  }
  return null;
}
`;
}

const CASES = [
  // A thrown error is an ordinary outcome: the process stays warm.
  { name: 'throws', code: "throw new Error('handler bug');", outcome: { status: 'error', errorMessage: 'handler bug' }, newProcess: false },
  { name: 'spins', code: 'for (;;) {}', outcome: { status: 'timeout' }, newProcess: true },
  { name: 'bombs', code: 'const keep = []; for (let i = 0; i < 4096; i++) keep.push(Buffer.alloc(1024 * 1024, 1)); globalThis.keep = keep;', outcome: { status: 'crashed', reason: expect.stringContaining('memory limit of 64 MB exceeded') }, newProcess: true },
  { name: 'exits', code: 'process.exit(7);', outcome: { status: 'crashed', reason: expect.stringContaining('exited with code 7') }, newProcess: true },
];

interface Probe {
  /** Successful query rounds so far. */
  readonly ok: number;
  /** Failed queries (status other than 200, or no answer). */
  readonly failures: string[];
  stop(): Promise<void>;
}

/** Queries the server back to back (health, latest reading, a range query) until stopped. */
function probe(base: string): Probe {
  const state = { ok: 0, failures: [] as string[], running: true };
  const paths = ['/healthz', '/v1/devices/sensor/latest', '/v1/devices/sensor/telemetry?from=0&limit=10'];
  const loop = (async () => {
    while (state.running) {
      for (const path of paths) {
        try {
          const res = await fetch(`${base}${path}`, { signal: AbortSignal.timeout(2000) });
          await res.arrayBuffer();
          if (res.status !== 200) state.failures.push(`${path}: ${res.status}`);
        } catch (err) {
          state.failures.push(`${path}: ${(err as Error).message}`);
        }
      }
      state.ok++;
    }
  })();
  return {
    get ok() {
      return state.ok;
    },
    failures: state.failures,
    stop: async () => {
      state.running = false;
      await loop;
    },
  };
}

describe('handler isolation', () => {
  let running: RunningApp | undefined;
  const probes: Probe[] = [];
  afterEach(async () => {
    for (const p of probes.splice(0)) await p.stop();
    await running?.destroy();
    running = undefined;
  });

  it.each(CASES)('a handler that $name fails only its invocation; queries are answered meanwhile; the next record is handled', async ({ name, code, outcome, newProcess }) => {
    running = await startApp();
    const base = running.addresses.http;
    const fn = `iso-${name}`;
    const marker = `seen-${name}`;
    const deployed = await call(base, 'PUT', `/v1/functions/${fn}`, { code: handlerSource(code), timeoutMs: 1500, memoryMb: 64, environment: { MARKER: marker } });
    expect(deployed.status, JSON.stringify(deployed.body)).toBe(201);
    const filterCriteria = { filters: [{ pattern: JSON.stringify({ dynamodb: { Keys: { deviceId: { S: ['sensor'] } } } }) }] };
    const trigger = await call(base, 'POST', `/v1/functions/${fn}/triggers`, { batchSize: 1, maximumRetryAttempts: 0, startingPosition: 'TRIM_HORIZON', filterCriteria });
    expect(trigger.status, JSON.stringify(trigger.body)).toBe(201);
    const write = async (values: Record<string, number>) => expect((await call(base, 'POST', '/v1/devices/sensor/telemetry', { values })).status).toBe(201);
    const markerValues = async () => {
      const res = await call(base, 'GET', `/v1/devices/${marker}/latest`);
      return res.status === 200 ? (res.body as { values: { n: number; pid: number } }).values : undefined;
    };
    const markerN = async () => (await markerValues())?.n;
    const dlq = async () => ((await call(base, 'GET', `/v1/dlq?functionName=${fn}`)).body as { items: Array<{ lastOutcome?: Record<string, unknown>; count: number }> }).items;

    await write({ n: 1 });
    await waitFor(async () => (await markerN()) === 1, 10_000, 'the first reading handled');
    const firstPid = (await markerValues())?.pid;

    const p = probe(base);
    probes.push(p);
    await write({ n: 2, bad: 1 });
    // The handler has started on the bad reading (it marks before it misbehaves).
    await waitFor(async () => (await markerN()) === 2, 10_000, 'the bad reading to reach the handler');
    const okAtStart = p.ok;
    const [entry] = await waitFor(async () => {
      const items = await dlq();
      return items.length > 0 ? items : undefined;
    }, 20_000, 'the failed batch in the dead-letter queue');
    expect(entry).toMatchObject({ count: 1, lastOutcome: expect.objectContaining(outcome) });
    // Query rounds completed, without a failure, between the misbehaviour and its outcome
    // (a spinning or allocating handler lasts long enough for several).
    if (name === 'spins') expect(p.ok - okAtStart).toBeGreaterThan(1);

    // A new process handles the next reading.
    await write({ n: 3 });
    await waitFor(async () => (await markerN()) === 3, 10_000, 'the next reading handled');
    // Killed or exited: a fresh process took over. Thrown: the same warm process.
    if (newProcess) expect((await markerValues())?.pid).not.toBe(firstPid);
    else expect((await markerValues())?.pid).toBe(firstPid);
    await p.stop();
    expect(p.failures).toEqual([]);
    expect(p.ok).toBeGreaterThan(0);
    expect((await call(base, 'GET', '/readyz')).status).toBe(200);
  }, 60_000);
});

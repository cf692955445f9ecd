/**
 * HTTP API benchmark: autocannon against `GET /v1/devices/{id}/latest` and a range
 * query returning 100 readings, on a real app (secured mode, real LevelDB), with a
 * fastify hello-world measured in the same run as the baseline. The baseline is built
 * by `buildApi` too, so it has the same plugins and hooks (errors, access control in
 * secured mode, request ids, OpenAPI) and is called with the same bearer key; only
 * its handler differs. Targets: latest ≥ 0.5× and the range query ≥ 0.25× the
 * baseline's requests per second. A fourth case sends the range query's response body
 * (fetched once) from a hello-world route: what moving those bytes costs, the part of
 * the range query no store can save. A last row compares the hello-world in secured and
 * open mode: what verifying the key costs. Another measures the range query against the
 * issue's "naive route": 100 rows from a bare classic-level iterator, in the same run.
 */
import { ClassicLevel } from 'classic-level';
import type { AddressInfo } from 'node:net';
import autocannon from 'autocannon';
import { createApp } from '../app.js';
import { ADMIN_KEY_ID, ApiKeyStore, newApiKeyToken } from '../access/api-keys.js';
import { secretDigest } from '../access/secrets.js';
import { buildApi } from '../api/index.js';
import { configWith } from '../core/config.js';
import { createLogger } from '../core/logger.js';
import { MemoryTelemetryStore } from '../store/index.js';
import { MemoryChangeLog } from '../streams/memory-log.js';
import { fmt, median, printTable, progress, sampleValues, scratchDir, type Row } from './harness.js';

const DURATION_S = Math.max(1, Math.round(Number(process.env.BENCH_DURATION_MS ?? 5000) / 1000));
const CONNECTIONS = 50;
/** Rounds of (baseline, latest, range), interleaved so that load from elsewhere hits all three alike; the median round counts. */
const ROUNDS = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3));

interface Measured {
  rps: number;
  p99: number;
  non2xx: number;
}

async function measure(url: string, key: string, durationS = DURATION_S): Promise<Measured> {
  // The client in a worker thread, so that it does not share the server's event loop.
  const r = await autocannon({ url, connections: CONNECTIONS, duration: durationS, workers: 1, headers: { authorization: `Bearer ${key}` } });
  return { rps: r.requests.average, p99: r.latency.p99, non2xx: r.non2xx + r.errors + r.timeouts };
}

/** Median requests per second and p99 of the rounds (each taken separately). */
function medianOf(ms: Measured[]): Measured {
  return { rps: median(ms.map((m) => m.rps)), p99: median(ms.map((m) => m.p99)), non2xx: ms.reduce((n, m) => n + m.non2xx, 0) };
}

function row(name: string, m: Measured, base: Measured, target?: number): Row {
  const ratio = m.rps / base.rps;
  const verdict = target === undefined ? 'the cost of authentication' : `target ≥ ${target}× ${ratio >= target ? 'met' : 'MISSED'}`;
  return {
    case: name,
    measured: `${fmt(m.rps)} req/s, p99 ${fmt(m.p99, 1)} ms`,
    baseline: `${fmt(base.rps)} req/s, p99 ${fmt(base.p99, 1)} ms`,
    ratio: `${fmt(ratio, 2)}×`,
    note: `${verdict}${m.non2xx > 0 ? `; ${fmt(m.non2xx)} non-2xx/errors` : ''}`,
  };
}

export async function benchApi(): Promise<void> {
  const dir = scratchDir('api');
  const app = createApp(configWith({ dataDir: dir.path, mqttPort: 0, httpPort: 0, secure: true, logLevel: 'silent' }), { logger: createLogger('silent') });
  const baselineStore = new MemoryTelemetryStore({ changeLog: new MemoryChangeLog({ shards: 1 }) });
  const baselineKey = newApiKeyToken(ADMIN_KEY_ID);
  const keys = await ApiKeyStore.open({ adminDigest: secretDigest(baselineKey) });
  /** The range query's response, once the app has answered it. */
  let rangeBody = Buffer.alloc(0);
  // The issue's "naive route": 100 rows read from a bare classic-level with one iterator, parsed, serialized.
  const rawDir = scratchDir('api-raw');
  const raw = new ClassicLevel<string, string>(rawDir.path);
  await raw.open();
  await raw.batch(Array.from({ length: 100 }, (_, i) => ({ type: 'put' as const, key: `bench-1!${String(i).padStart(6, '0')}`, value: JSON.stringify(sampleValues(i)) })));
  /** The hello-world: buildApi's plugins and hooks, one trivial route. */
  const helloWorld = (mode: 'open' | 'secured') => {
    const api = buildApi({ store: baselineStore, logger: createLogger('silent'), ready: () => true, ingest: async () => ({ accepted: 0, items: [] }), maxBodyBytes: 1024, access: { mode, keys } });
    api.get('/hello', { config: { access: { action: 'telemetry:Read' } }, schema: { response: { 200: { type: 'object', properties: { hello: { type: 'string' } } } } } }, async () => ({ hello: 'world' }));
    api.get('/body', { config: { access: { action: 'telemetry:Read' } } }, async (_request, reply) => reply.type('application/json; charset=utf-8').send(rangeBody));
    api.get('/naive', { config: { access: { action: 'telemetry:Read' } } }, async () => ({ items: (await raw.iterator({ limit: 100 }).all()).map(([k, v]) => ({ key: k, values: JSON.parse(v) as unknown })) }));
    return api;
  };
  const baseline = helloWorld('secured');
  // The same in open mode, to show what checking the key costs.
  const baselineOpen = helloWorld('open');
  try {
    const addresses = await app.start();
    const key = addresses.adminKey as string;
    const now = Date.now();
    // 100 readings of ~100 bytes in the last minute, written as one HTTP ingest.
    const readings = Array.from({ length: 100 }, (_, i) => ({ ts: now - 60_000 + i * 100, values: sampleValues(i) }));
    const ingest = await fetch(`${addresses.http}/v1/devices/bench-1/telemetry`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify(readings) });
    if (ingest.status !== 201) throw new Error(`seeding failed: ${ingest.status} ${await ingest.text()}`);
    const listen = async (api: typeof baseline) => {
      await api.listen({ host: '127.0.0.1', port: 0 });
      return `http://127.0.0.1:${(api.server.address() as AddressInfo).port}`;
    };
    const rangeUrl = `${addresses.http}/v1/devices/bench-1/telemetry?from=${now - 120_000}&limit=100`;
    const first = await fetch(rangeUrl, { headers: { authorization: `Bearer ${key}` } });
    if (first.status !== 200) throw new Error(`range query failed: ${first.status} ${await first.text()}`);
    rangeBody = Buffer.from(await first.arrayBuffer());
    const baseUrl = await listen(baseline);
    const openUrl = await listen(baselineOpen);

    const cases = {
      hello: [`${baseUrl}/hello`, baselineKey],
      helloOpen: [`${openUrl}/hello`, baselineKey],
      latest: [`${addresses.http}/v1/devices/bench-1/latest`, key],
      range: [rangeUrl, key],
      body: [`${baseUrl}/body`, baselineKey],
      naive: [`${baseUrl}/naive`, baselineKey],
    } as const;
    // Warm-up: JIT, fastify's serializer compilation, LevelDB's block cache.
    for (const [url, k] of Object.values(cases)) await measure(url, k, 1);
    const results: Record<keyof typeof cases, Measured[]> = { hello: [], helloOpen: [], latest: [], range: [], body: [], naive: [] };
    for (let round = 1; round <= ROUNDS; round++) {
      for (const [name, [url, k]] of Object.entries(cases)) {
        progress(`round ${round}/${ROUNDS}: ${name} (${DURATION_S} s, ${CONNECTIONS} connections)`);
        results[name as keyof typeof cases].push(await measure(url, k));
      }
    }
    const hello = medianOf(results.hello);
    const latest = medianOf(results.latest);
    const range = medianOf(results.range);
    printTable(`api — autocannon, ${CONNECTIONS} connections, median of ${ROUNDS} × ${DURATION_S} s, secured mode (bearer key) on both`, [
      row('GET /v1/devices/{id}/latest', latest, hello, 0.5),
      row('GET /v1/devices/{id}/telemetry (100 readings)', range, hello, 0.25),
      { ...row(`hello-world sending the range query's ${fmt(rangeBody.length)}-byte body`, medianOf(results.body), hello), note: 'moving the bytes alone: the ceiling for the range query' },
      { ...row('GET /v1/devices/{id}/telemetry (100 readings) vs a naive route over bare classic-level', range, medianOf(results.naive)), note: 'baseline: one iterator over 100 rows, JSON.parse each, default serializer' },
      row('hello-world secured (bearer key checked) vs open', hello, medianOf(results.helloOpen)),
    ]);
  } finally {
    await baseline.close();
    await baselineOpen.close();
    await baselineStore.close();
    await raw.close();
    rawDir.cleanup();
    await app.stop();
    dir.cleanup();
  }
}

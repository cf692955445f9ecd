/**
 * Overload: publishers faster than the store. The broker must slow them down (no PUBACK
 * and no reading of their sockets while their writes wait) rather than buffer without
 * bound; and a device over its publish rate is paced, not dropped.
 */
import { readFileSync } from 'node:fs';
import type { MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { PublishRate } from '../ingest/publish-rate.js';
import { MAX_PACING_MS } from '../ingest/telemetry-ingest.js';
import { DEFAULT_WRITE_BUFFER_BYTES } from '../store/database.js';
import { MemoryTelemetryStore } from '../store/memory-store.js';
import { connectClient, getJson, standaloneIngest, startApp } from './app-harness.js';
import { tempDir } from './helpers.js';
import { startServerProcess, YOUNG_GENERATION_EXTRA_MB, type ServerProcess } from './process.js';

const CONNECTIONS = 40;
const PER_CONNECTION = 1000;
const PAYLOAD_BYTES = 1024;
/**
 * The broker runs with a 64 MB heap while ~40 MB of publishes (several times that once
 * parsed) are offered at once: buffering them would exhaust it. RSS includes LevelDB's
 * caches and V8's slack, up to two write buffers (the one filling and the one being
 * written out: store/database.ts) and the server's larger young generation (test/process.ts);
 * unbounded buffering would blow through this.
 */
const HEAP_MB = 64;
const RSS_LIMIT_MB = 250 + (2 * DEFAULT_WRITE_BUFFER_BYTES) / (1024 * 1024) + YOUNG_GENERATION_EXTRA_MB;
/**
 * aedes reads no more of a connection while a packet of the chunk it read last is still
 * waiting for its PUBACK, so the readings the store is behind by are bounded by about one
 * socket read (64 KiB: ~64 of these publishes) per connection — not by what is offered.
 */
const BACKLOG_LIMIT = CONNECTIONS * 100;

function rssMb(pid: number): number {
  const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kb ?? 0) / 1024;
}

describe('ingest under overload', () => {
  const cleanups: Array<() => Promise<unknown> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('slows publishers faster than the store with bounded broker memory, keeps answering, and stores everything', { timeout: 120_000 }, async () => {
    const dir = tempDir('tributary-overload-');
    cleanups.push(dir.cleanup);
    // No per-device rate: this is about the store falling behind, not about one fast device.
    const nodeOptions = process.env.NODE_OPTIONS;
    process.env.NODE_OPTIONS = `${nodeOptions ?? ''} --max-old-space-size=${HEAP_MB}`;
    let server: ServerProcess;
    try {
      server = await startServerProcess(['--data-dir', dir.path, '--device-publish-rate', '0']);
    } finally {
      if (nodeOptions === undefined) delete process.env.NODE_OPTIONS;
      else process.env.NODE_OPTIONS = nodeOptions;
    }
    cleanups.push(() => server.signal('SIGTERM'));
    const pid = server.child.pid as number;

    const clients: MqttClient[] = [];
    for (let c = 0; c < CONNECTIONS; c++) {
      const client = await connectClient(server.mqttUrl, { clientId: `load-${c}` });
      clients.push(client);
      cleanups.push(() => void client.end(true));
    }
    // Warm up the paths (JIT, first LevelDB files) before taking the baseline.
    await Promise.all(clients.map((client, c) => client.publishAsync(`devices/load-${c}/telemetry`, '{"warm":1}', { qos: 1 })));
    const baseline = rssMb(pid);

    const filler = 'x'.repeat(PAYLOAD_BYTES - 40);
    let maxRss = baseline;
    const sampler = setInterval(() => (maxRss = Math.max(maxRss, rssMb(pid))), 25);
    cleanups.push(() => clearInterval(sampler));
    // Every publish of every connection at once: ~60 MB offered, far faster than fsyncs go.
    const all = clients.flatMap((client, c) =>
      Array.from({ length: PER_CONNECTION }, (_, i) => client.publishAsync(`devices/load-${c}/telemetry`, JSON.stringify({ i, filler }), { qos: 1 })),
    );
    // While the store is behind: the server answers, and says how far behind it is.
    let maxBacklog = 0;
    let done = false;
    const settled = Promise.all(all).finally(() => (done = true));
    while (!done) {
      expect((await getJson(`${server.httpUrl}/healthz`)).status).toBe(200);
      const metrics = await fetch(`${server.httpUrl}/metrics`).then((r) => r.text());
      const backlog = Number(/^tributary_store_queued_readings (\d+)/m.exec(metrics)?.[1] ?? 0);
      maxBacklog = Math.max(maxBacklog, backlog);
      await Promise.race([settled, new Promise((r) => setTimeout(r, 100))]);
    }
    await settled;
    clearInterval(sampler);
    maxRss = Math.max(maxRss, rssMb(pid));
    const offeredMb = (CONNECTIONS * PER_CONNECTION * PAYLOAD_BYTES) / 2 ** 20;
    console.log(`overload: ${CONNECTIONS}×${PER_CONNECTION} publishes (${offeredMb.toFixed(0)} MB offered); store backlog max ${maxBacklog} readings; broker RSS ${baseline.toFixed(1)} → max ${maxRss.toFixed(1)} MB`);
    expect(server.child.exitCode).toBeNull();
    expect(maxBacklog).toBeGreaterThan(0); // the store did fall behind
    expect(maxBacklog).toBeLessThan(BACKLOG_LIMIT);
    expect(maxRss).toBeLessThan(RSS_LIMIT_MB);

    // Every PUBACK meant a durable reading: all of them are there (plus the warm-up one).
    const devices = (await getJson(`${server.httpUrl}/v1/devices?limit=1000`)).body as { items: Array<{ deviceId: string; readings: number }> };
    const counts = devices.items.filter((d) => d.deviceId.startsWith('load-')).map((d) => d.readings);
    expect(counts).toEqual(Array(CONNECTIONS).fill(PER_CONNECTION + 1));
  });

  it('paces a device over its publish rate instead of dropping its publishes', async () => {
    const running = await startApp({ devicePublishRate: 5 });
    cleanups.push(running.destroy);
    const device = await connectClient(running.addresses.mqtt, { clientId: 'fast' });
    cleanups.push(() => void device.end(true));
    // A burst of 5 goes through at once, the next 7 wait their turn (≤ 1.4 s); none is lost.
    await Promise.all(Array.from({ length: 12 }, (_, i) => device.publishAsync('devices/fast/telemetry', JSON.stringify({ ts: 1_764_150_000_000 + i, values: { i } }), { qos: 1 })));
    expect(device.connected).toBe(true);
    const page = (await getJson(`${running.addresses.http}/v1/devices/fast/telemetry?from=1764150000000&to=1764150001000&limit=100`)).body as { items: unknown[] };
    expect(page.items).toHaveLength(12);
    const metrics = await running.app.metrics.registry.getSingleMetricAsString('tributary_ingest_throttled_total');
    expect(metrics).toMatch(/tributary_ingest_throttled_total 7\b/);
  });

  it(`refuses (Throttled: no PUBACK, the broker drops the connection) a publish that would wait more than ${MAX_PACING_MS} ms`, async () => {
    const store = new MemoryTelemetryStore();
    cleanups.push(() => store.close());
    const rate = new PublishRate({ ratePerSecond: 1, now: () => 1_000_000 });
    const ingest = standaloneIngest(store, { maxKeysPerReading: 10, maxClockSkewMs: 60_000, publishRate: rate });
    // The burst of one, then publishes in flight that already owe MAX_PACING_MS of waiting.
    for (let k = 0; k <= MAX_PACING_MS / 1000; k++) rate.take('d');
    await expect(ingest.ingestPayload('d', Buffer.from('{"a":1}'))).rejects.toMatchObject({ code: 'Throttled' });
    // The refused publish took no token: the next one is refused alike, not later still.
    expect(rate.take('d')).toBe(MAX_PACING_MS + 1000);
  });
});


/**
 * Crash-resume of an event source mapping (docs/ARCHITECTURE.md, "Delivery guarantees"):
 * the server runs as a child process with a `--functions-dir` handler that reports every
 * batch to an HTTP collector run by the test. The collector holds one batch unanswered,
 * so that an invocation is in flight, and the server is killed with SIGKILL. After a
 * restart on the same data directory, every record must have been delivered at least
 * once, in order per device, and the only records delivered twice are those of the
 * batches in flight at the kill: the held one, and on each other shard at most the last
 * batch delivered before the kill (whose checkpoint write may not have been durable).
 *
 * Runs the built CLI: `npx tsc -p .` (or `npm run build`) first.
 */
import { writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { shardOf } from '../streams/shard.js';
import { call } from './app-harness.js';
import { tempDir, waitFor } from './helpers.js';
import { startServerProcess, type ServerProcess } from './process.js';

const SHARDS = 4;
const DEVICES = Array.from({ length: 6 }, (_, i) => `crash-dev-${i}`);
const READINGS_PER_DEVICE = 25;
/** Readings per device written (and delivered) before the collector starts holding a batch. */
const BEFORE_HOLD = 12;

/** [deviceId, ts, sequence number] of one delivered record. */
type Delivered = [string, number, string];

interface Batch {
  records: Delivered[];
  /** Delivered by the first server (before the kill) or the restarted one. */
  phase: 'before' | 'after';
}

function handlerSource(collectorUrl: string): string {
  return `
export async function handler(event) {
  const records = event.Records.map((r) => [r.dynamodb.Keys.deviceId.S, Number(r.dynamodb.NewImage.ts.N), r.dynamodb.SequenceNumber]);
  const res = await fetch(${JSON.stringify(collectorUrl)}, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(records) });
  if (!res.ok) throw new Error('the collector answered ' + res.status);
  return null;
}
`;
}

class Collector {
  readonly batches: Batch[] = [];
  phase: Batch['phase'] = 'before';
  /** Set: the next batch is held. */
  armed = false;
  /** The batch held unanswered (the invocation in flight at the kill). */
  held: { records: Delivered[]; res: ServerResponse } | undefined;
  private readonly server: Server;

  constructor() {
    this.server = createServer((req, res) => void this.onRequest(req, res));
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/batch`;
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let body = '';
    for await (const chunk of req) body += String(chunk);
    const records = JSON.parse(body) as Delivered[];
    this.batches.push({ records, phase: this.phase });
    if (this.armed && this.held === undefined) {
      this.held = { records, res };
      return;
    }
    res.end('ok');
  }

  async close(): Promise<void> {
    this.held?.res.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

describe('event source mapping crash-resume', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('after kill -9 resumes from the checkpoints: everything at least once, in order per device, duplicates only from the batches in flight', async () => {
    const collector = new Collector();
    cleanups.push(() => collector.close());
    const url = await collector.listen();
    const data = tempDir();
    cleanups.push(data.cleanup);
    const fns = tempDir();
    cleanups.push(fns.cleanup);
    writeFileSync(join(fns.path, 'report.mjs'), handlerSource(url));
    // A long timeout: the held invocation must still be in flight at the kill.
    const args = ['--data-dir', data.path, '--functions-dir', fns.path, '--stream-shards', String(SHARDS), '--function-timeout-ms', '120000'];

    let server: ServerProcess = await startServerProcess(args);
    cleanups.push(() => server.signal('SIGKILL'));
    const written: Array<[string, number]> = [];
    const base = Date.now();
    const write = async (from: number, to: number) => {
      for (let ts = base + from; ts <= base + to; ts++) {
        for (const d of DEVICES) {
          // Device-supplied ts: a reading written twice would be the same item.
          const res = await call(server.httpUrl, 'POST', `/v1/devices/${d}/telemetry`, { ts, values: { n: ts - base } });
          expect(res.status, JSON.stringify(res.body)).toBe(201);
          written.push([d, ts]);
        }
      }
    };
    const key = (d: string, ts: number) => `${d}@${ts}`;
    const delivered = () => new Set(collector.batches.flatMap((b) => b.records.map(([d, ts]) => key(d, ts))));
    await write(1, BEFORE_HOLD);
    await waitFor(() => written.every(([d, ts]) => delivered().has(key(d, ts))), 20_000, 'the first readings delivered');
    // The next batch stays with the function; the other shards' batches queue behind it
    // (the runtime runs one invocation of a function at a time) while writes go on.
    collector.armed = true;
    await write(BEFORE_HOLD + 1, READINGS_PER_DEVICE);
    const held = await waitFor(() => collector.held, 20_000, 'a batch in flight');
    expect(await server.signal('SIGKILL')).toBe(null);
    const lastBefore = new Map<number, Delivered[]>();
    for (const b of collector.batches) {
      const shard = shardOf((b.records[0] as Delivered)[0], SHARDS);
      if (b.records !== held.records) lastBefore.set(shard, b.records);
    }
    collector.phase = 'after';
    held.res.destroy();

    server = await startServerProcess(args);
    await waitFor(() => written.every(([d, ts]) => delivered().has(key(d, ts))), 30_000, 'every record delivered');

    // In order per device: every batch is ascending per device, and the first deliveries follow the write order.
    const firstSeen = new Map<string, number[]>();
    const seen = new Set<string>();
    for (const b of collector.batches) {
      for (const [d, ts] of b.records) {
        if (seen.has(key(d, ts))) continue;
        seen.add(key(d, ts));
        firstSeen.set(d, [...(firstSeen.get(d) ?? []), ts]);
      }
      for (const d of DEVICES) {
        const mine = b.records.filter(([x]) => x === d).map(([, ts]) => ts);
        expect(mine).toEqual([...mine].sort((a, z) => a - z));
      }
    }
    for (const d of DEVICES) expect(firstSeen.get(d)).toEqual(Array.from({ length: READINGS_PER_DEVICE }, (_, i) => base + i + 1));

    // Duplicates: only records of the batches in flight at the kill, and the held one was redelivered in full.
    const allowed = new Set([...held.records, ...[...lastBefore.values()].flat()].map(([d, ts]) => key(d, ts)));
    const counts = new Map<string, number>();
    for (const b of collector.batches) for (const [d, ts] of b.records) counts.set(key(d, ts), (counts.get(key(d, ts)) ?? 0) + 1);
    const twice = [...counts].filter(([, n]) => n > 1).map(([k]) => k);
    expect(twice.filter((k) => !allowed.has(k))).toEqual([]);
    for (const [d, ts] of held.records) expect(counts.get(key(d, ts))).toBeGreaterThanOrEqual(2);
    // Nothing was delivered more than once after the restart.
    const after = collector.batches.filter((b) => b.phase === 'after').flatMap((b) => b.records.map(([d, ts]) => key(d, ts)));
    expect(new Set(after).size).toBe(after.length);

    expect(await server.signal('SIGTERM')).toBe(0);
  }, 90_000);
});

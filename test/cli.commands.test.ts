/**
 * The client commands of the CLI, run as child processes against a real server (open
 * mode) in another child process: what they print and the exit codes scripts rely on.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { call } from './app-harness.js';
import { cliCwd, runCli, spawnCli } from './cli-run.js';
import { freePort, tempDir, waitFor } from './helpers.js';
import { startServerProcess, type ServerProcess } from './process.js';

let server: ServerProcess;
const data = tempDir();
let env: Record<string, string>;

beforeAll(async () => {
  server = await startServerProcess(['--data-dir', data.path]);
  env = { TRIBUTARY_URL: server.httpUrl };
});

afterAll(async () => {
  await server?.signal('SIGTERM');
  data.cleanup();
  cliCwd.cleanup();
});

interface Reading {
  deviceId: string;
  ts: number;
  seq: number;
  values: Record<string, unknown>;
}

describe('tributary (client commands)', () => {
  it('prints help with the exit codes, exits 0 for --help and 2 for usage errors', async () => {
    const help = await runCli(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain('Exit codes:');
    expect((await runCli(['query', '--help'])).stdout).toContain('--interval <duration>');
    const unknown = await runCli(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("unknown command 'frobnicate'");
    expect((await runCli(['query'])).code).toBe(2);
    const badTime = await runCli(['query', 'sensor-1', '--from', 'yesterday'], { env });
    expect(badTime.code).toBe(2);
    expect(badTime.stderr).toContain('--from');
    expect((await runCli(['query', 'bad/id'], { env })).code).toBe(2);
  });

  it('exits 1 with a clear line when no server answers', async () => {
    const port = await freePort();
    const res = await runCli(['devices', 'list', '--url', `http://127.0.0.1:${port}`]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(`cannot reach the server at http://127.0.0.1:${port} (ECONNREFUSED)`);
  });

  it('devices add --no-secret, list (table and --json), rm; an unknown device exits 3', async () => {
    const add = await runCli(['devices', 'add', 'cli-dev-1', '--no-secret', '--tag', 'site=7', '--tag', 'floor=2'], { env });
    expect(add.code, add.stderr).toBe(0);
    // One tag syntax: what add takes, list and the API filter take (issue 17 item 15).
    const list = await runCli(['devices', 'list', '--tag', 'site=7'], { env });
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout.split('\n')[0]).toMatch(/^DEVICE\s+READINGS\s+FIRST SEEN\s+LAST SEEN\s+TAGS$/);
    expect(list.stdout).toMatch(/cli-dev-1\s+0\s+-\s+-\s+site=7 floor=2/);
    const json = JSON.parse((await runCli(['devices', 'list', '--json'], { env })).stdout) as Array<{ deviceId: string; tags: Record<string, string> }>;
    expect(json.find((d) => d.deviceId === 'cli-dev-1')?.tags).toEqual({ site: '7', floor: '2' });
    const byKey = JSON.parse((await runCli(['devices', 'list', '--tag', 'floor', '--json'], { env })).stdout) as Array<{ deviceId: string }>;
    expect(byKey.map((d) => d.deviceId)).toContain('cli-dev-1');
    const other = await runCli(['devices', 'list', '--tag', 'site=8'], { env });
    expect(other.stdout).not.toContain('cli-dev-1');
    const api = await call(server.httpUrl, 'GET', '/v1/devices?tag=site=7');
    expect((api.body as { items: Array<{ deviceId: string }> }).items.map((d) => d.deviceId)).toEqual(['cli-dev-1']);
    // Another syntax is refused, by the API (400) and so by the CLI (usage error, exit 2): never an empty list.
    expect((await call(server.httpUrl, 'GET', '/v1/devices?tag=site:7')).status).toBe(400);
    const wrong = await runCli(['devices', 'list', '--tag', 'site:7'], { env });
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain('tag filter must be key or key=value');

    expect((await runCli(['devices', 'rm', 'cli-dev-1'], { env })).code).toBe(0);
    const again = await runCli(['devices', 'rm', 'cli-dev-1'], { env });
    expect(again.code).toBe(3);
    expect(again.stderr).toContain('tributary: DeviceNotFound:');
  });

  it('query: a table of readings, --json, pages past the server page size, and aggregates', async () => {
    const t0 = Date.now() - 60_000;
    const readings = Array.from({ length: 150 }, (_, i) => ({ ts: t0 + i * 100, values: { temp: 20 + (i % 10), gps: { lat: 52.5 } } }));
    expect((await call(server.httpUrl, 'POST', '/v1/devices/cli-q/telemetry', readings)).status).toBe(201);

    const table = await runCli(['query', 'cli-q', '--from', '-5m', '--limit', '3'], { env });
    expect(table.code, table.stderr).toBe(0);
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(/^TIME\s+SEQ\s+temp\s+gps\.lat$/);
    expect(lines[1]).toMatch(new RegExp(`^${new Date(t0).toISOString()}\\s+0\\s+20\\s+52\\.5$`));
    expect(lines).toHaveLength(4);
    expect(table.stderr).toContain('showing the first 3 readings');

    // 150 readings with a server page of at most --limit: the CLI follows nextCursor.
    const json = await runCli(['query', 'cli-q', '--from', String(t0), '--to', 'now', '--json', '--order', 'desc'], { env });
    const items = JSON.parse(json.stdout) as Reading[];
    expect(items).toHaveLength(150);
    expect(items[0]?.ts).toBe(t0 + 149 * 100);

    const agg = await runCli(['query', 'cli-q', '--from', String(t0), '--agg', 'avg,max', '--interval', '1h', '--keys', 'temp', '--json'], { env });
    expect(agg.code, agg.stderr).toBe(0);
    const result = JSON.parse(agg.stdout) as { buckets: Array<{ values: Record<string, { avg: number; max: number }> }> };
    const all = result.buckets.flatMap((b) => Object.values(b.values));
    expect(Math.max(...all.map((v) => v.max))).toBe(29);
    const aggTable = await runCli(['query', 'cli-q', '--from', String(t0), '--interval', '1d'], { env });
    expect(aggTable.stdout.split('\n')[0]).toMatch(/^BUCKET START\s+temp avg\s+gps\.lat avg$/);
    expect(aggTable.stdout).toMatch(/24\.5\s+52\.5/);

    expect((await runCli(['query', 'cli-q', '--agg', 'avg'], { env })).code).toBe(2);
    const missing = await runCli(['query', 'no-such-device'], { env });
    expect(missing.code).toBe(3);
  });

  it('tail prints live records, one line each, and stops after --count', async () => {
    const tail = spawnCli(['tail', '--device', 'cli-tail', '--count', '2'], env);
    await tail.waitForStderr('following the change stream of cli-tail');
    await call(server.httpUrl, 'POST', '/v1/devices/other/telemetry', { temp: 1 });
    await call(server.httpUrl, 'POST', '/v1/devices/cli-tail/telemetry', [{ ts: 1_764_150_000_000, values: { temp: 21.5 } }, { ts: 1_764_150_000_001, values: { gps: { lat: 1.5 } } }]);
    expect(await tail.exited).toBe(0);
    expect(tail.stdout().trimEnd().split('\n')).toEqual([
      '2025-11-26T09:40:00.000Z  INSERT  cli-tail  temp=21.5',
      '2025-11-26T09:40:00.001Z  INSERT  cli-tail  gps.lat=1.5',
    ]);

    const json = spawnCli(['tail', '--count', '1', '--json'], env);
    await json.waitForStderr('following the change stream');
    await call(server.httpUrl, 'POST', '/v1/devices/cli-tail/telemetry', { temp: 22 });
    expect(await json.exited).toBe(0);
    const record = JSON.parse(json.stdout()) as { eventName: string; dynamodb: { NewImage: unknown } };
    expect(record.eventName).toBe('INSERT');
    expect(record.dynamodb.NewImage).toMatchObject({ deviceId: { S: 'cli-tail' }, temp: { N: '22' } });
  });

  it('simulate publishes over MQTT for --duration and prints a summary the server agrees with', async () => {
    const res = await runCli(['simulate', '--devices', '3', '--rate', '20', '--duration', '1s', '--prefix', 'cli-sim-', '--mqtt-url', server.mqttUrl, '--json'], { env });
    expect(res.code, res.stderr).toBe(0);
    const summary = JSON.parse(res.stdout) as { devices: number; sent: number; stored: number; failed: number; unacknowledged: number };
    expect(summary).toMatchObject({ devices: 3, failed: 0, unacknowledged: 0 });
    expect(summary.stored).toBe(summary.sent);
    expect(summary.stored).toBeGreaterThan(0);
    const list = JSON.parse((await runCli(['devices', 'list', '--json'], { env })).stdout) as Array<{ deviceId: string; readings: number }>;
    const simulated = list.filter((d) => d.deviceId.startsWith('cli-sim-'));
    expect(simulated.map((d) => d.deviceId)).toEqual(['cli-sim-001', 'cli-sim-002', 'cli-sim-003']);
    expect(simulated.reduce((n, d) => n + d.readings, 0)).toBe(summary.stored);
    const latest = (await call(server.httpUrl, 'GET', '/v1/devices/cli-sim-001/latest')).body as Reading;
    expect(Object.keys(latest.values).sort()).toEqual(['battery', 'humidity', 'rssi', 'temp']);
  });

  it('simulate runs until Ctrl-C, then waits for the PUBACKs in flight and prints its summary', async () => {
    const sim = spawnCli(['simulate', '--devices', '2', '--rate', '50', '--prefix', 'cli-int-', '--mqtt-url', server.mqttUrl, '--json'], env);
    await sim.waitForStderr('(Ctrl-C to stop)');
    await waitFor(async () => ((await call(server.httpUrl, 'GET', '/v1/devices/cli-int-002')).body as { readings?: number }).readings, 10_000, 'readings to arrive');
    sim.child.kill('SIGINT');
    expect(await sim.exited).toBe(0);
    const summary = JSON.parse(sim.stdout()) as { sent: number; stored: number; unacknowledged: number };
    expect(summary.stored).toBe(summary.sent);
    expect(summary.unacknowledged).toBe(0);
  });

  it('simulate exits 1 when no broker answers', async () => {
    const url = `mqtt://127.0.0.1:${await freePort()}`;
    const res = await runCli(['simulate', '--devices', '1', '--duration', '1s', '--mqtt-url', url]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain(`no device could connect to ${url}`);
  });

  it('fn deploy keeps versions, fn list shows the latest', async () => {
    const file = join(cliCwd.path, 'cli-hello.mjs');
    writeFileSync(file, 'export async function handler(e) { console.log("hello", e.name); return { hi: e.name }; }\n');
    const first = await runCli(['fn', 'deploy', file], { env });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stderr).toContain('deployed cli-hello version 1 (esm');
    const second = await runCli(['fn', 'deploy', file, '--timeout-ms', '500', '--env', 'GREETING=hi', '--json'], { env });
    expect(JSON.parse(second.stdout)).toMatchObject({ name: 'cli-hello', version: 2, timeoutMs: 500, environment: { GREETING: 'hi' } });
    const list = await runCli(['fn', 'list'], { env });
    expect(list.stdout).toMatch(/cli-hello\s+api\s+2\s+esm\s+500 ms/);
    expect((await runCli(['fn', 'deploy', join(cliCwd.path, 'missing.js')], { env })).code).toBe(2);
  });

  it('fn logs shows what an invocation printed', async () => {
    const file = join(cliCwd.path, 'cli-logs.mjs');
    writeFileSync(file, 'export async function handler(e) { console.warn("careful", e.n); return null; }\n');
    expect((await runCli(['fn', 'deploy', file], { env })).code).toBe(0);
    expect((await call(server.httpUrl, 'POST', '/v1/functions/cli-logs/invoke', { n: 42 })).status).toBe(200);
    const logs = await runCli(['fn', 'logs', 'cli-logs'], { env });
    expect(logs.code, logs.stderr).toBe(0);
    expect(logs.stdout).toMatch(/^\S+Z {2}WARN {3}careful 42 {2}\[v1 \S+\]$/m);
    expect((await runCli(['fn', 'logs', 'cli-logs', '--from', '-5m'], { env })).stdout).toContain('careful 42');
    const json = JSON.parse((await runCli(['fn', 'logs', 'cli-logs', '--json', '--level', 'warn'], { env })).stdout) as Array<{ message: string }>;
    expect(json.map((l) => l.message)).toEqual(['careful 42']);
    expect((await runCli(['fn', 'logs', 'no-such-fn'], { env })).code).toBe(3);

    // --follow: the lines so far, then each new one once, until Ctrl-C.
    const follow = spawnCli(['fn', 'logs', 'cli-logs', '--follow'], env);
    await waitFor(() => follow.stdout().includes('careful 42'), 10_000, 'the existing line');
    await call(server.httpUrl, 'POST', '/v1/functions/cli-logs/invoke', { n: 43 });
    await call(server.httpUrl, 'POST', '/v1/functions/cli-logs/invoke', { n: 44 });
    await waitFor(() => follow.stdout().includes('careful 44'), 10_000, 'the new lines');
    follow.child.kill('SIGINT');
    expect(await follow.exited).toBe(0);
    expect(follow.stdout().match(/careful \d+/g)).toEqual(['careful 42', 'careful 43', 'careful 44']);
  });

  it('fn replay re-processes a window of the stream, waits for the job and prints its summary', async () => {
    const file = join(cliCwd.path, 'cli-replay.mjs');
    writeFileSync(file, 'export async function handler(e) { console.log("records", e.Records.length); return null; }\n');
    expect((await runCli(['fn', 'deploy', file], { env })).code).toBe(0);
    const from = Date.now();
    await call(server.httpUrl, 'POST', '/v1/devices/cli-replayed/telemetry', [{ temp: 1 }, { temp: 2 }]);
    const res = await runCli(['fn', 'replay', 'cli-replay', '--from', String(from), '--json'], { env });
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout)).toMatchObject({ functionName: 'cli-replay', status: 'completed', records: 2, failedBatches: 0, functionVersions: [1] });
    const table = await runCli(['fn', 'replay', 'cli-replay', '--from', String(from)], { env });
    expect(table.stdout).toMatch(/^status\s+completed$/m);
    expect(table.stdout).toMatch(/^records\s+2 \(0 left out by filters\)$/m);

    // A handler that fails: the job completes with failed batches, and the exit code says so.
    writeFileSync(file, 'export async function handler() { throw new Error("nope"); }\n');
    expect((await runCli(['fn', 'deploy', file], { env })).code).toBe(0);
    const failing = await runCli(['fn', 'replay', 'cli-replay', '--from', String(from)], { env });
    expect(failing.code).toBe(1);
    expect(failing.stderr).toMatch(/failed: shard \d+ .*Error: nope — tributary fn logs cli-replay --request-id \S+/);

    expect((await runCli(['fn', 'replay', 'cli-replay'], { env })).code).toBe(2);
    expect((await runCli(['fn', 'replay', 'no-such-fn', '--from', '-1h'], { env })).code).toBe(3);
  });
});

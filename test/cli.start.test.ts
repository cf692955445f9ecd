import { spawnSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { CLI, hasTool, ROOT, startServerProcess, type ServerProcess } from './process.js';
import { getJson } from './app-harness.js';
import { tempDir, waitFor } from './helpers.js';

interface Page {
  items: Array<{ ts: number; values: Record<string, unknown> }>;
}

describe('tributary start (child process)', () => {
  const cleanups: Array<() => Promise<unknown> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it.skipIf(!hasTool('mosquitto_pub'))('takes a mosquitto_pub reading, serves it over HTTP, stops on SIGINT and reopens the same data', async () => {
    const dir = tempDir();
    cleanups.push(dir.cleanup);
    let server: ServerProcess = await startServerProcess(['--data-dir', dir.path, '--functions-dir', `${ROOT}functions/examples`, '--log-level', 'info']);
    cleanups.push(() => server.signal('SIGKILL'));

    const pub = spawnSync('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(server.mqttPort), '-i', 'sensor-1', '-t', 'devices/sensor-1/telemetry', '-m', '{"temp":31.5}', '-q', '1'], { encoding: 'utf8', timeout: 10_000 });
    expect(pub.status, pub.stderr).toBe(0);
    const page = await getJson(`${server.httpUrl}/v1/devices/sensor-1/telemetry?from=-1h`);
    expect(page.status).toBe(200);
    expect((page.body as Page).items.map((i) => i.values)).toEqual([{ temp: 31.5 }]);

    // The example handler logs readings above 30 degrees into the server log.
    await waitFor(() => server.output().includes('high temperature'), 5000, 'the example handler to log');

    expect(await server.signal('SIGINT')).toBe(0);
    server = await startServerProcess(['--data-dir', dir.path]);
    const again = await getJson(`${server.httpUrl}/v1/devices/sensor-1/telemetry?from=-1h`);
    expect(again.body).toEqual(page.body);
    expect(await server.signal('SIGTERM')).toBe(0);
  });

  it('refuses a bad setting with a message naming it and exit code 2', () => {
    const res = spawnSync(process.execPath, [CLI, 'start', '--mqtt-port', 'lots'], { encoding: 'utf8', timeout: 10_000 });
    expect(res.status).toBe(2);
    expect(res.stderr).toContain('invalid mqttPort (flag --mqtt-port)');
  });
});

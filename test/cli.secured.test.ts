/**
 * The CLI against a server in secured mode (child processes): the admin key printed
 * once at the first start, keys read from `<data-dir>/admin.key`, device secrets,
 * API keys with policies, and the simulator provisioning its devices.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { connectClient } from './app-harness.js';
import { cliCwd, runCli } from './cli-run.js';
import { tempDir } from './helpers.js';
import { startServerProcess, type ServerProcess } from './process.js';

let server: ServerProcess;
const data = tempDir();
/** Runs with the URL only: no key unless a test passes one. */
let url: Record<string, string>;
let admin: Record<string, string>;

beforeAll(async () => {
  server = await startServerProcess(['--data-dir', data.path, '--secure', 'true']);
  url = { TRIBUTARY_URL: server.httpUrl };
  admin = { ...url, TRIBUTARY_DATA_DIR: data.path };
});

afterAll(async () => {
  await server?.signal('SIGTERM');
  data.cleanup();
  cliCwd.cleanup();
});

describe('tributary against a secured server', () => {
  it('start prints the generated admin key once, saved to <data-dir>/admin.key with mode 0600', () => {
    const printed = /admin API key \(shown once\): (\S+)/.exec(server.output())?.[1];
    const file = join(data.path, 'admin.key');
    expect(printed).toBeDefined();
    expect(readFileSync(file, 'utf8').trim()).toBe(printed);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(server.output()).toContain(`saved to ${file}`);
    expect(server.output()).toContain('tributary is running (secured mode)');
    expect(server.output()).not.toContain('open mode');
  });

  it('exits 4 without a key, saying where a key comes from; reads admin.key from --data-dir or TRIBUTARY_DATA_DIR', async () => {
    const denied = await runCli(['devices', 'list'], { env: url });
    expect(denied.code).toBe(4);
    expect(denied.stderr).toContain('tributary: Unauthorized:');
    expect(denied.stderr).toContain('— pass --api-key or set TRIBUTARY_API_KEY (on the server\'s machine the CLI reads data/admin.key by itself');
    const wrong = await runCli(['devices', 'list', '--api-key', 'tak_0000000000000000_nope'], { env: url });
    expect(wrong.code).toBe(4);
    expect(wrong.stderr).toContain('the key given with --api-key was refused');

    expect((await runCli(['devices', 'list', '--data-dir', data.path], { env: url })).code).toBe(0);
    expect((await runCli(['devices', 'list'], { env: admin })).code).toBe(0);
  });

  it('devices add issues a secret the device logs in with; rotate replaces it; rotating an unknown device exits 3', async () => {
    const add = await runCli(['devices', 'add', 'cli-sec-1', '--tag', 'site=7', '--json'], { env: admin });
    expect(add.code, add.stderr).toBe(0);
    const added = JSON.parse(add.stdout) as { deviceId: string; tags: Record<string, string>; secret: string };
    expect(added).toMatchObject({ deviceId: 'cli-sec-1', tags: { site: '7' } });
    const client = await connectClient(server.mqttUrl, { clientId: 'cli-sec-1', username: 'cli-sec-1', password: added.secret });
    await client.publishAsync('devices/cli-sec-1/telemetry', JSON.stringify({ temp: 20 }), { qos: 1 });
    await client.endAsync();

    const rotate = await runCli(['devices', 'rotate', 'cli-sec-1'], { env: admin });
    expect(rotate.code, rotate.stderr).toBe(0);
    const secret = /^secret\s+(\S+)$/m.exec(rotate.stdout)?.[1];
    expect(secret).toBeDefined();
    expect(secret).not.toBe(added.secret);
    expect(rotate.stderr).toContain('shown only this once');
    await expect(connectClient(server.mqttUrl, { clientId: 'cli-sec-1', username: 'cli-sec-1', password: added.secret })).rejects.toThrow();
    (await connectClient(server.mqttUrl, { clientId: 'cli-sec-1', username: 'cli-sec-1', password: secret as string })).end(true);

    expect((await runCli(['devices', 'rotate', 'cli-sec-unknown'], { env: admin })).code).toBe(3);
  });

  it('keys add prints a key once; its policy holds (403 exits 4); keys list and rm', async () => {
    const add = await runCli(['keys', 'add', 'site-7 reader', '--actions', 'telemetry:Read', '--devices', 'cli-sec-*'], { env: admin });
    expect(add.code, add.stderr).toBe(0);
    const key = /^key\s+(\S+)$/m.exec(add.stdout)?.[1] as string;
    const id = /^id\s+(\S+)$/m.exec(add.stdout)?.[1] as string;
    expect(key).toMatch(/^tak_/);
    expect(add.stdout).toMatch(/^policy\s+telemetry:Read on cli-sec-\*$/m);

    const reader = { ...url, TRIBUTARY_API_KEY: key };
    expect((await runCli(['query', 'cli-sec-1', '--from', '-1h'], { env: reader })).code).toBe(0);
    const outside = await runCli(['query', 'other-device'], { env: reader });
    expect(outside.code).toBe(4);
    expect(outside.stderr).toContain('tributary: AccessDenied:');
    expect((await runCli(['devices', 'rm', 'cli-sec-1'], { env: reader })).code).toBe(4);

    const list = await runCli(['keys', 'list'], { env: admin });
    expect(list.stdout).toMatch(new RegExp(`^${id}\\s+site-7 reader\\s+\\S+\\s+telemetry:Read on cli-sec-\\*$`, 'm'));
    expect(list.stdout).not.toContain(key);

    expect((await runCli(['keys', 'rm', id], { env: admin })).code).toBe(0);
    expect((await runCli(['query', 'cli-sec-1'], { env: reader })).code).toBe(4);
    expect((await runCli(['keys', 'rm', id], { env: admin })).code).toBe(3);
    expect((await runCli(['keys', 'add', 'nothing'], { env: admin })).code).toBe(2);
  });

  it('simulate needs --provision in secured mode, and then registers its devices and publishes', async () => {
    const refused = await runCli(['simulate', '--devices', '1', '--duration', '1s', '--prefix', 'cli-unprov-', '--mqtt-url', server.mqttUrl], { env: admin });
    expect(refused.code).toBe(4);
    expect(refused.stderr).toContain('run with --provision');

    const res = await runCli(['simulate', '--devices', '2', '--rate', '10', '--duration', '1s', '--prefix', 'cli-prov-', '--provision', '--mqtt-url', server.mqttUrl, '--json'], { env: admin });
    expect(res.code, res.stderr).toBe(0);
    const summary = JSON.parse(res.stdout) as { sent: number; stored: number; failed: number };
    expect(summary.stored).toBeGreaterThan(0);
    expect(summary.stored).toBe(summary.sent);
    const devices = JSON.parse((await runCli(['devices', 'list', '--tag', 'simulated', '--json'], { env: admin })).stdout) as Array<{ deviceId: string }>;
    expect(devices.map((d) => d.deviceId)).toEqual(['cli-prov-001', 'cli-prov-002']);
  });

  it('a restart on the same data directory does not print the admin key again', async () => {
    expect(await server.signal('SIGTERM')).toBe(0);
    server = await startServerProcess(['--data-dir', data.path, '--secure', 'true']);
    expect(server.output()).not.toContain('admin API key');
    expect((await runCli(['devices', 'list', '--url', server.httpUrl], { env: { TRIBUTARY_DATA_DIR: data.path } })).code).toBe(0);
  });
});

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { settingOptions } from '../cli/args.js';
import { loadConfig, SETTINGS, type SettingKey } from '../core/config.js';
import { CLI, hasTool, ROOT, startServerProcess, type ServerProcess } from './process.js';
import { call, getJson } from './app-harness.js';
import { cliCwd, runCli, spawnCli } from './cli-run.js';
import { tempDir, waitFor } from './helpers.js';

afterAll(() => cliCwd.cleanup());

/** Every boolean of the settings table, with the command-line forms each must take. */
const BOOLEANS = (Object.keys(SETTINGS) as SettingKey[]).filter((key) => SETTINGS[key].kind.type === 'bool');
const boolForms = (flag: string): Array<[string[], boolean]> => [
  [[flag], true],
  [[`--no-${flag.slice(2)}`], false],
  [[flag, 'true'], true],
  [[flag, 'false'], false],
];

interface Page {
  items: Array<{ ts: number; values: Record<string, unknown> }>;
}

describe('tributary start (child process)', () => {
  const cleanups: Array<() => Promise<unknown> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  const dataDir = (): string => {
    const dir = tempDir();
    cleanups.push(dir.cleanup);
    return dir.path;
  };
  /** `tributary start` on free ports, expected to exit on its own. */
  const startToExit = (data: string, args: string[]) => runCli(['start', '--data-dir', data, '--mqtt-port', '0', '--http-port', '0', '--log-level', 'warn', ...args]);

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

  it('takes every boolean setting as --x, --no-x, --x true and --x false, none swallowing the next flag (built CLI)', async () => {
    expect(BOOLEANS).toContain('secure');
    for (const key of BOOLEANS) {
      const { flag } = SETTINGS[key];
      for (const [form] of boolForms(flag)) {
        // A bad port after it: start stops at validation, naming the port. Had the boolean
        // failed to parse, or taken `--mqtt-port` as its value, the error would name it instead.
        const res = await runCli(['start', ...form, '--mqtt-port', 'lots']);
        expect(res.code, `${form.join(' ')}: ${res.stderr}`).toBe(2);
        expect(res.stderr, form.join(' ')).toBe('tributary: invalid mqttPort (flag --mqtt-port): expected an integer from 0 to 65535 (got "lots")\n');
      }
      const bad = await runCli(['start', flag, 'maybe']);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toContain(`invalid ${key} (flag ${flag}): expected true or false (got "maybe")`);
    }
  });

  it('gives each boolean form its value, over the environment (the options start registers, parsed by commander)', () => {
    for (const key of BOOLEANS) {
      const { flag, env } = SETTINGS[key];
      for (const [form, value] of boolForms(flag)) {
        const command = new Command().exitOverride().option('--next <value>');
        for (const option of settingOptions(SETTINGS[key])) command.addOption(option);
        command.parse([...form, '--next', 'x'], { from: 'user' });
        const flags = { [key]: command.opts()[key] as unknown };
        expect(loadConfig({ env: { [env]: String(!value) }, flags })[key], form.join(' ')).toBe(value);
        // The flag after it keeps its value: the boolean took at most its own.
        expect(command.opts().next, form.join(' ')).toBe('x');
      }
      // No flag: the environment decides (the --no- twin sets no default of its own).
      const command = new Command();
      for (const option of settingOptions(SETTINGS[key])) command.addOption(option);
      command.parse([], { from: 'user' });
      expect(command.opts()[key]).toBeUndefined();
    }
  });

  it('starts secured with a bare --secure followed by another flag, and open with --no-secure over TRIBUTARY_SECURE=true', async () => {
    const data = dataDir();
    const secured = await startServerProcess(['--secure', '--data-dir', data]);
    cleanups.push(() => secured.signal('SIGKILL'));
    expect(secured.output()).toContain('tributary is running (secured mode)');
    expect((await call(secured.httpUrl, 'GET', '/v1/devices')).status).toBe(401);
    expect(await secured.signal('SIGTERM')).toBe(0);

    const open = await startServerProcess(['--no-secure', '--data-dir', data, '--mqtt-port', '0', '--http-port', '0'], { TRIBUTARY_SECURE: 'true' });
    cleanups.push(() => open.signal('SIGKILL'));
    expect(open.output()).toContain('tributary is running (open mode)');
    expect((await call(open.httpUrl, 'GET', '/v1/devices')).status).toBe(200);
    expect(await open.signal('SIGTERM')).toBe(0);
  });

  it('prints the admin key at the first start that comes up, after a first secured start that failed to bind', async () => {
    const data = dataDir();
    // 192.0.2.1 (TEST-NET-1, RFC 5737) is no address of this machine: the bind fails (EADDRNOTAVAIL),
    // after secured mode (any non-loopback bind) has generated the key. Nothing is sent anywhere.
    const failed = await startToExit(data, ['--http-host', '192.0.2.1']);
    expect(failed.code, failed.stderr).toBe(1);
    expect(failed.stderr).toContain('tributary: cannot start:');
    expect(failed.stdout).not.toContain('admin API key');
    expect(existsSync(join(data, 'admin.key')), 'admin.key is written only once the key is shown').toBe(false);
    const pending = readFileSync(join(data, 'admin.key.new'), 'utf8').trim();

    const first = await startServerProcess(['--secure', '--data-dir', data]);
    cleanups.push(() => first.signal('SIGKILL'));
    await waitFor(() => first.output().includes('saved to'), 10_000, 'the key lines');
    expect(/admin API key \(shown once\): (\S+)/.exec(first.output())?.[1]).toBe(pending);
    expect(readFileSync(join(data, 'admin.key'), 'utf8').trim()).toBe(pending);
    expect(existsSync(join(data, 'admin.key.new'))).toBe(false);
    const keys = await fetch(`${first.httpUrl}/v1/keys`, { headers: { authorization: `Bearer ${pending}` } });
    expect(keys.status).toBe(200);
    expect(await first.signal('SIGTERM')).toBe(0);

    const second = await startServerProcess(['--secure', '--data-dir', data]);
    cleanups.push(() => second.signal('SIGKILL'));
    expect(second.output()).not.toContain('admin API key');
    expect(await second.signal('SIGTERM')).toBe(0);
  });

  it('simulate exits 1 when the broker dies mid-run', async () => {
    const server = await startServerProcess(['--data-dir', dataDir()]);
    cleanups.push(() => server.signal('SIGKILL'));
    // A low rate, so that usually no reading is in flight at the kill: the case that exited 0.
    const sim = spawnCli(['simulate', '--devices', '2', '--rate', '2', '--prefix', 'mid-', '--mqtt-url', server.mqttUrl, '--json']);
    cleanups.push(() => void sim.child.kill('SIGKILL'));
    await sim.waitForStderr('(Ctrl-C to stop)');
    await waitFor(async () => ((await call(server.httpUrl, 'GET', '/v1/devices/mid-002')).body as { readings?: number }).readings, 10_000, 'readings to arrive');
    await server.signal('SIGKILL');
    await sim.waitForStderr('simulate: lost the connection to');
    sim.child.kill('SIGINT');
    expect(await sim.exited).toBe(1);
    const summary = JSON.parse(sim.stdout()) as { stored: number; offline: number };
    expect(summary.stored).toBeGreaterThan(0);
    // Both devices lost the broker; under load the second may not have seen its socket close
    // before the SIGINT, and then still counts as connected.
    expect(summary.offline).toBeGreaterThanOrEqual(1);
    expect(sim.stderr()).toContain('not every reading was stored');
  });

  it('exits 2, a configuration error, for a --functions-dir that cannot be read', async () => {
    const res = await startToExit(dataDir(), ['--functions-dir', '/nope']);
    expect(res.code, res.stderr).toBe(2);
    expect(res.stderr).toContain('invalid functionsDir: cannot read the functions directory /nope');
  });

  it('refuses a bad setting with a message naming it and exit code 2', () => {
    const res = spawnSync(process.execPath, [CLI, 'start', '--mqtt-port', 'lots'], { encoding: 'utf8', timeout: 10_000 });
    expect(res.status).toBe(2);
    expect(res.stderr).toContain('invalid mqttPort (flag --mqtt-port)');
  });
});

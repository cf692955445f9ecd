import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { NODE_FLAGS, SEMI_SPACE_MB } from '../core/node-flags.js';
import { freePort, waitFor } from './helpers.js';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The built CLI: `npm test` builds first (pretest), so tests run what users run. */
export const CLI = `${ROOT}dist/bin/tributary.js`;

/** V8's own largest semi-space on 64-bit Node 20, in MiB. */
const DEFAULT_SEMI_SPACE_MB = 16;

/**
 * What the servers started here may hold beyond Node's defaults, in MB: the young
 * generation core/node-flags.ts enlarges is two semi-spaces. Memory bounds add it.
 */
export const YOUNG_GENERATION_EXTRA_MB = 2 * (SEMI_SPACE_MB - DEFAULT_SEMI_SPACE_MB);

export interface ServerProcess {
  child: ChildProcess;
  mqttUrl: string;
  httpUrl: string;
  mqttPort: number;
  output: () => string;
  /** Sends a signal and resolves with the exit code. */
  signal: (sig: NodeJS.Signals) => Promise<number | null>;
}

/**
 * Starts `tributary start` in a child process and waits for its addresses: on ephemeral
 * ports, unless `env` is given (then the environment sets them, as a deployment would).
 */
export async function startServerProcess(args: string[], env?: Record<string, string>): Promise<ServerProcess> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` (npm test does it first)`);
  const ports = env === undefined ? ['--mqtt-port', '0', '--http-port', '0'] : [];
  const child = spawn(process.execPath, [...NODE_FLAGS, CLI, 'start', ...ports, '--log-level', 'warn', ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  // An exit ends the wait at once (waitFor would take a thrown error for "not yet").
  const match = await waitFor(() => (child.exitCode !== null ? 'exited' : /MQTT {2}mqtt:\/\/([^\s]+):(\d+)\n {2}HTTP {2}(http:\/\/[^\s]+)/.exec(out)), 15_000, 'the server to print its addresses');
  if (match === 'exited') throw new Error(`server exited with ${child.exitCode}: ${out}`);
  return {
    child,
    mqttUrl: `mqtt://${match[1]}:${match[2]}`,
    mqttPort: Number(match[2]),
    httpUrl: match[3] as string,
    output: () => out,
    signal: async (sig) => {
      if (child.exitCode === null) child.kill(sig);
      return exited;
    },
  };
}

/** A server started on fixed ports by {@link startServerOnFreePorts}, with the environment that names them. */
export interface FixedPortServer {
  process: ServerProcess;
  env: Record<string, string>;
  httpPort: number;
  mqttPort: number;
}

/**
 * Starts `tributary start` on fixed ports, as a deployment's environment names them:
 * `envFor` builds the environment for two free ports picked just before. Another process
 * can take a port between the pick and the bind (outgoing connections draw from the same
 * ephemeral range), so a start that fails with EADDRINUSE is tried again on fresh ports.
 */
export async function startServerOnFreePorts(envFor: (ports: { httpPort: number; mqttPort: number }) => Record<string, string>, attempts = 3): Promise<FixedPortServer> {
  for (let attempt = 1; ; attempt++) {
    const httpPort = await freePort();
    const mqttPort = await freePort();
    const env = envFor({ httpPort, mqttPort });
    try {
      return { process: await startServerProcess([], env), env, httpPort, mqttPort };
    } catch (err) {
      if (attempt >= attempts || !String(err).includes('EADDRINUSE')) throw err;
    }
  }
}

/** Whether a Debian tool is installed; under CI its absence is a failure, not a skip. */
export function hasTool(name: string): boolean {
  const found = spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
  if (!found && process.env.CI === 'true') throw new Error(`${name} is not installed; .ci/run installs it (apt-get install mosquitto-clients)`);
  return found;
}

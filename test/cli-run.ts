import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { CLI } from './process.js';
import { tempDir, waitFor } from './helpers.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * An environment for the CLI that names only the server under test: nothing of the
 * developer's own TRIBUTARY_* settings (a key, a URL) leaks in, and the working
 * directory holds no `data/admin.key`.
 */
export function cliEnv(vars: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('TRIBUTARY_')) env[k] = v;
  return { ...env, ...vars };
}

/** A working directory without a `data/` folder, shared by the CLI runs of a test file. */
export const cliCwd = tempDir('tributary-cli-cwd-');

/** Runs `tributary <args>` to completion. */
export function runCli(args: string[], opts: { env?: Record<string, string>; input?: string; timeoutMs?: number } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      process.execPath,
      [CLI, ...args],
      { cwd: cliCwd.path, env: cliEnv(opts.env), timeout: opts.timeoutMs ?? 15_000, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') return reject(new Error(`tributary ${args.join(' ')} did not finish: ${err.message}\n${stderr}`));
        resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** A long-running CLI command (tail, simulate) whose output the test watches. */
export function spawnCli(args: string[], env: Record<string, string> = {}): { child: ChildProcess; stdout: () => string; stderr: () => string; exited: Promise<number | null>; waitForStderr: (text: string) => Promise<void> } {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: cliCwd.path, env: cliEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitForStderr: async (text) => {
      await waitFor(() => {
        if (child.exitCode !== null) throw new Error(`exited with ${child.exitCode}: ${err}`);
        return err.includes(text);
      }, 10_000, `"${text}" on stderr`);
    },
  };
}

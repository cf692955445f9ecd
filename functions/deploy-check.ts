/**
 * Refuses broken code at deploy: a module that does not parse, or one that cannot export a
 * `handler`, answers 400 `InvalidFunctionCode` with the file, line and column, instead of
 * deploying and failing at its first invocation.
 *
 * User code is never loaded into the server: both checks run in child processes under the
 * function sandbox (`sandbox.ts`: read access to the module and the checker only, no
 * network, killed after {@link CHECK_TIMEOUT_MS}), and neither evaluates the module.
 * - Syntax: `node --check`, the parser that will load the module (so no construct Node
 *   accepts is refused); its report names the line, and its caret the column.
 * - Exports: `check-exports.js`, with the lexers Node uses for module exports.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, realpath, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TributaryError } from '../core/errors.js';
import { sandboxFlags } from './sandbox.js';

/** A check that takes longer (a pathological module) is refused rather than waited for. */
const CHECK_TIMEOUT_MS = 15_000;
/** Parsing the largest module allowed (5 MiB) needs well under this. */
const CHECK_HEAP_MB = 512;
const CHECKER = fileURLToPath(new URL('./check-exports.js', import.meta.url));
const require = createRequire(import.meta.url);
/** A package's folder: up from its entry file to the folder named after it (neither package exports `./package.json`). */
function packageDir(name: string): string {
  let dir = dirname(require.resolve(name));
  while (basename(dir) !== name && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}
/** The lexers' package folders, which the checker reads. */
const LEXERS = ['cjs-module-lexer', 'es-module-lexer'].map(packageDir);

interface Outcome {
  /** Exit code; null when killed. */
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node <sandbox> args...` with read access to `read`; never rejects for the child's exit. */
function runSandboxed(read: string[], args: string[]): Promise<Outcome> {
  const argv = [`--max-old-space-size=${CHECK_HEAP_MB}`, ...sandboxFlags({ read, network: false }), ...args];
  return new Promise((resolve, reject) => {
    execFile(process.execPath, argv, { env: { NODE_OPTIONS: '' }, timeout: CHECK_TIMEOUT_MS, killSignal: 'SIGKILL', maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      if (err && typeof err.code === 'string') reject(err); // could not start (ENOENT, ...)
      else resolve({ code: err ? (typeof err.code === 'number' ? err.code : null) : 0, stdout, stderr });
    });
  });
}

function invalid(message: string): TributaryError {
  return new TributaryError('InvalidFunctionCode', message, { field: 'code' });
}

/**
 * `node --check`'s report of a syntax error: `<path>:<line>`, the source line, a caret
 * line under the offending token, a blank line, `SyntaxError: <message>`.
 */
function syntaxError(stderr: string, path: string, file: string): TributaryError {
  const lines = stderr.split('\n');
  const at = lines.findIndex((l) => l.startsWith(`${path}:`));
  const message = lines.find((l) => /^\w*Error: /.test(l))?.trim() ?? lines.find((l) => l.trim() !== '')?.trim() ?? 'the module does not parse';
  const line = at === -1 ? undefined : Number(lines[at]?.slice(path.length + 1));
  const caret = at === -1 ? -1 : (lines[at + 2] ?? '').indexOf('^');
  if (line === undefined || !Number.isSafeInteger(line)) return invalid(`${file}: ${message}`);
  return invalid(caret === -1 ? `${file}:${line}: ${message}` : `${file}:${line}:${caret + 1}: ${message}`);
}

/**
 * Checks the handler module at `codePath` (its extension, `.mjs` or `.cjs`, says how Node
 * loads it). `file` is how messages name it. Resolves when it parses and may export
 * `handler`.
 * @throws TributaryError `InvalidFunctionCode` (field `code`) with `file:line:column` for a
 * syntax error, or when the module cannot export a `handler`.
 */
export async function checkHandlerModule(codePath: string, moduleType: 'esm' | 'commonjs', file = basename(codePath)): Promise<void> {
  const path = await realpath(codePath);
  const syntax = await runSandboxed([path], ['--check', path]);
  if (syntax.code === null) throw invalid(`${file}: the syntax check did not finish within ${CHECK_TIMEOUT_MS} ms`);
  if (syntax.code !== 0) throw syntaxError(syntax.stderr, path, file);

  const exports = await runSandboxed([path, CHECKER, ...LEXERS], [CHECKER, path, moduleType]);
  let verdict: unknown;
  try {
    verdict = (JSON.parse(exports.stdout) as { handler?: unknown }).handler;
  } catch {
    throw new TributaryError('InternalError', `the export check of ${file} failed: ${exports.stderr.trim().split('\n').pop() ?? `exit code ${exports.code}`}`);
  }
  if (verdict === 'no') {
    const how = moduleType === 'commonjs' ? '`exports.handler = async (event, context) => ...`' : '`export async function handler(event, context)`';
    throw invalid(`${file} does not export a function named "handler" (${how})`);
  }
}

/** {@link checkHandlerModule} for source text not yet on disk, written to a private temporary folder for the check. */
export async function checkHandlerSource(code: Buffer, moduleType: 'esm' | 'commonjs'): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'tributary-check-'));
  try {
    const file = moduleType === 'commonjs' ? 'index.cjs' : 'index.mjs';
    await writeFile(join(dir, file), code, { mode: 0o600 });
    await checkHandlerModule(join(dir, file), moduleType, file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

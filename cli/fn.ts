/**
 * `tributary fn deploy|list|logs|test|replay`: handler functions. All but `test` call
 * the server (`/v1/functions`); `test` runs a handler file once on this machine with
 * the server's own runtime (`runHandlerOnce`: a child process, the permission model,
 * the timeout and memory cap), so no server is needed.
 *
 * `deploy` and `test` take a handler file or a folder: a folder is a deployment package
 * (functions/package.ts), deployed as a gzip-compressed tarball of its contents.
 *
 * @module
 */
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { basename, dirname, extname, join, relative, resolve } from 'node:path';
import type { Command } from 'commander';
import { SETTINGS } from '../core/config.js';
import { stringifyJson } from '../core/numbers.js';
import { detectModuleType, FUNCTION_NAME_RE, MEMORY_RANGE, TIMEOUT_RANGE, type ModuleType } from '../functions/registry.js';
import { collect, intInRange, keyValues, positiveInt, timeFlag } from './args.js';
import { CliError, EXIT, usageError } from './exit.js';
import { clientFrom, seg, withClientOptions, type ApiClient, type ClientFlags } from './http-client.js';
import { formatTime, note, printFields, printJson, printTable } from './output.js';

interface FunctionVersion {
  name: string;
  source: 'api' | 'functions-dir';
  file?: string;
  package?: { handler: string; module: string; entries: number; unpackedBytes: number };
  version: number;
  codeSha256: string;
  codeSize: number;
  moduleType: ModuleType;
  timeoutMs: number;
  memoryMb: number;
  createdAt: number;
}

interface LogLine {
  time: number;
  level: string;
  message: string;
  requestId: string;
  functionVersion: number;
}

/** A replay job as `POST /v1/functions/{name}/replay` and `GET .../replays/{id}` answer it. */
interface ReplayJob {
  id: string;
  functionName: string;
  from: number;
  to: number;
  status: 'running' | 'completed' | 'cancelled' | 'failed';
  records: number;
  filtered: number;
  invocations: number;
  failedBatches: number;
  failures: Array<{ shard: number; firstSequenceNumber: number; lastSequenceNumber: number; count: number; requestId: string; status: string; errorType?: string; errorMessage?: string }>;
  functionVersions: number[];
  shardsDone: number;
  shardCount: number;
  truncated: boolean;
  error?: string;
}

const REPLAY_POLL_MS = 250;
const LOGS_POLL_MS = 1000;

/**
 * Polls for lines after the last one printed until Ctrl-C. Lines are ordered by (time,
 * seq), so the lines at the last printed millisecond come back first, in the order
 * already printed: skipping that many of them leaves exactly the new ones.
 */
async function followLogs(client: ApiClient, path: string, filter: Record<string, string | undefined>, printed: LogLine[], print: (l: LogLine) => void): Promise<void> {
  let lastTime = printed.length === 0 ? Date.now() : (printed[printed.length - 1] as LogLine).time;
  let atLast = printed.filter((l) => l.time === lastTime).length;
  let stop = false;
  const onSignal = () => (stop = true);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    while (!stop) {
      await new Promise((r) => setTimeout(r, LOGS_POLL_MS));
      if (stop) break;
      const page = await client.request<{ items: LogLine[] }>('GET', path, { query: { ...filter, from: lastTime, limit: 10_000 } });
      let skip = atLast;
      for (const l of page.items) {
        if (l.time === lastTime && skip > 0) {
          skip--;
          continue;
        }
        print(l);
        atLast = l.time === lastTime ? atLast + 1 : 1;
        lastTime = l.time;
      }
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** Polls a replay job until it ends, with a progress line on a terminal; Ctrl-C cancels the job. */
async function followReplay(client: ApiClient, started: ReplayJob): Promise<ReplayJob> {
  const path = `/functions/${seg(started.functionName)}/replays/${seg(started.id)}`;
  let cancel: Promise<ReplayJob> | undefined;
  const onSignal = () => {
    note('\ncancelling the replay after the batch in flight...');
    cancel ??= client.request<ReplayJob>('POST', `${path}/cancel`);
  };
  process.once('SIGINT', onSignal);
  const tty = process.stderr.isTTY === true;
  try {
    let job = started;
    while (job.status === 'running') {
      if (cancel) return await cancel;
      if (tty) process.stderr.write(`\r\x1b[Kreplay ${job.id}: shard ${job.shardsDone}/${job.shardCount} · ${job.records} records · ${job.invocations} invocations · ${job.failedBatches} failed`);
      await new Promise((r) => setTimeout(r, REPLAY_POLL_MS));
      job = await client.request<ReplayJob>('GET', path);
    }
    return job;
  } finally {
    process.off('SIGINT', onSignal);
    if (tty) process.stderr.write('\r\x1b[K');
  }
}

function printReplay(job: ReplayJob): void {
  printFields([
    ['replay', `${job.id} of ${job.functionName}`],
    ['status', job.status + (job.error === undefined ? '' : `: ${job.error}`)],
    ['window', `${formatTime(job.from)} .. ${formatTime(job.to)}`],
    ['records', `${job.records} (${job.filtered} left out by filters)`],
    ['invocations', `${job.invocations} (${job.failedBatches} failed), versions ${job.functionVersions.join(', ') || '-'}`],
    ['shards', `${job.shardsDone}/${job.shardCount}`],
  ]);
  if (job.truncated) note('the window starts before the oldest record the stream still keeps (--stream-retention): the oldest records were gone');
  for (const f of job.failures) {
    note(`failed: shard ${f.shard} records ${f.firstSequenceNumber}..${f.lastSequenceNumber} (${f.count}): ${f.status}${f.errorType === undefined ? '' : ` ${f.errorType}: ${f.errorMessage}`} — tributary fn logs ${job.functionName} --request-id ${f.requestId}`);
  }
}

interface LimitFlags {
  timeoutMs?: string;
  memoryMb?: string;
  env?: string[];
}

function readCode(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw usageError(`cannot read ${file}: ${(err as Error).message}`);
  }
}

/** `.mjs` and `.cjs` say what they are; `.js` is detected from the source, as a deploy does. */
function moduleTypeOf(file: string, code: string): ModuleType {
  const ext = extname(file);
  if (ext === '.mjs') return 'esm';
  if (ext === '.cjs') return 'commonjs';
  return detectModuleType(code);
}

function isFolder(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch (err) {
    throw usageError(`cannot read ${path}: ${(err as Error).message}`);
  }
}

/** A folder's contents as a gzip-compressed tarball, files at its top (`.git` left out), links kept as links. */
async function packFolder(dir: string): Promise<Buffer> {
  const [{ create }, { MAX_PACKAGE_BYTES }] = await Promise.all([import('tar'), import('../functions/package.js')]);
  const chunks: Buffer[] = [];
  const stream = create({ gzip: true, cwd: dir, portable: true, filter: (path) => !/(^|\/)\.git(\/|$)/.test(path) }, ['.']);
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  const bytes = Buffer.concat(chunks);
  if (bytes.length > MAX_PACKAGE_BYTES) throw usageError(`${dir} packs to ${bytes.length} bytes; a package may have at most ${MAX_PACKAGE_BYTES} (leave out devDependencies: npm install --omit=dev)`);
  return bytes;
}

/**
 * The package a handler file belongs to: the nearest folder at or above it with a
 * `package.json` or `node_modules` (neither the home folder nor the file system's root:
 * the function may read all of it); undefined for a file on its own.
 */
function packageRootOf(file: string): string | undefined {
  const home = homedir();
  for (let dir = dirname(resolve(file)); dir !== dirname(dir) && dir !== home; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json')) || existsSync(join(dir, 'node_modules'))) return dir;
  }
  return undefined;
}

/** Lambda's handler setting for a module file of a package folder. */
function handlerOf(root: string, file: string): string {
  return `${relative(root, resolve(file)).replace(/\.[cm]?js$/, '')}.handler`;
}

function nameFrom(path: string, given: string | undefined, folder = false): string {
  const name = given ?? basename(resolve(path), folder ? '' : extname(path));
  if (!FUNCTION_NAME_RE.test(name)) throw usageError(`function name ${JSON.stringify(name)} must be 1-64 characters of A-Z a-z 0-9 _ - (pass --name)`);
  return name;
}

/** Only the limits given: what is left out follows the server's defaults. */
function limitsFrom(opts: LimitFlags): { timeoutMs?: number; memoryMb?: number; environment?: Record<string, string> } {
  return {
    // The server's own bounds, so that fn test accepts what a deploy would.
    ...(opts.timeoutMs === undefined ? {} : { timeoutMs: intInRange(opts.timeoutMs, 'timeout-ms', TIMEOUT_RANGE.min, TIMEOUT_RANGE.max) }),
    ...(opts.memoryMb === undefined ? {} : { memoryMb: intInRange(opts.memoryMb, 'memory-mb', MEMORY_RANGE.min, MEMORY_RANGE.max) }),
    ...(opts.env === undefined ? {} : { environment: keyValues(opts.env, '--env') }),
  };
}

function withLimitOptions(cmd: Command, defaults: { timeout: string; memory: string }): Command {
  return cmd
    .option('--timeout-ms <ms>', `invocation timeout (${defaults.timeout})`)
    .option('--memory-mb <mb>', `memory cap (${defaults.memory})`)
    .option('--env <NAME=value>', 'an environment variable of the function (repeatable)', collect);
}

/** The event for `fn test`: a JSON file, `-` for stdin, or `{}`. */
function readEvent(path: string | undefined): unknown {
  if (path === undefined) return {};
  let text: string;
  try {
    text = readFileSync(path === '-' ? 0 : path, 'utf8');
  } catch (err) {
    throw usageError(`cannot read the event ${path}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw usageError(`the event ${path} is not JSON: ${(err as Error).message}`);
  }
}

function logLine(l: { time: number; level: string; message: string }): string {
  return `${formatTime(l.time)}  ${l.level.toUpperCase().padEnd(5)}  ${l.message}`;
}

export function registerFn(program: Command): void {
  const fn = program.command('fn').description('handler functions: deploy, list, logs, test locally, replay the stream');

  withClientOptions(
    withLimitOptions(
      fn.command('deploy <path>').description('deploy a handler module, or a folder with package.json and node_modules as a package, as a new version (earlier versions are kept)'),
      { timeout: "default: the server's", memory: "default: the server's" },
    )
      .option('--name <name>', 'function name (default: the file or folder name without extension)')
      .option('--handler <module.handler>', "a folder's handler, Lambda's form: the module's path in it without extension, then .handler", 'index.handler'),
  ).action(async (path: string, opts: ClientFlags & LimitFlags & { name?: string; handler: string }) => {
    const folder = isFolder(path);
    const name = nameFrom(path, opts.name, folder);
    let body: Record<string, unknown>;
    if (folder) body = { package: (await packFolder(path)).toString('base64'), handler: opts.handler, ...limitsFrom(opts) };
    else {
      const code = readCode(path);
      const ext = extname(path);
      const root = packageRootOf(path);
      if (root !== undefined && existsSync(join(root, 'node_modules')) && !opts.json) {
        note(`deploying ${path} alone: its imports of ${join(root, 'node_modules')} will not resolve on the server; to take them along, deploy the folder: tributary fn deploy ${root} --handler ${handlerOf(root, path)}`);
      }
      body = { code, ...limitsFrom(opts), ...(ext === '.mjs' || ext === '.cjs' ? { moduleType: moduleTypeOf(path, code) } : {}) };
    }
    const v = await clientFrom(opts).request<FunctionVersion>('PUT', `/functions/${seg(name)}`, { body });
    if (opts.json) return printJson(v);
    const what = v.package === undefined ? `${v.codeSize} bytes` : `package of ${v.package.entries} entries, ${v.package.unpackedBytes} bytes unpacked, handler ${v.package.module}`;
    note(`deployed ${v.name} version ${v.version} (${v.moduleType}, ${what}, sha256 ${v.codeSha256.slice(0, 12)}, timeout ${v.timeoutMs} ms, memory ${v.memoryMb} MB)`);
  });

  withClientOptions(fn.command('list').description('list functions, deployed or of --functions-dir (latest version of each)').option('--limit <n>', 'at most this many functions', '1000')).action(
    async (opts: ClientFlags & { limit: string }) => {
      const items = await clientFrom(opts).listAll<FunctionVersion>('/functions', {}, positiveInt(opts.limit, 'limit'), 'functions');
      if (opts.json) return printJson(items);
      printTable(
        [
          { header: 'NAME', value: (f: FunctionVersion) => f.name },
          { header: 'SOURCE', value: (f) => (f.source === 'functions-dir' ? 'file' : f.package === undefined ? 'api' : 'api package') },
          { header: 'VERSION', value: (f) => String(f.version), right: true },
          { header: 'MODULE', value: (f) => f.moduleType },
          { header: 'TIMEOUT', value: (f) => `${f.timeoutMs} ms`, right: true },
          { header: 'MEMORY', value: (f) => `${f.memoryMb} MB`, right: true },
          { header: 'DEPLOYED', value: (f) => formatTime(f.createdAt) },
          ...(items.some((f) => f.file !== undefined) ? [{ header: 'FILE', value: (f: FunctionVersion) => f.file ?? '' }] : []),
        ],
        items,
        'no functions',
      );
    },
  );

  withClientOptions(
    fn
      .command('logs <name>')
      .description("a function's captured console output: the last --limit lines, or those since --from")
      .option('--from <time>', 'lines since: epoch ms, ISO-8601, or an offset like -15m (default: the last --limit lines)')
      .option('--level <level>', 'this level and more severe: debug, info, warn, error')
      .option('--request-id <id>', 'only this invocation (or replay job)')
      .option('--limit <n>', 'at most this many lines', '100')
      .option('-f, --follow', 'keep printing new lines as they come (Ctrl-C to stop); with --json, one JSON line each'),
  ).action(async (name: string, opts: ClientFlags & { from?: string; level?: string; requestId?: string; limit: string; follow?: boolean }) => {
    const limit = positiveInt(opts.limit, 'limit');
    const filter = { level: opts.level, requestId: opts.requestId };
    const client = clientFrom(opts);
    const path = `/functions/${seg(name)}/logs`;
    // Without --from, the newest lines (read newest first, shown oldest first), as `tail` would.
    const lines =
      opts.from === undefined
        ? (await client.listAll<LogLine>(path, { ...filter, order: 'desc' }, limit, 'log lines')).reverse()
        : await client.listAll<LogLine>(path, { ...filter, from: timeFlag(opts.from, 'from', Date.now()) }, limit, 'log lines');
    const print = (l: LogLine) => process.stdout.write(opts.json ? `${JSON.stringify(l)}\n` : `${logLine(l)}  [v${l.functionVersion} ${l.requestId}]\n`);
    if (!opts.follow) {
      if (opts.json) return printJson(lines);
      if (lines.length === 0) return note(`no log lines of ${name}${opts.from === undefined ? '' : ` since ${opts.from}`}`);
      return lines.forEach(print);
    }
    lines.forEach(print);
    await followLogs(client, path, filter, lines, print);
  });

  withClientOptions(
    fn
      .command('replay <name>')
      .description("re-process a window of the change stream through a function (no trigger's checkpoint moves); waits for the job and prints its summary")
      .requiredOption('--from <time>', 'records committed since: epoch ms, ISO-8601, or an offset like -1h')
      .option('--to <time>', 'until (exclusive), same forms', 'now')
      .option('--batch-size <n>', 'records per invocation (default: the server\'s, 100)')
      .option('--no-wait', 'print the job as started and return; follow it with GET /v1/functions/{name}/replays/{id}'),
  ).action(async (name: string, opts: ClientFlags & { from: string; to: string; batchSize?: string; wait: boolean }) => {
    const now = Date.now();
    const from = timeFlag(opts.from, 'from', now);
    const to = timeFlag(opts.to, 'to', now);
    if (from > to) throw usageError(`--from (${formatTime(from)}) is after --to (${formatTime(to)})`);
    const batchSize = opts.batchSize === undefined ? undefined : positiveInt(opts.batchSize, 'batch-size');
    const client = clientFrom(opts);
    let job = await client.request<ReplayJob>('POST', `/functions/${seg(name)}/replay`, { body: { from, to, ...(batchSize === undefined ? {} : { batchSize }) } });
    if (opts.wait) job = await followReplay(client, job);
    if (opts.json) printJson(job);
    else printReplay(job);
    if (job.status === 'failed' || job.status === 'cancelled' || job.failedBatches > 0) process.exitCode = EXIT.failure;
  });

  withLimitOptions(
    fn
      .command('test <path>')
      .description("run a handler once on this machine, in the same runtime the server uses (no server needed); a file inside a folder with package.json or node_modules, or a folder, resolves the folder's packages")
      .option('--handler <module.handler>', "a folder's handler, as for deploy", 'index.handler')
      .option('--event <file>', 'the event as a JSON file, or - for stdin (default: {})')
      .option('--json', 'print the invocation as the API\'s /invoke answers it, plus the context calls it made'),
    { timeout: `default ${SETTINGS.functionTimeoutMs.default}`, memory: `default ${SETTINGS.functionMemoryMb.default}` },
  ).action(async (path: string, opts: LimitFlags & { handler: string; event?: string; json?: boolean }) => {
    const event = readEvent(opts.event);
    const limits = limitsFrom(opts);
    let file: string;
    let codePath: string;
    let codeRoot: string | undefined;
    let dir: string | undefined;
    if (isFolder(path)) {
      // As a deploy of the folder runs it: the handler module in place, the folder readable.
      const { handlerModule } = await import('../functions/package.js');
      codeRoot = resolve(path);
      file = join(codeRoot, await handlerModule(codeRoot, opts.handler).catch((err: unknown) => Promise.reject(usageError((err as Error).message))));
      codePath = file;
    } else {
      file = path;
      codeRoot = packageRootOf(file);
      if (codeRoot !== undefined) {
        codePath = resolve(file);
        if (!opts.json) {
          note(`running ${relative(codeRoot, codePath)} in place in ${codeRoot}, which its imports resolve in (deploy that folder to take node_modules along: tributary fn deploy ${codeRoot} --handler ${handlerOf(codeRoot, codePath)})`);
          // Run in place, a .js file is what Node (and a deploy of the folder) makes of it, not what its source looks like.
          const { moduleTypeOf: nodeModuleType } = await import('../functions/package.js');
          const asNode = await nodeModuleType(codeRoot, relative(codeRoot, codePath));
          const asSource = moduleTypeOf(file, readCode(file));
          if (asNode !== asSource) note(`note: ${file} reads as ${asSource} but Node loads it as ${asNode} here (the nearest package.json's "type"); a deploy of the file alone would run it as ${asSource}. Name it .mjs or .cjs, or set "type", to make them agree.`);
        }
      } else {
        // Run exactly what a deploy of this file would store: one module, index.mjs or index.cjs.
        const code = readCode(file);
        dir = mkdtempSync(join(tmpdir(), 'tributary-fn-test-'));
        codePath = join(dir, moduleTypeOf(file, code) === 'commonjs' ? 'index.cjs' : 'index.mjs');
        copyFileSync(file, codePath);
      }
    }
    // The runtime and the API's result shape are loaded only by this command.
    const [{ runHandlerOnce }, { invokeResultBody }] = await Promise.all([import('../functions/process-runtime.js'), import('../api/invoke-result.js')]);
    try {
      const timeoutMs = limits.timeoutMs ?? SETTINGS.functionTimeoutMs.default;
      const { result, calls } = await runHandlerOnce({
        codePath,
        ...(codeRoot === undefined ? {} : { codeRoot }),
        event,
        functionName: basename(resolve(path), extname(path)).replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 64) || 'handler',
        timeoutMs,
        ...(limits.memoryMb === undefined ? {} : { memoryMb: limits.memoryMb }),
        ...(limits.environment === undefined ? {} : { environment: limits.environment }),
      });
      // Stack traces name the temporary copy; point them at the user's file (same lines).
      const body = { ...invokeResultBody(result, timeoutMs), calls };
      const shown = JSON.parse(JSON.stringify(body).replaceAll(JSON.stringify(codePath).slice(1, -1), JSON.stringify(resolve(file)).slice(1, -1))) as typeof body;
      if (opts.json) printJson(shown);
      else {
        for (const l of shown.logs) process.stderr.write(`${logLine({ ...l, time: l.ts })}\n`);
        // Recorded, not performed: there is no server to write to or publish through.
        for (const c of shown.calls) {
          note(c.method === 'put' ? `context.put(${JSON.stringify(c.deviceId)}, ${stringifyJson(c.reading)}) — not written (no server)` : `context.publish(${JSON.stringify(c.deviceId)}, ${JSON.stringify(c.command)}) — not sent (no server)`);
        }
        if (shown.status === 'ok') printJson(shown.result);
        note(shown.status === 'ok' ? `ok in ${Math.round(shown.durationMs)} ms` : `${shown.status}: ${shown.errorType}: ${shown.errorMessage}`);
      }
      if (shown.status !== 'ok') process.exitCode = EXIT.failure;
    } catch (err) {
      throw new CliError(`cannot run ${file}: ${(err as Error).message}`, EXIT.failure);
    } finally {
      if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
    }
  });
}

/**
 * The function runtime: every deployed function runs in its own Node.js child process
 * (`host.js`), kept warm between invocations and replaced when a new version is deployed.
 * Invocations of one function run one at a time; at most `maxQueuedInvocations` may wait,
 * later ones are refused with `Throttled`. Every invocation, whoever asked for it, is
 * counted here (per-function metrics) and handed to `onInvoked` (the durable logs).
 *
 * Isolation, and its limits:
 * - Node's permission model (`sandbox.ts` picks each version's flags) with read access to
 *   the handler's folder and to `host.js` only: no other file reads (the data directory, the
 *   server's config, `/proc/self/environ`), no writes (the handler's own folder included),
 *   no child processes, no worker threads, no native addons, no WASI, no inspector, no
 *   `node:sqlite`. Access attempts fail with `ERR_ACCESS_DENIED`.
 * - No descriptor but stdio and IPC: the model does not check writes to descriptors a
 *   process already holds, and a fork inherits the server's that lack O_CLOEXEC (LevelDB's
 *   LOG, LOCK, WAL, MANIFEST). After each fork the server lists the child's
 *   `/proc/<pid>/fd` and `host.js` closes every one that points at a file before user code
 *   loads. Chosen over a launcher process forked before the database opens: that would add
 *   a relay for every IPC message, a process that could never be restarted once the
 *   database is open (a new one would inherit its files), and an ordering rule every
 *   caller of the runtime (tests, `fn test`, a runtime created after the database) would
 *   have to keep; closing in the child holds wherever the runtime is created and also
 *   drops files inherited from whatever started the server.
 * - Network: a setting per function (`network`, default on). Off means no sockets (TCP,
 *   UDP, Unix-domain, DNS) on every Node version: `host.js` refuses the socket APIs with
 *   the same errors everywhere, and from Node 25 the permission model (no `--allow-net`)
 *   enforces it beneath.
 * - The environment is the function's own `environment` plus a few Lambda-style
 *   variables; nothing of the server's environment (secrets) is inherited, and
 *   `NODE_OPTIONS` is cleared so it cannot add flags.
 * - Memory: `--max-old-space-size` bounds the JS heap; a watchdog here polls the child's
 *   resident set size (Buffers and ArrayBuffers live outside the heap) and kills it when it
 *   exceeds `memoryMb`. A tight allocation loop can overshoot by what it allocates in one
 *   poll interval.
 * - Time: a timer here kills the child (SIGKILL) when an invocation outlives `timeoutMs`;
 *   the child's event loop is never trusted to stop itself.
 * - Not covered: CPU share, and signals are refused only in JavaScript (`host.js`). The
 *   model is documented by Node as a seat belt for trusted code, not a sandbox for hostile
 *   code.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readlinkSync, realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { DEFAULT_AWS_LOCATION, functionArnOf, type AwsLocation } from '../core/arn.js';
import { SETTINGS } from '../core/config.js';
import { createLogger, type Logger } from '../core/logger.js';
import { TributaryError } from '../core/errors.js';
import type { Metrics } from '../core/metrics.js';
import { parseJson } from '../core/numbers.js';
import type { WriteOrigin } from '../streams/types.js';
import { sandboxFlags } from './sandbox.js';
import type { FunctionRuntime, FunctionSpec, HostServices, InvocationObserver, InvokeLog, InvokeOptions, InvokeOutcome, InvokeResult } from './types.js';

/** A thrown value as it crosses the IPC channel. */
export interface WireError {
  name: string;
  message: string;
  code?: string;
  stack?: string;
}

/**
 * Messages from the server to `host.js`. Exported for `host.js`'s JSDoc types only.
 * @internal
 */
export type ToHost =
  | {
      type: 'init';
      codePath: string;
      functionName: string;
      functionVersion: string;
      functionArn: string;
      memoryMb: number;
      maxLogBytes: number;
      reportRss: boolean;
      /** Descriptors the child inherited that point at files: closed before the module loads. */
      closeFds: number[];
      /** Refuse sockets in JavaScript (network off; see sandbox.ts). */
      lockNetwork: boolean;
    }
  /** `deadline` is epoch ms (both processes share the system clock). */
  | { type: 'invoke'; requestId: string; event: unknown; deadline: number }
  | { type: 'callResult'; callId: number; ok: true }
  | { type: 'callResult'; callId: number; ok: false; error: WireError };

/**
 * Messages from `host.js` to the server. They come from a process running user code, so
 * the server validates each one (`readFromHost`) instead of trusting this type.
 * @internal
 */
export type FromHost =
  | { type: 'ready' }
  | { type: 'initError'; error: WireError }
  | { type: 'log'; level: InvokeLog['level']; message: string; ts: number }
  | { type: 'truncated' }
  | { type: 'call'; callId: number; method: 'put' | 'publish'; args: unknown[] }
  /** `fatal`: the process exits right after this message (uncaught exception). */
  | { type: 'done'; requestId: string; fatal: boolean; ok: true; json: string }
  | { type: 'done'; requestId: string; fatal: boolean; ok: false; error: WireError }
  | { type: 'exiting' }
  | { type: 'rss'; rss: number };

/** The per-function metrics the runtime keeps (Lambda's Invocations, Errors, Throttles, Duration). */
export type FunctionMetrics = Pick<Metrics, 'functionInvocations' | 'functionErrors' | 'functionThrottles' | 'functionDuration'>;

/** Options of {@link ProcessFunctionRuntime}. */
export interface ProcessFunctionRuntimeOptions {
  logger: Logger;
  /** What `context.put` and `context.publish` call. */
  services: HostServices;
  /** Counted for every invocation, whoever asked for it (mappings, the API, redrives, replays). */
  metrics?: FunctionMetrics;
  /** Told about every finished invocation (the durable function logs plug in here). */
  onInvoked?: InvocationObserver;
  /**
   * Invocations of one function that may wait behind the one running; more are refused
   * with `Throttled` (Lambda's concurrency throttle), so a flood of API invokes cannot
   * queue without bound. Default 100.
   */
  maxQueuedInvocations?: number;
  /** Captured log text kept per invocation, in bytes; a marker follows the cut. Default 256 KiB. */
  maxLogBytes?: number;
  /**
   * Time allowed to start a process and load the handler module, counted apart from the
   * invocation's `timeoutMs` (Lambda's init phase). Default 10 s.
   */
  initTimeoutMs?: number;
  /** How often the memory watchdog reads a busy child's RSS. Default 50 ms. */
  memoryPollMs?: number;
  /** Region (`AWS_REGION`) and account (`invokedFunctionArn`) the functions see. Default: us-east-1, 000000000000. */
  aws?: AwsLocation;
  /**
   * A warm process idle this long is stopped (the next invocation starts a new one), so
   * deleted or rarely used functions do not hold memory forever. Default 10 minutes.
   */
  idleTimeoutMs?: number;
}

const DEFAULT_MAX_LOG_BYTES = 256 * 1024;
const DEFAULT_INIT_TIMEOUT_MS = 10_000;
const DEFAULT_MEMORY_POLL_MS = 50;
const DEFAULT_IDLE_TIMEOUT_MS = 10 * 60_000;
const DEFAULT_MAX_QUEUED = 100;
/** An idle process can still grow (timers); it is checked, but less often. */
const IDLE_MEMORY_POLL_MS = 1000;
/** How long a child that closed its channel gets to exit by itself before it is killed. */
const DISCONNECT_GRACE_MS = 1000;
const STDERR_TAIL_BYTES = 4096;
const HOST_URL = new URL('./host.js', import.meta.url);
/** Without /proc (macOS, Windows) the child reports its own RSS instead. */
const HAS_PROC = existsSync('/proc/self/status');

/** The runtime's own lines in a log (timeouts, error stacks) bypass the cap; keep them short. */
const RUNTIME_NOTE_MAX = 8192;

/** Log entries of one invocation, capped in bytes. */
class LogSink {
  readonly entries: InvokeLog[] = [];
  private bytes = 0;
  private truncated = false;

  constructor(private readonly cap: number) {}

  add(level: InvokeLog['level'], message: string, ts: number): void {
    if (this.truncated) return;
    const size = Buffer.byteLength(message);
    if (this.bytes + size <= this.cap) {
      this.bytes += size;
      this.entries.push({ ts, level, message });
      return;
    }
    const room = this.cap - this.bytes;
    if (room > 0) this.entries.push({ ts, level, message: Buffer.from(message).subarray(0, room).toString() });
    this.markTruncated();
  }

  markTruncated(): void {
    if (this.truncated) return;
    this.truncated = true;
    this.bytes = this.cap;
    this.entries.push({ ts: Date.now(), level: 'warn', message: `[log output truncated: more than ${this.cap} bytes in this invocation]` });
  }

  /** A line written by the runtime itself. */
  note(level: InvokeLog['level'], message: string): void {
    this.entries.push({ ts: Date.now(), level, message: message.slice(0, RUNTIME_NOTE_MAX) });
  }

  /** Moves the entries of `other` (logs from before this invocation started) in front. */
  absorb(other: LogSink): void {
    for (const e of other.entries) this.add(e.level, e.message, e.ts);
  }
}

/** The invocation a process is working on. */
interface Invocation {
  requestId: string;
  sink: LogSink;
  /** What the invocation's `context.put` writes are marked with (the self-retrigger guard). */
  origin: WriteOrigin | undefined;
  /** `init`: waiting for the module to load; `run`: the handler has the event. */
  phase: 'init' | 'run';
  settle(outcome: InvokeOutcome): void;
}

/** Identifies what a process was started for; any difference needs a new process. */
function fingerprint(fn: FunctionSpec): string {
  const env = Object.entries(fn.environment).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return JSON.stringify([fn.version, fn.codePath, fn.memoryMb, fn.network ?? true, env]);
}

function toWireError(err: unknown): WireError {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === 'string' ? { name: err.name, message: err.message, code } : { name: err.name, message: err.message };
  }
  return { name: 'Error', message: String(err) };
}

/** Turns a handler error into Lambda's errorType/errorMessage; the code leads, as in Node's fs errors. */
function errorOutcome(error: WireError): InvokeOutcome {
  const message = error.code !== undefined && !error.message.includes(error.code) ? `${error.code}: ${error.message}` : error.message;
  return { status: 'error', errorType: error.name, errorMessage: message };
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const LEVELS: ReadonlySet<string> = new Set(['debug', 'info', 'warn', 'error']);

function readWireError(v: unknown): WireError | undefined {
  if (!isRecord(v) || typeof v['name'] !== 'string' || typeof v['message'] !== 'string') return undefined;
  const out: WireError = { name: v['name'].slice(0, 256), message: v['message'].slice(0, 65_536) };
  if (typeof v['code'] === 'string') out.code = v['code'].slice(0, 256);
  if (typeof v['stack'] === 'string') out.stack = v['stack'];
  return out;
}

/** Validates a message from a child; anything malformed is dropped. */
function readFromHost(m: unknown): FromHost | undefined {
  if (!isRecord(m)) return undefined;
  switch (m['type']) {
    case 'ready':
    case 'truncated':
    case 'exiting':
      return { type: m['type'] };
    case 'initError': {
      const error = readWireError(m['error']);
      return error && { type: 'initError', error };
    }
    case 'log':
      return typeof m['level'] === 'string' && LEVELS.has(m['level']) && typeof m['message'] === 'string' && Number.isFinite(m['ts'])
        ? { type: 'log', level: m['level'] as InvokeLog['level'], message: m['message'], ts: m['ts'] as number }
        : undefined;
    case 'call':
      return typeof m['callId'] === 'number' && (m['method'] === 'put' || m['method'] === 'publish') && Array.isArray(m['args'])
        ? { type: 'call', callId: m['callId'], method: m['method'], args: m['args'] as unknown[] }
        : undefined;
    case 'done': {
      if (typeof m['requestId'] !== 'string') return undefined;
      const fatal = m['fatal'] === true;
      if (m['ok'] === true) return typeof m['json'] === 'string' ? { type: 'done', requestId: m['requestId'], fatal, ok: true, json: m['json'] } : undefined;
      const error = readWireError(m['error']);
      return error && { type: 'done', requestId: m['requestId'], fatal, ok: false, error };
    }
    case 'rss':
      return typeof m['rss'] === 'number' ? { type: 'rss', rss: m['rss'] } : undefined;
    default:
      return undefined;
  }
}

/**
 * The descriptors of a just-forked child that point at a file system object (anything but
 * a pipe, socket or anonymous inode): what it inherited from this process without
 * O_CLOEXEC, LevelDB's files among them (see host.js). Read after the fork, the list holds
 * every inherited descriptor, including ones another thread opened while forking.
 * Descriptors 0-2 are the child's stdio; `/dev/null` is left open (Node opens one of its
 * own at startup, and writing there reaches nothing). Undefined when the list cannot be
 * read: then the child must not run user code.
 */
function inheritedFiles(pid: number): number[] | undefined {
  const dir = `/proc/${pid}/fd`;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return undefined;
  }
  const fds: number[] = [];
  for (const name of names) {
    const fd = Number(name);
    if (fd <= 2) continue;
    try {
      const target = readlinkSync(`${dir}/${name}`);
      if (target.startsWith('/') && target !== '/dev/null') fds.push(fd);
    } catch {
      // closed meanwhile
    }
  }
  return fds;
}

/** Reads VmRSS (bytes) of a process from /proc; undefined when it is gone. */
async function readRss(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    return match?.[1] === undefined ? undefined : Number(match[1]) * 1024;
  } catch {
    return undefined;
  }
}

interface RuntimeSettings {
  logger: Logger;
  services: HostServices;
  metrics: FunctionMetrics | undefined;
  onInvoked: InvocationObserver | undefined;
  maxQueued: number;
  maxLogBytes: number;
  initTimeoutMs: number;
  memoryPollMs: number;
  idleTimeoutMs: number;
  aws: AwsLocation;
}

/**
 * One child process, from fork to exit. Runs one invocation at a time (its owner,
 * {@link FunctionSlot}, serialises them).
 */
class FunctionProcess {
  /** Resolves once the child has exited (or never started). */
  readonly exited: Promise<void>;
  private markExited!: () => void;
  private child: ChildProcess | undefined;
  private alive = false;
  private exitHandled = false;
  /** False once the process must not take another invocation. */
  private reusable = true;
  private ready = false;
  private readyWaiters: (() => void)[] = [];
  private current: Invocation | undefined;
  /** Logs that arrived between invocations; they go to the next one (as in Lambda). */
  private idleLogs: LogSink;
  /** Why the runtime killed the process, reported instead of the bare signal. */
  private killReason: string | undefined;
  private stderrTail = '';
  private memoryTimer: NodeJS.Timeout | undefined;
  private lastIdleMemoryCheck = 0;
  private memoryCheckInFlight = false;
  private disconnectTimer: NodeJS.Timeout | undefined;
  private idleTimer: NodeJS.Timeout | undefined;
  private readonly log: Logger;

  constructor(
    private readonly fn: FunctionSpec,
    private readonly settings: RuntimeSettings,
  ) {
    this.exited = new Promise((resolve) => (this.markExited = resolve));
    this.idleLogs = new LogSink(settings.maxLogBytes);
    this.log = settings.logger.child({ function: fn.name, version: fn.version });
  }

  /** Whether the next invocation can use this process. */
  get usable(): boolean {
    return this.alive && this.reusable;
  }

  /**
   * Forks the child. Failures to start (a bad path, an environment value Node refuses)
   * are returned as the reason instead of thrown.
   */
  start(): string | undefined {
    let codePath: string;
    let hostPath: string;
    let codeDir: string;
    try {
      // Real paths: the ESM loader resolves symlinks before reading, and the permission
      // check applies to the path it reads (e.g. /tmp -> /private/tmp on macOS).
      codePath = realpathSync(this.fn.codePath);
      hostPath = realpathSync(fileURLToPath(HOST_URL));
      codeDir = this.fn.codeRoot === undefined ? dirname(codePath) : realpathSync(this.fn.codeRoot);
    } catch (err) {
      this.markExited();
      return `cannot read the handler module: ${(err as Error).message}`;
    }
    const memoryMb = Math.max(1, Math.floor(this.fn.memoryMb));
    const network = this.fn.network ?? true;
    let execArgv: string[];
    try {
      execArgv = [`--max-old-space-size=${memoryMb}`, ...sandboxFlags({ read: [hostPath, codeDir], network })];
    } catch (err) {
      this.markExited();
      return `cannot sandbox the handler's folder: ${(err as Error).message}`;
    }
    const env: Record<string, string> = { TZ: 'UTC' };
    for (const [k, v] of Object.entries(this.fn.environment)) env[k] = v;
    Object.assign(env, {
      NODE_OPTIONS: '',
      // Lambda sets both (configuration-envvars.html#configuration-envvars-runtime).
      AWS_REGION: this.settings.aws.region,
      AWS_DEFAULT_REGION: this.settings.aws.region,
      AWS_LAMBDA_FUNCTION_NAME: this.fn.name,
      AWS_LAMBDA_FUNCTION_VERSION: String(this.fn.version),
      AWS_LAMBDA_FUNCTION_MEMORY_SIZE: String(memoryMb),
    });

    let child: ChildProcess;
    try {
      child = fork(hostPath, [], {
        execPath: process.execPath,
        execArgv,
        env,
        cwd: codeDir,
        stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
        serialization: 'json',
      });
    } catch (err) {
      this.markExited();
      return `cannot start the function process: ${(err as Error).message}`;
    }
    this.child = child;
    this.alive = true;

    child.on('message', (m: unknown) => this.onMessage(m));
    child.on('exit', (code, signal) => this.onExit(code, signal));
    child.on('disconnect', () => this.onDisconnect());
    child.on('error', (err) => {
      this.log.warn({ err }, 'function process error');
      // A spawn failure gets no 'exit' event.
      if (child.pid === undefined) this.onExit(null, null, `cannot start the function process: ${err.message}`);
    });
    // The pipes must be drained or a chatty child would block on a full pipe. Host.js
    // captures console output itself; what still arrives here is Node's own (fatal errors).
    const keepTail = (chunk: Buffer): void => {
      this.stderrTail = (this.stderrTail + chunk.toString()).slice(-STDERR_TAIL_BYTES);
    };
    child.stdout?.on('data', keepTail);
    child.stderr?.on('data', keepTail);
    child.stdout?.on('error', () => undefined);
    child.stderr?.on('error', () => undefined);

    if (HAS_PROC) {
      this.memoryTimer = setInterval(() => void this.checkMemory(), this.settings.memoryPollMs);
      this.memoryTimer.unref();
    }

    // Without /proc (macOS) there is nothing to list; there the descriptors stay open.
    const closeFds = HAS_PROC && child.pid !== undefined ? inheritedFiles(child.pid) : [];
    if (closeFds === undefined) {
      this.kill('cannot list the descriptors the function process inherited, so it cannot close them');
      return undefined;
    }
    this.send({
      type: 'init',
      codePath,
      functionName: this.fn.name,
      functionVersion: String(this.fn.version),
      functionArn: functionArnOf(this.settings.aws, this.fn.name),
      memoryMb,
      maxLogBytes: this.settings.maxLogBytes,
      reportRss: !HAS_PROC,
      closeFds,
      lockNetwork: !network,
    });
    return undefined;
  }

  /** Runs one invocation: waits for the module to load, sends the event, awaits the outcome. */
  invoke(requestId: string, event: unknown, sink: LogSink, origin?: WriteOrigin): Promise<InvokeOutcome> {
    return new Promise<InvokeOutcome>((resolve) => {
      let initTimer: NodeJS.Timeout | undefined;
      let runTimer: NodeJS.Timeout | undefined;
      const invocation: Invocation = {
        requestId,
        sink,
        origin,
        phase: 'init',
        settle: (outcome) => {
          if (this.current !== invocation) return;
          this.current = undefined;
          clearTimeout(initTimer);
          clearTimeout(runTimer);
          if (this.usable) {
            this.idleTimer = setTimeout(() => this.kill('idle'), this.settings.idleTimeoutMs);
            this.idleTimer.unref();
          }
          resolve(outcome);
        },
      };
      clearTimeout(this.idleTimer);
      this.current = invocation;
      sink.absorb(this.idleLogs);
      this.idleLogs = new LogSink(this.settings.maxLogBytes);
      if (!this.alive) {
        invocation.settle({ status: 'crashed', reason: 'the function process is not running' });
        return;
      }

      const run = (): void => {
        if (this.current !== invocation) return;
        clearTimeout(initTimer);
        invocation.phase = 'run';
        const timeoutMs = this.fn.timeoutMs;
        runTimer = setTimeout(() => {
          sink.note('error', `Task timed out after ${timeoutMs} ms`);
          invocation.settle({ status: 'timeout' });
          this.kill('timed out');
        }, timeoutMs);
        this.send({ type: 'invoke', requestId, event, deadline: Date.now() + timeoutMs }, (err) => {
          // Only an event that cannot be serialised gets here; a closed channel is
          // reported by the exit handler with a better reason.
          if (err) invocation.settle({ status: 'error', errorType: err.name, errorMessage: `the event cannot be sent to the function: ${err.message}` });
        });
      };

      if (this.ready) {
        run();
      } else {
        initTimer = setTimeout(() => {
          sink.note('error', `Init timed out after ${this.settings.initTimeoutMs} ms`);
          invocation.settle({ status: 'timeout' });
          this.kill('init timed out');
        }, this.settings.initTimeoutMs);
        this.readyWaiters.push(run);
      }
    });
  }

  /** SIGKILLs the child; `reason` is what a pending invocation is told. */
  kill(reason: string): void {
    this.reusable = false;
    if (!this.alive) return;
    this.killReason ??= reason;
    try {
      this.child?.kill('SIGKILL');
    } catch (err) {
      this.log.warn({ err }, 'cannot kill function process');
    }
  }

  /**
   * Sends a message to the child. `onSerialiseError` gets errors thrown for the message
   * itself; a closed channel is left to the exit/disconnect handlers.
   */
  private send(message: ToHost, onSerialiseError?: (err: Error) => void): void {
    const child = this.child;
    if (!child?.connected) return;
    try {
      child.send(message, (err) => {
        // EPIPE / channel closed: the child is exiting; its 'exit' settles whatever is pending.
        if (err) this.log.debug({ err }, 'send to function process failed');
      });
    } catch (err) {
      if (onSerialiseError) onSerialiseError(err as Error);
      else this.log.warn({ err }, 'cannot send to function process');
    }
  }

  private onMessage(raw: unknown): void {
    const m = readFromHost(raw);
    if (!m) {
      this.log.debug('malformed message from function process dropped');
      return;
    }
    const inv = this.current;
    switch (m.type) {
      case 'ready': {
        this.ready = true;
        const waiters = this.readyWaiters;
        this.readyWaiters = [];
        for (const w of waiters) w();
        break;
      }
      case 'initError':
        // The module did not load; the next invocation tries again in a fresh process.
        if (m.error.stack) inv?.sink.note('error', m.error.stack);
        inv?.settle(errorOutcome(m.error));
        this.kill('init failed');
        break;
      case 'log':
        (inv?.sink ?? this.idleLogs).add(m.level, m.message, m.ts);
        break;
      case 'truncated':
        (inv?.sink ?? this.idleLogs).markTruncated();
        break;
      case 'call':
        void this.onCall(m);
        break;
      case 'done': {
        if (m.fatal) this.reusable = false;
        if (!inv || inv.requestId !== m.requestId || inv.phase !== 'run') break;
        if (m.ok) {
          let result: unknown;
          try {
            result = JSON.parse(m.json);
          } catch {
            inv.settle({ status: 'error', errorType: 'ResultSerializationError', errorMessage: 'the function returned malformed JSON' });
            break;
          }
          inv.settle({ status: 'ok', result });
        } else {
          if (m.error.stack) inv.sink.note('error', `Invoke Error: ${m.error.stack}`);
          inv.settle(errorOutcome(m.error));
        }
        break;
      }
      case 'exiting':
        this.reusable = false;
        break;
      case 'rss':
        this.enforceMemory(m.rss);
        break;
    }
  }

  /** Runs a `context.put`/`context.publish` for the handler and answers with the outcome. */
  private async onCall(m: Extract<FromHost, { type: 'call' }>): Promise<void> {
    let reply: ToHost;
    try {
      // Only while an invocation runs: a handler must not keep writing after it returned
      // (nothing would account for those writes).
      if (this.current?.phase !== 'run') throw new Error(`context.${m.method} can only be used while an invocation is running`);
      const [deviceId, arg] = m.args;
      if (typeof deviceId !== 'string') throw new TypeError(`context.${m.method}: deviceId must be a string`);
      if (m.method === 'put') {
        // The host sends the reading as JSON text (functions/host.js), read like a device's payload.
        if (typeof arg !== 'string') throw new TypeError('context.put: the reading did not arrive as JSON text');
        await this.settings.services.put(deviceId, parseJson(arg), this.current.origin);
      } else {
        if (!isRecord(arg) || typeof arg['name'] !== 'string') throw new TypeError('context.publish: command must be an object { name, payload }');
        await this.settings.services.publish(deviceId, { name: arg['name'], payload: arg['payload'] });
      }
      reply = { type: 'callResult', callId: m.callId, ok: true };
    } catch (err) {
      this.log.debug({ err, method: m.method }, 'function service call failed');
      reply = { type: 'callResult', callId: m.callId, ok: false, error: toWireError(err) };
    }
    this.send(reply);
  }

  private async checkMemory(): Promise<void> {
    const pid = this.child?.pid;
    if (!this.alive || pid === undefined || this.memoryCheckInFlight) return;
    if (!this.current) {
      const now = Date.now();
      if (now - this.lastIdleMemoryCheck < IDLE_MEMORY_POLL_MS) return;
      this.lastIdleMemoryCheck = now;
    }
    this.memoryCheckInFlight = true;
    try {
      const rss = await readRss(pid);
      if (rss !== undefined && this.alive) this.enforceMemory(rss);
    } finally {
      this.memoryCheckInFlight = false;
    }
  }

  private enforceMemory(rss: number): void {
    if (rss <= this.fn.memoryMb * 1024 * 1024) return;
    const reason = this.memoryReason();
    this.current?.settle({ status: 'crashed', reason });
    if (!this.killReason) this.log.info({ rss }, 'function process over its memory limit; killed');
    this.kill(reason);
  }

  private memoryReason(): string {
    return `memory limit of ${this.fn.memoryMb} MB exceeded`;
  }

  private onDisconnect(): void {
    this.reusable = false;
    // Normally the exit follows at once; a child that closed its channel but keeps running
    // is of no use and would never be reaped.
    this.disconnectTimer = setTimeout(() => this.kill('the function process closed its IPC channel'), DISCONNECT_GRACE_MS);
    this.disconnectTimer.unref();
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null, override?: string): void {
    if (this.exitHandled) return;
    this.exitHandled = true;
    this.alive = false;
    this.reusable = false;
    clearInterval(this.memoryTimer);
    clearTimeout(this.disconnectTimer);
    clearTimeout(this.idleTimer);
    const reason = override ?? this.killReason ?? this.exitReason(code, signal);
    this.current?.settle({ status: 'crashed', reason });
    // Invocations still waiting for init hear about it through `current`; nobody else waits.
    this.readyWaiters = [];
    this.log.debug({ code, signal, reason }, 'function process exited');
    this.markExited();
  }

  private exitReason(code: number | null, signal: NodeJS.Signals | null): string {
    // V8 aborts with this message when the heap limit (--max-old-space-size) is reached.
    if (/heap out of memory|allocation failed/i.test(this.stderrTail)) return this.memoryReason();
    const lastLine = this.stderrTail.trim().split('\n').pop()?.trim().slice(0, 300);
    const base = signal ? `the function process was killed by ${signal}` : `the function process exited with code ${code ?? 'unknown'}`;
    return lastLine ? `${base}: ${lastLine}` : base;
  }
}

/** One function name: its current process and the queue that serialises invocations. */
class FunctionSlot {
  private tail: Promise<unknown> = Promise.resolve();
  process: FunctionProcess | undefined;
  retired = false;
  /** Tasks enqueued and not finished, the running one included. */
  queued = 0;

  constructor(readonly fingerprint: string) {}

  /** Runs `task` after every earlier task of this slot has finished. */
  enqueue<T>(task: () => Promise<T>): Promise<T> {
    this.queued++;
    const run = this.tail.then(task, task).finally(() => this.queued--);
    this.tail = run.catch(() => undefined);
    return run;
  }

  /** Stops the process once the queued invocations (of the old version) are done. */
  retire(): void {
    this.retired = true;
    void this.enqueue(async () => {
      this.process?.kill('replaced by a new version');
    });
  }
}

/**
 * Runs each function in its own warm child process. See the module comment for the
 * isolation it gives and where it stops.
 */
export class ProcessFunctionRuntime implements FunctionRuntime {
  private readonly settings: RuntimeSettings;
  private readonly slots = new Map<string, FunctionSlot>();
  /** Every process not yet exited, including retired ones, so `close()` can await them. */
  private readonly processes = new Set<FunctionProcess>();
  private closed = false;

  constructor(options: ProcessFunctionRuntimeOptions) {
    this.settings = {
      logger: options.logger.child({ module: 'functions' }),
      services: options.services,
      metrics: options.metrics,
      onInvoked: options.onInvoked,
      maxQueued: options.maxQueuedInvocations ?? DEFAULT_MAX_QUEUED,
      maxLogBytes: options.maxLogBytes ?? DEFAULT_MAX_LOG_BYTES,
      initTimeoutMs: options.initTimeoutMs ?? DEFAULT_INIT_TIMEOUT_MS,
      memoryPollMs: options.memoryPollMs ?? DEFAULT_MEMORY_POLL_MS,
      idleTimeoutMs: options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
      aws: options.aws ?? DEFAULT_AWS_LOCATION,
    };
  }

  /**
   * Invokes `fn` with `event`. Never rejects because of the handler: errors, timeouts and
   * crashes are outcomes. Rejects when too many invocations of `fn` wait (`Throttled`)
   * and when the runtime is closed.
   */
  async invoke(fn: FunctionSpec, event: unknown, options: InvokeOptions = {}): Promise<InvokeResult> {
    if (this.closed) throw new TributaryError('InternalError', 'the function runtime is closed');
    const fp = fingerprint(fn);
    let slot = this.slots.get(fn.name);
    if (slot?.fingerprint !== fp) {
      slot?.retire();
      slot = new FunctionSlot(fp);
      this.slots.set(fn.name, slot);
    }
    // `queued` counts the running invocation too.
    if (slot.queued > this.settings.maxQueued) {
      this.settings.metrics?.functionThrottles.inc({ function: fn.name });
      throw new TributaryError(
        'Throttled',
        `function ${fn.name} is busy: ${slot.queued} invocations are running or waiting (it runs one at a time, and at most ${this.settings.maxQueued} may wait); retry later`,
      );
    }
    const s = slot;
    const result = await s.enqueue(() => this.runOne(s, fn, event, options.origin));
    this.observe(fn, result);
    return result;
  }

  /** Kills every function process and waits for them to exit. */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.processes];
    for (const p of all) p.kill('the function runtime was closed');
    await Promise.all(all.map((p) => p.exited));
    this.slots.clear();
  }

  /** Metrics and the observer; neither may fail an invocation that has happened. */
  private observe(fn: FunctionSpec, result: InvokeResult): void {
    const { metrics, onInvoked } = this.settings;
    const labels = { function: fn.name };
    metrics?.functionInvocations.inc({ ...labels, outcome: result.outcome.status });
    if (result.outcome.status !== 'ok') metrics?.functionErrors.inc(labels);
    metrics?.functionDuration.observe(labels, result.durationMs / 1000);
    try {
      onInvoked?.(fn, result);
    } catch (err) {
      this.settings.logger.error({ err, function: fn.name }, 'invocation observer failed');
    }
  }

  private async runOne(slot: FunctionSlot, fn: FunctionSpec, event: unknown, origin: WriteOrigin | undefined): Promise<InvokeResult> {
    const requestId = randomUUID();
    const started = performance.now();
    const sink = new LogSink(this.settings.maxLogBytes);
    const result = (outcome: InvokeOutcome): InvokeResult => ({
      requestId,
      functionVersion: fn.version,
      outcome,
      durationMs: Math.round((performance.now() - started) * 1000) / 1000,
      logs: sink.entries,
    });
    if (this.closed) return result({ status: 'crashed', reason: 'the function runtime was closed' });
    try {
      let proc = slot.process;
      if (!proc?.usable) {
        proc = new FunctionProcess(fn, this.settings);
        slot.process = proc;
        const failure = proc.start();
        if (failure !== undefined) return result({ status: 'crashed', reason: failure });
        this.processes.add(proc);
        const p = proc;
        void p.exited.then(() => this.processes.delete(p));
      }
      return result(await proc.invoke(requestId, event, sink, origin));
    } catch (err) {
      // A bug here must not reject into the caller's stream processing.
      this.settings.logger.error({ err, function: fn.name }, 'function runtime failure');
      return result({ status: 'crashed', reason: `internal error: ${(err as Error).message}` });
    }
  }
}

/** A `context.put` / `context.publish` made by a handler run with {@link runHandlerOnce}. */
export type ServiceCall =
  | { method: 'put'; deviceId: string; reading: Parameters<HostServices['put']>[1] }
  | { method: 'publish'; deviceId: string; command: Parameters<HostServices['publish']>[1] };

/** What {@link runHandlerOnce} takes: a handler module and the event; the rest as a deployed function's. */
export interface RunOnceOptions {
  codePath: string;
  /** The folder the process may read (a package with its node_modules); default: the module's folder. */
  codeRoot?: string;
  event: unknown;
  /** Default: the file name without its extension. */
  functionName?: string;
  /** Default: the server's default `--function-timeout-ms`. */
  timeoutMs?: number;
  /** Default: the server's default `--function-memory-mb`. */
  memoryMb?: number;
  environment?: Record<string, string>;
  /** Default: calls are only recorded (and succeed), nothing is written or sent. */
  services?: HostServices;
  /** The runtime's own log (process starts, kills). Default: silent. */
  logger?: Logger;
}

/**
 * Runs a handler module once, locally, in the same runtime (child process, permission
 * model, limits, context) a server uses, without a server: what `tributary fn test` runs.
 * Resolves with the invocation and the `context.put`/`context.publish` calls it made.
 */
export async function runHandlerOnce(options: RunOnceOptions): Promise<{ result: InvokeResult; calls: ServiceCall[] }> {
  const calls: ServiceCall[] = [];
  const recording: HostServices = {
    put: async (deviceId, reading) => {
      calls.push({ method: 'put', deviceId, reading });
      await options.services?.put(deviceId, reading);
    },
    publish: async (deviceId, command) => {
      calls.push({ method: 'publish', deviceId, command });
      await options.services?.publish(deviceId, command);
    },
  };
  const runtime = new ProcessFunctionRuntime({ logger: options.logger ?? createLogger('silent'), services: recording });
  const name = options.functionName ?? basename(options.codePath).replace(/\.[^.]*$/, '');
  try {
    const result = await runtime.invoke(
      { name, version: 1, codePath: options.codePath, ...(options.codeRoot === undefined ? {} : { codeRoot: options.codeRoot }), timeoutMs: options.timeoutMs ?? SETTINGS.functionTimeoutMs.default, memoryMb: options.memoryMb ?? SETTINGS.functionMemoryMb.default, environment: options.environment ?? {} },
      options.event,
    );
    return { result, calls };
  } finally {
    await runtime.close();
  }
}

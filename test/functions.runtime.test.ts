/**
 * The process function runtime, with real child processes: results from ESM and CommonJS
 * handlers, context, log capture, failures (throw, timeout, memory, exit), the permission
 * model, and the server-side services.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { TributaryError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import type { LevelWithSilent } from 'pino';
import { ProcessFunctionRuntime } from '../functions/index.js';
import { runHandlerOnce } from '../functions/process-runtime.js';
import { createMetrics } from '../core/metrics.js';
import type { FunctionSpec, HostServices, InvokeResult } from '../functions/types.js';
import { tempDir, waitFor } from './helpers.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/functions/', import.meta.url));

function spec(file: string, overrides: Partial<FunctionSpec> = {}): FunctionSpec {
  return {
    name: file.replace(/[^A-Za-z0-9]/g, '-'),
    version: 1,
    codePath: join(FIXTURES, file),
    timeoutMs: 5000,
    memoryMb: 256,
    environment: {},
    ...overrides,
  };
}

function ok(r: InvokeResult): unknown {
  expect(r.outcome, JSON.stringify(r.outcome)).toMatchObject({ status: 'ok' });
  return (r.outcome as { result: unknown }).result;
}

/** What `fixtures/functions/echo.mjs` returns. */
interface EchoResult {
  event: unknown;
  calls: number;
  pid: number;
  context: Record<string, unknown> & { remaining: number; functionVersion: string };
  env: Record<string, string>;
  cwd: string;
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const calls: { method: string; args: unknown[] }[] = [];
const services: HostServices = {
  async put(deviceId, reading) {
    calls.push({ method: 'put', args: [deviceId, reading] });
  },
  async publish(deviceId, command) {
    calls.push({ method: 'publish', args: [deviceId, command] });
    if (deviceId === 'ghost') throw new TributaryError('DeviceNotFound', `device ${deviceId} does not exist`);
  },
};

// FN_TEST_LOG=debug shows the runtime's own log (kills, exits) when a test misbehaves.
const logger = createLogger((process.env['FN_TEST_LOG'] ?? 'silent') as LevelWithSilent, process.stderr);
let runtime: ProcessFunctionRuntime;
const tmp = tempDir('tributary-fn-test-');

beforeAll(() => {
  runtime = new ProcessFunctionRuntime({ logger, services });
});

afterAll(async () => {
  await runtime.close();
  tmp.cleanup();
});

describe('ProcessFunctionRuntime', () => {
  it('runs an ESM handler in a warm process with a Lambda-style context and a clean environment', async () => {
    process.env['TRIBUTARY_TEST_SECRET'] = 'server-only';
    try {
      const fn = spec('echo.mjs', { name: 'echo', version: 7, memoryMb: 200, environment: { GREETING: 'hi', NODE_OPTIONS: '--allow-fs-read=*' } });
      const first = await runtime.invoke(fn, { hello: 'world' });
      const r = ok(first) as EchoResult;
      expect(r.event).toEqual({ hello: 'world' });
      expect(r.context).toMatchObject({
        functionName: 'echo',
        functionVersion: '7',
        awsRequestId: first.requestId,
        invokedFunctionArn: 'arn:aws:lambda:us-east-1:000000000000:function:echo',
        memoryLimitInMB: '200',
        loggerMethods: ['debug', 'error', 'info', 'warn'],
      });
      expect(first.requestId).toMatch(/^[0-9a-f-]{36}$/);
      expect(r.context.remaining).toBeGreaterThan(4000);
      expect(r.context.remaining).toBeLessThanOrEqual(5000);
      // Only the function's environment plus a minimal set; NODE_OPTIONS cannot be set.
      expect(r.env).toMatchObject({ GREETING: 'hi', NODE_OPTIONS: '', AWS_LAMBDA_FUNCTION_NAME: 'echo', AWS_REGION: 'us-east-1', AWS_DEFAULT_REGION: 'us-east-1' });
      expect(r.env).not.toHaveProperty('TRIBUTARY_TEST_SECRET');
      expect(r.env).not.toHaveProperty('PATH');
      expect(r.cwd).toBe(FIXTURES.replace(/\/$/, ''));
      expect(r.pid).not.toBe(process.pid);

      // Warm: the same process serves the next invocation, with a new request id.
      const second = await runtime.invoke(fn, 2);
      const r2 = ok(second) as EchoResult;
      expect(r2.pid).toBe(r.pid);
      expect(r2.calls).toBe(2);
      expect(second.requestId).not.toBe(first.requestId);
      expect(second.durationMs).toBeGreaterThanOrEqual(0);
    } finally {
      delete process.env['TRIBUTARY_TEST_SECRET'];
    }
  });

  it('runs CommonJS handlers: .cjs, and .js in a commonjs package', async () => {
    expect(ok(await runtime.invoke(spec('echo.cjs'), { n: 1 }))).toEqual({ format: 'commonjs', file: 'echo.cjs', event: { n: 1 } });

    const dir = join(tmp.path, 'cjs-package');
    mkdirSync(dir);
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'commonjs' }));
    writeFileSync(join(dir, 'index.js'), 'module.exports = { handler: async (e) => ({ cjs: typeof require === "function", e }) };\n');
    expect(ok(await runtime.invoke(spec('index.js', { name: 'cjs-js', codePath: join(dir, 'index.js') }), 5))).toEqual({ cjs: true, e: 5 });
  });

  it('captures console output per invocation, with levels, without printing it', async () => {
    const stdout = vi.spyOn(process.stdout, 'write');
    try {
      const fn = spec('logs.mjs');
      const a = await runtime.invoke(fn, { tag: 'A' });
      const b = await runtime.invoke(fn, { tag: 'B' });
      expect(ok(a)).toBe('logged');
      expect(a.logs.map((l) => [l.level, l.message])).toEqual([
        ['info', 'log A 1'],
        ['info', "info { tag: 'A' }"],
        ['warn', 'warn A'],
        ['error', 'error A'],
        ['debug', 'debug A'],
        ['info', 'via context A'],
        ['info', 'raw A'],
      ]);
      expect(b.logs.map((l) => l.message)).toContain('log B 1');
      expect(b.logs.some((l) => l.message.includes('A'))).toBe(false);
      for (const l of a.logs) expect(Math.abs(l.ts - Date.now())).toBeLessThan(10_000);
      const printed = stdout.mock.calls.map((c) => String(c[0])).join('');
      expect(printed).not.toContain('log A 1');
    } finally {
      stdout.mockRestore();
    }
  });

  it('caps captured log bytes per invocation and marks the cut', async () => {
    const r = await runtime.invoke(spec('logs.mjs'), { tag: 'C', bulk: 400 });
    expect(ok(r)).toBe('logged');
    const bytes = r.logs.slice(0, -1).reduce((n, l) => n + Buffer.byteLength(l.message), 0);
    expect(bytes).toBeLessThanOrEqual(256 * 1024);
    expect(r.logs.at(-1)?.message).toMatch(/truncated/);
    expect(r.logs.filter((l) => l.message.includes('truncated'))).toHaveLength(1);
  });

  it('reports a thrown error as an error outcome with its type, and logs the stack', async () => {
    const r = await runtime.invoke(spec('throws.mjs'), {});
    expect(r.outcome).toEqual({ status: 'error', errorType: 'TypeError', errorMessage: 'bad input' });
    expect(r.logs.some((l) => l.level === 'error' && l.message.includes('throws.mjs'))).toBe(true);
  });

  it('fails the current invocation on an unhandled rejection or an uncaught exception', async () => {
    const fn = spec('throws.mjs', { name: 'throws-bg' });
    expect((await runtime.invoke(fn, { mode: 'unhandled' })).outcome).toEqual({
      status: 'error',
      errorType: 'RangeError',
      errorMessage: 'rejected in the background',
    });
    expect((await runtime.invoke(fn, { mode: 'uncaught' })).outcome).toEqual({
      status: 'error',
      errorType: 'SyntaxError',
      errorMessage: 'thrown from a timer',
    });
    // The uncaught exception retired that process; a fresh one serves the next call.
    expect((await runtime.invoke(fn, {})).outcome).toMatchObject({ status: 'error', errorType: 'TypeError' });
  });

  it('reports a module without a handler export', async () => {
    expect((await runtime.invoke(spec('no-handler.mjs'), {})).outcome).toMatchObject({ status: 'error', errorType: 'Runtime.HandlerNotFound' });
  });

  it('times out an infinite loop, keeps the server responsive, and serves the next invocation from a fresh process', async () => {
    const fn = spec('spin.mjs', { timeoutMs: 400 });
    const warm = ok(await runtime.invoke(fn, {})) as { pid: number };

    let ticks = 0;
    const timer = setInterval(() => (ticks += 1), 10);
    const started = Date.now();
    const r = await runtime.invoke(fn, { spin: true });
    clearInterval(timer);
    expect(r.outcome).toEqual({ status: 'timeout' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(390);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(ticks).toBeGreaterThanOrEqual(15);
    expect(r.logs.at(-1)?.message).toMatch(/timed out after 400 ms/);
    await waitFor(() => !isRunning(warm.pid), 5000, 'the timed-out process to die');

    const next = ok(await runtime.invoke(fn, {})) as { calls: number; pid: number };
    expect(next.calls).toBe(1);
    expect(next.pid).not.toBe(warm.pid);
  });

  it('kills a process that exceeds its memory limit with Buffers (outside the JS heap)', async () => {
    const fn = spec('memory.mjs', { memoryMb: 128 });
    const r = await runtime.invoke(fn, { kind: 'buffer' });
    expect(r.outcome).toEqual({ status: 'crashed', reason: 'memory limit of 128 MB exceeded' });
    // Small allocations still work afterwards, in a fresh process.
    expect(ok(await runtime.invoke(fn, { kind: 'buffer', maxMb: 4 }))).toEqual({ survived: 4 });
  });

  it('kills a process that exceeds its memory limit with JS objects', async () => {
    const r = await runtime.invoke(spec('memory.mjs', { name: 'heap-bomb', memoryMb: 128 }), { kind: 'heap' });
    expect(r.outcome).toEqual({ status: 'crashed', reason: 'memory limit of 128 MB exceeded' });
  });

  it('reports the V8 heap limit (--max-old-space-size) as the memory limit too', async () => {
    // The watchdog effectively off: only the heap flag can stop the handler.
    const own = new ProcessFunctionRuntime({ logger, services, memoryPollMs: 3_600_000 });
    try {
      const r = await own.invoke(spec('memory.mjs', { name: 'heap-flag', memoryMb: 64 }), { kind: 'heap' });
      expect(r.outcome).toEqual({ status: 'crashed', reason: 'memory limit of 64 MB exceeded' });
    } finally {
      await own.close();
    }
  });

  it('reports process.exit as a crash and restarts on the next invocation', async () => {
    const fn = spec('exit.mjs');
    expect(ok(await runtime.invoke(fn, {}))).toEqual({ calls: 1 });
    const r = await runtime.invoke(fn, { exit: true });
    expect(r.outcome).toEqual({ status: 'crashed', reason: 'the function process exited with code 3' });
    expect(ok(await runtime.invoke(fn, {}))).toEqual({ calls: 1 });
  });

  it('lets a handler read its own folder only (permission model)', async () => {
    const data = join(tmp.path, 'data');
    mkdirSync(data);
    writeFileSync(join(data, 'secret.txt'), 'server data');
    const fn = spec('read-file.mjs');
    const outside = await runtime.invoke(fn, { path: join(data, 'secret.txt') });
    expect(outside.outcome).toMatchObject({ status: 'error', errorType: 'Error' });
    expect((outside.outcome as { errorMessage: string }).errorMessage).toMatch(/^ERR_ACCESS_DENIED: /);
    // Nor the server's own files, nor its environment through /proc.
    for (const path of [fileURLToPath(new URL('../package.json', import.meta.url)), '/proc/self/environ']) {
      expect((await runtime.invoke(fn, { path })).outcome).toMatchObject({ status: 'error', errorMessage: expect.stringContaining('ERR_ACCESS_DENIED') });
    }
    expect(ok(await runtime.invoke(fn, { path: join(FIXTURES, 'echo.cjs') }))).toContain('exports.handler');
  });

  it('refuses writes, child processes, workers, internal bindings and signals to other processes', async () => {
    const r = await runtime.invoke(spec('escape.mjs'), { writePath: join(FIXTURES, 'written-by-handler.txt') });
    expect(ok(r)).toEqual({
      write: 'ERR_ACCESS_DENIED',
      childProcess: 'ERR_ACCESS_DENIED',
      worker: 'ERR_ACCESS_DENIED',
      binding: 'ERR_ACCESS_DENIED',
      signalParent: 'ERR_ACCESS_DENIED',
      signalGroup: 'ERR_ACCESS_DENIED',
      signalSelf: 'ALLOWED',
    });
  });

  it('routes context.put and context.publish to the host services, errors included', async () => {
    calls.length = 0;
    const fn = spec('services.mjs');
    expect(ok(await runtime.invoke(fn, { deviceId: 'dev-1' }))).toEqual({ published: true });
    expect(calls).toEqual([
      { method: 'put', args: ['dev-1', { ts: 1700000000000, values: { temp: 31.5, gps: { lat: 1 } } }] },
      { method: 'publish', args: ['dev-1', { name: 'reboot', payload: { delay: 5 } }] },
    ]);
    expect(ok(await runtime.invoke(fn, { deviceId: 'ghost' }))).toEqual({
      published: false,
      name: 'TributaryError',
      message: 'device ghost does not exist',
      code: 'DeviceNotFound',
    });
  });

  it('serialises invocations of one function', async () => {
    const fn = spec('concurrency.mjs');
    const results = await Promise.all([1, 2, 3, 4].map(() => runtime.invoke(fn, {})));
    for (const r of results) expect(ok(r)).toEqual({ maxActive: 1 });
  });

  it('replaces the process when a new version is deployed', async () => {
    const v1 = spec('echo.mjs', { name: 'versioned', version: 1 });
    const a = ok(await runtime.invoke(v1, {})) as EchoResult;
    const v2 = { ...v1, version: 2 };
    const b = ok(await runtime.invoke(v2, {})) as EchoResult;
    expect(b.pid).not.toBe(a.pid);
    expect(b.calls).toBe(1);
    expect(b.context.functionVersion).toBe('2');
    await waitFor(() => !isRunning(a.pid), 5000, 'the old version to stop');
  });

  it('runs the shipped example on a stream event', async () => {
    const record = (eventName: string, deviceId: string, temp?: number) => ({
      eventName,
      dynamodb: {
        Keys: { deviceId: { S: deviceId }, tsSeq: { N: '1700000000000' } },
        ...(temp === undefined ? {} : { NewImage: { deviceId: { S: deviceId }, tsSeq: { N: '1700000000000' }, ts: { N: '1700000000000' }, seq: { N: '0' }, temp: { N: String(temp) } } }),
      },
    });
    const codePath = fileURLToPath(new URL('../functions/examples/log-high-temp.js', import.meta.url));
    const r = await runtime.invoke(spec('log-high-temp.js', { name: 'log-high-temp', codePath }), {
      Records: [record('INSERT', 'hot-1', 31.5), record('MODIFY', 'cool', 20), record('MODIFY', 'hot-2', 45), record('REMOVE', 'gone')],
    });
    expect(ok(r)).toEqual({ processed: 4 });
    expect(r.logs.map((l) => l.message)).toEqual([
      'high temperature: hot-1 reported 31.5 at 2023-11-14T22:13:20.000Z',
      'high temperature: hot-2 reported 45 at 2023-11-14T22:13:20.000Z',
    ]);
  });

  it('stops a process that stays idle past idleTimeoutMs', async () => {
    const own = new ProcessFunctionRuntime({ logger, services, idleTimeoutMs: 100 });
    try {
      const fn = spec('echo.mjs', { name: 'idle' });
      const a = ok(await own.invoke(fn, {})) as EchoResult;
      await waitFor(() => !isRunning(a.pid), 5000, 'the idle process to stop');
      const b = ok(await own.invoke(fn, {})) as EchoResult;
      expect(b.calls).toBe(1);
    } finally {
      await own.close();
    }
  });

  it('close() stops every process and refuses later invocations', async () => {
    const own = new ProcessFunctionRuntime({ logger, services });
    const pids = await Promise.all(
      ['echo.mjs', 'echo.cjs'].map(async (file) => {
        const r = ok(await own.invoke(spec('echo.mjs', { name: file.replace('.', '-') }), {})) as { pid: number };
        return r.pid;
      }),
    );
    const spinning = own.invoke(spec('spin.mjs', { name: 'spin-close' }), { spin: true });
    await own.close();
    expect((await spinning).outcome).toMatchObject({ status: 'crashed' });
    for (const pid of pids) expect(isRunning(pid)).toBe(false);
    await expect(own.invoke(spec('echo.mjs'), {})).rejects.toThrow(/closed/);
  });

  it('refuses invocations past the queue limit with Throttled, and counts invocations, errors, throttles and duration', async () => {
    const metrics = createMetrics();
    const observed: Array<{ name: string; version: number | undefined; logs: number }> = [];
    const own = new ProcessFunctionRuntime({
      logger,
      services,
      metrics,
      maxQueuedInvocations: 1,
      onInvoked: (fn, r) => observed.push({ name: fn.name, version: r.functionVersion, logs: r.logs.length }),
    });
    try {
      const fn = spec('concurrency.mjs', { name: 'throttled', version: 7 });
      // One runs, one waits, the third is refused at once.
      const settled = await Promise.allSettled([own.invoke(fn, {}), own.invoke(fn, {}), own.invoke(fn, {})]);
      expect(settled.map((x) => x.status)).toEqual(['fulfilled', 'fulfilled', 'rejected']);
      const refused = (settled[2] as PromiseRejectedResult).reason as TributaryError;
      expect(refused).toBeInstanceOf(TributaryError);
      expect(refused.code).toBe('Throttled');
      expect(refused.message).toMatch(/throttled is busy/);
      for (const x of settled.slice(0, 2)) expect((x as PromiseFulfilledResult<InvokeResult>).value.functionVersion).toBe(7);
      await own.invoke(spec('throws.mjs', { name: 'throttled-err' }), {});

      const text = await metrics.registry.metrics();
      expect(text).toContain('tributary_function_invocations_total{function="throttled",outcome="ok"} 2');
      expect(text).toContain('tributary_function_throttles_total{function="throttled"} 1');
      expect(text).toContain('tributary_function_errors_total{function="throttled-err"} 1');
      expect(text).toContain('tributary_function_duration_seconds_count{function="throttled"} 2');
      expect(observed).toEqual([
        { name: 'throttled', version: 7, logs: 0 },
        { name: 'throttled', version: 7, logs: 0 },
        { name: 'throttled-err', version: 1, logs: expect.any(Number) },
      ]);
    } finally {
      await own.close();
    }
  });
});

describe('runHandlerOnce (tributary fn test)', () => {
  it('runs a handler once in the same runtime and reports its result, logs and service calls', async () => {
    const { result, calls: made } = await runHandlerOnce({ codePath: join(FIXTURES, 'services.mjs'), event: { deviceId: 'dev-9' } });
    expect(result.outcome).toEqual({ status: 'ok', result: { published: true } });
    expect(result.functionVersion).toBe(1);
    expect(made).toEqual([
      { method: 'put', deviceId: 'dev-9', reading: { ts: 1700000000000, values: { temp: 31.5, gps: { lat: 1 } } } },
      { method: 'publish', deviceId: 'dev-9', command: { name: 'reboot', payload: { delay: 5 } } },
    ]);
    const echoed = await runHandlerOnce({ codePath: join(FIXTURES, 'echo.mjs'), event: { hi: 1 }, timeoutMs: 1234, environment: { MODE: 'test' } });
    const out = (echoed.result.outcome as { result: EchoResult }).result;
    expect(out.event).toEqual({ hi: 1 });
    expect(out.context).toMatchObject({ functionName: 'echo' });
    expect(out.env['MODE']).toBe('test');
    const failing = await runHandlerOnce({ codePath: join(FIXTURES, 'read-file.mjs'), event: { path: '/etc/hostname' } });
    expect(failing.result.outcome).toMatchObject({ status: 'error', errorMessage: expect.stringContaining('ERR_ACCESS_DENIED') });
  });
});

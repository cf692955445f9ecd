// @ts-check
/**
 * The function host: the entry point of every function's child process.
 *
 * The server forks this file (see `process-runtime.ts`) under Node's permission model with
 * read access to this file and to the handler's folder only. It loads the handler module
 * once (`init`), then runs one invocation at a time (`invoke`), streaming captured console
 * output and `context.put`/`context.publish` calls to the server over the IPC channel.
 *
 * Plain JavaScript (checked by TypeScript through JSDoc) so the server can fork it as is,
 * both from source and from `dist/`.
 */
import dgram from 'node:dgram';
import dns from 'node:dns';
import { closeSync, fstatSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import net from 'node:net';
import { format, inspect } from 'node:util';
import { pathToFileURL } from 'node:url';

/** @typedef {import('./process-runtime.js').ToHost} ToHost */
/** @typedef {import('./process-runtime.js').FromHost} FromHost */
/** @typedef {import('./process-runtime.js').WireError} WireError */
/** @typedef {import('./types.js').InvokeLog['level']} Level */
/** @typedef {(event: unknown, context: unknown) => unknown} Handler */

/** Serialised results above this size are refused (Lambda's synchronous response limit). */
const MAX_RESULT_BYTES = 6 * 1024 * 1024;

const rawSend = process.send?.bind(process);
if (rawSend === undefined) {
  process.stderr.write('functions/host.js must be started by the function runtime (no IPC channel)\n');
  process.exit(1);
}
// Captured before any user code runs, so a handler reassigning process.exit cannot stop us.
const exit = process.exit.bind(process);

/**
 * Sends one message to the server. A closed channel means the server is gone or has
 * killed us, so there is nobody left to work for.
 * @param {FromHost} message
 * @param {() => void} [then] called once the message has been handed to the OS
 */
function send(message, then) {
  try {
    rawSend?.(message, undefined, undefined, (err) => {
      if (err) exit(1);
      else then?.();
    });
  } catch {
    exit(1);
  }
}

// ---------------------------------------------------------------------------------------
// Hardening. The permission model does not cover signals: without this a handler could
// `process.kill(process.ppid)` or signal the whole process group (`pid` 0) the server is
// in. Node's own `process.kill` calls `process._kill`, so both are wrapped.
// This is defence in depth, not a sandbox: see the runtime's documentation.
// ---------------------------------------------------------------------------------------
const ownPid = process.pid;
const originalKill = process.kill.bind(process);
/** @type {Record<string, unknown>} */
const processInternals = /** @type {any} */ (process);
const originalRawKill = processInternals['_kill'];
/** @param {unknown} pid */
function assertSelf(pid) {
  if (pid !== ownPid) {
    throw Object.assign(new Error('a function may only signal its own process'), { code: 'ERR_ACCESS_DENIED' });
  }
}
process.kill = (pid, signal) => {
  assertSelf(pid);
  return originalKill(pid, signal);
};
if (typeof originalRawKill === 'function') {
  processInternals['_kill'] = (/** @type {unknown} */ pid, /** @type {unknown} */ signal) => {
    assertSelf(pid);
    return originalRawKill.call(process, pid, signal);
  };
}

// ---------------------------------------------------------------------------------------
// Descriptors. A fork inherits every descriptor of the server opened without O_CLOEXEC:
// LevelDB opens its LOG, LOCK, WAL and MANIFEST that way, and the permission model does
// not check writes to a descriptor a process already holds. Before user code loads, the
// host closes every inherited descriptor the server found on a file system (it lists
// `/proc/<pid>/fd` of this process after the fork, see process-runtime.ts). Each is
// checked here first: a number that was closed and reused meanwhile (by Node itself) is a
// pipe, socket or event descriptor, never a file, and is left alone.
// ---------------------------------------------------------------------------------------

/** @param {readonly number[]} fds */
function closeInherited(fds) {
  for (const fd of fds) {
    if (!Number.isInteger(fd) || fd <= 2) continue;
    let stats;
    try {
      stats = fstatSync(fd);
    } catch {
      continue; // already closed
    }
    if (stats.isFile() || stats.isDirectory() || stats.isCharacterDevice() || stats.isBlockDevice() || stats.isSymbolicLink()) closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------
// Network off (see sandbox.ts): before Node 25, whose permission model does not cover the
// network, this is the lock; from 25 the model enforces it beneath and this keeps the
// failures the same as on older versions. Every socket a handler can open goes through one
// of these public entry points (http, https, tls, http2, fetch and WebSocket are built on
// `net`), and user code cannot reach Node's internal bindings (`process.binding` is refused
// under the permission model), so refusing them refuses TCP, Unix-domain and UDP sockets
// and DNS queries, with the error code Node 25+ gives.
// ---------------------------------------------------------------------------------------

/** @param {string} what */
function networkDenied(what) {
  return Object.assign(new Error(`Access to this API has been restricted: network access is off for this function (${what})`), {
    code: 'ERR_ACCESS_DENIED',
    permission: 'Net',
  });
}

/**
 * Settles a refused call the way the real one fails: through its callback when it has one,
 * else with an 'error' event on `emitter`, a tick later (as Node reports socket errors).
 * @param {string} what
 * @param {unknown[]} args
 * @param {{ emit(event: string, err: Error): unknown } | undefined} emitter
 */
function refuse(what, args, emitter) {
  const err = networkDenied(what);
  const callback = args.findLast((a) => typeof a === 'function');
  if (callback !== undefined) process.nextTick(/** @type {(e: Error) => void} */ (callback), err);
  else if (emitter !== undefined) process.nextTick(() => emitter.emit('error', err));
  else throw err;
}

function lockNetwork() {
  net.Socket.prototype.connect = /** @type {any} */ (
    /** @this {net.Socket} */
    function () {
      const err = networkDenied('connect');
      process.nextTick(() => this.destroy(err));
      return this;
    }
  );
  net.Server.prototype.listen = /** @type {any} */ (
    /** @this {net.Server} */
    function () {
      refuse('listen', [], this);
      return this;
    }
  );
  const dgramSocket = /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (dgram.Socket.prototype));
  for (const method of ['bind', 'connect', 'send', 'sendto']) {
    dgramSocket[method] = /** @this {dgram.Socket} */ function (/** @type {unknown[]} */ ...args) {
      refuse(method, args, this);
    };
  }
  // Creating a UDP socket opens its handle at once; its raw methods would bypass the above.
  const throwing = (/** @type {string} */ what) => () => {
    throw networkDenied(what);
  };
  const netExports = /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (net));
  const dgramExports = /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (dgram));
  netExports['_createServerHandle'] = throwing('listen');
  dgramExports['createSocket'] = throwing('dgram.createSocket');
  dgramExports['Socket'] = throwing('dgram.Socket');
  dgramExports['_createSocketHandle'] = throwing('dgram');
  /** @param {Record<string, unknown>} target */
  const lockQueries = (target) => {
    for (const key of Object.getOwnPropertyNames(target)) {
      if (!/^(lookup|resolve|reverse)/.test(key) || typeof target[key] !== 'function') continue;
      target[key] = (/** @type {unknown[]} */ ...args) => {
        const callback = args.findLast((a) => typeof a === 'function');
        if (callback === undefined) return Promise.reject(networkDenied(`dns.${key}`));
        refuse(`dns.${key}`, args, undefined);
        return undefined;
      };
    }
  };
  const dnsExports = /** @type {Record<string, any>} */ (/** @type {unknown} */ (dns));
  for (const target of [dnsExports, dnsExports['promises'], dnsExports['Resolver'].prototype, dnsExports['promises'].Resolver.prototype]) lockQueries(target);
  // Named ESM imports (`import { connect } from 'node:net'`) see the replaced functions too.
  syncBuiltinESMExports();
}

// ---------------------------------------------------------------------------------------
// Log capture: console output becomes log entries sent to the server, capped per
// invocation (the server enforces the same cap; capping here too saves the IPC traffic).
// ---------------------------------------------------------------------------------------
let maxLogBytes = 256 * 1024;
let logBytes = 0;
let logTruncated = false;

/**
 * @param {Level} level
 * @param {string} message
 */
function emitLog(level, message) {
  if (logTruncated) return;
  const size = Buffer.byteLength(message);
  if (logBytes + size > maxLogBytes) {
    const room = maxLogBytes - logBytes;
    if (room > 0) send({ type: 'log', level, ts: Date.now(), message: Buffer.from(message).subarray(0, room).toString() });
    logBytes = maxLogBytes;
    logTruncated = true;
    send({ type: 'truncated' });
    return;
  }
  logBytes += size;
  send({ type: 'log', level, ts: Date.now(), message });
}

/** @param {Level} level */
const logAt = (level) => (/** @type {unknown[]} */ ...args) => emitLog(level, format(...args));

console.log = logAt('info');
console.info = logAt('info');
console.debug = logAt('debug');
console.warn = logAt('warn');
console.error = logAt('error');

/**
 * Everything else written to stdout/stderr (console.table, console.dir, direct writes)
 * is captured too, as `info` and `error`.
 * @param {Level} level
 */
function captureWrites(level) {
  return (/** @type {unknown} */ chunk, /** @type {unknown[]} */ ...rest) => {
    const text = typeof chunk === 'string' ? chunk : chunk instanceof Uint8Array ? Buffer.from(chunk).toString() : String(chunk);
    emitLog(level, text.endsWith('\n') ? text.slice(0, -1) : text);
    const callback = rest.find((r) => typeof r === 'function');
    if (callback) process.nextTick(/** @type {() => void} */ (callback));
    return true;
  };
}
process.stdout.write = /** @type {any} */ (captureWrites('info'));
process.stderr.write = /** @type {any} */ (captureWrites('error'));

// ---------------------------------------------------------------------------------------
// Errors and results crossing the channel.
// ---------------------------------------------------------------------------------------

/**
 * Describes a thrown value for the server. Never throws itself (a hostile getter on the
 * thrown value must not take the host down).
 * @param {unknown} err
 * @returns {WireError}
 */
function describeError(err) {
  try {
    if (err instanceof Error || (typeof err === 'object' && err !== null && 'message' in err)) {
      const e = /** @type {{ name?: unknown, message?: unknown, code?: unknown, stack?: unknown }} */ (err);
      /** @type {WireError} */
      const wire = { name: typeof e.name === 'string' && e.name ? e.name : 'Error', message: String(e.message) };
      if (typeof e.code === 'string') wire.code = e.code;
      if (typeof e.stack === 'string') wire.stack = e.stack.slice(0, 8192);
      return wire;
    }
    return { name: 'Error', message: inspect(err) };
  } catch {
    return { name: 'Error', message: 'the handler threw a value that cannot be described' };
  }
}

/**
 * @param {unknown} result
 * @returns {{ ok: true, json: string } | { ok: false, error: WireError }}
 */
function serialiseResult(result) {
  let json;
  try {
    // Lambda turns `undefined` into `null`; so does JSON.stringify for functions/symbols.
    json = JSON.stringify(result) ?? 'null';
  } catch (err) {
    return { ok: false, error: { name: 'ResultSerializationError', message: `the handler's result is not JSON-serialisable: ${describeError(err).message}` } };
  }
  if (json.length > MAX_RESULT_BYTES && Buffer.byteLength(json) > MAX_RESULT_BYTES) {
    return { ok: false, error: { name: 'ResultTooLarge', message: `the handler's result is larger than ${MAX_RESULT_BYTES} bytes` } };
  }
  return { ok: true, json };
}

// ---------------------------------------------------------------------------------------
// Init and invocations.
// ---------------------------------------------------------------------------------------

/** @type {Handler | undefined} */
let handler;
/** @type {{ functionName: string, functionVersion: string, functionArn: string, memoryMb: number }} */
let identity = { functionName: '', functionVersion: '', functionArn: '', memoryMb: 0 };
/** The invocation in progress (the server sends one at a time). */
/** @type {{ requestId: string } | undefined} */
let current;

/** @type {Map<number, { resolve: () => void, reject: (err: Error) => void }>} */
const pendingCalls = new Map();
let nextCallId = 1;

/**
 * Asks the server to run one of its services; settles when the server answers.
 * @param {'put' | 'publish'} method
 * @param {unknown[]} args
 * @returns {Promise<void>}
 */
function callServer(method, args) {
  return new Promise((resolve, reject) => {
    const callId = nextCallId++;
    pendingCalls.set(callId, { resolve, reject });
    try {
      rawSend?.({ type: 'call', callId, method, args }, undefined, undefined, (err) => {
        if (err) exit(1);
      });
    } catch (err) {
      // Arguments that cannot be serialised: the handler's mistake, reported to it.
      pendingCalls.delete(callId);
      reject(err);
    }
  });
}

/**
 * A `context.put` reading as JSON text, parsed by the server as a device's payload is.
 * Unlike `JSON.stringify` it writes a `bigint`, or a `NumberValue` of
 * `@aws-sdk/util-dynamodb` (what `unmarshall` gives with `wrapNumbers`), as its digits,
 * so a number beyond a double's precision keeps them.
 * @param {unknown} v
 * @returns {string | undefined}
 */
function readingJson(v) {
  if (typeof v === 'bigint') return v.toString();
  if (typeof v !== 'object' || v === null) return JSON.stringify(v);
  const attr = typeof (/** @type {{ toAttributeValue?: unknown }} */ (v).toAttributeValue) === 'function' ? /** @type {{ toAttributeValue: () => unknown }} */ (v).toAttributeValue() : undefined;
  if (typeof attr === 'object' && attr !== null && typeof (/** @type {{ N?: unknown }} */ (attr).N) === 'string') return /** @type {{ N: string }} */ (attr).N;
  if (typeof (/** @type {{ toJSON?: unknown }} */ (v).toJSON) === 'function') return readingJson(/** @type {{ toJSON: () => unknown }} */ (v).toJSON());
  if (Array.isArray(v)) return `[${v.map((x) => readingJson(x) ?? 'null').join(',')}]`;
  let out = '';
  for (const k of Object.keys(v)) {
    const inner = readingJson(/** @type {Record<string, unknown>} */ (v)[k]);
    if (inner !== undefined) out += `${out === '' ? '' : ','}${JSON.stringify(k)}:${inner}`;
  }
  return `{${out}}`;
}

/** @param {Extract<ToHost, { type: 'init' }>} message */
async function init(message) {
  maxLogBytes = message.maxLogBytes;
  closeInherited(message.closeFds);
  if (message.lockNetwork) lockNetwork();
  identity = { functionName: message.functionName, functionVersion: message.functionVersion, functionArn: message.functionArn, memoryMb: message.memoryMb };
  if (message.reportRss) {
    // Only where the server cannot read /proc: a busy handler cannot report, so this
    // fallback is weaker than the server-side watchdog.
    setInterval(() => send({ type: 'rss', rss: process.memoryUsage.rss() }), 50).unref();
  }
  try {
    /** @type {Record<string, unknown>} */
    const mod = await import(pathToFileURL(message.codePath).href);
    const fromDefault = /** @type {Record<string, unknown> | undefined} */ (mod['default']);
    // A CommonJS module's `exports.handler` is usually a named export; `module.exports = x`
    // forms the lexer cannot see are only reachable through `default`.
    const candidate = typeof mod['handler'] === 'function' ? mod['handler'] : fromDefault?.['handler'];
    if (typeof candidate !== 'function') {
      send({ type: 'initError', error: { name: 'Runtime.HandlerNotFound', message: `${message.codePath} does not export a function named "handler"` } });
      return;
    }
    handler = /** @type {Handler} */ (candidate);
    send({ type: 'ready' });
  } catch (err) {
    send({ type: 'initError', error: describeError(err) });
  }
}

/**
 * Ends the current invocation once. Later settlements (a handler that resolves after an
 * unhandled rejection already failed it) are ignored.
 * @param {string} requestId
 * @param {{ ok: true, json: string } | { ok: false, error: WireError }} outcome
 * @param {boolean} fatal the process exits after this message
 */
function finish(requestId, outcome, fatal) {
  if (current?.requestId !== requestId) return;
  current = undefined;
  send({ type: 'done', requestId, fatal, ...outcome }, fatal ? () => exit(1) : undefined);
}

/** @param {Extract<ToHost, { type: 'invoke' }>} message */
async function invoke(message) {
  const { requestId, deadline } = message;
  current = { requestId };
  logBytes = 0;
  logTruncated = false;
  const context = {
    functionName: identity.functionName,
    functionVersion: identity.functionVersion,
    awsRequestId: requestId,
    invokedFunctionArn: identity.functionArn,
    // Lambda exposes this as a string; so do we, for code written against Lambda.
    memoryLimitInMB: String(identity.memoryMb),
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    logger: { debug: logAt('debug'), info: logAt('info'), warn: logAt('warn'), error: logAt('error') },
    /**
     * Writes a derived reading through the server's normal write path, in any form a
     * device may send: `{...values}`, `{ ts, values }`, or an array of either.
     * @param {string} deviceId
     * @param {unknown} reading
     */
    put: (deviceId, reading) => {
      let text;
      try {
        text = readingJson(reading);
      } catch (err) {
        return Promise.reject(err);
      }
      return callServer('put', [deviceId, text]);
    },
    /**
     * Sends a command to a device.
     * @param {string} deviceId
     * @param {{ name: string, payload: unknown }} command
     */
    publish: (deviceId, command) => callServer('publish', [deviceId, command]),
  };
  try {
    const result = await /** @type {Handler} */ (handler)(message.event, context);
    finish(requestId, serialiseResult(result), false);
  } catch (err) {
    finish(requestId, { ok: false, error: describeError(err) }, false);
  }
}

// An unhandled rejection fails the invocation in progress, as in Lambda; between
// invocations it is only logged.
process.on('unhandledRejection', (reason) => {
  if (current) finish(current.requestId, { ok: false, error: describeError(reason) }, false);
  else emitLog('error', `Unhandled promise rejection: ${format(reason)}`);
});

// After an uncaught exception Node cannot promise a consistent state, so the invocation
// fails with that error and the process exits; the next invocation starts a fresh one.
process.on('uncaughtException', (err) => {
  if (current) {
    finish(current.requestId, { ok: false, error: describeError(err) }, true);
  } else {
    emitLog('error', `Uncaught exception: ${format(err)}`);
    send({ type: 'exiting' }, () => exit(1));
  }
});

// The server went away (or closed the channel): nothing left to do.
process.on('disconnect', () => exit(0));

process.on('message', (/** @type {ToHost} */ message) => {
  switch (message.type) {
    case 'init':
      void init(message);
      break;
    case 'invoke':
      void invoke(message);
      break;
    case 'callResult': {
      const pending = pendingCalls.get(message.callId);
      if (!pending) break;
      pendingCalls.delete(message.callId);
      if (message.ok) pending.resolve();
      else {
        const { name, message: text, code } = message.error;
        pending.reject(Object.assign(new Error(text), code === undefined ? { name } : { name, code }));
      }
      break;
    }
  }
});

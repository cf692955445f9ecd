/**
 * The function runtime's contract: run a deployed handler module on an event, out of
 * the server's process, with a timeout and a memory cap.
 */
import type { WriteOrigin } from '../streams/types.js';

export interface FunctionSpec {
  name: string;
  version: number;
  /** Absolute path of the handler module (ESM `export async function handler`, or CommonJS `exports.handler`). */
  codePath: string;
  /**
   * The folder the function process may read and runs in (a deployment package's top
   * folder, with its `node_modules`); default: the module's folder.
   */
  codeRoot?: string;
  timeoutMs: number;
  memoryMb: number;
  environment: Record<string, string>;
  /** Whether the handler may open sockets (TCP, UDP, Unix-domain, DNS). Default true, as in Lambda. */
  network?: boolean;
}

export interface InvokeLog {
  ts: number;
  level: 'debug' | 'info' | 'warn' | 'error';
  message: string;
}

export type InvokeOutcome =
  | { status: 'ok'; result: unknown }
  | { status: 'error'; errorType: string; errorMessage: string }
  | { status: 'timeout' }
  | { status: 'crashed'; reason: string };

export interface InvokeResult {
  requestId: string;
  /**
   * The version that ran, which can be newer than the spec a caller started from (a
   * trigger resolves the latest version per batch). Always set by `ProcessFunctionRuntime`.
   */
  functionVersion?: number;
  outcome: InvokeOutcome;
  durationMs: number;
  logs: InvokeLog[];
}

/** What a handler may ask of the server through `context`. */
export interface HostServices {
  /** `origin`: the invocation's {@link InvokeOptions.origin}, carried to the change records of the write. */
  /** `reading`: parsed JSON in any form the write path takes (`{...}`, `{ ts, values }`, an array of either); ingest validates it. */
  put(deviceId: string, reading: unknown, origin?: WriteOrigin): Promise<void>;
  publish(deviceId: string, command: { name: string; payload: unknown }): Promise<void>;
}

/** Told about every finished invocation (durable logs); must not throw. */
export type InvocationObserver = (fn: FunctionSpec, result: InvokeResult) => void;

export interface FunctionRuntime {
  /**
   * Runs `fn` once with `event`. Handler failures are outcomes, never rejections.
   * @throws TributaryError `Throttled` when too many invocations of `fn` are already
   * waiting; `InternalError` once the runtime is closed.
   */
  invoke(fn: FunctionSpec, event: unknown, options?: InvokeOptions): Promise<InvokeResult>;
  /** Stops every function process. */
  close(): Promise<void>;
}

export interface InvokeOptions {
  /**
   * What `context.put` writes of this invocation are marked with (an event source
   * mapping sets it: the function's name and one more hop than the records it delivers).
   */
  origin?: WriteOrigin;
}

/**
 * Which change-stream shards this node processes. In cluster mode shard p is processed on
 * the node that owns partition p of the change topic, which a Kafka consumer group decides
 * and may move at any time (ADR 0002, "Functions"). A mapping without one polls every shard.
 */
export interface ShardPlacement {
  /** The shards this node should poll now. */
  owned(): readonly number[];
  /** `listener` is called after `owned()` changed; returns the function that unsubscribes it. */
  onChange(listener: () => void): () => void;
}

/**
 * The function runtime's contract: run a deployed handler module on an event, out of
 * the server's process, with a timeout and a memory cap.
 */
import type { Values } from '../store/types.js';

export interface FunctionSpec {
  name: string;
  version: number;
  /** Absolute path of the handler module (ESM `export async function handler`, or CommonJS `exports.handler`). */
  codePath: string;
  timeoutMs: number;
  memoryMb: number;
  environment: Record<string, string>;
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
  outcome: InvokeOutcome;
  durationMs: number;
  logs: InvokeLog[];
}

/** What a handler may ask of the server through `context`. */
export interface HostServices {
  put(deviceId: string, reading: { ts?: number; values: Values }): Promise<void>;
  publish(deviceId: string, command: { name: string; payload: unknown }): Promise<void>;
}

export interface FunctionRuntime {
  invoke(fn: FunctionSpec, event: unknown): Promise<InvokeResult>;
  /** Stops every function process. */
  close(): Promise<void>;
}

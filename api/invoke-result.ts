/** How the API reports one invocation, shared by `/invoke` and DLQ redrives. */
import { Type, type Static } from '@sinclair/typebox';
import type { InvokeResult } from '../functions/types.js';

export const InvokeResultBody = Type.Object({
  requestId: Type.String(),
  status: Type.Unsafe<'ok' | 'error' | 'timeout' | 'crashed'>({ type: 'string', enum: ['ok', 'error', 'timeout', 'crashed'] }),
  result: Type.Optional(Type.Unknown({ description: 'What the handler returned (status ok).' })),
  errorType: Type.Optional(Type.String({ description: 'The error\'s name (status error), `Sandbox.Timedout` (timeout) or `Runtime.ExitError` (the process died: crash, memory limit).' })),
  errorMessage: Type.Optional(Type.String()),
  durationMs: Type.Number(),
  logs: Type.Array(
    Type.Object({
      ts: Type.Integer(),
      level: Type.Unsafe<'debug' | 'info' | 'warn' | 'error'>({ type: 'string', enum: ['debug', 'info', 'warn', 'error'] }),
      message: Type.String(),
    }),
    { description: 'Console output of the invocation (capped), and the runtime\'s own notes.' },
  ),
});
export type InvokeResultBody = Static<typeof InvokeResultBody>;

/** The invocation as the API reports it: Lambda's `errorType`/`errorMessage` for every failure. */
export function invokeResultBody(r: InvokeResult, timeoutMs?: number): InvokeResultBody {
  const base = { requestId: r.requestId, durationMs: r.durationMs, logs: r.logs };
  const o = r.outcome;
  switch (o.status) {
    case 'ok':
      // A handler that returns nothing answers null, as Lambda does.
      return { ...base, status: 'ok', result: o.result ?? null };
    case 'error':
      return { ...base, status: 'error', errorType: o.errorType, errorMessage: o.errorMessage };
    case 'timeout':
      return { ...base, status: 'timeout', errorType: 'Sandbox.Timedout', errorMessage: timeoutMs === undefined ? 'Task timed out' : `Task timed out after ${timeoutMs} ms` };
    case 'crashed':
      return { ...base, status: 'crashed', errorType: 'Runtime.ExitError', errorMessage: o.reason };
  }
}

/**
 * Functions: Lambda-style handlers run out of the server's process. The runtime contract
 * is in `types.ts`; `ProcessFunctionRuntime` is the implementation (one child process per
 * function).
 */
export type { FunctionRuntime, FunctionSpec, HostServices, InvokeLog, InvokeOutcome, InvokeResult } from './types.js';
export { ProcessFunctionRuntime, runHandlerOnce, type ProcessFunctionRuntimeOptions, type RunOnceOptions, type ServiceCall } from './process-runtime.js';

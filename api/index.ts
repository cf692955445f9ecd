/**
 * Public surface of the HTTP API module.
 *
 * @module
 */
export { buildApi, type ApiDeps } from './server.js';
export type { IngestFn, IngestOutcome } from './routes/telemetry.js';
export { packageVersion } from './openapi.js';

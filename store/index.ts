/**
 * The store module's public surface: the TelemetryStore contract, its LevelDB and
 * in-memory implementations, and the Database that owns the LevelDB handle. Other
 * folders import from here, never from the files behind it.
 */
export type * from './types.js';
export { Database } from './database.js';
export { LevelTelemetryStore, type LevelTelemetryStoreOptions } from './level-store.js';
export { MemoryTelemetryStore, type MemoryTelemetryStoreOptions } from './memory-store.js';
export type { DeviceRecord } from './engine.js';
export { partitionOf } from './keys.js';

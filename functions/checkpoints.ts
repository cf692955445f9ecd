import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';

/**
 * An open tumbling window of a mapping on one shard: saved with the checkpoint, in the
 * same write, so that after a restart the state matches the records already delivered.
 */
export interface WindowState {
  /** Window start, epoch ms (a multiple of the window length). */
  start: number;
  /** The `state` the function returned last (what the next invocation of the window receives). */
  state: unknown;
}

/** Where each event source mapping has got to in each shard. */
export interface CheckpointStore {
  /** Last sequence number fully processed, or undefined if the mapping never ran on the shard. */
  get(functionName: string, triggerId: string, shard: number): Promise<number | undefined>;
  /** The tumbling window saved with the checkpoint, if one is open. */
  window(functionName: string, triggerId: string, shard: number): Promise<WindowState | undefined>;
  /** Saves the checkpoint and, with tumbling windows, the open window (none: no window is open). */
  set(functionName: string, triggerId: string, shard: number, sequenceNumber: number, window?: WindowState): Promise<void>;
}

function checkpointKey(functionName: string, triggerId: string, shard: number): Buffer {
  const shardBytes = Buffer.alloc(2);
  shardBytes.writeUInt16BE(shard);
  return Buffer.concat([Buffer.of(Prefix.checkpoint), Buffer.from(`${functionName}\u0000${triggerId}\u0000`), shardBytes]);
}

/**
 * Checkpoints in the store's LevelDB, synced: a restart resumes after the last one. The
 * value is the sequence number (u64), followed by the open window as JSON when there is one.
 */
export class LevelCheckpointStore implements CheckpointStore {
  constructor(private readonly database: Database) {}

  async get(functionName: string, triggerId: string, shard: number): Promise<number | undefined> {
    const v = await this.database.read((db) => db.get(checkpointKey(functionName, triggerId, shard)));
    return v === undefined ? undefined : Number(v.readBigUInt64BE(0));
  }

  async window(functionName: string, triggerId: string, shard: number): Promise<WindowState | undefined> {
    const v = await this.database.read((db) => db.get(checkpointKey(functionName, triggerId, shard)));
    return v === undefined || v.length <= 8 ? undefined : (JSON.parse(v.subarray(8).toString('utf8')) as WindowState);
  }

  async set(functionName: string, triggerId: string, shard: number, sequenceNumber: number, window?: WindowState): Promise<void> {
    const head = Buffer.alloc(8);
    head.writeBigUInt64BE(BigInt(sequenceNumber));
    const value = window === undefined ? head : Buffer.concat([head, Buffer.from(JSON.stringify(window), 'utf8')]);
    await this.database.commit([{ type: 'put', key: checkpointKey(functionName, triggerId, shard), value }]);
  }
}

export class MemoryCheckpointStore implements CheckpointStore {
  private readonly map = new Map<string, { sequenceNumber: number; window: WindowState | undefined }>();
  async get(functionName: string, triggerId: string, shard: number): Promise<number | undefined> {
    return this.map.get(`${functionName}\u0000${triggerId}\u0000${shard}`)?.sequenceNumber;
  }
  async window(functionName: string, triggerId: string, shard: number): Promise<WindowState | undefined> {
    const w = this.map.get(`${functionName}\u0000${triggerId}\u0000${shard}`)?.window;
    // A copy, as the LevelDB store returns: the caller must not see later changes to what it saved.
    return w === undefined ? undefined : (structuredClone(w) as WindowState);
  }
  async set(functionName: string, triggerId: string, shard: number, sequenceNumber: number, window?: WindowState): Promise<void> {
    this.map.set(`${functionName}\u0000${triggerId}\u0000${shard}`, { sequenceNumber, window: window === undefined ? undefined : (structuredClone(window) as WindowState) });
  }
}

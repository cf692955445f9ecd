import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';

/** Where each event source mapping has got to in each shard. */
export interface CheckpointStore {
  /** Last sequence number fully processed, or undefined if the mapping never ran on the shard. */
  get(functionName: string, triggerId: string, shard: number): Promise<number | undefined>;
  set(functionName: string, triggerId: string, shard: number, sequenceNumber: number): Promise<void>;
}

function checkpointKey(functionName: string, triggerId: string, shard: number): Buffer {
  const shardBytes = Buffer.alloc(2);
  shardBytes.writeUInt16BE(shard);
  return Buffer.concat([Buffer.of(Prefix.checkpoint), Buffer.from(`${functionName}\u0000${triggerId}\u0000`), shardBytes]);
}

/** Checkpoints in the store's LevelDB, synced: a restart resumes after the last one. */
export class LevelCheckpointStore implements CheckpointStore {
  constructor(private readonly database: Database) {}

  async get(functionName: string, triggerId: string, shard: number): Promise<number | undefined> {
    const v = await this.database.read((db) => db.get(checkpointKey(functionName, triggerId, shard)));
    return v === undefined ? undefined : Number(v.readBigUInt64BE(0));
  }

  async set(functionName: string, triggerId: string, shard: number, sequenceNumber: number): Promise<void> {
    const value = Buffer.alloc(8);
    value.writeBigUInt64BE(BigInt(sequenceNumber));
    await this.database.commit([{ type: 'put', key: checkpointKey(functionName, triggerId, shard), value }]);
  }
}

export class MemoryCheckpointStore implements CheckpointStore {
  private readonly map = new Map<string, number>();
  async get(functionName: string, triggerId: string, shard: number): Promise<number | undefined> {
    return this.map.get(`${functionName}\u0000${triggerId}\u0000${shard}`);
  }
  async set(functionName: string, triggerId: string, shard: number, sequenceNumber: number): Promise<void> {
    this.map.set(`${functionName}\u0000${triggerId}\u0000${shard}`, sequenceNumber);
  }
}

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

const noop = (): void => {};

/**
 * Checkpoints in the store's LevelDB: a restart resumes after the last one written. The
 * value is the sequence number (u64), followed by the open window as JSON when there is one.
 *
 * Written without fsync ({@link Database.commitUnsynced}): delivery is at-least-once, so
 * a lost checkpoint only means a redelivery, and a kill -9 loses nothing once `set` has
 * resolved (the record is with the OS); only an OS crash or power cut can take back the
 * checkpoints written since the last synced commit. A synced write per batch used to cost
 * a disk sync in the one commit queue that telemetry writes wait in.
 *
 * Writes of one key are coalesced: while one is in flight, further `set`s for the key
 * wait as one write of the latest value, and all of them resolve when it is written.
 */
export class LevelCheckpointStore implements CheckpointStore {
  /** Per key: the write in flight. */
  private readonly inFlight = new Map<string, Promise<void>>();
  /** Per key: the value waiting for the write in flight, and the promise of its own write. */
  private readonly waiting = new Map<string, { value: Buffer; written: Promise<void> }>();

  constructor(private readonly database: Database) {}

  async get(functionName: string, triggerId: string, shard: number): Promise<number | undefined> {
    const v = await this.database.read((db) => db.get(checkpointKey(functionName, triggerId, shard)));
    return v === undefined ? undefined : Number(v.readBigUInt64BE(0));
  }

  async window(functionName: string, triggerId: string, shard: number): Promise<WindowState | undefined> {
    const v = await this.database.read((db) => db.get(checkpointKey(functionName, triggerId, shard)));
    return v === undefined || v.length <= 8 ? undefined : (JSON.parse(v.subarray(8).toString('utf8')) as WindowState);
  }

  set(functionName: string, triggerId: string, shard: number, sequenceNumber: number, window?: WindowState): Promise<void> {
    const head = Buffer.alloc(8);
    head.writeBigUInt64BE(BigInt(sequenceNumber));
    const value = window === undefined ? head : Buffer.concat([head, Buffer.from(JSON.stringify(window), 'utf8')]);
    const key = checkpointKey(functionName, triggerId, shard);
    const id = key.toString('latin1');
    const waiting = this.waiting.get(id);
    if (waiting !== undefined) {
      waiting.value = value; // the latest wins
      return waiting.written;
    }
    const before = this.inFlight.get(id);
    if (before === undefined) return this.write(id, key, value);
    const entry = { value, written: Promise.resolve() };
    // Whatever the write in flight did, this one goes next (a failed write is the caller's to see).
    entry.written = before.then(noop, noop).then(() => {
      this.waiting.delete(id);
      return this.write(id, key, entry.value);
    });
    this.waiting.set(id, entry);
    return entry.written;
  }

  private write(id: string, key: Buffer, value: Buffer): Promise<void> {
    const written: Promise<void> = this.database.commitUnsynced([{ type: 'put', key, value }]).finally(() => {
      if (this.inFlight.get(id) === written) this.inFlight.delete(id);
    });
    this.inFlight.set(id, written);
    return written;
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

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

/** A checkpoint and the tumbling window saved with it, as one write left them. */
export interface Checkpoint {
  /** Last sequence number fully processed. */
  sequenceNumber: number;
  /** The open tumbling window, if one is open. */
  window?: WindowState;
}

/** Where each event source mapping has got to in each shard. */
export interface CheckpointStore {
  /**
   * The checkpoint with its window, read together: `get` and `window` are two reads, and
   * another node may write between them (cluster mode), pairing a position with a window
   * state that does not match it. Undefined if the mapping never ran on the shard.
   */
  read(functionName: string, triggerId: string, shard: number): Promise<Checkpoint | undefined>;
  /** Last sequence number fully processed, or undefined if the mapping never ran on the shard. */
  get(functionName: string, triggerId: string, shard: number): Promise<number | undefined>;
  /** The tumbling window saved with the checkpoint, if one is open. */
  window(functionName: string, triggerId: string, shard: number): Promise<WindowState | undefined>;
  /** Saves the checkpoint and, with tumbling windows, the open window (none: no window is open). */
  set(functionName: string, triggerId: string, shard: number, sequenceNumber: number, window?: WindowState): Promise<void>;
}

/**
 * `get` and `window` of a store that can `read`, so that the three reads of a store
 * cannot disagree about its format.
 */
export abstract class BaseCheckpointStore implements CheckpointStore {
  abstract read(functionName: string, triggerId: string, shard: number): Promise<Checkpoint | undefined>;
  abstract set(functionName: string, triggerId: string, shard: number, sequenceNumber: number, window?: WindowState): Promise<void>;

  async get(functionName: string, triggerId: string, shard: number): Promise<number | undefined> {
    return (await this.read(functionName, triggerId, shard))?.sequenceNumber;
  }

  async window(functionName: string, triggerId: string, shard: number): Promise<WindowState | undefined> {
    return (await this.read(functionName, triggerId, shard))?.window;
  }
}

const noop = (): void => {};

/**
 * Writes coalesced per key: while one write of a key is in flight, further values for the
 * key wait as one write of the latest, and all of them resolve when it is written (a
 * checkpoint only moves forward, so the values in between need never be written). A
 * failed write is its callers' to see; the next one goes ahead regardless.
 */
export class CoalescedWrites<V> {
  /** Per key: the write in flight. */
  private readonly inFlight = new Map<string, Promise<void>>();
  /** Per key: the value waiting for the write in flight, and the promise of its own write. */
  private readonly waiting = new Map<string, { value: V; written: Promise<void> }>();

  constructor(private readonly writeOne: (key: string, value: V) => Promise<void>) {}

  write(key: string, value: V): Promise<void> {
    const waiting = this.waiting.get(key);
    if (waiting !== undefined) {
      waiting.value = value; // the latest wins
      return waiting.written;
    }
    const before = this.inFlight.get(key);
    if (before === undefined) return this.start(key, value);
    const entry = { value, written: Promise.resolve() };
    // Whatever the write in flight did, this one goes next.
    entry.written = before.then(noop, noop).then(() => {
      this.waiting.delete(key);
      return this.start(key, entry.value);
    });
    this.waiting.set(key, entry);
    return entry.written;
  }

  private start(key: string, value: V): Promise<void> {
    const written: Promise<void> = this.writeOne(key, value).finally(() => {
      if (this.inFlight.get(key) === written) this.inFlight.delete(key);
    });
    this.inFlight.set(key, written);
    return written;
  }
}

function checkpointKey(functionName: string, triggerId: string, shard: number): Buffer {
  const shardBytes = Buffer.alloc(2);
  shardBytes.writeUInt16BE(shard);
  return Buffer.concat([Buffer.of(Prefix.checkpoint), Buffer.from(`${functionName}\u0000${triggerId}\u0000`), shardBytes]);
}

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
 * Writes of one key are coalesced ({@link CoalescedWrites}).
 */
export class LevelCheckpointStore extends BaseCheckpointStore {
  /** Keyed by the LevelDB key as latin1, which maps bytes to a string and back exactly. */
  private readonly writes = new CoalescedWrites<Buffer>((id, value) => this.database.commitUnsynced([{ type: 'put', key: Buffer.from(id, 'latin1'), value }]));

  constructor(private readonly database: Database) {
    super();
  }

  async read(functionName: string, triggerId: string, shard: number): Promise<Checkpoint | undefined> {
    const v = await this.database.read((db) => db.get(checkpointKey(functionName, triggerId, shard)));
    if (v === undefined) return undefined;
    const sequenceNumber = Number(v.readBigUInt64BE(0));
    return v.length <= 8 ? { sequenceNumber } : { sequenceNumber, window: JSON.parse(v.subarray(8).toString('utf8')) as WindowState };
  }

  set(functionName: string, triggerId: string, shard: number, sequenceNumber: number, window?: WindowState): Promise<void> {
    const head = Buffer.alloc(8);
    head.writeBigUInt64BE(BigInt(sequenceNumber));
    const value = window === undefined ? head : Buffer.concat([head, Buffer.from(JSON.stringify(window), 'utf8')]);
    return this.writes.write(checkpointKey(functionName, triggerId, shard).toString('latin1'), value);
  }
}

export class MemoryCheckpointStore extends BaseCheckpointStore {
  private readonly map = new Map<string, Checkpoint>();
  async read(functionName: string, triggerId: string, shard: number): Promise<Checkpoint | undefined> {
    const c = this.map.get(`${functionName}\u0000${triggerId}\u0000${shard}`);
    // A copy, as the LevelDB store returns: the caller must not see later changes to what it saved.
    return c === undefined ? undefined : structuredClone(c);
  }
  async set(functionName: string, triggerId: string, shard: number, sequenceNumber: number, window?: WindowState): Promise<void> {
    this.map.set(`${functionName}\u0000${triggerId}\u0000${shard}`, window === undefined ? { sequenceNumber } : { sequenceNumber, window: structuredClone(window) });
  }
}

/**
 * The change stream's contract. Every committed write produces change records,
 * ordered per device and numbered per shard. The embedded log keeps them in the
 * store's LevelDB, staged into the very batch that writes the data (so a reading and
 * its record are never one without the other); a Kafka log comes later behind the
 * same interface.
 */
import type { Values } from '../store/types.js';

export type EventName = 'INSERT' | 'MODIFY' | 'REMOVE';

/** A change as the store describes it, before it has a place in the log. */
export interface Change {
  eventName: EventName;
  deviceId: string;
  ts: number;
  seq: number;
  newValues?: Values;
  oldValues?: Values;
  /** Removed by retention/TTL rather than by a user: rendered with DynamoDB's service userIdentity. */
  byService?: boolean;
  /** Written by a function through `context.put`: internal, never rendered into the Lambda record. */
  origin?: WriteOrigin;
  /**
   * Cluster mode: the offset in the telemetry topic of the write this change was
   * materialized from. Sources rise along a shard, so a shard's writer can tell which
   * changes are already on the changes topic (a rebuild, a handover). Internal, never
   * rendered into the Lambda record.
   */
  source?: number;
}

/**
 * Which function wrote a change through `context.put`, and how many such writes led to
 * it (1: the function was invoked by records no function wrote). Event source mappings
 * use it to keep a handler from re-triggering itself forever.
 */
export interface WriteOrigin {
  function: string;
  hops: number;
}

/** A change with its place in the log. */
export interface ChangeRecord extends Change {
  shard: number;
  /** Gap-free per shard in the embedded log, starting at 1. */
  sequenceNumber: number;
  /** Commit time, epoch ms. */
  createdAt: number;
}

export interface ShardInfo {
  shardId: string;
  shard: number;
  /** Oldest retained sequence number, or null when the shard is empty. */
  firstSequenceNumber: number | null;
  lastSequenceNumber: number | null;
}

/** Puts and deletes that must commit atomically with the data. */
export interface BatchOp {
  type: 'put' | 'del';
  key: Buffer;
  value?: Buffer;
}

export interface ChangeLog {
  readonly shardCount: number;
  /**
   * `arn:aws:dynamodb:<region>:<account>:table/telemetry/stream/<label>`, the label being the
   * stream's creation time as AWS writes it (`2026-11-26T08:00:00.000`): core/arn.ts.
   */
  readonly streamArn: string;
  shardOf(deviceId: string): number;
  /**
   * Assigns sequence numbers and appends the records' puts to `ops`, which the
   * caller commits atomically. Exactly one of `commit` or `abort` must follow.
   */
  stage(ops: BatchOp[], changes: Change[], now: number): ChangeRecord[];
  /** The batch holding these staged records is durable: wake readers and tailers. */
  commit(records: ChangeRecord[]): void;
  /** The batch holding these staged records failed: their sequence numbers are reused. */
  abort(records: ChangeRecord[]): void;
  shards(): Promise<ShardInfo[]>;
  /** Up to `limit` records of `shard` with sequence number > `after`, in order. */
  read(shard: number, after: number, limit: number): Promise<ChangeRecord[]>;
  /**
   * Up to `limit` records of `shard`, in order, starting at the first committed record
   * with `createdAt >= timestampMs` (DynamoDB's AT_TIMESTAMP); empty when every record
   * is older. Commit times are taken to rise with the sequence number (they come from
   * the clock at commit, one batch at a time), so a clock stepped back makes the
   * answer approximate, as DynamoDB's own `ApproximateCreationDateTime` is.
   */
  readFromTime(shard: number, timestampMs: number, limit: number): Promise<ChangeRecord[]>;
  /**
   * Retention, as DynamoDB Streams' 24-hour window: removes, per shard, the leading
   * committed records with `createdAt < olderThanMs`, but never a shard's last committed
   * record (so numbering continues after a restart). Readers then start at the first
   * retained record and `shards()` reports it as `firstSequenceNumber`. Resolves with the
   * number of records removed.
   */
  trim(olderThanMs: number): Promise<number>;
  /** Called with each committed group of records, in commit order. */
  onCommit(listener: (records: readonly ChangeRecord[]) => void): () => void;
  /**
   * A log written by several nodes (Kafka, cluster mode): while held, `onCommit` also
   * reports records other nodes commit, in order per shard. Absent where every commit
   * happens here. Returns the release.
   */
  followOthers?(): () => void;
}

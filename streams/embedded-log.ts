import { DEFAULT_AWS_LOCATION, streamArnOf, streamLabelOf, type AwsLocation } from '../core/arn.js';
import { TributaryError } from '../core/errors.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { decodeRecord, encodeRecord } from './codec.js';
import { SequencedLog } from './sequenced-log.js';
import { TailCache } from './tail-cache.js';
import type { BatchOp, Change, ChangeRecord } from './types.js';

/** `C` · shard (u16 BE) · sequence (u64 BE): a shard's records sort in sequence order. */
export function changeKey(shard: number, sequenceNumber: number): Buffer {
  const key = Buffer.allocUnsafe(11);
  key[0] = Prefix.change;
  key.writeUInt16BE(shard, 1);
  // Two u32 halves rather than a BigInt per record (sequence numbers stay below 2^53).
  key.writeUInt32BE(Math.floor(sequenceNumber / 0x1_0000_0000), 3);
  key.writeUInt32BE(sequenceNumber % 0x1_0000_0000, 7);
  return key;
}

function sequenceOfKey(key: Buffer): number {
  return Number(key.readBigUInt64BE(3));
}

/** Bounds of the in-memory tail of each shard (see {@link EmbeddedChangeLog}). */
export interface TailCacheLimits {
  /** Records per shard. Default 4096. */
  records: number;
  /** Encoded bytes across all shards, split evenly (at least 256 KiB a shard). Default 16 MiB. */
  bytes: number;
}

const DEFAULT_TAIL_CACHE: TailCacheLimits = { records: 4096, bytes: 16 * 1024 * 1024 };

/**
 * The default change log: records live in the store's own LevelDB under the `C`
 * prefix and are written by the same synced batch as the data they describe.
 *
 * The newest committed records of each shard are also kept in memory, encoded as on
 * disk (a {@link TailCache}, filled at commit): a reader that keeps up — a poller
 * woken by a commit, a long poll, an SSE tail — is served from there without a LevelDB
 * iterator, which cost milliseconds per read under load; one further behind reads the disk.
 * Decoding per read gives every reader its own objects, exactly as read from disk.
 */
export class EmbeddedChangeLog extends SequencedLog {
  private readonly tails: TailCache[];
  /**
   * The encodings of a staged batch's records (in order), for the tail cache once the
   * batch commits. Keyed by the batch rather than by record: a WeakMap with an entry
   * per record grew to a megabyte under load and was copied by every young-generation GC.
   */
  private readonly encoded = new WeakMap<ChangeRecord[], Buffer[]>();
  /** Encodings of the batch being staged. */
  private staging: Buffer[] = [];

  private constructor(
    private readonly database: Database,
    shardCount: number,
    streamArn: string,
    lastCommitted: number[],
    limits: TailCacheLimits,
  ) {
    super(shardCount, streamArn, lastCommitted);
    const bytesPerShard = Math.max(256 * 1024, Math.floor(limits.bytes / shardCount));
    this.tails = Array.from({ length: shardCount }, () => new TailCache(limits.records, bytesPerShard));
  }

  /** `aws`: the region and account of the stream's ARN (default: us-east-1, 000000000000). */
  static async open(database: Database, opts: { shards: number; tailCache?: TailCacheLimits; aws?: AwsLocation }): Promise<EmbeddedChangeLog> {
    const fixed = Number(await database.fixedSetting('streamShards', String(opts.shards)));
    if (fixed !== opts.shards) {
      throw new TributaryError('Conflict', `this data directory was created with ${fixed} stream shards; the shard count cannot change (configured: ${opts.shards})`);
    }
    const createdAt = await database.fixedSetting('streamCreatedAt', new Date().toISOString());
    const last: number[] = [];
    for (let shard = 0; shard < fixed; shard++) {
      const keys = await database.read((db) => db.keys({ gte: changeKey(shard, 0), lt: changeKey(shard + 1, 0), reverse: true, limit: 1 }).all());
      last.push(keys[0] ? sequenceOfKey(keys[0]) : 0);
    }
    return new EmbeddedChangeLog(database, fixed, streamArnOf(opts.aws ?? DEFAULT_AWS_LOCATION, streamLabelOf(createdAt)), last, opts.tailCache ?? DEFAULT_TAIL_CACHE);
  }

  override stage(ops: BatchOp[], changes: Change[], now: number): ChangeRecord[] {
    this.staging = [];
    const records = super.stage(ops, changes, now);
    this.encoded.set(records, this.staging);
    return records;
  }

  protected persist(ops: BatchOp[], record: ChangeRecord): void {
    const value = encodeRecord(record);
    this.staging.push(value);
    ops.push({ type: 'put', key: changeKey(record.shard, record.sequenceNumber), value });
  }

  protected override afterCommit(records: ChangeRecord[]): void {
    const values = this.encoded.get(records);
    if (values === undefined) return;
    for (let i = 0; i < records.length; i++) {
      const r = records[i] as ChangeRecord;
      this.tails[r.shard]?.append(r.sequenceNumber, values[i] as Buffer);
    }
  }

  async read(shard: number, after: number, limit: number): Promise<ChangeRecord[]> {
    // Only committed records are visible: a staged batch may still fail.
    const upTo = this.committed[shard] ?? 0;
    if (after >= upTo || limit <= 0) return [];
    const cached = this.tails[shard]?.read(after, upTo, limit);
    if (cached !== undefined) return cached.map(([sequenceNumber, value]) => decodeRecord(shard, sequenceNumber, value));
    const entries = await this.database.read((db) => db.iterator({ gt: changeKey(shard, after), lte: changeKey(shard, upTo), limit }).all());
    return entries.map(([key, value]) => decodeRecord(shard, sequenceOfKey(key), value));
  }

  protected removeRange(shard: number, first: number, cut: number): Promise<number> {
    this.tails[shard]?.dropBefore(cut);
    // Through the owner's serialized commits, in chunks: writers interleave with a long trim.
    return this.database.clear({ gte: changeKey(shard, first), lt: changeKey(shard, cut) }, 1000);
  }

  protected async firstSequenceNumber(shard: number): Promise<number | null> {
    const keys = await this.database.read((db) => db.keys({ gte: changeKey(shard, 0), lt: changeKey(shard + 1, 0), limit: 1 }).all());
    return keys[0] ? sequenceOfKey(keys[0]) : null;
  }
}

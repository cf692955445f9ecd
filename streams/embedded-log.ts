import { TributaryError } from '../core/errors.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { decodeRecord, encodeRecord } from './codec.js';
import { SequencedLog } from './sequenced-log.js';
import type { BatchOp, ChangeRecord } from './types.js';

/** `C` · shard (u16 BE) · sequence (u64 BE): a shard's records sort in sequence order. */
export function changeKey(shard: number, sequenceNumber: number): Buffer {
  const key = Buffer.allocUnsafe(11);
  key[0] = Prefix.change;
  key.writeUInt16BE(shard, 1);
  key.writeBigUInt64BE(BigInt(sequenceNumber), 3);
  return key;
}

function sequenceOfKey(key: Buffer): number {
  return Number(key.readBigUInt64BE(3));
}

/**
 * The default change log: records live in the store's own LevelDB under the `C`
 * prefix and are written by the same synced batch as the data they describe.
 */
export class EmbeddedChangeLog extends SequencedLog {
  private constructor(
    private readonly database: Database,
    shardCount: number,
    streamArn: string,
    lastCommitted: number[],
  ) {
    super(shardCount, streamArn, lastCommitted);
  }

  static async open(database: Database, opts: { shards: number }): Promise<EmbeddedChangeLog> {
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
    return new EmbeddedChangeLog(database, fixed, `arn:tributary:dynamodb:local:000000000000:table/telemetry/stream/${createdAt}`, last);
  }

  protected persist(ops: BatchOp[], record: ChangeRecord): void {
    ops.push({ type: 'put', key: changeKey(record.shard, record.sequenceNumber), value: encodeRecord(record) });
  }

  async read(shard: number, after: number, limit: number): Promise<ChangeRecord[]> {
    // Only committed records are visible: a staged batch may still fail.
    const upTo = this.committed[shard] ?? 0;
    if (after >= upTo || limit <= 0) return [];
    const entries = await this.database.read((db) => db.iterator({ gt: changeKey(shard, after), lte: changeKey(shard, upTo), limit }).all());
    return entries.map(([key, value]) => decodeRecord(shard, sequenceOfKey(key), value));
  }

  protected removeRange(shard: number, first: number, cut: number): Promise<number> {
    // Through the owner's serialized commits, in chunks: writers interleave with a long trim.
    return this.database.clear({ gte: changeKey(shard, first), lt: changeKey(shard, cut) }, 1000);
  }

  protected async firstSequenceNumber(shard: number): Promise<number | null> {
    const keys = await this.database.read((db) => db.keys({ gte: changeKey(shard, 0), lt: changeKey(shard + 1, 0), limit: 1 }).all());
    return keys[0] ? sequenceOfKey(keys[0]) : null;
  }
}

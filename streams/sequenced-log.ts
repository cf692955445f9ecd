import type { BatchOp, Change, ChangeLog, ChangeRecord, ShardInfo } from './types.js';
import { shardIdOf, shardOf } from './shard.js';

/**
 * What the embedded and in-memory change logs share: per-shard sequence numbering,
 * the stage → commit | abort protocol and commit listeners. Subclasses decide where
 * a record lives.
 *
 * Numbering is gap-free because the store has at most one batch in flight: `abort`
 * can hand a failed batch's numbers back by rewinding each shard to just before the
 * first number it staged.
 */
export abstract class SequencedLog implements ChangeLog {
  readonly shardCount: number;
  readonly streamArn: string;
  /** Last sequence number handed out per shard (staged or committed). */
  protected readonly next: number[];
  /** Last committed sequence number per shard. */
  protected readonly committed: number[];
  private readonly listeners = new Set<(records: readonly ChangeRecord[]) => void>();

  protected constructor(shardCount: number, streamArn: string, lastCommitted: number[]) {
    this.shardCount = shardCount;
    this.streamArn = streamArn;
    this.next = [...lastCommitted];
    this.committed = [...lastCommitted];
  }

  shardOf(deviceId: string): number {
    return shardOf(deviceId, this.shardCount);
  }

  stage(ops: BatchOp[], changes: Change[], now: number): ChangeRecord[] {
    const records: ChangeRecord[] = [];
    for (const change of changes) {
      const shard = this.shardOf(change.deviceId);
      const sequenceNumber = (this.next[shard] as number) + 1;
      this.next[shard] = sequenceNumber;
      // Built field by field: spreading each change was a measurable share of the write path.
      const record: ChangeRecord = { eventName: change.eventName, deviceId: change.deviceId, ts: change.ts, seq: change.seq, shard, sequenceNumber, createdAt: now };
      if (change.newValues) record.newValues = change.newValues;
      if (change.oldValues) record.oldValues = change.oldValues;
      if (change.byService) record.byService = true;
      if (change.origin) record.origin = change.origin;
      if (change.source !== undefined) record.source = change.source;
      this.persist(ops, record);
      records.push(record);
    }
    return records;
  }

  commit(records: ChangeRecord[]): void {
    for (const r of records) {
      if (r.sequenceNumber > (this.committed[r.shard] as number)) this.committed[r.shard] = r.sequenceNumber;
    }
    this.afterCommit(records);
    this.notify(records);
  }

  /** Tells the commit listeners of records committed (here, or — a log written by several nodes — elsewhere). */
  protected notify(records: readonly ChangeRecord[]): void {
    if (records.length === 0) return;
    // The batch is already durable: a failing listener must not turn that into an error for writers.
    for (const listener of this.listeners) {
      try {
        listener(records);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }

  abort(records: ChangeRecord[]): void {
    for (const r of records) {
      if (r.sequenceNumber - 1 < (this.next[r.shard] as number)) this.next[r.shard] = r.sequenceNumber - 1;
    }
  }

  onCommit(listener: (records: readonly ChangeRecord[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async shards(): Promise<ShardInfo[]> {
    const out: ShardInfo[] = [];
    for (let shard = 0; shard < this.shardCount; shard++) {
      const last = this.committed[shard] as number;
      const first = last === 0 ? null : await this.firstSequenceNumber(shard);
      out.push({ shardId: shardIdOf(shard), shard, firstSequenceNumber: first, lastSequenceNumber: last === 0 ? null : last });
    }
    return out;
  }

  /**
   * A binary search over sequence numbers whose probe is `read(shard, s - 1, 1)`: the
   * first committed record at or after `s`. Being a read, the probe skips holes (records
   * trimmed from the start of the shard) and sees committed records only, so one
   * implementation serves every subclass at about log2(last) point reads.
   */
  async readFromTime(shard: number, timestampMs: number, limit: number): Promise<ChangeRecord[]> {
    const last = await this.lastSequenceNumber(shard);
    if (last === 0 || limit <= 0) return [];
    // Smallest s in [1, last] whose probe is missing or not older than the timestamp;
    // the predicate is monotonic in s, so lo ends on it (or on last + 1: nothing qualifies).
    let lo = 1;
    let hi = last + 1;
    while (lo < hi) {
      const mid = lo + Math.floor((hi - lo) / 2);
      const [probe] = await this.read(shard, mid - 1, 1);
      if (probe === undefined || probe.createdAt >= timestampMs) hi = mid;
      else lo = mid + 1;
    }
    return lo > last ? [] : this.read(shard, lo - 1, limit);
  }

  /**
   * Finds each shard's cut with {@link readFromTime} (the first record not older than
   * `olderThanMs`, or the last committed record when all are older: it is always kept)
   * and has the subclass remove the records before it.
   */
  async trim(olderThanMs: number): Promise<number> {
    let removed = 0;
    for (let shard = 0; shard < this.shardCount; shard++) {
      const last = this.committed[shard] ?? 0;
      if (last === 0) continue;
      const first = await this.firstSequenceNumber(shard);
      if (first === null) continue;
      const [keep] = await this.readFromTime(shard, olderThanMs, 1);
      const cut = Math.min(keep?.sequenceNumber ?? last, last);
      if (cut > first) removed += await this.removeRange(shard, first, cut);
    }
    return removed;
  }

  abstract read(shard: number, after: number, limit: number): Promise<ChangeRecord[]>;
  /** Removes the shard's committed records with sequence numbers in [first, cut); resolves with how many. */
  protected abstract removeRange(shard: number, first: number, cut: number): Promise<number>;
  /** Adds the record's write to the caller's batch (or keeps it aside until commit). */
  protected abstract persist(ops: BatchOp[], record: ChangeRecord): void;
  protected abstract firstSequenceNumber(shard: number): Promise<number | null>;
  /** The shard's last committed sequence number as readers see it (0: none); a log that does not write every shard asks elsewhere. */
  protected async lastSequenceNumber(shard: number): Promise<number> {
    return this.committed[shard] ?? 0;
  }
  protected afterCommit(_records: ChangeRecord[]): void {}

  protected onListenerError(err: unknown): void {
    process.emitWarning(`a change-log listener failed: ${(err as Error)?.stack ?? String(err)}`);
  }
}

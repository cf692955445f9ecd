import { DEFAULT_AWS_LOCATION, streamArnOf, streamLabelOf, type AwsLocation } from '../core/arn.js';
import { SequencedLog } from './sequenced-log.js';
import type { BatchOp, ChangeRecord } from './types.js';

/** A change log in memory, for tests of the logic above the log. */
export class MemoryChangeLog extends SequencedLog {
  private readonly records: ChangeRecord[][];

  constructor(opts: { shards: number; aws?: AwsLocation }) {
    super(opts.shards, streamArnOf(opts.aws ?? DEFAULT_AWS_LOCATION, streamLabelOf(new Date(0).toISOString())), new Array<number>(opts.shards).fill(0));
    this.records = Array.from({ length: opts.shards }, () => []);
  }

  // Nothing to add to the batch: records join the log only once committed.
  protected persist(_ops: BatchOp[], _record: ChangeRecord): void {}

  protected override afterCommit(records: ChangeRecord[]): void {
    for (const r of records) (this.records[r.shard] as ChangeRecord[]).push(r);
  }

  async read(shard: number, after: number, limit: number): Promise<ChangeRecord[]> {
    const list = this.records[shard] ?? [];
    // Binary search for the first record past `after`: the list is in sequence order.
    let lo = 0;
    for (let hi = list.length; lo < hi; ) {
      const mid = (lo + hi) >>> 1;
      if ((list[mid] as ChangeRecord).sequenceNumber > after) hi = mid;
      else lo = mid + 1;
    }
    return list.slice(lo, lo + limit);
  }

  protected async removeRange(shard: number, first: number, cut: number): Promise<number> {
    const list = this.records[shard] ?? [];
    let end = 0;
    while (end < list.length && (list[end] as ChangeRecord).sequenceNumber < cut) end++;
    let start = 0;
    while (start < end && (list[start] as ChangeRecord).sequenceNumber < first) start++;
    return list.splice(start, end - start).length;
  }

  protected async firstSequenceNumber(shard: number): Promise<number | null> {
    return this.records[shard]?.[0]?.sequenceNumber ?? null;
  }
}

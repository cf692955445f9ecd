/**
 * The newest committed records of one shard, encoded as on disk, bounded by count and
 * bytes: a poller or tail that keeps up with the log reads here instead of LevelDB. Holds
 * a contiguous run of sequence numbers `[first, last]`; slot `s % capacity` holds record
 * `s`, so appending and evicting are O(1).
 */
export class TailCache {
  private readonly slots: Array<Buffer | undefined>;
  private first = 0;
  private last = -1;
  private bytes = 0;

  constructor(
    private readonly capacity: number,
    private readonly maxBytes: number,
  ) {
    if (!Number.isSafeInteger(capacity) || capacity < 1) throw new RangeError(`capacity must be a positive integer (got ${String(capacity)})`);
    this.slots = new Array<Buffer | undefined>(capacity);
  }

  /** Appends record `sequenceNumber`; one that does not follow the last cached starts the run afresh. */
  append(sequenceNumber: number, encoded: Buffer): void {
    if (sequenceNumber !== this.last + 1) {
      this.dropBefore(Infinity);
      this.first = sequenceNumber;
      this.last = sequenceNumber - 1;
    }
    // Room first: the slot may still hold record `sequenceNumber - capacity`. The newest record stays whatever its size.
    while (this.first <= this.last && (sequenceNumber - this.first + 1 > this.capacity || this.bytes + encoded.length > this.maxBytes)) this.evictFirst();
    this.slots[sequenceNumber % this.capacity] = encoded;
    this.bytes += encoded.length;
    this.last = sequenceNumber;
  }

  /**
   * Records `after + 1 …` (at most `limit`, none past `upTo`), or undefined when record
   * `after + 1` is not cached (older than the cache, or nothing cached): read the disk.
   */
  read(after: number, upTo: number, limit: number): Array<[sequenceNumber: number, encoded: Buffer]> | undefined {
    if (this.last < this.first || after + 1 < this.first || after + 1 > this.last) return undefined;
    const end = Math.min(this.last, upTo, after + limit);
    const out: Array<[number, Buffer]> = [];
    for (let s = after + 1; s <= end; s++) out.push([s, this.slots[s % this.capacity] as Buffer]);
    return out;
  }

  /** Forgets records with sequence numbers below `cut` (trimmed from the log). */
  dropBefore(cut: number): void {
    while (this.first <= this.last && this.first < cut) this.evictFirst();
  }

  private evictFirst(): void {
    const i = this.first % this.capacity;
    this.bytes -= (this.slots[i] as Buffer).length;
    this.slots[i] = undefined;
    this.first++;
  }
}

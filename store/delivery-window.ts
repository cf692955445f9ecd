/**
 * The redelivery guard's memory of one MQTT client: its last `size` committed QoS 1
 * deliveries, as (packet id, payload hash), numbered 0, 1, 2… in commit order. Stored as
 * `size` rows per client, delivery `n` in slot `n mod size`, so that the guard can hold
 * a client's window in memory and needs no read per publish (docs/ARCHITECTURE.md,
 * "Idempotence").
 *
 * Why a window is enough: a redelivery is a PUBLISH the client re-sends on reconnecting
 * because the PUBACK never reached it. The deliveries committed after it are the ones
 * that were in flight with it, bounded by the broker's inflight limit; the window is
 * sized well above that.
 *
 * The size may change between runs (it follows the inflight limit): a window read back
 * with another size keeps the newest rows, and the first deliveries after a larger size
 * overwrite the oldest rows of the old layout.
 */

/** One stored delivery: its number in the client's sequence, packet id and payload hash. */
export interface DeliveryRow {
  n: number;
  packetId: number;
  payloadHash: number;
}

/** Deliveries per client the guard remembers unless configured otherwise. */
export const DEFAULT_DELIVERY_WINDOW = 256;

export class DeliveryWindow {
  /** Number of the next delivery. */
  private next: number;
  private readonly packetIds: Uint16Array;
  /** NaN: the slot holds nothing (a delivery number the window never saw). */
  private readonly hashes: Float64Array;

  /** A window holding the newest `size` of `rows` (stored rows, in any order; older ones are ignored). */
  constructor(
    readonly size: number,
    rows: readonly DeliveryRow[] = [],
  ) {
    this.packetIds = new Uint16Array(size);
    this.hashes = new Float64Array(size).fill(Number.NaN);
    let max = -1;
    for (const r of rows) if (r.n > max) max = r.n;
    this.next = max + 1;
    for (const r of rows) {
      if (r.n <= max - size) continue;
      this.packetIds[r.n % size] = r.packetId;
      this.hashes[r.n % size] = r.payloadHash;
    }
  }

  /** Number the next delivery will get. */
  get nextNumber(): number {
    return this.next;
  }

  /** The payload hash of the newest delivery in the window with this packet id, if any. */
  hashOf(packetId: number): number | undefined {
    let newest = -1;
    let hash: number | undefined;
    // Slot s holds the one delivery of the window whose number is s modulo the size.
    for (let s = this.packetIds.indexOf(packetId); s >= 0; s = this.packetIds.indexOf(packetId, s + 1)) {
      const h = this.hashes[s] as number;
      if (Number.isNaN(h)) continue;
      const n = this.next - 1 - ((this.next - 1 - s) % this.size);
      if (n > newest) {
        newest = n;
        hash = h;
      }
    }
    return hash;
  }

  /** Records delivery `n` (= {@link nextNumber}) once it is committed. */
  record(n: number, packetId: number, payloadHash: number): void {
    this.packetIds[n % this.size] = packetId;
    this.hashes[n % this.size] = payloadHash;
    this.next = n + 1;
  }
}

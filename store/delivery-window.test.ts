import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DeliveryWindow, type DeliveryRow } from './delivery-window.js';

describe('DeliveryWindow', () => {
  it('answers the newest delivery of a packet id, and forgets deliveries older than its size', () => {
    const w = new DeliveryWindow(3);
    expect(w.hashOf(1)).toBeUndefined();
    w.record(0, 1, 10);
    w.record(1, 2, 20);
    w.record(2, 1, 11);
    expect(w.hashOf(1)).toBe(11);
    expect(w.hashOf(2)).toBe(20);
    w.record(3, 3, 30);
    w.record(4, 4, 40);
    expect(w.hashOf(2)).toBeUndefined();
    expect(w.hashOf(1)).toBe(11);
    w.record(5, 5, 50);
    expect(w.hashOf(1)).toBeUndefined();
    // Packet id 0 is an id like any other, not an empty slot.
    expect(w.hashOf(0)).toBeUndefined();
    w.record(6, 0, 60);
    expect(w.hashOf(0)).toBe(60);
    expect(w.nextNumber).toBe(7);
  });

  it('continues the numbering of the rows it was loaded from', () => {
    const w = new DeliveryWindow(3, [{ n: 4, packetId: 1, payloadHash: 1 }]);
    expect(w.nextNumber).toBe(5);
    expect(w.hashOf(1)).toBe(1);
  });

  it('loaded from stored rows in any order, with gaps and stale rows, answers as if it had seen them one by one (property)', () => {
    const delivery = fc.record({ packetId: fc.integer({ min: 0, max: 5 }), payloadHash: fc.integer({ min: 0, max: 3 }), stored: fc.boolean() });
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 6 }), fc.array(delivery, { maxLength: 30 }), fc.integer(), (size, deliveries, seed) => {
        const live = new DeliveryWindow(size);
        // What the store holds: the row of each delivery, unless the slot was written again
        // (a later delivery) — or lost (`stored` false: a slot a delete removed).
        const slots = new Map<number, DeliveryRow>();
        deliveries.forEach((d, n) => {
          live.record(n, d.packetId, d.payloadHash);
          if (d.stored) slots.set(n % size, { n, packetId: d.packetId, payloadHash: d.payloadHash });
          else slots.delete(n % size);
        });
        const rows = [...slots.values()].sort((a, b) => ((a.n * 7919 + seed) % 13) - ((b.n * 7919 + seed) % 13));
        const loaded = new DeliveryWindow(size, rows);
        const lastStored = Math.max(-1, ...rows.map((r) => r.n));
        expect(loaded.nextNumber).toBe(lastStored + 1);
        for (let p = 0; p <= 5; p++) {
          // The newest stored delivery of p within the window, as the live window saw it.
          const expected = [...rows].filter((r) => r.packetId === p && r.n > lastStored - size).sort((a, b) => b.n - a.n)[0]?.payloadHash;
          expect(loaded.hashOf(p)).toBe(expected);
          if (lastStored === deliveries.length - 1 && rows.length === Math.min(size, deliveries.length)) expect(loaded.hashOf(p)).toBe(live.hashOf(p));
        }
      }),
    );
  });
});

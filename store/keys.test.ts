import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_TIMESTAMP_MS } from '../core/time.js';
import {
  MAX_U32,
  decodeDelivery,
  decodeDeliveryKey,
  decodeDeviceKey,
  decodePartitionKey,
  decodeTelemetryKey,
  deliveryKey,
  deviceBounds,
  encodeDelivery,
  deviceKey,
  latestKey,
  partitionKey,
  partitionOf,
  telemetryBounds,
  telemetryKey,
  telemetryKeySeq,
  telemetryKeyTs,
} from './keys.js';
import { Prefix } from './keyspace.js';

const deviceIdArb = fc.stringMatching(/^[A-Za-z0-9._:-]{1,24}$/);
const tsArb = fc.integer({ min: 0, max: MAX_TIMESTAMP_MS });
const seqArb = fc.integer({ min: 0, max: MAX_U32 });
const partitionArb = fc.integer({ min: 0, max: MAX_U32 });

describe('telemetry keys', () => {
  it('lays out T · partition · deviceId · 0x00 · ts u64 · seq u32', () => {
    const key = telemetryKey(7, 'dev-1', 0x1_0000_0002, 3);
    expect(key.toString('hex')).toBe(
      ['54', '00000007', Buffer.from('dev-1').toString('hex'), '00', '0000000100000002', '00000003'].join(''),
    );
  });

  it('round-trips the extremes', () => {
    for (const [p, ts, seq] of [
      [0, 0, 0],
      [MAX_U32, MAX_TIMESTAMP_MS, MAX_U32],
      [1, Number.MAX_SAFE_INTEGER, 1],
    ] as const) {
      const key = telemetryKey(p, 'a', ts, seq);
      expect(decodeTelemetryKey(key)).toEqual({ partition: p, deviceId: 'a', ts, seq });
      expect(telemetryKeyTs(key)).toBe(ts);
      expect(telemetryKeySeq(key)).toBe(seq);
    }
  });

  it('rejects values that do not fit', () => {
    expect(() => telemetryKey(0, 'a', -1, 0)).toThrow(RangeError);
    expect(() => telemetryKey(0, 'a', 1.5, 0)).toThrow(RangeError);
    expect(() => telemetryKey(0, 'a', 0, MAX_U32 + 1)).toThrow(RangeError);
    expect(() => telemetryKey(MAX_U32 + 1, 'a', 0, 0)).toThrow(RangeError);
    expect(() => decodeTelemetryKey(latestKey('abc'))).toThrow(RangeError);
  });

  it('round-trips any key (property)', () => {
    fc.assert(
      fc.property(partitionArb, deviceIdArb, tsArb, seqArb, (partition, deviceId, ts, seq) => {
        expect(decodeTelemetryKey(telemetryKey(partition, deviceId, ts, seq))).toEqual({ partition, deviceId, ts, seq });
      }),
    );
  });

  it('sorts bytewise by partition, then device, then ts, then seq (property)', () => {
    const entry = fc.record({ partition: fc.integer({ min: 0, max: 3 }), deviceId: fc.constantFrom('a', 'a1', 'a.', 'b', 'B', 'a-b'), ts: tsArb, seq: fc.integer({ min: 0, max: 5 }) });
    fc.assert(
      fc.property(entry, entry, (x, y) => {
        const byBytes = Math.sign(Buffer.compare(telemetryKey(x.partition, x.deviceId, x.ts, x.seq), telemetryKey(y.partition, y.deviceId, y.ts, y.seq)));
        const byFields =
          Math.sign(x.partition - y.partition) ||
          Math.sign(Buffer.compare(Buffer.from(x.deviceId), Buffer.from(y.deviceId))) ||
          Math.sign(x.ts - y.ts) ||
          Math.sign(x.seq - y.seq);
        expect(byBytes).toBe(byFields);
      }),
      { numRuns: 2000 },
    );
  });

  it('never interleaves a device with one whose id it prefixes', () => {
    // 'a' at the largest ts must still sort before 'a1' at the smallest.
    expect(Buffer.compare(telemetryKey(0, 'a', MAX_TIMESTAMP_MS, MAX_U32), telemetryKey(0, 'a1', 0, 0))).toBe(-1);
  });

  it('bounds select exactly the device readings with from <= ts <= to (property)', () => {
    fc.assert(
      fc.property(deviceIdArb, deviceIdArb, tsArb, tsArb, tsArb, seqArb, (device, other, a, b, ts, seq) => {
        const [from, to] = a <= b ? [a, b] : [b, a];
        const { gte, lte } = telemetryBounds(1, device, from, to);
        const inside = (key: Buffer): boolean => Buffer.compare(key, gte) >= 0 && Buffer.compare(key, lte) <= 0;
        expect(inside(telemetryKey(1, device, ts, seq))).toBe(ts >= from && ts <= to);
        if (other !== device) expect(inside(telemetryKey(1, other, ts, seq))).toBe(false);
        expect(inside(telemetryKey(0, device, ts, seq))).toBe(false);
        expect(inside(telemetryKey(2, device, ts, seq))).toBe(false);
      }),
    );
  });
});

describe('partitions', () => {
  it('partitionOf floors ts into windows from the epoch', () => {
    expect(partitionOf(0, 1000)).toBe(0);
    expect(partitionOf(999, 1000)).toBe(0);
    expect(partitionOf(1000, 1000)).toBe(1);
    expect(partitionOf(86_400_000 * 3 + 5, 86_400_000)).toBe(3);
  });

  it('partition index keys round-trip and sort numerically', () => {
    fc.assert(
      fc.property(partitionArb, partitionArb, (a, b) => {
        expect(decodePartitionKey(partitionKey(a))).toBe(a);
        expect(Math.sign(Buffer.compare(partitionKey(a), partitionKey(b)))).toBe(Math.sign(a - b));
      }),
    );
    expect(partitionKey(1)[0]).toBe(Prefix.partition);
  });
});

describe('latest, device and delivery keys', () => {
  it('use their prefixes and round-trip', () => {
    expect(latestKey('d1')).toEqual(Buffer.concat([Buffer.of(Prefix.latest), Buffer.from('d1')]));
    expect(decodeDeviceKey(deviceKey('dev:9'))).toBe('dev:9');
    expect(deviceKey('x')[0]).toBe(Prefix.device);
  });

  it('device bounds list the registry, strictly after a cursor', () => {
    const all = deviceBounds();
    const after = deviceBounds('b');
    const a = deviceKey('a');
    const b = deviceKey('b');
    const c = deviceKey('c');
    expect(Buffer.compare(a, all.gte as Buffer)).toBeGreaterThan(0);
    expect(Buffer.compare(c, all.lt)).toBeLessThan(0);
    expect(Buffer.compare(b, after.gt as Buffer)).toBe(0);
    expect(Buffer.compare(c, after.gt as Buffer)).toBeGreaterThan(0);
    // Neighbouring tables stay outside: C (change) sorts below D, L above it.
    const inside = (key: Buffer): boolean => Buffer.compare(key, all.gte as Buffer) >= 0 && Buffer.compare(key, all.lt) < 0;
    expect(inside(Buffer.of(Prefix.change, 0xff, 0xff))).toBe(false);
    expect(inside(latestKey('a'))).toBe(false);
    expect(inside(deviceKey('~~~'))).toBe(true);
  });

  it('delivery keys: Q · clientId · 0x00 · slot u32, round-trip (property)', () => {
    expect(deliveryKey('c', 258).toString('hex')).toBe('51' + '63' + '00' + '00000102');
    fc.assert(
      fc.property(fc.string({ maxLength: 30 }).filter((s) => !s.includes('\u0000')), fc.integer({ min: 0, max: MAX_U32 }), (clientId, slot) => {
        expect(decodeDeliveryKey(deliveryKey(clientId, slot))).toEqual({ clientId, slot });
      }),
    );
  });

  it('delivery values: number, packet id and a 48-bit hash, round-trip (property); anything else is refused', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 2 ** 48 - 1 }), (n, packetId, payloadHash) => {
        expect(decodeDelivery(encodeDelivery(n, packetId, payloadHash))).toEqual({ n, packetId, payloadHash });
      }),
    );
    // A value of the format-1 layout (the payload hash as hex text).
    expect(() => decodeDelivery(Buffer.from('ab'.repeat(20)))).toThrow(/not a delivery value/);
  });
});

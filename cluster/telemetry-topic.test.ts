import { describe, expect, it } from 'vitest';
import { consumerOffsetKey, consumerOffsetOp } from './offsets.js';
import { decodeTelemetry, encodeTelemetry, type TelemetryMessage } from './telemetry-topic.js';

describe('telemetry topic codec', () => {
  it('round-trips a write request with its delivery id, origin and receive time', () => {
    const msg: TelemetryMessage = {
      req: {
        deviceId: 'dev-ü.1',
        readings: [{ ts: 1_700_000_000_123, values: { t: -1.5, ok: true, gps: { lat: 51.5 }, s: 'x' } }, { values: { big: 2 ** 40 } }],
        delivery: { clientId: 'c1', packetId: 65_535, payloadHash: 'ab'.repeat(16) },
        origin: { function: 'f', hops: 2 },
      },
      receivedAt: 1_700_000_000_999,
    };
    expect(decodeTelemetry(encodeTelemetry(msg))).toStrictEqual(msg);
  });
});

describe('consumer offsets', () => {
  it('keys a topic and partition under O so that partitions of one topic sort together', () => {
    expect(consumerOffsetKey('t', 1).toString('latin1')).toBe('Ot\x00\x00\x00\x00\x01');
    const keys = [consumerOffsetKey('t', 256), consumerOffsetKey('t', 2), consumerOffsetKey('t.x', 0)].sort(Buffer.compare);
    expect(keys.map((k) => k.toString('hex'))).toEqual([consumerOffsetKey('t', 2), consumerOffsetKey('t', 256), consumerOffsetKey('t.x', 0)].map((k) => k.toString('hex')));
    expect(consumerOffsetOp('t', 0, 2 ** 40).value?.readBigUInt64BE(0)).toBe(2n ** 40n);
  });
});

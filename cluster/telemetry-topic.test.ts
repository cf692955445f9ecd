import { createHash } from 'node:crypto';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { NumberValue } from '../core/numbers.js';
import { consumerOffsetKey, consumerOffsetOp } from './offsets.js';
import { payloadHash } from '../ingest/telemetry-ingest.js';
import { prepareWrite } from '../store/items.js';
import { acceptedResult, decodeTelemetry, encodeTelemetry, materialize, type TelemetryMessage } from './telemetry-topic.js';

describe('telemetry topic codec', () => {
  it('round-trips a write request with its delivery id, origin and receive time', () => {
    const msg: TelemetryMessage = {
      req: {
        deviceId: 'dev-ü.1',
        readings: [{ ts: 1_700_000_000_123, values: { t: -1.5, ok: true, gps: { lat: 51.5 }, s: 'x' } }, { values: { big: 2 ** 40 } }],
        delivery: { clientId: 'c1', packetId: 65_535, payloadHash: 2 ** 48 - 1 },
        origin: { function: 'f', hops: 2 },
      },
      receivedAt: 1_700_000_000_999,
    };
    expect(decodeTelemetry(encodeTelemetry(msg))).toStrictEqual(msg);
  });

  it('round-trips numbers kept as their digits (beyond 64 bits, and fractions a double cannot hold)', () => {
    const values = { id: new NumberValue('123456789012345678901234567890'), f: new NumberValue('0.1000000000000000001'), nested: { n: new NumberValue('-1.5e+40') } };
    const back = decodeTelemetry(encodeTelemetry({ req: { deviceId: 'd', readings: [{ values }] }, receivedAt: 1 }));
    expect(back.req.readings[0]?.values).toStrictEqual(values);
  });

  it("reads an earlier build's delivery id, whose payload hash was the SHA-1 in hex, as the 48-bit hash ingest computes now", () => {
    const payload = Buffer.from('{"t":1}');
    const sha1 = createHash('sha1').update(payload).digest('hex');
    const old = new Packr({ useRecords: false }).pack([{ deviceId: 'd', readings: [{ values: { t: 1 } }], delivery: { clientId: 'c1', packetId: 7, payloadHash: sha1 } }, 5]);
    expect(decodeTelemetry(old).req.delivery).toEqual({ clientId: 'c1', packetId: 7, payloadHash: payloadHash(payload) });
    expect(payloadHash(payload)).toBe(Number.parseInt(sha1.slice(0, 12), 16));
  });

  it('round-trips a registry change', () => {
    const msg: TelemetryMessage = { req: { deviceId: 'd', readings: [] }, receivedAt: 5, control: { id: 'x', tags: { site: 'n' } } };
    expect(decodeTelemetry(encodeTelemetry(msg))).toStrictEqual(msg);
  });
});

describe('materialize', () => {
  const msg: TelemetryMessage = {
    req: { deviceId: 'd', readings: [{ values: { a: 1 } }, { ts: 7, values: { a: 2 } }, { values: { a: 3 } }, { ts: 7, values: { a: 4 } }] },
    receivedAt: 1_000,
  };

  it('stamps readings without ts from the receive time and the offset alike on every apply, marked with their source', () => {
    const req = materialize(msg, 123_456);
    expect(req).toStrictEqual(materialize(msg, 123_456));
    expect(req.source).toBe(123_456);
    const keys = prepareWrite(req).readings.map((r) => [r.ts, r.seq]);
    // Server seqs above 2^31 (clear of device-stamped 0, 1, ...), ordered by offset then index.
    expect(keys).toEqual([
      [1_000, 2 ** 31 + (123_456 % 0x8000) * 0x1_0000],
      [7, 0],
      [1_000, 2 ** 31 + (123_456 % 0x8000) * 0x1_0000 + 2],
      [7, 1],
    ]);
    const next = prepareWrite(materialize(msg, 123_457)).readings[0];
    expect(next?.seq).toBeGreaterThan(keys[2]?.[1] as number);
  });

  it("tells ingest the item keys the owner will give the readings", () => {
    const items = acceptedResult(msg.req, msg.receivedAt, 99).items.map(({ ts, seq }) => [ts, seq]);
    expect(items).toEqual(prepareWrite(materialize(msg, 99)).readings.map((r) => [r.ts, r.seq]));
    expect(acceptedResult(msg.req, msg.receivedAt, 99).items.every((i) => i.change === 'ACCEPTED')).toBe(true);
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

import { describe, expect, it } from 'vitest';
import { checkTimeWindow, decodePayload, RejectedPayload, type PayloadLimits } from './payload.js';
import { routeTopic } from './topics.js';

const LIMITS: PayloadLimits = { maxPayloadBytes: 1024, maxReadings: 3, maxKeys: 4, maxDepth: 3 };
const decode = (text: string) => decodePayload(Buffer.from(text), LIMITS);

function rejection(text: string): RejectedPayload {
  try {
    decode(text);
  } catch (err) {
    if (err instanceof RejectedPayload) return err;
    throw err;
  }
  throw new Error(`expected ${text} to be rejected`);
}

describe('decodePayload', () => {
  it('accepts a flat object without ts (server-stamped)', () => {
    expect(decode('{"temp":21.5}')).toEqual([{ values: { temp: 21.5 } }]);
  });

  it('accepts {ts, values} with epoch ms and with ISO-8601', () => {
    expect(decode('{"ts":1764150000000,"values":{"temp":21.5}}')).toEqual([{ ts: 1764150000000, values: { temp: 21.5 } }]);
    expect(decode('{"ts":"2025-11-26T09:40:00.000Z","values":{"temp":1}}')).toEqual([{ ts: Date.parse('2025-11-26T09:40:00.000Z'), values: { temp: 1 } }]);
  });

  it('takes a top-level ts of a flat object as its time', () => {
    expect(decode('{"ts":5,"temp":1,"on":true}')).toEqual([{ ts: 5, values: { temp: 1, on: true } }]);
  });

  it('accepts nested values and arrays of readings', () => {
    expect(decode('[{"gps":{"lat":1,"lon":2}},{"ts":7,"values":{"s":"x"}}]')).toEqual([
      { values: { gps: { lat: 1, lon: 2 } } },
      { ts: 7, values: { s: 'x' } },
    ]);
  });

  it.each([
    ['not json', 'invalid_json'],
    ['"a string"', 'invalid_shape'],
    ['42', 'invalid_shape'],
    ['null', 'invalid_shape'],
    ['[]', 'invalid_shape'],
    ['[1]', 'invalid_shape'],
    ['{}', 'invalid_shape'],
    ['{"ts":1}', 'invalid_shape'],
    ['{"ts":-1,"t":1}', 'invalid_timestamp'],
    ['{"ts":1.5,"t":1}', 'invalid_timestamp'],
    ['{"ts":"yesterday","t":1}', 'invalid_timestamp'],
    ['{"ts":1e300,"t":1}', 'invalid_timestamp'],
    ['{"t":null}', 'invalid_value'],
    ['{"t":[1,2]}', 'invalid_value'],
    ['{"a.b":1}', 'invalid_value'],
    ['{"":1}', 'invalid_value'],
    ['{"seq":1}', 'invalid_value'],
    ['{"values":{"deviceId":"x"}}', 'invalid_value'],
    ['{"tsSeq":1}', 'invalid_value'],
    ['{"values":{"tsSeq":1}}', 'invalid_value'],
    ['{"g":{}}', 'invalid_value'],
    ['{"a":{"b":{"c":{"d":1}}}}', 'invalid_value'],
    ['{"a":1,"b":2,"c":3,"d":4,"e":5}', 'too_many_keys'],
    ['[{"a":1},{"a":1},{"a":1},{"a":1}]', 'too_many_readings'],
    ['{"ts":1,"values":{"a":1},"extra":2}', 'invalid_shape'],
  ])('rejects %s as %s', (text, reason) => {
    const err = rejection(text);
    expect(err.reason).toBe(reason);
    expect(err.code).toBe('ValidationError');
    expect(err.message.length).toBeGreaterThan(10);
  });

  it('rejects an oversized payload before parsing it', () => {
    const err = rejection(`{"a":"${'x'.repeat(2000)}"}`);
    expect(err.reason).toBe('payload_too_large');
    expect(err.code).toBe('PayloadTooLarge');
  });

  it('rejects bytes that are not UTF-8 instead of storing U+FFFD', () => {
    for (const bytes of [[0x22, 0xc3, 0x28, 0x22], [0x22, 0xed, 0xa0, 0x80, 0x22], [0x22, 0xff, 0x22], [0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xe2, 0x82, 0x22, 0x7d]]) {
      let err: unknown;
      try {
        decodePayload(Buffer.from(bytes), LIMITS);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(RejectedPayload);
      expect((err as RejectedPayload).reason).toBe('invalid_encoding');
    }
    expect(decode('{"t":"é€😀"}')).toEqual([{ values: { t: 'é€😀' } }]);
  });

  it('names the offending field', () => {
    expect(rejection('[{"a":1},{"ts":"x","a":1}]').field).toBe('[1]ts');
    expect(rejection('{"gps":{"lat":null}}').field).toBe('gps.lat');
  });
});

describe('checkTimeWindow', () => {
  const now = 1_764_150_000_000;
  const w = { now, maxFutureMs: 60_000, maxAgeMs: 86_400_000 };
  const reasonOf = (fn: () => void): string | undefined => {
    try {
      fn();
    } catch (err) {
      return (err as RejectedPayload).reason;
    }
    return undefined;
  };

  it('accepts server-stamped readings and timestamps inside [now - retention, now + skew]', () => {
    expect(reasonOf(() => checkTimeWindow([{ values: { a: 1 } }, { ts: now + 60_000, values: { a: 1 } }, { ts: now - 86_400_000, values: { a: 1 } }], w))).toBeUndefined();
  });

  it('rejects a ts too far ahead or older than the retention, naming the reading', () => {
    expect(reasonOf(() => checkTimeWindow([{ ts: now + 60_001, values: { a: 1 } }], w))).toBe('timestamp_in_future');
    expect(reasonOf(() => checkTimeWindow([{ ts: now - 86_400_001, values: { a: 1 } }], w))).toBe('timestamp_too_old');
    let err: RejectedPayload | undefined;
    try {
      checkTimeWindow([{ values: { a: 1 } }, { ts: now + 3_600_000, values: { a: 1 } }], w);
    } catch (e) {
      err = e as RejectedPayload;
    }
    expect(err?.field).toBe('[1]ts');
    expect(err?.message).toMatch(/ahead of the server's clock/);
  });

  it('has no lower bound when retention is off', () => {
    expect(reasonOf(() => checkTimeWindow([{ ts: 0, values: { a: 1 } }], { ...w, maxAgeMs: 0 }))).toBeUndefined();
  });
});

describe('routeTopic', () => {
  it.each([
    ['devices/sensor-1/telemetry', { kind: 'telemetry', deviceId: 'sensor-1' }],
    ['devices/a:b.c_d-e/telemetry', { kind: 'telemetry', deviceId: 'a:b.c_d-e' }],
    ['devices/sensor-1/commands/reboot', { kind: 'device-other', deviceId: 'sensor-1' }],
    ['devices/sensor-1/telemetry/extra', { kind: 'device-other', deviceId: 'sensor-1' }],
    ['devices/sensor-1', { kind: 'device-other', deviceId: 'sensor-1' }],
    ['devices//telemetry', { kind: 'invalid-device', segment: '' }],
    ['devices/bad id/telemetry', { kind: 'invalid-device', segment: 'bad id' }],
    ['home/kitchen', { kind: 'other' }],
    ['device/x/telemetry', { kind: 'other' }],
  ])('%s', (topic, route) => {
    expect(routeTopic(topic)).toEqual(route);
  });
});

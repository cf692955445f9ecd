import { describe, expect, it } from 'vitest';
import { formatRecord, parseSse } from './tail.js';

describe('parseSse', () => {
  it('splits events, skips comments, joins multi-line data and keeps an unfinished event for the next chunk', () => {
    const { events, rest } = parseSse(': tail of arn\n\nevent: record\ndata: {"a":1}\n\n: heartbeat\n\ndata: one\ndata: two\n\nevent: record\ndata: {"b"');
    expect(events).toEqual([
      { event: 'record', data: '{"a":1}' },
      { event: 'message', data: 'one\ntwo' },
    ]);
    expect(rest).toBe('event: record\ndata: {"b"');
    expect(parseSse(`${rest}:2}\n\n`).events).toEqual([{ event: 'record', data: '{"b":2}' }]);
  });

  it('accepts CRLF line ends and a field without a space after the colon', () => {
    expect(parseSse('event:error\r\ndata:{"x":1}\r\n\r\n').events).toEqual([{ event: 'error', data: '{"x":1}' }]);
  });
});

describe('formatRecord', () => {
  const keys = { deviceId: { S: 'dev-1' }, tsSeq: { N: '1764150000000.0000000002' } };
  const attributes = { ...keys, ts: { N: '1764150000000' }, seq: { N: '2' } };

  it('shows time, event, device and the new values by dotted path', () => {
    const line = formatRecord({
      eventName: 'MODIFY',
      dynamodb: { Keys: keys, SequenceNumber: '7', NewImage: { ...attributes, temp: { N: '21.5' }, gps: { M: { lat: { N: '1.5' } } }, on: { BOOL: true } } },
    });
    expect(line).toBe('2025-11-26T09:40:00.000Z  MODIFY  dev-1  temp=21.5 gps.lat=1.5 on=true');
  });

  it('shows only the key of a REMOVE record', () => {
    expect(formatRecord({ eventName: 'REMOVE', dynamodb: { Keys: keys, SequenceNumber: '8' } })).toBe('2025-11-26T09:40:00.000Z  REMOVE  dev-1');
  });
});

import { describe, expect, it } from 'vitest';
import { functionArnOf, parseStreamArn, sameStream, streamArnOf, streamLabelOf } from './arn.js';

const EU = { region: 'eu-west-1', accountId: '123456789012' };

describe('ARNs', () => {
  it("labels a stream with its creation time as AWS's StreamLabel writes it", () => {
    expect(streamLabelOf('2026-12-08T03:42:06.123Z')).toBe('2026-12-08T03:42:06.123');
    expect(streamArnOf(EU, '2026-12-08T03:42:06.123')).toBe('arn:aws:dynamodb:eu-west-1:123456789012:table/telemetry/stream/2026-12-08T03:42:06.123');
    expect(functionArnOf(EU, 'alerts')).toBe('arn:aws:lambda:eu-west-1:123456789012:function:alerts');
  });

  it('parses stream ARNs, the earlier arn:tributary form too', () => {
    expect(parseStreamArn('arn:aws:dynamodb:eu-west-1:123456789012:table/telemetry/stream/2026-12-08T03:42:06.123')).toEqual({ region: 'eu-west-1', accountId: '123456789012', table: 'telemetry', label: '2026-12-08T03:42:06.123' });
    expect(parseStreamArn('arn:tributary:dynamodb:local:000000000000:table/telemetry/stream/2026-12-08T03:42:06.123Z')).toEqual({ region: 'local', accountId: '000000000000', table: 'telemetry', label: '2026-12-08T03:42:06.123' });
    expect(parseStreamArn('arn:aws:lambda:eu-west-1:123456789012:function:x')).toBeUndefined();
    expect(parseStreamArn('arn:test')).toBeUndefined();
  });

  it('takes ARNs of one table and label for one stream, whatever their region, account or form', () => {
    const now = 'arn:aws:dynamodb:eu-west-1:123456789012:table/telemetry/stream/2026-12-08T03:42:06.123';
    expect(sameStream(now, 'arn:tributary:dynamodb:local:000000000000:table/telemetry/stream/2026-12-08T03:42:06.123Z')).toBe(true);
    expect(sameStream(now, 'arn:aws:dynamodb:us-east-1:000000000000:table/telemetry/stream/2026-12-08T03:42:06.123')).toBe(true);
    expect(sameStream(now, 'arn:aws:dynamodb:eu-west-1:123456789012:table/telemetry/stream/2026-12-08T03:42:06.124')).toBe(false);
    expect(sameStream(now, 'arn:aws:dynamodb:eu-west-1:123456789012:table/other/stream/2026-12-08T03:42:06.123')).toBe(false);
    expect(sameStream(now, 'arn:test')).toBe(false);
  });
});

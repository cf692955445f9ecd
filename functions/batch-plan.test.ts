import { describe, expect, it } from 'vitest';
import { dropExpired, parseItemFailures, pending, planAfterInvoke, retrySettingProblems, type BatchDecision, type PendingBatch, type PlannedRecord, type PlanSettings } from './batch-plan.js';
import type { InvokeOutcome } from './types.js';

const NOW = 1_700_000_000_000;
const SETTINGS: PlanSettings = { maximumRetryAttempts: 2, maximumRecordAgeSeconds: -1, bisectBatchOnFunctionError: false, reportBatchItemFailures: false };
const OK: InvokeOutcome = { status: 'ok', result: null };
const ERROR: InvokeOutcome = { status: 'error', errorType: 'Error', errorMessage: 'boom' };

/** Records with sequence numbers from..to, committed `ageSeconds` ago. */
function recs(from: number, to: number, ageSeconds = 0): PlannedRecord[] {
  return Array.from({ length: to - from + 1 }, (_, i) => ({ sequenceNumber: from + i, createdAt: NOW - ageSeconds * 1000 }));
}

function seqs(batch: PendingBatch<PlannedRecord>): number[] {
  return batch.records.map((r) => r.sequenceNumber);
}

function failures(...ids: unknown[]): InvokeOutcome {
  return { status: 'ok', result: { batchItemFailures: ids.map((itemIdentifier) => ({ itemIdentifier })) } };
}

const PARTIAL: PlanSettings = { ...SETTINGS, reportBatchItemFailures: true };
const BISECT: PlanSettings = { ...SETTINGS, bisectBatchOnFunctionError: true };

describe('planAfterInvoke', () => {
  it('success checkpoints at the last record', () => {
    expect(planAfterInvoke(pending(recs(1, 5)), OK, SETTINGS)).toEqual({ kind: 'success', checkpoint: 5, next: [] });
  });

  it.each<InvokeOutcome>([ERROR, { status: 'timeout' }, { status: 'crashed', reason: 'exit 1' }])('a $status outcome retries the whole batch, spending a retry', (outcome) => {
    const d = planAfterInvoke(pending(recs(1, 4)), outcome, SETTINGS);
    expect(d).toEqual({ kind: 'retry', next: [{ records: recs(1, 4), retries: 1, invocations: 1 }], backoff: true });
  });

  it('discards the batch once maximumRetryAttempts retries failed', () => {
    let batch = pending(recs(3, 6));
    const kinds: string[] = [];
    for (;;) {
      const d = planAfterInvoke(batch, ERROR, SETTINGS);
      kinds.push(d.kind);
      if (d.kind !== 'retry') {
        expect(d).toEqual({ kind: 'discard', checkpoint: 6, discarded: { firstSequenceNumber: 3, lastSequenceNumber: 6, count: 4, reason: 'RetryAttemptsExhausted' }, next: [] });
        break;
      }
      batch = d.next[0];
    }
    // The first attempt and two retries.
    expect(kinds).toEqual(['retry', 'retry', 'discard']);
  });

  it('maximumRetryAttempts 0 discards at the first failure; -1 never does', () => {
    expect(planAfterInvoke(pending(recs(1, 1)), ERROR, { ...SETTINGS, maximumRetryAttempts: 0 }).kind).toBe('discard');
    expect(planAfterInvoke({ records: recs(1, 1), retries: 1_000_000, invocations: 1_000_000 }, ERROR, { ...SETTINGS, maximumRetryAttempts: -1 }).kind).toBe('retry');
  });

  it('ignores a partial-batch response unless ReportBatchItemFailures is on', () => {
    expect(planAfterInvoke(pending(recs(1, 5)), failures('3'), SETTINGS)).toMatchObject({ kind: 'success', checkpoint: 5 });
  });

  describe('ReportBatchItemFailures', () => {
    it('checkpoints before the lowest failed record and retries from it', () => {
      const d = planAfterInvoke(pending(recs(1, 6)), failures('5', '3', '4'), PARTIAL);
      expect(d).toEqual({ kind: 'partial', checkpoint: 2, next: [{ records: recs(3, 6), retries: 1, invocations: 1 }], backoff: true });
    });

    it('a failure of the first record retries the whole batch, with no checkpoint', () => {
      const d = planAfterInvoke(pending(recs(1, 3)), failures('1'), PARTIAL);
      expect(d).toMatchObject({ kind: 'partial', checkpoint: undefined });
      expect(seqs((d as Extract<BatchDecision<PlannedRecord>, { kind: 'partial' }>).next[0])).toEqual([1, 2, 3]);
    });

    it.each<[string, unknown]>([
      ['a null response', null],
      ['an undefined response', undefined],
      ['an empty response', {}],
      ['a null list', { batchItemFailures: null }],
      ['an empty list', { batchItemFailures: [] }],
    ])('%s is a complete success', (_label, result) => {
      expect(planAfterInvoke(pending(recs(1, 3)), { status: 'ok', result }, PARTIAL)).toMatchObject({ kind: 'success', checkpoint: 3 });
    });

    it.each<[string, unknown]>([
      ['a null itemIdentifier', { batchItemFailures: [{ itemIdentifier: null }] }],
      ['an empty itemIdentifier', { batchItemFailures: [{ itemIdentifier: '' }] }],
      ['a missing itemIdentifier (bad key name)', { batchItemFailures: [{ itemIdentifer: '2' }] }],
      ['an unknown sequence number', { batchItemFailures: [{ itemIdentifier: '99' }] }],
      ['a number, not a string', { batchItemFailures: [{ itemIdentifier: 2 }] }],
      ['an entry that is not an object', { batchItemFailures: ['2'] }],
      ['a valid entry next to an invalid one', { batchItemFailures: [{ itemIdentifier: '2' }, { itemIdentifier: null }] }],
      ['a list that is not a list', { batchItemFailures: '2' }],
      ['a string response', 'done'],
      ['a list response', [{ itemIdentifier: '2' }]],
    ])('%s fails the whole batch', (_label, result) => {
      expect(parseItemFailures(result, recs(1, 3)).kind).toBe('invalid');
      expect(planAfterInvoke(pending(recs(1, 3)), { status: 'ok', result }, PARTIAL)).toEqual({
        kind: 'retry',
        next: [{ records: recs(1, 3), retries: 1, invocations: 1 }],
        backoff: true,
      });
    });

    it('a partial failure at the first record spends a retry; once spent, the records from it on are discarded', () => {
      const batch: PendingBatch<PlannedRecord> = { records: recs(4, 8), retries: 1, invocations: 2 };
      expect(planAfterInvoke(batch, failures('4', '6'), PARTIAL)).toEqual({ kind: 'partial', checkpoint: undefined, next: [{ records: recs(4, 8), retries: 2, invocations: 3 }], backoff: true });
      expect(planAfterInvoke({ ...batch, retries: 2 }, failures('4'), PARTIAL)).toEqual({
        kind: 'discard',
        checkpoint: 8,
        discarded: { firstSequenceNumber: 4, lastSequenceNumber: 8, count: 5, reason: 'RetryAttemptsExhausted' },
        next: [],
      });
    });

    it('a partial failure further on is progress: the count starts afresh for the failed record', () => {
      const batch: PendingBatch<PlannedRecord> = { records: recs(4, 8), retries: 2, invocations: 3 };
      expect(planAfterInvoke(batch, failures('6'), PARTIAL)).toEqual({ kind: 'partial', checkpoint: 5, next: [{ records: recs(6, 8), retries: 1, invocations: 4 }], backoff: true });
    });

    it('with maximumRetryAttempts 0 a partial failure discards the records from the lowest failed one', () => {
      const batch: PendingBatch<PlannedRecord> = { records: recs(4, 8), retries: 0, invocations: 0 };
      expect(planAfterInvoke(batch, failures('6'), { ...PARTIAL, maximumRetryAttempts: 0 })).toEqual({
        kind: 'discard',
        checkpoint: 8,
        discarded: { firstSequenceNumber: 6, lastSequenceNumber: 8, count: 3, reason: 'RetryAttemptsExhausted' },
        next: [],
      });
    });

    it('with bisection on too, a partial response splits at the failed record rather than in halves', () => {
      const d = planAfterInvoke(pending(recs(1, 8)), failures('7'), { ...PARTIAL, bisectBatchOnFunctionError: true });
      expect(d).toMatchObject({ kind: 'partial', checkpoint: 6 });
      expect(seqs((d as Extract<BatchDecision<PlannedRecord>, { kind: 'partial' }>).next[0])).toEqual([7, 8]);
    });

    it('with bisection on, an error or an invalid response bisects regardless of ReportBatchItemFailures', () => {
      const settings = { ...PARTIAL, bisectBatchOnFunctionError: true };
      expect(planAfterInvoke(pending(recs(1, 4)), ERROR, settings).kind).toBe('bisect');
      expect(planAfterInvoke(pending(recs(1, 4)), failures(null), settings).kind).toBe('bisect');
    });
  });

  describe('BisectBatchOnFunctionError', () => {
    it('splits a failing batch in two halves (the first one the larger) without spending a retry', () => {
      const d = planAfterInvoke({ records: recs(1, 5), retries: 1, invocations: 2 }, ERROR, BISECT);
      expect(d.kind).toBe('bisect');
      const [a, b] = (d as Extract<BatchDecision<PlannedRecord>, { kind: 'bisect' }>).next;
      expect([seqs(a), seqs(b)]).toEqual([
        [1, 2, 3],
        [4, 5],
      ]);
      expect([a.retries, b.retries]).toEqual([1, 1]);
      expect([a.invocations, b.invocations]).toEqual([3, 3]);
    });

    it('even when the retries are spent: splitting is free, a single record is not', () => {
      const spent = { ...BISECT, maximumRetryAttempts: 0 };
      expect(planAfterInvoke(pending(recs(1, 2)), ERROR, spent).kind).toBe('bisect');
      expect(planAfterInvoke(pending(recs(1, 1)), ERROR, spent).kind).toBe('discard');
    });

    it('isolates a poison record: the good ones succeed, the poison one is retried alone and then discarded', () => {
      // Simulates the poller: a queue of sub-batches, delivered in order; record 6 always fails.
      const queue: Array<PendingBatch<PlannedRecord>> = [pending(recs(1, 8))];
      const invoked: number[][] = [];
      const checkpoints: number[] = [];
      const discarded: unknown[] = [];
      for (let batch = queue.shift(); batch !== undefined; batch = queue.shift()) {
        invoked.push(seqs(batch));
        const outcome = seqs(batch).includes(6) ? ERROR : OK;
        const d = planAfterInvoke(batch, outcome, BISECT);
        if (d.kind === 'success' || d.kind === 'discard') checkpoints.push(d.checkpoint);
        if (d.kind === 'discard') discarded.push(d.discarded);
        queue.unshift(...d.next);
      }
      expect(invoked).toEqual([
        [1, 2, 3, 4, 5, 6, 7, 8],
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        [5, 6],
        [5],
        [6],
        [6],
        [6],
        [7, 8],
      ]);
      expect(checkpoints).toEqual([4, 5, 6, 8]);
      expect(discarded).toEqual([{ firstSequenceNumber: 6, lastSequenceNumber: 6, count: 1, reason: 'RetryAttemptsExhausted' }]);
    });
  });
});

describe('dropExpired', () => {
  const AGE: PlanSettings = { ...SETTINGS, maximumRecordAgeSeconds: 60 };

  it('keeps everything when the age is unlimited (-1)', () => {
    const batch = pending(recs(1, 3, 1_000_000));
    expect(dropExpired(batch, SETTINGS, NOW)).toEqual({ batch });
  });

  it('discards the leading records older than maximumRecordAgeSeconds and keeps the rest', () => {
    const batch = { records: [...recs(1, 2, 61), ...recs(3, 4, 59)], retries: 1, invocations: 2 };
    const r = dropExpired(batch, AGE, NOW);
    expect(r.discarded).toEqual({ firstSequenceNumber: 1, lastSequenceNumber: 2, count: 2, reason: 'RecordAgeExceeded' });
    expect(r.batch).toEqual({ records: recs(3, 4, 59), retries: 1, invocations: 2 });
  });

  it('discards a whole batch that is too old', () => {
    const r = dropExpired(pending(recs(5, 7, 120)), AGE, NOW);
    expect(r).toEqual({ discarded: { firstSequenceNumber: 5, lastSequenceNumber: 7, count: 3, reason: 'RecordAgeExceeded' }, batch: undefined });
  });

  it('a record exactly at the limit is kept', () => {
    expect(dropExpired(pending(recs(1, 1, 60)), AGE, NOW).discarded).toBeUndefined();
  });
});

describe('retrySettingProblems', () => {
  it('accepts Lambda ranges', () => {
    for (const [r, a] of [
      [-1, -1],
      [0, 60],
      [10_000, 604_800],
      [3, 3600],
    ] as const) {
      expect(retrySettingProblems({ maximumRetryAttempts: r, maximumRecordAgeSeconds: a })).toEqual([]);
    }
  });

  it('rejects values outside them', () => {
    expect(retrySettingProblems({ maximumRetryAttempts: -2, maximumRecordAgeSeconds: 59 })).toHaveLength(2);
    expect(retrySettingProblems({ maximumRetryAttempts: 10_001, maximumRecordAgeSeconds: 604_801 })).toHaveLength(2);
    expect(retrySettingProblems({ maximumRetryAttempts: 1.5, maximumRecordAgeSeconds: 0 })).toHaveLength(2);
  });
});

/**
 * What an event source mapping does with a stream batch after the function ran on it:
 * pure decisions, no I/O, so every rule can be tested on its own. The shard poller
 * (`event-source-mapping.ts`) carries them out: it invokes, moves the checkpoint,
 * backs off, and reports discarded records.
 *
 * The rules follow AWS Lambda's documented behaviour for DynamoDB Streams and Kinesis
 * event source mappings:
 *
 * - Success: checkpoint at the highest sequence number of the batch. Any other result is
 *   a complete failure, retried up to the retry limit.
 *   (https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-batchfailurereporting.html)
 * - `ReportBatchItemFailures` (only when listed in `functionResponseTypes`; otherwise the
 *   response is ignored): `{ batchItemFailures: [{ itemIdentifier: "<SequenceNumber>" }] }`.
 *   With several failures Lambda checkpoints at the lowest sequence number and retries
 *   every record from there. An empty or null `batchItemFailures` list, or an empty or
 *   null response, is a complete success; an empty-string or null `itemIdentifier`, or
 *   one with a bad key name, is a complete failure. (Same page.)
 * - `BisectBatchOnFunctionError`: "If the invocation fails and BisectBatchOnFunctionError
 *   is turned on, the batch is bisected regardless of your ReportBatchItemFailures
 *   setting"; with a partial response and both on, "the batch is bisected at the returned
 *   sequence number and Lambda retries only the remaining records". (Same page.)
 * - "Splitting batches doesn't consume the retry quota"; records are discarded once they
 *   exceed `MaximumRecordAgeInSeconds` or reach `MaximumRetryAttempts`; a discarded batch
 *   goes to the on-failure destination as *metadata* describing the failed invocation
 *   (shard, first and last sequence numbers, batch size), not the records themselves.
 *   (https://docs.aws.amazon.com/lambda/latest/dg/services-dynamodb-errors.html)
 * - `MaximumRecordAgeInSeconds` and `MaximumRetryAttempts`: -1 means infinite; the age is
 *   otherwise 60..604,800 s, the retry count 0..10,000.
 *   (https://docs.aws.amazon.com/lambda/latest/dg/services-ddb-params.html)
 *
 * Where the documentation is silent, the choices are ours and are marked "Our rule".
 */
import type { InvokeOutcome } from './types.js';

/** The part of a change record the planner needs. */
export interface PlannedRecord {
  sequenceNumber: number;
  /** Commit time, epoch ms (DynamoDB's ApproximateCreationDateTime). */
  createdAt: number;
}

export interface PlanSettings {
  /** -1: retry until the record is too old (or forever). */
  maximumRetryAttempts: number;
  /** -1: no age limit. */
  maximumRecordAgeSeconds: number;
  bisectBatchOnFunctionError: boolean;
  /** `functionResponseTypes` includes `ReportBatchItemFailures`. */
  reportBatchItemFailures: boolean;
}

/** A (sub-)batch waiting to be delivered. */
export interface PendingBatch<R extends PlannedRecord> {
  records: R[];
  /** Retries already spent on these records (counted against maximumRetryAttempts). */
  retries: number;
  /** Invocations that already carried these records (for the discard report, Lambda's approximateInvokeCount). */
  invocations: number;
}

/** `RecordUnrenderable`: the record could not be rendered as a Lambda stream record (event-source-mapping.ts), so no invocation could carry it. */
export type DiscardReason = 'RetryAttemptsExhausted' | 'RecordAgeExceeded' | 'RecordUnrenderable';

/** Which records were given up, and why: what a dead-letter queue will be told. */
export interface DiscardedBatch {
  firstSequenceNumber: number;
  lastSequenceNumber: number;
  count: number;
  reason: DiscardReason;
}

export type BatchDecision<R extends PlannedRecord> =
  /** Everything delivered: checkpoint at `checkpoint`. */
  | { kind: 'success'; checkpoint: number; next: [] }
  /** Some records failed: checkpoint just before the lowest failed one (if any came before it) and retry from it. */
  | { kind: 'partial'; checkpoint: number | undefined; next: [PendingBatch<R>]; backoff: true }
  /** The whole batch failed: try it again after a backoff. */
  | { kind: 'retry'; next: [PendingBatch<R>]; backoff: true }
  /** The whole batch failed: deliver its two halves in turn, without a backoff. */
  | { kind: 'bisect'; next: [PendingBatch<R>, PendingBatch<R>] }
  /** Given up: report `discarded`, checkpoint past it, and move on. `checkpoint` may cover delivered records before it. */
  | { kind: 'discard'; checkpoint: number; discarded: DiscardedBatch; next: [] };

export function pending<R extends PlannedRecord>(records: R[]): PendingBatch<R> {
  return { records, retries: 0, invocations: 0 };
}

export function describeBatch(records: readonly PlannedRecord[], reason: DiscardReason): DiscardedBatch {
  const first = records[0];
  const last = records[records.length - 1];
  if (first === undefined || last === undefined) throw new Error('cannot describe an empty batch');
  return { firstSequenceNumber: first.sequenceNumber, lastSequenceNumber: last.sequenceNumber, count: records.length, reason };
}

/**
 * Before an invocation (the first or a retry): records older than
 * maximumRecordAgeSeconds are discarded instead of delivered. Our rule: only the
 * leading run of too-old records goes, so order is kept and the checkpoint can move
 * past them; commit times rise with the sequence number, so that is normally every
 * too-old record in the batch.
 */
export function dropExpired<R extends PlannedRecord>(batch: PendingBatch<R>, settings: PlanSettings, now: number): { discarded?: DiscardedBatch; batch: PendingBatch<R> | undefined } {
  if (settings.maximumRecordAgeSeconds < 0) return { batch };
  const oldest = now - settings.maximumRecordAgeSeconds * 1000;
  let n = 0;
  while (n < batch.records.length && (batch.records[n] as R).createdAt < oldest) n++;
  if (n === 0) return { batch };
  const discarded = describeBatch(batch.records.slice(0, n), 'RecordAgeExceeded');
  const rest = batch.records.slice(n);
  return { discarded, batch: rest.length === 0 ? undefined : { ...batch, records: rest } };
}

export type ItemFailures =
  | { kind: 'none' }
  /** Index, in the batch, of the failed record with the lowest sequence number. */
  | { kind: 'failed'; lowest: number }
  | { kind: 'invalid'; reason: string };

/**
 * Reads a `ReportBatchItemFailures` response against the batch it answers. Success: a
 * null or undefined response, an object without `batchItemFailures`, a null or empty
 * list. Invalid (the whole batch failed): an entry that is not an object, an
 * `itemIdentifier` that is missing, null, empty, not a string, or not the
 * `SequenceNumber` of a record of this batch. Our rule where AWS says nothing: a response
 * that is not an object (a string, a number, an array), or a `batchItemFailures` that is
 * not a list, is invalid too — the mapping asked for a partial-batch response, and
 * treating a malformed one as success would drop records silently.
 */
export function parseItemFailures(result: unknown, records: readonly PlannedRecord[]): ItemFailures {
  if (result === null || result === undefined) return { kind: 'none' };
  if (typeof result !== 'object' || Array.isArray(result)) return { kind: 'invalid', reason: `the response is a ${Array.isArray(result) ? 'list' : typeof result}, not an object` };
  const failures = (result as { batchItemFailures?: unknown }).batchItemFailures;
  if (failures === null || failures === undefined) return { kind: 'none' };
  if (!Array.isArray(failures)) return { kind: 'invalid', reason: 'batchItemFailures is not a list' };
  if (failures.length === 0) return { kind: 'none' };
  const index = new Map(records.map((r, i) => [String(r.sequenceNumber), i]));
  let lowest = Infinity;
  for (const f of failures as unknown[]) {
    const id = typeof f === 'object' && f !== null ? (f as { itemIdentifier?: unknown }).itemIdentifier : undefined;
    if (typeof id !== 'string' || id === '') return { kind: 'invalid', reason: `an itemIdentifier is ${id === undefined ? 'missing' : JSON.stringify(id)}, not a sequence number` };
    const i = index.get(id);
    if (i === undefined) return { kind: 'invalid', reason: `itemIdentifier ${JSON.stringify(id)} is not a sequence number of the batch` };
    lowest = Math.min(lowest, i);
  }
  return { kind: 'failed', lowest };
}

function exhausted(retries: number, settings: PlanSettings): boolean {
  return settings.maximumRetryAttempts >= 0 && retries >= settings.maximumRetryAttempts;
}

/**
 * The next step after `batch` was delivered once (`batch.invocations` does not yet
 * count that delivery) and the function answered `outcome`.
 *
 * Counting (our reading of "splitting batches doesn't consume the retry quota"; AWS does
 * not document the rest): the count belongs to the first record of the (sub-)batch. A
 * failure that leads to a bisection is free and both halves keep the parent's count; a
 * failure that cannot be split (one record, or bisection off) spends one retry. A partial
 * failure at the first record spends one retry too; a partial failure further on is
 * progress, so the count starts afresh for the failed record, which becomes the first one
 * (it has failed once: its next delivery is its first retry). Once the quota is spent the
 * failing records are discarded: the whole batch for a complete failure, the records from
 * the lowest failed one on for a partial one. Bisection ends at single records, so a poison record is
 * isolated after log2(batch size) free splits and then retried maximumRetryAttempts
 * times on its own.
 */
export function planAfterInvoke<R extends PlannedRecord>(batch: PendingBatch<R>, outcome: InvokeOutcome, settings: PlanSettings): BatchDecision<R> {
  const records = batch.records;
  const last = records[records.length - 1];
  if (last === undefined) throw new Error('cannot plan an empty batch');
  const invocations = batch.invocations + 1;

  let failures: ItemFailures = { kind: 'none' };
  if (outcome.status !== 'ok') failures = { kind: 'invalid', reason: outcome.status };
  else if (settings.reportBatchItemFailures) failures = parseItemFailures(outcome.result, records);

  if (failures.kind === 'none') return { kind: 'success', checkpoint: last.sequenceNumber, next: [] };

  if (failures.kind === 'failed') {
    const failed = records.slice(failures.lowest);
    const before = failures.lowest > 0 ? (records[failures.lowest - 1] as R).sequenceNumber : undefined;
    // Progress (a failure after the first record) starts the count afresh for the new first record.
    const spent = failures.lowest > 0 ? 0 : batch.retries;
    if (exhausted(spent, settings)) return { kind: 'discard', checkpoint: last.sequenceNumber, discarded: describeBatch(failed, 'RetryAttemptsExhausted'), next: [] };
    return { kind: 'partial', checkpoint: before, next: [{ records: failed, retries: spent + 1, invocations }], backoff: true };
  }

  // A complete failure: an error, timeout or crash, or an invalid partial-batch response.
  if (settings.bisectBatchOnFunctionError && records.length > 1) {
    const half = Math.ceil(records.length / 2);
    return {
      kind: 'bisect',
      next: [
        { records: records.slice(0, half), retries: batch.retries, invocations },
        { records: records.slice(half), retries: batch.retries, invocations },
      ],
    };
  }
  if (exhausted(batch.retries, settings)) return { kind: 'discard', checkpoint: last.sequenceNumber, discarded: describeBatch(records, 'RetryAttemptsExhausted'), next: [] };
  return { kind: 'retry', next: [{ records, retries: batch.retries + 1, invocations }], backoff: true };
}

/** Why a trigger's retry settings are unacceptable, in Lambda's ranges; empty when they are fine. */
export function retrySettingProblems(settings: Pick<PlanSettings, 'maximumRetryAttempts' | 'maximumRecordAgeSeconds'>): string[] {
  const problems: string[] = [];
  const { maximumRetryAttempts: retries, maximumRecordAgeSeconds: age } = settings;
  if (!Number.isInteger(retries) || retries < -1 || retries > 10_000) problems.push('maximumRetryAttempts must be -1 (infinite) or an integer from 0 to 10000');
  if (!Number.isInteger(age) || (age !== -1 && (age < 60 || age > 604_800))) problems.push('maximumRecordAgeSeconds must be -1 (infinite) or an integer from 60 to 604800');
  return problems;
}

import type { Logger } from '../core/logger.js';
import type { Metrics } from '../core/metrics.js';
import { toStreamRecord } from '../streams/lambda-event.js';
import type { ChangeLog, ChangeRecord } from '../streams/types.js';
import { dropExpired, pending, planAfterInvoke, type DiscardedBatch, type PendingBatch, type PlanSettings } from './batch-plan.js';
import type { CheckpointStore } from './checkpoints.js';
import { compileFilterCriteria, type FilterCriteria, type RecordFilter } from './filter-pattern.js';
import type { FunctionRuntime, FunctionSpec, InvokeResult } from './types.js';

/** Lambda's event source mapping settings for a stream, camel-cased. */
export interface TriggerConfig {
  id: string;
  batchSize: number;
  /** Where a mapping that has no checkpoint yet starts. */
  startingPosition: 'TRIM_HORIZON' | 'LATEST';
  /**
   * Retries of a failing batch before it is given up. Lambda's default (-1, forever)
   * lets one poison record block a shard for the whole retention; ours is finite.
   */
  maximumRetryAttempts: number;
  /**
   * Lambda's BisectBatchOnFunctionError: a batch that fails as a whole is split in two
   * and each half retried, down to single records; splitting does not spend a retry.
   * Default false.
   */
  bisectBatchOnFunctionError?: boolean;
  /**
   * Lambda's FunctionResponseTypes: with `ReportBatchItemFailures` the handler may return
   * `{ batchItemFailures: [{ itemIdentifier: "<SequenceNumber>" }] }` and the mapping
   * checkpoints before the lowest failed record and retries from it. Default [] (the
   * response is ignored, as in Lambda).
   */
  functionResponseTypes?: Array<'ReportBatchItemFailures'>;
  /**
   * Lambda's MaximumRecordAgeInSeconds: -1 (the default, as in Lambda) for no limit, or
   * 60..604800; older records are discarded instead of delivered. We keep Lambda's
   * infinite default: retries are already finite (maximumRetryAttempts), and a finite age
   * would make a server that was down longer than it drop its backlog undelivered.
   */
  maximumRecordAgeSeconds?: number;
  /**
   * Lambda's FilterCriteria: records that match none of the patterns are not sent to the
   * function, but the checkpoint still moves past them (as in Lambda, they are dropped).
   * Absent or no filters: every record is delivered.
   */
  filterCriteria?: FilterCriteria;
}

export const DEFAULT_TRIGGER: Omit<TriggerConfig, 'id'> = {
  batchSize: 100,
  startingPosition: 'LATEST',
  maximumRetryAttempts: 3,
  bisectBatchOnFunctionError: false,
  functionResponseTypes: [],
  maximumRecordAgeSeconds: -1,
};

/** The planner's view of a trigger, with the defaults filled in. */
export function planSettings(trigger: TriggerConfig): PlanSettings {
  return {
    maximumRetryAttempts: trigger.maximumRetryAttempts,
    maximumRecordAgeSeconds: trigger.maximumRecordAgeSeconds ?? -1,
    bisectBatchOnFunctionError: trigger.bisectBatchOnFunctionError ?? false,
    reportBatchItemFailures: (trigger.functionResponseTypes ?? []).includes('ReportBatchItemFailures'),
  };
}

/**
 * What is known of records the mapping gave up on: Lambda's on-failure destination gets
 * this kind of metadata for streams (not the records; they stay in the log until
 * retention, addressable by shard and sequence numbers).
 */
export interface DiscardMetadata extends DiscardedBatch {
  function: string;
  functionVersion: number;
  triggerId: string;
  shard: number;
  streamArn: string;
  /** Commit times of the first and last discarded records, epoch ms. */
  firstRecordAt: number;
  lastRecordAt: number;
  /** Invocations that carried the discarded records (Lambda's approximateInvokeCount); 0 when they expired before their first. */
  invocations: number;
  /** The last invocation's outcome, when there was one. */
  lastOutcome?: InvokeResult['outcome'];
  /** When the records were given up, epoch ms. */
  discardedAt: number;
}

export interface MappingDeps {
  log: ChangeLog;
  runtime: FunctionRuntime;
  checkpoints: CheckpointStore;
  logger: Logger;
  metrics: Metrics;
  /**
   * Told about every discarded batch (the dead-letter queue plugs in here). Called before
   * the checkpoint moves past the records; if it throws, the poller logs, backs off and
   * delivers from the checkpoint again.
   */
  onDiscard?: (metadata: DiscardMetadata) => void | Promise<void>;
}

const RETRY_BASE_MS = 100;
const RETRY_MAX_MS = 5000;

/**
 * Feeds one function from the change stream: a poller per shard reads batches after
 * the shard's checkpoint, invokes the function with the DynamoDB stream event, and
 * moves the durable checkpoint only after the function succeeded. Delivery is
 * therefore at-least-once: a crash between a successful invocation and its
 * checkpoint write hands that batch to the function again after restart.
 */
export class EventSourceMapping {
  private readonly pollers: ShardPoller[] = [];
  private unsubscribe: (() => void) | undefined;
  /** The compiled `filterCriteria` (throws a ValidationError at construction if they are invalid). */
  readonly filter: RecordFilter;

  constructor(
    readonly fn: FunctionSpec,
    readonly trigger: TriggerConfig,
    private readonly deps: MappingDeps,
  ) {
    this.filter = compileFilterCriteria(trigger.filterCriteria);
  }

  async start(): Promise<void> {
    const { log, checkpoints } = this.deps;
    const shards = await log.shards();
    for (const s of shards) {
      let position = await checkpoints.get(this.fn.name, this.trigger.id, s.shard);
      if (position === undefined) {
        position = this.trigger.startingPosition === 'LATEST' ? (s.lastSequenceNumber ?? 0) : 0;
        await checkpoints.set(this.fn.name, this.trigger.id, s.shard, position);
      }
      this.pollers.push(new ShardPoller(this, s.shard, position, this.deps));
    }
    this.unsubscribe = log.onCommit((records) => {
      for (const r of records) this.pollers[r.shard]?.wake();
    });
    for (const p of this.pollers) p.run();
  }

  async stop(): Promise<void> {
    this.unsubscribe?.();
    await Promise.all(this.pollers.map((p) => p.stop()));
  }
}

class ShardPoller {
  private running = true;
  private wakeUp: (() => void) | undefined;
  private pending = false;
  /** Ends a retry backoff early, so that stop() need not wait it out. */
  private cutBackoff: (() => void) | undefined;
  private done: Promise<void> = Promise.resolve();

  constructor(
    private readonly mapping: EventSourceMapping,
    private readonly shard: number,
    private position: number,
    private readonly deps: MappingDeps,
  ) {}

  wake(): void {
    this.pending = true;
    this.wakeUp?.();
  }

  run(): void {
    this.done = this.loop().catch((err: unknown) => {
      this.deps.logger.error({ err, function: this.mapping.fn.name, shard: this.shard }, 'stream poller stopped by an unexpected error');
    });
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wakeUp?.();
    this.cutBackoff?.();
    await this.done;
  }

  private async loop(): Promise<void> {
    const { log } = this.deps;
    for (let failures = 0; this.running; ) {
      try {
        this.pending = false;
        const records = await log.read(this.shard, this.position, this.mapping.trigger.batchSize);
        if (records.length === 0) {
          // Re-check `running`: stop() may have come while the read was in flight, when there was no wakeUp to call.
          if (!this.pending && this.running) await new Promise<void>((resolve) => (this.wakeUp = resolve));
          this.wakeUp = undefined;
          continue;
        }
        // Filtered-out records are finished without an invocation: once everything read
        // before them is delivered, the checkpoint moves past them.
        const { streamArn } = log;
        const matching = this.mapping.trigger.filterCriteria === undefined ? records : records.filter((r) => this.mapping.filter(toStreamRecord(r, streamArn)));
        const finished = matching.length === 0 ? true : await this.deliver(matching);
        if (finished && this.running) await this.checkpoint((records[records.length - 1] as ChangeRecord).sequenceNumber);
        failures = 0;
      } catch (err) {
        // A read, invoke or checkpoint that fails (a full disk, a closing runtime) must not
        // silence the shard for good: log, back off, try again.
        this.deps.logger.error({ err, function: this.mapping.fn.name, shard: this.shard }, 'stream poller error; retrying');
        await this.pause(Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** failures++));
      }
    }
  }

  /** Waits `ms`, or less if stop() comes first. */
  private async pause(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.cutBackoff = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    this.cutBackoff = undefined;
  }

  /**
   * Delivers one batch read from the checkpoint, following the planner
   * (`batch-plan.ts`): retries with backoff, bisection, partial-batch responses, and
   * discards by age or exhausted retries. Sub-batches are delivered strictly in order,
   * and the checkpoint only moves forward over records that are finished (delivered or
   * discarded), so per-shard order holds. True when every record was finished (false when
   * stopped with work left).
   */
  private async deliver(records: ChangeRecord[]): Promise<boolean> {
    const { fn, trigger } = this.mapping;
    const { runtime, metrics, log } = this.deps;
    const settings = planSettings(trigger);
    const queue: Array<PendingBatch<ChangeRecord>> = [pending(records)];
    // Stopped with work left: leave the checkpoint, the next start delivers from it.
    // A finished invocation is acted on even while stopping, or every graceful stop
    // would redeliver the batch in flight.
    while (this.running) {
      let batch = queue.shift();
      if (batch === undefined) return true;
      const fresh = dropExpired(batch, settings, Date.now());
      if (fresh.discarded) {
        const discarded = batch.records.slice(0, fresh.discarded.count);
        await this.discard(fresh.discarded, discarded, batch.invocations, undefined);
        await this.checkpoint(fresh.discarded.lastSequenceNumber);
      }
      if (fresh.batch === undefined) continue;
      batch = fresh.batch;
      const last = batch.records[batch.records.length - 1] as ChangeRecord;
      metrics.functionIteratorAge.observe({ function: fn.name }, (Date.now() - last.createdAt) / 1000);
      const event = { Records: batch.records.map((r) => toStreamRecord(r, log.streamArn)) };
      const result = await runtime.invoke(fn, event);
      this.record(result);
      const decision = planAfterInvoke(batch, result.outcome, settings);
      if (decision.kind === 'discard') {
        const first = batch.records.findIndex((r) => r.sequenceNumber === decision.discarded.firstSequenceNumber);
        await this.discard(decision.discarded, batch.records.slice(first), batch.invocations + 1, result.outcome);
      }
      if (decision.kind === 'bisect') {
        this.deps.logger.warn(
          { function: fn.name, shard: this.shard, firstSequenceNumber: batch.records[0]?.sequenceNumber, lastSequenceNumber: last.sequenceNumber, halves: decision.next.map((b) => b.records.length) },
          'function failed; bisecting the batch',
        );
      }
      if (decision.kind !== 'bisect' && decision.kind !== 'retry' && decision.checkpoint !== undefined) await this.checkpoint(decision.checkpoint);
      queue.unshift(...decision.next);
      if (decision.kind === 'retry' || decision.kind === 'partial') {
        const retry = decision.next[0].retries;
        await this.pause(Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** (retry - 1)));
      }
    }
    return queue.length === 0;
  }

  private async checkpoint(sequenceNumber: number): Promise<void> {
    const { fn, trigger } = this.mapping;
    if (sequenceNumber <= this.position) return;
    // Finished records are not delivered again by this poller even if the durable write
    // fails: the next checkpoint write covers them (only a restart in between redelivers).
    this.position = sequenceNumber;
    await this.deps.checkpoints.set(fn.name, trigger.id, this.shard, sequenceNumber);
  }

  private async discard(discarded: DiscardedBatch, records: ChangeRecord[], invocations: number, lastOutcome: InvokeResult['outcome'] | undefined): Promise<void> {
    const { fn, trigger } = this.mapping;
    const { logger, log, onDiscard } = this.deps;
    const metadata: DiscardMetadata = {
      ...discarded,
      function: fn.name,
      functionVersion: fn.version,
      triggerId: trigger.id,
      shard: this.shard,
      streamArn: log.streamArn,
      firstRecordAt: (records[0] as ChangeRecord).createdAt,
      lastRecordAt: (records[records.length - 1] as ChangeRecord).createdAt,
      invocations,
      discardedAt: Date.now(),
    };
    if (lastOutcome !== undefined) metadata.lastOutcome = lastOutcome;
    const why = discarded.reason === 'RecordAgeExceeded' ? 'older than maximumRecordAgeSeconds' : `function failed ${invocations} times`;
    logger.error({ discarded: metadata }, `${why}; discarding ${discarded.count} record(s)`);
    await onDiscard?.(metadata);
  }

  private record(result: InvokeResult): void {
    const { fn } = this.mapping;
    const { logger, metrics } = this.deps;
    metrics.functionInvocations.inc({ function: fn.name, outcome: result.outcome.status });
    metrics.functionDuration.observe({ function: fn.name }, result.durationMs / 1000);
    const fnLogger = logger.child({ function: fn.name, requestId: result.requestId });
    for (const line of result.logs) fnLogger[line.level]({ ts: line.ts }, line.message);
    if (result.outcome.status !== 'ok') fnLogger.warn({ outcome: result.outcome }, 'function invocation failed');
  }
}

import { createHash } from 'node:crypto';
import { isTributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Metrics } from '../core/metrics.js';
import { toStreamRecord, type DynamoDBStreamRecord } from '../streams/lambda-event.js';
import type { ChangeLog, ChangeRecord, ShardInfo } from '../streams/types.js';
import { describeBatch, dropExpired, pending, planAfterInvoke, type DiscardedBatch, type PendingBatch, type PlanSettings } from './batch-plan.js';
import type { Checkpoint, CheckpointStore, WindowState } from './checkpoints.js';
import { compileFilterCriteria, type FilterCriteria, type RecordFilter } from './filter-pattern.js';
import type { FunctionRuntime, FunctionSpec, InvokeOutcome, InvokeResult, ShardPlacement } from './types.js';

/** Lambda's event source mapping settings for a stream, camel-cased. */
export interface TriggerConfig {
  id: string;
  batchSize: number;
  /**
   * Lambda's MaximumBatchingWindowInSeconds, in ms: with fewer than a full read
   * (batchSize × parallelizationFactor records) waiting, the poller gathers records for up
   * to this long before it invokes. 0 (the default, as in Lambda for streams): invoke with
   * whatever is there.
   */
  maximumBatchingWindowMs?: number;
  /**
   * Where a shard that has no checkpoint yet starts (at the mapping's start, or when the
   * node gains the shard in cluster mode). AT_TIMESTAMP: just before the first record
   * committed at or after `startingPositionTimestamp`, or at the end when there is none.
   */
  startingPosition: 'TRIM_HORIZON' | 'LATEST' | 'AT_TIMESTAMP';
  /** Epoch ms, with AT_TIMESTAMP. */
  startingPositionTimestamp?: number;
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
  /**
   * Lambda's ParallelizationFactor (1..10, default 1): up to this many batches of a shard
   * are in flight at once, each holding the records of a subset of the shard's devices,
   * so a device's records stay in order. The shard's checkpoint moves once every batch
   * of a read is finished.
   */
  parallelizationFactor?: number;
  /**
   * Lambda's TumblingWindowInSeconds (0..900, default 0 = none): records are grouped into
   * fixed windows of their commit time; each invocation gets the `state` the previous
   * one returned, and after the window a final invocation has `isFinalInvokeForWindow`.
   */
  tumblingWindowSeconds?: number;
}

export const DEFAULT_TRIGGER = {
  batchSize: 100,
  maximumBatchingWindowMs: 0,
  startingPosition: 'LATEST',
  maximumRetryAttempts: 3,
  bisectBatchOnFunctionError: false,
  functionResponseTypes: [],
  maximumRecordAgeSeconds: -1,
  parallelizationFactor: 1,
  tumblingWindowSeconds: 0,
} satisfies Omit<TriggerConfig, 'id'>;

/**
 * A chain of `context.put` writes stops after this many functions (Lambda's recursive
 * loop detection stops a loop after about 16 invocations).
 */
export const MAX_WRITE_HOPS = 16;

/** Lambda ends a tumbling window early when its state passes 1 MB. */
export const MAX_WINDOW_STATE_BYTES = 1024 * 1024;

/**
 * How long after its end a tumbling window with no later record waits before its final
 * invocation: a record is stamped when its batch is staged and readable only once the
 * batch is synced, so one stamped just before the end can become readable just after it.
 */
export const WINDOW_CLOSE_GRACE_MS = 1000;

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
  /**
   * Which shards to poll (cluster mode); without one, every shard. When it changes, the
   * pollers of shards lost stop (their batch in flight and its checkpoint write finish
   * first) and pollers of shards gained start from the checkpoint stored at that moment.
   */
  placement?: ShardPlacement;
}

const RETRY_BASE_MS = 100;
const RETRY_MAX_MS = 5000;

function backoff(attempt: number): number {
  return Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt);
}

const noop = (): void => {};

/**
 * The batch lane of a device under parallelizationFactor. Not `shardOf`: every device of
 * a shard has the same FNV hash modulo the shard count, so with a factor sharing a divisor
 * with it, lanes derived from that hash would leave some lanes empty.
 */
export function laneOf(deviceId: string, factor: number): number {
  return factor === 1 ? 0 : createHash('md5').update(deviceId).digest().readUInt32BE(0) % factor;
}

/** Why a record is moved past without being delivered, or undefined to deliver it. */
/** `unrenderable`: the record cannot be rendered as a Lambda stream record; it goes to the dead-letter queue instead. */
export type SkipReason = 'filtered' | 'own_write' | 'hop_limit' | 'unrenderable';

/**
 * Feeds one function from the change stream: a poller per shard reads batches after
 * the shard's checkpoint, invokes the function with the DynamoDB stream event, and
 * moves the durable checkpoint only after the function succeeded. Delivery is
 * therefore at-least-once: a crash between a successful invocation and its
 * checkpoint write hands that batch to the function again after restart. With a
 * placement (cluster mode) it polls only the shards this node owns; a shard that moves
 * to another node goes on there from the checkpoint it finds (if it reads it before
 * this node's last write lands, a batch is delivered twice).
 */
export class EventSourceMapping {
  /** The running pollers by shard (one of a lost shard stays until it has stopped). */
  private readonly pollers = new Map<number, ShardPoller>();
  private readonly unsubscribe: Array<() => void> = [];
  /** The placement changes, applied one after another (never rejects). */
  private changes: Promise<void> = Promise.resolve();
  /** The retry of a placement change that failed (a checkpoint read while Kafka was unreachable). */
  private retryTimer: NodeJS.Timeout | undefined;
  private retries = 0;
  private stopped = false;
  /** The compiled `filterCriteria` (throws a ValidationError at construction if they are invalid). */
  readonly filter: RecordFilter;
  /** Metric labels of this mapping. */
  readonly labels: { function: string; trigger: string };

  constructor(
    readonly fn: FunctionSpec,
    readonly trigger: TriggerConfig,
    private readonly deps: MappingDeps,
  ) {
    this.filter = compileFilterCriteria(trigger.filterCriteria);
    this.labels = { function: fn.name, trigger: trigger.id };
  }

  /**
   * Starts a poller per shard (with a placement: per shard it owns now) and from then on
   * follows the placement. Throws what reading the shards or a checkpoint throws, with
   * nothing left running.
   */
  async start(): Promise<void> {
    const { log, placement } = this.deps;
    this.unsubscribe.push(
      log.onCommit((records) => {
        for (const r of records) this.pollers.get(r.shard)?.wake();
      }),
    );
    // Subscribed before the first reconcile reads owned(), so that no change falls in between.
    if (placement !== undefined) this.unsubscribe.push(placement.onChange(() => this.placementChanged()));
    try {
      await this.enqueue();
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  /** Stops every poller, and a placement change in progress, waiting for batches in flight and their checkpoints. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    for (const unsubscribe of this.unsubscribe.splice(0)) unsubscribe();
    const all = [...this.pollers.values()];
    this.pollers.clear();
    // A change in progress sees `stopped` after its current step and starts no poller.
    await Promise.all([this.changes, ...all.map((p) => p.stop())]);
  }

  /** The shards this mapping polls now, ascending (a lost shard's until its poller has stopped). */
  shards(): number[] {
    return [...this.pollers.keys()].sort((a, b) => a - b);
  }

  private wants(shard: number): boolean {
    return this.deps.placement === undefined || this.deps.placement.owned().includes(shard);
  }

  private enqueue(): Promise<void> {
    const run = this.changes.then(() => this.reconcile());
    this.changes = run.catch(noop);
    return run;
  }

  /** Follows a placement change; one that fails is retried with backoff (the next change retries it too). */
  private placementChanged(): void {
    clearTimeout(this.retryTimer);
    this.enqueue().then(
      () => {
        this.retries = 0;
      },
      (err: unknown) => {
        if (this.stopped) return;
        this.deps.logger.error({ err, ...this.labels, owned: this.deps.placement?.owned() }, 'following a shard placement change failed; retrying');
        clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => this.placementChanged(), backoff(this.retries++));
      },
    );
  }

  /**
   * Makes the pollers match the placement: stops those of shards not owned (as stop()
   * does: the next owner reads the checkpoint they write last), then starts one for each
   * owned shard that has none.
   */
  private async reconcile(): Promise<void> {
    const lost = [...this.pollers].filter(([shard]) => !this.wants(shard));
    await Promise.all(
      lost.map(async ([shard, poller]) => {
        await poller.stop();
        if (this.pollers.get(shard) === poller) this.pollers.delete(shard);
      }),
    );
    if (this.stopped) return;
    for (const info of await this.deps.log.shards()) {
      if (this.stopped) return;
      if (this.pollers.has(info.shard) || !this.wants(info.shard)) continue;
      const poller = await this.openPoller(info);
      if (this.stopped) return;
      this.pollers.set(info.shard, poller);
      poller.run();
    }
  }

  /**
   * A poller for a shard from its checkpoint and window as stored now (another node may
   * have moved them), or, when it has none, from the trigger's starting position, which
   * is saved at once (so a LATEST start does not move on with every restart).
   */
  private async openPoller(s: ShardInfo): Promise<ShardPoller> {
    const { checkpoints } = this.deps;
    let saved: Checkpoint | undefined = await checkpoints.read(this.fn.name, this.trigger.id, s.shard);
    if (saved === undefined) {
      saved = { sequenceNumber: await this.startingPosition(s) };
      await checkpoints.set(this.fn.name, this.trigger.id, s.shard, saved.sequenceNumber);
    }
    const window = (this.trigger.tumblingWindowSeconds ?? 0) > 0 ? saved.window : undefined;
    return new ShardPoller(this, s.shard, s.shardId, saved.sequenceNumber, window, this.deps);
  }

  /** The sequence number just before the first record a shard with no checkpoint delivers. */
  private async startingPosition(s: ShardInfo): Promise<number> {
    const { startingPosition, startingPositionTimestamp } = this.trigger;
    if (startingPosition === 'AT_TIMESTAMP' && startingPositionTimestamp !== undefined) {
      const [first] = await this.deps.log.readFromTime(s.shard, startingPositionTimestamp, 1);
      if (first !== undefined) return Math.max(0, first.sequenceNumber - 1);
    }
    // TRIM_HORIZON: just before the oldest record still retained.
    return startingPosition === 'TRIM_HORIZON' ? Math.max(0, (s.firstSequenceNumber ?? 1) - 1) : (s.lastSequenceNumber ?? 0);
  }

  /** Why `record` is not delivered (see {@link SkipReason}), or undefined. */
  skipReason(record: ChangeRecord, rendered: () => unknown): SkipReason | undefined {
    // Guards against a handler re-triggering itself: its own writes never come back to
    // it, and a chain through several functions ends after MAX_WRITE_HOPS writes.
    if (record.origin?.function === this.fn.name) return 'own_write';
    if (record.origin !== undefined && record.origin.hops >= MAX_WRITE_HOPS) return 'hop_limit';
    if (this.trigger.filterCriteria !== undefined && !this.filter(rendered())) return 'filtered';
    return undefined;
  }
}

class ShardPoller {
  private running = true;
  private wakeUp: (() => void) | undefined;
  private pending = false;
  /** End the retry backoffs in progress early (several with parallel batches), so that stop() need not wait them out. */
  private readonly cutBackoff = new Set<() => void>();
  private done: Promise<void> = Promise.resolve();
  /** The last checkpoint write (never rejects: failures are logged); stop() waits for it. */
  private saved: Promise<void> = Promise.resolve();
  /**
   * Records rendered as Lambda stream records, the poller's costliest step: rendered once
   * whether the filter, the first invocation or its retries and bisections need it.
   */
  private readonly rendered = new WeakMap<ChangeRecord, DynamoDBStreamRecord>();
  /** The first record of the last read checked for a gap (so a gap is counted once, however often it is read again). */
  private trimReportedTo = 0;
  private readonly windowMs: number;

  constructor(
    private readonly mapping: EventSourceMapping,
    private readonly shard: number,
    private readonly shardId: string,
    private position: number,
    /** The open tumbling window, if any. */
    private window: WindowState | undefined,
    private readonly deps: MappingDeps,
  ) {
    this.windowMs = (mapping.trigger.tumblingWindowSeconds ?? 0) * 1000;
  }

  wake(): void {
    this.pending = true;
    this.wakeUp?.();
  }

  run(): void {
    this.done = this.loop().catch((err: unknown) => {
      this.deps.logger.error({ err, ...this.mapping.labels, shard: this.shard }, 'stream poller stopped by an unexpected error');
    });
  }

  async stop(): Promise<void> {
    this.running = false;
    this.wakeUp?.();
    for (const cut of this.cutBackoff) cut();
    await this.done;
    await this.saved;
  }

  private async loop(): Promise<void> {
    for (let failures = 0; this.running; ) {
      try {
        let records = await this.readBatch();
        if (this.window !== undefined && this.windowOver(records[0])) {
          await this.closeWindow(false);
          failures = 0;
          continue;
        }
        if (records.length === 0) {
          await this.idle(this.window === undefined ? undefined : this.window.start + this.windowMs + WINDOW_CLOSE_GRACE_MS);
          continue;
        }
        await this.reportTrimmed(records[0] as ChangeRecord);
        // A batch never spans two tumbling windows.
        if (this.windowMs > 0) records = this.sameWindow(records);
        // Skipped records are finished without an invocation: once everything read before
        // them is delivered, the checkpoint moves past them.
        const matching = await this.select(records);
        const finished = matching.length === 0 ? true : await this.deliverAll(matching);
        if (finished && this.running) this.checkpoint((records[records.length - 1] as ChangeRecord).sequenceNumber);
        failures = 0;
      } catch (err) {
        // A read, invoke or checkpoint that fails (a full disk, a closing runtime) must not
        // silence the shard for good: log, back off, try again.
        this.deps.logger.error({ err, ...this.mapping.labels, shard: this.shard }, 'stream poller error; retrying');
        await this.pause(backoff(failures++));
      }
    }
  }

  /**
   * Up to batchSize × parallelizationFactor records after the checkpoint; with a
   * batching window and fewer records than that, keeps gathering until the read is full
   * or the window has passed.
   */
  private async readBatch(): Promise<ChangeRecord[]> {
    const { trigger } = this.mapping;
    const { log } = this.deps;
    const limit = trigger.batchSize * (trigger.parallelizationFactor ?? 1);
    this.pending = false;
    const records = await log.read(this.shard, this.position, limit);
    const windowMs = trigger.maximumBatchingWindowMs ?? 0;
    if (windowMs === 0 || records.length === 0) return records;
    const deadline = Date.now() + windowMs;
    while (this.running && records.length < limit && Date.now() < deadline) {
      await this.idle(deadline);
      this.pending = false;
      records.push(...(await log.read(this.shard, (records[records.length - 1] as ChangeRecord).sequenceNumber, limit - records.length)));
    }
    return records;
  }

  /** Waits until a commit wakes the poller, `until` (epoch ms) passes, or stop(). */
  private async idle(until?: number): Promise<void> {
    // Re-check `running`: stop() may have come while a read was in flight, when there was no wakeUp to call.
    if (this.pending || !this.running) return;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      this.wakeUp = resolve;
      if (until !== undefined) timer = setTimeout(resolve, Math.max(0, until - Date.now()));
    });
    clearTimeout(timer);
    this.wakeUp = undefined;
  }

  /** Waits `ms`, or less if stop() comes first. */
  private async pause(ms: number): Promise<void> {
    let cut: (() => void) | undefined;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      cut = () => {
        clearTimeout(timer);
        resolve();
      };
      this.cutBackoff.add(cut);
    });
    if (cut) this.cutBackoff.delete(cut);
  }

  /**
   * Records removed by retention before this mapping got to them are lost for it, as with
   * DynamoDB Streams past 24 hours: the poller continues at the oldest retained record (the
   * log's read already starts there), and says so in a warning and a metric.
   */
  private async reportTrimmed(first: ChangeRecord): Promise<void> {
    if (first.sequenceNumber <= this.position + 1 || first.sequenceNumber <= this.trimReportedTo) return;
    // Sequence numbers are gap-free in the embedded log, but only a trim counts as a loss.
    const info = (await this.deps.log.shards()).find((s) => s.shard === this.shard);
    const retained = Math.min(first.sequenceNumber, info?.firstSequenceNumber ?? first.sequenceNumber);
    this.trimReportedTo = first.sequenceNumber;
    const lost = retained - this.position - 1;
    if (lost <= 0) return;
    this.deps.metrics.mappingTrimmed.inc(this.mapping.labels, lost);
    this.deps.logger.warn(
      { ...this.mapping.labels, shard: this.shard, checkpoint: this.position, firstRetained: retained, lost },
      `${lost} record(s) after the checkpoint were removed by stream retention before delivery; continuing at the oldest retained record`,
    );
  }

  /**
   * The records to deliver; the others are counted by reason. A record that cannot be
   * rendered would fail every batch it is in, forever: it goes to the dead-letter queue
   * with the error (before the checkpoint can pass it), and the shard goes on.
   */
  private async select(records: ChangeRecord[]): Promise<ChangeRecord[]> {
    const { metrics, logger } = this.deps;
    const matching: ChangeRecord[] = [];
    const skipped = new Map<SkipReason, number>();
    const unrenderable: Array<{ record: ChangeRecord; err: unknown }> = [];
    for (const r of records) {
      let reason: SkipReason | undefined;
      try {
        reason = this.mapping.skipReason(r, () => this.render(r));
        if (reason === undefined) this.render(r);
      } catch (err) {
        reason = 'unrenderable';
        unrenderable.push({ record: r, err });
      }
      if (reason === undefined) matching.push(r);
      else skipped.set(reason, (skipped.get(reason) ?? 0) + 1);
    }
    for (const { record, err } of unrenderable) {
      const outcome: InvokeOutcome = { status: 'error', errorType: 'RecordRenderError', errorMessage: err instanceof Error ? err.message : String(err) };
      await this.discard(describeBatch([record], 'RecordUnrenderable'), [record], 0, outcome);
    }
    for (const [reason, n] of skipped) metrics.mappingSkipped.inc({ ...this.mapping.labels, reason }, n);
    const hopLimited = skipped.get('hop_limit');
    if (hopLimited !== undefined) {
      logger.warn({ ...this.mapping.labels, shard: this.shard, records: hopLimited, maxHops: MAX_WRITE_HOPS }, 'records written by a chain of more than the maximum context.put writes are not delivered (a function loop?)');
    }
    return matching;
  }

  private render(r: ChangeRecord): DynamoDBStreamRecord {
    let rendered = this.rendered.get(r);
    if (rendered === undefined) {
      rendered = toStreamRecord(r, this.deps.log.streamArn);
      this.rendered.set(r, rendered);
    }
    return rendered;
  }

  private windowStartOf(r: ChangeRecord): number {
    return Math.floor(r.createdAt / this.windowMs) * this.windowMs;
  }

  /** The leading records that belong to the same tumbling window as the first one. */
  private sameWindow(records: ChangeRecord[]): ChangeRecord[] {
    const start = this.windowStartOf(records[0] as ChangeRecord);
    const n = records.findIndex((r) => this.windowStartOf(r) !== start);
    return n < 0 ? records : records.slice(0, n);
  }

  /** The open window is complete: the next record belongs to a later one, or none came in time. */
  private windowOver(next: ChangeRecord | undefined): boolean {
    const w = this.window as WindowState;
    return next === undefined ? Date.now() >= w.start + this.windowMs + WINDOW_CLOSE_GRACE_MS : this.windowStartOf(next) !== w.start;
  }

  /**
   * Delivers the matching records of one read: one batch, or with a parallelization
   * factor, one lane per group of devices, the lanes concurrently, each lane's batches in
   * order. Lanes do not checkpoint on their own (the checkpoint is one number per shard);
   * the caller checkpoints once every lane is finished.
   */
  private async deliverAll(records: ChangeRecord[]): Promise<boolean> {
    const { batchSize, parallelizationFactor: factor = 1 } = this.mapping.trigger;
    if (factor === 1) return this.deliver(records, true);
    const lanes = new Map<number, ChangeRecord[]>();
    for (const r of records) {
      const lane = laneOf(r.deviceId, factor);
      const list = lanes.get(lane);
      if (list === undefined) lanes.set(lane, [r]);
      else list.push(r);
    }
    const results = await Promise.allSettled(
      [...lanes.values()].map(async (lane) => {
        for (let i = 0; i < lane.length; i += batchSize) {
          if (!(await this.deliver(lane.slice(i, i + batchSize), false))) return false;
        }
        return true;
      }),
    );
    // Only once every lane has settled: a retry must not start while a lane still runs.
    for (const r of results) if (r.status === 'rejected') throw r.reason;
    return results.every((r) => r.status === 'fulfilled' && r.value);
  }

  /**
   * Delivers one batch read from the checkpoint, following the planner
   * (`batch-plan.ts`): retries with backoff, bisection, partial-batch responses, and
   * discards by age or exhausted retries. Sub-batches are delivered strictly in order,
   * and (when `checkpointing`) the checkpoint only moves forward over records that are
   * finished (delivered or discarded), so per-shard order holds. True when every record
   * was finished (false when stopped with work left).
   */
  private async deliver(records: ChangeRecord[], checkpointing: boolean): Promise<boolean> {
    const settings = planSettings(this.mapping.trigger);
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
        if (checkpointing) this.checkpoint(fresh.discarded.lastSequenceNumber);
      }
      if (fresh.batch === undefined) continue;
      batch = fresh.batch;
      if (this.windowMs > 0) this.window ??= { start: this.windowStartOf(batch.records[0] as ChangeRecord), state: {} };
      const result = await this.invoke(batch.records, false, false);
      if (result === undefined) {
        queue.unshift(batch);
        break;
      }
      const outcome = this.windowMs > 0 ? windowOutcome(result.outcome) : result.outcome;
      const decision = planAfterInvoke(batch, outcome, settings);
      if (decision.kind === 'discard') {
        const first = batch.records.findIndex((r) => r.sequenceNumber === decision.discarded.firstSequenceNumber);
        await this.discard(decision.discarded, batch.records.slice(first), batch.invocations + 1, outcome, result.functionVersion);
      }
      if (decision.kind === 'bisect') {
        this.deps.logger.warn(
          { ...this.mapping.labels, shard: this.shard, firstSequenceNumber: batch.records[0]?.sequenceNumber, lastSequenceNumber: batch.records[batch.records.length - 1]?.sequenceNumber, halves: decision.next.map((b) => b.records.length) },
          'function failed; bisecting the batch',
        );
      }
      // The state a tumbling-window function returned covers the records it succeeded on.
      if ((decision.kind === 'success' || decision.kind === 'partial') && this.window !== undefined && outcome.status === 'ok') {
        this.window = { start: this.window.start, state: (outcome.result as { state: unknown }).state };
      }
      if (checkpointing && decision.kind !== 'bisect' && decision.kind !== 'retry' && decision.checkpoint !== undefined) this.checkpoint(decision.checkpoint);
      if (this.window !== undefined && Buffer.byteLength(JSON.stringify(this.window.state) ?? '') > MAX_WINDOW_STATE_BYTES) await this.closeWindow(true);
      queue.unshift(...decision.next);
      if (decision.kind === 'retry' || decision.kind === 'partial') await this.pause(backoff(decision.next[0].retries - 1));
    }
    return queue.length === 0;
  }

  /**
   * One invocation of the function with `records` (and, with tumbling windows, the
   * window's fields). A `Throttled` refusal from the runtime is not the function's
   * failure: it is counted and retried after a backoff without spending a retry.
   * Undefined when stopped meanwhile.
   */
  private async invoke(records: ChangeRecord[], final: boolean, early: boolean): Promise<InvokeResult | undefined> {
    const { fn } = this.mapping;
    const { runtime, metrics, log } = this.deps;
    const event: Record<string, unknown> = { Records: records.map((r) => this.render(r)) };
    if (this.window !== undefined) {
      // Lambda's TimeWindow event fields (services-ddb-windows.html).
      Object.assign(event, {
        window: { start: new Date(this.window.start).toISOString(), end: new Date(this.window.start + this.windowMs).toISOString() },
        state: this.window.state,
        shardId: this.shardId,
        eventSourceARN: log.streamArn,
        isFinalInvokeForWindow: final,
        isWindowTerminatedEarly: early,
      });
    }
    const last = records[records.length - 1];
    // Writes of this invocation (context.put) are one hop further down a chain than the records that caused it.
    const hops = 1 + records.reduce((max, r) => Math.max(max, r.origin?.hops ?? 0), 0);
    const options = { origin: { function: fn.name, hops } };
    for (let throttles = 0; this.running; throttles++) {
      if (last !== undefined) {
        const age = (Date.now() - last.createdAt) / 1000;
        metrics.functionIteratorAge.observe({ function: fn.name }, age);
        metrics.mappingIteratorAge.set(this.mapping.labels, age);
      }
      try {
        const result = await runtime.invoke(fn, event, options);
        this.record(result);
        return result;
      } catch (err) {
        if (!isTributaryError(err) || err.code !== 'Throttled') throw err;
        metrics.mappingThrottles.inc(this.mapping.labels);
        await this.pause(backoff(throttles));
      }
    }
    return undefined;
  }

  /**
   * The final invocation of the open tumbling window (`isFinalInvokeForWindow`, no
   * records), then the window's state is dropped and saved with the checkpoint. `early`:
   * the state outgrew MAX_WINDOW_STATE_BYTES, so the window goes on with a fresh state
   * (`isWindowTerminatedEarly`). Lambda retries a failed final invocation until it
   * succeeds; ours gives up after maximumRetryAttempts and drops the state with an error.
   */
  private async closeWindow(early: boolean): Promise<void> {
    const w = this.window as WindowState;
    const { maximumRetryAttempts } = this.mapping.trigger;
    for (let attempt = 0; ; attempt++) {
      const result = await this.invoke([], true, early);
      if (result === undefined) return; // stopped: the window stays open (and saved) for the next start
      if (result.outcome.status === 'ok') break;
      if (maximumRetryAttempts >= 0 && attempt >= maximumRetryAttempts) {
        this.deps.logger.error({ ...this.mapping.labels, shard: this.shard, window: new Date(w.start).toISOString(), outcome: result.outcome }, 'the final invocation of a tumbling window failed; dropping its state');
        break;
      }
      await this.pause(backoff(attempt));
      if (!this.running) return;
    }
    this.window = early ? { start: w.start, state: {} } : undefined;
    this.checkpoint(this.position, true);
  }

  /**
   * Moves the checkpoint forward (with the open window's state); `force` saves even when
   * it did not move. The write is not awaited: it queues behind telemetry commits, and the
   * next read need not wait for it (the store coalesces a shard's writes, the latest wins;
   * stop() waits for the last one). Finished records are not delivered again by this poller
   * even if the write fails: it is logged and the next checkpoint covers them (only a
   * restart in between redelivers).
   */
  private checkpoint(sequenceNumber: number, force = false): void {
    const { fn, trigger } = this.mapping;
    if (sequenceNumber <= this.position && !force) return;
    this.position = sequenceNumber;
    this.saved = this.deps.checkpoints.set(fn.name, trigger.id, this.shard, sequenceNumber, this.window).catch((err: unknown) => {
      this.deps.logger.error({ err, ...this.mapping.labels, shard: this.shard, checkpoint: sequenceNumber }, 'checkpoint write failed; the next one covers it');
    });
  }

  /** `ranVersion`: the version the last invocation ran (a redeploy since the mapping started makes `fn.version` stale). */
  private async discard(discarded: DiscardedBatch, records: ChangeRecord[], invocations: number, lastOutcome: InvokeOutcome | undefined, ranVersion?: number): Promise<void> {
    const { fn, trigger } = this.mapping;
    const { logger, log, onDiscard } = this.deps;
    const metadata: DiscardMetadata = {
      ...discarded,
      function: fn.name,
      functionVersion: ranVersion ?? fn.version,
      triggerId: trigger.id,
      shard: this.shard,
      streamArn: log.streamArn,
      firstRecordAt: (records[0] as ChangeRecord).createdAt,
      lastRecordAt: (records[records.length - 1] as ChangeRecord).createdAt,
      invocations,
      discardedAt: Date.now(),
    };
    if (lastOutcome !== undefined) metadata.lastOutcome = lastOutcome;
    const why =
      discarded.reason === 'RecordAgeExceeded'
        ? 'older than maximumRecordAgeSeconds'
        : discarded.reason === 'RecordUnrenderable'
          ? `the record cannot be rendered as a stream record (${lastOutcome?.status === 'error' ? lastOutcome.errorMessage : 'unknown error'})`
          : `function failed ${invocations} times`;
    logger.error({ discarded: metadata }, `${why}; discarding ${discarded.count} record(s)`);
    await onDiscard?.(metadata);
  }

  private record(result: InvokeResult): void {
    const { fn } = this.mapping;
    const { logger, metrics } = this.deps;
    metrics.mappingInvocations.inc({ ...this.mapping.labels, outcome: result.outcome.status });
    metrics.mappingDuration.observe(this.mapping.labels, result.durationMs / 1000);
    const fnLogger = logger.child({ function: fn.name, requestId: result.requestId });
    for (const line of result.logs) fnLogger[line.level]({ ts: line.ts }, line.message);
    if (result.outcome.status !== 'ok') fnLogger.warn({ outcome: result.outcome }, 'function invocation failed');
  }
}

/**
 * A tumbling-window response must carry `state` (an object); Lambda counts a response
 * without it as a failed invocation.
 */
export function windowOutcome(outcome: InvokeOutcome): InvokeOutcome {
  if (outcome.status !== 'ok') return outcome;
  const state = (outcome.result as { state?: unknown } | null | undefined)?.state;
  if (typeof state === 'object' && state !== null && !Array.isArray(state)) return outcome;
  return { status: 'error', errorType: 'InvalidWindowResponse', errorMessage: 'with tumblingWindowSeconds the function must return { state: {...} } (and may add batchItemFailures)' };
}

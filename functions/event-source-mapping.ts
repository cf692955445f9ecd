import type { Logger } from '../core/logger.js';
import type { Metrics } from '../core/metrics.js';
import { toStreamRecord } from '../streams/lambda-event.js';
import type { ChangeLog, ChangeRecord } from '../streams/types.js';
import type { CheckpointStore } from './checkpoints.js';
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
}

export const DEFAULT_TRIGGER: Omit<TriggerConfig, 'id'> = { batchSize: 100, startingPosition: 'LATEST', maximumRetryAttempts: 3 };

export interface MappingDeps {
  log: ChangeLog;
  runtime: FunctionRuntime;
  checkpoints: CheckpointStore;
  logger: Logger;
  metrics: Metrics;
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

  constructor(
    readonly fn: FunctionSpec,
    readonly trigger: TriggerConfig,
    private readonly deps: MappingDeps,
  ) {}

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
        await this.deliver(records);
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

  private async deliver(records: ChangeRecord[]): Promise<void> {
    const { fn, trigger } = this.mapping;
    const { runtime, checkpoints, logger, metrics, log } = this.deps;
    const event = { Records: records.map((r) => toStreamRecord(r, log.streamArn)) };
    const last = records[records.length - 1] as ChangeRecord;
    // Finished with the batch: the function succeeded, or it failed too often and the batch is skipped.
    let finished = false;
    for (let attempt = 0; this.running; attempt++) {
      metrics.functionIteratorAge.observe({ function: fn.name }, (Date.now() - last.createdAt) / 1000);
      const result = await runtime.invoke(fn, event);
      this.record(result);
      if (result.outcome.status === 'ok') {
        finished = true;
        break;
      }
      if (attempt >= trigger.maximumRetryAttempts) {
        logger.error(
          { function: fn.name, shard: this.shard, firstSequenceNumber: records[0]?.sequenceNumber, lastSequenceNumber: last.sequenceNumber, outcome: result.outcome },
          `function failed ${attempt + 1} times; skipping the batch`,
        );
        finished = true;
        break;
      }
      await this.pause(Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** attempt));
    }
    // Stopped before the batch was finished: leave the checkpoint, the next start delivers it again.
    // A finished batch is checkpointed even while stopping, or every graceful stop would
    // redeliver the batch in flight.
    if (!finished) return;
    this.position = last.sequenceNumber;
    await checkpoints.set(fn.name, trigger.id, this.shard, this.position);
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

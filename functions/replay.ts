/**
 * Replay: re-process a window [from, to) of the change stream through a function — what
 * a Lambda user cannot do with a DynamoDB stream. Records are read from the change log
 * (`readFromTime`, then `read`), batched like a trigger's (up to `batchSize` records of one
 * shard, optionally filtered with `filterCriteria`), and handed to the function as the same
 * DynamoDB stream event.
 *
 * Decisions:
 * - **An asynchronous job.** A window can hold millions of records, longer than any HTTP
 *   request should last, so `start` returns a running job at once; its progress and
 *   summary are read with `get` until it has finished, and `cancel` stops it between
 *   batches. Jobs live in memory (the last {@link KEEP_FINISHED} finished ones are kept):
 *   a restart ends a running replay, and it must be started again. When a job ends, a
 *   summary line is written to the function's logs under the job id (`requestId`), so the
 *   outcome outlives the process.
 * - **No effect on triggers.** A replay keeps its own position and never reads or moves a
 *   trigger's checkpoints; live delivery goes on meanwhile. Replayed and live batches take
 *   turns in the function's one process (one invocation at a time), so a handler sees
 *   records of the window again — it must be idempotent (`eventID` is stable).
 * - **Best effort, once.** Each batch is invoked once: a batch that fails (error, timeout,
 *   crash, or a `batchItemFailures` response naming its records) is counted and listed
 *   (the first {@link MAX_FAILURES_LISTED}) and the replay goes on. A `Throttled` refusal
 *   is waited out and the batch is tried again.
 * - **Window.** Records committed at or after `from` and before `to` (default: when the job
 *   starts, so a replay ends even under load). Shards are replayed one after another, each
 *   in sequence order, so per-device order holds. If retention has trimmed the start of
 *   the window, the job says so (`truncated`).
 * - **Version.** Each batch goes to the function's latest version at that moment, as with
 *   triggers (pinning an older one would make live and replayed batches swap the
 *   function's process back and forth); the versions used are listed.
 * - One running replay per function; another is refused with `Conflict`.
 */
import { randomUUID } from 'node:crypto';
import { isTributaryError, TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { toStreamRecord } from '../streams/lambda-event.js';
import type { ChangeLog, ChangeRecord } from '../streams/types.js';
import { parseItemFailures } from './batch-plan.js';
import { compileFilterCriteria, type FilterCriteria } from './filter-pattern.js';
import type { FunctionLogStore } from './logs.js';
import type { FunctionRuntime, FunctionSpec, InvokeResult } from './types.js';

export interface ReplayRequest {
  /** Epoch ms, inclusive. */
  from: number;
  /** Epoch ms, exclusive; default: when the job starts. */
  to?: number;
  /** Records per invocation, 1..10000; default 100 (a trigger's default). */
  batchSize?: number;
  filterCriteria?: FilterCriteria;
}

export type ReplayStatus = 'running' | 'completed' | 'cancelled' | 'failed';

/** A batch the function did not process. */
export interface ReplayFailure {
  shard: number;
  firstSequenceNumber: number;
  lastSequenceNumber: number;
  count: number;
  requestId: string;
  status: InvokeResult['outcome']['status'];
  errorType?: string;
  errorMessage?: string;
}

export interface ReplayJob {
  id: string;
  functionName: string;
  from: number;
  to: number;
  batchSize: number;
  filterCriteria?: FilterCriteria;
  status: ReplayStatus;
  /** Epoch ms. */
  createdAt: number;
  finishedAt: number | null;
  /** Records handed to the function. */
  records: number;
  /** Records of the window that `filterCriteria` left out. */
  filtered: number;
  invocations: number;
  failedBatches: number;
  /** The first failed batches (at most {@link MAX_FAILURES_LISTED}). */
  failures: ReplayFailure[];
  /** Versions of the function that got batches. */
  functionVersions: number[];
  /** Shards finished so far, of `shardCount`. */
  shardsDone: number;
  shardCount: number;
  /** True when retention had already trimmed records of the window's start from some shard. */
  truncated: boolean;
  /** Why the job stopped (status failed), e.g. the function was deleted. */
  error?: string;
}

export interface ReplayDeps {
  log: ChangeLog;
  runtime: FunctionRuntime;
  /** The function's latest version; throws `FunctionNotFound`. */
  resolve: (name: string) => Promise<FunctionSpec>;
  logs?: FunctionLogStore;
  logger: Logger;
}

export const MAX_REPLAY_BATCH = 10_000;
const DEFAULT_BATCH = 100;
const MAX_FAILURES_LISTED = 10;
const KEEP_FINISHED = 100;
const THROTTLE_BASE_MS = 100;
const THROTTLE_MAX_MS = 5000;

function validationError(field: string, message: string): TributaryError {
  return new TributaryError('ValidationError', message, { field });
}

function jobNotFound(name: string, id: string): TributaryError {
  return new TributaryError('NotFound', `function ${name} has no replay ${JSON.stringify(id)} (finished jobs are kept in memory, the last ${KEEP_FINISHED}, until a restart)`, { field: 'id' });
}

interface Running {
  job: ReplayJob;
  /** The version when the job started (for the summary of a job that invoked nothing). */
  startVersion: number;
  cancelled: boolean;
  /** Ends a throttle wait early on cancel. */
  wake?: () => void;
  done: Promise<void>;
}

/** Starts, tracks and cancels replay jobs (see the module comment). */
export class ReplayManager {
  private readonly jobs = new Map<string, Running>();
  private closed = false;

  constructor(private readonly deps: ReplayDeps) {}

  /**
   * Validates the request and starts a job.
   * @throws TributaryError `FunctionNotFound`; `ValidationError` for a bad window, batch
   * size or filter; `Conflict` while another replay of the function runs.
   */
  async start(functionName: string, request: ReplayRequest): Promise<ReplayJob> {
    if (this.closed) throw new TributaryError('StoreUnavailable', 'the server is shutting down');
    const { version: startVersion } = await this.deps.resolve(functionName);
    const createdAt = Date.now();
    const to = request.to ?? createdAt;
    const batchSize = request.batchSize ?? DEFAULT_BATCH;
    if (!Number.isSafeInteger(request.from) || request.from < 0) throw validationError('from', 'from must be a time (epoch ms)');
    if (!Number.isSafeInteger(to) || to <= request.from) throw validationError('to', `to must be after from (from ${new Date(request.from).toISOString()}, to ${Number.isFinite(to) ? new Date(to).toISOString() : String(to)})`);
    if (!Number.isSafeInteger(batchSize) || batchSize < 1 || batchSize > MAX_REPLAY_BATCH) throw validationError('batchSize', `batchSize must be an integer from 1 to ${MAX_REPLAY_BATCH}`);
    // Throws a ValidationError naming the bad pattern.
    const filter = request.filterCriteria === undefined ? undefined : compileFilterCriteria(request.filterCriteria);
    for (const r of this.jobs.values()) {
      if (r.job.functionName === functionName && r.job.status === 'running') {
        throw new TributaryError('Conflict', `replay ${r.job.id} of function ${functionName} is still running; wait for it or cancel it first`);
      }
    }
    const job: ReplayJob = {
      id: randomUUID(),
      functionName,
      from: request.from,
      to,
      batchSize,
      ...(request.filterCriteria === undefined ? {} : { filterCriteria: request.filterCriteria }),
      status: 'running',
      createdAt,
      finishedAt: null,
      records: 0,
      filtered: 0,
      invocations: 0,
      failedBatches: 0,
      failures: [],
      functionVersions: [],
      shardsDone: 0,
      shardCount: this.deps.log.shardCount,
      truncated: false,
    };
    const running: Running = { job, startVersion, cancelled: false, done: Promise.resolve() };
    running.done = this.run(running, filter);
    this.jobs.set(job.id, running);
    this.forgetOld();
    return structuredClone(job);
  }

  /** @throws TributaryError `NotFound` */
  get(functionName: string, id: string): ReplayJob {
    const r = this.jobs.get(id);
    if (r === undefined || r.job.functionName !== functionName) throw jobNotFound(functionName, id);
    return structuredClone(r.job);
  }

  /** The function's jobs, newest first. */
  list(functionName: string): ReplayJob[] {
    return [...this.jobs.values()]
      .filter((r) => r.job.functionName === functionName)
      .map((r) => structuredClone(r.job))
      .reverse();
  }

  /** Stops a running job after the batch in flight; a finished job is returned as it is. @throws TributaryError `NotFound` */
  async cancel(functionName: string, id: string): Promise<ReplayJob> {
    const r = this.jobs.get(id);
    if (r === undefined || r.job.functionName !== functionName) throw jobNotFound(functionName, id);
    r.cancelled = true;
    r.wake?.();
    await r.done;
    return structuredClone(r.job);
  }

  /**
   * The function was deleted: its running jobs stop after the batch in flight and all its
   * jobs are dropped, so that neither they nor a later function of the same name show them.
   */
  async forget(functionName: string): Promise<void> {
    const own = [...this.jobs.values()].filter((r) => r.job.functionName === functionName);
    for (const r of own) {
      r.cancelled = true;
      r.wake?.();
    }
    await Promise.all(own.map((r) => r.done));
    for (const r of own) this.jobs.delete(r.job.id);
  }

  /** Cancels every running job and waits for them to stop. */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.jobs.values()];
    for (const r of all) {
      r.cancelled = true;
      r.wake?.();
    }
    await Promise.all(all.map((r) => r.done));
  }

  private forgetOld(): void {
    const finished = [...this.jobs.values()].filter((r) => r.job.status !== 'running');
    for (const r of finished.slice(0, Math.max(0, finished.length - KEEP_FINISHED))) this.jobs.delete(r.job.id);
  }

  private async run(r: Running, filter: ((record: unknown) => boolean) | undefined): Promise<void> {
    const { job } = r;
    const { log, logger } = this.deps;
    try {
      const shards = await log.shards();
      for (const s of shards) {
        if (r.cancelled) break;
        if (s.lastSequenceNumber !== null) await this.replayShard(r, s.shard, s.firstSequenceNumber, s.lastSequenceNumber, filter);
        if (!r.cancelled) job.shardsDone++;
      }
      job.status = r.cancelled ? 'cancelled' : 'completed';
    } catch (err) {
      // Stopping the server cancels its replays and then closes the runtime under them.
      if (r.cancelled) {
        job.status = 'cancelled';
      } else {
        job.status = 'failed';
        job.error = isTributaryError(err) ? `${err.code}: ${err.message}` : (err as Error).message;
        logger.warn({ err, function: job.functionName, replay: job.id }, 'replay failed');
      }
    }
    job.finishedAt = Date.now();
    this.recordSummary(job, r.startVersion);
  }

  /** Replays the window's records of one shard, up to `last` (the shard's end when the job started). */
  private async replayShard(r: Running, shard: number, first: number | null, last: number, filter: ((record: unknown) => boolean) | undefined): Promise<void> {
    const { job } = r;
    const { log } = this.deps;
    if (first !== null && first > 1 && !job.truncated) {
      // Records before `first` were trimmed; the window lost some if the oldest kept one is younger than `from`.
      const [oldest] = await log.read(shard, first - 1, 1);
      if (oldest !== undefined && oldest.createdAt > job.from) job.truncated = true;
    }
    let page = await log.readFromTime(shard, job.from, job.batchSize);
    while (page.length > 0 && !r.cancelled) {
      const inWindow = page.filter((rec) => rec.createdAt < job.to && rec.sequenceNumber <= last);
      const batch = filter === undefined ? inWindow : inWindow.filter((rec) => filter(toStreamRecord(rec, log.streamArn)));
      job.filtered += inWindow.length - batch.length;
      if (batch.length > 0) await this.deliver(r, shard, batch);
      // Past the window (commit times rise with sequence numbers) or the shard's end at start.
      if (inWindow.length < page.length) return;
      const tail = page[page.length - 1] as ChangeRecord;
      page = await log.read(shard, tail.sequenceNumber, job.batchSize);
    }
  }

  private async deliver(r: Running, shard: number, batch: ChangeRecord[]): Promise<void> {
    const { job } = r;
    const { log, runtime, resolve } = this.deps;
    const event = { Records: batch.map((rec) => toStreamRecord(rec, log.streamArn)) };
    let result: InvokeResult | undefined;
    for (let attempt = 0; result === undefined; attempt++) {
      try {
        result = await runtime.invoke(await resolve(job.functionName), event);
      } catch (err) {
        if (!isTributaryError(err) || err.code !== 'Throttled' || r.cancelled) throw err;
        await new Promise<void>((done) => {
          const timer = setTimeout(done, Math.min(THROTTLE_MAX_MS, THROTTLE_BASE_MS * 2 ** attempt));
          r.wake = () => {
            clearTimeout(timer);
            done();
          };
        });
        r.wake = undefined;
        if (r.cancelled) return;
      }
    }
    job.invocations++;
    job.records += batch.length;
    const version = result.functionVersion;
    if (version !== undefined && !job.functionVersions.includes(version)) job.functionVersions.push(version);
    const o = result.outcome;
    if (o.status === 'ok' && parseItemFailures(o.result, batch).kind !== 'failed') return;
    job.failedBatches++;
    if (job.failures.length >= MAX_FAILURES_LISTED) return;
    const failure: ReplayFailure = {
      shard,
      firstSequenceNumber: (batch[0] as ChangeRecord).sequenceNumber,
      lastSequenceNumber: (batch[batch.length - 1] as ChangeRecord).sequenceNumber,
      count: batch.length,
      requestId: result.requestId,
      status: o.status,
    };
    if (o.status === 'error') Object.assign(failure, { errorType: o.errorType, errorMessage: o.errorMessage });
    if (o.status === 'crashed') Object.assign(failure, { errorType: 'Runtime.ExitError', errorMessage: o.reason });
    if (o.status === 'timeout') failure.errorType = 'Sandbox.Timedout';
    if (o.status === 'ok') Object.assign(failure, { errorType: 'BatchItemFailures', errorMessage: 'the function reported failed records (batchItemFailures)' });
    job.failures.push(failure);
  }

  /** One line in the function's logs, under the job id, so the outcome outlives the process. */
  private recordSummary(job: ReplayJob, startVersion: number): void {
    const window = `${new Date(job.from).toISOString()} .. ${new Date(job.to).toISOString()}`;
    const message =
      `replay ${job.id} ${job.status}: window ${window}, ${job.records} records in ${job.invocations} invocations, ` +
      `${job.failedBatches} failed batches, ${job.filtered} filtered out` +
      (job.truncated ? ', the start of the window was already trimmed by retention' : '') +
      (job.error === undefined ? '' : `; ${job.error}`);
    const level = job.status === 'completed' && job.failedBatches === 0 ? 'info' : 'warn';
    this.deps.logs?.note(job.functionName, job.functionVersions[job.functionVersions.length - 1] ?? startVersion, job.id, level, message);
    this.deps.logger.info({ replay: job }, 'replay finished');
  }
}

/**
 * EventSourceMapping on its own: the in-memory change log and checkpoint store, and a
 * fake function runtime that records every invocation and answers as each test
 * programs it. Writes are simulated by staging and committing records on the log
 * directly, as the store's write path does.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createLogger, type Logger } from '../core/logger.js';
import { TributaryError } from '../core/errors.js';
import { createMetrics, type Metrics } from '../core/metrics.js';
import { LevelCheckpointStore, MemoryCheckpointStore, type CheckpointStore } from '../functions/checkpoints.js';
import { EventSourceMapping, laneOf, MAX_WRITE_HOPS, type DiscardMetadata, type TriggerConfig } from '../functions/event-source-mapping.js';
import type { FunctionRuntime, FunctionSpec, InvokeOptions, InvokeOutcome, InvokeResult } from '../functions/types.js';
import { toStreamRecord, type DynamoDBStreamEvent, type DynamoDBStreamRecord } from '../streams/lambda-event.js';
import { Database } from '../store/database.js';
import { LevelTelemetryStore } from '../store/level-store.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import { MemoryChangeLog } from '../streams/memory-log.js';
import type { BatchOp, Change, ChangeLog, ChangeRecord } from '../streams/types.js';
import { tempDir, waitFor } from './helpers.js';
import { parseTsSeq } from '../store/table-key.js';

const FN: FunctionSpec = { name: 'on-change', version: 1, codePath: '/nowhere/handler.mjs', timeoutMs: 1000, memoryMb: 128, environment: {} };
const OK: InvokeOutcome = { status: 'ok', result: null };
const FAILED: InvokeOutcome = { status: 'error', errorType: 'Error', errorMessage: 'boom' };

type Behaviour = (event: DynamoDBStreamEvent, call: number) => InvokeOutcome | Promise<InvokeOutcome>;

/** A FunctionRuntime that records each event and answers with what `behaviour` says (ok by default). */
class FakeRuntime implements FunctionRuntime {
  readonly events: DynamoDBStreamEvent[] = [];
  /** The options of each invocation, in the same order as `events`. */
  readonly options: Array<InvokeOptions | undefined> = [];
  behaviour: Behaviour = () => OK;

  async invoke(_fn: FunctionSpec, event: unknown, options?: InvokeOptions): Promise<InvokeResult> {
    // A deep copy: tumbling-window events carry a state object the mapping goes on using.
    const e = structuredClone(event) as DynamoDBStreamEvent;
    this.events.push(e);
    this.options.push(options);
    const outcome = await this.behaviour(e, this.events.length);
    return { requestId: `req-${this.events.length}`, outcome, durationMs: 1, logs: [{ ts: Date.now(), level: 'info', message: 'handled' }] };
  }

  async close(): Promise<void> {}

  /** Every delivered record, in delivery order (redeliveries included). */
  records(): DynamoDBStreamRecord[] {
    return this.events.flatMap((e) => e.Records);
  }
}

/** A promise the test settles by hand. */
function gate<T = void>(): { promise: Promise<T>; open: (v: T) => void } {
  let open!: (v: T) => void;
  const promise = new Promise<T>((resolve) => (open = resolve));
  return { promise, open };
}

function seqs(event: DynamoDBStreamEvent | DynamoDBStreamRecord[] | undefined): number[] {
  const records = Array.isArray(event) ? event : (event?.Records ?? []);
  return records.map((r) => Number(r.dynamodb.SequenceNumber));
}

function deviceOf(r: DynamoDBStreamRecord): string {
  return r.dynamodb.Keys['deviceId']?.S as string;
}

function tsOf(r: DynamoDBStreamRecord): number {
  return parseTsSeq(r.dynamodb.Keys['tsSeq']?.N ?? '')?.ts as number;
}

/** Simulates one committed write: stage, (nothing to make durable in memory), commit; `now` is the commit time. */
function commit(log: ChangeLog, changes: Change[], now = Date.now()): ChangeRecord[] {
  const ops: BatchOp[] = [];
  const records = log.stage(ops, changes, now);
  log.commit(records);
  return records;
}

function insert(deviceId: string, ts: number): Change {
  return { eventName: 'INSERT', deviceId, ts, seq: 0, newValues: { ts } };
}

/** One device id per shard of `log`. */
function devicePerShard(log: ChangeLog): string[] {
  const out = new Array<string | undefined>(log.shardCount).fill(undefined);
  for (let i = 0; out.includes(undefined); i++) {
    const id = `dev-${i}`;
    out[log.shardOf(id)] ??= id;
  }
  return out as string[];
}

/** Settles with `what` or fails after `ms` (a bound on a promise, not a sleep). */
async function within<T>(what: Promise<T>, ms: number, label: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${label} did not settle within ${ms} ms`)), ms)));
  try {
    return await Promise.race([what, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface Setup {
  log: MemoryChangeLog;
  runtime: FakeRuntime;
  checkpoints: CheckpointStore;
  mapping: EventSourceMapping;
  checkpoint: (shard: number) => Promise<number | undefined>;
  /** Every discarded batch, as `onDiscard` was told. */
  discarded: DiscardMetadata[];
  logger: Logger;
  metrics: Metrics;
}

describe('EventSourceMapping', () => {
  const started: EventSourceMapping[] = [];
  afterEach(async () => {
    vi.restoreAllMocks();
    for (const m of started.splice(0)) await within(m.stop(), 2000, 'stop() in cleanup');
  });

  function setup(opts: { shards?: number; trigger?: Partial<TriggerConfig>; log?: MemoryChangeLog; checkpoints?: CheckpointStore; runtime?: FakeRuntime } = {}): Setup {
    const log = opts.log ?? new MemoryChangeLog({ shards: opts.shards ?? 2 });
    const checkpoints = opts.checkpoints ?? new MemoryCheckpointStore();
    const runtime = opts.runtime ?? new FakeRuntime();
    const trigger: TriggerConfig = { id: 'trigger-1', batchSize: 100, startingPosition: 'TRIM_HORIZON', maximumRetryAttempts: 2, ...opts.trigger };
    const discarded: DiscardMetadata[] = [];
    const logger = createLogger('silent');
    const onDiscard = (m: DiscardMetadata): void => void discarded.push(m);
    const metrics = createMetrics();
    const mapping = new EventSourceMapping(FN, trigger, { log, runtime, checkpoints, logger, metrics, onDiscard });
    started.push(mapping);
    return { log, runtime, checkpoints, mapping, checkpoint: (shard) => checkpoints.get(FN.name, trigger.id, shard), discarded, logger, metrics };
  }

  it('keeps a shard alive when an invocation or a checkpoint write throws', async () => {
    const s = setup({ shards: 1 });
    let calls = 0;
    const realInvoke = s.runtime.invoke.bind(s.runtime);
    s.runtime.invoke = async (fn, event) => {
      if (++calls === 1) throw new Error('runtime closing');
      return realInvoke(fn, event);
    };
    const realSet = s.checkpoints.set.bind(s.checkpoints);
    let failedSets = 0;
    s.checkpoints.set = async (...args) => {
      if (args[3] > 0 && failedSets++ === 0) throw new Error('disk full');
      return realSet(...args);
    };
    await s.mapping.start();
    commit(s.log, [insert('d', 1)]);
    await waitFor(() => s.runtime.records().length >= 1, 3000, 'the record after the thrown invocation');
    commit(s.log, [insert('d', 2)]);
    await waitFor(async () => (await s.checkpoint(0)) === 2, 3000, 'the checkpoint after the failed write');
    expect(s.runtime.records().map(tsOf)).toEqual([1, 2]);
    expect(failedSets).toBeGreaterThan(1);
  });

  describe('starting position', () => {
    it('LATEST starts after the records already in the log', async () => {
      const s = setup({ trigger: { startingPosition: 'LATEST' } });
      const [d0, d1] = devicePerShard(s.log) as [string, string];
      commit(s.log, [insert(d0, 1), insert(d0, 2), insert(d1, 3)]);
      commit(s.log, [insert(d0, 4)]);
      await s.mapping.start();
      expect([await s.checkpoint(0), await s.checkpoint(1)]).toEqual([3, 1]);
      commit(s.log, [insert(d0, 5), insert(d1, 6)]);
      await waitFor(() => s.runtime.records().length >= 2, 2000, 'the new records');
      expect(s.runtime.records().map(tsOf).sort()).toEqual([5, 6]);
      await waitFor(async () => (await s.checkpoint(0)) === 4 && (await s.checkpoint(1)) === 2, 2000, 'checkpoints');
    });

    it('TRIM_HORIZON starts from the oldest record', async () => {
      const s = setup({ trigger: { startingPosition: 'TRIM_HORIZON' } });
      const [d0, d1] = devicePerShard(s.log) as [string, string];
      commit(s.log, [insert(d0, 1), insert(d0, 2), insert(d1, 3)]);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 2 && (await s.checkpoint(1)) === 1, 2000, 'checkpoints');
      const mine = (d: string): number[] => s.runtime.records().filter((r) => deviceOf(r) === d).map(tsOf);
      expect(mine(d0)).toEqual([1, 2]);
      expect(mine(d1)).toEqual([3]);
    });

    it('an empty log starts at the beginning either way', async () => {
      const s = setup({ shards: 1, trigger: { startingPosition: 'LATEST' } });
      await s.mapping.start();
      expect(await s.checkpoint(0)).toBe(0);
      commit(s.log, [insert('d', 1)]);
      await waitFor(() => s.runtime.records().length === 1, 2000, 'the first record');
      expect(seqs(s.runtime.events[0])).toEqual([1]);
    });
  });

  describe('delivery', () => {
    it('invokes the function with the DynamoDB stream event shape', async () => {
      const s = setup({ shards: 1 });
      const records = commit(s.log, [
        { eventName: 'INSERT', deviceId: 'd1', ts: 1000, seq: 0, newValues: { temp: 21.5, ok: true } },
        { eventName: 'MODIFY', deviceId: 'd1', ts: 1000, seq: 0, newValues: { temp: 22 }, oldValues: { temp: 21.5, ok: true } },
        { eventName: 'REMOVE', deviceId: 'd1', ts: 1000, seq: 0, oldValues: { temp: 22 }, byService: true },
      ]);
      await s.mapping.start();
      await waitFor(() => s.runtime.events.length === 1, 2000, 'an invocation');
      const event = s.runtime.events[0] as DynamoDBStreamEvent;
      expect(Object.keys(event)).toEqual(['Records']);
      expect(event.Records).toEqual(records.map((r) => toStreamRecord(r, s.log.streamArn)));
      const [ins, mod, rem] = event.Records as [DynamoDBStreamRecord, DynamoDBStreamRecord, DynamoDBStreamRecord];
      expect(ins).toMatchObject({
        eventName: 'INSERT',
        eventVersion: '1.1',
        eventSource: 'aws:dynamodb',
        awsRegion: 'us-east-1',
        eventSourceARN: s.log.streamArn,
        dynamodb: {
          SequenceNumber: '1',
          StreamViewType: 'NEW_AND_OLD_IMAGES',
          Keys: { deviceId: { S: 'd1' }, tsSeq: { N: '1000' } },
          NewImage: { deviceId: { S: 'd1' }, temp: { N: '21.5' }, ok: { BOOL: true } },
        },
      });
      expect(typeof ins.eventID).toBe('string');
      expect(typeof ins.dynamodb.ApproximateCreationDateTime).toBe('number');
      expect(ins.dynamodb.OldImage).toBeUndefined();
      expect(mod).toMatchObject({ eventName: 'MODIFY', dynamodb: { SequenceNumber: '2', OldImage: { temp: { N: '21.5' } }, NewImage: { temp: { N: '22' } } } });
      expect(rem).toMatchObject({ eventName: 'REMOVE', dynamodb: { SequenceNumber: '3' }, userIdentity: { type: 'Service', principalId: 'dynamodb.amazonaws.com' } });
      expect(new Set(event.Records.map((r) => r.eventID)).size).toBe(3);
    });

    it('respects batchSize', async () => {
      const s = setup({ shards: 1, trigger: { batchSize: 3 } });
      commit(s.log, Array.from({ length: 7 }, (_, i) => insert('d', i)));
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 7, 2000, 'the checkpoint');
      expect(s.runtime.events.map(seqs)).toEqual([[1, 2, 3], [4, 5, 6], [7]]);
    });

    it('keeps per-shard order: each event holds one shard, and a shard is delivered in sequence without gaps', async () => {
      const s = setup({ shards: 4, trigger: { batchSize: 5 } });
      const devices = Array.from({ length: 9 }, (_, i) => `sensor-${i}`);
      commit(s.log, devices.map((d) => insert(d, 0)));
      await s.mapping.start();
      let committed = devices.length;
      for (let round = 1; round <= 20; round++) {
        commit(s.log, devices.filter((_, i) => (i + round) % 3 !== 0).map((d) => insert(d, round)));
        committed += devices.filter((_, i) => (i + round) % 3 !== 0).length;
        // Let the pollers run between some of the writes, so batches mix old and new records.
        if (round % 4 === 0) await new Promise((r) => setImmediate(r));
      }
      await waitFor(() => s.runtime.records().length === committed, 3000, 'every record');
      const perShard = new Map<number, number[]>();
      for (const event of s.runtime.events) {
        expect(event.Records.length).toBeLessThanOrEqual(5);
        const shards = new Set(event.Records.map((r) => s.log.shardOf(deviceOf(r))));
        expect(shards.size).toBe(1);
        const shard = [...shards][0] as number;
        perShard.set(shard, [...(perShard.get(shard) ?? []), ...seqs(event)]);
      }
      for (const [, numbers] of perShard) expect(numbers).toEqual(numbers.map((_, i) => i + 1));
      for (const d of devices) {
        const ts = s.runtime.records().filter((r) => deviceOf(r) === d).map(tsOf);
        expect(ts).toEqual([...ts].sort((a, b) => a - b));
      }
    });

    it('wakes on records committed while it runs, including during an invocation', async () => {
      const s = setup({ shards: 1 });
      const held = gate<InvokeOutcome>();
      s.runtime.behaviour = (_e, call) => (call === 1 ? held.promise : OK);
      await s.mapping.start();
      commit(s.log, [insert('d', 1)]);
      await waitFor(() => s.runtime.events.length === 1, 2000, 'the first invocation');
      // Committed while the first batch is still with the function.
      commit(s.log, [insert('d', 2)]);
      commit(s.log, [insert('d', 3)]);
      held.open(OK);
      await waitFor(() => s.runtime.events.length === 2, 2000, 'the second invocation');
      expect(s.runtime.events.map(seqs)).toEqual([[1], [2, 3]]);
      // And after it went idle again.
      commit(s.log, [insert('d', 4)]);
      await waitFor(() => s.runtime.events.length === 3, 2000, 'the third invocation');
      expect(seqs(s.runtime.events[2])).toEqual([4]);
    });
  });

  describe('checkpoints and failures', () => {
    it('moves the checkpoint only after the function succeeded', async () => {
      const s = setup({ shards: 1 });
      const held = gate<InvokeOutcome>();
      s.runtime.behaviour = () => held.promise;
      commit(s.log, [insert('d', 1), insert('d', 2)]);
      await s.mapping.start();
      await waitFor(() => s.runtime.events.length === 1, 2000, 'the invocation');
      expect(await s.checkpoint(0)).toBe(0);
      held.open(OK);
      await waitFor(async () => (await s.checkpoint(0)) === 2, 2000, 'the checkpoint');
    });

    it('retries a failing batch maximumRetryAttempts times, then skips it', async () => {
      const s = setup({ shards: 1, trigger: { batchSize: 1, maximumRetryAttempts: 2 } });
      const checkpointDuringRetries: Array<number | undefined> = [];
      s.runtime.behaviour = async (event) => {
        if (seqs(event)[0] !== 1) return OK;
        checkpointDuringRetries.push(await s.checkpoint(0));
        return FAILED;
      };
      commit(s.log, [insert('poison', 1), insert('poison', 2)]);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 2, 3000, 'the checkpoint past the poison batch');
      expect(s.runtime.events.map(seqs)).toEqual([[1], [1], [1], [2]]);
      // Every retry carries the same event (same event ids), and the checkpoint waited for the give-up.
      expect(s.runtime.events[1]).toEqual(s.runtime.events[0]);
      expect(checkpointDuringRetries).toEqual([0, 0, 0]);
    });

    it.each<InvokeOutcome>([FAILED, { status: 'timeout' }, { status: 'crashed', reason: 'exit code 1' }])('counts a $status outcome as a failure', async (outcome) => {
      // maximumRetryAttempts 0: no retry, so no backoff to wait for.
      const s = setup({ shards: 1, trigger: { batchSize: 1, maximumRetryAttempts: 0 } });
      s.runtime.behaviour = (event) => (seqs(event)[0] === 1 ? outcome : OK);
      commit(s.log, [insert('d', 1), insert('d', 2)]);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 2, 2000, 'the checkpoint');
      expect(s.runtime.events.map(seqs)).toEqual([[1], [2]]);
    });

    it('a batch that succeeds on retry is checkpointed, and later batches follow', async () => {
      const s = setup({ shards: 1, trigger: { maximumRetryAttempts: 1 } });
      s.runtime.behaviour = (_e, call) => (call === 1 ? FAILED : OK);
      commit(s.log, [insert('d', 1), insert('d', 2)]);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 2, 2000, 'the checkpoint');
      commit(s.log, [insert('d', 3)]);
      await waitFor(async () => (await s.checkpoint(0)) === 3, 2000, 'the next checkpoint');
      expect(s.runtime.events.map(seqs)).toEqual([[1, 2], [1, 2], [3]]);
    });

    it('a new mapping with the same trigger id resumes from the stored checkpoint', async () => {
      const checkpoints = new MemoryCheckpointStore();
      const log = new MemoryChangeLog({ shards: 2 });
      const [d0, d1] = devicePerShard(log) as [string, string];
      const first = setup({ log, checkpoints });
      commit(log, [insert(d0, 1), insert(d0, 2), insert(d1, 3)]);
      await first.mapping.start();
      await waitFor(async () => (await first.checkpoint(0)) === 2 && (await first.checkpoint(1)) === 1, 2000, 'checkpoints');
      await first.mapping.stop();
      commit(log, [insert(d0, 4), insert(d1, 5)]);

      // TRIM_HORIZON would start from the oldest record: the checkpoint wins.
      const again = setup({ log, checkpoints, trigger: { startingPosition: 'TRIM_HORIZON' } });
      await again.mapping.start();
      commit(log, [insert(d0, 6)]);
      await waitFor(() => again.runtime.records().length >= 3, 2000, 'the records after the checkpoint');
      expect(again.runtime.records().map(tsOf).sort()).toEqual([4, 5, 6]);
      await again.mapping.stop();

      // LATEST would skip what arrived while it was stopped: the checkpoint wins again.
      commit(log, [insert(d1, 7)]);
      const latest = setup({ log, checkpoints, trigger: { startingPosition: 'LATEST' } });
      await latest.mapping.start();
      await waitFor(() => latest.runtime.records().length >= 1, 2000, 'the record committed while stopped');
      expect(latest.runtime.records().map(tsOf)).toEqual([7]);

      // Another trigger of the same function keeps its own checkpoints.
      const other = setup({ log, checkpoints, trigger: { id: 'trigger-2', startingPosition: 'TRIM_HORIZON' } });
      await other.mapping.start();
      await waitFor(() => other.runtime.records().length === 7, 2000, 'every record for the other trigger');
    });
  });

  describe('error handling (bisect, partial batch responses, record age)', () => {
    const POISON: InvokeOutcome = { status: 'error', errorType: 'PoisonError', errorMessage: 'cannot handle this record' };
    const itemFailures = (...ids: unknown[]): InvokeOutcome => ({ status: 'ok', result: { batchItemFailures: ids.map((itemIdentifier) => ({ itemIdentifier })) } });

    it('bisectBatchOnFunctionError isolates a poison record: the records around it are delivered and the checkpoint moves past', async () => {
      const s = setup({ shards: 1, trigger: { batchSize: 8, maximumRetryAttempts: 1, bisectBatchOnFunctionError: true } });
      const error = vi.spyOn(s.logger, 'error');
      s.runtime.behaviour = (event) => (seqs(event).includes(6) ? POISON : OK);
      commit(s.log, Array.from({ length: 8 }, (_, i) => insert('d', i + 1)));
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 8, 3000, 'the checkpoint past the poison record');
      // Halves until the poison record is alone; it gets its one retry and is discarded.
      expect(s.runtime.events.map(seqs)).toEqual([[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4], [5, 6, 7, 8], [5, 6], [5], [6], [6], [7, 8]]);
      expect(s.discarded).toEqual([
        expect.objectContaining({
          function: FN.name,
          functionVersion: 1,
          triggerId: 'trigger-1',
          shard: 0,
          streamArn: s.log.streamArn,
          firstSequenceNumber: 6,
          lastSequenceNumber: 6,
          count: 1,
          reason: 'RetryAttemptsExhausted',
          invocations: 5,
          lastOutcome: POISON,
        }),
      ]);
      // The metadata is logged as an error too; no record contents are in it.
      expect(error).toHaveBeenCalledWith({ discarded: s.discarded[0] }, expect.stringContaining('discarding 1 record'));
      commit(s.log, [insert('d', 9)]);
      await waitFor(async () => (await s.checkpoint(0)) === 9, 2000, 'the next checkpoint');
      expect(seqs(s.runtime.events.at(-1))).toEqual([9]);
    });

    it('without bisection the whole batch is retried and discarded', async () => {
      const s = setup({ shards: 1, trigger: { batchSize: 4, maximumRetryAttempts: 1 } });
      s.runtime.behaviour = (event) => (seqs(event).includes(2) ? POISON : OK);
      commit(s.log, Array.from({ length: 4 }, (_, i) => insert('d', i + 1)));
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 4, 3000, 'the checkpoint');
      expect(s.runtime.events.map(seqs)).toEqual([[1, 2, 3, 4], [1, 2, 3, 4]]);
      expect(s.discarded).toEqual([expect.objectContaining({ firstSequenceNumber: 1, lastSequenceNumber: 4, count: 4, reason: 'RetryAttemptsExhausted', invocations: 2 })]);
    });

    it('a partial batch failure checkpoints before the lowest failed record and resumes there', async () => {
      const s = setup({ shards: 1, trigger: { batchSize: 5, functionResponseTypes: ['ReportBatchItemFailures'] } });
      const checkpointAtCall: Array<number | undefined> = [];
      s.runtime.behaviour = async (_event, call) => {
        checkpointAtCall.push(await s.checkpoint(0));
        return call === 1 ? itemFailures('4', '3') : OK;
      };
      commit(s.log, Array.from({ length: 5 }, (_, i) => insert('d', i + 1)));
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 5, 3000, 'the checkpoint');
      expect(s.runtime.events.map(seqs)).toEqual([[1, 2, 3, 4, 5], [3, 4, 5]]);
      expect(checkpointAtCall).toEqual([0, 2]);
      expect(s.discarded).toEqual([]);
    });

    it('a partial-batch response is ignored unless ReportBatchItemFailures is on', async () => {
      const s = setup({ shards: 1 });
      s.runtime.behaviour = () => itemFailures('1');
      commit(s.log, [insert('d', 1), insert('d', 2)]);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 2, 2000, 'the checkpoint');
      expect(s.runtime.events.map(seqs)).toEqual([[1, 2]]);
    });

    it.each<[string, unknown]>([
      ['a null itemIdentifier', null],
      ['an empty itemIdentifier', ''],
      ['an unknown sequence number', '42'],
    ])('%s fails the whole batch, which is retried', async (_label, id) => {
      const s = setup({ shards: 1, trigger: { functionResponseTypes: ['ReportBatchItemFailures'], maximumRetryAttempts: 1 } });
      s.runtime.behaviour = (_event, call) => (call === 1 ? itemFailures('2', id) : OK);
      commit(s.log, [insert('d', 1), insert('d', 2), insert('d', 3)]);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 3, 2000, 'the checkpoint');
      expect(s.runtime.events.map(seqs)).toEqual([[1, 2, 3], [1, 2, 3]]);
    });

    it('maximumRecordAgeSeconds discards records older than it without invoking the function', async () => {
      const s = setup({ shards: 1, trigger: { maximumRecordAgeSeconds: 60 } });
      const old = Date.now() - 120_000;
      commit(s.log, [insert('d', 1), insert('d', 2)], old);
      commit(s.log, [insert('d', 3)]);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 3, 2000, 'the checkpoint');
      expect(s.runtime.events.map(seqs)).toEqual([[3]]);
      expect(s.discarded).toEqual([
        expect.objectContaining({ firstSequenceNumber: 1, lastSequenceNumber: 2, count: 2, reason: 'RecordAgeExceeded', invocations: 0, firstRecordAt: old, lastRecordAt: old }),
      ]);
      expect(s.discarded[0]).not.toHaveProperty('lastOutcome');
    });

    it('the default age limit is infinite: old records are delivered', async () => {
      const s = setup({ shards: 1 });
      commit(s.log, [insert('d', 1)], Date.now() - 30 * 24 * 3600_000);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 1, 2000, 'the checkpoint');
      expect(s.runtime.events.map(seqs)).toEqual([[1]]);
      expect(s.discarded).toEqual([]);
    });

    it('a failing onDiscard keeps the checkpoint before the records, and they are tried again', async () => {
      const log = new MemoryChangeLog({ shards: 1 });
      const checkpoints = new MemoryCheckpointStore();
      const runtime = new FakeRuntime();
      let refusals = 0;
      const mapping = new EventSourceMapping(FN, { id: 't', batchSize: 10, startingPosition: 'TRIM_HORIZON', maximumRetryAttempts: 0 }, {
        log,
        runtime,
        checkpoints,
        logger: createLogger('silent'),
        metrics: createMetrics(),
        onDiscard: () => {
          if (refusals++ === 0) throw new Error('dead-letter queue unavailable');
        },
      });
      started.push(mapping);
      runtime.behaviour = (event) => (seqs(event)[0] === 1 ? FAILED : OK);
      commit(log, [insert('d', 1)]);
      await mapping.start();
      await waitFor(async () => (await checkpoints.get(FN.name, 't', 0)) === 1, 3000, 'the checkpoint');
      expect(runtime.events.map(seqs)).toEqual([[1], [1]]);
      expect(refusals).toBe(2);
    });

    it('keeps per-shard order with poison records, bisection and partial responses on several shards', async () => {
      const s = setup({ shards: 3, trigger: { batchSize: 6, maximumRetryAttempts: 1, bisectBatchOnFunctionError: true, functionResponseTypes: ['ReportBatchItemFailures'] } });
      const devices = devicePerShard(s.log);
      // Poison readings throw; "flaky" readings are reported as failed items the first time they are seen.
      const poison = new Set([3, 11, 17]);
      const seenFlaky = new Set<string>();
      s.runtime.behaviour = (event) => {
        for (const r of event.Records) if (poison.has(tsOf(r))) return POISON;
        const flaky = event.Records.find((r) => tsOf(r) % 5 === 0 && !seenFlaky.has(r.eventID));
        if (flaky) {
          seenFlaky.add(flaky.eventID);
          return itemFailures(flaky.dynamodb.SequenceNumber);
        }
        return OK;
      };
      const total = 20;
      for (let ts = 1; ts <= total; ts++) commit(s.log, devices.map((d) => insert(d, ts)));
      await s.mapping.start();
      await waitFor(async () => {
        for (let shard = 0; shard < 3; shard++) if ((await s.checkpoint(shard)) !== total) return false;
        return true;
      }, 5000, 'every shard checkpointed');
      for (const d of devices) {
        // What the function handled without error, per device: in order, nothing missing but the poison readings.
        const handled = s.runtime.events
          .filter((e) => !e.Records.some((r) => poison.has(tsOf(r))))
          .flatMap((e) => e.Records)
          .filter((r) => deviceOf(r) === d);
        const firsts = handled.filter((r, i) => handled.findIndex((x) => x.eventID === r.eventID) === i).map(tsOf);
        expect(firsts).toEqual(Array.from({ length: total }, (_, i) => i + 1).filter((ts) => !poison.has(ts)));
      }
      expect(s.discarded.map((m) => [m.shard, m.firstSequenceNumber, m.count]).sort()).toEqual(
        [0, 1, 2].flatMap((shard) => [...poison].map((ts) => [shard, ts, 1])).sort(),
      );
    });
  });

  describe('maximumBatchingWindowMs', () => {
    it('gathers records until the batch is full, then invokes at once', async () => {
      // A window far longer than the test: the invocation can only come from a full batch.
      const s = setup({ shards: 1, trigger: { batchSize: 5, maximumBatchingWindowMs: 300_000 } });
      const read = vi.spyOn(s.log, 'read');
      commit(s.log, [insert('d', 1), insert('d', 2)]);
      await s.mapping.start();
      await waitFor(() => read.mock.calls.length >= 1, 2000, 'the first read');
      commit(s.log, [insert('d', 3)]);
      commit(s.log, [insert('d', 4), insert('d', 5), insert('d', 6)]);
      await waitFor(async () => (await s.checkpoint(0)) === 5, 3000, 'the full batch');
      expect(s.runtime.events.map(seqs)).toEqual([[1, 2, 3, 4, 5]]);
    });

    it('invokes with what it has once the window has passed', async () => {
      const s = setup({ shards: 1, trigger: { batchSize: 100, maximumBatchingWindowMs: 50 } });
      commit(s.log, [insert('d', 1), insert('d', 2)]);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 2, 3000, 'the batch after the window');
      expect(s.runtime.events.map(seqs)).toEqual([[1, 2]]);
    });
  });

  describe('parallelizationFactor', () => {
    it('runs batches of one shard concurrently, each for a subset of the devices, in order per device', async () => {
      const factor = 3;
      const s = setup({ shards: 1, trigger: { batchSize: 2, parallelizationFactor: factor } });
      const devices = Array.from({ length: 12 }, (_, i) => `sensor-${i}`);
      let inFlight = 0;
      let maxInFlight = 0;
      const release = gate();
      s.runtime.behaviour = async () => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        // The first invocations wait until several are running at once.
        if (maxInFlight < 2) await release.promise;
        else release.open();
        inFlight--;
        return OK;
      };
      const rounds = 5;
      for (let ts = 1; ts <= rounds; ts++) commit(s.log, devices.map((d) => insert(d, ts)));
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === rounds * devices.length, 5000, 'every record');
      expect(maxInFlight).toBeGreaterThanOrEqual(2);
      for (const event of s.runtime.events) {
        expect(event.Records.length).toBeLessThanOrEqual(2);
        expect(new Set(event.Records.map((r) => laneOf(deviceOf(r), factor))).size).toBe(1);
      }
      for (const d of devices) expect(s.runtime.records().filter((r) => deviceOf(r) === d).map(tsOf)).toEqual([1, 2, 3, 4, 5]);
      expect(s.runtime.records()).toHaveLength(rounds * devices.length);
    });

    it('a failing batch holds back only its own devices until the read is finished, and nothing is checkpointed past it', async () => {
      const s = setup({ shards: 1, trigger: { batchSize: 10, parallelizationFactor: 2, maximumRetryAttempts: 10 } });
      const devices = Array.from({ length: 8 }, (_, i) => `sensor-${i}`);
      const poisonLane = laneOf('sensor-0', 2);
      let failures = 0;
      const checkpointsSeen: Array<number | undefined> = [];
      s.runtime.behaviour = async (event) => {
        checkpointsSeen.push(await s.checkpoint(0));
        if (laneOf(deviceOf(event.Records[0] as DynamoDBStreamRecord), 2) === poisonLane && failures < 2) {
          failures++;
          return FAILED;
        }
        return OK;
      };
      commit(s.log, devices.map((d) => insert(d, 1)));
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === devices.length, 5000, 'the checkpoint');
      // The other lane went through once; the failing one three times; the checkpoint waited for both.
      const byLane = (lane: number) => s.runtime.events.filter((e) => laneOf(deviceOf(e.Records[0] as DynamoDBStreamRecord), 2) === lane).length;
      expect(byLane(poisonLane)).toBe(3);
      expect(byLane(1 - poisonLane)).toBe(1);
      expect(checkpointsSeen.every((c) => c === 0)).toBe(true);
    });
  });

  describe('tumblingWindowSeconds', () => {
    const WINDOW_S = 60;
    type WindowEvent = DynamoDBStreamEvent & { window: { start: string; end: string }; state: Record<string, number>; shardId: string; eventSourceARN: string; isFinalInvokeForWindow: boolean; isWindowTerminatedEarly: boolean };
    /** Counts records per window in its state. */
    const counting: Behaviour = (event) => {
      const e = event as WindowEvent;
      return { status: 'ok', result: { state: { count: (e.state['count'] ?? 0) + e.Records.length } } };
    };

    it('carries state from one invocation of a window to the next and ends each window with a final invocation', async () => {
      const s = setup({ shards: 1, trigger: { batchSize: 1, tumblingWindowSeconds: WINDOW_S } });
      s.runtime.behaviour = counting;
      // Two windows in the past: both are complete, so each gets its final invocation.
      const w1 = Math.floor(Date.now() / 60_000) * 60_000 - 3 * 60_000;
      commit(s.log, [insert('d', 1)], w1 + 1000);
      commit(s.log, [insert('d', 2)], w1 + 2000);
      commit(s.log, [insert('d', 3)], w1 + 61_000);
      await s.mapping.start();
      await waitFor(() => s.runtime.events.length === 5, 5000, 'five invocations');
      const events = s.runtime.events as WindowEvent[];
      const iso = (ms: number) => new Date(ms).toISOString();
      expect(events.map((e) => [seqs(e), e.state, e.isFinalInvokeForWindow, e.window.start])).toEqual([
        [[1], {}, false, iso(w1)],
        [[2], { count: 1 }, false, iso(w1)],
        [[], { count: 2 }, true, iso(w1)],
        [[3], {}, false, iso(w1 + 60_000)],
        [[], { count: 1 }, true, iso(w1 + 60_000)],
      ]);
      expect(events[0]).toMatchObject({ window: { start: iso(w1), end: iso(w1 + 60_000) }, shardId: 'shardId-0000', eventSourceARN: s.log.streamArn, isWindowTerminatedEarly: false });
      await waitFor(async () => (await s.checkpoints.window(FN.name, 'trigger-1', 0)) === undefined && (await s.checkpoint(0)) === 3, 2000, 'the closed window');
    });

    it('keeps the state with the checkpoint, so a restart continues the window where it was', async () => {
      const checkpoints = new MemoryCheckpointStore();
      const log = new MemoryChangeLog({ shards: 1 });
      // A window in the future: it cannot end during the test.
      const future = Math.floor(Date.now() / 60_000) * 60_000 + 24 * 3600_000;
      const first = setup({ log, checkpoints, trigger: { batchSize: 1, tumblingWindowSeconds: WINDOW_S } });
      first.runtime.behaviour = counting;
      commit(log, [insert('d', 1)], future + 1000);
      await first.mapping.start();
      await waitFor(async () => (await first.checkpoint(0)) === 1, 2000, 'the first checkpoint');
      await first.mapping.stop();
      expect(await checkpoints.window(FN.name, 'trigger-1', 0)).toEqual({ start: future, state: { count: 1 } });
      const second = setup({ log, checkpoints, trigger: { batchSize: 1, tumblingWindowSeconds: WINDOW_S } });
      second.runtime.behaviour = counting;
      commit(log, [insert('d', 2)], future + 2000);
      await second.mapping.start();
      await waitFor(async () => (await second.checkpoint(0)) === 2, 2000, 'the second checkpoint');
      expect((second.runtime.events as WindowEvent[]).map((e) => [seqs(e), e.state])).toEqual([[[2], { count: 1 }]]);
    });

    it('the LevelDB checkpoint store keeps the window with the sequence number, durably', async () => {
      const dir = tempDir();
      try {
        let database = await Database.open(dir.path);
        let store = new LevelCheckpointStore(database);
        await store.set('fn', 't', 3, 41);
        expect([await store.get('fn', 't', 3), await store.window('fn', 't', 3)]).toEqual([41, undefined]);
        await store.set('fn', 't', 3, 42, { start: 60_000, state: { count: 7, nested: { ok: true } } });
        await database.close();
        database = await Database.open(dir.path);
        store = new LevelCheckpointStore(database);
        expect([await store.get('fn', 't', 3), await store.window('fn', 't', 3)]).toEqual([42, { start: 60_000, state: { count: 7, nested: { ok: true } } }]);
        // Closing the window writes the checkpoint without one.
        await store.set('fn', 't', 3, 42);
        expect(await store.window('fn', 't', 3)).toBeUndefined();
        await database.close();
      } finally {
        dir.cleanup();
      }
    });

    it('a response without state is a failed invocation', async () => {
      const s = setup({ shards: 1, trigger: { tumblingWindowSeconds: WINDOW_S, maximumRetryAttempts: 0 } });
      s.runtime.behaviour = () => ({ status: 'ok', result: { batchItemFailures: [] } });
      commit(s.log, [insert('d', 1)], Date.now() + 24 * 3600_000);
      await s.mapping.start();
      await waitFor(() => s.discarded.length === 1, 2000, 'the discarded batch');
      expect(s.discarded[0]?.lastOutcome).toMatchObject({ status: 'error', errorType: 'InvalidWindowResponse' });
    });

    it('ends a window early when its state passes 1 MB, and goes on with a fresh state', async () => {
      const s = setup({ shards: 1, trigger: { batchSize: 1, tumblingWindowSeconds: WINDOW_S } });
      const big = 'x'.repeat(700_000);
      s.runtime.behaviour = (event) => {
        const e = event as WindowEvent;
        return { status: 'ok', result: { state: e.isFinalInvokeForWindow ? {} : { ...e.state, [`k${seqs(e)[0]}`]: big } } };
      };
      const future = Math.floor(Date.now() / 60_000) * 60_000 + 24 * 3600_000;
      commit(s.log, [insert('d', 1), insert('d', 2), insert('d', 3)], future);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 3, 3000, 'the checkpoint');
      const events = s.runtime.events as WindowEvent[];
      expect(events.map((e) => [seqs(e), Object.keys(e.state), e.isFinalInvokeForWindow, e.isWindowTerminatedEarly])).toEqual([
        [[1], [], false, false],
        [[2], ['k1'], false, false],
        [[], ['k1', 'k2'], true, true],
        [[3], [], false, false],
      ]);
    });
  });

  describe('records removed by stream retention', () => {
    it('a checkpoint behind the oldest retained record continues there, with a warning and a metric', async () => {
      const log = new MemoryChangeLog({ shards: 1 });
      const checkpoints = new MemoryCheckpointStore();
      await checkpoints.set(FN.name, 'trigger-1', 0, 1);
      commit(log, [insert('d', 1), insert('d', 2), insert('d', 3)], Date.now() - 3600_000);
      commit(log, [insert('d', 4), insert('d', 5)]);
      expect(await log.trim(Date.now() - 60_000)).toBe(3);
      const s = setup({ log, checkpoints });
      const warn = vi.spyOn(s.logger, 'warn');
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 5, 2000, 'the checkpoint');
      expect(s.runtime.events.map(seqs)).toEqual([[4, 5]]);
      expect(warn).toHaveBeenCalledWith(expect.objectContaining({ checkpoint: 1, firstRetained: 4, lost: 2 }), expect.stringContaining('removed by stream retention'));
      expect((await s.metrics.mappingTrimmed.get()).values).toEqual([expect.objectContaining({ value: 2, labels: { function: FN.name, trigger: 'trigger-1' } })]);
    });

    it('TRIM_HORIZON on a trimmed log starts at the oldest retained record without reporting a loss', async () => {
      const log = new MemoryChangeLog({ shards: 1 });
      commit(log, [insert('d', 1), insert('d', 2)], Date.now() - 3600_000);
      commit(log, [insert('d', 3)]);
      await log.trim(Date.now() - 60_000);
      const s = setup({ log, trigger: { startingPosition: 'TRIM_HORIZON' } });
      await s.mapping.start();
      expect(await s.checkpoint(0)).toBe(2);
      await waitFor(async () => (await s.checkpoint(0)) === 3, 2000, 'the checkpoint');
      expect((await s.metrics.mappingTrimmed.get()).values).toEqual([]);
    });
  });

  describe('writes by functions (context.put)', () => {
    const by = (fn: string, hops: number, ts: number): Change => ({ ...insert('d', ts), origin: { function: fn, hops } });

    it('skips what the function itself wrote and chains longer than the hop limit, and marks its own invocations one hop further', async () => {
      const s = setup({ shards: 1 });
      commit(s.log, [insert('d', 1), by(FN.name, 1, 2), by('other', 3, 3), by('other', MAX_WRITE_HOPS, 4), insert('d', 5)]);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 5, 2000, 'the checkpoint');
      expect(s.runtime.records().map(tsOf)).toEqual([1, 3, 5]);
      // Writes of that invocation are one hop further than the longest chain it was given.
      expect(s.runtime.options).toEqual([{ origin: { function: FN.name, hops: 4 } }]);
      const skipped = (await s.metrics.mappingSkipped.get()).values.map((v) => [v.labels.reason, v.value]);
      expect(skipped.sort()).toEqual([['hop_limit', 1], ['own_write', 1]]);
      // The origin is internal: the Lambda record does not show it.
      expect(JSON.stringify(s.runtime.events)).not.toContain('origin');
    });

    it('the origin of a write reaches its change records through the LevelDB store, also after a reopen', async () => {
      const dir = tempDir();
      const open = async () => {
        const database = await Database.open(dir.path);
        const changeLog = await EmbeddedChangeLog.open(database, { shards: 1 });
        const store = await LevelTelemetryStore.open({ database, changeLog, partitionWindowMs: 86_400_000, maxBatch: 100, maxDelayMs: 0 });
        return { database, changeLog, store };
      };
      try {
        let o = await open();
        await o.store.write({ deviceId: 'derived', readings: [{ ts: 1000, values: { a: 1 } }, { ts: 2000, values: { a: 2 } }], origin: { function: 'fn-a', hops: 2 } });
        await o.store.write({ deviceId: 'derived', readings: [{ ts: 1000, values: { a: 3 } }] });
        const check = async () => (await o.changeLog.read(0, 0, 10)).map((r) => [r.eventName, r.origin]);
        const expected = [
          ['INSERT', { function: 'fn-a', hops: 2 }],
          ['INSERT', { function: 'fn-a', hops: 2 }],
          ['MODIFY', undefined],
        ];
        expect(await check()).toEqual(expected);
        await o.store.close();
        await o.database.close();
        o = await open();
        expect(await check()).toEqual(expected);
        await o.store.close();
        await o.database.close();
      } finally {
        dir.cleanup();
      }
    });
  });

  describe('throttles', () => {
    it('a Throttled refusal is retried after a backoff without spending a retry, and counted', async () => {
      const s = setup({ shards: 1, trigger: { maximumRetryAttempts: 0 } });
      s.runtime.behaviour = (_e, call) => {
        if (call <= 2) throw new TributaryError('Throttled', 'too many invocations waiting');
        return OK;
      };
      commit(s.log, [insert('d', 1)]);
      await s.mapping.start();
      await waitFor(async () => (await s.checkpoint(0)) === 1, 3000, 'the checkpoint');
      expect(s.discarded).toEqual([]);
      expect((await s.metrics.mappingThrottles.get()).values).toEqual([expect.objectContaining({ value: 2 })]);
      expect((await s.metrics.mappingInvocations.get()).values).toEqual([expect.objectContaining({ value: 1, labels: { function: FN.name, trigger: 'trigger-1', outcome: 'ok' } })]);
    });
  });

  describe('stop', () => {
    it('returns promptly while the pollers wait for records, and delivers nothing after', async () => {
      const s = setup({ shards: 3 });
      const read = vi.spyOn(s.log, 'read');
      await s.mapping.start();
      await waitFor(() => read.mock.calls.length >= 3, 2000, 'every poller to read');
      await Promise.all(read.mock.results.map((r) => r.value));
      await new Promise((r) => setImmediate(r));
      await within(s.mapping.stop(), 500, 'stop()');
      const reads = read.mock.calls.length;
      commit(s.log, [insert('d', 1)]);
      await new Promise((r) => setImmediate(r));
      expect(read.mock.calls.length).toBe(reads);
      expect(s.runtime.events).toEqual([]);
    });

    it('returns when stopped while a read is in flight', async () => {
      const log = new MemoryChangeLog({ shards: 1 });
      const s = setup({ log });
      const readDone = gate();
      const realRead = log.read.bind(log);
      const read = vi.spyOn(log, 'read').mockImplementation(async (...args) => {
        await readDone.promise;
        return realRead(...args);
      });
      await s.mapping.start();
      await waitFor(() => read.mock.calls.length === 1, 2000, 'the first read');
      const stopping = s.mapping.stop();
      readDone.open();
      await within(stopping, 500, 'stop() during a read');
    });

    it('during a retry backoff returns without waiting it out, and leaves the checkpoint', async () => {
      const s = setup({ shards: 1, trigger: { maximumRetryAttempts: 5 } });
      s.runtime.behaviour = () => FAILED;
      commit(s.log, [insert('d', 1)]);
      await s.mapping.start();
      // After the third failure the poller waits 400 ms before trying again.
      await waitFor(() => s.runtime.events.length === 3, 2000, 'three attempts');
      const t0 = Date.now();
      await within(s.mapping.stop(), 1000, 'stop() during a backoff');
      expect(Date.now() - t0).toBeLessThan(200);
      expect(s.runtime.events).toHaveLength(3);
      expect(await s.checkpoint(0)).toBe(0);
    });

    it('waits for the invocation in flight and checkpoints it when it succeeded', async () => {
      const checkpoints = new MemoryCheckpointStore();
      const log = new MemoryChangeLog({ shards: 1 });
      const s = setup({ log, checkpoints });
      const held = gate<InvokeOutcome>();
      s.runtime.behaviour = () => held.promise;
      commit(log, [insert('d', 1), insert('d', 2)]);
      await s.mapping.start();
      await waitFor(() => s.runtime.events.length === 1, 2000, 'the invocation');
      const stopping = s.mapping.stop();
      held.open(OK);
      await within(stopping, 500, 'stop() during an invocation');
      expect(await s.checkpoint(0)).toBe(2);
      // So a restart does not hand the batch to the function again.
      const next = setup({ log, checkpoints });
      await next.mapping.start();
      commit(log, [insert('d', 3)]);
      await waitFor(() => next.runtime.events.length === 1, 2000, 'the next batch');
      expect(seqs(next.runtime.events[0])).toEqual([3]);
    });
  });
});

/**
 * Event source mappings under a shard placement (cluster mode, ADR 0002 "Functions"):
 * two mappings of one trigger stand for two nodes; they share one checkpoint store, as
 * nodes share the Kafka group's offsets, and a fake placement moves shards between them.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../core/logger.js';
import { createMetrics } from '../core/metrics.js';
import { MemoryCheckpointStore, type Checkpoint, type CheckpointStore } from '../functions/checkpoints.js';
import { EventSourceMapping, type TriggerConfig } from '../functions/event-source-mapping.js';
import type { FunctionRuntime, FunctionSpec, InvokeResult, ShardPlacement } from '../functions/types.js';
import type { DynamoDBStreamEvent } from '../streams/lambda-event.js';
import { MemoryChangeLog } from '../streams/memory-log.js';
import type { BatchOp, ChangeLog } from '../streams/types.js';
import { waitFor } from './helpers.js';
import { AssignedShards } from '../functions/placement.js';
import { parseTsSeq } from '../store/table-key.js';

const FN: FunctionSpec = { name: 'placed', version: 1, codePath: '/nowhere/handler.mjs', timeoutMs: 1000, memoryMb: 128, environment: {} };
const SHARDS = 4;


/** One delivered record: which node, which invocation, which device reading. */
interface Delivery {
  node: string;
  invocation: number;
  deviceId: string;
  ts: number;
  sequenceNumber: number;
}

/** The function on every node: records what each node delivered, in invocation order across nodes. */
class Deliveries {
  readonly all: Delivery[] = [];
  private invocations = 0;
  /** Runs before an invocation returns (a delay, a gate). */
  hold: (node: string, records: Delivery[]) => Promise<void> = async () => {};

  runtime(node: string): FunctionRuntime {
    return {
      invoke: async (_fn, event): Promise<InvokeResult> => {
        const invocation = ++this.invocations;
        const records = (event as DynamoDBStreamEvent).Records.map((r) => ({
          node,
          invocation,
          deviceId: r.dynamodb.Keys['deviceId']?.S as string,
          ts: parseTsSeq(r.dynamodb.Keys['tsSeq']?.N ?? '')?.ts as number,
          sequenceNumber: Number(r.dynamodb.SequenceNumber),
        }));
        this.all.push(...records);
        await this.hold(node, records);
        return { requestId: `req-${invocation}`, outcome: { status: 'ok', result: null }, durationMs: 1, logs: [] };
      },
      close: async () => {},
    };
  }

  /** Every reading of `deviceId` delivered at least once, counting 1..n. */
  has(deviceId: string, n: number): boolean {
    const seen = new Set(this.all.filter((d) => d.deviceId === deviceId).map((d) => d.ts));
    for (let ts = 1; ts <= n; ts++) if (!seen.has(ts)) return false;
    return true;
  }
}

/** A committed write of one reading per device, as the store's write path stages and commits it. */
function commitReadings(log: ChangeLog, readings: Array<[deviceId: string, ts: number]>): void {
  const ops: BatchOp[] = [];
  log.commit(log.stage(ops, readings.map(([deviceId, ts]) => ({ eventName: 'INSERT', deviceId, ts, seq: 0, newValues: { ts } })), Date.now()));
}

/** `perShard` device ids of every shard of `log`. */
function devicesPerShard(log: ChangeLog, perShard: number): string[][] {
  const out: string[][] = Array.from({ length: log.shardCount }, () => []);
  for (let i = 0; out.some((d) => d.length < perShard); i++) {
    const id = `dev-${i}`;
    const list = out[log.shardOf(id)] as string[];
    if (list.length < perShard) list.push(id);
  }
  return out;
}

/** A promise the test settles by hand. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

describe('EventSourceMapping with a shard placement', () => {
  const started: EventSourceMapping[] = [];
  afterEach(async () => {
    await Promise.all(started.splice(0).map((m) => m.stop()));
  });

  /** Nodes a and b sharing one log and checkpoint store; a owns every shard to begin with. */
  function twoNodes(shared: { log: ChangeLog; checkpoints: CheckpointStore; deliveries: Deliveries }): { placeA: AssignedShards; placeB: AssignedShards; a: EventSourceMapping; b: EventSourceMapping } {
    const placeA = new AssignedShards([0, 1, 2, 3]);
    const placeB = new AssignedShards([]);
    return { placeA, placeB, a: node('a', { ...shared, placement: placeA }), b: node('b', { ...shared, placement: placeB }) };
  }

  function node(name: string, setup: { log: ChangeLog; checkpoints: CheckpointStore; deliveries: Deliveries; placement: ShardPlacement; trigger?: Partial<TriggerConfig> }): EventSourceMapping {
    const trigger: TriggerConfig = { id: 'trigger-1', batchSize: 5, startingPosition: 'TRIM_HORIZON', maximumRetryAttempts: 2, ...setup.trigger };
    const mapping = new EventSourceMapping(FN, trigger, {
      log: setup.log,
      runtime: setup.deliveries.runtime(name),
      checkpoints: setup.checkpoints,
      logger: createLogger('silent'),
      metrics: createMetrics(),
      placement: setup.placement,
    });
    started.push(mapping);
    return mapping;
  }

  it('delivers every record at least once, in order per device, while shards move between two nodes', { timeout: 60_000 }, async () => {
    const log = new MemoryChangeLog({ shards: SHARDS });
    const checkpoints = new MemoryCheckpointStore();
    const deliveries = new Deliveries();
    // Invocations take a little while, so that moves find batches in flight.
    deliveries.hold = () => new Promise((resolve) => setTimeout(resolve, Math.random() * 4));
    const { placeA, placeB, a, b } = twoNodes({ log, checkpoints, deliveries });
    await a.start();
    await b.start();
    expect([a.shards(), b.shards()]).toEqual([[0, 1, 2, 3], []]);

    const devices = devicesPerShard(log, 2).flat();
    // Each round: readings for every device, then a new placement (the two nodes told in either order, as a rebalance would).
    const layouts: Array<[number[], number[]]> = [
      [[0, 1], [2, 3]],
      [[1, 2], [0, 3]],
      [[], [0, 1, 2, 3]],
      [[0, 2], [1, 3]],
      [[3], [0, 1, 2]],
      [[0, 1, 2, 3], []],
      [[0, 1], [2, 3]],
    ];
    let ts = 0;
    for (const [round, [ownedA, ownedB]] of layouts.entries()) {
      for (let i = 0; i < 4; i++) {
        ts++;
        commitReadings(log, devices.map((d) => [d, ts]));
      }
      if (round % 2 === 0) {
        placeA.set(ownedA);
        placeB.set(ownedB);
      } else {
        placeB.set(ownedB);
        placeA.set(ownedA);
      }
      // Every other round, let the pollers work a little before the next move.
      if (round % 2 === 1) await waitFor(() => devices.every((d) => deliveries.has(d, ts - 2)), 20_000, `round ${round}'s earlier readings`);
    }
    await waitFor(() => devices.every((d) => deliveries.has(d, ts)), 20_000, 'every reading delivered');
    await waitFor(() => a.shards().join() === '0,1' && b.shards().join() === '2,3', 20_000, 'the last placement in force');

    // Pollers of lost shards have stopped: a last round is delivered by the owners only.
    const last = ts + 1;
    commitReadings(log, devices.map((d) => [d, last]));
    await waitFor(() => devices.every((d) => deliveries.has(d, last)), 20_000, 'the last round');
    const lastRound = deliveries.all.filter((d) => d.ts === last);
    for (const d of lastRound) expect({ deviceId: d.deviceId, node: d.node }).toEqual({ deviceId: d.deviceId, node: log.shardOf(d.deviceId) < 2 ? 'a' : 'b' });
    expect(lastRound).toHaveLength(devices.length);

    // In order per device: a reading is first delivered only after every earlier one (redeliveries may repeat older ones).
    for (const device of devices) {
      let next = 1;
      for (const d of deliveries.all.filter((x) => x.deviceId === device)) {
        expect(d.ts, `${device}: reading ${d.ts} delivered before ${next}`).toBeLessThanOrEqual(next);
        if (d.ts === next) next++;
      }
      expect(next).toBe(last + 1);
    }
    // Each invocation's records are in sequence order.
    const byInvocation = new Map<number, number[]>();
    for (const d of deliveries.all) byInvocation.set(d.invocation, [...(byInvocation.get(d.invocation) ?? []), d.sequenceNumber]);
    for (const seqs of byInvocation.values()) expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    // Both nodes did part of the work.
    expect(new Set(deliveries.all.map((d) => d.node))).toEqual(new Set(['a', 'b']));
  });

  it('a lost shard finishes its batch in flight and checkpoints it; the new owner reads that checkpoint when it gains the shard', { timeout: 30_000 }, async () => {
    const log = new MemoryChangeLog({ shards: SHARDS });
    const checkpoints = new MemoryCheckpointStore();
    const deliveries = new Deliveries();
    const { placeA, placeB, a, b } = twoNodes({ log, checkpoints, deliveries });
    // Both start now, when shard 0's checkpoint is still 0.
    await a.start();
    await b.start();

    const [device] = devicesPerShard(log, 1)[0] as string[];
    const inFlight = gate();
    const invoked = gate();
    deliveries.hold = async (nodeName) => {
      if (nodeName !== 'a') return;
      invoked.open();
      await inFlight.promise;
    };
    commitReadings(log, [
      [device as string, 1],
      [device as string, 2],
    ]);
    await invoked.promise;

    placeA.set([1, 2, 3]);
    // Still polling shard 0 until its batch is done.
    await new Promise((resolve) => setImmediate(resolve));
    expect(a.shards()).toEqual([0, 1, 2, 3]);
    inFlight.open();
    await waitFor(() => a.shards().join() === '1,2,3', 10_000, 'the lost shard\'s poller stopped');
    expect(deliveries.all.map((d) => d.ts)).toEqual([1, 2]);
    expect(await checkpoints.get(FN.name, 'trigger-1', 0)).toBe(2);

    placeB.set([0]);
    await waitFor(() => b.shards().join() === '0', 10_000, 'the gained shard\'s poller');
    commitReadings(log, [[device as string, 3]]);
    await waitFor(() => deliveries.has(device as string, 3), 10_000, 'the reading after the move');
    // B went on from A's checkpoint: nothing of A's finished batch came again, and A took no part after the move.
    expect(deliveries.all.map((d) => [d.node, d.ts])).toEqual([
      ['a', 1],
      ['a', 2],
      ['b', 3],
    ]);
  });

  it('a gained shard without a checkpoint starts at the trigger\'s starting position', { timeout: 30_000 }, async () => {
    const log = new MemoryChangeLog({ shards: SHARDS });
    const checkpoints = new MemoryCheckpointStore();
    const deliveries = new Deliveries();
    const placement = new AssignedShards([0]);
    const a = node('a', { log, checkpoints, deliveries, placement, trigger: { startingPosition: 'LATEST' } });
    await a.start();
    // Only owned shards are started, so only they have a checkpoint.
    expect(await checkpoints.get(FN.name, 'trigger-1', 1)).toBeUndefined();

    const [device] = devicesPerShard(log, 1)[1] as string[];
    commitReadings(log, [[device as string, 1]]);
    commitReadings(log, [[device as string, 2]]);
    placement.set([0, 1]);
    await waitFor(() => a.shards().join() === '0,1', 10_000, 'the gained shard\'s poller');
    // LATEST at the moment the shard was gained: after the two readings.
    expect(await checkpoints.get(FN.name, 'trigger-1', 1)).toBe(2);
    commitReadings(log, [[device as string, 3]]);
    await waitFor(() => deliveries.all.some((d) => d.ts === 3), 10_000, 'the reading after the gain');
    expect(deliveries.all.map((d) => d.ts)).toEqual([3]);
  });

  it('retries a placement change whose checkpoint read failed', { timeout: 30_000 }, async () => {
    const log = new MemoryChangeLog({ shards: SHARDS });
    const store = new MemoryCheckpointStore();
    let failures = 0;
    // The store reads fail twice for shard 2 (as Kafka unreachable would).
    const checkpoints: CheckpointStore = Object.assign(Object.create(store) as CheckpointStore, {
      read: async (fn: string, trigger: string, shard: number): Promise<Checkpoint | undefined> => {
        if (shard === 2 && failures < 2) {
          failures++;
          throw new Error('coordinator unreachable');
        }
        return store.read(fn, trigger, shard);
      },
    });
    const deliveries = new Deliveries();
    const placement = new AssignedShards([0]);
    const a = node('a', { log, checkpoints, deliveries, placement });
    await a.start();
    placement.set([0, 2]);
    await waitFor(() => a.shards().join() === '0,2', 10_000, 'the shard after the failed reads');
    expect(failures).toBe(2);
    const [device] = devicesPerShard(log, 1)[2] as string[];
    commitReadings(log, [[device as string, 1]]);
    await waitFor(() => deliveries.has(device as string, 1), 10_000, 'a reading of the shard');
  });

  it('stop() stops a placement change in progress: no poller is left running', { timeout: 30_000 }, async () => {
    const log = new MemoryChangeLog({ shards: SHARDS });
    const store = new MemoryCheckpointStore();
    const reading = gate();
    const readStarted = gate();
    let gated = false;
    const checkpoints: CheckpointStore = Object.assign(Object.create(store) as CheckpointStore, {
      read: async (fn: string, trigger: string, shard: number): Promise<Checkpoint | undefined> => {
        if (gated) {
          readStarted.open();
          await reading.promise;
        }
        return store.read(fn, trigger, shard);
      },
    });
    const deliveries = new Deliveries();
    const placement = new AssignedShards([0]);
    const a = node('a', { log, checkpoints, deliveries, placement });
    await a.start();
    gated = true;
    placement.set([0, 1, 2, 3]);
    await readStarted.promise;
    const stopped = a.stop();
    reading.open();
    await stopped;
    expect(a.shards()).toEqual([]);
    // A placement change after stop() is not followed either.
    placement.set([0, 1, 2, 3]);
    await new Promise((resolve) => setImmediate(resolve));
    expect(a.shards()).toEqual([]);
  });
});

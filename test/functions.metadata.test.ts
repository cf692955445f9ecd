/**
 * The function registry and the trigger manager on a shared MetadataWriter, as in cluster
 * mode: two "nodes", each with its own LevelDB and data directory, whose writes are
 * applied to both databases in one order (an in-process stand-in for the Kafka-backed
 * writer, which is tested on its own). What one node writes, the other must act on.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { TributaryError } from '../core/errors.js';
import { createLogger } from '../core/logger.js';
import { createMetrics } from '../core/metrics.js';
import { ProcessFunctionRuntime } from '../functions/process-runtime.js';
import { FunctionRegistry, PACKAGE_CHUNK_BYTES } from '../functions/registry.js';
import { Prefix } from '../store/keyspace.js';
import { TriggerManager } from '../functions/triggers.js';
import type { FunctionRuntime, InvokeResult } from '../functions/types.js';
import { Database } from '../store/database.js';
import type { MetadataWriter } from '../store/metadata.js';
import type { DynamoDBStreamEvent } from '../streams/lambda-event.js';
import { MemoryChangeLog } from '../streams/memory-log.js';
import type { BatchOp } from '../streams/types.js';
import { tempDir, waitFor } from './helpers.js';
import { blobPackage } from './package-archives.js';
import { parseTsSeq } from '../store/table-key.js';

type Listener = (ops: readonly BatchOp[]) => void;

/**
 * One order of metadata writes for several databases: a commit through any member is
 * applied to every member's database, commits one after another in the order they were
 * made, and then every member's listeners are told — before the commit resolves, as the
 * contract asks. `hold()` keeps commits queued until `release()` (two nodes racing).
 */
class SharedOrder {
  private readonly members: Array<{ database: Database; listeners: Set<Listener> }> = [];
  private tail: Promise<void> = Promise.resolve();
  private gate: Promise<void> | undefined;
  private open: (() => void) | undefined;
  /** Commits made and not yet applied everywhere. */
  pending = 0;
  /** Bytes (keys and values) of the largest commit: in cluster mode a commit is one Kafka record batch. */
  largestCommit = 0;

  join(database: Database): MetadataWriter {
    const listeners = new Set<Listener>();
    this.members.push({ database, listeners });
    return {
      commit: (ops) => this.append(ops),
      onApplied: (listener) => {
        listeners.add(listener);
        return () => listeners.delete(listener);
      },
    };
  }

  hold(): void {
    this.gate = new Promise((resolve) => (this.open = resolve));
  }

  release(): void {
    this.open?.();
    this.gate = undefined;
  }

  private append(ops: BatchOp[]): Promise<void> {
    this.pending++;
    this.largestCommit = Math.max(this.largestCommit, ops.reduce((n, op) => n + op.key.length + (op.type === 'put' && op.value !== undefined ? Buffer.byteLength(op.value) : 0), 0));
    const run = this.tail.then(async () => {
      await this.gate;
      for (const m of this.members) await m.database.commit(ops);
      for (const m of this.members) for (const listener of m.listeners) listener(ops);
    });
    this.tail = run.catch(() => undefined);
    return run.finally(() => this.pending--);
  }
}

/** What a node's function runtime was asked to run: function name and version, and the readings' timestamps. */
interface Invocation {
  fn: string;
  version: number;
  ts: number[];
}

interface Node {
  name: string;
  dataDir: string;
  database: Database;
  registry: FunctionRegistry;
  triggers: TriggerManager;
  invocations: Invocation[];
  /** The node's log lines (pino JSON). */
  lines: Array<Record<string, unknown>>;
}

const DEFAULTS = { timeoutMs: 5000, memoryMb: 128 };

/** Lines of `node`'s log with message `msg` about trigger `id`. */
function logged(node: Node, msg: string, id: string): number {
  return node.lines.filter((l) => l['msg'] === msg && l['trigger'] === id).length;
}

function recordingRuntime(invocations: Invocation[]): FunctionRuntime {
  return {
    invoke: async (fn, event): Promise<InvokeResult> => {
      invocations.push({ fn: fn.name, version: fn.version, ts: (event as DynamoDBStreamEvent).Records.map((r) => parseTsSeq(r.dynamodb.Keys['tsSeq']?.N ?? '')?.ts as number) });
      return { requestId: `req-${invocations.length}`, functionVersion: fn.version, outcome: { status: 'ok', result: null }, durationMs: 1, logs: [] };
    },
    close: async () => {},
  };
}

/** A committed reading of device `d1` at `ts`, as the store's write path stages and commits it. */
function commitReading(log: MemoryChangeLog, ts: number): void {
  log.commit(log.stage([], [{ eventName: 'INSERT', deviceId: 'd1', ts, seq: 0, newValues: { ts } }], Date.now()));
}

describe('functions and triggers on a shared metadata order (two nodes)', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function twoNodes(): Promise<{ a: Node; b: Node; order: SharedOrder; log: MemoryChangeLog }> {
    const order = new SharedOrder();
    const log = new MemoryChangeLog({ shards: 2 });
    const nodes: Node[] = [];
    for (const name of ['a', 'b']) {
      const dir = tempDir(`tributary-meta-${name}-`);
      cleanups.push(dir.cleanup);
      const database = await Database.open(dir.path);
      cleanups.push(() => database.close());
      const lines: Array<Record<string, unknown>> = [];
      const sink = new Writable({
        write(chunk: Buffer, _enc, done) {
          for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
          done();
        },
      });
      const logger = createLogger('info', sink);
      const metadata = order.join(database);
      const registry = await FunctionRegistry.open({ database, metadata, dataDir: dir.path, defaults: DEFAULTS, logger });
      const invocations: Invocation[] = [];
      const triggers = new TriggerManager({
        database,
        metadata,
        registry,
        mapping: { log, runtime: recordingRuntime(invocations), logger, metrics: createMetrics() },
        logger,
      });
      await triggers.start();
      cleanups.push(() => triggers.stop());
      nodes.push({ name, dataDir: dir.path, database, registry, triggers, invocations, lines });
    }
    const [a, b] = nodes as [Node, Node];
    return { a, b, order, log };
  }

  it('a version deployed on A resolves on B to a runnable spec, its code file written on B from the database', { timeout: 60_000 }, async () => {
    const { a, b } = await twoNodes();
    const code = 'export const handler = async (e) => ({ doubled: e.n * 2, greeting: process.env.GREETING });';
    const deployed = await a.registry.deploy('doubler', { code, environment: { GREETING: 'from a' } });
    expect(deployed.version).toBe(1);

    // Left on B by something else (a version of the same number that lost a race, a torn write): not this version's code.
    const path = join(b.dataDir, 'functions', 'doubler', 'v1', 'index.mjs');
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, 'export const handler = async () => "stale";');

    const spec = await b.registry.spec('doubler');
    expect(spec.codePath).toBe(path);
    expect(spec).toMatchObject({ name: 'doubler', version: 1, codeSha256: deployed.codeSha256, environment: { GREETING: 'from a' } });
    expect(readFileSync(spec.codePath, 'utf8')).toBe(code);

    const runtime = new ProcessFunctionRuntime({ logger: createLogger('silent'), services: { put: async () => {}, publish: async () => {} } });
    cleanups.push(() => runtime.close());
    const result = await runtime.invoke(spec, { n: 21 });
    expect(result.outcome).toEqual({ status: 'ok', result: { doubled: 42, greeting: 'from a' } });
  });

  it('a package larger than one metadata record goes in chunks of their own commits; B unpacks and runs it, a delete removes every chunk', { timeout: 60_000 }, async () => {
    const { a, b, order } = await twoNodes();
    const archive = await blobPackage("import { readFileSync } from 'node:fs';\nexport const handler = async () => readFileSync(new URL('./blob.bin', import.meta.url)).length;\n", 9 * 1024 * 1024);
    const deployed = await a.registry.deploy('big', { package: archive });
    expect(deployed).toMatchObject({ version: 1, codeSize: archive.length, package: { module: 'index.mjs', format: 'tar' } });
    expect(order.largestCommit).toBeLessThanOrEqual(PACKAGE_CHUNK_BYTES + 1024);

    const spec = await b.registry.spec('big');
    expect(spec.codePath).toBe(join(b.dataDir, 'functions', 'big', 'v1', 'package', 'index.mjs'));
    const runtime = new ProcessFunctionRuntime({ logger: createLogger('silent'), services: { put: async () => {}, publish: async () => {} } });
    cleanups.push(() => runtime.close());
    expect((await runtime.invoke(spec, {})).outcome).toEqual({ status: 'ok', result: 9 * 1024 * 1024 });

    await b.registry.delete('big');
    const codeRows = await a.database.read((db) => db.keys({ gte: Buffer.from([Prefix.function, 0x00]), lt: Buffer.from([Prefix.function, 0x01]) }).all());
    expect(codeRows).toEqual([]);
  });

  it('a redeploy or a delete on B reaches A, whose latest-version cache follows', { timeout: 60_000 }, async () => {
    const { a, b } = await twoNodes();
    await a.registry.deploy('greeter', { code: 'export const handler = async () => "one";' });
    const first = await a.registry.spec('greeter');
    expect(first.version).toBe(1);

    const second = await b.registry.deploy('greeter', { code: 'export const handler = async () => "two";' });
    expect(second.version).toBe(2);
    const latest = await a.registry.spec('greeter');
    expect(latest).toMatchObject({ version: 2, codeSha256: second.codeSha256 });
    expect(readFileSync(latest.codePath, 'utf8')).toContain('"two"');

    await b.registry.delete('greeter');
    for (const read of [() => a.registry.spec('greeter'), () => a.registry.get('greeter'), () => a.registry.spec('greeter', 1)]) {
      await expect(read()).rejects.toMatchObject({ code: 'FunctionNotFound' });
    }
    expect((await a.registry.list({ limit: 10 })).items).toEqual([]);
    // A's cached code files of the deleted versions go too.
    await waitFor(() => !existsSync(first.codePath) && !existsSync(latest.codePath), 10_000, "A's code files removed");
    // Numbers keep counting on both nodes after the delete.
    expect((await a.registry.deploy('greeter', { code: 'export const handler = async () => "three";' })).version).toBe(3);
  });

  it('two nodes deploying one name at once get distinct versions: the first claim applied wins, the other takes the next number', { timeout: 60_000 }, async () => {
    const { a, b, order } = await twoNodes();
    const codes = { a: 'export const handler = async () => "a";', b: 'export const handler = async () => "b";' };
    // Both read the same next number before either claim is applied.
    order.hold();
    const deploys = Promise.all([a.registry.deploy('racy', { code: codes.a }), b.registry.deploy('racy', { code: codes.b })]);
    await waitFor(() => order.pending === 2, 10_000, 'both claims queued');
    order.release();
    const [fromA, fromB] = await deploys;
    expect([fromA.version, fromB.version].sort()).toEqual([1, 2]);
    const loser = fromA.version === 2 ? a : b;
    expect(loser.lines.some((l) => l['msg'] === 'version number taken by a deploy on another node; claiming the next')).toBe(true);

    for (const node of [a, b]) {
      const info = await node.registry.get('racy');
      expect(info.versions.map((v) => [v.version, v.codeSha256])).toEqual(
        [fromA, fromB].sort((x, y) => x.version - y.version).map((v) => [v.version, v.codeSha256]),
      );
      for (const [deployed, code] of [[fromA, codes.a], [fromB, codes.b]] as const) {
        expect(readFileSync((await node.registry.spec('racy', deployed.version)).codePath, 'utf8')).toBe(code);
      }
    }
    expect((await b.registry.deploy('racy', { code: codes.b })).version).toBe(3);
  });

  it('a trigger created on A runs on B; changed it restarts there, disabled on B it stops on A', { timeout: 60_000 }, async () => {
    const { a, b, log } = await twoNodes();
    await a.registry.deploy('watched', { code: 'export const handler = async () => null;' });
    const trigger = await a.triggers.create('watched', { startingPosition: 'TRIM_HORIZON' });
    await waitFor(() => logged(b, 'trigger mapping started', trigger.id) === 1, 10_000, 'the mapping started on B');
    expect(await b.triggers.get('watched', trigger.id)).toEqual(trigger);

    commitReading(log, 1);
    for (const node of [a, b]) {
      await waitFor(() => node.invocations.some((i) => i.fn === 'watched' && i.ts.includes(1)), 10_000, `record 1 delivered on ${node.name}`);
    }

    await a.triggers.update('watched', trigger.id, { batchSize: 7 });
    await waitFor(() => logged(b, 'trigger mapping started', trigger.id) === 2, 10_000, 'the mapping restarted on B');
    expect(logged(b, 'trigger mapping stopped', trigger.id)).toBe(1);

    await b.triggers.update('watched', trigger.id, { enabled: false });
    await waitFor(() => logged(a, 'trigger mapping stopped', trigger.id) === 2, 10_000, 'the mapping stopped on A');

    // A second function's trigger (created on B) shows when a later record has been delivered; the disabled one must not get it.
    await b.registry.deploy('sentinel', { code: 'export const handler = async () => null;' });
    const sentinel = await b.triggers.create('sentinel', { startingPosition: 'TRIM_HORIZON' });
    await waitFor(() => logged(a, 'trigger mapping started', sentinel.id) === 1, 10_000, 'the sentinel started on A');
    commitReading(log, 2);
    for (const node of [a, b]) {
      await waitFor(() => node.invocations.some((i) => i.fn === 'sentinel' && i.ts.includes(2)), 10_000, `record 2 delivered to the sentinel on ${node.name}`);
      expect(node.invocations.filter((i) => i.fn === 'watched' && i.ts.includes(2))).toEqual([]);
    }

    // Deleted on A, it stops on B.
    await a.triggers.delete('sentinel', sentinel.id);
    await waitFor(() => logged(b, 'trigger mapping stopped', sentinel.id) === 1, 10_000, 'the sentinel stopped on B');
    await expect(b.triggers.get('sentinel', sentinel.id)).rejects.toBeInstanceOf(TributaryError);
  });
});

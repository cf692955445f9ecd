/**
 * Triggers: durable event source mappings of deployed functions onto the change stream
 * (table `G`, store/keyspace.ts), and the {@link TriggerManager} that keeps one running
 * {@link EventSourceMapping} per enabled trigger.
 *
 * Decisions:
 * - `maximumBatchingWindowMs` is Lambda's MaximumBatchingWindowInSeconds in ms (0..300000):
 *   the poller gathers records until a read is full or the window has passed.
 * - `parallelizationFactor` (1..10) and `tumblingWindowSeconds` (0..900) as in Lambda;
 *   they cannot be combined (a window's state is one per shard, and parallel batches of a
 *   shard would race on it).
 * - `startingPosition: AT_TIMESTAMP` takes `startingPositionTimestamp` in epoch ms (the
 *   API's unit; Lambda's is seconds): a shard with no checkpoint yet starts just before
 *   the first record committed at or after it (the mapping decides, see TriggerConfig).
 * - `maximumRetryAttempts` defaults to 3; -1 (Lambda's "forever") is accepted as in
 *   Lambda, but then one poison record blocks its shard until it expires by
 *   `maximumRecordAgeSeconds` (if set) — use with care.
 * - `startingPosition` (and its timestamp) cannot be changed by an update (as in Lambda); disabling keeps the
 *   checkpoints, so re-enabling delivers what was committed in between.
 * - Deleting a trigger deletes its checkpoints (the `K` rows) in the same commit (ids are
 *   never reused). Checkpoints in Kafka (cluster mode) are not deleted: the unused group's
 *   offsets expire by the broker's `offsets.retention.minutes`.
 * - A mapping invokes the function's *current* latest version for each batch, so a
 *   redeploy takes effect from the next batch. If the function is deleted, its triggers
 *   stay (listed and deletable, not updatable); their running pollers log and back off
 *   until a function of that name is deployed again, and they are not started at boot.
 * - Rows are written through a {@link MetadataWriter}; a {@link TriggerManager} follows
 *   every row applied — written here or, in cluster mode, on another node — by starting,
 *   stopping or restarting that trigger's mapping to match the row (one change at a time).
 */
import { randomUUID } from 'node:crypto';
import { TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { LocalMetadata, type MetadataWriter } from '../store/metadata.js';
import type { BatchOp } from '../streams/types.js';
import { retrySettingProblems } from './batch-plan.js';
import { LevelCheckpointStore, type CheckpointStore } from './checkpoints.js';
import { DEFAULT_TRIGGER, EventSourceMapping, type MappingDeps, type TriggerConfig } from './event-source-mapping.js';
import { compileFilterCriteria, type FilterCriteria } from './filter-pattern.js';
import type { FunctionRegistry } from './registry.js';
import type { FunctionRuntime } from './types.js';

export type StartingPosition = 'TRIM_HORIZON' | 'LATEST' | 'AT_TIMESTAMP';

/** A trigger as stored and as the API returns it. */
export interface Trigger {
  id: string;
  functionName: string;
  batchSize: number;
  maximumBatchingWindowMs: number;
  startingPosition: StartingPosition;
  startingPositionTimestamp?: number;
  filterCriteria?: FilterCriteria;
  maximumRetryAttempts: number;
  bisectBatchOnFunctionError: boolean;
  maximumRecordAgeSeconds: number;
  functionResponseTypes: Array<'ReportBatchItemFailures'>;
  parallelizationFactor: number;
  tumblingWindowSeconds: number;
  enabled: boolean;
  /** Epoch ms. */
  createdAt: number;
}

/** A trigger as the API answers: with the filter patterns' warnings (valid parts that can never match), when there are any. */
export type TriggerView = Trigger & { warnings?: string[] };

/** The settable fields (create: all optional; update: the ones given change). */
export type TriggerInput = Partial<Omit<Trigger, 'id' | 'functionName' | 'createdAt'>>;

const SETTABLE = [
  'batchSize',
  'maximumBatchingWindowMs',
  'startingPosition',
  'startingPositionTimestamp',
  'filterCriteria',
  'maximumRetryAttempts',
  'bisectBatchOnFunctionError',
  'maximumRecordAgeSeconds',
  'functionResponseTypes',
  'parallelizationFactor',
  'tumblingWindowSeconds',
  'enabled',
] as const;

/** What a trigger created over the API gets for what it leaves out: the mapping's defaults, enabled. */
export const TRIGGER_DEFAULTS = { ...DEFAULT_TRIGGER, enabled: true } as const satisfies TriggerInput;

function invalid(field: string, message: string): TributaryError {
  return new TributaryError('ValidationError', message, { field });
}

function intIn(value: unknown, field: string, min: number, max: number): void {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) throw invalid(field, `${field} must be an integer from ${min} to ${max}`);
}

/** Throws a ValidationError naming the field for anything a trigger cannot be. */
export function validateTrigger(t: Trigger): void {
  intIn(t.batchSize, 'batchSize', 1, 10_000);
  intIn(t.maximumBatchingWindowMs, 'maximumBatchingWindowMs', 0, 300_000);
  intIn(t.parallelizationFactor, 'parallelizationFactor', 1, 10);
  intIn(t.tumblingWindowSeconds, 'tumblingWindowSeconds', 0, 900);
  if (t.tumblingWindowSeconds > 0 && t.parallelizationFactor > 1) {
    throw invalid('parallelizationFactor', 'parallelizationFactor must be 1 with tumblingWindowSeconds: a window\'s state is kept per shard, and parallel batches of one shard would race on it');
  }
  if (!['TRIM_HORIZON', 'LATEST', 'AT_TIMESTAMP'].includes(t.startingPosition)) throw invalid('startingPosition', 'startingPosition must be one of TRIM_HORIZON, LATEST, AT_TIMESTAMP');
  if (t.startingPosition === 'AT_TIMESTAMP') {
    if (t.startingPositionTimestamp === undefined) throw invalid('startingPositionTimestamp', 'startingPositionTimestamp (epoch ms) is required with startingPosition AT_TIMESTAMP');
    intIn(t.startingPositionTimestamp, 'startingPositionTimestamp', 0, 8_640_000_000_000_000);
  } else if (t.startingPositionTimestamp !== undefined) throw invalid('startingPositionTimestamp', 'startingPositionTimestamp is only allowed with startingPosition AT_TIMESTAMP');
  if (typeof t.maximumRetryAttempts !== 'number' || typeof t.maximumRecordAgeSeconds !== 'number') {
    throw invalid(typeof t.maximumRetryAttempts !== 'number' ? 'maximumRetryAttempts' : 'maximumRecordAgeSeconds', 'must be an integer');
  }
  const problems = retrySettingProblems(t);
  if (problems.length > 0) throw invalid(problems[0]?.startsWith('maximumRetryAttempts') ? 'maximumRetryAttempts' : 'maximumRecordAgeSeconds', problems.join('; '));
  if (typeof t.bisectBatchOnFunctionError !== 'boolean') throw invalid('bisectBatchOnFunctionError', 'bisectBatchOnFunctionError must be a boolean');
  if (typeof t.enabled !== 'boolean') throw invalid('enabled', 'enabled must be a boolean');
  if (!Array.isArray(t.functionResponseTypes) || t.functionResponseTypes.some((x) => x !== 'ReportBatchItemFailures') || t.functionResponseTypes.length > 1) {
    throw invalid('functionResponseTypes', 'functionResponseTypes must be [] or ["ReportBatchItemFailures"]');
  }
  compileFilterCriteria(t.filterCriteria);
}

/** Applies `input` over `base` (only known fields; `null` resets a field to its default). */
export function mergeTrigger(base: Trigger, input: unknown): Trigger {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw invalid('body', 'the body must be a JSON object of trigger settings');
  const next: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(input as Record<string, unknown>)) {
    if (!(SETTABLE as readonly string[]).includes(key)) throw invalid(key, `unknown trigger setting ${key} (settable: ${SETTABLE.join(', ')})`);
    if (value === null) {
      if (key in TRIGGER_DEFAULTS) next[key] = TRIGGER_DEFAULTS[key as keyof typeof TRIGGER_DEFAULTS];
      else delete next[key];
    } else next[key] = value;
  }
  const merged = next as unknown as Trigger;
  validateTrigger(merged);
  return merged;
}

function rowPrefix(functionName: string): Buffer {
  return Buffer.concat([Buffer.of(Prefix.trigger), Buffer.from(`${functionName}\u0000`, 'utf8')]);
}

function rowKey(functionName: string, id: string): Buffer {
  return Buffer.concat([rowPrefix(functionName), Buffer.from(id, 'utf8')]);
}

/** The function and trigger id of a `G` key (function names never contain NUL). */
function parseRowKey(key: Buffer): { functionName: string; id: string } | undefined {
  if (key[0] !== Prefix.trigger) return undefined;
  const text = key.subarray(1).toString('utf8');
  const nul = text.indexOf('\u0000');
  return nul < 0 ? undefined : { functionName: text.slice(0, nul), id: text.slice(nul + 1) };
}

/** The byte string just past every key that starts with `prefix` (its last byte is < 0xff). */
function after(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  end[end.length - 1] = (end[end.length - 1] as number) + 1;
  return end;
}

/** A stored row; settings added since it was written take their defaults. */
function fromRow(value: Buffer): Trigger {
  return { ...TRIGGER_DEFAULTS, functionResponseTypes: [], ...(JSON.parse(value.toString('utf8')) as Partial<Trigger>) } as Trigger;
}

/** What the API answers for `t`: the filter patterns' warnings (parts that can never match) join it, so the caller sees them. */
export function triggerView(t: Trigger): TriggerView {
  const { warnings } = compileFilterCriteria(t.filterCriteria);
  return warnings.length === 0 ? t : { ...t, warnings: [...warnings] };
}

/** Trigger rows in the database: `G · functionName · 0x00 · id` → JSON. Read here, written through `metadata`. */
export class TriggerStore {
  constructor(
    private readonly database: Database,
    private readonly metadata: MetadataWriter,
  ) {}

  async list(functionName?: string): Promise<Trigger[]> {
    const gte = functionName === undefined ? Buffer.of(Prefix.trigger) : rowPrefix(functionName);
    const lt = after(gte);
    return this.database.read(async (db) => {
      const out: Trigger[] = [];
      for await (const value of db.values({ gte, lt })) out.push(fromRow(value));
      return out;
    });
  }

  async get(functionName: string, id: string): Promise<Trigger | undefined> {
    const v = await this.database.read((db) => db.get(rowKey(functionName, id)));
    return v === undefined ? undefined : fromRow(v);
  }

  async put(t: Trigger): Promise<void> {
    await this.metadata.commit([{ type: 'put', key: rowKey(t.functionName, t.id), value: Buffer.from(JSON.stringify(t), 'utf8') }]);
  }

  /** Removes the row and the trigger's checkpoints in one commit. */
  async delete(functionName: string, id: string): Promise<void> {
    const cp = Buffer.concat([Buffer.of(Prefix.checkpoint), Buffer.from(`${functionName}\u0000${id}\u0000`, 'utf8')]);
    const keys = await this.database.read((db) => db.keys({ gte: cp, lt: after(cp) }).all());
    await this.metadata.commit([{ type: 'del', key: rowKey(functionName, id) }, ...keys.map((key) => ({ type: 'del' as const, key }))]);
  }
}

export interface TriggerManagerOptions {
  /** Where trigger rows are read. */
  database: Database;
  /** Where they are written, and whose applied writes the running mappings follow; default: `database` itself. */
  metadata?: MetadataWriter;
  registry: FunctionRegistry;
  /**
   * What every mapping gets. `checkpoints` defaults to the database's `K` table (cluster
   * mode passes a KafkaCheckpointStore); `placement` (cluster mode) limits the pollers to
   * the shards this node owns.
   */
  mapping: Omit<MappingDeps, 'checkpoints' | 'runtime'> & { runtime: FunctionRuntime; checkpoints?: CheckpointStore };
  logger: Logger;
}

function notFound(functionName: string, id: string): TributaryError {
  return new TributaryError('NotFound', `function ${functionName} has no trigger ${id}`, { field: 'id' });
}

/** Keeps one running mapping per enabled trigger, in step with the stored rows; every change is serialized. */
export class TriggerManager {
  readonly store: TriggerStore;
  /** Running mappings by trigger id, with the row (as JSON) each was started from. */
  private readonly running = new Map<string, { mapping: EventSourceMapping; row: string }>();
  private readonly checkpoints: CheckpointStore;
  private readonly unsubscribe: () => void;
  private tail: Promise<unknown> = Promise.resolve();
  private started = false;
  private stopped = false;

  constructor(private readonly options: TriggerManagerOptions) {
    const metadata = options.metadata ?? new LocalMetadata(options.database);
    this.store = new TriggerStore(options.database, metadata);
    this.checkpoints = options.mapping.checkpoints ?? new LevelCheckpointStore(options.database);
    this.unsubscribe = metadata.onApplied((ops) => this.applied(ops));
  }

  /** Starts a mapping for every stored enabled trigger whose function exists. */
  async start(): Promise<void> {
    await this.exclusive(async () => {
      this.started = true;
      for (const t of await this.store.list()) await this.reconcile(t.id, t);
    });
  }

  async stop(): Promise<void> {
    this.unsubscribe();
    await this.exclusive(async () => {
      this.stopped = true;
      const all = [...this.running.values()];
      this.running.clear();
      await Promise.all(all.map((r) => r.mapping.stop()));
    });
  }

  /** A function's triggers; those of a deleted function stay listed (and deletable). */
  async list(functionName: string): Promise<TriggerView[]> {
    const rows = await this.store.list(functionName);
    if (rows.length === 0) await this.options.registry.get(functionName);
    return rows.map(triggerView);
  }

  async get(functionName: string, id: string): Promise<TriggerView> {
    return triggerView(await this.row(functionName, id));
  }

  private async row(functionName: string, id: string): Promise<Trigger> {
    const t = await this.store.get(functionName, id);
    if (t !== undefined) return t;
    await this.options.registry.get(functionName);
    throw notFound(functionName, id);
  }

  async create(functionName: string, input: unknown): Promise<TriggerView> {
    return this.exclusive(async () => {
      await this.options.registry.get(functionName);
      const base: Trigger = { id: randomUUID(), functionName, ...TRIGGER_DEFAULTS, functionResponseTypes: [], createdAt: Date.now() };
      const t = mergeTrigger(base, input ?? {});
      await this.store.put(t);
      await this.reconcile(t.id, await this.store.get(functionName, t.id));
      return triggerView(t);
    });
  }

  async update(functionName: string, id: string, input: unknown): Promise<TriggerView> {
    return this.exclusive(async () => {
      await this.options.registry.get(functionName);
      const current = await this.row(functionName, id);
      const t = mergeTrigger(current, input ?? {});
      // As in Lambda: where a mapping starts is fixed once it has run (its checkpoints decide).
      if (t.startingPosition !== current.startingPosition) throw invalid('startingPosition', 'startingPosition cannot be changed; delete the trigger and create a new one');
      if (t.startingPositionTimestamp !== current.startingPositionTimestamp) throw invalid('startingPositionTimestamp', 'startingPositionTimestamp cannot be changed; delete the trigger and create a new one');
      await this.store.put(t);
      await this.reconcile(id, await this.store.get(functionName, id));
      return triggerView(t);
    });
  }

  async delete(functionName: string, id: string): Promise<void> {
    return this.exclusive(async () => {
      await this.row(functionName, id);
      // Stopped first, so that no checkpoint of it is written after they are deleted.
      await this.stopMapping(id);
      await this.store.delete(functionName, id);
    });
  }

  /**
   * Trigger rows applied — written here (already followed, so reconciling finds nothing to
   * do) or on another node: each trigger's mapping is brought in line with its row, after
   * the changes queued before.
   */
  private applied(ops: readonly BatchOp[]): void {
    const touched = new Map<string, string>();
    for (const op of ops) {
      const key = parseRowKey(op.key);
      if (key !== undefined) touched.set(key.id, key.functionName);
    }
    if (touched.size === 0) return;
    this.exclusive(async () => {
      if (!this.started) return; // start() reads every row
      for (const [id, functionName] of touched) await this.reconcile(id, await this.store.get(functionName, id));
    }).catch((err: unknown) => this.options.logger.error({ err, triggers: [...touched.keys()] }, 'following a change of triggers failed; they change at the next update or restart'));
  }

  /**
   * Makes the mapping of trigger `id` match its row `t` (undefined: deleted): stopped when
   * deleted or disabled, started when enabled and its function exists, restarted (from its
   * checkpoints) when the row changed.
   */
  private async reconcile(id: string, t: Trigger | undefined): Promise<void> {
    if (this.stopped) return;
    const row = t?.enabled === true ? JSON.stringify(t) : undefined;
    if (this.running.get(id)?.row === row) return;
    await this.stopMapping(id);
    if (t === undefined || row === undefined) return;
    if (!(await this.exists(t.functionName))) {
      this.options.logger.warn({ function: t.functionName, trigger: t.id }, 'trigger of a function that is not deployed; not started');
      return;
    }
    await this.startMapping(t, row);
  }

  private async exists(name: string): Promise<boolean> {
    try {
      await this.options.registry.spec(name);
      return true;
    } catch (err) {
      if (err instanceof TributaryError && err.code === 'FunctionNotFound') return false;
      throw err;
    }
  }

  private async startMapping(t: Trigger, row: string): Promise<void> {
    const { registry, mapping } = this.options;
    const spec = await registry.spec(t.functionName);
    const config: TriggerConfig = {
      id: t.id,
      batchSize: t.batchSize,
      maximumBatchingWindowMs: t.maximumBatchingWindowMs,
      parallelizationFactor: t.parallelizationFactor,
      tumblingWindowSeconds: t.tumblingWindowSeconds,
      startingPosition: t.startingPosition,
      maximumRetryAttempts: t.maximumRetryAttempts,
      bisectBatchOnFunctionError: t.bisectBatchOnFunctionError,
      functionResponseTypes: t.functionResponseTypes,
      maximumRecordAgeSeconds: t.maximumRecordAgeSeconds,
    };
    if (t.filterCriteria !== undefined) config.filterCriteria = t.filterCriteria;
    if (t.startingPositionTimestamp !== undefined) config.startingPositionTimestamp = t.startingPositionTimestamp;
    // Each batch goes to the latest version deployed at that moment.
    const runtime: FunctionRuntime = {
      invoke: async (fn, event, options) => mapping.runtime.invoke(await registry.spec(fn.name), event, options),
      close: async () => {},
    };
    const m = new EventSourceMapping(spec, config, { ...mapping, runtime, checkpoints: this.checkpoints });
    await m.start();
    this.running.set(t.id, { mapping: m, row });
    this.options.logger.info({ function: t.functionName, trigger: t.id }, 'trigger mapping started');
  }

  private async stopMapping(id: string): Promise<void> {
    const r = this.running.get(id);
    if (r === undefined) return;
    this.running.delete(id);
    await r.mapping.stop();
    this.options.logger.info({ function: r.mapping.fn.name, trigger: id }, 'trigger mapping stopped');
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(() => undefined);
    return run;
  }
}

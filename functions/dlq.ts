/**
 * The dead-letter queue of stream event source mappings: where batches the mapping gave
 * up on (`MappingDeps.onDiscard`) are recorded, listed, redriven or deleted.
 *
 * As with Lambda's on-failure destination for a stream, an entry holds *metadata* about
 * the discarded batch (function, trigger, shard, first/last sequence numbers, count,
 * reason, ...), not the records: those stay in the change log until retention trims
 * them. A redrive re-reads the records from the log, renders them as a DynamoDB stream
 * event and invokes the function once with them; if the log no longer holds every one
 * of them, the redrive fails with `Conflict` (the entry is kept, for the record; delete
 * it once it is of no more use).
 *
 * Entries are keyed by a time-ordered id (`<createdAt ms, 15 digits>-<16 hex digits>`),
 * so listing returns them oldest first. The LevelDB implementation keeps them in table
 * `X` (store/keyspace.ts), each write synced before it resolves; it writes through a
 * MetadataWriter, so in cluster mode every node lists, redrives and deletes every node's
 * entries.
 */
import { randomBytes } from 'node:crypto';
import { sameStream } from '../core/arn.js';
import { invalidParameter, TributaryError } from '../core/errors.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { LocalMetadata, type MetadataWriter } from '../store/metadata.js';
import { toStreamRecord, type DynamoDBStreamEvent } from '../streams/lambda-event.js';
import type { ChangeLog, ChangeRecord } from '../streams/types.js';
import { parseItemFailures } from './batch-plan.js';
import type { DiscardMetadata } from './event-source-mapping.js';
import type { InvokeResult } from './types.js';

/** One discarded batch, as the mapping described it, with its place in the queue. */
export interface DeadLetterEntry extends DiscardMetadata {
  /** Time-ordered id: `<createdAt ms, 15 digits>-<16 hex digits>`. */
  id: string;
  /** When the entry was added, epoch ms. */
  createdAt: number;
  /** Redrives tried so far (failed ones: a successful redrive deletes the entry). */
  redrives: number;
}

export interface DeadLetterPage {
  items: DeadLetterEntry[];
  nextCursor: string | null;
}

export interface DeadLetterListQuery {
  /** Only entries of this function. */
  functionName?: string;
  limit: number;
  /** `nextCursor` of the previous page. */
  cursor?: string;
}

/** What a redrive needs: the change log the records are re-read from, and a way to invoke the function (its latest version). */
export interface RedriveDeps {
  log: ChangeLog;
  invoke: (functionName: string, event: DynamoDBStreamEvent) => Promise<InvokeResult>;
}

export interface RedriveResult {
  /** The invocation, as the runtime reported it. */
  result: InvokeResult;
  /** True when the invocation succeeded and the entry was deleted. */
  deleted: boolean;
  /** The entry as it is now (after a failure: with its counts updated). */
  entry: DeadLetterEntry;
}

export interface DeadLetterQueue {
  /** Records a discarded batch; durable before it resolves. */
  add(metadata: DiscardMetadata): Promise<DeadLetterEntry>;
  /** {@link add} as `MappingDeps.onDiscard` takes it (bound, resolving to nothing): `onDiscard: dlq.onDiscard`. */
  readonly onDiscard: (metadata: DiscardMetadata) => Promise<void>;
  /** Entries oldest first. @throws TributaryError `InvalidParameter` (field `cursor`) for a malformed cursor. */
  list(query: DeadLetterListQuery): Promise<DeadLetterPage>;
  /** @throws TributaryError `NotFound` */
  get(id: string): Promise<DeadLetterEntry>;
  /** @throws TributaryError `NotFound`; `Conflict` while a redrive of the entry is running. */
  delete(id: string): Promise<void>;
  /**
   * Re-reads the entry's records from the log, invokes the function once with them, and
   * deletes the entry if that succeeded; otherwise keeps it, counting the attempt
   * (`invocations`, `redrives`, `lastOutcome`).
   * @throws TributaryError `NotFound`; `Conflict` when the log no longer holds every
   * record of the entry, or a redrive of the same entry is already running.
   */
  redrive(id: string, deps: RedriveDeps): Promise<RedriveResult>;
}

export const DLQ_ID_PATTERN = '^[0-9]{15}-[0-9a-f]{16}$';
const ID_RE = new RegExp(DLQ_ID_PATTERN);
/** Records read from the log per request during a redrive. */
const READ_CHUNK = 1000;

function newId(createdAt: number): string {
  return `${String(createdAt).padStart(15, '0')}-${randomBytes(8).toString('hex')}`;
}

function notFound(id: string): TributaryError {
  return new TributaryError('NotFound', `no dead-letter queue entry with id ${JSON.stringify(id)}`, { field: 'id' });
}

function encodeCursor(lastId: string): string {
  return Buffer.from(lastId, 'utf8').toString('base64url');
}

function decodeCursor(cursor: string): string {
  const id = Buffer.from(cursor, 'base64url').toString('utf8');
  if (!ID_RE.test(id)) throw invalidParameter('cursor', 'cursor is malformed (pass nextCursor of a previous page unchanged)');
  return id;
}

/**
 * Whether a redrive invocation succeeded: the function ran without error and did not
 * report failed records. The entry does not know whether its trigger enabled
 * ReportBatchItemFailures, so a response that names records of the batch in
 * `batchItemFailures` counts as a failure (keeping the entry is the safe side); any
 * other response, including one that is not a partial-batch response, is a success.
 */
function succeeded(result: InvokeResult, records: readonly ChangeRecord[]): boolean {
  if (result.outcome.status !== 'ok') return false;
  return parseItemFailures(result.outcome.result, records).kind !== 'failed';
}

/** The storage-independent part: ids, pagination, redrive. */
abstract class BaseDeadLetterQueue implements DeadLetterQueue {
  private readonly redriving = new Set<string>();

  readonly onDiscard = async (metadata: DiscardMetadata): Promise<void> => {
    await this.add(metadata);
  };

  protected abstract load(id: string): Promise<DeadLetterEntry | undefined>;
  protected abstract save(entry: DeadLetterEntry): Promise<void>;
  protected abstract remove(id: string): Promise<void>;
  /** Entries with ids greater than `afterId` (all when undefined), ascending, up to `limit` of those `accept` takes. */
  protected abstract scan(afterId: string | undefined, accept: (e: DeadLetterEntry) => boolean, limit: number): Promise<DeadLetterEntry[]>;

  async add(metadata: DiscardMetadata): Promise<DeadLetterEntry> {
    const createdAt = Date.now();
    const entry: DeadLetterEntry = { ...metadata, id: newId(createdAt), createdAt, redrives: 0 };
    await this.save(entry);
    return entry;
  }

  async list(query: DeadLetterListQuery): Promise<DeadLetterPage> {
    const afterId = query.cursor === undefined ? undefined : decodeCursor(query.cursor);
    const { functionName } = query;
    const accept = functionName === undefined ? () => true : (e: DeadLetterEntry) => e.function === functionName;
    const found = await this.scan(afterId, accept, query.limit + 1);
    const items = found.slice(0, query.limit);
    const last = items[items.length - 1];
    return { items, nextCursor: found.length > query.limit && last !== undefined ? encodeCursor(last.id) : null };
  }

  async get(id: string): Promise<DeadLetterEntry> {
    const entry = ID_RE.test(id) ? await this.load(id) : undefined;
    if (entry === undefined) throw notFound(id);
    return entry;
  }

  async delete(id: string): Promise<void> {
    // Else a redrive that fails afterwards would write the entry back.
    if (this.redriving.has(id)) throw new TributaryError('Conflict', `dead-letter queue entry ${id} is being redriven; delete it once the redrive has finished`, { field: 'id' });
    await this.get(id);
    await this.remove(id);
  }

  async redrive(id: string, deps: RedriveDeps): Promise<RedriveResult> {
    if (this.redriving.has(id)) throw new TributaryError('Conflict', `a redrive of dead-letter queue entry ${id} is already running`, { field: 'id' });
    this.redriving.add(id);
    try {
      const entry = await this.get(id);
      const records = await readEntryRecords(entry, deps.log);
      let event: DynamoDBStreamEvent;
      try {
        event = { Records: records.map((r) => toStreamRecord(r, deps.log.streamArn)) };
      } catch (err) {
        throw new TributaryError('Conflict', `dead-letter queue entry ${id} holds a record that cannot be rendered as a stream record (${(err as Error).message}); it cannot be redriven, only deleted`, { field: 'id', cause: err });
      }
      const result = await deps.invoke(entry.function, event);
      if (succeeded(result, records)) {
        await this.remove(id);
        return { result, deleted: true, entry };
      }
      // The version that failed last is the one the redrive ran (the latest), not the one that failed first.
      const updated: DeadLetterEntry = {
        ...entry,
        functionVersion: result.functionVersion ?? entry.functionVersion,
        invocations: entry.invocations + 1,
        redrives: entry.redrives + 1,
        lastOutcome: result.outcome,
      };
      await this.save(updated);
      return { result, deleted: false, entry: updated };
    } finally {
      this.redriving.delete(id);
    }
  }
}

/**
 * The records [first..last] of the entry's shard.
 * @throws TributaryError `Conflict` when the log does not hold all of them (trimmed by retention, or a different stream).
 */
async function readEntryRecords(entry: DeadLetterEntry, log: ChangeLog): Promise<ChangeRecord[]> {
  const { shard, firstSequenceNumber: first, lastSequenceNumber: last } = entry;
  const gone = (why: string) =>
    new TributaryError(
      'Conflict',
      `cannot redrive dead-letter queue entry ${entry.id}: ${why}; the records of shard ${shard} from sequence number ${first} to ${last} are no longer in the change log (trimmed by retention), so they cannot be delivered again — delete the entry`,
    );
  // By table and label: entries keep the ARN they were written under (another region or
  // account, or the earlier arn:tributary form), and still belong to this stream.
  if (!sameStream(entry.streamArn, log.streamArn)) {
    throw new TributaryError('Conflict', `cannot redrive dead-letter queue entry ${entry.id}: it belongs to stream ${entry.streamArn}, not to this server's ${log.streamArn}`);
  }
  if (shard >= log.shardCount) throw gone(`the stream has no shard ${shard}`);
  const records: ChangeRecord[] = [];
  for (let after = first - 1; ; ) {
    const page = await log.read(shard, after, READ_CHUNK);
    for (const r of page) if (r.sequenceNumber <= last) records.push(r);
    const tail = page[page.length - 1];
    if (tail === undefined || tail.sequenceNumber >= last) break;
    after = tail.sequenceNumber;
  }
  const head = records[0];
  if (head === undefined) throw gone('none of its records is left');
  if (head.sequenceNumber !== first) throw gone(`the oldest one left is sequence number ${head.sequenceNumber}`);
  if ((records[records.length - 1] as ChangeRecord).sequenceNumber !== last || records.length !== entry.count) {
    throw gone(`${records.length} of its ${entry.count} records are left`);
  }
  return records;
}

/** Entries in memory (tests, and a server without a database). */
export class MemoryDeadLetterQueue extends BaseDeadLetterQueue {
  private readonly entries = new Map<string, DeadLetterEntry>();

  protected async load(id: string): Promise<DeadLetterEntry | undefined> {
    const e = this.entries.get(id);
    return e === undefined ? undefined : structuredClone(e);
  }

  protected async save(entry: DeadLetterEntry): Promise<void> {
    this.entries.set(entry.id, structuredClone(entry));
  }

  protected async remove(id: string): Promise<void> {
    this.entries.delete(id);
  }

  protected async scan(afterId: string | undefined, accept: (e: DeadLetterEntry) => boolean, limit: number): Promise<DeadLetterEntry[]> {
    const ids = [...this.entries.keys()].filter((id) => afterId === undefined || id > afterId).sort();
    const out: DeadLetterEntry[] = [];
    for (const id of ids) {
      if (out.length >= limit) break;
      const e = this.entries.get(id) as DeadLetterEntry;
      if (accept(e)) out.push(structuredClone(e));
    }
    return out;
  }
}

function entryKey(id: string): Buffer {
  return Buffer.concat([Buffer.of(Prefix.deadLetter), Buffer.from(id, 'utf8')]);
}

/** Entries in the store's LevelDB (table `X`: id → the entry as JSON), each write synced. */
export class LevelDeadLetterQueue extends BaseDeadLetterQueue {
  /** @param metadata where entries are written; default: `database` alone. */
  constructor(
    private readonly database: Database,
    private readonly metadata: MetadataWriter = new LocalMetadata(database),
  ) {
    super();
  }

  protected async load(id: string): Promise<DeadLetterEntry | undefined> {
    const v = await this.database.read((db) => db.get(entryKey(id)));
    return v === undefined ? undefined : (JSON.parse(v.toString('utf8')) as DeadLetterEntry);
  }

  protected async save(entry: DeadLetterEntry): Promise<void> {
    await this.metadata.commit([{ type: 'put', key: entryKey(entry.id), value: Buffer.from(JSON.stringify(entry), 'utf8') }]);
  }

  protected async remove(id: string): Promise<void> {
    await this.metadata.commit([{ type: 'del', key: entryKey(id) }]);
  }

  protected async scan(afterId: string | undefined, accept: (e: DeadLetterEntry) => boolean, limit: number): Promise<DeadLetterEntry[]> {
    const gt = afterId === undefined ? Buffer.of(Prefix.deadLetter) : entryKey(afterId);
    const lt = Buffer.of(Prefix.deadLetter + 1);
    return this.database.read(async (db) => {
      const out: DeadLetterEntry[] = [];
      for await (const value of db.values({ gt, lt })) {
        const e = JSON.parse(value.toString('utf8')) as DeadLetterEntry;
        if (accept(e)) out.push(e);
        if (out.length >= limit) break;
      }
      return out;
    });
  }
}

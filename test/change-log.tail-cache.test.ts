import { afterEach, describe, expect, it, vi } from 'vitest';
import { Database } from '../store/database.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import type { BatchOp, Change, ChangeRecord } from '../streams/types.js';
import { tempDir } from './helpers.js';

const NOW = 1_700_000_000_000;

function insert(ts: number): Change {
  return { eventName: 'INSERT', deviceId: 'd', ts, seq: 0, newValues: { v: ts, nested: { ok: true, label: 'two' } } };
}

describe('EmbeddedChangeLog: the in-memory tail', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    vi.restoreAllMocks();
    for (const c of cleanups.splice(0)) await c();
  });

  async function open(records: number): Promise<{ database: Database; log: EmbeddedChangeLog; append: (n: number, at?: number) => Promise<ChangeRecord[]>; path: string }> {
    const dir = tempDir('tributary-tail-');
    const database = await Database.open(dir.path);
    const log = await EmbeddedChangeLog.open(database, { shards: 1, tailCache: { records, bytes: 1024 * 1024 } });
    let ts = 0;
    const append = async (n: number, at = NOW): Promise<ChangeRecord[]> => {
      const ops: BatchOp[] = [];
      const staged = log.stage(ops, Array.from({ length: n }, () => insert(++ts)), at);
      await database.commit(ops);
      log.commit(staged);
      return staged;
    };
    cleanups.push(async () => {
      await database.close().catch(() => {});
      dir.cleanup();
    });
    return { database, log, append, path: dir.path };
  }

  it('serves caught-up readers from memory, readers behind it from LevelDB, with the same records', async () => {
    const { database, log, append } = await open(4);
    await append(10);
    const reads = vi.spyOn(database, 'read');
    const fromMemory = await log.read(0, 6, 100);
    expect(reads).not.toHaveBeenCalled();
    const fromDisk = await log.read(0, 0, 100);
    expect(reads).toHaveBeenCalledTimes(1);
    expect(fromMemory.map((r) => r.sequenceNumber)).toEqual([7, 8, 9, 10]);
    expect(fromDisk.slice(6)).toEqual(fromMemory);
    // Each reader gets its own objects: one cannot change what the next one reads.
    (fromMemory[0] as ChangeRecord).newValues = { changed: true };
    expect(await log.read(0, 6, 1)).toEqual([fromDisk[6]]);
  });

  it('forgets records trimmed from the log', async () => {
    const { database, log, append } = await open(8);
    await append(3, NOW);
    await append(3, NOW + 10_000);
    expect(await log.trim(NOW + 5_000)).toBe(3);
    const reads = vi.spyOn(database, 'read');
    // Seq 1..3 are gone: a reader from 0 goes to the disk and continues at the oldest retained record.
    expect((await log.read(0, 0, 100)).map((r) => r.sequenceNumber)).toEqual([4, 5, 6]);
    expect(reads).toHaveBeenCalled();
  });

  it('starts empty after a reopen and fills from the next commit', async () => {
    const first = await open(8);
    await first.append(5);
    await first.database.close();
    const database = await Database.open(first.path);
    cleanups.push(() => database.close());
    const log = await EmbeddedChangeLog.open(database, { shards: 1, tailCache: { records: 8, bytes: 1024 * 1024 } });
    const reads = vi.spyOn(database, 'read');
    expect((await log.read(0, 4, 10)).map((r) => r.sequenceNumber)).toEqual([5]);
    expect(reads).toHaveBeenCalledTimes(1);
    const ops: BatchOp[] = [];
    const staged = log.stage(ops, [insert(100)], NOW);
    await database.commit(ops);
    log.commit(staged);
    expect((await log.read(0, 5, 10)).map((r) => r.sequenceNumber)).toEqual([6]);
    expect(reads).toHaveBeenCalledTimes(1);
  });

  it('an aborted batch never reaches the tail', async () => {
    const { log, append } = await open(8);
    await append(2);
    const ops: BatchOp[] = [];
    log.abort(log.stage(ops, [insert(50)], NOW));
    const [again] = await append(1);
    expect(again?.sequenceNumber).toBe(3);
    expect((await log.read(0, 2, 10)).map((r) => r.ts)).toEqual([3]);
  });
});

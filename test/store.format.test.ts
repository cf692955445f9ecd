/**
 * Database, the owner of the LevelDB handle, short of a real full disk (that is
 * test/store.full-disk.test.ts): a build migrates the one older format, refuses a data
 * directory whose format it cannot read (naming both versions) and one already open
 * elsewhere; a failed write makes it refuse writes until it has reopened the handle by
 * itself; range deletes go through it; each synced commit's duration reaches the commit
 * listeners.
 */
import { join } from 'node:path';
import { ClassicLevel } from 'classic-level';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { TributaryError } from '../core/errors.js';
import { Database } from '../store/index.js';
import { FORMAT_VERSION, Prefix } from '../store/keyspace.js';
import { tempDir, waitFor } from './helpers.js';

const FORMAT_KEY = Buffer.concat([Buffer.of(Prefix.meta), Buffer.from('format', 'utf8')]);

/** Writes raw entries into `<dataDir>/db` with a plain ClassicLevel, as another build would. */
async function writeRaw(dataDir: string, entries: Array<[Buffer, Buffer]>): Promise<void> {
  const raw = new ClassicLevel<Buffer, Buffer>(join(dataDir, 'db'), { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await raw.open();
  await raw.batch(entries.map(([key, value]) => ({ type: 'put' as const, key, value })), { sync: true });
  await raw.close();
}

async function readRawFormat(dataDir: string): Promise<string | undefined> {
  const raw = new ClassicLevel<Buffer, Buffer>(join(dataDir, 'db'), { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await raw.open();
  try {
    return (await raw.get(FORMAT_KEY))?.toString('utf8');
  } finally {
    await raw.close();
  }
}

async function openError(dataDir: string): Promise<TributaryError> {
  const err: unknown = await Database.open(dataDir).then(
    async (db) => {
      await db.close();
      throw new Error('Database.open succeeded');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TributaryError);
  expect(err).toMatchObject({ code: 'StoreUnavailable' });
  return err as TributaryError;
}

describe('data directory format version', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  function dir(): string {
    const d = tempDir('tributary-format-');
    cleanups.push(d.cleanup);
    return d.path;
  }

  it('records the current format version in a fresh directory, and opens it again', async () => {
    const path = dir();
    const db = await Database.open(path);
    expect((await db.getMeta('format'))?.toString('utf8')).toBe(String(FORMAT_VERSION));
    expect(db.writable).toBe(true);
    await db.close();
    expect(await readRawFormat(path)).toBe(String(FORMAT_VERSION));
    const again = await Database.open(path);
    expect((await again.getMeta('format'))?.toString('utf8')).toBe(String(FORMAT_VERSION));
    await again.close();
  });

  it('refuses a newer format, naming both versions, and leaves the directory untouched and unlocked', async () => {
    const path = dir();
    const newer = FORMAT_VERSION + 1;
    await writeRaw(path, [[FORMAT_KEY, Buffer.from(String(newer))]]);
    const err = await openError(path);
    expect(err.message).toContain(`format version ${newer}`);
    expect(err.message).toContain(`format version ${FORMAT_VERSION}`);
    expect(err.message).toMatch(/newer/);
    expect(err.message).toMatch(/refusing to open/);
    // Not overwritten, and the handle was released (a raw open would hit the lock otherwise).
    expect(await readRawFormat(path)).toBe(String(newer));
  });

  it.each([['banana'], ['1.5'], [''], ['01'], ['-1']])('refuses an unknown format %j, naming both versions', async (format) => {
    const path = dir();
    await writeRaw(path, [[FORMAT_KEY, Buffer.from(format)]]);
    const err = await openError(path);
    expect(err.message).toContain(`unknown format version ${JSON.stringify(format)}`);
    expect(err.message).toContain(`format version ${FORMAT_VERSION}`);
    expect(await readRawFormat(path)).toBe(format);
  });

  it('migrates format 1: its per-packet delivery ids go, every other table stays', async () => {
    const path = dir();
    const oldDelivery = Buffer.concat([Buffer.of(Prefix.delivery), Buffer.from('c1\u0000', 'utf8'), Buffer.of(0x00, 0x07)]);
    const reading = Buffer.concat([Buffer.of(Prefix.telemetry), Buffer.from('any reading', 'utf8')]);
    await writeRaw(path, [
      [FORMAT_KEY, Buffer.from('1')],
      [oldDelivery, Buffer.from('ab'.repeat(20))],
      [reading, Buffer.from('{"v":1}')],
    ]);
    const db = await Database.open(path);
    try {
      expect((await db.getMeta('format'))?.toString('utf8')).toBe(String(FORMAT_VERSION));
      expect(await db.db.get(oldDelivery)).toBeUndefined();
      expect((await db.db.get(reading))?.toString('utf8')).toBe('{"v":1}');
    } finally {
      await db.close();
    }
  });

  it('migrates format 2 by moving the version only: its rows read as they are', async () => {
    const path = dir();
    const reading = Buffer.concat([Buffer.of(Prefix.telemetry), Buffer.from('any reading', 'utf8')]);
    const delivery = Buffer.concat([Buffer.of(Prefix.delivery), Buffer.from('c1\u0000', 'utf8'), Buffer.of(0, 0, 0, 7)]);
    await writeRaw(path, [
      [FORMAT_KEY, Buffer.from('2')],
      [reading, Buffer.from('{"v":1}')],
      [delivery, Buffer.from('window slot')],
    ]);
    const db = await Database.open(path);
    try {
      expect(FORMAT_VERSION).toBe(3);
      expect((await db.getMeta('format'))?.toString('utf8')).toBe('3');
      expect((await db.db.get(reading))?.toString('utf8')).toBe('{"v":1}');
      expect((await db.db.get(delivery))?.toString('utf8')).toBe('window slot');
    } finally {
      await db.close();
    }
  });

  it('refuses a LevelDB that holds data but no format version (not a tributary data directory)', async () => {
    const path = dir();
    await writeRaw(path, [[Buffer.from('someone else'), Buffer.from('data')]]);
    const err = await openError(path);
    expect(err.message).toMatch(/no format version/);
    expect(err.message).toContain(`format version ${FORMAT_VERSION}`);
    expect(await readRawFormat(path)).toBeUndefined();
  });
});

describe('data directory lock', () => {
  it('refuses a directory that is already open, saying it is locked by another process', async () => {
    const d = tempDir('tributary-lock-');
    const first = await Database.open(d.path);
    try {
      const err = await openError(d.path);
      expect(err.message).toMatch(/locked by another process/);
      expect(err.message).toContain(join(d.path, 'db'));
      // The first one is unaffected.
      expect(first.writable).toBe(true);
      await first.commit([{ type: 'put', key: Buffer.from('Mx'), value: Buffer.from('y') }]);
    } finally {
      await first.close();
      d.cleanup();
    }
    // And once closed, the directory opens again.
    const d2 = tempDir('tributary-lock-');
    const a = await Database.open(d2.path);
    await a.close();
    const b = await Database.open(d2.path);
    await b.close();
    d2.cleanup();
  });

  it('rejects commits after close with StoreUnavailable', async () => {
    const d = tempDir('tributary-lock-');
    const db = await Database.open(d.path);
    await db.close();
    expect(db.writable).toBe(false);
    await expect(db.commit([{ type: 'put', key: Buffer.from('Mx'), value: Buffer.from('y') }])).rejects.toMatchObject({ code: 'StoreUnavailable', message: 'the database is closed' });
    d.cleanup();
  });
});

describe('Database after a failed write (simulated)', () => {
  /** Makes the next `count` batch writes fail with `error`, as LevelDB would report it. */
  function failWrites(db: Database, message: string, count = 1): void {
    const handle = db.db as unknown as { batch: () => { write: (options?: unknown) => Promise<void>; close: () => Promise<void> } };
    const real = handle.batch.bind(handle);
    let left = count;
    handle.batch = () => {
      const batch = real();
      if (left > 0) {
        left--;
        batch.write = async () => {
          await batch.close();
          throw Object.assign(new Error(message), { code: 'LEVEL_IO_ERROR' });
        };
      }
      return batch;
    };
  }
  const put = (k: string, v: string): { type: 'put'; key: Buffer; value: Buffer } => ({ type: 'put', key: Buffer.from(`X${k}`), value: Buffer.from(v) });

  it('refuses writes with a disk-full message, reopens the handle by itself, then writes again', async () => {
    const d = tempDir('tributary-fail-');
    const db = await Database.open(d.path, { retryMinMs: 10, retryMaxMs: 50 });
    try {
      const changes: Array<[boolean, string | undefined]> = [];
      db.onWritableChange((writable, error) => changes.push([writable, error?.message]));
      const handle = db.db;
      await db.commit([put('a', '1')]);
      failWrites(db, `IO error: ${d.path}/db/000003.log: No space left on device`);
      const err: unknown = await db.commit([put('b', '2')]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(TributaryError);
      expect(err).toMatchObject({ code: 'StoreUnavailable', status: 503 });
      expect((err as Error).message).toMatch(/the disk holding the database at .* is full, so the write was not stored/);
      expect((err as Error).message).toContain('No space left on device');
      expect(((err as Error).cause as Error).message).toContain('No space left on device');
      expect(changes[0]?.[0]).toBe(false);
      expect(changes[0]?.[1]).toMatch(/is full/);

      await waitFor(() => db.writable, 5000, 'the database to reopen itself');
      expect(db.reopens).toBe(1);
      expect(db.db).toBe(handle); // reopened in place
      expect(changes.map(([w]) => w)).toEqual([false, true]);
      await db.commit([put('c', '3')]);
      expect((await db.db.get(Buffer.from('Xa')))?.toString()).toBe('1');
      expect(await db.db.get(Buffer.from('Xb'))).toBeUndefined();
      expect((await db.db.get(Buffer.from('Xc')))?.toString()).toBe('3');
    } finally {
      await db.close();
      d.cleanup();
    }
  });

  it('says what failed when it is not the disk, and a listener that throws does not break it', async () => {
    const d = tempDir('tributary-fail-');
    const db = await Database.open(d.path, { retryMinMs: 10, retryMaxMs: 50 });
    try {
      const warn = vi.spyOn(process, 'emitWarning').mockImplementation(() => {});
      db.onWritableChange(() => {
        throw new Error('listener bug');
      });
      failWrites(db, 'IO error: something else broke');
      await expect(db.commit([put('a', '1')])).rejects.toMatchObject({
        code: 'StoreUnavailable',
        message: expect.stringMatching(/failed a write, so it was not stored \(IO error: something else broke\); writes are refused until the database has been reopened/),
      });
      // The next commit reopens first (no need to wait for the timer) and succeeds.
      await waitFor(async () => {
        await db.commit([put('b', '2')]);
        return true;
      }, 5000, 'a commit to succeed again');
      expect(db.writable).toBe(true);
      expect(warn).toHaveBeenCalledWith(expect.stringContaining('listener bug'));
      warn.mockRestore();
    } finally {
      await db.close();
      d.cleanup();
    }
  });

  it('reports the duration of each synced commit that succeeded, and nothing for unsynced or failed ones', async () => {
    const d = tempDir('tributary-commit-');
    const db = await Database.open(d.path, { retryMinMs: 10, retryMaxMs: 50 });
    try {
      const seconds: number[] = [];
      const remove = db.onCommit((s) => seconds.push(s));
      const put = (k: string) => [{ type: 'put' as const, key: Buffer.from(`X${k}`), value: Buffer.from('v') }];
      await db.commit(put('a'));
      await db.commit(put('b'));
      await db.commitUnsynced(put('c'));
      await db.commit([]); // nothing to write: no commit
      failWrites(db, 'IO error: something broke');
      await expect(db.commit(put('d'))).rejects.toMatchObject({ code: 'StoreUnavailable' });
      await waitFor(() => db.writable, 5000, 'the database to reopen itself');
      expect(seconds).toHaveLength(2);
      for (const s of seconds) expect(s).toBeGreaterThan(0);
      for (const s of seconds) expect(s).toBeLessThan(60);
      remove();
      await db.commit(put('e'));
      expect(seconds).toHaveLength(2);
    } finally {
      await db.close();
      d.cleanup();
    }
  });
});

describe('Database.clear', () => {
  it('deletes exactly the range, in chunks, through commits', async () => {
    const d = tempDir('tributary-clear-');
    const db = await Database.open(d.path);
    try {
      const key = (i: number): Buffer => Buffer.from(`Z${String(i).padStart(5, '0')}`);
      for (let i = 0; i < 3000; i += 500) await db.commit(Array.from({ length: 500 }, (_, j) => ({ type: 'put' as const, key: key(i + j), value: Buffer.from('v') })));
      const commits: number[] = [];
      const realCommit = db.commit.bind(db);
      db.commit = (ops) => {
        commits.push(ops.length);
        return realCommit(ops);
      };
      expect(await db.clear({ gte: key(100), lt: key(2600) }, 1000)).toBe(2500);
      expect(commits).toEqual([1000, 1000, 500]);
      const left = await db.db.keys({ gte: Buffer.from('Z'), lt: Buffer.from('[') }).all();
      expect(left.length).toBe(500);
      expect(left[99]).toEqual(key(99));
      expect(left[100]).toEqual(key(2600));
      expect(await db.clear({ gte: key(100), lt: key(2600) })).toBe(0);
      await expect(db.clear({}, 0)).rejects.toThrow(RangeError);
    } finally {
      await db.close();
      d.cleanup();
    }
  });
});

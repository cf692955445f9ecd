/**
 * A full disk, for real: a small tmpfs holds the data directory (the tests run as
 * root). Filling it must make writes fail with a clear error (and no acknowledgement
 * for anything not stored) while reads keep working; freeing space must let writes
 * resume by themselves; nothing acknowledged may be lost, and the change log must stay
 * gap-free with one INSERT per acknowledged reading.
 *
 * LevelDB fails in two ways on a full disk, and both are covered:
 * - the write-ahead log append fails (little space left): not latched by LevelDB, but
 *   the log now holds a torn record, so writing on through the same handle would lose
 *   data at the next open — Database reopens before writing again;
 * - a memtable flush fails writing an `.ldb` table (a few MiB left): latched by LevelDB
 *   until the database is reopened.
 *
 * With CI=true, a tmpfs that cannot be mounted fails the tests instead of skipping them.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync, statSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TributaryError } from '../core/errors.js';
import { LevelCheckpointStore } from '../functions/checkpoints.js';
import { Database, LevelTelemetryStore } from '../store/index.js';
import type { Reading, Values } from '../store/types.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import type { ChangeRecord } from '../streams/types.js';
import { waitFor } from './helpers.js';

const DAY = 86_400_000;
const TMPFS_SIZE = '12m';
const T0 = Date.UTC(2024, 0, 1);
const DEVICES = 4;
const READINGS_PER_WRITE = 20;
/** Upper bound on write requests while filling the disk (12 MiB fills in far fewer). */
const MAX_FILL_WRITES = 20_000;

let mountPoint: string | undefined;
let mountError = '';

beforeAll(() => {
  const dir = mkdtempSync(join(tmpdir(), 'tributary-full-disk-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS_SIZE}`, 'tmpfs', dir], { stdio: 'pipe' });
    mountPoint = dir;
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString('utf8').trim();
    mountError = (stderr || (err as Error).message).replace(/\s+/g, ' ');
    rmdirSync(dir);
  }
});

afterAll(() => {
  if (mountPoint === undefined) return;
  try {
    execFileSync('umount', [mountPoint], { stdio: 'pipe' });
  } catch {
    // Something still holds a file open (a failed test): detach it anyway.
    execFileSync('umount', ['-l', mountPoint], { stdio: 'pipe' });
  }
  rmdirSync(mountPoint);
});

/** The mounted tmpfs, or: with CI=true a failure saying why, otherwise a skip saying why. */
function tmpfs(skip: (note: string) => never): string {
  if (mountPoint !== undefined) return mountPoint;
  const reason = `cannot mount a ${TMPFS_SIZE} tmpfs for the full-disk test (needs root): ${mountError}`;
  if (process.env.CI === 'true') throw new Error(`${reason} — CI=true, so this fails instead of skipping`);
  skip(`${reason} — skipped (with CI=true it would fail)`);
}

function freeBytes(path: string): number {
  const s = statfsSync(path);
  return s.bavail * s.bsize;
}

/** LevelDB's current write-ahead log (the highest-numbered `.log`). */
function newestLog(dbPath: string): string | undefined {
  return readdirSync(dbPath).filter((n) => n.endsWith('.log')).sort().at(-1);
}

function newestLogBytes(dbPath: string): number {
  const newest = newestLog(dbPath);
  return newest === undefined ? 0 : statSync(join(dbPath, newest)).size;
}

/** Memtable flushes that LevelDB's info LOG reports as finished, successfully or not. */
function tableFlushesLogged(dbPath: string): number {
  return readFileSync(join(dbPath, 'LOG'), 'utf8').match(/Level-0 table #\d+: \d+ bytes/g)?.length ?? 0;
}

interface Opened {
  database: Database;
  changeLog: EmbeddedChangeLog;
  store: LevelTelemetryStore;
  close: () => Promise<void>;
}

/** LevelDB's own default: a buffer whose log and flushed table both fit the 12 MiB tmpfs. */
const WRITE_BUFFER_BYTES = 4 * 1024 * 1024;

async function openAt(dataDir: string): Promise<Opened> {
  const database = await Database.open(dataDir, { writeBufferBytes: WRITE_BUFFER_BYTES });
  const changeLog = await EmbeddedChangeLog.open(database, { shards: 2 });
  const store = await LevelTelemetryStore.open({ database, changeLog, partitionWindowMs: DAY, maxBatch: 500, maxDelayMs: 0 });
  return {
    database,
    changeLog,
    store,
    close: async () => {
      await store.close();
      await database.close();
    },
  };
}

/** Acknowledged readings by `deviceId:ts` (every reading is device-stamped, seq 0). */
type Acked = Map<string, { deviceId: string; ts: number; values: Values }>;

/** Incompressible values, so the disk fills at the rate we write (LevelDB compresses tables with snappy). */
function values(n: number): Values {
  return { n, pad: randomBytes(96).toString('base64') };
}

async function readAll(store: LevelTelemetryStore, deviceId: string): Promise<Reading[]> {
  const out: Reading[] = [];
  let cursor: string | undefined;
  for (let page = 0; page < 10_000; page++) {
    const res = await store.query({ deviceId, from: 0, to: T0 + 10 * DAY, order: 'asc', limit: 1000, ...(cursor === undefined ? {} : { cursor }) });
    out.push(...res.items);
    if (res.nextCursor === null) return out;
    cursor = res.nextCursor;
  }
  throw new Error('too many pages');
}

async function allChanges(changeLog: EmbeddedChangeLog): Promise<ChangeRecord[][]> {
  const out: ChangeRecord[][] = [];
  for (let shard = 0; shard < changeLog.shardCount; shard++) out.push(await changeLog.read(shard, 0, Number.MAX_SAFE_INTEGER));
  return out;
}

async function expectAllAcked(store: LevelTelemetryStore, acked: Acked): Promise<void> {
  for (let d = 0; d < DEVICES; d++) {
    const deviceId = `dev-${d}`;
    const stored = await readAll(store, deviceId);
    const expected = [...acked.values()].filter((r) => r.deviceId === deviceId).sort((a, b) => a.ts - b.ts);
    expect(stored.map((r) => ({ deviceId: r.deviceId, ts: r.ts, values: r.values }))).toEqual(expected);
    expect(stored.every((r) => r.seq === 0)).toBe(true);
  }
}

/**
 * Fills the disk (see the comment in the body), checks behaviour while full, deletes the
 * filler file and checks recovery, then reopens. Returns the cause's message of the first
 * failure (it quotes LevelDB's error).
 */
async function fillAndRecover(root: string, name: string, fill: { leaveBytes: number; whenLogBytes: number }): Promise<string> {
  const dataDir = join(root, name);
  const filler = join(root, `${name}.filler`);
  mkdirSync(dataDir);
  const opened: Opened[] = [];
  try {
    let o = await openAt(dataDir);
    opened.push(o);
    const { database, store } = o;
    const transitions: boolean[] = [];
    database.onWritableChange((writable) => transitions.push(writable));
    const checkpoints = new LevelCheckpointStore(database);
    await checkpoints.set('fn', 'trigger', 0, 7);
    const sub = database.sublevel('mqtt');
    await sub.put('session', 'kept');

    const acked: Acked = new Map();
    let nextTs = T0;
    const write = async (deviceId: string, count: number): Promise<void> => {
      const readings = Array.from({ length: count }, () => ({ ts: nextTs++, values: values(nextTs) }));
      await store.write({ deviceId, readings });
      // Only now is it acknowledged.
      for (const r of readings) acked.set(`${deviceId}:${r.ts}`, { deviceId, ts: r.ts, values: r.values });
    };

    // Write until writes fail, with several writers (group commits). Once LevelDB's
    // current log has grown to `whenLogBytes`, a filler file leaves only `leaveBytes`
    // free. For a flush failure one writer then goes on alone, and when LevelDB switches
    // to a new log (the memtable is being flushed to a table in the background) it waits
    // for the flush to end (LevelDB's info LOG says so), so that the failing table write
    // is not raced by a log append that happens to hit the full disk first.
    const failures: unknown[] = [];
    let attempts = 0;
    const dbPath = join(dataDir, 'db');
    await Promise.all(
      Array.from({ length: DEVICES }, async (_, d) => {
        while (attempts < MAX_FILL_WRITES && newestLogBytes(dbPath) < fill.whenLogBytes) {
          attempts++;
          await write(`dev-${d}`, READINGS_PER_WRITE);
        }
      }),
    );
    writeFileSync(filler, Buffer.alloc(Math.max(0, freeBytes(root) - fill.leaveBytes)));
    const logAtFill = newestLog(dbPath);
    const flushesAtFill = tableFlushesLogged(dbPath);
    const flushing = fill.whenLogBytes > 0;
    await Promise.all(
      Array.from({ length: flushing ? 1 : DEVICES }, async (_, d) => {
        while (failures.length === 0 && attempts < MAX_FILL_WRITES) {
          attempts++;
          await write(`dev-${flushing ? attempts % DEVICES : d}`, flushing ? 1 : READINGS_PER_WRITE).catch((err: unknown) => failures.push(err));
          if (flushing && failures.length === 0 && newestLog(dbPath) !== logAtFill) {
            await waitFor(() => tableFlushesLogged(dbPath) > flushesAtFill, 10_000, 'LevelDB to log the end of the memtable flush');
          }
        }
      }),
    );
    expect(failures.length, `no write failed in ${attempts} writes: the disk never filled`).toBeGreaterThan(0);
    expect(acked.size).toBeGreaterThan(0);
    for (const err of failures) {
      expect(err).toBeInstanceOf(TributaryError);
      expect(err).toMatchObject({ code: 'StoreUnavailable', status: 503, retriable: true });
      expect((err as Error).message).toMatch(/disk .*is full/);
    }
    const firstCause = String(((failures[0] as TributaryError).cause as Error | undefined)?.message ?? '');

    // While full: writes keep failing at once, clearly; reads keep working.
    expect(database.writable).toBe(false);
    expect(database.writeError?.message).toMatch(/disk .*is full/);
    for (let i = 0; i < 3; i++) {
      await expect(write('dev-0', 1)).rejects.toMatchObject({ code: 'StoreUnavailable', message: expect.stringMatching(/disk .*is full/) });
    }
    await expectAllAcked(store, acked);
    for (let d = 0; d < DEVICES; d++) {
      const last = [...acked.values()].filter((r) => r.deviceId === `dev-${d}`).sort((a, b) => b.ts - a.ts)[0];
      if (last === undefined) continue;
      expect(await store.latest(`dev-${d}`)).toEqual({ deviceId: `dev-${d}`, ts: last.ts, seq: 0, values: last.values });
    }
    expect(await checkpoints.get('fn', 'trigger', 0)).toBe(7);
    expect(await sub.get('session')).toBe('kept');
    expect(database.reopens).toBe(0); // no reopen was tried without room for it

    // Free the space: the database recovers by itself (no write needed to trigger it).
    // Reads through Database.read meanwhile ride out the reopen.
    let reading = true;
    const readErrors: unknown[] = [];
    let reads = 0;
    const reader = (async () => {
      while (reading && reads < 100_000) {
        reads++;
        await database.read((db) => db.keys({ limit: 20 }).all()).catch((err: unknown) => readErrors.push(err));
        await new Promise((r) => setImmediate(r));
      }
    })();
    rmSync(filler);
    await waitFor(() => database.writable, 15_000, 'the database to become writable again');
    reading = false;
    await reader;
    expect(readErrors).toEqual([]);
    expect(reads).toBeGreaterThan(0);
    expect(database.reopens).toBeGreaterThanOrEqual(1);
    expect(transitions[0]).toBe(false);
    expect(transitions.at(-1)).toBe(true);
    for (let i = 0; i < 50; i++) await write(`dev-${i % DEVICES}`, 5);
    await expectAllAcked(store, acked);
    await checkpoints.set('fn', 'trigger', 0, 8);
    expect(await checkpoints.get('fn', 'trigger', 0)).toBe(8);
    expect(await sub.get('session')).toBe('kept');
    await sub.put('session', 'after');

    // A final close and reopen: everything acknowledged is there, nothing else is.
    await o.close();
    opened.pop();
    o = await openAt(dataDir);
    opened.push(o);
    await expectAllAcked(o.store, acked);
    const shards = await allChanges(o.changeLog);
    const inserts = new Map<string, number>();
    for (const records of shards) {
      expect(records.map((r) => r.sequenceNumber)).toEqual(records.map((_, i) => i + 1));
      for (const r of records) {
        expect(r.eventName).toBe('INSERT');
        const key = `${r.deviceId}:${r.ts}`;
        inserts.set(key, (inserts.get(key) ?? 0) + 1);
        expect(r.newValues).toEqual(acked.get(key)?.values);
      }
    }
    expect(inserts.size).toBe(acked.size);
    expect([...inserts.values()].every((n) => n === 1)).toBe(true);
    expect(await new LevelCheckpointStore(o.database).get('fn', 'trigger', 0)).toBe(8);
    expect(await o.database.sublevel('mqtt').get('session')).toBe('after');
    return firstCause;
  } finally {
    for (const o of opened) await o.close().catch(() => {});
    rmSync(filler, { force: true });
    rmSync(dataDir, { recursive: true, force: true });
  }
}

describe('full disk (tmpfs)', () => {
  afterEach(() => {
    // Each test cleans up its own directories; the mount must be empty between tests.
    if (mountPoint !== undefined) expect(freeBytes(mountPoint)).toBeGreaterThan(11 * 1024 * 1024);
  });

  it('a failing log append: writes fail clearly, reads work, writes resume by themselves, nothing acknowledged is lost', async (ctx) => {
    const root = tmpfs(ctx.skip);
    const cause = await fillAndRecover(root, 'log', { whenLogBytes: 0, leaveBytes: 256 * 1024 });
    expect(cause).toMatch(/\.log: No space left on device/);
  });

  it('a failing memtable flush (latched by LevelDB until reopened): the same guarantees', async (ctx) => {
    const root = tmpfs(ctx.skip);
    // With the log at 3 MiB, room for the rest of the 4 MiB write buffer's log but not
    // for the table the memtable is then flushed to.
    const cause = await fillAndRecover(root, 'flush', { whenLogBytes: 3 * 1024 * 1024, leaveBytes: 1280 * 1024 });
    expect(cause).toMatch(/\.ldb: No space left on device/);
  });
});

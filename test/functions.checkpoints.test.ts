import { afterEach, describe, expect, it, vi } from 'vitest';
import { LevelCheckpointStore } from '../functions/checkpoints.js';
import { Database } from '../store/database.js';
import { tempDir } from './helpers.js';

describe('LevelCheckpointStore', () => {
  const cleanups: Array<() => Promise<void>> = [];
  afterEach(async () => {
    vi.restoreAllMocks();
    for (const c of cleanups.splice(0)) await c();
  });

  async function open(): Promise<{ database: Database; path: string }> {
    const dir = tempDir('tributary-checkpoints-');
    const database = await Database.open(dir.path);
    const state = { database, path: dir.path };
    cleanups.push(async () => {
      await state.database.close().catch(() => {});
      dir.cleanup();
    });
    return state;
  }

  it('writes unsynced, coalesces the writes of one key (the latest wins) and keeps keys apart', async () => {
    const state = await open();
    const store = new LevelCheckpointStore(state.database);
    const unsynced = vi.spyOn(state.database, 'commitUnsynced');
    const synced = vi.spyOn(state.database, 'commit');
    const sets: Array<Promise<void>> = [];
    for (let seq = 1; seq <= 50; seq++) sets.push(store.set('fn', 't', 0, seq, seq === 50 ? { start: 60_000, state: { n: seq } } : undefined));
    sets.push(store.set('fn', 't', 1, 7));
    await Promise.all(sets);
    expect(synced).not.toHaveBeenCalled();
    // Shard 0: the first write, then one for everything that came while it was in flight; shard 1: one.
    expect(unsynced).toHaveBeenCalledTimes(3);
    expect(await store.get('fn', 't', 0)).toBe(50);
    expect(await store.window('fn', 't', 0)).toEqual({ start: 60_000, state: { n: 50 } });
    expect(await store.get('fn', 't', 1)).toBe(7);

    // A later set after everything settled is a write of its own, and survives a reopen.
    await store.set('fn', 't', 0, 51);
    expect(unsynced).toHaveBeenCalledTimes(4);
    await state.database.close();
    state.database = await Database.open(state.path);
    const reopened = new LevelCheckpointStore(state.database);
    expect([await reopened.get('fn', 't', 0), await reopened.window('fn', 't', 0), await reopened.get('fn', 't', 1)]).toEqual([51, undefined, 7]);
  });

  it('a failed write rejects its callers; the next set writes again', async () => {
    const state = await open();
    const store = new LevelCheckpointStore(state.database);
    const real = state.database.commitUnsynced.bind(state.database);
    let calls = 0;
    vi.spyOn(state.database, 'commitUnsynced').mockImplementation(async (ops) => {
      if (calls++ === 0) throw new Error('disk full');
      return real(ops);
    });
    const first = store.set('fn', 't', 0, 1);
    const coalesced = store.set('fn', 't', 0, 2);
    await expect(first).rejects.toThrow('disk full');
    await coalesced;
    expect(await store.get('fn', 't', 0)).toBe(2);
  });
});

/**
 * Where the control plane writes: device credentials, API keys, the audit log, functions
 * and their versions, triggers, the dead-letter queue. One node commits these to its own
 * LevelDB (`LocalMetadata`); in cluster mode every node must see the same, so the writes
 * go through a replicated keyspace on Kafka (ADR 0002) and are applied, in one order, to
 * every node's LevelDB — the modules that keep caches listen for what was applied.
 */
import type { BatchOp } from '../streams/types.js';
import type { Database } from './database.js';

export interface MetadataWriter {
  /**
   * Commits the ops (one atomic batch here; in cluster mode, in order on every node) and
   * resolves once they are applied to this node's database, so a read that follows sees them.
   */
  commit(ops: BatchOp[]): Promise<void>;
  /**
   * Called after ops were applied to this node's database — written here or, in cluster
   * mode, by another node — so that caches of them can follow. Returns an unsubscribe.
   */
  onApplied(listener: (ops: readonly BatchOp[]) => void): () => void;
}

/** Single-node mode: the node's own database. */
export class LocalMetadata implements MetadataWriter {
  private readonly listeners = new Set<(ops: readonly BatchOp[]) => void>();

  constructor(private readonly database: Database) {}

  async commit(ops: BatchOp[]): Promise<void> {
    await this.database.commit(ops);
    for (const listener of this.listeners) listener(ops);
  }

  onApplied(listener: (ops: readonly BatchOp[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

/**
 * Loads a cache from the database and keeps it following `metadata`, missing nothing: the
 * listener is in place before `load` reads, and ops applied while it reads are held and
 * applied after it (some may be in what it read too, so `apply` must be idempotent).
 * Returns the unsubscribe.
 */
export async function loadThenFollow(metadata: MetadataWriter, load: () => Promise<void>, apply: (ops: readonly BatchOp[]) => void): Promise<() => void> {
  let held: Array<readonly BatchOp[]> | undefined = [];
  const unsubscribe = metadata.onApplied((ops) => {
    if (held === undefined) apply(ops);
    else held.push(ops);
  });
  try {
    await load();
  } catch (err) {
    unsubscribe();
    throw err;
  }
  for (const ops of held) apply(ops);
  held = undefined;
  return unsubscribe;
}

/**
 * A shard placement held in memory and moved by its owner: in cluster mode the store
 * group's assignment sets it (cluster/cluster-node.ts), and the mappings' pollers follow.
 */
import type { ShardPlacement } from './types.js';

export class AssignedShards implements ShardPlacement {
  private listeners = new Set<() => void>();

  constructor(private shards: readonly number[] = []) {}

  owned(): readonly number[] {
    return this.shards;
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  set(shards: readonly number[]): void {
    this.shards = shards;
    for (const l of this.listeners) l();
  }
}

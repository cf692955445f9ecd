/**
 * Which node owns each telemetry partition, for query routing (ADR 0002): the store
 * group's members put their HTTP address in their group metadata, and any node reads
 * the group's current assignment from Kafka. Cached briefly: a stale answer costs one
 * forwarded request that the old owner refuses as unavailable, and clients retry.
 */
import type { KafkaClient } from './kafka-client.js';

const CACHE_MS = 1_000;

export function ownerUserData(httpUrl: string): Buffer {
  return Buffer.from(JSON.stringify({ http: httpUrl }), 'utf8');
}

export class PartitionOwners {
  private cache: { at: number; owners: Map<number, string> } | undefined;
  private loading: Promise<Map<number, string>> | undefined;

  constructor(
    private readonly client: KafkaClient,
    private readonly groupId: string,
    private readonly topic: string,
  ) {}

  /** The HTTP address of the node that owns `partition`, or undefined while the group is rebalancing. */
  async urlOf(partition: number): Promise<string | undefined> {
    return (await this.owners()).get(partition);
  }

  /** Every partition's owner (partition → HTTP address); partitions without one are absent (the group is rebalancing). */
  assignment(): Promise<ReadonlyMap<number, string>> {
    return this.owners();
  }

  /** Forget the cached assignment (after a forward failed). */
  invalidate(): void {
    this.cache = undefined;
  }

  private async owners(): Promise<Map<number, string>> {
    if (this.cache !== undefined && Date.now() - this.cache.at < CACHE_MS) return this.cache.owners;
    this.loading ??= this.load().finally(() => {
      this.loading = undefined;
    });
    return this.loading;
  }

  private async load(): Promise<Map<number, string>> {
    const owners = new Map<number, string>();
    for (const member of await this.client.groupMembers(this.groupId, this.topic)) {
      let url: unknown;
      try {
        url = (JSON.parse(member.userData.toString('utf8')) as { http?: unknown }).http;
      } catch {
        continue; // a member that is not a Tributary node of this version
      }
      if (typeof url === 'string') for (const p of member.partitions) owners.set(p, url);
    }
    this.cache = { at: Date.now(), owners };
    return owners;
  }
}

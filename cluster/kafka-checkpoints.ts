/**
 * Event source mapping checkpoints as Kafka committed offsets (ADR 0002, "Functions"):
 * in cluster mode a shard's poller moves between nodes with the ownership of its
 * partition, so its checkpoint must be where every node reads it.
 */
import { TributaryError } from '../core/errors.js';
import { BaseCheckpointStore, CoalescedWrites, type Checkpoint, type WindowState } from '../functions/checkpoints.js';
import type { GroupOffset, KafkaClient } from './kafka-client.js';

/**
 * The largest open tumbling window (as JSON) kept with a checkpoint: it travels as the
 * offset commit's metadata, which the broker refuses past `offset.metadata.max.bytes`
 * (default 4096); the rest is headroom.
 */
export const MAX_WINDOW_METADATA_BYTES = 4000;

export interface KafkaCheckpointStoreOptions {
  client: KafkaClient;
  /** The change stream's topic: shard p is its partition p. */
  topic: string;
  /** The topic prefix: a mapping's group is `${groupPrefix}fn.${function}.${trigger}`. */
  groupPrefix: string;
}

/**
 * The checkpoint of (function, trigger, shard) is the committed offset of group
 * `${groupPrefix}fn.${function}.${trigger}` on partition `shard` of the change topic.
 * Record s is at offset s - 1, so "processed through s" is the next offset s: the
 * committed offset is the sequence number itself. The open tumbling window is the
 * commit's metadata (JSON), written and read with the offset in one request, so the two
 * always agree.
 *
 * The groups have no members ("simple" commits, generation -1): which node polls a shard
 * is decided elsewhere (the placement), the group only keeps the offsets, and
 * `kafka-consumer-groups.sh --describe --group <group>` shows each shard's lag.
 *
 * Writes of one key are coalesced ({@link CoalescedWrites}): a commit is a network round
 * trip, and only the latest checkpoint matters.
 */
export class KafkaCheckpointStore extends BaseCheckpointStore {
  private readonly writes = new CoalescedWrites<{ groupId: string; entry: GroupOffset }>((_key, { groupId, entry }) =>
    this.options.client.commitGroupOffsets(groupId, this.options.topic, [entry]),
  );

  constructor(private readonly options: KafkaCheckpointStoreOptions) {
    super();
  }

  /** The consumer group holding a mapping's checkpoints. */
  groupOf(functionName: string, triggerId: string): string {
    return `${this.options.groupPrefix}fn.${functionName}.${triggerId}`;
  }

  async read(functionName: string, triggerId: string, shard: number): Promise<Checkpoint | undefined> {
    const committed = (await this.options.client.fetchGroupOffsets(this.groupOf(functionName, triggerId), this.options.topic, [shard])).get(shard);
    if (committed === undefined) return undefined;
    return committed.metadata === undefined ? { sequenceNumber: committed.offset } : { sequenceNumber: committed.offset, window: JSON.parse(committed.metadata) as WindowState };
  }

  /** @throws TributaryError `PayloadTooLarge` (as a rejection) for a window whose JSON passes {@link MAX_WINDOW_METADATA_BYTES}. */
  async set(functionName: string, triggerId: string, shard: number, sequenceNumber: number, window?: WindowState): Promise<void> {
    const entry: GroupOffset = { partition: shard, offset: sequenceNumber };
    if (window !== undefined) {
      const metadata = JSON.stringify(window);
      const bytes = Buffer.byteLength(metadata, 'utf8');
      if (bytes > MAX_WINDOW_METADATA_BYTES) {
        throw new TributaryError(
          'PayloadTooLarge',
          `the tumbling window of function ${functionName}, trigger ${triggerId}, shard ${shard} is ${bytes} bytes as JSON; a checkpoint in Kafka keeps at most ${MAX_WINDOW_METADATA_BYTES} (the offset commit's metadata, offset.metadata.max.bytes)`,
        );
      }
      entry.metadata = metadata;
    }
    const groupId = this.groupOf(functionName, triggerId);
    return this.writes.write(`${groupId}\u0000${shard}`, { groupId, entry });
  }
}

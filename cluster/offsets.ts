/**
 * Which Kafka records a store has applied: per topic and partition, the next offset to
 * apply, under the `O` prefix. Written in the same LevelDB batch as the data it covers
 * (ADR 0002), so the store and its position can never disagree after a crash.
 */
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import type { BatchOp } from '../streams/types.js';

/** `O` · topic · 0x00 · partition (u32 BE). */
export function consumerOffsetKey(topic: string, partition: number): Buffer {
  const name = Buffer.from(topic, 'utf8');
  const key = Buffer.allocUnsafe(1 + name.length + 1 + 4);
  key[0] = Prefix.consumerOffset;
  name.copy(key, 1);
  key[1 + name.length] = 0;
  key.writeUInt32BE(partition, 2 + name.length);
  return key;
}

/** The put that records `next` as the partition's next offset; goes into the data's batch. */
export function consumerOffsetOp(topic: string, partition: number, next: number): BatchOp {
  const value = Buffer.allocUnsafe(8);
  value.writeBigUInt64BE(BigInt(next));
  return { type: 'put', key: consumerOffsetKey(topic, partition), value };
}

/** The partition's next offset to apply, or undefined when this store has applied none of it. */
export async function readConsumerOffset(database: Database, topic: string, partition: number): Promise<number | undefined> {
  const [value] = await database.read((db) => db.getMany([consumerOffsetKey(topic, partition)]));
  return value ? Number(value.readBigUInt64BE(0)) : undefined;
}

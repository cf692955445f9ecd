/**
 * Maps a device to its shard with 32-bit FNV-1a, so every record of one device lands
 * in one shard (and so stays in commit order) whatever process computes it.
 */
export function shardOf(deviceId: string, shardCount: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < deviceId.length; i++) {
    h ^= deviceId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % shardCount;
}

/** DynamoDB-style shard id, e.g. `shardId-0003`. */
export function shardIdOf(shard: number): string {
  return `shardId-${String(shard).padStart(4, '0')}`;
}

/** Inverse of shardIdOf; undefined when the text is not a shard id of this stream. */
export function parseShardId(text: string, shardCount: number): number | undefined {
  const m = /^shardId-(\d{4,})$/.exec(text);
  if (!m) return undefined;
  const shard = Number(m[1]);
  return shard < shardCount ? shard : undefined;
}

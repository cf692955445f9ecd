/**
 * One LevelDB holds everything; the first key byte says which table a key belongs to.
 * Keeping every table in one database is what lets a reading, its change record, the
 * latest index and the registry commit in one atomic, synced batch.
 *
 * | prefix | table | key after the prefix |
 * |---|---|---|
 * | `M` | meta (format version, creation time, fixed settings) | name (utf8) |
 * | `P` | partition index | partition (u32 BE) |
 * | `T` | telemetry | partition (u32 BE) · deviceId · 0x00 · ts (u64 BE) · seq (u32 BE) |
 * | `L` | latest reading per device, with the per-key latest of keys it lacks | deviceId |
 * | `D` | device registry | deviceId |
 * | `Q` | QoS 1 delivery window per client (redelivery guard) | clientId · 0x00 · slot (u32 BE) |
 * | `C` | change log | shard (u16 BE) · sequence (u64 BE) |
 * | `K` | function checkpoints | function · 0x00 · trigger · 0x00 · shard (u16 BE) |
 * | `F` | function registry: a version's code / a deployed version / version claims | 0x00 · name · 0x00 · version (u32 BE) / name · 0x00 · version / name · 0x01 · version · claim id |
 * | `G` | triggers (event source mappings, functions/triggers.ts) | function · 0x00 · trigger id |
 * | `X` | dead-letter queue of stream mappings (functions/dlq.ts) | id (`<createdAt ms, 15 digits>-<16 hex>`, utf8) |
 * | `S` | device credentials (access/device-credentials.ts) | deviceId |
 * | `A` | API keys (access/api-keys.ts) | key id |
 * | `U` | audit log of administrative actions | time (u64 BE) · id |
 * | `R` | rejects log (ingest) | time (u64 BE) · seq |
 * | `W` | function logs | function · 0x00 · time (u64 BE) · seq |
 * | `O` | Kafka positions applied to this database: telemetry partitions, metadata, rejects (cluster/offsets.ts) | topic · 0x00 · partition (u32 BE) |
 * | `!` | sublevels of libraries (e.g. `!mqtt!` for aedes persistence) | — |
 */
export const Prefix = {
  meta: 0x4d, // M
  partition: 0x50, // P
  telemetry: 0x54, // T
  latest: 0x4c, // L
  device: 0x44, // D
  delivery: 0x51, // Q
  change: 0x43, // C
  checkpoint: 0x4b, // K
  function: 0x46, // F
  deadLetter: 0x58, // X
  trigger: 0x47, // G
  credential: 0x53, // S
  apiKey: 0x41, // A
  audit: 0x55, // U
  reject: 0x52, // R
  functionLog: 0x57, // W
  consumerOffset: 0x4f, // O
} as const;

/**
 * Bumped whenever the on-disk layout changes incompatibly. 3: values may hold numbers
 * kept as their digits (`T`/`L` JSON with literals a double cannot hold, a msgpack
 * extension in `C`, core/numbers.ts), which a format-2 build would read lossily or not at all.
 */
export const FORMAT_VERSION = 3;

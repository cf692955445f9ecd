/**
 * The telemetry table's DynamoDB key schema. A DynamoDB key is one partition attribute and
 * at most one sort attribute, while an item is identified by (deviceId, ts, seq); so the
 * sort key is one number combining them:
 *
 * - partition key `deviceId` (S);
 * - sort key `tsSeq` (N) = ts + seq / 10^10, as exact decimal text: `1764150000000` when
 *   seq = 0 (nearly every reading), `1764150000000.0000000003` when seq = 3. seq is a u32,
 *   below 10^10, so numeric order is (ts, seq) order, and at most 25 significant digits
 *   stay within DynamoDB's 38. `tsSeq BETWEEN :from AND :to` takes plain epoch-ms bounds.
 *
 * `ts` and `seq` stay plain attributes of every item image. Stream `Keys` are
 * `{deviceId, tsSeq}`, as GetItem and Query of a DynamoDB table with this schema take them.
 *
 * @module
 */

export const PARTITION_KEY = 'deviceId';
export const SORT_KEY = 'tsSeq';

/** Attributes of every item besides its values: ingest refuses values of these names. */
export const ITEM_ATTRIBUTES: ReadonlySet<string> = new Set([PARTITION_KEY, SORT_KEY, 'ts', 'seq']);

const SEQ_DIGITS = 10;
const TS_SEQ = /^(\d+)(?:\.(\d{1,10}))?$/;

/** The sort key's decimal text, trailing zeros trimmed as DynamoDB normalizes numbers. */
export function tsSeqOf(ts: number, seq: number): string {
  if (seq === 0) return String(ts);
  return `${ts}.${String(seq).padStart(SEQ_DIGITS, '0').replace(/0+$/, '')}`;
}

/** Inverse of {@link tsSeqOf}; undefined when `text` is not a sort key of this table. */
export function parseTsSeq(text: string): { ts: number; seq: number } | undefined {
  const m = TS_SEQ.exec(text);
  if (m === null) return undefined;
  return { ts: Number(m[1]), seq: Number((m[2] ?? '').padEnd(SEQ_DIGITS, '0')) };
}

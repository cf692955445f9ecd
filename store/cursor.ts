/**
 * Opaque pagination cursors. A range-query cursor names the last returned item key
 * (ts, seq) and the direction, so the next page starts strictly after it: a page
 * boundary is a position in the key order, not an offset, which keeps pagination
 * stable while new readings arrive. A device-list cursor is the last returned id.
 * Both are base64url so they travel unescaped in a query string.
 */
import { invalidParameter } from '../core/errors.js';
import { isValidDeviceId } from '../core/ids.js';
import { MAX_TIMESTAMP_MS } from '../core/time.js';

export type Order = 'asc' | 'desc';

/** Position of the last item of a page. */
export interface ReadingCursor {
  order: Order;
  ts: number;
  seq: number;
}

const ASC = 0x61; // 'a'
const DESC = 0x64; // 'd'
const CURSOR_BYTES = 1 + 8 + 4;
const TWO_32 = 0x1_0000_0000;

/** The cursor of a page whose last item is at `c`. */
export function encodeReadingCursor(c: ReadingCursor): string {
  const buf = Buffer.allocUnsafe(CURSOR_BYTES);
  buf[0] = c.order === 'asc' ? ASC : DESC;
  buf.writeUInt32BE(Math.floor(c.ts / TWO_32), 1);
  buf.writeUInt32BE(c.ts % TWO_32, 5);
  buf.writeUInt32BE(c.seq, 9);
  return buf.toString('base64url');
}

/**
 * Decodes a cursor of a query with the given `order`.
 * @throws TributaryError `InvalidParameter` (field `cursor`) for anything that is not a
 *   cursor this module produced for that order.
 */
export function decodeReadingCursor(text: string, order: Order): ReadingCursor {
  const buf = strictBase64url(text);
  if (buf === undefined || buf.length !== CURSOR_BYTES || (buf[0] !== ASC && buf[0] !== DESC)) {
    throw invalidParameter('cursor', 'cursor is malformed (pass nextCursor of a previous page unchanged)');
  }
  const cursorOrder: Order = buf[0] === ASC ? 'asc' : 'desc';
  if (cursorOrder !== order) {
    throw invalidParameter('cursor', `cursor belongs to a query with order=${cursorOrder}, not order=${order}`);
  }
  const ts = buf.readUInt32BE(1) * TWO_32 + buf.readUInt32BE(5);
  if (ts > MAX_TIMESTAMP_MS) throw invalidParameter('cursor', 'cursor is malformed (timestamp out of range)');
  return { order, ts, seq: buf.readUInt32BE(9) };
}

/** The cursor of a device page ending at `lastDeviceId`. */
export function encodeDeviceCursor(lastDeviceId: string): string {
  return Buffer.from(lastDeviceId, 'utf8').toString('base64url');
}

/** @throws TributaryError `InvalidParameter` (field `cursor`) unless it encodes a valid device id. */
export function decodeDeviceCursor(text: string): string {
  const buf = strictBase64url(text);
  const id = buf?.toString('utf8');
  if (id === undefined || !isValidDeviceId(id)) {
    throw invalidParameter('cursor', 'cursor is malformed (pass nextCursor of a previous page unchanged)');
  }
  return id;
}

/** Node's decoder skips characters outside the alphabet; round-tripping rejects them. */
function strictBase64url(text: string): Buffer | undefined {
  if (typeof text !== 'string' || text.length === 0) return undefined;
  const buf = Buffer.from(text, 'base64url');
  return buf.toString('base64url') === text ? buf : undefined;
}

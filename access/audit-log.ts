/**
 * The audit log of administrative actions: who (API key id; null in open mode) did
 * what (method, route, path), when, from where, and how it ended (HTTP status).
 * `api/auth.ts` records every request to an administrative route — one whose action is
 * `devices:Manage`, `functions:Deploy` or `admin:*`, other than a read — including
 * refused ones (403), before the response is sent.
 *
 * Entries live in table `U` (key: time u64 BE · 8 random bytes; value: the entry as
 * JSON), synced like every commit, and are listed newest first. They are kept forever:
 * administrative actions are rare. Written through a MetadataWriter, so in cluster mode
 * every node lists every node's entries.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { invalidParameter } from '../core/errors.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { LocalMetadata, type MetadataWriter } from '../store/metadata.js';

export interface AuditEntry {
  /** `<time ms>-<16 hex digits>`, unique and time-ordered. */
  id: string;
  /** Epoch ms. */
  time: number;
  /** The API key used; null in open mode. */
  keyId: string | null;
  method: string;
  /** The route pattern, e.g. `/v1/devices/:id`. */
  route: string;
  /** The request path without its query string. */
  path: string;
  status: number;
  requestId: string;
  sourceIp: string;
}

export type AuditInput = Omit<AuditEntry, 'id' | 'time'>;

export interface AuditQuery {
  from: number;
  to: number;
  limit: number;
  keyId?: string;
  /** `nextCursor` of the previous page. */
  cursor?: string;
}

export interface AuditPage {
  items: AuditEntry[];
  nextCursor: string | null;
}

const ID_RE = /^(\d{1,15})-([0-9a-f]{16})$/;

function keyOf(id: string): Buffer {
  const m = ID_RE.exec(id);
  if (m === null) throw invalidParameter('cursor', 'cursor is malformed (pass nextCursor of a previous page unchanged)');
  const key = Buffer.alloc(17);
  key[0] = Prefix.audit;
  key.writeBigUInt64BE(BigInt(m[1] as string), 1);
  Buffer.from(m[2] as string, 'hex').copy(key, 9);
  return key;
}

function timeKey(time: number): Buffer {
  const key = Buffer.alloc(9);
  key[0] = Prefix.audit;
  key.writeBigUInt64BE(BigInt(Math.max(0, time)), 1);
  return key;
}

/** Entries in the store's LevelDB, or in memory when no database is given (tests). */
export class AuditLog {
  private readonly memory = new Map<string, Buffer>();
  private readonly metadata: MetadataWriter | undefined;

  /** @param metadata where entries are written; default: `database` alone. */
  constructor(
    private readonly database?: Database,
    metadata?: MetadataWriter,
  ) {
    this.metadata = database === undefined ? undefined : (metadata ?? new LocalMetadata(database));
  }

  async record(input: AuditInput): Promise<AuditEntry> {
    const time = Date.now();
    const entry: AuditEntry = { id: `${time}-${randomBytes(8).toString('hex')}`, time, ...input };
    const key = keyOf(entry.id);
    const value = Buffer.from(JSON.stringify(entry), 'utf8');
    if (this.metadata === undefined) this.memory.set(key.toString('hex'), value);
    else await this.metadata.commit([{ type: 'put', key, value }]);
    return entry;
  }

  /** Entries with `from <= time <= to`, newest first. */
  async list(q: AuditQuery): Promise<AuditPage> {
    const range = { gte: timeKey(q.from), lt: q.cursor === undefined ? timeKey(q.to + 1) : keyOf(Buffer.from(q.cursor, 'base64url').toString('utf8')) };
    const accept = (e: AuditEntry) => q.keyId === undefined || e.keyId === q.keyId;
    const found: AuditEntry[] = [];
    const take = (v: Buffer): boolean => {
      const e = JSON.parse(v.toString('utf8')) as AuditEntry;
      if (accept(e)) found.push(e);
      return found.length > q.limit;
    };
    if (this.database === undefined) {
      const lo = range.gte.toString('hex');
      const hi = range.lt.toString('hex');
      const keys = [...this.memory.keys()].filter((k) => k >= lo && k < hi).sort().reverse();
      for (const k of keys) if (take(this.memory.get(k) as Buffer)) break;
    } else {
      await this.database.read(async (db) => {
        for await (const v of db.values({ ...range, reverse: true })) if (take(v)) break;
      });
    }
    const items = found.slice(0, q.limit);
    const last = items[items.length - 1];
    return { items, nextCursor: found.length > q.limit && last !== undefined ? Buffer.from(last.id, 'utf8').toString('base64url') : null };
  }
}

/**
 * API keys: created over the API (or the CLI, which calls the API), shown once, stored
 * as the SHA-256 digest of the token with the key's name and policy (table `A`:
 * key id → JSON). Every key is held in memory from start-up on, so verifying a new
 * token costs one parse, one SHA-256 of ~50 bytes and a constant-time comparison — no
 * database read — and tokens that verified are cached, so later requests with them
 * cost one map lookup (the SHA-256 alone is a few microseconds, a sizeable share of a
 * small request).
 *
 * A token reads `tak_<key id>_<secret>`: the id names the key to compare against (as
 * GitHub's and Stripe's tokens carry a locator), so lookup never depends on the
 * secret, and the secret is 192 random bits (`access/secrets.ts`).
 *
 * Writes go through a MetadataWriter and the maps follow every `A` op it applies, so in
 * cluster mode a key created on any node works on every node, and a key deleted on any
 * node stops working on every node as soon as the delete is applied there. Each node's
 * bootstrap admin key (`admin.key`) is shared the same way, as the row `admin.<node id>`.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { TributaryError } from '../core/errors.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { loadThenFollow, LocalMetadata, type MetadataWriter } from '../store/metadata.js';
import type { BatchOp } from '../streams/types.js';
import { ADMIN_POLICY, compilePolicy, validatePolicy, type CompiledPolicy, type Policy } from './policy.js';
import { newSecret, secretDigest, secretMatches } from './secrets.js';

export const API_KEY_PREFIX = 'tak_';
/** Id of the bootstrap admin keys (`<dataDir>/admin.key`), the one key id their tokens name. */
export const ADMIN_KEY_ID = 'admin';
/** Table `A` ids of the admin keys that nodes share in cluster mode: `admin.<node id>`. */
const SHARED_ADMIN_PREFIX = `${ADMIN_KEY_ID}.`;
export const KEY_ID_PATTERN = '^[0-9a-f]{16}$';
/** Most verified tokens remembered; past it the cache starts over (keys in use come back at once). */
const MAX_VERIFIED = 10_000;
const KEY_ID_RE = new RegExp(KEY_ID_PATTERN);

/** What is stored and listed about a key (never the token). */
export interface ApiKeyInfo {
  id: string;
  name: string;
  policy: Policy;
  createdAt: number;
}

/** Who a request comes from, once its key has verified. */
export interface Principal {
  keyId: string;
  policy: CompiledPolicy;
}

interface Entry {
  info: ApiKeyInfo;
  digest: Buffer;
  principal: Principal;
}

interface Stored extends ApiKeyInfo {
  /** SHA-256 of the token, hex. */
  digest: string;
}

function keyOf(id: string): Buffer {
  return Buffer.concat([Buffer.of(Prefix.apiKey), Buffer.from(id, 'utf8')]);
}

/** The key id a token names, or undefined when it is not shaped like a token. */
export function tokenKeyId(token: string): string | undefined {
  if (!token.startsWith(API_KEY_PREFIX)) return undefined;
  const end = token.indexOf('_', API_KEY_PREFIX.length);
  return end < 0 ? undefined : token.slice(API_KEY_PREFIX.length, end);
}

/** A new token for key `id`. */
export function newApiKeyToken(id: string): string {
  return newSecret(`${API_KEY_PREFIX}${id}_`);
}

export type ApiKeyStoreOptions = {
  /** The digest of this node's bootstrap admin key (from `admin.key`). */
  adminDigest?: Buffer;
} & (
  | { database?: undefined; metadata?: undefined; shareAdminKey?: undefined }
  | {
      /** Where keys persist (table `A`); without one (tests, embedding), they live in memory only. */
      database: Database;
      /** Where writes go; default: `database` alone. */
      metadata?: MetadataWriter;
      /**
       * Cluster mode: write `adminDigest` through `metadata` as this node's row
       * `admin.<node id>` (the node id is kept in the database's meta table), so that this
       * node's admin key works on every node; a rotated admin key replaces the node's row.
       */
      shareAdminKey?: boolean;
    }
);

export class ApiKeyStore {
  /** The keys created over the API. */
  private readonly entries = new Map<string, Entry>();
  /** Digests of the bootstrap admin keys: this node's (under `admin`) and those shared in table `A` (`admin.<node id>`). */
  private readonly adminDigests = new Map<string, Buffer>();
  /** Tokens that verified → their principal. Only ever holds genuine tokens; cleared whenever a key is deleted or replaced. */
  private readonly verified = new Map<string, Principal>();
  private readonly adminPrincipal: Principal = { keyId: ADMIN_KEY_ID, policy: compilePolicy(ADMIN_POLICY) };

  /** @param metadata where writes go; undefined: memory only. */
  private constructor(
    private readonly metadata: MetadataWriter | undefined,
    adminDigest: Buffer | undefined,
  ) {
    if (adminDigest !== undefined) this.adminDigests.set(ADMIN_KEY_ID, adminDigest);
  }

  /** Loads every stored key and follows the metadata writer; `adminDigest` adds this node's bootstrap admin key. */
  static async open(opts: ApiKeyStoreOptions): Promise<ApiKeyStore> {
    const { database } = opts;
    if (database === undefined) return new ApiKeyStore(undefined, opts.adminDigest);
    const metadata = opts.metadata ?? new LocalMetadata(database);
    const keys = new ApiKeyStore(metadata, opts.adminDigest);
    const range = { gt: Buffer.of(Prefix.apiKey), lt: Buffer.of(Prefix.apiKey + 1) };
    const load = async (): Promise<void> => {
      const rows = await database.read((db) => db.iterator(range).all());
      keys.apply(rows.map(([key, value]) => ({ type: 'put', key, value })));
    };
    await loadThenFollow(metadata, load, (ops) => keys.apply(ops));
    if (opts.shareAdminKey && opts.adminDigest !== undefined) await keys.shareAdminKey(database, opts.adminDigest);
    return keys;
  }

  /** The principal a bearer token stands for, or undefined when it does not verify. */
  verify(token: string): Principal | undefined {
    const cached = this.verified.get(token);
    if (cached !== undefined) return cached;
    const id = tokenKeyId(token);
    const principal = id === ADMIN_KEY_ID ? this.verifyAdmin(token) : this.verifyKey(id, token);
    if (principal === undefined) return undefined;
    if (this.verified.size >= MAX_VERIFIED) this.verified.clear();
    this.verified.set(token, principal);
    return principal;
  }

  private verifyAdmin(token: string): Principal | undefined {
    for (const digest of this.adminDigests.values()) if (secretMatches(token, digest)) return this.adminPrincipal;
    return undefined;
  }

  private verifyKey(id: string | undefined, token: string): Principal | undefined {
    const entry = id === undefined ? undefined : this.entries.get(id);
    return entry !== undefined && secretMatches(token, entry.digest) ? entry.principal : undefined;
  }

  /**
   * Creates a key; the token is returned here and never again. Durable before it resolves.
   * @throws TributaryError `ValidationError` for an invalid policy.
   */
  async create(input: { name: string; policy: Policy }): Promise<{ key: ApiKeyInfo; token: string }> {
    const policy = validatePolicy(structuredClone(input.policy));
    const id = randomBytes(8).toString('hex');
    const token = newApiKeyToken(id);
    const info: ApiKeyInfo = { id, name: input.name, policy, createdAt: Date.now() };
    await this.commit([putOp({ ...info, digest: secretDigest(token).toString('hex') })]);
    return { key: info, token };
  }

  /** A key's id, name and policy (`GET /v1/whoami`); the admin keys answer as the admin policy. */
  describe(keyId: string): Pick<ApiKeyInfo, 'id' | 'name' | 'policy'> | undefined {
    if (keyId === ADMIN_KEY_ID) return { id: ADMIN_KEY_ID, name: 'admin key (<data-dir>/admin.key)', policy: ADMIN_POLICY };
    return this.entries.get(keyId)?.info;
  }

  /** Keys in id order (the admin keys excluded), `limit` after `afterId`. */
  list(opts: { limit: number; afterId?: string }): { items: ApiKeyInfo[]; nextId: string | undefined } {
    const ids = [...this.entries.keys()].filter((id) => opts.afterId === undefined || id > opts.afterId).sort();
    const items = ids.slice(0, opts.limit).map((id) => (this.entries.get(id) as Entry).info);
    return { items, nextId: ids.length > opts.limit ? items[items.length - 1]?.id : undefined };
  }

  /**
   * Deletes a key; requests with it fail from the moment this resolves.
   * @throws TributaryError `NotFound`; `Conflict` for the admin key (rotate it by replacing admin.key).
   */
  async delete(id: string): Promise<void> {
    if (id === ADMIN_KEY_ID) throw new TributaryError('Conflict', 'the admin key cannot be deleted over the API; to rotate it, delete <data-dir>/admin.key and restart', { field: 'id' });
    if (!KEY_ID_RE.test(id) || !this.entries.has(id)) throw new TributaryError('NotFound', `no API key with id ${JSON.stringify(id)}`, { field: 'id' });
    await this.commit([{ type: 'del', key: keyOf(id) }]);
  }

  /** Through the metadata writer, whose applying (see apply) updates the maps; in memory only, applied here. */
  private async commit(ops: BatchOp[]): Promise<void> {
    if (this.metadata === undefined) this.apply(ops);
    else await this.metadata.commit(ops);
  }

  /** Puts this node's admin digest in its row, unless the row holds it already (so a restart writes nothing). */
  private async shareAdminKey(database: Database, digest: Buffer): Promise<void> {
    const nodeId = await database.fixedSetting('nodeId', randomBytes(8).toString('hex'));
    const id = `${SHARED_ADMIN_PREFIX}${nodeId}`;
    if (this.adminDigests.get(id)?.equals(digest)) return;
    await this.commit([putOp({ id, name: `admin.key of node ${nodeId}`, policy: ADMIN_POLICY, createdAt: Date.now(), digest: digest.toString('hex') })]);
  }

  /** Follows applied `A` ops. Idempotent; a token of a key deleted or replaced stops verifying from the cache too. */
  private apply(ops: readonly BatchOp[]): void {
    for (const op of ops) {
      if (op.key[0] !== Prefix.apiKey) continue;
      const id = op.key.subarray(1).toString('utf8');
      const shared = id.startsWith(SHARED_ADMIN_PREFIX);
      if ((shared ? this.adminDigests : this.entries).has(id)) this.verified.clear();
      if (op.type === 'del') {
        (shared ? this.adminDigests : this.entries).delete(id);
        continue;
      }
      const s = JSON.parse((op.value as Buffer).toString('utf8')) as Stored;
      const digest = Buffer.from(s.digest, 'hex');
      if (shared) this.adminDigests.set(id, digest);
      else {
        const info: ApiKeyInfo = { id, name: s.name, policy: s.policy, createdAt: s.createdAt };
        this.entries.set(id, { info, digest, principal: { keyId: id, policy: compilePolicy(info.policy) } });
      }
    }
  }
}

function putOp(stored: Stored): BatchOp {
  return { type: 'put', key: keyOf(stored.id), value: Buffer.from(JSON.stringify(stored), 'utf8') };
}

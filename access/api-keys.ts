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
 * @module
 */
import { randomBytes } from 'node:crypto';
import { TributaryError } from '../core/errors.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { ADMIN_POLICY, compilePolicy, validatePolicy, type CompiledPolicy, type Policy } from './policy.js';
import { newSecret, secretDigest, secretMatches } from './secrets.js';

export const API_KEY_PREFIX = 'tak_';
/** Id of the bootstrap admin key (`<dataDir>/admin.key`); never stored in table `A`. */
export const ADMIN_KEY_ID = 'admin';
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

export class ApiKeyStore {
  private readonly entries = new Map<string, Entry>();
  /** Tokens that verified → their principal. Only ever holds genuine tokens; cleared whenever a key is deleted. */
  private readonly verified = new Map<string, Principal>();

  /** @param database where keys persist; without one (tests, embedding), they live in memory only. */
  private constructor(private readonly database: Database | undefined) {}

  /** Loads every stored key; `adminDigest` (from `admin.key`) adds the bootstrap admin key. */
  static async open(opts: { database?: Database; adminDigest?: Buffer }): Promise<ApiKeyStore> {
    const keys = new ApiKeyStore(opts.database);
    if (opts.database !== undefined) {
      const lt = Buffer.of(Prefix.apiKey + 1);
      const stored = await opts.database.read((db) => db.values({ gt: Buffer.of(Prefix.apiKey), lt }).all());
      for (const v of stored) {
        const s = JSON.parse(v.toString('utf8')) as Stored;
        keys.remember({ id: s.id, name: s.name, policy: s.policy, createdAt: s.createdAt }, Buffer.from(s.digest, 'hex'));
      }
    }
    if (opts.adminDigest !== undefined) {
      keys.remember({ id: ADMIN_KEY_ID, name: 'admin (admin.key)', policy: ADMIN_POLICY, createdAt: 0 }, opts.adminDigest);
    }
    return keys;
  }

  private remember(info: ApiKeyInfo, digest: Buffer): void {
    this.entries.set(info.id, { info, digest, principal: { keyId: info.id, policy: compilePolicy(info.policy) } });
  }

  /** The principal a bearer token stands for, or undefined when it does not verify. */
  verify(token: string): Principal | undefined {
    const cached = this.verified.get(token);
    if (cached !== undefined) return cached;
    const id = tokenKeyId(token);
    const entry = id === undefined ? undefined : this.entries.get(id);
    if (entry === undefined || !secretMatches(token, entry.digest)) return undefined;
    if (this.verified.size >= MAX_VERIFIED) this.verified.clear();
    this.verified.set(token, entry.principal);
    return entry.principal;
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
    const digest = secretDigest(token);
    const stored: Stored = { ...info, digest: digest.toString('hex') };
    await this.database?.commit([{ type: 'put', key: keyOf(id), value: Buffer.from(JSON.stringify(stored), 'utf8') }]);
    this.remember(info, digest);
    return { key: info, token };
  }

  /** Keys in id order (the admin key excluded), `limit` after `afterId`. */
  list(opts: { limit: number; afterId?: string }): { items: ApiKeyInfo[]; nextId: string | undefined } {
    const ids = [...this.entries.keys()].filter((id) => id !== ADMIN_KEY_ID && (opts.afterId === undefined || id > opts.afterId)).sort();
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
    await this.database?.commit([{ type: 'del', key: keyOf(id) }]);
    this.entries.delete(id);
    this.verified.clear();
  }
}

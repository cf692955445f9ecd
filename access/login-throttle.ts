/**
 * Throttling of failed logins, per client id and per remote address, in bounded memory.
 *
 * Each key (a client id, an address) may fail a few times for free; every failure after
 * that blocks the key for a backoff that doubles up to a ceiling. While a key is blocked,
 * logins under it are refused without looking at the secret, so a guesser learns nothing
 * and costs nothing. A key that stays quiet for `forgetAfterMs` is forgotten, and a
 * successful login clears its client id (not its address: one good device behind a NAT
 * must not whitewash a guesser next to it).
 *
 * The trade-off, as with any lockout: someone who knows a device id can keep that device
 * out by failing logins under its id. The backoff ceiling (default 60 s) bounds how long
 * each failure locks it out. Memory is bounded by `maxKeys` per dimension; when full, the
 * least recently failed key is dropped (Map iteration order is insertion order, and a key
 * is re-inserted on every failure). Addresses are keyed by {@link addressKey}.
 */
import { isIP } from 'node:net';

export interface LoginThrottleOptions {
  /** Failures per client id before backoff starts. Default 5. */
  freeFailuresPerClient?: number;
  /** Failures per remote address before backoff starts (higher: many devices may share a NAT). Default 20. */
  freeFailuresPerAddress?: number;
  /** First backoff. Default 1 s. */
  baseBackoffMs?: number;
  /** Backoff ceiling. Default 60 s. */
  maxBackoffMs?: number;
  /** A key with no failure for this long is forgotten. Default 15 min. */
  forgetAfterMs?: number;
  /** Keys kept per dimension. Default 10,000. */
  maxKeys?: number;
  /** Clock, for tests. Default `Date.now`. */
  now?: () => number;
}

interface Entry {
  failures: number;
  lastFailureAt: number;
  blockedUntil: number;
}

/** Which key blocks a login, and until when (epoch ms). */
export interface ThrottleVerdict {
  by: 'clientId' | 'address';
  until: number;
}

export class LoginThrottle {
  private readonly clients: Map<string, Entry> = new Map();
  private readonly addresses: Map<string, Entry> = new Map();
  private readonly freeClient: number;
  private readonly freeAddress: number;
  private readonly baseMs: number;
  private readonly maxMs: number;
  private readonly forgetMs: number;
  private readonly maxKeys: number;
  private readonly now: () => number;

  constructor(opts: LoginThrottleOptions = {}) {
    this.freeClient = atLeast(opts.freeFailuresPerClient ?? 5, 0, 'freeFailuresPerClient');
    this.freeAddress = atLeast(opts.freeFailuresPerAddress ?? 20, 0, 'freeFailuresPerAddress');
    this.baseMs = atLeast(opts.baseBackoffMs ?? 1000, 1, 'baseBackoffMs');
    this.maxMs = atLeast(opts.maxBackoffMs ?? 60_000, this.baseMs, 'maxBackoffMs');
    this.forgetMs = atLeast(opts.forgetAfterMs ?? 15 * 60_000, this.maxMs, 'forgetAfterMs');
    this.maxKeys = atLeast(opts.maxKeys ?? 10_000, 1, 'maxKeys');
    this.now = opts.now ?? Date.now;
  }

  /** Undefined when a login for `clientId` from `address` may be tried now. */
  check(clientId: string, address: string): ThrottleVerdict | undefined {
    const now = this.now();
    const byClient = this.blockedUntil(this.clients, clientId, now);
    if (byClient !== undefined) return { by: 'clientId', until: byClient };
    const byAddress = this.blockedUntil(this.addresses, address, now);
    if (byAddress !== undefined) return { by: 'address', until: byAddress };
    return undefined;
  }

  /** Counts a failed login against both keys. */
  failure(clientId: string, address: string): void {
    const now = this.now();
    this.count(this.clients, clientId, this.freeClient, now);
    this.count(this.addresses, address, this.freeAddress, now);
  }

  /** A successful login: the client id starts afresh. */
  success(clientId: string): void {
    this.clients.delete(clientId);
  }

  /** Keys currently tracked (for tests of the memory bound). */
  get size(): { clients: number; addresses: number } {
    return { clients: this.clients.size, addresses: this.addresses.size };
  }

  private blockedUntil(map: Map<string, Entry>, key: string, now: number): number | undefined {
    const entry = map.get(key);
    if (entry === undefined) return undefined;
    if (now - entry.lastFailureAt >= this.forgetMs) {
      map.delete(key);
      return undefined;
    }
    return entry.blockedUntil > now ? entry.blockedUntil : undefined;
  }

  private count(map: Map<string, Entry>, key: string, free: number, now: number): void {
    let entry = map.get(key);
    if (entry !== undefined && now - entry.lastFailureAt >= this.forgetMs) entry = undefined;
    entry ??= { failures: 0, lastFailureAt: now, blockedUntil: 0 };
    entry.failures++;
    entry.lastFailureAt = now;
    const over = entry.failures - free;
    if (over > 0) entry.blockedUntil = now + Math.min(this.maxMs, this.baseMs * 2 ** Math.min(over - 1, 30));
    // Re-insert so the map's order is least recently failed first.
    map.delete(key);
    map.set(key, entry);
    while (map.size > this.maxKeys) {
      const oldest = map.keys().next().value as string;
      map.delete(oldest);
    }
  }
}

function atLeast(value: number, min: number, name: string): number {
  if (!Number.isFinite(value) || value < min) throw new RangeError(`${name} must be a number >= ${min} (got ${String(value)})`);
  return value;
}

/**
 * The throttling key of a remote address: an IPv4 address as is (also IPv4-mapped IPv6),
 * an IPv6 address by its /64 — one subscriber usually holds a whole /64, and keying by
 * the full address would give a guesser 2^64 fresh allowances.
 */
export function addressKey(address: string): string {
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  if (mapped) return mapped[1] as string;
  const bare = address.split('%')[0] as string; // no zone id
  if (isIP(bare) !== 6) return address;
  const [head = '', tail] = bare.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  // A dotted IPv4 tail stands for two groups.
  const width = (groups: string[]): number => groups.reduce((n, g) => n + (g.includes('.') ? 2 : 1), 0);
  const groups = [...left, ...Array<string>(Math.max(0, 8 - width(left) - width(right))).fill('0'), ...right];
  return `${groups
    .slice(0, 4)
    .map((g) => parseInt(g, 16).toString(16))
    .join(':')}::/64`;
}

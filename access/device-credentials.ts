/**
 * Device credentials: one server-generated secret per device, stored only as its
 * SHA-256 digest in table `S` (store/keyspace.ts), key `S · deviceId`, value JSON
 * `{ "sha256": <base64 digest>, "createdAt": <epoch ms> }`.
 *
 * Every digest is loaded into memory at open and the map follows every `S` op the
 * metadata writer applies — this node's writes and, in cluster mode, every other node's —
 * so verifying a login is a hash and a constant-time compare with no disk read: a reconnect
 * storm of thousands of devices stays cheap, and unknown ids cost the same as known ones.
 * Memory is about 150 bytes per provisioned device.
 *
 * @module
 */
import { assertDeviceId } from '../core/ids.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { loadThenFollow, LocalMetadata, type MetadataWriter } from '../store/metadata.js';
import type { BatchOp } from '../streams/types.js';
import { newSecret, secretDigest, secretMatches } from './secrets.js';

/** Prefix of device secrets, so a leaked one is recognisable (e.g. by secret scanners). */
export const DEVICE_SECRET_PREFIX = 'tdk_';

/** A freshly issued secret: shown once, never stored in the clear. */
export interface IssuedCredential {
  deviceId: string;
  secret: string;
  /** When this secret was issued, epoch ms. */
  createdAt: number;
  /** True when it replaced an earlier secret of the device (which no longer verifies). */
  rotated: boolean;
}

interface StoredCredential {
  digest: Buffer;
  createdAt: number;
}

/** Compared against when the device is unknown, so unknown and wrong cost the same. */
const NO_DIGEST = secretDigest('no credential');

export class DeviceCredentials {
  /** Issues and revokes run one at a time, so memory and disk change in the same order. */
  private tail: Promise<unknown> = Promise.resolve();
  private readonly byDevice = new Map<string, StoredCredential>();
  private readonly invalidated = new Set<(deviceId: string) => void>();

  private constructor(
    private readonly database: Database,
    private readonly metadata: MetadataWriter,
    private readonly now: () => number,
  ) {}

  /**
   * Loads every stored digest and follows `metadata` (default: writes go to `database` alone).
   * @param database where table `S` is read.
   */
  static async open(database: Database, opts: { metadata?: MetadataWriter; now?: () => number } = {}): Promise<DeviceCredentials> {
    const creds = new DeviceCredentials(database, opts.metadata ?? new LocalMetadata(database), opts.now ?? Date.now);
    await loadThenFollow(
      creds.metadata,
      () =>
        database.read(async (db) => {
          for await (const [key, value] of db.iterator({ gte: Buffer.of(Prefix.credential), lt: Buffer.of(Prefix.credential + 1) })) {
            creds.byDevice.set(key.subarray(1).toString('utf8'), decode(value));
          }
        }),
      (ops) => creds.apply(ops),
    );
    return creds;
  }

  /**
   * Calls `listener` when a secret a device may be logged in with stops verifying here:
   * rotated or revoked, by any node (this one included), once per change — so that the
   * device's live connection on this node can be closed. Must not throw. Returns an unsubscribe.
   */
  onInvalidated(listener: (deviceId: string) => void): () => void {
    this.invalidated.add(listener);
    return () => this.invalidated.delete(listener);
  }

  /**
   * Issues a new secret for the device, replacing any earlier one (which stops
   * verifying at once). Durable before it resolves.
   * @throws TributaryError `InvalidParameter` for a malformed id; `StoreUnavailable` when the write fails.
   */
  async issue(deviceId: string): Promise<IssuedCredential> {
    assertDeviceId(deviceId);
    return this.serialized(async () => {
      const secret = newSecret(DEVICE_SECRET_PREFIX);
      const stored: StoredCredential = { digest: secretDigest(secret), createdAt: this.now() };
      const rotated = this.byDevice.has(deviceId);
      // Applying it (see apply) puts it in the map.
      await this.metadata.commit([{ type: 'put', key: keyOf(deviceId), value: encode(stored) }]);
      return { deviceId, secret, createdAt: stored.createdAt, rotated };
    });
  }

  /**
   * True when `secret` is the device's current secret. Constant time in the comparison,
   * and an unknown device goes through the same hash and compare as a known one.
   */
  verify(deviceId: string, secret: string | Buffer): boolean {
    const stored = this.byDevice.get(deviceId);
    const matches = secretMatches(secret, stored?.digest ?? NO_DIGEST);
    return stored !== undefined && matches;
  }

  /** Whether the device has a secret. */
  has(deviceId: string): boolean {
    return this.byDevice.has(deviceId);
  }

  /** When the device's current secret was issued (epoch ms), if it has one. */
  issuedAt(deviceId: string): number | undefined {
    return this.byDevice.get(deviceId)?.createdAt;
  }

  /**
   * Deletes the device's secret; it stops verifying at once (before the write is
   * durable, so no login slips in meanwhile). Resolves whether there was one.
   */
  revoke(deviceId: string): Promise<boolean> {
    return this.serialized(async () => {
      if (!this.byDevice.has(deviceId)) return false;
      this.forget(deviceId);
      try {
        await this.metadata.commit([{ type: 'del', key: keyOf(deviceId) }]);
      } catch (err) {
        // Perhaps not revoked: memory follows what is on disk (if even that read fails, it stays revoked here: the safe side).
        await this.reload(deviceId).catch(() => undefined);
        throw err;
      }
      return true;
    });
  }

  /** Follows applied `S` ops; one already in the map (this node's own revoke, an op applied twice) changes nothing. */
  private apply(ops: readonly BatchOp[]): void {
    for (const op of ops) {
      if (op.key[0] !== Prefix.credential) continue;
      const deviceId = op.key.subarray(1).toString('utf8');
      if (op.type === 'del') {
        if (this.byDevice.has(deviceId)) this.forget(deviceId);
        continue;
      }
      const next = decode(op.value as Buffer);
      const current = this.byDevice.get(deviceId);
      if (current !== undefined && current.createdAt === next.createdAt && current.digest.equals(next.digest)) continue;
      this.byDevice.set(deviceId, next);
      if (current !== undefined) this.emitInvalidated(deviceId);
    }
  }

  private forget(deviceId: string): void {
    this.byDevice.delete(deviceId);
    this.emitInvalidated(deviceId);
  }

  private async reload(deviceId: string): Promise<void> {
    const value = await this.database.read((db) => db.get(keyOf(deviceId)));
    if (value === undefined) this.byDevice.delete(deviceId);
    else this.byDevice.set(deviceId, decode(value));
  }

  private emitInvalidated(deviceId: string): void {
    for (const listener of this.invalidated) listener(deviceId);
  }

  private serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn);
    this.tail = run.catch(() => undefined);
    return run;
  }
}

function keyOf(deviceId: string): Buffer {
  return Buffer.concat([Buffer.of(Prefix.credential), Buffer.from(deviceId, 'utf8')]);
}

function encode(c: StoredCredential): Buffer {
  return Buffer.from(JSON.stringify({ sha256: c.digest.toString('base64'), createdAt: c.createdAt }), 'utf8');
}

function decode(value: Buffer): StoredCredential {
  const parsed = JSON.parse(value.toString('utf8')) as { sha256: string; createdAt: number };
  return { digest: Buffer.from(parsed.sha256, 'base64'), createdAt: parsed.createdAt };
}

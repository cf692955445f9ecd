/**
 * Device credentials: one server-generated secret per device, stored only as its
 * SHA-256 digest in table `S` (store/keyspace.ts), key `S · deviceId`, value JSON
 * `{ "sha256": <base64 digest>, "createdAt": <epoch ms> }`.
 *
 * Every digest is loaded into memory at open and the map is kept in step with each
 * write (only this class writes table `S`, and only one process opens the database), so
 * verifying a login is a hash and a constant-time compare with no disk read: a reconnect
 * storm of thousands of devices stays cheap, and unknown ids cost the same as known ones.
 * Memory is about 150 bytes per provisioned device.
 *
 * @module
 */
import { assertDeviceId } from '../core/ids.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
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

  private constructor(
    private readonly database: Database,
    private readonly byDevice: Map<string, StoredCredential>,
    private readonly now: () => number,
  ) {}

  /** Loads every stored digest. */
  static async open(database: Database, opts: { now?: () => number } = {}): Promise<DeviceCredentials> {
    const byDevice = await database.read(async (db) => {
      const out = new Map<string, StoredCredential>();
      for await (const [key, value] of db.iterator({ gte: Buffer.of(Prefix.credential), lt: Buffer.of(Prefix.credential + 1) })) {
        out.set(key.subarray(1).toString('utf8'), decode(value));
      }
      return out;
    });
    return new DeviceCredentials(database, byDevice, opts.now ?? Date.now);
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
      await this.database.commit([{ type: 'put', key: keyOf(deviceId), value: encode(stored) }]);
      const rotated = this.byDevice.has(deviceId);
      this.byDevice.set(deviceId, stored);
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
      const stored = this.byDevice.get(deviceId);
      if (stored === undefined) return false;
      this.byDevice.delete(deviceId);
      try {
        await this.database.commit([{ type: 'del', key: keyOf(deviceId) }]);
      } catch (err) {
        // Not revoked on disk: keep memory truthful.
        this.byDevice.set(deviceId, stored);
        throw err;
      }
      return true;
    });
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

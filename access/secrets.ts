/**
 * Server-generated secrets (device secrets, API keys): random tokens of 192 bits,
 * stored only as their SHA-256 digest and compared in constant time. A slow password
 * hash would be wrong here: the tokens are not guessable, and reconnect storms and
 * per-request checks must stay cheap.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/** A fresh token, e.g. `tdk_…` for device secrets, `tak_…` for API keys. */
export function newSecret(prefix: string): string {
  return `${prefix}${randomBytes(24).toString('base64url')}`;
}

/** The stored form of a secret. */
export function secretDigest(secret: string | Buffer): Buffer {
  return createHash('sha256').update(secret).digest();
}

/** True when `secret` hashes to `digest`; constant time in the digest comparison. */
export function secretMatches(secret: string | Buffer, digest: Buffer): boolean {
  const candidate = secretDigest(secret);
  return candidate.length === digest.length && timingSafeEqual(candidate, digest);
}

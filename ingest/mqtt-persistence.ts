/**
 * The broker's own state — retained messages, persistent sessions' subscriptions,
 * QoS 1/2 messages queued for offline subscribers, wills — kept in the same LevelDB as
 * the telemetry, under the sublevel `!mqtt!` (store/keyspace.ts). LevelDB can be opened
 * by one process only, so the broker shares the handle instead of opening a second
 * database.
 *
 * The implementation is aedes-persistence-level 9's async class, the one aedes 1.2
 * calls (it uses the promise API only). It passes aedes-persistence 11's abstract suite
 * when run on a sublevel (test/ingest.persistence.test.ts).
 *
 * @module
 */
import { createRequire } from 'node:module';
import type { Sublevel } from '../store/database.js';
import { withOverrides } from '../core/overrides.js';

/**
 * The part of aedes-persistence's async interface Tributary touches: what aedes checks
 * at start, and `addSubscriptions`, which {@link onlyGrantedSubscriptions} filters.
 * aedes calls the rest freely.
 */
export interface AedesAsyncPersistence {
  setup(broker: unknown): Promise<void>;
  addSubscriptions(client: { id: string }, subs: Array<{ topic: string }>): Promise<void>;
  destroy(): Promise<void>;
}

// Both packages are CommonJS; their async classes are plain module files (no "exports"
// map), and aedes-persistence-level has no type declarations.
const require = createRequire(import.meta.url);
const AsyncLevelPersistence = require('aedes-persistence-level/asyncPersistence.js') as new (db: Sublevel) => AedesAsyncPersistence;
const AsyncMemoryPersistence = require('aedes-persistence/asyncPersistence.js') as new () => AedesAsyncPersistence;

/** Name of the sublevel that holds the broker's state (keys under `!mqtt!`). */
export const MQTT_SUBLEVEL = 'mqtt';

/**
 * An aedes persistence on `db` (a sublevel such as `database.sublevel(MQTT_SUBLEVEL)`).
 * Its writes are not synced: they survive a crash of the process (LevelDB's log is in
 * the OS page cache), not a power cut; `destroy()` closes only the sublevel.
 */
export function levelPersistence(db: Sublevel): AedesAsyncPersistence {
  return new AsyncLevelPersistence(db);
}

/** aedes' default: everything in memory, gone at restart (tests and embedding). */
export function memoryPersistence(): AedesAsyncPersistence {
  return new AsyncMemoryPersistence();
}

/**
 * Makes `persistence` store only the subscriptions `isGranted` confirms.
 *
 * aedes 1.2 (lib/handlers/subscribe.js, storeSubscriptions) persists a persistent
 * session's subscriptions by storing *all* filters of the SUBSCRIBE packet each time one
 * of them is granted, refused ones included. A refused filter then lives in the
 * session: messages for it are queued while the client is offline and delivered when
 * it reconnects (checked: a filter refused by the subscription limit received them).
 * aedes stores each filter only after its own authorization, so filtering by the
 * grants made so far stores every granted filter and no refused one.
 */
export function onlyGrantedSubscriptions<C extends { id: string }>(
  persistence: AedesAsyncPersistence,
  isGranted: (client: C, topic: string) => boolean,
): AedesAsyncPersistence {
  const addSubscriptions = (client: C, subs: Array<{ topic: string }>): Promise<void> =>
    persistence.addSubscriptions(
      client,
      subs.filter((sub) => isGranted(client, sub.topic)),
    );
  return withOverrides(persistence, { addSubscriptions } as Partial<AedesAsyncPersistence>);
}

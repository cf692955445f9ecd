import { Database } from '../store/database.js';
import { EmbeddedChangeLog } from '../streams/embedded-log.js';
import type { ChangeLog } from '../streams/types.js';
import { tempDir } from './helpers.js';
import { runChangeLogSuite, type ChangeLogFixture } from './suites/change-log.suite.js';

runChangeLogSuite({
  name: 'embedded (LevelDB)',
  supports: { durable: true },
  factory: async ({ shards }) => {
    const dir = tempDir('tributary-changelog-');
    let database = await Database.open(dir.path);
    const fixture: ChangeLogFixture = {
      log: await EmbeddedChangeLog.open(database, { shards }),
      commitOps: (ops) => database.commit(ops),
      reopen: async (opts = {}): Promise<ChangeLog> => {
        await database.close();
        database = await Database.open(dir.path);
        // On a refused reopen the database stays open, so close() still has one handle to close.
        fixture.log = await EmbeddedChangeLog.open(database, { shards: opts.shards ?? shards });
        return fixture.log;
      },
      close: async () => {
        await database.close();
        dir.cleanup();
      },
    };
    return fixture;
  },
});

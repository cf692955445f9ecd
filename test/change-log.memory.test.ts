import { MemoryChangeLog } from '../streams/memory-log.js';
import { runChangeLogSuite } from './suites/change-log.suite.js';

runChangeLogSuite({
  name: 'memory',
  supports: { durable: false },
  factory: async ({ shards }) => ({
    log: new MemoryChangeLog({ shards }),
    // Records live in the log itself and join it on commit: there is no batch to write.
    commitOps: async () => {},
    close: async () => {},
  }),
});

import { MemoryTelemetryStore } from '../store/index.js';
import { MemoryChangeLog } from '../streams/memory-log.js';
import type { ChangeRecord } from '../streams/types.js';
import { runTelemetryStoreSuite } from './suites/telemetry-store.suite.js';

runTelemetryStoreSuite({
  name: 'memory',
  factory: async (opts = {}) => {
    const changeLog = new MemoryChangeLog({ shards: 2 });
    const store = new MemoryTelemetryStore({ changeLog, ...opts });
    return {
      store,
      changes: async () => {
        const out: ChangeRecord[] = [];
        for (let shard = 0; shard < changeLog.shardCount; shard++) out.push(...(await changeLog.read(shard, 0, Number.MAX_SAFE_INTEGER)));
        return out;
      },
      close: () => store.close(),
    };
  },
});

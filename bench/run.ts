/**
 * `npm run bench [suite...]`: runs the benchmarks and prints one table per suite, each
 * with its baseline measured in the same run. Suites: store, blocks, journal, ingest, streams, api, console, cluster
 * (cluster needs KAFKA_BROKERS, e.g. from test/kafka/start-kafka.sh; without it the default run leaves it out).
 */
import { benchApi } from './api.js';
import { benchBlocks } from './blocks.js';
import { benchCluster } from './cluster.js';
import { benchConsole } from './console.js';
import { benchIngest } from './ingest.js';
import { benchJournal } from './journal.js';
import { benchStore } from './store.js';
import { benchStreams } from './streams.js';

const SUITES: Record<string, () => Promise<void>> = { store: benchStore, blocks: benchBlocks, journal: benchJournal, ingest: benchIngest, streams: benchStreams, api: benchApi, console: benchConsole, cluster: benchCluster };

const wanted = process.argv.slice(2);
for (const name of wanted) {
  if (!(name in SUITES)) {
    process.stderr.write(`unknown suite ${JSON.stringify(name)}; suites: ${Object.keys(SUITES).join(', ')}\n`);
    process.exit(2);
  }
}
process.stdout.write(`# tributary benchmarks — node ${process.version}, ${new Date().toISOString()}\n`);
const defaults = Object.keys(SUITES).filter((name) => name !== 'cluster' || process.env.KAFKA_BROKERS);
for (const name of wanted.length ? wanted : defaults) {
  await (SUITES[name] as () => Promise<void>)();
}

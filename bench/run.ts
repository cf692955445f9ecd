/**
 * `npm run bench [suite...]`: runs the benchmarks and prints one table per suite, each
 * with its baseline measured in the same run. Suites: store, ingest, streams.
 */
import { benchIngest } from './ingest.js';
import { benchStore } from './store.js';
import { benchStreams } from './streams.js';

const SUITES: Record<string, () => Promise<void>> = { store: benchStore, ingest: benchIngest, streams: benchStreams };

const wanted = process.argv.slice(2);
for (const name of wanted) {
  if (!(name in SUITES)) {
    process.stderr.write(`unknown suite ${JSON.stringify(name)}; suites: ${Object.keys(SUITES).join(', ')}\n`);
    process.exit(2);
  }
}
process.stdout.write(`# tributary benchmarks — node ${process.version}, ${new Date().toISOString()}\n`);
for (const name of wanted.length ? wanted : Object.keys(SUITES)) {
  await (SUITES[name] as () => Promise<void>)();
}

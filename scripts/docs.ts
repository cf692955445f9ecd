/** Rewrites the generated tables of docs/configuration.md and docs/errors.md. */
import { readFileSync, writeFileSync } from 'node:fs';
import { renderErrorsTable, renderSettingsTable, replaceGenerated } from '../core/reference-docs.js';

const root = new URL(`file://${process.cwd()}/`);
for (const [file, table] of [
  ['docs/configuration.md', renderSettingsTable()],
  ['docs/errors.md', renderErrorsTable()],
] as const) {
  const url = new URL(file, root);
  writeFileSync(url, replaceGenerated(readFileSync(url, 'utf8'), table));
  process.stdout.write(`updated ${file}\n`);
}

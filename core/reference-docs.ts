/**
 * Renders the reference tables of docs/configuration.md and docs/errors.md from the
 * settings table and the error catalog, so the docs cannot drift: a test compares
 * them, and `npm run docs` rewrites them.
 */
import { SETTINGS } from './config.js';
import { ERROR_CATALOG } from './errors.js';

export function renderSettingsTable(): string {
  const rows = Object.entries(SETTINGS).map(([key, def]) => {
    const dflt = def.kind.type === 'duration' ? `${def.default} ms` : JSON.stringify(def.default);
    return `| \`${key}\` | \`${def.flag}\` | \`${def.env}\` | \`${dflt}\` | ${def.description} |`;
  });
  return ['| setting (config file key) | flag | environment | default | meaning |', '|---|---|---|---|---|', ...rows].join('\n');
}

export function renderErrorsTable(): string {
  const rows = Object.entries(ERROR_CATALOG).map(([code, e]) => `| \`${code}\` | ${e.status} | ${e.retriable ? 'yes' : 'no'} | ${e.description} |`);
  return ['| code | HTTP status | retriable | meaning |', '|---|---|---|---|', ...rows].join('\n');
}

export const GENERATED_BEGIN = '<!-- generated: begin -->';
export const GENERATED_END = '<!-- generated: end -->';

/** Replaces the generated block of a markdown document. */
export function replaceGenerated(doc: string, table: string): string {
  const start = doc.indexOf(GENERATED_BEGIN);
  const end = doc.indexOf(GENERATED_END);
  if (start < 0 || end < start) throw new Error('document has no generated block');
  return `${doc.slice(0, start + GENERATED_BEGIN.length)}\n${table}\n${doc.slice(end)}`;
}

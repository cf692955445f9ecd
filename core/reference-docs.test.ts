import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { renderErrorsTable, renderSettingsTable } from './reference-docs.js';

const read = (file: string) => readFileSync(new URL(`../${file}`, import.meta.url), 'utf8');

describe('reference docs', () => {
  it('docs/configuration.md lists every setting as the config schema defines it (run `npm run docs`)', () => {
    expect(read('docs/configuration.md')).toContain(renderSettingsTable());
  });

  it('docs/errors.md lists every code of the error catalog (run `npm run docs`)', () => {
    expect(read('docs/errors.md')).toContain(renderErrorsTable());
  });
});

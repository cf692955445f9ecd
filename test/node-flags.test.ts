import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { NODE_FLAGS } from '../core/node-flags.js';
import { ROOT } from './process.js';

const read = (path: string): string => readFileSync(`${ROOT}${path}`, 'utf8');

// Every way of starting a server passes core/node-flags.ts' flags, so that what runs is what was measured.
describe('the V8 flags a server starts with', () => {
  it('npm start passes them', () => {
    const start = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts.start;
    expect(start).toBe(`node ${NODE_FLAGS.join(' ')} dist/bin/tributary.js start`);
  });

  it("the Dockerfile's entrypoint passes them", () => {
    const entrypoint = /^ENTRYPOINT (.+)$/m.exec(read('Dockerfile'))?.[1];
    expect(JSON.parse(entrypoint ?? 'null')).toEqual(['node', ...NODE_FLAGS, 'dist/bin/tributary.js']);
  });

  it("the tributary command's shebang passes them", () => {
    expect(read('bin/tributary.ts').split('\n')[0]).toBe(`#!/usr/bin/env -S node ${NODE_FLAGS.join(' ')}`);
  });
});

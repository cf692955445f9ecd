import { readdirSync, statSync } from 'node:fs';
import { basename, extname, join, resolve } from 'node:path';
import { ConfigError } from '../core/config.js';
import type { FunctionSpec } from './types.js';

const HANDLER_EXTENSIONS = new Set(['.js', '.mjs', '.cjs']);
const NAME_RE = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * Reads a `--functions-dir`: every `*.js`, `*.mjs` or `*.cjs` file directly inside it
 * is a function named after the file (`log-high-temp.js` → `log-high-temp`). A directory
 * that cannot be read, or a file name that is no function name, is a configuration error (exit 2).
 */
export function functionsFromDirectory(dir: string, defaults: { timeoutMs: number; memoryMb: number }): FunctionSpec[] {
  const root = resolve(dir);
  let entries: string[];
  try {
    entries = readdirSync(root);
  } catch (err) {
    throw new ConfigError(`invalid functionsDir: cannot read the functions directory ${root}: ${(err as Error).message}`);
  }
  const specs: FunctionSpec[] = [];
  for (const entry of entries.sort()) {
    const ext = extname(entry);
    const path = join(root, entry);
    if (!HANDLER_EXTENSIONS.has(ext) || !statSync(path).isFile()) continue;
    const name = basename(entry, ext);
    if (!NAME_RE.test(name)) throw new ConfigError(`invalid functionsDir: function file ${path}: the name ${JSON.stringify(name)} must be 1-64 characters of A-Z a-z 0-9 _ -`);
    specs.push({ name, version: 1, codePath: path, timeoutMs: defaults.timeoutMs, memoryMb: defaults.memoryMb, environment: {} });
  }
  return specs;
}

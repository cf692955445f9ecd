// @ts-check
/**
 * Deploy-time export check, run by `deploy-check.ts` in a sandboxed child process (the
 * function's own restrictions). Reads the handler module (argv[2], ESM or CommonJS by
 * argv[3]) with the module lexers Node itself relies on, never evaluating it, and prints
 * one JSON line: `{ "handler": "yes" | "maybe" | "no" }`.
 *
 * - ESM exports are static: `handler` among them is a yes; `export *` (from another file)
 *   or a default export that mentions `handler` (host.js also accepts `default.handler`) is
 *   a maybe.
 * - CommonJS exports are dynamic: `handler` among what cjs-module-lexer detects (what Node's
 *   ESM loader exposes as named exports) is a yes; a re-export, or `handler` anywhere in the
 *   source (`module.exports = { other: 1, handler }` forms the lexer gives up on), a maybe.
 * A maybe is left to the first invocation, which fails with `Runtime.HandlerNotFound` if
 * it was wrong; only a no refuses the deploy.
 */
import { readFileSync } from 'node:fs';
import { initSync as initCjs, parse as parseCjs } from 'cjs-module-lexer';
import { init as esmReady, parse as parseEsm } from 'es-module-lexer';

const [path, moduleType] = process.argv.slice(2);
const source = readFileSync(/** @type {string} */ (path), 'utf8');
const mentionsHandler = /\bhandler\b/.test(source);

/** @returns {'yes' | 'maybe' | 'no'} */
function verdict() {
  if (moduleType === 'commonjs') {
    initCjs();
    const { exports, reexports } = parseCjs(source);
    if (exports.includes('handler')) return 'yes';
    return reexports.length > 0 || mentionsHandler ? 'maybe' : 'no';
  }
  const [imports, exports] = parseEsm(source);
  const names = exports.map((e) => e.n);
  if (names.includes('handler')) return 'yes';
  // `export * from` is listed as an import (its statement starts with `export`).
  const starExport = imports.some((i) => /^export\s*\*/.test(source.slice(i.ss, i.se)));
  return starExport || (names.includes('default') && mentionsHandler) ? 'maybe' : 'no';
}

await esmReady;
process.stdout.write(`${JSON.stringify({ handler: verdict() })}\n`);

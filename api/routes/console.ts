/**
 * The web console's files (`/console`): the compiled `console/` folder (`dist/console`)
 * and uPlot from its npm package, read once at start, served from memory (gzipped when
 * the client accepts it) under a strict Content-Security-Policy. No CDN, nothing fetched
 * at run time; the console itself only calls the public `/v1` routes with the user's key
 * (ADR 0006).
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, extname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { FastifyPluginAsync } from 'fastify';

/** Where the console is served. */
export const CONSOLE_PREFIX = '/console';

/**
 * No inline script or style, nothing from elsewhere: device-supplied strings that slipped
 * into markup could run nothing. `connect-src 'self'` covers the API and its live tails.
 */
export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

interface Asset {
  type: string;
  body: Buffer;
  gzip: Buffer;
  etag: string;
}

/**
 * The compiled console: `dist/console/`, beside this module when it runs compiled
 * (`dist/api/routes/`), under `dist/` when it runs from source (the tests' TypeScript).
 */
function consoleDir(): string {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
  const compiled = join(root, 'console');
  return existsSync(join(compiled, 'main.js')) ? compiled : join(root, 'dist', 'console');
}

function asset(path: string): Asset | undefined {
  const type = TYPES[extname(path)];
  if (type === undefined) return undefined;
  const body = readFileSync(path);
  return { type, body, gzip: gzipSync(body, { level: 9 }), etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` };
}

/** Every servable file of the console, keyed by its path under {@link CONSOLE_PREFIX}. */
export function loadConsoleAssets(dir = consoleDir()): Map<string, Asset> {
  const out = new Map<string, Asset>();
  const walk = (at: string): void => {
    for (const entry of readdirSync(at, { withFileTypes: true })) {
      const path = join(at, entry.name);
      if (entry.isDirectory()) walk(path);
      else {
        const a = asset(path);
        if (a !== undefined) out.set(`/${relative(dir, path).split('\\').join('/')}`, a);
      }
    }
  };
  walk(dir);
  const require = createRequire(import.meta.url);
  for (const [name, file] of [
    ['/vendor/uPlot.iife.min.js', 'uplot/dist/uPlot.iife.min.js'],
    ['/vendor/uPlot.min.css', 'uplot/dist/uPlot.min.css'],
  ] as const) {
    out.set(name, asset(require.resolve(file)) as Asset);
  }
  if (!out.has('/index.html')) throw new Error(`the console is not built (no index.html in ${dir}); run npm run build`);
  return out;
}

/** Options of {@link consoleRoutes}. */
export interface ConsoleRoutesOptions {
  /** The compiled console folder (default: `dist/console`). */
  dir?: string;
}

/** `GET /console` (the page), `GET /console/*` (its scripts, styles and uPlot). */
export const consoleRoutes: FastifyPluginAsync<ConsoleRoutesOptions> = async (app, opts) => {
  const assets = loadConsoleAssets(opts.dir);
  const serve = (path: string) => async (request: import('fastify').FastifyRequest, reply: import('fastify').FastifyReply) => {
    const a = assets.get(path);
    if (a === undefined) return reply.code(404).type('text/plain; charset=utf-8').send('not found');
    void reply
      .header('content-security-policy', CONSOLE_CSP)
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .header('cache-control', 'no-cache')
      .header('etag', a.etag)
      .header('vary', 'accept-encoding')
      .type(a.type);
    if (request.headers['if-none-match'] === a.etag) return reply.code(304).send();
    const gzip = /\bgzip\b/.test(request.headers['accept-encoding'] ?? '');
    if (gzip) void reply.header('content-encoding', 'gzip');
    return reply.send(gzip ? a.gzip : a.body);
  };
  const config = { access: 'public' as const };
  const schema = { hide: true };
  // The page's relative URLs resolve under /console/, so /console redirects there.
  app.get(CONSOLE_PREFIX, { config, schema }, async (_request, reply) => reply.redirect(`${CONSOLE_PREFIX}/`));
  app.get(`${CONSOLE_PREFIX}/`, { config, schema }, serve('/index.html'));
  app.get<{ Params: { '*': string } }>(`${CONSOLE_PREFIX}/*`, { config, schema }, async (request, reply) => serve(`/${request.params['*']}`)(request, reply));
};

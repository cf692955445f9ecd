/**
 * How the CLI talks to a running server: over HTTP, never by opening the database
 * (only one process may hold a LevelDB, and the server does). The base URL comes from
 * `--url`, `TRIBUTARY_URL` or the default; the API key from `--api-key`,
 * `TRIBUTARY_API_KEY` or `<data-dir>/admin.key` (written by the first secured start; the
 * default `./data` only for a server on loopback).
 * API errors (`{error: {code, message, field}}`) become one clear line and an exit code.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { isLoopback } from '../access/mode.js';
import { SETTINGS } from '../core/config.js';
import { CliError, EXIT, usageError, type ExitCode } from './exit.js';
import { note } from './output.js';

export const DEFAULT_URL = 'http://127.0.0.1:3000';
/** The API's largest page (`?limit=`). */
const MAX_PAGE = 10_000;

/** The flags every command that talks to the server takes. */
export interface ClientFlags {
  url?: string;
  apiKey?: string;
  dataDir?: string;
  json?: boolean;
}

type Env = Record<string, string | undefined>;

/** Adds `--url`, `--api-key`, `--data-dir` and `--json` to a command that calls the API. */
export function withClientOptions(cmd: Command): Command {
  return cmd
    .option('--url <url>', `HTTP address of the server [env TRIBUTARY_URL, default ${DEFAULT_URL}]`)
    .option('--api-key <key>', 'API key for a secured server [env TRIBUTARY_API_KEY, default: <data-dir>/admin.key if readable]')
    .option('--data-dir <dir>', `where to find admin.key [env TRIBUTARY_DATA_DIR, default ${SETTINGS.dataDir.default}]`)
    .option('--json', 'print JSON for scripts instead of a table');
}

export type KeySource = 'flag' | 'env' | 'file' | 'none';

export function clientFrom(flags: ClientFlags, env: Env = process.env): ApiClient {
  const raw = flags.url ?? env.TRIBUTARY_URL ?? DEFAULT_URL;
  let base: URL;
  try {
    base = new URL(raw);
  } catch {
    throw usageError(`--url must be an http(s) URL such as ${DEFAULT_URL} (got ${JSON.stringify(raw)})`);
  }
  if (base.protocol !== 'http:' && base.protocol !== 'https:') throw usageError(`--url must be an http(s) URL (got ${JSON.stringify(raw)})`);
  if (flags.apiKey !== undefined) return new ApiClient(base, flags.apiKey, 'flag');
  if (env.TRIBUTARY_API_KEY) return new ApiClient(base, env.TRIBUTARY_API_KEY, 'env');
  const dataDir = flags.dataDir ?? env.TRIBUTARY_DATA_DIR;
  const keyFile = join(dataDir ?? SETTINGS.dataDir.default, 'admin.key');
  // ./data/admin.key belongs to the server on this machine: never send it to another host
  // unless the data directory was named on purpose.
  if (dataDir === undefined && !isLoopback(base.hostname.replace(/^\[(.*)\]$/, '$1'))) return new ApiClient(base, undefined, 'none', keyFile);
  const fromFile = readKeyFile(keyFile);
  return fromFile === undefined ? new ApiClient(base, undefined, 'none', keyFile) : new ApiClient(base, fromFile, 'file', keyFile);
}

function readKeyFile(path: string): string | undefined {
  try {
    const key = readFileSync(path, 'utf8').trim();
    return key === '' ? undefined : key;
  } catch (err) {
    // No file: an open-mode server needs no key. Any other failure (permissions) is worth saying.
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CliError(`cannot read the admin key ${path}: ${(err as Error).message}`, EXIT.usage);
  }
}

export interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  signal?: AbortSignal;
  accept?: string;
}

/** An API error body as the server sends it. */
interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

export class ApiClient {
  constructor(
    readonly baseUrl: URL,
    private readonly apiKey: string | undefined,
    /** Where the key came from: says what to fix after a 401. */
    readonly keySource: KeySource,
    private readonly keyFile?: string,
  ) {}

  /** One JSON request; resolves with the parsed body (undefined for 204). */
  async request<T>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const res = await this.send(method, path, opts);
    if (res.status === 204) return undefined as T;
    return (await res.json()) as T;
  }

  /**
   * Pages through a list route (`{items, nextCursor}`) until `max` items or the end;
   * says on stderr when it stopped before the end.
   */
  async listAll<T>(path: string, query: Record<string, string | number | undefined>, max: number, what: string): Promise<T[]> {
    const items: T[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.request<{ items: T[]; nextCursor: string | null }>('GET', path, { query: { ...query, limit: Math.min(max - items.length, MAX_PAGE), cursor } });
      items.push(...page.items);
      cursor = page.nextCursor ?? undefined;
    } while (cursor !== undefined && items.length < max);
    if (cursor !== undefined) note(`(showing the first ${items.length} ${what}; raise --limit for more)`);
    return items;
  }

  /** A request whose body the caller reads as a stream (the SSE tail). Non-2xx answers throw. */
  async send(method: string, path: string, opts: RequestOptions = {}): Promise<Response> {
    const url = new URL(`/v1${path}`, this.baseUrl);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const headers: Record<string, string> = { accept: opts.accept ?? 'application/json' };
    if (this.apiKey !== undefined) headers.authorization = `Bearer ${this.apiKey}`;
    const init: RequestInit = { method, headers };
    if (opts.body !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(opts.body);
    }
    if (opts.signal) init.signal = opts.signal;
    let res: Response;
    try {
      res = await fetch(url, init);
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err;
      const cause = (err as { cause?: { code?: string; message?: string } }).cause;
      const why = cause?.code ?? cause?.message ?? (err as Error).message;
      throw new CliError(`cannot reach the server at ${this.baseUrl.origin} (${why}); is \`tributary start\` running? Set --url or TRIBUTARY_URL otherwise`, EXIT.failure);
    }
    if (!res.ok) throw await this.errorFrom(res, method, url);
    return res;
  }

  private async errorFrom(res: Response, method: string, url: URL): Promise<CliError> {
    const text = await res.text().catch(() => '');
    let message = `${method} ${url.pathname} answered HTTP ${res.status}${text ? `: ${text.slice(0, 500)}` : ''}`;
    try {
      const body = JSON.parse(text) as ErrorBody;
      if (typeof body.error?.code === 'string') {
        message = `${body.error.code}: ${body.error.message}${body.error.field === undefined ? '' : ` (field ${body.error.field})`}`;
      }
    } catch {
      // Not an API error body (a proxy's page, say): the raw text above says more than nothing.
    }
    if (res.status === 401) message += this.keyHint();
    return new CliError(message, exitCodeFor(res.status));
  }

  private keyHint(): string {
    switch (this.keySource) {
      case 'none':
        return ` — pass --api-key or set TRIBUTARY_API_KEY (on the server's machine the CLI reads ${this.keyFile} by itself; --data-dir names another data directory)`;
      case 'file':
        return ` — the key in ${this.keyFile} was refused (is it the admin key of this server?)`;
      case 'flag':
        return ' — the key given with --api-key was refused';
      case 'env':
        return ' — the key in TRIBUTARY_API_KEY was refused';
    }
  }
}

/** HTTP status → exit code (see cli/exit.ts). */
export function exitCodeFor(status: number): ExitCode {
  if (status === 404) return EXIT.notFound;
  if (status === 401 || status === 403) return EXIT.denied;
  if (status === 400 || status === 413 || status === 422) return EXIT.usage;
  return EXIT.failure;
}

/** Path segment for an id or name given on the command line. */
export function seg(value: string): string {
  return encodeURIComponent(value);
}

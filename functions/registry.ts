/**
 * The durable function registry: deployed handler modules, one immutable version per
 * deploy, their metadata in the database (table `F`, store/keyspace.ts) and their code
 * on disk under `<dataDir>/functions/<name>/v<version>/index.mjs` (or `index.cjs`).
 *
 * Ordering rules that keep the two in step:
 * - deploy writes and fsyncs the code file (and its folders) before it commits the
 *   metadata, so committed metadata never names a missing file; a crash in between
 *   leaves an orphan folder, removed at the next open;
 * - delete commits the removal of the metadata first, then removes the code folder; a
 *   crash in between leaves an orphan folder, removed at the next open.
 *
 * Version numbers never repeat for a name, not even after a delete: the runtime keeps a
 * warm process per function keyed by (version, code path, ...), so reusing `v1` for new
 * code could run the old module. The last version number of a name therefore outlives
 * its versions (one small key per name ever deployed).
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { mkdir, open, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { invalidParameter, TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import type { FunctionSpec } from './types.js';

export type ModuleType = 'esm' | 'commonjs';

/** What a deploy takes. Unset limits follow the server's defaults (also when those change later). */
export interface DeployInput {
  code: string;
  timeoutMs?: number;
  memoryMb?: number;
  environment?: Record<string, string>;
  /** How the code is loaded; detected from the source when absent. */
  moduleType?: ModuleType;
}

/** One deployed version, ready to hand to the runtime (it is a {@link FunctionSpec}). */
export interface FunctionVersion extends FunctionSpec {
  codeSha256: string;
  /** Bytes of UTF-8 code. */
  codeSize: number;
  moduleType: ModuleType;
  /** Epoch ms of the deploy. */
  createdAt: number;
}

export interface FunctionVersionSummary {
  version: number;
  codeSha256: string;
  codeSize: number;
  moduleType: ModuleType;
  createdAt: number;
}

/** A function: its latest version, and every version it keeps (ascending). */
export interface FunctionInfo extends FunctionVersion {
  versions: FunctionVersionSummary[];
}

export interface FunctionPage {
  /** The latest version of each function, by name. */
  items: FunctionVersion[];
  nextCursor: string | null;
}

export interface FunctionRegistryOptions {
  database: Database;
  /** The server's data directory; code goes to `<dataDir>/functions`. */
  dataDir: string;
  /** Limits of functions that do not set their own. */
  defaults: { timeoutMs: number; memoryMb: number };
  logger?: Pick<Logger, 'info' | 'warn'>;
  /**
   * Names taken by functions from elsewhere (`--functions-dir`): returns what holds the
   * name, or undefined. One name is one function (its process, logs, metrics, DLQ entries),
   * so deploying such a name is refused, and so is opening a registry that already has one.
   */
  reserved?: (name: string) => string | undefined;
}

export const FUNCTION_NAME_RE = /^[A-Za-z0-9_-]{1,64}$/;
/** Largest handler module, in bytes of UTF-8. */
export const MAX_CODE_BYTES = 5 * 1024 * 1024;
export const TIMEOUT_RANGE = { min: 1, max: 900_000 } as const;
export const MEMORY_RANGE = { min: 16, max: 10_240 } as const;
/** Environment: POSIX-style names; all keys and values together at most 4 KiB (Lambda's limit). */
const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
const MAX_ENV_BYTES = 4096;
/** Set by the runtime itself (process-runtime.ts); a function cannot override them. */
const RESERVED_ENV = new Set(['NODE_OPTIONS', 'TZ', 'AWS_REGION']);
const RESERVED_ENV_PREFIX = 'AWS_LAMBDA_';

/** Key byte after `F · name`: a version (then u32 BE) or the name's last version number. */
const VERSION_TAG = 0x00;
const COUNTER_TAG = 0x01;

/** Stored per version (the code path is derived, so the data directory can move). */
interface VersionRecord {
  name: string;
  version: number;
  codeSha256: string;
  codeSize: number;
  moduleType: ModuleType;
  timeoutMs?: number;
  memoryMb?: number;
  environment: Record<string, string>;
  createdAt: number;
}

const noop = (): void => {};

function nameKey(name: string, tag: number): Buffer {
  return Buffer.concat([Buffer.from([Prefix.function]), Buffer.from(name, 'utf8'), Buffer.from([tag])]);
}

function versionKey(name: string, version: number): Buffer {
  const v = Buffer.alloc(4);
  v.writeUInt32BE(version);
  return Buffer.concat([nameKey(name, VERSION_TAG), v]);
}

/** Splits an `F` key into the name and, for a version key, the version number. */
function parseKey(key: Buffer): { name: string; version?: number } | undefined {
  // Names never contain bytes below 0x2d, so the first byte < 0x02 ends the name.
  let i = 1;
  while (i < key.length && (key[i] as number) > COUNTER_TAG) i++;
  if (i >= key.length) return undefined;
  const name = key.subarray(1, i).toString('utf8');
  if (key[i] === COUNTER_TAG) return { name };
  return key.length === i + 5 ? { name, version: key.readUInt32BE(i + 1) } : undefined;
}

/** Node's base64url decoder skips characters outside the alphabet; round-tripping rejects them. */
function decodeCursor(text: string): string {
  const buf = Buffer.from(text, 'base64url');
  const name = buf.toString('utf8');
  if (text.length === 0 || buf.toString('base64url') !== text || !FUNCTION_NAME_RE.test(name)) {
    throw invalidParameter('cursor', 'cursor is malformed (pass nextCursor of a previous page unchanged)');
  }
  return name;
}

function encodeCursor(name: string): string {
  return Buffer.from(name, 'utf8').toString('base64url');
}

export function validateFunctionName(name: string): void {
  if (typeof name !== 'string' || !FUNCTION_NAME_RE.test(name)) {
    throw invalidParameter('name', 'function name must be 1-64 characters of A-Z a-z 0-9 _ -');
  }
}

function validationError(field: string, message: string): TributaryError {
  return new TributaryError('ValidationError', message, { field });
}

function checkInteger(value: unknown, field: string, range: { min: number; max: number }): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < range.min || value > range.max) {
    throw validationError(field, `${field} must be an integer from ${range.min} to ${range.max}`);
  }
  return value;
}

function checkEnvironment(env: unknown): Record<string, string> {
  if (env === undefined) return {};
  if (typeof env !== 'object' || env === null || Array.isArray(env)) throw validationError('environment', 'environment must be an object of string values');
  const out: Record<string, string> = {};
  let bytes = 0;
  for (const [key, value] of Object.entries(env)) {
    if (!ENV_KEY_RE.test(key)) throw validationError('environment', `environment variable name ${JSON.stringify(key)} must be a letter or _ followed by up to 127 letters, digits or _`);
    if (RESERVED_ENV.has(key) || key.startsWith(RESERVED_ENV_PREFIX)) throw validationError('environment', `environment variable ${key} is reserved (set by the runtime)`);
    if (typeof value !== 'string') throw validationError(`environment.${key}`, `environment variable ${key} must be a string`);
    if (value.includes('\0')) throw validationError(`environment.${key}`, `environment variable ${key} must not contain NUL characters`);
    bytes += Buffer.byteLength(key) + Buffer.byteLength(value);
    out[key] = value;
  }
  if (bytes > MAX_ENV_BYTES) throw validationError('environment', `environment variables take ${bytes} bytes; at most ${MAX_ENV_BYTES} are allowed`);
  return out;
}

/**
 * CommonJS when the source assigns `exports.handler` / `module.exports` and has no ES
 * `export` statement; ESM otherwise (the default, as for `.mjs`).
 */
export function detectModuleType(code: string): ModuleType {
  const cjs = /\b(?:module\.exports|exports\.handler)\b/.test(code);
  const esm = /^\s*export\s/m.test(code);
  return cjs && !esm ? 'commonjs' : 'esm';
}

/** fsyncs a file or folder (a folder's fsync makes the entries in it durable). */
async function fsyncPath(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Durable, versioned storage of function code and settings. */
export class FunctionRegistry {
  private readonly database: Database;
  private readonly root: string;
  private readonly defaults: { timeoutMs: number; memoryMb: number };
  private readonly logger: Pick<Logger, 'info' | 'warn'> | undefined;
  private readonly reserved: ((name: string) => string | undefined) | undefined;
  /** The latest version of each name asked for; `changes` counts deploys and deletes, so a read that raced one is not cached. */
  private readonly latest = new Map<string, FunctionVersion>();
  private changes = 0;
  /** Deploys and deletes run one at a time (version numbers, folders). */
  private tail: Promise<unknown> = Promise.resolve();

  private constructor(options: FunctionRegistryOptions) {
    this.database = options.database;
    this.root = resolve(options.dataDir, 'functions');
    this.defaults = options.defaults;
    this.logger = options.logger;
    this.reserved = options.reserved;
  }

  /** Opens the registry and removes code folders no committed version refers to (left by a crash). */
  static async open(options: FunctionRegistryOptions): Promise<FunctionRegistry> {
    const registry = new FunctionRegistry(options);
    mkdirSync(registry.root, { recursive: true, mode: 0o700 });
    await registry.sweep();
    await registry.checkReserved();
    return registry;
  }

  /** Deploys a new version of `name` (version 1 for a new name) and returns it. */
  async deploy(name: string, input: DeployInput): Promise<FunctionVersion> {
    validateFunctionName(name);
    const holder = this.reserved?.(name);
    if (holder !== undefined) {
      throw new TributaryError('Conflict', `function name ${name} is taken by ${holder}; deploy under another name or remove that file`, { field: 'name' });
    }
    const { code } = input;
    if (typeof code !== 'string' || code.length === 0) throw validationError('code', 'code must be a non-empty string (the handler module source)');
    const bytes = Buffer.from(code, 'utf8');
    if (bytes.length > MAX_CODE_BYTES) {
      throw new TributaryError('PayloadTooLarge', `code is ${bytes.length} bytes; at most ${MAX_CODE_BYTES} are allowed`, { field: 'code' });
    }
    const timeoutMs = checkInteger(input.timeoutMs, 'timeoutMs', TIMEOUT_RANGE);
    const memoryMb = checkInteger(input.memoryMb, 'memoryMb', MEMORY_RANGE);
    const environment = checkEnvironment(input.environment);
    if (input.moduleType !== undefined && input.moduleType !== 'esm' && input.moduleType !== 'commonjs') {
      throw validationError('moduleType', 'moduleType must be one of esm, commonjs');
    }
    const moduleType = input.moduleType ?? detectModuleType(code);

    return this.exclusive(async () => {
      const version = (await this.lastVersion(name)) + 1;
      const record: VersionRecord = {
        name,
        version,
        codeSha256: createHash('sha256').update(bytes).digest('hex'),
        codeSize: bytes.length,
        moduleType,
        ...(timeoutMs === undefined ? {} : { timeoutMs }),
        ...(memoryMb === undefined ? {} : { memoryMb }),
        environment,
        createdAt: Date.now(),
      };
      const dir = this.versionDir(name, version);
      try {
        await this.writeCode(dir, record, bytes);
        const counter = Buffer.alloc(4);
        counter.writeUInt32BE(version);
        await this.database.commit([
          { type: 'put', key: versionKey(name, version), value: Buffer.from(JSON.stringify(record), 'utf8') },
          { type: 'put', key: nameKey(name, COUNTER_TAG), value: counter },
        ]);
        this.forget(name);
      } catch (err) {
        // Nothing refers to the folder: remove it (the next open would anyway).
        await rm(dir, { recursive: true, force: true }).catch(noop);
        throw err;
      }
      return this.toVersion(record);
    });
  }

  /** The latest version of `name` and the list of its versions. */
  async get(name: string): Promise<FunctionInfo> {
    validateFunctionName(name);
    const records = await this.versionsOf(name);
    const latest = records[records.length - 1];
    if (latest === undefined) throw notFound(name);
    return {
      ...this.toVersion(latest),
      versions: records.map((r) => ({ version: r.version, codeSha256: r.codeSha256, codeSize: r.codeSize, moduleType: r.moduleType, createdAt: r.createdAt })),
    };
  }

  /** What the runtime needs to invoke `name` (the latest version, or the one given). */
  async spec(name: string, version?: number): Promise<FunctionVersion> {
    validateFunctionName(name);
    // Mappings ask for the latest version on every batch: answer from memory, not a scan.
    const cached = version === undefined ? this.latest.get(name) : undefined;
    if (cached !== undefined) return cached;
    const changes = this.changes;
    const records = await this.versionsOf(name);
    const record = version === undefined ? records[records.length - 1] : records.find((r) => r.version === version);
    if (record === undefined) throw notFound(name, version);
    const spec = this.toVersion(record);
    if (version === undefined && changes === this.changes) this.latest.set(name, spec);
    return spec;
  }

  /** Functions by name, the latest version of each. */
  async list(q: { limit: number; cursor?: string }): Promise<FunctionPage> {
    const { limit } = q;
    if (!Number.isSafeInteger(limit) || limit < 1) throw invalidParameter('limit', `limit must be a positive integer (got ${String(limit)})`);
    const gte = q.cursor === undefined ? Buffer.from([Prefix.function]) : nameKey(decodeCursor(q.cursor), COUNTER_TAG + 1);
    const lt = Buffer.from([Prefix.function + 1]);
    const found = await this.database.read(async (db) => {
      const latest: VersionRecord[] = [];
      let pending: VersionRecord | undefined;
      for await (const [key, value] of db.iterator({ gte, lt })) {
        const parsed = parseKey(key);
        if (parsed === undefined) continue;
        if (pending !== undefined && pending.name !== parsed.name) {
          latest.push(pending);
          pending = undefined;
          // One more than the page: it tells whether there is a next page.
          if (latest.length > limit) break;
        }
        if (parsed.version !== undefined) pending = JSON.parse(value.toString('utf8')) as VersionRecord;
      }
      if (pending !== undefined && latest.length <= limit) latest.push(pending);
      return latest;
    });
    const more = found.length > limit;
    const page = found.slice(0, limit);
    const last = page[page.length - 1];
    return { items: page.map((r) => this.toVersion(r)), nextCursor: more && last !== undefined ? encodeCursor(last.name) : null };
  }

  /** Removes every version of `name`: the metadata, then the code. */
  async delete(name: string): Promise<void> {
    validateFunctionName(name);
    return this.exclusive(async () => {
      const versions = await this.versionsOf(name);
      if (versions.length === 0) throw notFound(name);
      // The last version number stays (see the module comment).
      await this.database.commit(versions.map((r) => ({ type: 'del' as const, key: versionKey(name, r.version) })));
      this.forget(name);
      try {
        await rm(join(this.root, name), { recursive: true, force: true });
      } catch (err) {
        this.logger?.warn({ err, function: name }, 'cannot remove the code of a deleted function; it is removed at the next start');
      }
    });
  }

  private forget(name: string): void {
    this.changes++;
    this.latest.delete(name);
  }

  /** Refuses to open over a name that is both deployed here and reserved elsewhere. */
  private async checkReserved(): Promise<void> {
    if (this.reserved === undefined) return;
    for (let cursor: string | undefined; ; ) {
      const page = await this.list(cursor === undefined ? { limit: 1000 } : { limit: 1000, cursor });
      for (const fn of page.items) {
        const holder = this.reserved(fn.name);
        if (holder !== undefined) {
          throw new Error(
            `function ${fn.name} is deployed over the API (version ${fn.version}) and is also ${holder}: one name is one function. ` +
              `Rename or remove the file, or start without it and DELETE /v1/functions/${fn.name}.`,
          );
        }
      }
      if (page.nextCursor === null) return;
      cursor = page.nextCursor;
    }
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn, fn);
    this.tail = run.catch(noop);
    return run;
  }

  private versionDir(name: string, version: number): string {
    return join(this.root, name, `v${version}`);
  }

  private codePath(record: Pick<VersionRecord, 'name' | 'version' | 'moduleType'>): string {
    return join(this.versionDir(record.name, record.version), record.moduleType === 'commonjs' ? 'index.cjs' : 'index.mjs');
  }

  private toVersion(r: VersionRecord): FunctionVersion {
    return {
      name: r.name,
      version: r.version,
      codePath: this.codePath(r),
      timeoutMs: r.timeoutMs ?? this.defaults.timeoutMs,
      memoryMb: r.memoryMb ?? this.defaults.memoryMb,
      environment: r.environment,
      codeSha256: r.codeSha256,
      codeSize: r.codeSize,
      moduleType: r.moduleType,
      createdAt: r.createdAt,
    };
  }

  /** Writes the code into a fresh folder and makes the file and the folder entries durable. */
  private async writeCode(dir: string, record: VersionRecord, bytes: Buffer): Promise<void> {
    // A folder of this version can only be a leftover of a deploy that never committed.
    await rm(dir, { recursive: true, force: true });
    const nameDir = join(this.root, record.name);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const file = await open(this.codePath(record), 'wx', 0o600);
    try {
      await file.writeFile(bytes);
      await file.sync();
    } finally {
      await file.close();
    }
    for (const d of [dir, nameDir, this.root]) await fsyncPath(d);
  }

  private async lastVersion(name: string): Promise<number> {
    const value = await this.database.read((db) => db.get(nameKey(name, COUNTER_TAG)));
    return value === undefined ? 0 : value.readUInt32BE(0);
  }

  private versionsOf(name: string): Promise<VersionRecord[]> {
    const gte = nameKey(name, VERSION_TAG);
    const lt = nameKey(name, COUNTER_TAG);
    return this.database.read(async (db) => (await db.values({ gte, lt }).all()).map((v) => JSON.parse(v.toString('utf8')) as VersionRecord));
  }

  /** Removes code folders of versions that have no metadata (a crash between writing code and committing, or during a delete). */
  private async sweep(): Promise<void> {
    let removed = 0;
    for (const name of readdirSync(this.root)) {
      if (!FUNCTION_NAME_RE.test(name)) continue;
      const known = new Set((await this.versionsOf(name)).map((r) => `v${r.version}`));
      const nameDir = join(this.root, name);
      let entries: string[];
      try {
        entries = readdirSync(nameDir);
      } catch {
        continue;
      }
      for (const entry of entries) {
        if (!/^v\d+$/.test(entry) || known.has(entry)) continue;
        rmSync(join(nameDir, entry), { recursive: true, force: true });
        removed++;
      }
      if (known.size === 0 && readdirSync(nameDir).length === 0) rmSync(nameDir, { recursive: true, force: true });
    }
    if (removed > 0) this.logger?.info({ removed }, 'removed code folders of function versions that were never committed or were deleted');
  }
}

function notFound(name: string, version?: number): TributaryError {
  const what = version === undefined ? `no function named ${JSON.stringify(name)}` : `function ${JSON.stringify(name)} has no version ${version}`;
  return new TributaryError('FunctionNotFound', what, { field: 'name' });
}

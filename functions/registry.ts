/**
 * The durable function registry: deployed handler modules, one immutable version per
 * deploy, their metadata and code in the database (table `F`, store/keyspace.ts). Every
 * write goes through a {@link MetadataWriter}, so in cluster mode every node holds every
 * version, code included. The file under `<dataDir>/functions/<name>/v<version>/index.mjs`
 * (or `index.cjs`) is a cache of the code for the runtime: written when a version is
 * deployed here or first resolved here, and rewritten when missing or not that version's
 * (its SHA-256 differs). A node that learns of a version from another node can run it.
 *
 * Version numbers never repeat for a name, not even after a delete: the runtime keeps a
 * warm process per function keyed by (version, code path, ...), so reusing `v1` for new
 * code could run the old module. A deploy first *claims* the next number (a key of its
 * own, `F · name · 0x01 · version · random id`) and waits until the claim is applied;
 * the first claim of a number in the order every node applies wins it, and only the
 * winner writes the version. A loser (another node deployed the same name at once) claims
 * the next number. The highest claim of a name outlives its versions, so numbers keep
 * counting after a delete; the winner deletes the claims below its own. Data written
 * before claims has a plain counter `F · name · 0x01` instead, honoured the same way.
 *
 * A version is a handler module (`code`) or a deployment package (functions/package.ts: a
 * zip or tarball with `node_modules`, unpacked under `v<version>/package/`). A package is
 * kept in chunks of {@link PACKAGE_CHUNK_BYTES}, each written in a commit of its own before
 * the version's metadata: in cluster mode a commit is one record batch of the metadata
 * topic, which takes at most 6 MiB (cluster/kafka-metadata.ts). Chunks of a deploy that
 * crashed before its metadata commit stay until the function is deleted.
 *
 * Functions of `--functions-dir` are part of the same model: listed and shown (`source:
 * "functions-dir"`, one version), resolved for invoking and triggers; deploying or deleting
 * one is refused (its file manages it).
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join, parse, relative, resolve } from 'node:path';
import { invalidParameter, TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import type { Database } from '../store/database.js';
import { Prefix } from '../store/keyspace.js';
import { LocalMetadata, type MetadataWriter } from '../store/metadata.js';
import type { BatchOp } from '../streams/types.js';
import { checkHandlerSource } from './deploy-check.js';
import { handlerModule, MAX_PACKAGE_BYTES, moduleTypeOf, unpackPackage, type PackageFormat } from './package.js';
import type { FunctionSpec } from './types.js';

export type ModuleType = 'esm' | 'commonjs';

/** What a deploy takes: `code` or `package`. Unset limits follow the server's defaults (also when those change later). */
export interface DeployInput {
  /** A handler module's source. */
  code?: string;
  /** A deployment package: a zip or tarball (functions/package.ts). */
  package?: Buffer;
  /** With `package`: Lambda's handler setting, `path/module.handler`; default `index.handler`. */
  handler?: string;
  timeoutMs?: number;
  memoryMb?: number;
  environment?: Record<string, string>;
  /** How the code is loaded; detected from the source when absent. Not with `package` (Node decides by extension and package.json). */
  moduleType?: ModuleType;
  /** Whether the function may open sockets; default true. */
  network?: boolean;
}

/** What a package version holds (`package` of a version). */
export interface PackageInfo {
  /** Lambda's handler setting, e.g. `index.handler`. */
  handler: string;
  /** The handler module's path in the package, e.g. `index.mjs`. */
  module: string;
  format: PackageFormat;
  /** Files, folders and links. */
  entries: number;
  unpackedBytes: number;
}

/** Where a function comes from: deployed over the API, or a file of `--functions-dir` (managed by that file). */
export type FunctionSource = 'api' | 'functions-dir';

/** One deployed version, ready to hand to the runtime (it is a {@link FunctionSpec}). */
export interface FunctionVersion extends FunctionSpec {
  network: boolean;
  source: FunctionSource;
  /** With source `functions-dir`: the file. */
  file?: string;
  /** Of the module, or of the package as uploaded. */
  codeSha256: string;
  /** Bytes of UTF-8 code, or of the package as uploaded. */
  codeSize: number;
  /** Set for a deployment package. */
  package?: PackageInfo;
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
  /** Where the registry reads its table. */
  database: Database;
  /** Where its writes go (in cluster mode, to every node); default: `database` itself. */
  metadata?: MetadataWriter;
  /** The server's data directory; code goes to `<dataDir>/functions`. */
  dataDir: string;
  /** Limits of functions that do not set their own. */
  defaults: { timeoutMs: number; memoryMb: number };
  logger?: Pick<Logger, 'info' | 'warn'>;
  /**
   * The functions of `--functions-dir`. One name is one function (its process, logs,
   * metrics, DLQ entries), so deploying or deleting such a name is refused, and so is
   * opening a registry that already has one deployed.
   */
  files?: readonly FunctionSpec[];
}

export const FUNCTION_NAME_RE = /^[A-Za-z0-9_-]{1,64}$/;
/**
 * Largest handler module, in bytes of UTF-8. The code is one value in the database, so in
 * cluster mode one record of the metadata topic: its `max.message.bytes` must exceed this.
 */
export const MAX_CODE_BYTES = 5 * 1024 * 1024;
export const TIMEOUT_RANGE = { min: 1, max: 900_000 } as const;
export const MEMORY_RANGE = { min: 16, max: 10_240 } as const;
/** Environment: POSIX-style names; all keys and values together at most 4 KiB (Lambda's limit). */
const ENV_KEY_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
const MAX_ENV_BYTES = 4096;
/** Set by the runtime itself (process-runtime.ts); a function cannot override them. */
const RESERVED_ENV = new Set(['NODE_OPTIONS', 'TZ', 'AWS_REGION', 'AWS_DEFAULT_REGION']);
const RESERVED_ENV_PREFIX = 'AWS_LAMBDA_';

/** Key byte after `F · name`: a version (then u32 BE), or a number taken (then u32 BE · claim id; alone: the counter of older data). */
const VERSION_TAG = 0x00;
const TAKEN_TAG = 0x01;
const CLAIM_ID_BYTES = 8;
/** A package is stored in chunks of at most this many bytes, each in a commit (one Kafka record batch) of its own. */
export const PACKAGE_CHUNK_BYTES = 4 * 1024 * 1024;
/** Folders under `<root>/<name>/` where a deploy unpacks a package before its version exists. */
const STAGING_PREFIX = '.staging-';
/**
 * Second key byte of the code of a version, `F · 0x00 · name · 0x00 · version`: it sorts
 * before every name (names never contain bytes below 0x2d), so listing names reads no code.
 */
const CODE_SECTION = 0x00;
/** Claims lost in a row to deploys on other nodes before a deploy gives up. */
const MAX_CLAIMS = 5;

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
  /** Absent in records written before the setting existed: on. */
  network?: boolean;
  createdAt: number;
  /** A package, stored in `chunks` rows under its code key. */
  package?: PackageInfo & { chunks: number };
}

const noop = (): void => {};

function nameKey(name: string, tag: number): Buffer {
  return Buffer.concat([Buffer.from([Prefix.function]), Buffer.from(name, 'utf8'), Buffer.from([tag])]);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

function versionKey(name: string, version: number): Buffer {
  return Buffer.concat([nameKey(name, VERSION_TAG), u32(version)]);
}

/** A claim of `version`; with an empty id, the bound below every claim of it. */
function claimKey(name: string, version: number, id: Buffer): Buffer {
  return Buffer.concat([nameKey(name, TAKEN_TAG), u32(version), id]);
}

/** Where every version's code of `name` lies: `F · 0x00 · name · 0x00`. */
function codeSection(name: string): Buffer {
  return Buffer.concat([Buffer.from([Prefix.function, CODE_SECTION]), Buffer.from(name, 'utf8'), Buffer.from([0x00])]);
}

function codeKey(name: string, version: number): Buffer {
  return Buffer.concat([codeSection(name), u32(version)]);
}

/** Chunk `index` of a package: the code key, then u32 BE. */
function chunkKey(name: string, version: number, index: number): Buffer {
  return Buffer.concat([codeKey(name, version), u32(index)]);
}

type ParsedKey = { kind: 'version'; name: string; version: number } | { kind: 'claim'; name: string; version: number; id: string };

/** Reads a version or claim key of `F` (undefined for the counter and the code section). */
function parseKey(key: Buffer): ParsedKey | undefined {
  // Names never contain bytes below 0x2d, so the first byte < 0x02 ends the name.
  let i = 1;
  while (i < key.length && (key[i] as number) > TAKEN_TAG) i++;
  if (i === 1 || i >= key.length) return undefined;
  const name = key.subarray(1, i).toString('utf8');
  const rest = key.length - i - 1;
  if (key[i] === VERSION_TAG) return rest === 4 ? { kind: 'version', name, version: key.readUInt32BE(i + 1) } : undefined;
  return rest === 4 + CLAIM_ID_BYTES ? { kind: 'claim', name, version: key.readUInt32BE(i + 1), id: key.subarray(i + 5).toString('hex') } : undefined;
}

function sha256Hex(bytes: Buffer): string {
  return createHash('sha256').update(bytes).digest('hex');
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

type Source = { kind: 'code'; bytes: Buffer; moduleType: ModuleType } | { kind: 'package'; bytes: Buffer; handler: string };

/** The code of a deploy: `code` or `package`, never both. */
function checkSource(input: DeployInput): Source {
  const { code } = input;
  if (input.package !== undefined) {
    if (code !== undefined) throw validationError('package', 'give code (one module) or package (a zip or tarball), not both');
    if (input.moduleType !== undefined) throw validationError('moduleType', 'moduleType is not set for a package: Node decides by the extension (.mjs, .cjs) and the nearest package.json\'s "type"');
    if (!Buffer.isBuffer(input.package) || input.package.length === 0) throw validationError('package', 'package must be a non-empty zip or tarball');
    if (input.package.length > MAX_PACKAGE_BYTES) {
      throw new TributaryError('PayloadTooLarge', `the package is ${input.package.length} bytes; at most ${MAX_PACKAGE_BYTES} are allowed`, { field: 'package' });
    }
    if (input.handler !== undefined && typeof input.handler !== 'string') throw validationError('handler', 'handler must be a string such as index.handler');
    return { kind: 'package', bytes: input.package, handler: input.handler ?? 'index.handler' };
  }
  if (input.handler !== undefined) throw validationError('handler', 'handler is set only with package (a module given as code exports handler)');
  if (typeof code !== 'string' || code.length === 0) throw validationError('code', 'code must be a non-empty string (the handler module source), or give package');
  const bytes = Buffer.from(code, 'utf8');
  if (bytes.length > MAX_CODE_BYTES) {
    throw new TributaryError('PayloadTooLarge', `code is ${bytes.length} bytes; at most ${MAX_CODE_BYTES} are allowed (a larger function can be deployed as a package)`, { field: 'code' });
  }
  if (input.moduleType !== undefined && input.moduleType !== 'esm' && input.moduleType !== 'commonjs') {
    throw validationError('moduleType', 'moduleType must be one of esm, commonjs');
  }
  return { kind: 'code', bytes, moduleType: input.moduleType ?? detectModuleType(code) };
}

function fileManaged(name: string, file: FunctionSpec): TributaryError {
  return new TributaryError('Conflict', `function ${name} is managed by the --functions-dir file ${file.codePath}: change or remove that file (and restart) instead, or deploy under another name`, { field: 'name' });
}

/** Durable, versioned storage of function code and settings. */
export class FunctionRegistry {
  private readonly database: Database;
  private readonly metadata: MetadataWriter;
  private readonly root: string;
  private readonly defaults: { timeoutMs: number; memoryMb: number };
  private readonly logger: Pick<Logger, 'info' | 'warn'> | undefined;
  /** `--functions-dir` functions by name. */
  private readonly files: ReadonlyMap<string, FunctionSpec>;
  /** The latest version of each name asked for; `changes` counts applied version writes, so a read that raced one is not cached. */
  private readonly latest = new Map<string, FunctionVersion>();
  private changes = 0;
  /** Code files known to hold their version's code: version folder → SHA-256. */
  private readonly cached = new Map<string, string>();
  /** Packages being unpacked: version folder → done. */
  private readonly unpacking = new Map<string, Promise<void>>();
  /** Claims applied while this node's deploy of `name` claims a number: version → the first claim's id. */
  private watch: { name: string; first: Map<number, string> } | undefined;
  /** Deploys and deletes run one at a time (version numbers, folders). */
  private tail: Promise<unknown> = Promise.resolve();

  private constructor(options: FunctionRegistryOptions) {
    this.database = options.database;
    this.metadata = options.metadata ?? new LocalMetadata(options.database);
    this.root = resolve(options.dataDir, 'functions');
    this.defaults = options.defaults;
    this.logger = options.logger;
    this.files = new Map((options.files ?? []).map((f) => [f.name, f]));
    this.metadata.onApplied((ops) => this.applied(ops));
  }

  /** Opens the registry and removes code folders no committed version refers to (deleted, or left by older releases). */
  static async open(options: FunctionRegistryOptions): Promise<FunctionRegistry> {
    const registry = new FunctionRegistry(options);
    mkdirSync(registry.root, { recursive: true, mode: 0o700 });
    await registry.sweep();
    await registry.checkReserved();
    return registry;
  }

  /**
   * Deploys a new version of `name` (version 1 for a new name) and returns it.
   * @throws TributaryError `Conflict` when deploys of the same name on other nodes took
   * every number this one claimed ({@link MAX_CLAIMS} in a row).
   */
  async deploy(name: string, input: DeployInput): Promise<FunctionVersion> {
    validateFunctionName(name);
    const file = this.files.get(name);
    if (file !== undefined) throw fileManaged(name, file);
    const source = checkSource(input);
    const timeoutMs = checkInteger(input.timeoutMs, 'timeoutMs', TIMEOUT_RANGE);
    const memoryMb = checkInteger(input.memoryMb, 'memoryMb', MEMORY_RANGE);
    const environment = checkEnvironment(input.environment);

    if (input.network !== undefined && typeof input.network !== 'boolean') throw validationError('network', 'network must be true or false');
    if (source.kind === 'code') await checkHandlerSource(source.bytes, source.moduleType);

    return this.exclusive(async () => {
      // A package is unpacked (so checked) before anything is written.
      const staging = source.kind === 'package' ? join(this.root, name, `${STAGING_PREFIX}${randomBytes(6).toString('hex')}`) : undefined;
      try {
        let pkg: VersionRecord['package'];
        let moduleType: ModuleType;
        if (source.kind === 'package' && staging !== undefined) {
          const contents = await unpackPackage(source.bytes, staging);
          const module = await handlerModule(staging, source.handler);
          moduleType = await moduleTypeOf(staging, module);
          await checkHandlerSource(await readFile(join(staging, module)), moduleType);
          pkg = { handler: source.handler, module, ...contents, chunks: Math.ceil(source.bytes.length / PACKAGE_CHUNK_BYTES) };
        } else moduleType = (source as Extract<Source, { kind: 'code' }>).moduleType;
        const { bytes } = source;
        const version = await this.claim(name);
        const record: VersionRecord = {
          name,
          version,
          codeSha256: sha256Hex(bytes),
          codeSize: bytes.length,
          moduleType,
          ...(timeoutMs === undefined ? {} : { timeoutMs }),
          ...(memoryMb === undefined ? {} : { memoryMb }),
          environment,
          ...(input.network === undefined ? {} : { network: input.network }),
          createdAt: Date.now(),
          ...(pkg === undefined ? {} : { package: pkg }),
        };
        await this.writeVersion(record, bytes);
        try {
          await this.materialize(record, bytes, staging);
        } catch (err) {
          this.logger?.warn({ err, function: name, version }, 'cannot write the code file of a new version; it is written when the version is resolved');
        }
        return this.toVersion(record);
      } finally {
        if (staging !== undefined) await rm(staging, { recursive: true, force: true }).catch(noop);
      }
    });
  }

  /** Commits a version: a package's chunks each on its own, then the metadata (with a module's code). */
  private async writeVersion(record: VersionRecord, bytes: Buffer): Promise<void> {
    const { name, version } = record;
    const chunks = record.package?.chunks ?? 0;
    try {
      for (let i = 0; i < chunks; i++) {
        await this.metadata.commit([{ type: 'put', key: chunkKey(name, version, i), value: bytes.subarray(i * PACKAGE_CHUNK_BYTES, (i + 1) * PACKAGE_CHUNK_BYTES) }]);
      }
      // The highest claim is what keeps numbers from repeating; the ones below it (and an old counter) can go.
      const below = await this.database.read((db) => db.keys({ gte: nameKey(name, TAKEN_TAG), lt: claimKey(name, version, Buffer.alloc(0)) }).all());
      await this.metadata.commit([
        { type: 'put', key: versionKey(name, version), value: Buffer.from(JSON.stringify(record), 'utf8') },
        ...(chunks === 0 ? [{ type: 'put' as const, key: codeKey(name, version), value: bytes }] : []),
        ...below.map((key) => ({ type: 'del' as const, key })),
      ]);
    } catch (err) {
      if (chunks > 0) {
        const written = Array.from({ length: chunks }, (_, i) => ({ type: 'del' as const, key: chunkKey(name, version, i) }));
        await this.metadata.commit(written).catch(noop);
      }
      throw err;
    }
  }

  /** The latest version of `name` and the list of its versions. */
  async get(name: string): Promise<FunctionInfo> {
    validateFunctionName(name);
    const file = this.files.get(name);
    if (file !== undefined) {
      const v = await this.fileVersion(file);
      return { ...v, versions: [{ version: v.version, codeSha256: v.codeSha256, codeSize: v.codeSize, moduleType: v.moduleType, createdAt: v.createdAt }] };
    }
    const records = await this.versionsOf(name);
    const latest = records[records.length - 1];
    if (latest === undefined) throw notFound(name);
    return {
      ...this.toVersion(latest),
      versions: records.map((r) => ({ version: r.version, codeSha256: r.codeSha256, codeSize: r.codeSize, moduleType: r.moduleType, createdAt: r.createdAt })),
    };
  }

  /** What the runtime needs to invoke `name` (the latest version, or the one given), its code file written. */
  async spec(name: string, version?: number): Promise<FunctionVersion> {
    validateFunctionName(name);
    const file = this.files.get(name);
    if (file !== undefined) {
      if (version !== undefined && version !== file.version) throw notFound(name, version);
      return this.fileVersion(file);
    }
    // Mappings ask for the latest version on every batch: answer from memory, not a scan.
    const cached = version === undefined ? this.latest.get(name) : undefined;
    if (cached !== undefined) return cached;
    const changes = this.changes;
    const records = await this.versionsOf(name);
    const record = version === undefined ? records[records.length - 1] : records.find((r) => r.version === version);
    if (record === undefined) throw notFound(name, version);
    await this.materialize(record);
    const spec = this.toVersion(record);
    if (version === undefined && changes === this.changes) this.latest.set(name, spec);
    return spec;
  }

  /** Functions by name, the latest version of each. */
  async list(q: { limit: number; cursor?: string }): Promise<FunctionPage> {
    const { limit } = q;
    if (!Number.isSafeInteger(limit) || limit < 1) throw invalidParameter('limit', `limit must be a positive integer (got ${String(limit)})`);
    const gte = q.cursor === undefined ? Buffer.from([Prefix.function, CODE_SECTION + 1]) : nameKey(decodeCursor(q.cursor), TAKEN_TAG + 1);
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
        if (parsed.kind === 'version') pending = JSON.parse(value.toString('utf8')) as VersionRecord;
      }
      if (pending !== undefined && latest.length <= limit) latest.push(pending);
      return latest;
    });
    // Files after the cursor join the deployed ones in name order (names never clash): the
    // first `limit` of both are right, as every deployed name not read sorts after `found`.
    const after = q.cursor === undefined ? undefined : decodeCursor(q.cursor);
    const files = await Promise.all([...this.files.values()].filter((f) => after === undefined || f.name > after).map((f) => this.fileVersion(f)));
    const merged = [...found.map((r) => this.toVersion(r)), ...files].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const page = merged.slice(0, limit);
    const last = page[page.length - 1];
    return { items: page, nextCursor: merged.length > limit && last !== undefined ? encodeCursor(last.name) : null };
  }

  /** Removes every version of `name`: the metadata and code, then the code files. */
  async delete(name: string): Promise<void> {
    validateFunctionName(name);
    const file = this.files.get(name);
    if (file !== undefined) throw fileManaged(name, file);
    return this.exclusive(async () => {
      const versions = await this.versionsOf(name);
      if (versions.length === 0) throw notFound(name);
      // Every code row of the name: modules, package chunks, and chunks a crashed deploy left. The claims stay (see the module comment).
      const section = codeSection(name);
      const code = await this.database.read((db) => db.keys({ gte: section, lt: Buffer.concat([section, Buffer.from([0xff])]) }).all());
      await this.metadata.commit([...versions.map((r) => ({ type: 'del' as const, key: versionKey(name, r.version) })), ...code.map((key) => ({ type: 'del' as const, key }))]);
      try {
        await rm(join(this.root, name), { recursive: true, force: true });
      } catch (err) {
        this.logger?.warn({ err, function: name }, 'cannot remove the code of a deleted function; it is removed at the next start');
      }
    });
  }

  /**
   * Follows what was applied, here or (cluster mode) on another node: versions written or
   * deleted leave the latest-version cache, deleted ones their code file; claims of a
   * number this node is claiming are noted in the order they come.
   */
  private applied(ops: readonly BatchOp[]): void {
    for (const op of ops) {
      if (op.key[0] !== Prefix.function) continue;
      const key = parseKey(op.key);
      if (key?.kind === 'version') {
        this.changes++;
        this.latest.delete(key.name);
        if (op.type === 'del') this.dropCodeFile(key.name, key.version);
      } else if (key?.kind === 'claim' && op.type === 'put' && this.watch?.name === key.name && !this.watch.first.has(key.version)) {
        this.watch.first.set(key.version, key.id);
      }
    }
  }

  /**
   * Takes the next version number of `name`. Every node applies claims in one order, and
   * this node has applied all claims before its own once its commit resolves, so it knows
   * whether its claim came first; if not, another node's deploy has the number, and it
   * claims the next.
   */
  private async claim(name: string): Promise<number> {
    for (let attempt = 1; ; attempt++) {
      // Watching before reading: a claim applied after the read is seen by the watch.
      const first = new Map<number, string>();
      this.watch = { name, first };
      let version: number;
      let id: Buffer;
      try {
        version = await this.nextVersion(name);
        id = randomBytes(CLAIM_ID_BYTES);
        await this.metadata.commit([{ type: 'put', key: claimKey(name, version, id), value: Buffer.alloc(0) }]);
      } finally {
        this.watch = undefined;
      }
      const winner = first.get(version);
      if (winner === undefined) throw new TributaryError('InternalError', 'the metadata writer resolved a commit before reporting it applied (onApplied must run first)');
      if (winner === id.toString('hex')) return version;
      this.logger?.info({ function: name, version }, 'version number taken by a deploy on another node; claiming the next');
      if (attempt === MAX_CLAIMS) {
        throw new TributaryError('Conflict', `function ${name} is being deployed on other nodes at the same time: ${MAX_CLAIMS} version numbers in a row were taken; deploy again`, { field: 'name' });
      }
    }
  }

  /** One past the highest number ever taken for `name`. */
  private async nextVersion(name: string): Promise<number> {
    const taken = nameKey(name, TAKEN_TAG);
    const [last] = await this.database.read((db) => db.iterator({ gte: taken, lt: nameKey(name, TAKEN_TAG + 1), reverse: true, limit: 1 }).all());
    if (last === undefined) return 1;
    const [key, value] = last;
    // Claims sort by number after the old counter, which is last only when there is no claim.
    return (key.length === taken.length ? value : key.subarray(taken.length)).readUInt32BE(0) + 1;
  }

  /**
   * Makes the version's code file hold its code: left as it is when its SHA-256 is the
   * version's, written from the database (or `code`) otherwise. A package is unpacked under
   * `package/` (or `unpacked`, a folder it was already unpacked into, is moved there), and a
   * `package.sha256` beside it written last says it is complete.
   * @throws TributaryError `InternalError` when the database has no code for it (a version
   * deployed before code was kept there) and the file is gone.
   */
  private async materialize(record: VersionRecord, code?: Buffer, unpacked?: string): Promise<void> {
    const dir = this.versionDir(record.name, record.version);
    if (this.cached.get(dir) === record.codeSha256) return;
    if (record.package !== undefined) {
      // One unpacking per folder at a time: invocations racing to a version not here yet share it.
      let run = this.unpacking.get(dir);
      if (run === undefined) {
        run = this.placePackage(record, dir, code, unpacked).finally(() => this.unpacking.delete(dir));
        this.unpacking.set(dir, run);
      }
      return run;
    }
    const path = this.codePath(record);
    const onDisk = await readFile(path).catch(() => undefined);
    if (onDisk === undefined || sha256Hex(onDisk) !== record.codeSha256) {
      const bytes = code ?? (await this.database.read((db) => db.get(codeKey(record.name, record.version))));
      if (bytes === undefined) throw new TributaryError('InternalError', `the code of function ${record.name} version ${record.version} is neither in the database nor at ${path}`);
      await mkdir(dir, { recursive: true, mode: 0o700 });
      // Written aside, then renamed: a process starting meanwhile never loads half a module.
      // No fsync: after a crash a torn file fails the hash check and is written again.
      const aside = `${path}.${randomBytes(6).toString('hex')}.tmp`;
      try {
        await writeFile(aside, bytes, { mode: 0o600 });
        await rename(aside, path);
      } catch (err) {
        await rm(aside, { force: true }).catch(noop);
        throw err;
      }
    }
    this.cached.set(dir, record.codeSha256);
  }

  private async placePackage(record: VersionRecord, dir: string, code: Buffer | undefined, unpacked: string | undefined): Promise<void> {
    const marker = join(dir, 'package.sha256');
    if ((await readFile(marker, 'utf8').catch(() => undefined)) !== record.codeSha256) {
      const root = join(dir, 'package');
      await mkdir(dir, { recursive: true, mode: 0o700 });
      await rm(marker, { force: true });
      await rm(root, { recursive: true, force: true });
      if (unpacked !== undefined) await rename(unpacked, root);
      else {
        const bytes = code ?? (await this.readPackage(record));
        const aside = join(dir, `package.${randomBytes(6).toString('hex')}.tmp`);
        try {
          await unpackPackage(bytes, aside);
          await rename(aside, root);
        } finally {
          await rm(aside, { recursive: true, force: true }).catch(noop);
        }
      }
      await writeFile(marker, record.codeSha256, { mode: 0o600 });
    }
    this.cached.set(dir, record.codeSha256);
  }

  /** A package version's bytes, from its chunks. */
  private async readPackage(record: VersionRecord): Promise<Buffer> {
    const chunks = record.package?.chunks ?? 0;
    const parts = await this.database.read((db) => db.getMany(Array.from({ length: chunks }, (_, i) => chunkKey(record.name, record.version, i))));
    const bytes = parts.every((p): p is Buffer => p !== undefined) ? Buffer.concat(parts) : undefined;
    if (bytes === undefined || sha256Hex(bytes) !== record.codeSha256) {
      throw new TributaryError('InternalError', `the package of function ${record.name} version ${record.version} is not complete in the database`);
    }
    return bytes;
  }

  /** A `--functions-dir` function as a version: its file's hash, size and modification time. */
  private async fileVersion(spec: FunctionSpec): Promise<FunctionVersion> {
    const [bytes, info] = await Promise.all([readFile(spec.codePath).catch(() => undefined), stat(spec.codePath).catch(() => undefined)]);
    // Node's rule for a .js file: the nearest package.json, up to the file system's root.
    const top = parse(spec.codePath).root;
    return {
      ...spec,
      network: spec.network ?? true,
      source: 'functions-dir',
      file: spec.codePath,
      codeSha256: bytes === undefined ? '' : sha256Hex(bytes),
      codeSize: bytes?.length ?? 0,
      moduleType: await moduleTypeOf(top, relative(top, spec.codePath)),
      createdAt: Math.round(info?.mtimeMs ?? 0),
    };
  }

  private dropCodeFile(name: string, version: number): void {
    const dir = this.versionDir(name, version);
    this.cached.delete(dir);
    rm(dir, { recursive: true, force: true }).catch((err: unknown) => {
      this.logger?.warn({ err, function: name, version }, 'cannot remove the code file of a deleted version; it is removed at the next start');
    });
  }

  /** Refuses to open over a name that is both deployed here and a `--functions-dir` file. */
  private async checkReserved(): Promise<void> {
    for (const [name, file] of this.files) {
      const versions = await this.versionsOf(name);
      const last = versions[versions.length - 1];
      if (last !== undefined) {
        throw new Error(
          `function ${name} is deployed over the API (version ${last.version}) and is also the --functions-dir file ${file.codePath}: one name is one function. ` +
            `Rename or remove the file, or start without it and DELETE /v1/functions/${name}.`,
        );
      }
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

  private codePath(record: Pick<VersionRecord, 'name' | 'version' | 'moduleType' | 'package'>): string {
    const dir = this.versionDir(record.name, record.version);
    if (record.package !== undefined) return join(dir, 'package', record.package.module);
    return join(dir, record.moduleType === 'commonjs' ? 'index.cjs' : 'index.mjs');
  }

  private toVersion(r: VersionRecord): FunctionVersion {
    const pkg = r.package;
    return {
      source: 'api',
      name: r.name,
      version: r.version,
      codePath: this.codePath(r),
      ...(pkg === undefined
        ? {}
        : { codeRoot: join(this.versionDir(r.name, r.version), 'package'), package: { handler: pkg.handler, module: pkg.module, format: pkg.format, entries: pkg.entries, unpackedBytes: pkg.unpackedBytes } }),
      timeoutMs: r.timeoutMs ?? this.defaults.timeoutMs,
      memoryMb: r.memoryMb ?? this.defaults.memoryMb,
      environment: r.environment,
      network: r.network ?? true,
      codeSha256: r.codeSha256,
      codeSize: r.codeSize,
      moduleType: r.moduleType,
      createdAt: r.createdAt,
    };
  }

  private versionsOf(name: string): Promise<VersionRecord[]> {
    const gte = nameKey(name, VERSION_TAG);
    const lt = nameKey(name, TAKEN_TAG);
    return this.database.read(async (db) => (await db.values({ gte, lt }).all()).map((v) => JSON.parse(v.toString('utf8')) as VersionRecord));
  }

  /** Removes code folders of versions that have no metadata (deleted while a file was being written, or left by older releases). */
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
        // A package unpacked by a deploy that did not finish.
        if (entry.startsWith(STAGING_PREFIX)) rmSync(join(nameDir, entry), { recursive: true, force: true });
        if (!/^v\d+$/.test(entry) || known.has(entry)) continue;
        rmSync(join(nameDir, entry), { recursive: true, force: true });
        removed++;
      }
      if (known.size === 0 && readdirSync(nameDir).length === 0) rmSync(nameDir, { recursive: true, force: true });
    }
    if (removed > 0) this.logger?.info({ removed }, 'removed code folders of function versions that no longer exist');
  }
}

function notFound(name: string, version?: number): TributaryError {
  const what = version === undefined ? `no function named ${JSON.stringify(name)}` : `function ${JSON.stringify(name)} has no version ${version}`;
  return new TributaryError('FunctionNotFound', what, { field: 'name' });
}

/**
 * Deployment packages: a zip or a tarball (plain or gzip-compressed) of a function's folder,
 * its handler module with `package.json` and `node_modules`, as a Lambda .zip deployment
 * package is. Unpacked only into a fresh folder and only when every entry is safe: a
 * relative path that stays inside the package (no `..`, no absolute path), a file, a folder
 * or a symbolic link that resolves inside the package; no hard links, devices or FIFOs;
 * at most {@link MAX_PACKAGE_ENTRIES} entries and {@link MAX_UNPACKED_BYTES} bytes, counted
 * as they are inflated (a declared size is not trusted).
 */
import { lstat, mkdir, readFile, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, posix, relative, sep } from 'node:path';
import { Parser, type ReadEntry } from 'tar';
import yauzl from 'yauzl';
import { TributaryError } from '../core/errors.js';

/** Largest package as uploaded (compressed), in bytes. */
export const MAX_PACKAGE_BYTES = 16 * 1024 * 1024;
/** Largest package unpacked: the bytes of all its files. */
export const MAX_UNPACKED_BYTES = 128 * 1024 * 1024;
/** Most entries (files, folders and links) in a package. */
export const MAX_PACKAGE_ENTRIES = 10_000;

export type PackageFormat = 'zip' | 'tar';

/** What an unpacked package holds. */
export interface PackageContents {
  format: PackageFormat;
  /** Entries written: files, folders and symbolic links. */
  entries: number;
  /** Bytes of all files. */
  unpackedBytes: number;
}

/** Lambda's handler setting: `path/to/module.handler`, the module without its extension (Lambda's Node runtime tries `.js`, `.mjs`, `.cjs`). */
export const HANDLER_RE = /^(?:[A-Za-z0-9_@-][A-Za-z0-9_.@-]*\/)*[A-Za-z0-9_@-][A-Za-z0-9_.@-]*\.handler$/;
const MODULE_EXTENSIONS = ['.js', '.mjs', '.cjs'] as const;

interface Entry {
  path: string;
  kind: 'file' | 'dir' | 'symlink';
  data?: Buffer;
  target?: string;
}

function invalid(message: string): TributaryError {
  return new TributaryError('ValidationError', message, { field: 'package' });
}

/** Which archive `bytes` is, by its magic bytes; undefined when none. */
export function packageFormat(bytes: Buffer): PackageFormat | undefined {
  if (bytes.length >= 4 && bytes.readUInt32BE(0) === 0x504b0304) return 'zip';
  // An empty zip is only its end-of-central-directory record.
  if (bytes.length >= 4 && bytes.readUInt32BE(0) === 0x504b0506) return 'zip';
  if (bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b) return 'tar';
  if (bytes.length >= 262 && bytes.subarray(257, 262).toString('latin1') === 'ustar') return 'tar';
  return undefined;
}

/**
 * The entry's path inside the package, normalised (`./a//b/` → `a/b`); undefined for the
 * package's root itself.
 * @throws TributaryError `ValidationError` for a path that is absolute, leaves the package or has NUL or `\`.
 */
function entryPath(raw: string): string | undefined {
  const shown = JSON.stringify(raw);
  if (raw.includes('\0') || raw.includes('\\')) throw invalid(`package entry ${shown} has a NUL or backslash in its path`);
  if (raw.startsWith('/') || /^[A-Za-z]:/.test(raw)) throw invalid(`package entry ${shown} has an absolute path; paths must be relative to the package's top folder`);
  if (raw.split('/').includes('..')) throw invalid(`package entry ${shown} has ".." in its path (it would be written outside the package)`);
  const path = posix.normalize(raw).replace(/\/+$/, '');
  return path === '.' || path === '' ? undefined : path;
}

/** Counts entries and bytes against the limits as an archive is read. */
class Budget {
  entries = 0;
  bytes = 0;

  entry(): void {
    if (++this.entries > MAX_PACKAGE_ENTRIES) throw invalid(`the package has more than ${MAX_PACKAGE_ENTRIES} entries (files, folders and links)`);
  }

  /** Refuses `n` more bytes when they would not fit; `add` counts them. */
  check(n: number): void {
    if (this.bytes + n > MAX_UNPACKED_BYTES) throw invalid(`the package unpacks to more than ${MAX_UNPACKED_BYTES} bytes`);
  }

  add(n: number): void {
    this.check(n);
    this.bytes += n;
  }
}

function readTar(bytes: Buffer, budget: Budget): Promise<Entry[]> {
  return new Promise((resolve, reject) => {
    const entries: Entry[] = [];
    let failed = false;
    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      parser.abort(err instanceof Error ? err : new Error(String(err)));
      const message = (err as Error).message;
      // node-tar's own guard against decompression bombs, worded as ours.
      if (/decompression ratio/.test(message)) return reject(invalid(`the tarball inflates more than 1000-fold, as a decompression bomb does (${message})`));
      reject(err instanceof TributaryError ? err : invalid(`the tarball is refused: ${message}`));
    };
    const onEntry = (e: ReadEntry): void => {
      try {
        // A pax global header (git archive writes one) carries no file.
        if (e.type === 'GlobalExtendedHeader' || e.type === 'ExtendedHeader') return void e.resume();
        budget.entry();
        const path = entryPath(e.path);
        if (e.type === 'Directory') {
          if (path !== undefined) entries.push({ path, kind: 'dir' });
          return void e.resume();
        }
        if (path === undefined) throw invalid(`package entry ${JSON.stringify(e.path)} is not a folder but names the package's top folder`);
        if (e.type === 'SymbolicLink') {
          entries.push({ path, kind: 'symlink', target: e.linkpath ?? '' });
          return void e.resume();
        }
        if (e.type !== 'File' && e.type !== 'OldFile' && e.type !== 'ContiguousFile') {
          throw invalid(`package entry ${JSON.stringify(e.path)} is a ${e.type === 'Link' ? 'hard link' : e.type}: only files, folders and symbolic links are allowed`);
        }
        const chunks: Buffer[] = [];
        e.on('data', (chunk: Buffer) => {
          if (failed) return;
          try {
            budget.add(chunk.length);
            chunks.push(chunk);
          } catch (err) {
            fail(err);
          }
        });
        e.on('end', () => entries.push({ path, kind: 'file', data: Buffer.concat(chunks) }));
      } catch (err) {
        e.resume();
        fail(err);
      }
    };
    // strict: a damaged header or a truncated archive is an error, not a warning.
    const parser = new Parser({ strict: true, onReadEntry: onEntry });
    parser.on('error', fail);
    parser.on('end', () => {
      if (!failed) resolve(entries);
    });
    parser.end(bytes);
  });
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

function readZip(bytes: Buffer, budget: Budget): Promise<Entry[]> {
  return new Promise((resolve, reject) => {
    const failed = (err: unknown): void => reject(err instanceof TributaryError ? err : invalid(`the zip is refused: ${(err as Error).message} (entries must be files, folders or links with relative paths inside the package)`));
    // decodeStrings: yauzl refuses absolute paths, `..` and `\` in names itself ("absolute path: /x").
    yauzl.fromBuffer(bytes, { lazyEntries: true, decodeStrings: true, validateEntrySizes: true }, (openErr, zip) => {
      if (openErr !== null || zip === undefined) return failed(openErr);
      const entries: Entry[] = [];
      let done = false;
      const fail = (err: unknown): void => {
        if (done) return;
        done = true;
        zip.close();
        failed(err);
      };
      zip.on('error', fail);
      zip.on('end', () => {
        if (!done) resolve(entries);
      });
      zip.on('entry', (e: yauzl.Entry) => {
        try {
          budget.entry();
          // The Unix mode, when a Unix zip tool wrote the entry (high 16 bits of the external attributes).
          const type = (e.externalFileAttributes >>> 16) & S_IFMT;
          const isDir = e.fileName.endsWith('/') || type === S_IFDIR;
          const path = entryPath(e.fileName);
          if (isDir) {
            if (path !== undefined) entries.push({ path, kind: 'dir' });
            return zip.readEntry();
          }
          if (path === undefined) throw invalid(`package entry ${JSON.stringify(e.fileName)} is not a folder but names the package's top folder`);
          if (type !== 0 && type !== S_IFREG && type !== S_IFLNK) throw invalid(`package entry ${JSON.stringify(e.fileName)} is not a file, folder or symbolic link`);
          // Refused before inflating anything; the real bytes are counted too (validateEntrySizes).
          budget.check(e.uncompressedSize);
          zip.openReadStream(e, (streamErr, stream) => {
            if (streamErr !== null || stream === undefined) return fail(streamErr);
            const chunks: Buffer[] = [];
            stream.on('data', (chunk: Buffer) => {
              try {
                budget.add(chunk.length);
                chunks.push(chunk);
              } catch (err) {
                stream.destroy();
                fail(err);
              }
            });
            stream.on('error', fail);
            stream.on('end', () => {
              if (done) return;
              const data = Buffer.concat(chunks);
              entries.push(type === S_IFLNK ? { path, kind: 'symlink', target: data.toString('utf8') } : { path, kind: 'file', data });
              zip.readEntry();
            });
          });
        } catch (err) {
          fail(err);
        }
      });
      zip.readEntry();
    });
  });
}

function inside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !rel.startsWith(sep));
}

/**
 * Writes the entries under `dir`: folders and files first, symbolic links last, so that no
 * file is ever written through a link; then every link must resolve inside `dir`.
 */
async function writeEntries(entries: readonly Entry[], dir: string): Promise<void> {
  const fsError = (e: Entry, err: unknown): TributaryError => invalid(`package entry ${JSON.stringify(e.path)} cannot be unpacked (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}): does the package hold it twice, as a file and as a folder?`);
  for (const e of entries) {
    const abs = join(dir, e.path);
    try {
      if (e.kind === 'dir') await mkdir(abs, { recursive: true, mode: 0o700 });
      else if (e.kind === 'file') {
        await mkdir(dirname(abs), { recursive: true, mode: 0o700 });
        await writeFile(abs, e.data ?? Buffer.alloc(0), { mode: 0o600 });
      }
    } catch (err) {
      throw fsError(e, err);
    }
  }
  const links = entries.filter((e) => e.kind === 'symlink');
  const shown = (e: Entry): string => `package entry ${JSON.stringify(e.path)} is a symbolic link to ${JSON.stringify(e.target ?? '')}`;
  for (const e of links) {
    const target = e.target ?? '';
    if (target === '' || target.includes('\0')) throw invalid(`${shown(e)}, which is not a path`);
    if (target.startsWith('/')) throw invalid(`${shown(e)}, an absolute path: links must stay inside the package`);
    const abs = join(dir, e.path);
    try {
      await mkdir(dirname(abs), { recursive: true, mode: 0o700 });
      await symlink(target, abs);
    } catch (err) {
      throw fsError(e, err);
    }
  }
  // Checked once all exist: a link may point at another link.
  const root = await realpath(dir);
  for (const e of links) {
    const resolved = await realpath(join(dir, e.path)).catch(() => undefined);
    if (resolved === undefined) throw invalid(`${shown(e)}, which is not in the package`);
    if (!inside(root, resolved)) throw invalid(`${shown(e)}, which is outside the package`);
  }
}

/**
 * Unpacks a package into `dir`, which must not exist yet; on any failure `dir` is removed.
 * @throws TributaryError `ValidationError` (field `package`) for an archive that is not a
 * zip or tarball, is damaged, or has an unsafe entry; `PayloadTooLarge` past {@link MAX_PACKAGE_BYTES}.
 */
export async function unpackPackage(bytes: Buffer, dir: string): Promise<PackageContents> {
  if (bytes.length > MAX_PACKAGE_BYTES) throw new TributaryError('PayloadTooLarge', `the package is ${bytes.length} bytes; at most ${MAX_PACKAGE_BYTES} are allowed`, { field: 'package' });
  const format = packageFormat(bytes);
  if (format === undefined) throw invalid('the package must be a zip, a gzip-compressed tarball (.tar.gz / .tgz) or a tar');
  const budget = new Budget();
  const entries = format === 'zip' ? await readZip(bytes, budget) : await readTar(bytes, budget);
  await mkdir(dirname(dir), { recursive: true, mode: 0o700 });
  await mkdir(dir, { mode: 0o700 });
  try {
    await writeEntries(entries, dir);
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return { format, entries: budget.entries, unpackedBytes: budget.bytes };
}

/**
 * The module file of a Lambda-style `handler` (`src/app.handler` → `src/app.js`,
 * `.mjs` or `.cjs`, tried in that order) inside an unpacked package.
 * @throws TributaryError `ValidationError` (field `handler`) when there is none, or it is a link out.
 */
export async function handlerModule(dir: string, handler: string): Promise<string> {
  if (!HANDLER_RE.test(handler) || handler.split('/').some((s) => s === '.' || s === '..')) {
    throw new TributaryError('ValidationError', `handler ${JSON.stringify(handler)} must be Lambda's form: the module's path in the package without its extension, then ".handler" (e.g. index.handler, src/app.handler)`, { field: 'handler' });
  }
  const base = handler.slice(0, -'.handler'.length);
  for (const ext of MODULE_EXTENSIONS) {
    const path = join(dir, base + ext);
    const stat = await lstat(path).catch(() => undefined);
    if (stat?.isFile() === true || (stat?.isSymbolicLink() === true && inside(await realpath(dir), await realpath(path)))) return base + ext;
  }
  throw new TributaryError('ValidationError', `handler ${handler}: the package has no ${MODULE_EXTENSIONS.map((e) => base + e).join(', ')} (paths are relative to the package's top folder)`, { field: 'handler' });
}

/**
 * How Node loads `module` (a path under `root`): `.mjs` as ESM, `.cjs` as CommonJS, `.js`
 * by the `type` of the nearest `package.json` at or above its folder, up to `root`.
 */
export async function moduleTypeOf(root: string, module: string): Promise<'esm' | 'commonjs'> {
  if (module.endsWith('.mjs')) return 'esm';
  if (module.endsWith('.cjs')) return 'commonjs';
  for (let d = dirname(join(root, module)); inside(root, d); d = dirname(d)) {
    const text = await readFile(join(d, 'package.json'), 'utf8').catch(() => undefined);
    if (text !== undefined) {
      try {
        return (JSON.parse(text) as { type?: unknown }).type === 'module' ? 'esm' : 'commonjs';
      } catch {
        return 'commonjs';
      }
    }
    if (d === root) break;
  }
  return 'commonjs';
}

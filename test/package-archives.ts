/**
 * Archives for the deployment-package tests: tarballs and zips of a folder, and raw ones
 * written entry by entry with names and types unchecked, as an attacker would.
 */
import { randomBytes } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { gzipSync } from 'node:zlib';
import { create, Header } from 'tar';
import { tempDir } from './helpers.js';

/** Every file, folder and link under `dir`, as paths relative to it. */
function walk(dir: string, base = dir): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    return e.isDirectory() ? [relative(base, path), ...walk(path, base)] : [relative(base, path)];
  });
}

export async function tarball(dir: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of create({ gzip: true, cwd: dir, portable: true }, ['.'])) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

export type RawEntry = { path: string; type: 'File' | 'Directory' | 'SymbolicLink' | 'Link' | 'FIFO'; data?: Buffer; linkpath?: string };

/** A tarball written entry by entry, as an attacker would, names unchecked. */
export function rawTar(entries: RawEntry[]): Buffer {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const data = e.data ?? Buffer.alloc(0);
    const block = Buffer.alloc(512);
    new Header({ path: e.path, type: e.type, size: data.length, mode: 0o644, uid: 0, gid: 0, mtime: new Date(0), ...(e.linkpath === undefined ? {} : { linkpath: e.linkpath }) }).encode(block, 0);
    blocks.push(block, data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return gzipSync(Buffer.concat(blocks));
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (const byte of b) c = (CRC_TABLE[(c ^ byte) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A zip (stored, no compression) of the given entries, names unchecked; `mode` is the Unix mode (type bits included). */
export function rawZip(entries: Array<{ path: string; data?: Buffer; mode?: number }>): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(e.path, 'utf8');
    const crc = crc32(data);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0x800, 6); // UTF-8 names
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(data.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(name.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(0x031e, 4); // made by Unix
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(0x800, 8);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(data.length, 20);
    central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(((e.mode ?? (e.path.endsWith('/') ? 0o40755 : 0o100644)) << 16) >>> 0, 38);
    central.writeUInt32LE(offset, 42);
    locals.push(local, name, data);
    centrals.push(central, name);
    offset += local.length + name.length + data.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}

/** The zip of a folder, links kept as links. */
export function zipOf(dir: string): Buffer {
  return rawZip(
    walk(dir).map((path) => {
      const abs = join(dir, path);
      const stat = lstatSync(abs);
      if (stat.isSymbolicLink()) return { path, mode: 0o120777, data: Buffer.from(readlinkSync(abs)) };
      if (stat.isDirectory()) return { path: `${path}/` };
      return { path, data: readFileSync(abs) };
    }),
  );
}

/**
 * A package of `index.mjs` (`handler`'s source) and `blob.bin` of `blobBytes` random
 * (incompressible) bytes, so the archive is about that large.
 */
export async function blobPackage(handler: string, blobBytes: number): Promise<Buffer> {
  const src = tempDir('tributary-blob-pkg-');
  try {
    writeFileSync(join(src.path, 'index.mjs'), handler);
    writeFileSync(join(src.path, 'blob.bin'), randomBytes(blobBytes));
    return await tarball(src.path);
  } finally {
    src.cleanup();
  }
}

/**
 * Deployment packages through the whole app (real HTTP, real function processes, LevelDB
 * in a temporary folder) and the built CLI: a folder with package.json and node_modules
 * (a copy of the real `@aws-sdk/util-dynamodb` and a tiny local package) deployed as a
 * tarball, as a zip and with `fn deploy DIR`, run with its dependencies; `fn test` resolves
 * a folder's node_modules; unsafe archives are refused with 400 and write nothing outside.
 */
import { cpSync, existsSync, mkdirSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, startApp, type RunningApp } from './app-harness.js';
import { cliCwd, runCli } from './cli-run.js';
import { tempDir } from './helpers.js';
import { rawTar, rawZip, tarball, zipOf, type RawEntry } from './package-archives.js';
import { ROOT } from './process.js';
import { MAX_PACKAGE_BYTES, MAX_PACKAGE_ENTRIES, MAX_UNPACKED_BYTES } from '../functions/package.js';


interface ErrorBody {
  error: { code: string; message: string; field?: string };
}

/** A function folder: an ES module handler importing a real npm package and a local one (reached through an in-package link). */
function makeFunctionFolder(dir: string): void {
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'pkg-fn', type: 'module', dependencies: { '@aws-sdk/util-dynamodb': '*', tiny: '*' } }));
  writeFileSync(
    join(dir, 'index.js'),
    [
      "import { marshall } from '@aws-sdk/util-dynamodb';",
      "import { shout } from 'tiny';",
      'export async function handler(event) {',
      '  return { item: marshall({ id: event.id, n: 1 }), shout: shout(event.id) };',
      '}',
      '',
    ].join('\n'),
  );
  mkdirSync(join(dir, 'node_modules', '@aws-sdk'), { recursive: true });
  cpSync(join(ROOT, 'node_modules', '@aws-sdk', 'util-dynamodb'), join(dir, 'node_modules', '@aws-sdk', 'util-dynamodb'), { recursive: true });
  cpSync(join(ROOT, 'node_modules', 'tslib'), join(dir, 'node_modules', 'tslib'), { recursive: true });
  mkdirSync(join(dir, 'lib', 'tiny'), { recursive: true });
  writeFileSync(join(dir, 'lib', 'tiny', 'package.json'), JSON.stringify({ name: 'tiny', main: 'index.cjs' }));
  writeFileSync(join(dir, 'lib', 'tiny', 'index.cjs'), 'exports.shout = (s) => String(s).toUpperCase() + "!";\n');
  // As npm links a workspace package: a relative link inside the package.
  symlinkSync(join('..', 'lib', 'tiny'), join(dir, 'node_modules', 'tiny'));
}

const EXPECTED = { item: { id: { S: 'abc' }, n: { N: '1' } }, shout: 'ABC!' };

afterAll(() => cliCwd.cleanup());

describe('deployment packages over the API', () => {
  let running: RunningApp;
  let base: string;
  const folder = tempDir('tributary-pkg-');
  const outside = tempDir('tributary-outside-');
  const deploy = (name: string, body: unknown) => call(base, 'PUT', `/v1/functions/${name}`, body);
  const invoke = async (name: string, event: unknown) => {
    const res = await call(base, 'POST', `/v1/functions/${name}/invoke`, event);
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    return res.body as { status: string; result?: unknown; errorMessage?: string };
  };
  const refused = async (name: string, archive: Buffer, pattern: RegExp, status = 400) => {
    const res = await deploy(name, { package: archive.toString('base64') });
    expect(res.status, JSON.stringify(res.body)).toBe(status);
    const { error } = res.body as ErrorBody;
    expect(error.field).toBe('package');
    expect(error.message).toMatch(pattern);
    // Nothing of it is kept, nor written outside the function folders.
    expect((await call(base, 'GET', `/v1/functions/${name}`)).status).toBe(404);
    expect(readdirSync(outside.path)).toEqual([]);
    return error;
  };

  beforeAll(async () => {
    makeFunctionFolder(folder.path);
    running = await startApp();
    base = running.addresses.http;
  });
  afterAll(async () => {
    await running?.destroy();
    folder.cleanup();
    outside.cleanup();
  });

  it('deploys a tarball with node_modules and runs the handler with its dependencies', async () => {
    const res = await deploy('tar-fn', { package: (await tarball(folder.path)).toString('base64') });
    expect(res.status, JSON.stringify(res.body)).toBe(201);
    expect(res.body).toMatchObject({ name: 'tar-fn', source: 'api', version: 1, moduleType: 'esm', package: { handler: 'index.handler', module: 'index.js', format: 'tar', entries: expect.any(Number), unpackedBytes: expect.any(Number) } });
    expect(await invoke('tar-fn', { id: 'abc' })).toMatchObject({ status: 'ok', result: EXPECTED });
    expect((await call(base, 'GET', '/v1/functions/tar-fn')).body).toMatchObject({ package: { module: 'index.js' }, versions: [{ version: 1 }] });
  });

  it('deploys a zip with a handler in a subfolder (CommonJS by its package.json), and refuses a handler the package lacks', async () => {
    const dir = tempDir('tributary-pkg-zip-');
    try {
      cpSync(folder.path, dir.path, { recursive: true, verbatimSymlinks: true });
      mkdirSync(join(dir.path, 'src'));
      writeFileSync(join(dir.path, 'src', 'package.json'), JSON.stringify({ type: 'commonjs' }));
      writeFileSync(join(dir.path, 'src', 'app.js'), "const { unmarshall } = require('@aws-sdk/util-dynamodb');\nexports.handler = async (e) => unmarshall(e.item);\n");
      const zip = zipOf(dir.path);
      const res = await deploy('zip-fn', { package: zip.toString('base64'), handler: 'src/app.handler' });
      expect(res.status, JSON.stringify(res.body)).toBe(201);
      expect(res.body).toMatchObject({ moduleType: 'commonjs', package: { handler: 'src/app.handler', module: 'src/app.js', format: 'zip' } });
      expect(await invoke('zip-fn', { item: { id: { S: 'x' }, n: { N: '2' } } })).toMatchObject({ status: 'ok', result: { id: 'x', n: 2 } });

      const missing = await deploy('zip-fn', { package: zip.toString('base64'), handler: 'lib/nope.handler' });
      expect(missing.status).toBe(400);
      expect((missing.body as ErrorBody).error).toMatchObject({ field: 'handler', message: expect.stringContaining('lib/nope.js, lib/nope.mjs, lib/nope.cjs') });
      expect((await deploy('zip-fn', { package: zip.toString('base64'), handler: '../x.handler' })).status).toBe(400);
      expect((await deploy('zip-fn', { package: zip.toString('base64'), code: 'export const handler = 1' })).status).toBe(400);
      expect(((await deploy('zip-fn', { package: '@@not base64@@' })).body as ErrorBody).error).toMatchObject({ field: 'package', message: expect.stringContaining('base64') });
      expect(((await deploy('zip-fn', { package: Buffer.from('plain text').toString('base64') })).body as ErrorBody).error.message).toContain('must be a zip');
    } finally {
      dir.cleanup();
    }
  });

  it('keeps a package larger than one metadata record in chunks, and unpacks it again from the database after a restart', async () => {
    const dir = tempDir('tributary-pkg-big-');
    try {
      cpSync(folder.path, dir.path, { recursive: true, verbatimSymlinks: true });
      // Incompressible: the archive is larger than one 6 MiB record of the metadata topic.
      const blob = Buffer.alloc(7 * 1024 * 1024);
      for (let i = 0; i < blob.length; i += 4) blob.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
      writeFileSync(join(dir.path, 'blob.bin'), blob);
      const archive = await tarball(dir.path);
      expect(archive.length).toBeGreaterThan(6 * 1024 * 1024);
      const res = await deploy('big-fn', { package: archive.toString('base64') });
      expect(res.status, JSON.stringify(res.body)).toBe(201);
      const dataDir = running.dataDir;
      await running.stop();
      rmSync(join(dataDir, 'functions', 'big-fn'), { recursive: true, force: true });
      running = await startApp({ dataDir });
      base = running.addresses.http;
      // Two invocations at once both need it unpacked: they share one unpacking.
      const both = await Promise.all([invoke('big-fn', { id: 'abc' }), invoke('big-fn', { id: 'abc' })]);
      for (const out of both) expect(out).toMatchObject({ status: 'ok', result: EXPECTED });
      expect(existsSync(join(dataDir, 'functions', 'big-fn', 'v1', 'package', 'blob.bin'))).toBe(true);
      expect(await invoke('tar-fn', { id: 'abc' })).toMatchObject({ status: 'ok', result: EXPECTED });
    } finally {
      dir.cleanup();
    }
  });

  it('refuses path traversal, absolute paths, links out, hard links and devices with 400', async () => {
    const evil = join(outside.path, 'evil.txt');
    const file = (path: string): RawEntry => ({ path, type: 'File', data: Buffer.from('export const handler = async () => 1;') });
    await refused('t-dotdot', rawTar([file('index.mjs'), file(`../${relative(dirname(outside.path), evil)}`)]), /has "\.\." in its path/);
    await refused('t-dotdot2', rawTar([file('index.mjs'), file('a/../../../x')]), /has "\.\." in its path/);
    await refused('t-abs', rawTar([file('index.mjs'), file(evil)]), /absolute path/);
    await refused('t-link-out', rawTar([file('index.mjs'), { path: 'node_modules/x', type: 'SymbolicLink', linkpath: '../../../../../../../../tmp' }]), /symbolic link to .*outside the package|not in the package/);
    await refused('t-link-abs', rawTar([file('index.mjs'), { path: 'x', type: 'SymbolicLink', linkpath: outside.path }]), /absolute path: links must stay inside the package/);
    // A link first, then a file written "through" it: the link is refused, nothing lands outside.
    await refused('t-link-write', rawTar([{ path: 'out', type: 'SymbolicLink', linkpath: outside.path }, file('out/evil.txt'), file('index.mjs')]), /absolute path/);
    await refused('t-link-chain', rawTar([file('index.mjs'), { path: 'a', type: 'SymbolicLink', linkpath: '.' }, { path: 'b/c', type: 'SymbolicLink', linkpath: '../a/..' }]), /outside the package/);
    await refused('t-hard', rawTar([file('index.mjs'), { path: 'h', type: 'Link', linkpath: '/etc/passwd' }]), /hard link/);
    await refused('t-fifo', rawTar([file('index.mjs'), { path: 'f', type: 'FIFO' }]), /FIFO/);
    const js = Buffer.from('exports.handler = async () => 1;');
    await refused('z-dotdot', rawZip([{ path: 'index.js', data: js }, { path: '../evil.txt', data: js }]), /zip is refused: invalid relative path: \.\.\/evil\.txt/);
    await refused('z-abs', rawZip([{ path: 'index.js', data: js }, { path: evil, data: js }]), /zip is refused: absolute path/);
    await refused('z-link-out', rawZip([{ path: 'index.js', data: js }, { path: 'up', mode: 0o120777, data: Buffer.from('../../../..') }]), /outside the package|not in the package/);
    expect(existsSync(evil)).toBe(false);
  });

  it('refuses a package with too many entries, one that unpacks too large, and one too large to upload', async () => {
    const many = Array.from({ length: MAX_PACKAGE_ENTRIES + 1 }, (_, i): RawEntry => ({ path: `f/${i}`, type: 'File' }));
    await refused('many', rawTar(many), new RegExp(`more than ${MAX_PACKAGE_ENTRIES} entries`));
    // Under 1 MiB that inflates past the limit, 200-fold (a repeated random KiB) ...
    const block = randomBytes(1024);
    const large = Buffer.alloc(MAX_UNPACKED_BYTES + 1024);
    for (let i = 0; i < large.length; i += 1024) block.copy(large, i);
    await refused('large', rawTar([{ path: 'index.mjs', type: 'File', data: large }]), new RegExp(`unpacks to more than ${MAX_UNPACKED_BYTES} bytes`));
    // ... and a gzip bomb, zeros inflating 1000-fold.
    await refused('bomb', rawTar([{ path: 'index.mjs', type: 'File', data: Buffer.alloc(MAX_UNPACKED_BYTES) }]), /inflates more than 1000-fold/);
    // A zip entry declaring (deflated) more than the limit is refused before inflating.
    const zipBomb = rawZip([{ path: 'a', data: Buffer.alloc(1) }]);
    const central = zipBomb.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
    zipBomb.writeUInt16LE(8, central + 10);
    zipBomb.writeUInt32LE(MAX_UNPACKED_BYTES + 1, central + 24);
    await refused('zbomb', zipBomb, new RegExp(`unpacks to more than ${MAX_UNPACKED_BYTES} bytes`));
    const small = rawTar([{ path: 'index.mjs', type: 'File' }]);
    const huge = Buffer.concat([small, Buffer.alloc(MAX_PACKAGE_BYTES + 1 - small.length)]);
    await refused('huge', huge, /at most/, 413);
  });

  it('fn deploy DIR packs the folder and deploys it as a package', async () => {
    const res = await runCli(['fn', 'deploy', folder.path, '--name', 'cli-pkg', '--url', base]);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toMatch(/deployed cli-pkg version 1 \(esm, package of \d+ entries, \d+ bytes unpacked, handler index\.js/);
    expect(await invoke('cli-pkg', { id: 'abc' })).toMatchObject({ status: 'ok', result: EXPECTED });
    const list = await runCli(['fn', 'list', '--url', base]);
    expect(list.stdout).toMatch(/^cli-pkg\s+api package\s+1\s+esm/m);
    // The file alone deploys, without its node_modules, and says so.
    const alone = await runCli(['fn', 'deploy', join(folder.path, 'index.js'), '--name', 'cli-alone', '--url', base]);
    expect(alone.code, alone.stderr).toBe(0);
    expect(alone.stderr).toContain(`will not resolve on the server; to take them along, deploy the folder: tributary fn deploy ${folder.path} --handler index.handler`);
    expect(await invoke('cli-alone', { id: 'abc' })).toMatchObject({ status: 'error', errorMessage: expect.stringContaining('@aws-sdk/util-dynamodb') });
  });
});

describe('tributary fn test with packages', () => {
  const folder = tempDir('tributary-pkg-test-');
  beforeAll(() => makeFunctionFolder(folder.path));
  afterAll(() => folder.cleanup());

  it('runs a file of a folder in place, its imports resolving in the folder\'s node_modules', async () => {
    const event = join(folder.path, 'event.json');
    writeFileSync(event, JSON.stringify({ id: 'abc' }));
    const res = await runCli(['fn', 'test', join(folder.path, 'index.js'), '--event', event]);
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout)).toEqual(EXPECTED);
    expect(res.stderr).toContain(`tributary fn deploy ${folder.path} --handler index.handler`);
  });

  it('cannot load a native addon of the package (the permission model refuses it before reading the file)', async () => {
    const dir = tempDir('tributary-pkg-addon-');
    try {
      writeFileSync(join(dir.path, 'package.json'), JSON.stringify({ type: 'module' }));
      writeFileSync(join(dir.path, 'addon.node'), 'not even an addon');
      writeFileSync(join(dir.path, 'index.js'), "import { createRequire } from 'node:module';\nexport async function handler() { return typeof createRequire(import.meta.url)('./addon.node'); }\n");
      const res = await runCli(['fn', 'test', dir.path, '--json']);
      expect(res.code).toBe(1);
      expect(JSON.parse(res.stdout)).toMatchObject({ status: 'error', errorMessage: expect.stringContaining('ERR_DLOPEN_DISABLED') });
    } finally {
      dir.cleanup();
    }
  });

  it('runs a folder with --handler as a deploy of it would', async () => {
    const res = await runCli(['fn', 'test', folder.path, '--handler', 'index.handler', '--event', '-', '--json'], { input: '{"id":"abc"}' });
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout)).toMatchObject({ status: 'ok', result: EXPECTED });
    const missing = await runCli(['fn', 'test', folder.path, '--handler', 'nope.handler']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('nope.js, nope.mjs, nope.cjs');
  });
});

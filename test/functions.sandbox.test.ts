/**
 * The function sandbox, through a real server process, real HTTP and real function
 * processes: what a deployed handler can and cannot reach (issue 17, items 1 and 13).
 *
 * - A function process holds no descriptor but its stdio and IPC channel: none of the
 *   database's files (LevelDB opens them without O_CLOEXEC, so every fork inherits them)
 *   and no regular file at all; a handler that writes to the numbers the server holds
 *   them under, or into its own code folder, fails.
 * - `node:sqlite` cannot be imported; network access is the function's `network` setting,
 *   with the same meaning on every Node version.
 * - Broken code does not deploy: a syntax error or a module without a `handler` export is
 *   a 400 naming file, line and column; a runtime error keeps its stack.
 *
 * Runs on whatever Node runs vitest (the server and its function processes use the same
 * binary), e.g. `/opt/nodes/n26/package/bin/node node_modules/vitest/vitest.mjs run test/functions.sandbox.test.ts`.
 */
import { createSocket } from 'node:dgram';
import { createServer, type Server, type Socket } from 'node:net';
import { readdirSync, readlinkSync, realpathSync, statSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call } from './app-harness.js';
import { tempDir } from './helpers.js';
import { startServerProcess, type ServerProcess } from './process.js';

/** Each descriptor of a live process: number → where it points (`socket:[…]`, a path, …). */
function descriptors(pid: number): Map<number, string> {
  const out = new Map<number, string>();
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.set(Number(name), readlinkSync(`/proc/${pid}/fd/${name}`));
    } catch {
      // closed while listing
    }
  }
  return out;
}

const PROBE = `
import { fstatSync, writeFileSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const code = (f) => { try { f(); return 'ok'; } catch (e) { return e.code ?? e.message; } };

export async function handler(event) {
  // What an attacker would do: write to every descriptor that is a file.
  const fds = {};
  for (const fd of event.fds) {
    let stats;
    try { stats = fstatSync(fd); } catch (e) { fds[fd] = e.code; continue; }
    fds[fd] = stats.isFile() ? code(() => writeSync(fd, Buffer.alloc(40960, 0x41))) : 'not a file';
  }
  const own = fileURLToPath(import.meta.url);
  let sqlite;
  try { await import('node:sqlite'); sqlite = 'loaded'; } catch (e) { sqlite = e.code; }
  return {
    pid: process.pid,
    node: process.version,
    fds,
    writeOwnFile: code(() => writeFileSync(own, 'export const handler = () => "planted";')),
    writeOwnFolder: code(() => writeFileSync(join(dirname(own), 'planted.mjs'), 'x')),
    sqlite,
  };
}
`;

/** Tries each kind of socket; each entry is what happened (`connected`, `listening`, ...) or the error code. */
const NETWORK = `
import dgram from 'node:dgram';
import dns from 'node:dns';
import net from 'node:net';

const attempt = (start) => new Promise((resolve) => {
  try { start(resolve, (e) => resolve(e?.code ?? e?.cause?.code ?? String(e))); } catch (e) { resolve(e.code ?? String(e)); }
});

export async function handler({ tcpPort, udpPort }) {
  return {
    tcp: await attempt((ok, fail) => { const s = net.connect(tcpPort, '127.0.0.1', () => { s.destroy(); ok('connected'); }); s.on('error', fail); }),
    fetch: await attempt((ok, fail) => fetch('http://127.0.0.1:' + tcpPort + '/').then(() => ok('fetched'), (e) => fail(e.cause ?? e))),
    listen: await attempt((ok, fail) => { const s = net.createServer(); s.on('error', fail); s.listen(0, '127.0.0.1', () => { s.close(); ok('listening'); }); }),
    udp: await attempt((ok, fail) => { const s = dgram.createSocket('udp4'); s.on('error', fail); s.send('x', udpPort, '127.0.0.1', (e) => { s.close(); e ? fail(e) : ok('sent'); }); }),
    dns: await attempt((ok, fail) => dns.lookup('localhost', (e) => (e ? fail(e) : ok('resolved')))),
  };
}
`;

describe('the function sandbox (real server process)', () => {
  const dir = tempDir('tributary-sandbox-');
  let server: ServerProcess;
  let base: string;
  let dataDir: string;
  let tcp: Server;
  let tcpPort: number;
  const sockets = new Set<Socket>();
  const udp = createSocket('udp4');
  let udpPort: number;

  beforeAll(async () => {
    dataDir = realpathSync(dir.path);
    server = await startServerProcess(['--data-dir', dataDir]);
    base = server.httpUrl;
    tcp = createServer((s) => {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
      s.end('HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
    });
    await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
    tcpPort = (tcp.address() as { port: number }).port;
    await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve));
    udpPort = udp.address().port;
  }, 30_000);

  afterAll(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => tcp?.close(resolve));
    await server?.signal('SIGTERM');
    udp.close();
    dir.cleanup();
  });

  const deploy = (name: string, body: Record<string, unknown>) => call(base, 'PUT', `/v1/functions/${name}`, body);
  const invoke = (name: string, event: unknown) => call(base, 'POST', `/v1/functions/${name}/invoke`, event);

  it('a function process holds no descriptor but stdio and IPC, and cannot write the data directory or use node:sqlite', async () => {
    const now = Date.now();
    const readings = Array.from({ length: 100 }, (_, i) => ({ ts: now - 1000 + i, values: { t: i } }));
    expect((await call(base, 'POST', '/v1/devices/d1/telemetry', readings)).status).toBe(201);
    const serverPid = server.child.pid as number;
    // The server does hold the database's files: what a fork would inherit.
    const dbFds = [...descriptors(serverPid)].filter(([, target]) => target.startsWith(`${dataDir}/`)).map(([fd]) => fd);
    const dbFiles = [...descriptors(serverPid).values()].filter((t) => t.startsWith(`${dataDir}/`));
    expect(dbFiles.some((t) => t.endsWith('/LOCK'))).toBe(true);
    expect(dbFiles.some((t) => /\/\d+\.log$/.test(t))).toBe(true);
    expect(dbFiles.some((t) => /\/MANIFEST-\d+$/.test(t))).toBe(true);

    expect((await deploy('probe', { code: PROBE })).status).toBe(201);
    const every = Array.from({ length: 256 }, (_, i) => i + 3);
    const res = await invoke('probe', { fds: [...new Set([...dbFds, ...every])] });
    expect(res.body).toMatchObject({ status: 'ok' });
    const result = (res.body as { result: { pid: number; node: string; fds: Record<string, string>; writeOwnFile: string; writeOwnFolder: string; sqlite: string } }).result;

    // The function ran on the Node that runs this test (the server's own binary).
    expect(result.node).toBe(process.version);
    // The process is warm (kept for the next invocation): list what it holds now.
    const held = descriptors(result.pid);
    expect(held.size).toBeGreaterThan(3);
    for (const [fd, target] of held) {
      expect(target.startsWith(dataDir), `fd ${fd} -> ${target}`).toBe(false);
      // Sockets (stdout, stderr, IPC), pipes and event descriptors (Node's own, and pipes
      // whatever started the test may pass down), and /dev/null (stdin, and one Node opens).
      expect(/^(socket|pipe|anon_inode):/.test(target) || target === '/dev/null', `fd ${fd} -> ${target}`).toBe(true);
      if (target === '/dev/null') expect(statSync(`/proc/${result.pid}/fd/${fd}`).isCharacterDevice()).toBe(true);
    }
    // No descriptor of the handler's was a file it could write to.
    for (const [fd, outcome] of Object.entries(result.fds)) expect(['EBADF', 'not a file'], `fd ${fd}`).toContain(outcome);
    expect(result.writeOwnFile).toBe('ERR_ACCESS_DENIED');
    expect(result.writeOwnFolder).toBe('ERR_ACCESS_DENIED');
    // Node 20 has no node:sqlite; later versions have it turned off.
    expect(result.sqlite).toBe('ERR_UNKNOWN_BUILTIN_MODULE');

    // What the issue saw: after such writes the next start lost acknowledged readings (or
    // did not start). Every reading is still there.
    expect(await server.signal('SIGTERM')).toBe(0);
    server = await startServerProcess(['--data-dir', dataDir]);
    base = server.httpUrl;
    const after = await call(base, 'GET', `/v1/devices/d1/telemetry?from=${now - 2000}&limit=1000`);
    expect((after.body as { items: unknown[] }).items).toHaveLength(100);
  }, 60_000);

  it('network is a setting of each function: on by default, off refuses every kind of socket', async () => {
    expect((await deploy('net-on', { code: NETWORK })).body).toMatchObject({ network: true });
    expect((await deploy('net-off', { code: NETWORK, network: false })).body).toMatchObject({ network: false });
    const on = await invoke('net-on', { tcpPort, udpPort });
    expect(on.body).toMatchObject({ status: 'ok', result: { tcp: 'connected', fetch: 'fetched', listen: 'listening', udp: 'sent', dns: 'resolved' } });
    const off = await invoke('net-off', { tcpPort, udpPort });
    const denied = 'ERR_ACCESS_DENIED';
    expect(off.body).toMatchObject({ status: 'ok', result: { tcp: denied, fetch: denied, listen: denied, udp: denied, dns: denied } });
    expect((await call(base, 'GET', '/v1/functions/net-off')).body).toMatchObject({ network: false });
    expect((await deploy('net-bad', { code: NETWORK, network: 'no' })).status).toBe(400);
  }, 60_000);

  it('refuses code that does not parse, naming file, line and column', async () => {
    const esm = await deploy('broken', { code: 'export async function handler() {\n  const x = 1;\n  return foo(;\n}\n' });
    expect(esm.status).toBe(400);
    expect(esm.body).toEqual({ error: { code: 'InvalidFunctionCode', field: 'code', message: expect.stringMatching(/^index\.mjs:3:14: SyntaxError: Unexpected token/) } });
    const cjs = await deploy('broken', { code: "exports.handler = async () => {\n  return { a: 1 ;\n};\n", moduleType: 'commonjs' });
    expect(cjs.status).toBe(400);
    expect(cjs.body).toMatchObject({ error: { code: 'InvalidFunctionCode', message: expect.stringMatching(/^index\.cjs:2:\d+: SyntaxError: /) } });
    // Nothing was deployed.
    expect((await call(base, 'GET', '/v1/functions/broken')).status).toBe(404);
  }, 60_000);

  it('refuses a module without a handler export, and accepts the forms that have one', async () => {
    const none = await deploy('nohandler', { code: 'export async function handle(event) { return event; }\n' });
    expect(none.status).toBe(400);
    expect(none.body).toMatchObject({ error: { code: 'InvalidFunctionCode', field: 'code', message: expect.stringContaining('index.mjs does not export a function named "handler"') } });
    const cjsNone = await deploy('nohandler', { code: 'module.exports = { run: async () => 1 };\n' });
    expect(cjsNone.body).toMatchObject({ error: { code: 'InvalidFunctionCode', message: expect.stringContaining('index.cjs does not export') } });
    // Forms the lexers cannot settle are left to the first invocation, which still works.
    const objectForm = await deploy('cjs-object', { code: 'const h = async () => 42;\nmodule.exports = { other: 1, handler: h };\n' });
    expect(objectForm.status).toBe(201);
    expect((await invoke('cjs-object', {})).body).toMatchObject({ status: 'ok', result: 42 });
    expect((await deploy('esm-default', { code: 'export default { handler: async () => 7 };\n' })).status).toBe(201);
    expect((await invoke('esm-default', {})).body).toMatchObject({ status: 'ok', result: 7 });
  }, 60_000);

  it('keeps the stack of an error thrown at run time', async () => {
    expect((await deploy('thrower', { code: 'export async function handler() {\n  return inner();\n}\nfunction inner() {\n  throw new TypeError("bad input");\n}\n' })).status).toBe(201);
    const res = await invoke('thrower', {});
    expect(res.body).toMatchObject({ status: 'error', errorType: 'TypeError', errorMessage: 'bad input' });
    const logs = (res.body as { logs: { message: string }[] }).logs.map((l) => l.message).join('\n');
    expect(logs).toMatch(/TypeError: bad input\n\s+at inner \(file:\/\/\S+\/index\.mjs:5:9\)\n\s+at handler \(file:\/\/\S+\/index\.mjs:2:10\)/);
  }, 60_000);
});

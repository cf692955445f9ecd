import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../test/helpers.js';
import { CliError, EXIT } from './exit.js';
import { clientFrom, exitCodeFor } from './http-client.js';

/** A stand-in server that answers what the test says and records the request headers. */
let seen: IncomingHttpHeaders = {};
let answer: { status: number; body: string } = { status: 200, body: '{"items":[],"nextCursor":null}' };
const server = createServer((req, res) => {
  seen = req.headers;
  res.writeHead(answer.status, { 'content-type': 'application/json' }).end(answer.body);
});
let url: string;
const dir = tempDir();

beforeAll(async () => {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  writeFileSync(join(dir.path, 'admin.key'), 'tak_fromfile\n');
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  dir.cleanup();
});

describe('clientFrom', () => {
  it('takes the key from --api-key, then TRIBUTARY_API_KEY, then <data-dir>/admin.key', async () => {
    const env = { TRIBUTARY_URL: url, TRIBUTARY_API_KEY: 'tak_fromenv', TRIBUTARY_DATA_DIR: dir.path };
    await clientFrom({ apiKey: 'tak_fromflag' }, env).request('GET', '/devices');
    expect(seen.authorization).toBe('Bearer tak_fromflag');
    await clientFrom({}, env).request('GET', '/devices');
    expect(seen.authorization).toBe('Bearer tak_fromenv');
    await clientFrom({}, { ...env, TRIBUTARY_API_KEY: undefined }).request('GET', '/devices');
    expect(seen.authorization).toBe('Bearer tak_fromfile');
    await clientFrom({ url, dataDir: join(dir.path, 'none') }, {}).request('GET', '/devices');
    expect(seen.authorization).toBeUndefined();
  });

  it('never sends ./data/admin.key to a server that is not on loopback', async () => {
    const cwd = process.cwd();
    process.chdir(dir.path);
    try {
      mkdirSync(join(dir.path, 'data'), { recursive: true });
      writeFileSync(join(dir.path, 'data', 'admin.key'), 'tak_local\n');
      await clientFrom({ url }, {}).request('GET', '/devices');
      expect(seen.authorization).toBe('Bearer tak_local');
      expect(clientFrom({ url: 'https://tributary.example.com' }, {}).keySource).toBe('none');
      // Named on purpose, the data directory's key goes wherever --url says.
      expect(clientFrom({ url: 'https://tributary.example.com', dataDir: 'data' }, {}).keySource).toBe('file');
    } finally {
      process.chdir(cwd);
    }
  });

  it('turns an API error body into one line with the code, the message and the field, and an exit code', async () => {
    answer = { status: 400, body: JSON.stringify({ error: { code: 'InvalidParameter', message: 'from is bad', field: 'from' } }) };
    const err = await clientFrom({ url, dataDir: dir.path }, {}).request('GET', '/devices').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CliError);
    expect(err).toMatchObject({ message: 'InvalidParameter: from is bad (field from)', exitCode: EXIT.usage });

    answer = { status: 502, body: '<html>bad gateway</html>' };
    await expect(clientFrom({ url }, {}).request('GET', '/devices')).rejects.toMatchObject({ message: 'GET /v1/devices answered HTTP 502: <html>bad gateway</html>', exitCode: EXIT.failure });
  });

  it('refuses a --url that is not http(s) as a usage error', () => {
    expect(() => clientFrom({ url: 'mqtt://127.0.0.1:1883' }, {})).toThrow(/--url must be an http\(s\) URL/);
    expect(() => clientFrom({ url: 'not a url' }, {})).toThrow(CliError);
  });
});

describe('exitCodeFor', () => {
  it('maps statuses to the documented exit codes', () => {
    expect([400, 401, 403, 404, 409, 413, 429, 500, 503].map(exitCodeFor)).toEqual([2, 4, 4, 3, 1, 2, 1, 1, 1]);
  });
});

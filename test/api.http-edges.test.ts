/**
 * What the HTTP server answers before and around routing, over real sockets: slow and
 * oversized requests, methods the parser refuses or a path lacks, bodies nested too deep
 * to serialize, and bodies of the wrong JSON type (validated, never coerced). Every answer
 * is in the API's error envelope.
 */
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KEPT_PAYLOAD_BYTES } from '../ingest/rejects-log.js';
import { call, startApp, type RunningApp } from './app-harness.js';

let running: RunningApp;
let base: string;
let port: number;

/** A short timeout, so the slow-client tests end quickly; no test measures it. */
const REQUEST_TIMEOUT_MS = 400;

beforeAll(async () => {
  running = await startApp({ httpRequestTimeoutMs: REQUEST_TIMEOUT_MS });
  base = running.addresses.http;
  port = Number(new URL(base).port);
});
afterAll(async () => {
  await running.destroy();
});

interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: unknown;
  /** The server closed the connection. */
  closed: boolean;
}

/**
 * Sends `head` on a raw socket, then (with `drip`) one more byte every 50 ms until the
 * server answers; resolves with the parsed answer once the server closes the socket.
 */
function rawRequest(head: string, drip = false): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1');
    let text = '';
    let dripper: NodeJS.Timeout | undefined;
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (text.includes('\r\n\r\n')) clearInterval(dripper);
    });
    // A reset after the answer arrived (the server stops reading) changes nothing here.
    socket.on('error', () => {});
    socket.on('close', () => {
      clearInterval(dripper);
      const [top = '', ...rest] = text.split('\r\n\r\n');
      const [statusLine = '', ...headerLines] = top.split('\r\n');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine)?.[1]);
      if (!Number.isInteger(status)) return reject(new Error(`no HTTP answer: ${JSON.stringify(text)}`));
      const headers = Object.fromEntries(headerLines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
      resolve({ status, headers, body: JSON.parse(rest.join('\r\n\r\n')), closed: true });
    });
    socket.write(head);
    if (drip) dripper = setInterval(() => socket.write('1'), 50);
  });
}

describe('slow and oversized requests', () => {
  it('answers a body dripped slower than the request timeout with 408 in the envelope, and closes', async () => {
    const res = await rawRequest(`POST /v1/devices/slow/telemetry HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n[`, true);
    expect(res.status).toBe(408);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.body).toEqual({ error: { code: 'RequestTimeout', message: expect.stringContaining(`${REQUEST_TIMEOUT_MS} ms`) } });
    expect(res.closed).toBe(true);
    // Nothing of it was written.
    expect((await call(base, 'GET', '/v1/devices/slow')).status).toBe(404);
  });

  it('answers headers that never end with 408 too', async () => {
    const res = await rawRequest('GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ', true);
    expect(res.status).toBe(408);
    expect(res.body).toMatchObject({ error: { code: 'RequestTimeout' } });
  });

  it('answers headers over the size limit with 431 in the envelope', async () => {
    const res = await rawRequest(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    expect(res.status).toBe(431);
    expect(res.body).toEqual({ error: { code: 'HeadersTooLarge', message: expect.stringMatching(/headers exceed \d+ bytes/) } });
  });

  it('keeps serving requests sent in time', async () => {
    expect((await call(base, 'GET', '/healthz')).status).toBe(200);
  });
});

describe('methods', () => {
  it('answers a method the HTTP parser does not know with 400 in the envelope', async () => {
    const res = await rawRequest('FROB /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    expect(res.status).toBe(400);
    expect(res.body).toEqual({ error: { code: 'MalformedRequest', message: expect.any(String) } });
  });

  it('answers a known method a path lacks with 405 and Allow', async () => {
    const res = await fetch(`${base}/healthz`, { method: 'PUT' });
    expect(res.status).toBe(405);
    expect(res.headers.get('allow')?.split(', ').sort()).toEqual(['GET', 'HEAD']);
    expect(await res.json()).toEqual({ error: { code: 'MethodNotAllowed', message: expect.stringContaining('GET, HEAD') } });
    const withParams = await fetch(`${base}/v1/devices/d-405/telemetry`, { method: 'DELETE' });
    expect(withParams.status).toBe(405);
    expect(withParams.headers.get('allow')?.split(', ').sort()).toEqual(['GET', 'HEAD', 'POST']);
    // A method fastify routes but no route uses.
    const propfind = await rawRequest('PROPFIND /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    expect(propfind.status).toBe(405);
    expect(propfind.body).toMatchObject({ error: { code: 'MethodNotAllowed' } });
  });

  it('still answers 404 for a path no method has', async () => {
    const res = await call(base, 'PUT', '/v1/nothing-here', {});
    expect(res.status).toBe(404);
    expect(res.body).toMatchObject({ error: { code: 'NotFound' } });
  });
});

describe('bodies', () => {
  it('answers JSON nested 5,000 deep with 400 and keeps its bytes as sent in the rejects log', async () => {
    const deep = `${'{"a":'.repeat(5000)}1${'}'.repeat(5000)}`;
    const res = await fetch(`${base}/v1/devices/deep/telemetry`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: deep });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ error: { code: 'ValidationError', message: expect.stringContaining('deeper than') } });
    const rejects = (await call(base, 'GET', '/v1/rejects?deviceId=deep')).body as { items: Array<{ transport: string; payload: string; payloadBytes: number }> };
    expect(rejects.items).toHaveLength(1);
    expect(rejects.items[0]).toMatchObject({ transport: 'http', reason: 'invalid_value', payloadBytes: Buffer.byteLength(deep), truncated: true });
    expect(rejects.items[0]?.payload).toBe(deep.slice(0, KEPT_PAYLOAD_BYTES));
  });

  it('keeps a refused body byte for byte, whitespace included', async () => {
    const sent = '{ "values" : {} ,\n "ts": 1 }';
    const res = await fetch(`${base}/v1/devices/spaced/telemetry`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: sent });
    expect(res.status).toBe(400);
    const rejects = (await call(base, 'GET', '/v1/rejects?deviceId=spaced')).body as { items: Array<{ payload: string }> };
    expect(rejects.items.map((r) => r.payload)).toEqual([sent]);
  });

  it('refuses a key policy whose device pattern is not a string, instead of storing "false"', async () => {
    const res = await call(base, 'POST', '/v1/keys', { name: 'k', policy: { statements: [{ actions: ['telemetry:Read'], devices: [false] }] } });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ error: { code: 'ValidationError', field: 'policy.statements[0].devices[0]' } });
  });

  it('refuses code that is not a string, instead of deploying the source "false"', async () => {
    const res = await call(base, 'PUT', '/v1/functions/notcode', { code: false });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ error: { code: 'ValidationError', field: 'code' } });
    expect((await call(base, 'GET', '/v1/functions/notcode')).status).toBe(404);
  });

  it('refuses a null tag, instead of storing ""', async () => {
    const res = await call(base, 'PUT', '/v1/devices/tagged', { tags: { site: null } });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ error: { code: 'ValidationError', field: 'tags.site' } });
    expect((await call(base, 'GET', '/v1/devices/tagged')).status).toBe(404);
  });

  it('refuses qos null or 2 for a command, instead of sending it at QoS 0', async () => {
    expect((await call(base, 'PUT', '/v1/devices/cmd', {})).status).toBe(201);
    const nul = await call(base, 'POST', '/v1/devices/cmd/commands/reboot', { qos: null });
    expect(nul.status).toBe(400);
    expect(nul.body).toMatchObject({ error: { code: 'ValidationError', field: 'qos' } });
    const two = await call(base, 'POST', '/v1/devices/cmd/commands/reboot', { qos: 2 });
    expect(two.body).toMatchObject({ error: { code: 'ValidationError', field: 'qos', message: 'body field qos must be one of 0, 1' } });
    expect((await call(base, 'POST', '/v1/devices/cmd/commands/reboot', { qos: 1 })).status).toBe(202);
  });

  it('refuses a number sent as a string in a body, while query strings are still converted', async () => {
    const res = await call(base, 'PUT', '/v1/functions/limits', { code: 'export async function handler() {}', timeoutMs: '1000' });
    expect(res.status).toBe(400);
    expect(res.body).toMatchObject({ error: { code: 'ValidationError', field: 'timeoutMs' } });
    expect((await call(base, 'GET', '/v1/devices?limit=5')).status).toBe(200);
  });
});

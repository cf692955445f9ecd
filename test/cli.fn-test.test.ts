/**
 * `tributary fn test`: a handler file run once on this machine with the server's
 * process runtime, no server involved.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliCwd, runCli } from './cli-run.js';

afterAll(() => cliCwd.cleanup());

function handlerFile(name: string, code: string): string {
  const path = join(cliCwd.path, name);
  writeFileSync(path, code);
  return path;
}

describe('tributary fn test', () => {
  it('runs an ES module handler with an event file: result on stdout, logs and status on stderr', async () => {
    const file = handlerFile('greet.js', 'export async function handler(event, context) {\n  console.log("hello", event.name, context.functionName);\n  return { hi: event.name };\n}\n');
    const event = join(cliCwd.path, 'event.json');
    writeFileSync(event, JSON.stringify({ name: 'ada' }));
    const res = await runCli(['fn', 'test', file, '--event', event]);
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout)).toEqual({ hi: 'ada' });
    expect(res.stderr).toMatch(/INFO\s+hello ada greet/);
    expect(res.stderr).toMatch(/ok in \d+ ms/);
  });

  it('reads the event from stdin with --event - and answers --json like the API\'s invoke', async () => {
    const file = handlerFile('echo.cjs', 'exports.handler = async (event) => ({ got: event });\n');
    const res = await runCli(['fn', 'test', file, '--event', '-', '--json'], { input: '{"a": 1}' });
    expect(res.code, res.stderr).toBe(0);
    expect(JSON.parse(res.stdout)).toMatchObject({ status: 'ok', result: { got: { a: 1 } }, logs: [], calls: [] });
  });

  it('reports what context.put and context.publish asked for without sending anything', async () => {
    const file = handlerFile('derive.mjs', 'export async function handler(e, context) {\n  await context.put("derived-1", { values: { x: 1 } });\n  await context.publish("dev-1", { name: "reboot", payload: {} });\n  return "done";\n}\n');
    const res = await runCli(['fn', 'test', file]);
    expect(res.code, res.stderr).toBe(0);
    expect(res.stderr).toContain('context.put("derived-1", {"values":{"x":1}}) — not written (no server)');
    expect(res.stderr).toContain('context.publish("dev-1", {"name":"reboot","payload":{}}) — not sent (no server)');
    const json = await runCli(['fn', 'test', file, '--json']);
    expect(JSON.parse(json.stdout)).toMatchObject({
      status: 'ok',
      result: 'done',
      calls: [
        { method: 'put', deviceId: 'derived-1', reading: { values: { x: 1 } } },
        { method: 'publish', deviceId: 'dev-1', command: { name: 'reboot', payload: {} } },
      ],
    });
  });

  it('exits 1 when the handler throws, naming the user\'s file in the stack, and when it times out', async () => {
    const file = handlerFile('boom.mjs', 'export async function handler() {\n  throw new TypeError("boom");\n}\n');
    const res = await runCli(['fn', 'test', file]);
    expect(res.code).toBe(1);
    expect(res.stderr).toContain('error: TypeError: boom');
    expect(res.stderr).toContain(`${file}:2:9`);

    const slow = handlerFile('slow.mjs', 'export async function handler() { await new Promise((r) => setTimeout(r, 60000)); }\n');
    const timedOut = await runCli(['fn', 'test', slow, '--timeout-ms', '200', '--json']);
    expect(timedOut.code).toBe(1);
    expect(JSON.parse(timedOut.stdout)).toMatchObject({ status: 'timeout', errorType: 'Sandbox.Timedout' });
  });

  it('exits 2 for a missing file or an event that is not JSON', async () => {
    expect((await runCli(['fn', 'test', join(cliCwd.path, 'nope.js')])).code).toBe(2);
    const file = handlerFile('ok.mjs', 'export const handler = async () => 1;\n');
    const bad = await runCli(['fn', 'test', file, '--event', '-'], { input: '{not json' });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('is not JSON');
  });
});

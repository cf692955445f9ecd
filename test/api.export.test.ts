/** Telemetry export over real HTTP: `format=ndjson|csv` streams the whole range in order. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { csvCell, flatten } from '../api/export.js';
import { startApp, type RunningApp } from './app-harness.js';

const T0 = 1_764_150_000_000;
const COUNT = 2_500; // more than two export pages

describe('telemetry export', () => {
  let running: RunningApp;
  let base: string;
  beforeAll(async () => {
    running = await startApp();
    base = `${running.addresses.http}/v1/devices`;
    const readings = Array.from({ length: COUNT }, (_, i) => ({ ts: T0 + i * 1000, values: { temp: i / 10 } }));
    for (let i = 0; i < COUNT; i += 500) await running.app.store.write({ deviceId: 'exp-1', readings: readings.slice(i, i + 500) });
    await running.app.store.write({ deviceId: 'exp-2', readings: [{ ts: T0, values: { note: 'a, "quoted"\nline', gps: { lat: 52.5, lon: 13.4 } } }, { ts: T0 + 1, values: { ok: true } }] });
  });
  afterAll(() => running.destroy());

  it('ndjson: every reading of the range, one per line, in order, values as stored', async () => {
    const res = await fetch(`${base}/exp-1/telemetry?from=0&format=ndjson`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/x-ndjson; charset=utf-8');
    const lines = (await res.text()).trimEnd().split('\n');
    expect(lines).toHaveLength(COUNT);
    const parsed = lines.map((l) => JSON.parse(l) as { deviceId: string; ts: number; values: { temp: number } });
    expect(parsed[0]).toEqual({ deviceId: 'exp-1', ts: T0, seq: 0, values: { temp: 0 } });
    expect(parsed.every((r, i) => r.ts === T0 + i * 1000 && r.values.temp === i / 10)).toBe(true);
  });

  it('ndjson honours the time range and descending order', async () => {
    const res = await fetch(`${base}/exp-1/telemetry?from=${T0 + 1000}&to=${T0 + 3000}&order=desc&format=ndjson`);
    const ts = (await res.text()).trimEnd().split('\n').map((l) => (JSON.parse(l) as { ts: number }).ts);
    expect(ts).toEqual([T0 + 3000, T0 + 2000, T0 + 1000]);
  });

  it('csv: a column per key found in the range, nested keys dotted, RFC 4180 quoting, missing values empty', async () => {
    const res = await fetch(`${base}/exp-2/telemetry?from=0&format=csv`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('text/csv; charset=utf-8');
    expect(await res.text()).toBe(['ts,seq,gps.lat,gps.lon,note,ok', `${T0},0,52.5,13.4,"a, ""quoted""\nline",`, `${T0 + 1},0,,,,true`, ''].join('\r\n'));
  });

  it('csv with keys= has exactly those columns', async () => {
    const text = await (await fetch(`${base}/exp-1/telemetry?from=${T0}&to=${T0 + 1000}&format=csv&keys=temp`)).text();
    expect(text).toBe(`ts,seq,temp\r\n${T0},0,0\r\n${T0 + 1000},0,0.1\r\n`);
  });

  it('an empty range gives only the header; errors come as usual before anything is streamed', async () => {
    expect(await (await fetch(`${base}/exp-1/telemetry?from=0&to=1&format=csv`)).text()).toBe('ts,seq\r\n');
    const unknown = await fetch(`${base}/ghost/telemetry?format=ndjson`);
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { error: { code: string } }).error.code).toBe('DeviceNotFound');
    const badFormat = await fetch(`${base}/exp-1/telemetry?format=xml`);
    expect(badFormat.status).toBe(400);
    const withCursor = await fetch(`${base}/exp-1/telemetry?format=csv&cursor=abc`);
    expect(withCursor.status).toBe(400);
    expect(((await withCursor.json()) as { error: { field: string } }).error.field).toBe('cursor');
  });
});

describe('export helpers', () => {
  it('flatten addresses nested keys with dots', () => {
    expect(flatten({ a: 1, b: { c: 'x', d: { e: false } } })).toEqual({ a: 1, 'b.c': 'x', 'b.d.e': false });
  });
  it.each([
    [1.5, '1.5'],
    ['plain', 'plain'],
    ['a,b', '"a,b"'],
    ['say "hi"', '"say ""hi"""'],
    ['two\nlines', '"two\nlines"'],
    [undefined, ''],
    [true, 'true'],
  ])('csvCell(%j) = %j', (value, cell) => {
    expect(csvCell(value)).toBe(cell);
  });
});

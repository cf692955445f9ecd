/**
 * The web console in a real browser (Debian's chromium driven by playwright-core) against
 * the whole app: readings published over MQTT show up in the device list and on the
 * device's chart, a new reading arrives live, a function's log line shows (and a new one
 * live), and in secured mode a key scoped to `site-7-*` sees no `site-8-` device
 * anywhere. Any page error or console error fails the test. Screenshots go to
 * `test-artifacts/console/`.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectClient, startApp, type RunningApp } from './app-harness.js';
import { waitFor } from './helpers.js';
import { ROOT } from './process.js';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = join(ROOT, 'test-artifacts', 'console');
const TIMEOUT = 60_000;

let browser: Browser;
beforeAll(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'] });
}, TIMEOUT);
afterAll(async () => browser?.close());

/** A page that records every page error and console error, to assert there were none. */
async function openPage(viewport = { width: 1280, height: 800 }, colorScheme: 'light' | 'dark' = 'light'): Promise<{ page: Page; errors: string[] }> {
  const context = await browser.newContext({ viewport, colorScheme });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()} (${msg.location().url})`);
  });
  return { page, errors };
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- answers are inspected field by field; each expect checks the shape
async function post(base: string, path: string, body: unknown, key?: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${base}${path}`, {
    method: path.startsWith('/v1/functions/') && path.split('/').length === 4 ? 'PUT' : 'POST',
    headers: { 'content-type': 'application/json', ...(key === undefined ? {} : { authorization: `Bearer ${key}` }) },
    body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** The device page's chart: its last point, read from the chart's data in the page. */
function chartLast(page: Page): Promise<{ ts: number; values: Record<string, number | null> } | null> {
  // A string: the test is compiled without the DOM's types.
  return page.evaluate('window.tributaryConsole?.chart?.last() ?? null');
}

describe('console in open mode', () => {
  let app: RunningApp;
  let base: string;
  beforeAll(async () => {
    app = await startApp();
    base = app.addresses.http;
  }, TIMEOUT);
  afterAll(async () => app?.destroy());

  it(
    'finds a device, charts its readings, follows a new one live, and shows function logs',
    async () => {
      const device = 'site-7-boiler';
      const client = await connectClient(app.addresses.mqtt, { clientId: device });
      const start = Date.now() - 30 * 60_000;
      const readings = Array.from({ length: 30 }, (_, i) => ({ ts: start + i * 60_000, values: { temp: 20 + i / 10, pressure: 1000 + i } }));
      for (const r of readings) await client.publishAsync(`devices/${device}/telemetry`, JSON.stringify(r), { qos: 1 });
      await client.publishAsync('devices/other-1/telemetry', JSON.stringify({ temp: 1 }), { qos: 1 });
      // Device-supplied strings are shown as text, never parsed as markup.
      const markup = '<img src=x onerror=alert(1)>';
      await fetch(`${base}/v1/devices/${device}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ tags: { note: markup } }) });
      const code = 'export async function handler(event) { console.log("handled", JSON.stringify(event)); return { ok: true }; }';
      expect((await post(base, '/v1/functions/audit', { code })).status).toBeLessThan(300);
      expect((await post(base, '/v1/functions/audit/invoke', { first: 1 })).status).toBe(200);

      const { page, errors } = await openPage();
      await page.goto(`${base}/console/`);
      await page.getByText('Readings/s').waitFor();
      await page.getByText('open mode').waitFor();
      await shot(page, 'overview');

      await page.getByRole('link', { name: 'Devices', exact: true }).click();
      await page.getByLabel('Id starts with').fill('site-7-');
      await page.getByRole('button', { name: 'Search' }).click();
      await page.waitForURL(/prefix=site-7-/);
      // The unfiltered list was showing a moment ago: wait for the search's answer to replace it.
      await waitFor(async () => !(await page.locator('main').innerText()).includes('other-1'), 10_000, 'the search to leave other-1 out');
      await page.getByRole('link', { name: device }).waitFor();
      await page.getByRole('cell', { name: `note=${markup}` }).waitFor();
      expect(await page.locator('img').count()).toBe(0);
      // Its recent rate is listed (readings a minute): it sent 30 readings moments ago.
      const row = page.getByRole('row').filter({ has: page.getByRole('link', { name: device }) });
      expect(Number((await row.getByRole('cell').nth(4).innerText()).replace(/,/g, ''))).toBeGreaterThan(0);
      await shot(page, 'devices');

      await page.getByRole('link', { name: device }).click();
      await page.locator('#chart[data-live="open"]').waitFor();
      const last = readings.at(-1) as (typeof readings)[number];
      expect(await chartLast(page)).toEqual({ ts: last.ts, values: last.values });
      expect(await page.locator('#chart').getAttribute('data-points')).toBe('30');

      // A new reading arrives over MQTT and reaches the chart without a reload.
      const fresh = { ts: Date.now(), values: { temp: 42.5, pressure: 1234 } };
      await client.publishAsync(`devices/${device}/telemetry`, JSON.stringify(fresh), { qos: 1 });
      await waitFor(async () => (await chartLast(page))?.ts === fresh.ts, 15_000, 'the new reading on the chart');
      expect(await chartLast(page)).toEqual(fresh);
      await page.getByRole('cell', { name: '42.5' }).first().waitFor();
      await shot(page, 'device');

      // The phone-sized viewport lays the same page out in one column (here in the system's dark mode).
      const phone = await openPage({ width: 390, height: 844 }, 'dark');
      await phone.page.goto(`${base}/console/#/devices/${device}`);
      await phone.page.locator('#chart[data-live="open"]').waitFor();
      const overflow = await phone.page.evaluate<number>('document.documentElement.scrollWidth - document.documentElement.clientWidth');
      expect(overflow).toBeLessThanOrEqual(0);
      expect(await phone.page.evaluate<string>("getComputedStyle(document.body).backgroundColor")).toBe('rgb(15, 20, 25)');
      await shot(phone.page, 'device-phone');
      await phone.page.context().close();
      expect(phone.errors).toEqual([]);

      await page.getByRole('link', { name: 'Functions', exact: true }).click();
      // Its row: invoked once without an error, nothing in the dead-letter queue.
      const fnRow = page.getByRole('row').filter({ has: page.getByRole('link', { name: 'audit' }) });
      await fnRow.waitFor();
      expect(await fnRow.getByRole('cell').allInnerTexts()).toEqual(['audit', 'ok', '1', expect.any(String), '1', '0', '0', expect.any(String), '0']);
      await page.getByRole('link', { name: 'audit' }).click();
      await page.locator('#log-lines').getByText('handled {"first":1}').waitFor();
      await page.locator('#log-state', { hasText: 'live' }).waitFor();
      expect((await post(base, '/v1/functions/audit/invoke', { second: 2 })).status).toBe(200);
      await page.locator('#log-lines').getByText('handled {"second":2}').waitFor();
      await page.getByLabel('Module source').fill('export async function handler() { console.log("v2 here"); return 2; }');
      await page.getByRole('button', { name: 'Deploy' }).click();
      await page.getByText('Deployed version 2.').waitFor();
      await page.getByRole('button', { name: 'Invoke' }).click();
      await page.locator('#log-lines').getByText('v2 here').waitFor();
      await shot(page, 'function');

      await page.getByRole('link', { name: 'Stream', exact: true }).click();
      // The stream page's own state (the page before may still show its own "live" a moment).
      await page.locator('#stream-state', { hasText: 'live' }).waitFor();
      await client.publishAsync(`devices/${device}/telemetry`, JSON.stringify({ temp: 7 }), { qos: 1 });
      await page.locator('#stream-records summary', { hasText: device }).first().waitFor();
      await shot(page, 'stream');

      await client.endAsync();
      await page.context().close();
      expect(errors).toEqual([]);
    },
    TIMEOUT * 2,
  );
});

describe('console in secured mode', () => {
  let app: RunningApp;
  let base: string;
  let admin: string;
  beforeAll(async () => {
    app = await startApp({ secure: true });
    base = app.addresses.http;
    admin = app.addresses.adminKey as string;
  }, TIMEOUT);
  afterAll(async () => app?.destroy());

  it(
    'asks for a key, and a key scoped to site-7-* sees no site-8- device anywhere',
    async () => {
      for (const id of ['site-7-a', 'site-7-b', 'site-8-a', 'site-8-b']) expect((await post(base, `/v1/devices/${id}/telemetry`, { temp: 1 }, admin)).status).toBe(201);
      const created = await post(base, '/v1/keys', { name: 'site 7 operator', policy: { statements: [{ actions: ['telemetry:Read', 'streams:Read', 'devices:Manage'], devices: ['site-7-*'] }] } }, admin);
      const key = created.body.key as string;

      const { page, errors } = await openPage();
      // Chromium logs every failed request as a console error; the API's 401 before a key is entered is expected.
      const expected401 = (e: string) => /status of 401/.test(e);
      await page.goto(`${base}/console/`);
      await page.getByLabel('Key').fill(key);
      await shot(page, 'login');
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByText('site 7 operator').waitFor();
      await page.getByText('Readings/s').waitFor();
      await page.getByText('Not available to this key').first().waitFor();
      expect(await page.evaluate("sessionStorage.getItem('tributary.apiKey')")).toBe(key);
      expect(await page.evaluate('localStorage.length')).toBe(0);
      await shot(page, 'overview-secured');

      await page.getByRole('link', { name: 'Devices', exact: true }).click();
      await page.getByRole('link', { name: 'site-7-b' }).waitFor();
      expect(await page.locator('body').innerText()).not.toContain('site-8-');
      await page.getByLabel('Id starts with').fill('site-');
      await page.getByRole('button', { name: 'Search' }).click();
      await page.getByRole('link', { name: 'site-7-a' }).waitFor();
      expect(await page.locator('body').innerText()).not.toContain('site-8-');
      await shot(page, 'devices-secured');

      await page.getByRole('link', { name: 'Stream', exact: true }).click();
      // The stream page's own state (the page before may still show its own "live" a moment).
      await page.locator('#stream-state', { hasText: 'live' }).waitFor();
      await post(base, '/v1/devices/site-8-a/telemetry', { temp: 8 }, admin);
      await post(base, '/v1/devices/site-7-a/telemetry', { temp: 7 }, admin);
      await page.locator('#stream-records summary', { hasText: 'site-7-a' }).first().waitFor();
      expect(await page.locator('body').innerText()).not.toContain('site-8-');
      await shot(page, 'stream-secured');

      await page.getByRole('button', { name: 'Sign out' }).click();

      // An admin sees the keys and the audit log, and can rotate a device's secret.
      await page.getByLabel('Key').fill(admin);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('link', { name: 'Access' }).click();
      await page.getByRole('cell', { name: 'site 7 operator' }).waitFor();
      await page.getByLabel('Name').fill('console-made key');
      await page.getByRole('button', { name: 'Create key' }).click();
      await page.getByRole('cell', { name: 'console-made key' }).waitFor();
      expect(await page.locator('#new-key').innerText()).toMatch(/^tak_/);
      await page.getByRole('cell', { name: 'POST /v1/keys' }).first().waitFor();
      await shot(page, 'access');
      await page.goto(`${base}/console/#/devices/site-8-a`);
      await page.getByRole('button', { name: 'Issue or rotate the secret' }).click();
      await page.locator('#device-secret', { hasText: 'tdk_' }).waitFor();

      await page.context().close();
      // One 401: the first look at whoami before a key was entered.
      expect(errors.filter((e) => !expected401(e))).toEqual([]);
      expect(errors.filter(expected401).length).toBeLessThanOrEqual(1);
    },
    TIMEOUT * 2,
  );
});

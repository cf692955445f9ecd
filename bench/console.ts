/**
 * Web console benchmark, in Debian's chromium (playwright-core) against a real app:
 *
 * - first view: bytes transferred (headers and gzipped bodies) to show the overview, against
 *   the 300 KB budget, and uPlot's share of it;
 * - time to chart: from opening a device page until its one-hour chart of raw readings is
 *   drawn, and from choosing "30 d" until the aggregated chart is drawn, for one device at
 *   one reading per second (`BENCH_CONSOLE_DAYS`, default 30: 2.6 million readings). The
 *   baseline is the same API request made from Node in the same run: what the server alone
 *   takes. Without rollups (storage engine v2) the 30-day aggregate reads every raw reading.
 */
import { chromium, type Page } from 'playwright-core';
import { createApp } from '../app.js';
import { configWith } from '../core/config.js';
import { createLogger } from '../core/logger.js';
import { fmt, median, printTable, progress, scratchDir, type Row } from './harness.js';

const DAYS = Number(process.env.BENCH_CONSOLE_DAYS ?? 30);
const DEVICE = 'bench-console-1';
const ROUNDS = 3;
const BUDGET_BYTES = 300 * 1024;

async function transferred(page: Page, url: string, ready: () => Promise<unknown>): Promise<{ total: number; byUrl: Map<string, number> }> {
  const byUrl = new Map<string, number>();
  const pending: Array<Promise<void>> = [];
  page.on('requestfinished', (request) => {
    pending.push(
      request.sizes().then((s) => {
        byUrl.set(request.url(), s.responseBodySize + s.responseHeadersSize);
      }),
    );
  });
  await page.goto(url);
  await ready();
  await Promise.all(pending);
  return { total: [...byUrl.values()].reduce((a, b) => a + b, 0), byUrl };
}

export async function benchConsole(): Promise<void> {
  const dir = scratchDir('console');
  const app = createApp(configWith({ dataDir: dir.path, mqttPort: 0, httpPort: 0, logLevel: 'silent' }), { logger: createLogger('silent') });
  const { http } = await app.start();
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'] });
  try {
    const readings = DAYS * 86_400;
    progress(`console: writing ${fmt(readings)} readings (${DAYS} d at 1/s) of one device`);
    const end = Math.floor(Date.now() / 1000) * 1000;
    const start = end - readings * 1000;
    const CHUNK = 5000;
    const writes: Array<Promise<unknown>> = [];
    for (let k = 0; k < readings; k += CHUNK) {
      writes.push(app.store.write({ deviceId: DEVICE, readings: Array.from({ length: Math.min(CHUNK, readings - k) }, (_, j) => ({ ts: start + (k + j) * 1000, values: { temp: 20 + Math.sin((k + j) / 3600), humidity: 40 + ((k + j) % 600) / 60 } })) }));
      if (writes.length >= 8) await writes.shift();
    }
    await Promise.all(writes);

    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const first = await transferred(page, `${http}/console/`, () => page.getByText('Readings/s').waitFor());
    const uplotBytes = [...first.byUrl].filter(([u]) => u.includes('/vendor/uPlot')).reduce((n, [, b]) => n + b, 0);

    const oneHour: number[] = [];
    const month: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      await page.goto(`${http}/console/#/`);
      await page.getByText('Readings/s').waitFor();
      let t = performance.now();
      await page.goto(`${http}/console/#/devices/${DEVICE}`);
      await page.locator('#chart[data-points]').waitFor();
      oneHour.push(performance.now() - t);
      await page.locator('#range').selectOption({ label: '30 d' });
      t = performance.now();
      await page.getByRole('button', { name: 'Show' }).click();
      await page.locator('#chart-note', { hasText: 'buckets' }).waitFor({ timeout: 600_000 });
      month.push(performance.now() - t);
    }
    await context.close();

    // The same requests from Node: the server's share.
    const api = async (path: string) => {
      const t = performance.now();
      const res = await fetch(`${http}${path}`);
      await res.arrayBuffer();
      return performance.now() - t;
    };
    const rawHour: number[] = [];
    const aggMonth: number[] = [];
    const interval = Math.max(1000, Math.ceil((30 * 86_400_000) / 720 / 1000) * 1000);
    for (let round = 0; round < ROUNDS; round++) {
      rawHour.push(await api(`/v1/devices/${DEVICE}/telemetry?from=${Date.now() - 3_600_000}&to=now&limit=10000`));
      aggMonth.push(await api(`/v1/devices/${DEVICE}/telemetry/aggregate?from=${Date.now() - 30 * 86_400_000}&to=now&interval=${interval}&agg=avg`));
    }

    const ms = (x: number) => `${fmt(x)} ms`;
    const rows: Row[] = [
      {
        case: 'first view (overview), bytes transferred',
        measured: `${fmt(first.total / 1024, 1)} KiB in ${first.byUrl.size} requests`,
        baseline: `budget ${fmt(BUDGET_BYTES / 1024)} KiB`,
        ratio: `${fmt(first.total / BUDGET_BYTES, 2)}×`,
        note: `${first.total <= BUDGET_BYTES ? 'within' : 'OVER'} budget; uPlot ${fmt(uplotBytes / 1024, 1)} KiB of it`,
      },
      {
        case: 'device page → 1 h chart drawn (3,600 raw readings)',
        measured: ms(median(oneHour)),
        baseline: `${ms(median(rawHour))} (the range query alone)`,
        ratio: `${fmt(median(oneHour) / median(rawHour), 2)}×`,
        note: 'page, device, latest, readings table and chart',
      },
      {
        case: `"30 d" → chart drawn (720 buckets over ${fmt(readings)} readings)`,
        measured: ms(median(month)),
        baseline: `${ms(median(aggMonth))} (the aggregate query alone)`,
        ratio: `${fmt(median(month) / median(aggMonth), 2)}×`,
        note: `no rollups yet: the aggregate reads every raw reading; target < 1 s ${median(month) < 1000 ? 'met' : 'MISSED'}`,
      },
    ];
    printTable(`console (chromium, ${ROUNDS} rounds, median)`, rows);
  } finally {
    await browser.close();
    await app.stop();
    dir.cleanup();
  }
}

/**
 * `tributary query <device>`: readings in a time range, or time buckets with `--agg` /
 * `--interval` (`GET /v1/devices/{id}/telemetry[/aggregate]`).
 *
 * @module
 */
import type { Command } from 'commander';
import { deviceIdArg, durationFlag, positiveInt, timeFlag } from './args.js';
import { usageError } from './exit.js';
import { clientFrom, seg, withClientOptions, type ClientFlags } from './http-client.js';
import { flatten, formatTime, formatValue, printJson, printTable, type Column } from './output.js';

interface Reading {
  deviceId: string;
  ts: number;
  seq: number;
  values: Record<string, unknown>;
}

type Stats = Record<string, unknown>;

interface AggregateResult {
  deviceId: string;
  from: number;
  to: number;
  intervalMs: number;
  buckets: Array<{ start: number; end: number; values: Record<string, Stats> }>;
}

interface QueryFlags extends ClientFlags {
  from: string;
  to: string;
  keys?: string;
  order: string;
  limit: string;
  agg?: string;
  interval?: string;
}

/** Aggregates in a table: averages like 21.4666666 are easier to read as 21.467. */
function cell(v: unknown): string {
  return typeof v === 'number' && !Number.isInteger(v) ? String(Number(v.toFixed(3))) : formatValue(v);
}

/** Column keys in the order they first appear. */
function keysOf(rows: Array<Record<string, unknown>>): string[] {
  const keys = new Set<string>();
  for (const r of rows) for (const k of Object.keys(r)) keys.add(k);
  return [...keys];
}

export function registerQuery(program: Command): void {
  withClientOptions(
    program
      .command('query <deviceId>')
      .description("a device's readings in a time range, or aggregated into time buckets with --agg/--interval")
      .option('--from <time>', 'start: epoch ms, ISO-8601, now, or an offset like -15m', '-24h')
      .option('--to <time>', 'end, same forms', 'now')
      .option('--keys <list>', 'only these value keys, comma-separated (gps.lat addresses nested values)')
      .option('--order <asc|desc>', 'time order of readings', 'asc')
      .option('--limit <n>', 'at most this many readings', '1000')
      .option('--agg <list>', 'aggregate into buckets: avg, min, max, sum, count, first, last (comma-separated; default avg when --interval is given)')
      .option('--interval <duration>', 'bucket width for --agg, e.g. 1m, 15m, 1h')
      .addHelpText('after', '\nExamples:\n  tributary query sensor-1 --from -1h\n  tributary query sensor-1 --from -1d --agg avg,max --interval 1h --keys temp\n  tributary query sensor-1 --json | jq .[].values'),
  ).action(async (id: string, opts: QueryFlags) => {
    const deviceId = deviceIdArg(id);
    // Resolved once, so that every page of a long result covers the same window.
    const now = Date.now();
    const from = timeFlag(opts.from, 'from', now);
    const to = timeFlag(opts.to, 'to', now);
    if (from > to) throw usageError(`--from (${formatTime(from)}) is after --to (${formatTime(to)})`);
    const client = clientFrom(opts);

    if (opts.agg !== undefined || opts.interval !== undefined) {
      if (opts.interval === undefined) throw usageError('--agg needs --interval (the bucket width, e.g. 1m)');
      durationFlag(opts.interval, 'interval');
      const result = await client.request<AggregateResult>('GET', `/devices/${seg(deviceId)}/telemetry/aggregate`, {
        query: { from, to, interval: opts.interval, agg: opts.agg ?? 'avg', keys: opts.keys },
      });
      if (opts.json) return printJson(result);
      const rows = result.buckets.map((b) => {
        const row: Record<string, unknown> = {};
        for (const [key, stats] of Object.entries(b.values)) for (const [agg, v] of Object.entries(stats)) row[`${key} ${agg}`] = v;
        return { start: b.start, row };
      });
      const columns: Column<(typeof rows)[number]>[] = [{ header: 'BUCKET START', value: (r) => formatTime(r.start) }];
      for (const k of keysOf(rows.map((r) => r.row))) columns.push({ header: k, value: (r) => cell(r.row[k]), right: true });
      return printTable(columns, rows, `no readings of ${deviceId} between ${formatTime(from)} and ${formatTime(to)}`);
    }

    if (opts.order !== 'asc' && opts.order !== 'desc') throw usageError(`--order must be asc or desc (got ${JSON.stringify(opts.order)})`);
    const readings = await client.listAll<Reading>(
      `/devices/${seg(deviceId)}/telemetry`,
      { from, to, order: opts.order, keys: opts.keys },
      positiveInt(opts.limit, 'limit'),
      'readings',
    );
    if (opts.json) return printJson(readings);
    const rows = readings.map((r) => ({ r, flat: flatten(r.values) }));
    const columns: Column<(typeof rows)[number]>[] = [
      { header: 'TIME', value: ({ r }) => formatTime(r.ts) },
      { header: 'SEQ', value: ({ r }) => String(r.seq), right: true },
    ];
    for (const k of keysOf(rows.map((r) => r.flat))) columns.push({ header: k, value: ({ flat }) => formatValue(flat[k]), right: true });
    printTable(columns, rows, `no readings of ${deviceId} between ${formatTime(from)} and ${formatTime(to)}`);
  });
}

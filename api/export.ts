/**
 * Telemetry export (`GET /v1/devices/:id/telemetry?format=ndjson|csv`): the whole range,
 * streamed page by page from the store, so memory stays at one page however long the
 * range is. Values are spliced in as stored (ndjson) or flattened into columns (csv).
 *
 * @module
 */
import { NumberValue, parseJson } from '../core/numbers.js';
import type { RangeQuery, RawReading, TelemetryStore } from '../store/types.js';

export type ExportFormat = 'ndjson' | 'csv';

export const EXPORT_CONTENT_TYPES: Record<ExportFormat, string> = {
  ndjson: 'application/x-ndjson; charset=utf-8',
  csv: 'text/csv; charset=utf-8',
};

/** Readings per store page while exporting. */
const PAGE = 1000;

export interface ExportRange {
  store: TelemetryStore;
  /** Without `limit`/`cursor`: the export pages on its own. */
  range: Omit<RangeQuery, 'limit' | 'cursor'>;
  /** Most readings to export; undefined = the whole range. */
  max: number | undefined;
}

/** The readings of the range, in order, a page at a time. */
async function* readings({ store, range, max }: ExportRange): AsyncGenerator<RawReading[]> {
  let left = max ?? Number.POSITIVE_INFINITY;
  let cursor: string | undefined;
  while (left > 0) {
    const page = await store.queryRaw({ ...range, limit: Math.min(PAGE, left), ...(cursor === undefined ? {} : { cursor }) });
    if (page.items.length > 0) yield page.items;
    left -= page.items.length;
    if (page.nextCursor === null) return;
    cursor = page.nextCursor;
  }
}

/** One JSON object per line: `{"deviceId","ts","seq","values"}`, the values as stored. */
export async function* ndjsonExport(source: ExportRange): AsyncGenerator<string> {
  for await (const items of readings(source)) {
    let chunk = '';
    // Device ids need no escaping (core/ids.ts).
    for (const r of items) chunk += `{"deviceId":"${r.deviceId}","ts":${r.ts},"seq":${r.seq},"values":${r.valuesJson}}\n`;
    yield chunk;
  }
}

/**
 * RFC 4180 CSV: `ts,seq` and one column per value key, nested keys flattened with dots
 * (`gps.lat`). The columns are `keys` when the caller names them; otherwise they are
 * every key found in the range, which takes a first pass over it (only the key set is
 * held), so that no value is dropped because it first appears late.
 */
export async function* csvExport(source: ExportRange, keys: string[] | undefined): AsyncGenerator<string> {
  let columns = keys;
  if (columns === undefined) {
    const found = new Set<string>();
    for await (const items of readings(source)) for (const r of items) for (const key of Object.keys(flatten(parseJson(r.valuesJson)))) found.add(key);
    columns = [...found].sort();
  }
  yield `${['ts', 'seq', ...columns].map(csvCell).join(',')}\r\n`;
  for await (const items of readings(source)) {
    let chunk = '';
    for (const r of items) {
      const values = flatten(parseJson(r.valuesJson));
      chunk += `${r.ts},${r.seq}`;
      // Own keys only: a column named `toString` must not print Object.prototype's.
      for (const column of columns) chunk += `,${csvCell(Object.hasOwn(values, column) ? values[column] : undefined)}`;
      chunk += '\r\n';
    }
    yield chunk;
  }
}

/** `{gps: {lat: 1}}` → `{"gps.lat": 1}`; leaves are numbers (kept digits too), strings and booleans. */
export function flatten(value: unknown, prefix = '', out: Record<string, unknown> = {}): Record<string, unknown> {
  if (value !== null && typeof value === 'object' && !Array.isArray(value) && !(value instanceof NumberValue)) {
    for (const [key, inner] of Object.entries(value)) flatten(inner, prefix === '' ? key : `${prefix}.${key}`, out);
  } else if (prefix !== '') {
    out[prefix] = value;
  }
  return out;
}

/** One CSV field: quoted when it holds a comma, quote or line break; missing values are empty; kept digits as they are. */
export function csvCell(value: unknown): string {
  if (value === undefined || value === null) return '';
  const text = typeof value === 'string' ? value : value instanceof NumberValue ? value.value : typeof value === 'object' ? JSON.stringify(value) : String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

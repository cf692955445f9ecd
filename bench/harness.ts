/** Small helpers shared by the benchmarks: timing, percentiles, and the result table. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Row {
  case: string;
  measured: string;
  baseline: string;
  ratio: string;
  note?: string;
}

export function printTable(title: string, rows: Row[]): void {
  const headers = ['case', 'tributary', 'baseline (same run)', 'ratio', 'note'];
  const cells = rows.map((r) => [r.case, r.measured, r.baseline, r.ratio, r.note ?? '']);
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)));
  const line = (c: string[]) => `| ${c.map((x, i) => x.padEnd(widths[i] as number)).join(' | ')} |`;
  process.stdout.write(`\n## ${title}\n\n${line(headers)}\n|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|\n${cells.map(line).join('\n')}\n`);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
}

export function fmt(n: number, digits = 0): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function scratchDir(name: string): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), `tributary-bench-${name}-`));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

export function progress(text: string): void {
  process.stderr.write(`  … ${text}\n`);
}

/** Runs `fn` `runs` times and returns every result (benchmarks quote the median). */
export async function repeat<T>(runs: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < runs; i++) out.push(await fn(i));
  return out;
}

/** A reading of about 100 bytes of JSON, like a small sensor's. */
export function sampleValues(i: number): Record<string, number | string | boolean> {
  return { temp: 20 + (i % 100) / 10, humidity: 40 + (i % 50), pressure: 1013.25, battery: 3.7, status: 'ok', door: i % 2 === 0 };
}

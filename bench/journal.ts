/**
 * Storage engine v2's journal (store/journal/, ADR 0005) against the disk alone, in the same
 * run: group-commit frames of 100 records appended and fdatasynced one at a time through
 * `Journal.append`, against `write` + `fdatasync` of the same bytes at the same offsets of a
 * file zero-filled the same way (the floor any durable append pays); and how fast an open
 * finds the end of a full segment (the recovery scan).
 *
 * Environment: BENCH_JOURNAL_FRAMES (default 5,000), BENCH_RUNS (3).
 */
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { Journal } from '../store/journal/journal.js';
import { encodeFrame, type JournalRecord } from '../store/journal/frame.js';
import { fmt, median, percentile, printTable, progress, repeat, scratchDir, type Row } from './harness.js';

const FRAMES = Number(process.env.BENCH_JOURNAL_FRAMES ?? 5000);
const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const RECORDS_PER_FRAME = 100;
const SEGMENT_BYTES = 64 * 1024 * 1024;

/** A group commit's records: 100 change records of about 90 bytes, like a reading's. */
function frameRecords(i: number): JournalRecord[] {
  return Array.from({ length: RECORDS_PER_FRAME }, (_, j) => ({
    type: 1,
    payload: Buffer.from(`{"d":"sensor-${(i * RECORDS_PER_FRAME + j) % 1000}","ts":${1_764_150_000_000 + i},"v":{"temp":21.${j % 10},"hum":45.${i % 10},"battery":97,"rssi":-${60 + (j % 20)},"status":"ok"}}`),
  }));
}

interface Run {
  perSecond: number;
  p50: number;
  p99: number;
  cpuUsPerRecord: number;
}

function summarize(latencies: number[], wallMs: number, cpu: NodeJS.CpuUsage): Run {
  return {
    perSecond: (latencies.length / wallMs) * 1000,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    cpuUsPerRecord: (cpu.user + cpu.system) / (latencies.length * RECORDS_PER_FRAME),
  };
}

async function journalRun(): Promise<Run> {
  const dir = scratchDir('journal');
  const journal = await Journal.open({ dir: dir.path, segmentBytes: SEGMENT_BYTES });
  const frames = Array.from({ length: FRAMES }, (_, i) => frameRecords(i));
  const latencies: number[] = [];
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < FRAMES; i++) {
    const t = performance.now();
    await journal.append(frames[i] as JournalRecord[], Date.now());
    latencies.push(performance.now() - t);
  }
  const run = summarize(latencies, performance.now() - t0, process.cpuUsage(cpu0));
  await journal.close();
  dir.cleanup();
  return run;
}

/** The baseline: the same frames' bytes, written and fdatasynced at the same offsets of a file zero-filled page by page. */
async function rawRun(): Promise<Run> {
  const dir = scratchDir('journal-raw');
  const file = await open(join(dir.path, 'raw.seg'), 'w+');
  const page = Buffer.alloc(4096);
  for (let at = 0; at < SEGMENT_BYTES; at += page.length) await file.write(page, 0, page.length, at);
  await file.datasync();
  let position = 4096;
  const frames = Array.from({ length: FRAMES }, (_, i) => {
    const frame = encodeFrame(frameRecords(i), position - 4096, Date.now());
    position += frame.length;
    return frame;
  });
  const latencies: number[] = [];
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let at = 4096;
  for (const frame of frames) {
    const t = performance.now();
    await file.write(frame, 0, frame.length, at);
    await file.datasync();
    at += frame.length;
    latencies.push(performance.now() - t);
  }
  const run = summarize(latencies, performance.now() - t0, process.cpuUsage(cpu0));
  await file.close();
  dir.cleanup();
  return run;
}

/** Opening a journal whose one segment is nearly full: the scan for its end. */
async function recoveryScan(): Promise<{ ms: number; bytes: number }> {
  const dir = scratchDir('journal-open');
  const journal = await Journal.open({ dir: dir.path, segmentBytes: SEGMENT_BYTES, zeroFill: false });
  const frame = frameRecords(0);
  while (journal.end + 16 * 1024 < SEGMENT_BYTES - 4096) await journal.append(frame, 1);
  const bytes = journal.end;
  await journal.close();
  const t0 = performance.now();
  const reopened = await Journal.open({ dir: dir.path, segmentBytes: SEGMENT_BYTES });
  const ms = performance.now() - t0;
  await reopened.close();
  dir.cleanup();
  return { ms, bytes };
}

export async function benchJournal(): Promise<void> {
  progress(`journal: ${fmt(FRAMES)} frames of ${RECORDS_PER_FRAME} records, ${RUNS} runs each, alternating with the raw baseline`);
  const journal: Run[] = [];
  const raw: Run[] = [];
  for (let i = 0; i < RUNS; i++) {
    journal.push(await journalRun());
    raw.push(await rawRun());
  }
  progress('journal: the recovery scan of a full segment');
  const scans = await repeat(RUNS, recoveryScan);
  const m = (runs: Run[], pick: (r: Run) => number): number => median(runs.map(pick));
  const rows: Row[] = [
    {
      case: `synced frames/s (${RECORDS_PER_FRAME} records each)`,
      measured: fmt(m(journal, (r) => r.perSecond)),
      baseline: `${fmt(m(raw, (r) => r.perSecond))} write + fdatasync alone`,
      ratio: `${fmt(m(journal, (r) => r.perSecond) / m(raw, (r) => r.perSecond), 2)}×`,
    },
    {
      case: 'append latency p50 / p99',
      measured: `${fmt(m(journal, (r) => r.p50), 3)} / ${fmt(m(journal, (r) => r.p99), 3)} ms`,
      baseline: `${fmt(m(raw, (r) => r.p50), 3)} / ${fmt(m(raw, (r) => r.p99), 3)} ms`,
      ratio: `${fmt(m(journal, (r) => r.p99) / m(raw, (r) => r.p99), 2)}× (p99)`,
    },
    {
      case: 'CPU per record (encode, CRC32C, write, sync)',
      measured: `${fmt(m(journal, (r) => r.cpuUsPerRecord), 2)} µs`,
      baseline: `${fmt(m(raw, (r) => r.cpuUsPerRecord), 2)} µs (frames encoded beforehand)`,
      ratio: `+${fmt(m(journal, (r) => r.cpuUsPerRecord) - m(raw, (r) => r.cpuUsPerRecord), 2)} µs`,
    },
    {
      case: 'open: scan of a full 64 MiB segment',
      measured: `${fmt(median(scans.map((s) => s.ms)), 0)} ms`,
      baseline: '',
      ratio: '',
      note: `${fmt(median(scans.map((s) => s.bytes / 1024 / 1024 / (s.ms / 1000))), 0)} MB/s`,
    },
  ];
  printTable(`Storage v2 journal — not on the write path yet (ADR 0005)`, rows);
}

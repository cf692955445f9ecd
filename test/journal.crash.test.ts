/**
 * The journal under kill -9 (ADR 0005): a child process appends numbered frames and says
 * which are durable; it is killed with SIGKILL at random moments — mostly inside a write or
 * fdatasync, since it does little else — and restarted on the same folder. Every frame it
 * acknowledged must be there, once, in order, and numbering must continue without a gap
 * from the last durable frame. Runs the built journal (`npm run build` first).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { Journal } from '../store/journal/journal.js';
import { tempDir, waitFor } from './helpers.js';
import { ROOT } from './process.js';

const CYCLES = Number(process.env.JOURNAL_CRASH_CYCLES ?? 8);
const WRITER = `${ROOT}test/fixtures/journal/writer.mjs`;

interface Cycle {
  opened: { next: number; torn: boolean; damaged: number };
  acked: Map<number, number>;
}

async function runUntilKilled(dir: string, killAfterAcks: number): Promise<Cycle> {
  const child = spawn(process.execPath, [WRITER, dir, String(64 * 1024)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    await waitFor(() => (child.exitCode !== null ? true : out.split('\n').filter((l) => l.startsWith('ack ')).length >= killAfterAcks), 20_000, `${killAfterAcks} acks`);
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
  if (err !== '') throw new Error(`writer failed: ${err}`);
  const lines = out.split('\n');
  const open = /^open (\d+) (torn|clean) (\d+)$/.exec(lines[0] ?? '');
  if (open === null) throw new Error(`unexpected writer output: ${out.slice(0, 200)}`);
  const acked = new Map<number, number>();
  // The last line may be cut by the kill: only whole lines count.
  for (const line of lines.slice(1, -1)) {
    const m = /^ack (\d+) (\d+)$/.exec(line);
    if (m) acked.set(Number(m[1]), Number(m[2]));
  }
  return { opened: { next: Number(open[1]), torn: open[2] === 'torn', damaged: Number(open[3]) }, acked };
}

describe('journal: kill -9 while appending', () => {
  const dirs: Array<{ cleanup: () => void }> = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) d.cleanup();
  });

  it(`keeps every acknowledged frame, once and in order, across ${CYCLES} kills`, async () => {
    expect(existsSync(`${ROOT}dist/store/journal/journal.js`), 'npm run build first').toBe(true);
    const dir = tempDir('tributary-journal-crash-');
    dirs.push(dir);
    const acked = new Map<number, number>();
    let torn = 0;
    let lastAcked = -1;
    for (let cycle = 0; cycle < CYCLES; cycle++) {
      const run = await runUntilKilled(dir.path, 50 + Math.floor(Math.random() * 400));
      // A restart continues right after the last durable frame: past every acknowledged one.
      expect(run.opened.next).toBeGreaterThan(lastAcked);
      expect(run.opened.damaged).toBe(0);
      if (run.opened.torn) torn++;
      for (const [n, position] of run.acked) acked.set(n, position);
      lastAcked = Math.max(lastAcked, ...run.acked.keys());
    }

    const journal = await Journal.open({ dir: dir.path, segmentBytes: 64 * 1024 });
    try {
      expect(journal.recovery.damaged).toEqual([]);
      const found: number[] = [];
      const positions = new Map<number, number>();
      for await (const frame of journal.read(journal.start)) {
        const n = Number(Buffer.from(frame.records[0]?.payload ?? []).toString('utf8').split(':')[0]);
        found.push(n);
        positions.set(n, frame.position);
        expect(Buffer.from(frame.records[1]?.payload ?? []).toString('hex')).toBe(Buffer.alloc(n % 50, n & 0xff).toString('hex'));
      }
      // Gap-free numbering from 0, each frame once.
      expect(found).toEqual(Array.from({ length: found.length }, (_, i) => i));
      for (const [n, position] of acked) expect(positions.get(n), `acknowledged frame ${n}`).toBe(position);
      console.log(`journal crash: ${CYCLES} kills, ${acked.size} frames acknowledged, ${found.length} durable, ${torn} restarts found a torn tail`);
    } finally {
      await journal.close();
    }
  }, 60_000 + CYCLES * 10_000);
});

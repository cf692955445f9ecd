/**
 * Malformed MQTT against the real broker, run as a child process (the built CLI) so that a
 * crash shows as an exit and memory can be read from /proc/<pid>/status.
 *
 * - Saved regressions (`test/fuzz/regressions/*.json`) are replayed first, every run.
 * - Then FUZZ_CASES generated cases (`test/fuzz/packets.ts`; default 300, `npm run test:fuzz`
 *   runs 10,000) with a fixed seed (FUZZ_SEED to change it). Every case is one raw TCP
 *   connection; every HEALTH_EVERY cases a real mqtt.js client must still connect, publish
 *   a QoS 1 reading and find it over HTTP. A case that kills the broker or makes it log an
 *   error is saved as a regression and fails the run (fast-check prints it, no shrinking).
 * - Then explicit cases: the 5-byte header announcing 256 MB, a PUBLISH over the payload
 *   limit and over the packet limit, slowloris CONNECTs.
 * - Throughout, the broker's RSS must stay under RSS_LIMIT_MB.
 */
import fc from 'fast-check';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createLogger } from '../core/logger.js';
import { DEFAULT_MAX_PACKET_BYTES, MqttBroker } from '../ingest/mqtt-broker.js';
import { PacketInspector } from '../ingest/mqtt-wire.js';
import { checkTimeWindow, decodePayload, DEFAULT_LIMITS, RejectedPayload } from '../ingest/payload.js';
import { KEPT_PAYLOAD_BYTES, type RejectEntry } from '../ingest/rejects-log.js';
import type { TelemetryIngest } from '../ingest/telemetry-ingest.js';
import { connectClient, getJson } from './app-harness.js';
import { connectBytes, encode, encodeRemainingLength, endsOnPacketBoundary, fuzzCase, mqttString, PINGREQ, rawPacket, telemetryPayload, type FuzzCase, type Regression } from './fuzz/packets.js';
import { tempDir, waitFor } from './helpers.js';
import { startServerProcess, YOUNG_GENERATION_EXTRA_MB, type ServerProcess } from './process.js';

const FUZZ_CASES = Number(process.env.FUZZ_CASES ?? 300);
const FUZZ_SEED = Number(process.env.FUZZ_SEED ?? 20_240_611);
const HEALTH_EVERY = Math.max(50, Math.ceil(FUZZ_CASES / 40));
const RSS_LIMIT_MB = 300 + YOUNG_GENERATION_EXTRA_MB;
const MAX_PAYLOAD_BYTES = 4096;
/** Telemetry payloads published by a real client and checked against the rejects log. */
const ACCOUNTING_CASES = Math.max(100, Math.ceil(FUZZ_CASES / 10));
/** How long a case that ends on a packet boundary may take to be answered (PINGRESP) or closed. */
const ANSWER_MS = 1000;
/** How long a case that ends inside a packet stays connected (the broker is waiting for the rest). */
const PENDING_MS = 15;
/** Cases kept for a crash report: a crash can surface while a later case runs. */
const RECENT_CASES = 8;
/** How long after its last case a broker gets to crash, when replaying or isolating. */
const SETTLE_MS = 300;
const REGRESSIONS_DIR = fileURLToPath(new URL('./fuzz/regressions/', import.meta.url));

type Outcome = 'closed' | 'answered' | 'pending' | 'silent';

let server: ServerProcess;
let dataDir: ReturnType<typeof tempDir>;
let maxRssMb = 0;
let baselineRssMb = 0;
let probes = 0;
/** The broker's RSS at each health check, to see a trend. */
const rssAtChecks: number[] = [];

function alive(s: ServerProcess): boolean {
  return s.child.exitCode === null && s.child.signalCode === null;
}

function rssMb(s: ServerProcess): number {
  let status = '';
  try {
    status = readFileSync(`/proc/${s.child.pid}/status`, 'utf8');
  } catch {
    // gone already: the next alive() check says so
  }
  const kb = /VmRSS:\s+(\d+) kB/.exec(status)?.[1]; // absent once the process is a zombie
  const mb = kb === undefined ? 0 : Number(kb) / 1024;
  maxRssMb = Math.max(maxRssMb, mb);
  return mb;
}

/** Error (50) and fatal (60) lines the broker logged. */
function errorLines(s: ServerProcess): string[] {
  return s
    .output()
    .split('\n')
    .filter((l) => /^\{"level":(5|6)\d/.test(l));
}

async function start(): Promise<void> {
  dataDir = tempDir('tributary-fuzz-');
  server = await startServerProcess(['--data-dir', dataDir.path, '--max-payload-bytes', String(MAX_PAYLOAD_BYTES), '--log-level', 'error']);
}

async function stop(): Promise<void> {
  if (alive(server)) expect(await server.signal('SIGTERM')).toBe(0);
  dataDir.cleanup();
}

/**
 * Writes one case on a fresh connection, then a PINGREQ if the bytes end on a packet
 * boundary, and waits (event-driven) for the broker to close the connection or answer.
 */
function runCase(c: FuzzCase): Promise<Outcome> {
  const chunks = c.chunks.map((h) => Buffer.from(h, 'hex'));
  const complete = endsOnPacketBoundary(Buffer.concat(chunks));
  return new Promise<Outcome>((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port: server.mqttPort });
    socket.setNoDelay(true);
    let received = Buffer.alloc(0);
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const finish = (o: Outcome) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(o);
    };
    socket.on('error', () => {}); // ECONNRESET / EPIPE once the broker has dropped us
    socket.on('close', () => finish('closed'));
    socket.on('data', (d: Buffer) => {
      received = Buffer.concat([received.subarray(-1), d]);
      if (received.includes(PINGREQ_ANSWER)) finish('answered');
    });
    socket.on('connect', async () => {
      for (const chunk of chunks) {
        if (done || socket.destroyed) return;
        socket.write(chunk);
        // Separate writes, so the broker sees separate reads more often than not.
        if (chunks.length > 1) await new Promise((r) => setImmediate(r));
      }
      if (done || socket.destroyed) return;
      if (complete) socket.write(PINGREQ);
      timer = setTimeout(() => finish(complete ? 'silent' : 'pending'), complete ? ANSWER_MS : PENDING_MS);
    });
  });
}

const PINGREQ_ANSWER = Buffer.from([0xd0, 0x00]);

/** A real client still connects, publishes a QoS 1 reading, and the reading is queryable. */
async function healthCheck(): Promise<void> {
  expect(alive(server), `broker exited: ${server.output().slice(-2000)}`).toBe(true);
  const n = ++probes;
  const client = await connectClient(server.mqttUrl, { clientId: 'fuzz-probe' });
  try {
    await client.publishAsync('devices/fuzz-probe/telemetry', JSON.stringify({ probe: n }), { qos: 1 });
    const page = await getJson(`${server.httpUrl}/v1/devices/fuzz-probe/telemetry?from=-1h&order=desc&limit=1`);
    expect(page.status).toBe(200);
    expect((page.body as { items: Array<{ values: unknown }> }).items[0]?.values).toEqual({ probe: n });
  } finally {
    client.end(true);
  }
  rssAtChecks.push(Math.round(rssMb(server)));
}

/** Resolves true if the broker exits within `ms` (event-driven: the child's 'exit'). */
function diesWithin(ms: number): Promise<boolean> {
  if (!alive(server)) return Promise.resolve(true);
  const child = server.child;
  return new Promise((resolve) => {
    const onExit = () => {
      clearTimeout(timer);
      resolve(true);
    };
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, ms);
    child.once('exit', onExit);
  });
}

/** Replays `cases` one at a time on fresh brokers; the first that kills one on its own, if any. */
async function isolateCrash(cases: FuzzCase[]): Promise<FuzzCase | undefined> {
  for (const c of [...cases].reverse()) {
    if (alive(server)) await stop();
    else dataDir.cleanup();
    await start();
    await runCase(c);
    if (await diesWithin(SETTLE_MS)) return c;
  }
  return undefined;
}

function saveRegression(reg: Regression, name: string): string {
  mkdirSync(REGRESSIONS_DIR, { recursive: true });
  const file = join(REGRESSIONS_DIR, `${name}.json`);
  writeFileSync(file, `${JSON.stringify(reg, null, 2)}\n`);
  return file;
}

function loadRegressions(): Array<{ file: string; reg: Regression }> {
  if (!existsSync(REGRESSIONS_DIR)) return [];
  return readdirSync(REGRESSIONS_DIR)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((file) => ({ file, reg: JSON.parse(readFileSync(join(REGRESSIONS_DIR, file), 'utf8')) as Regression }));
}

/**
 * Writes `first`, then (once the broker has answered it, e.g. with a CONNACK) `then`, and
 * resolves with what came back once the broker closed the connection or `ms` passed.
 */
function exchange(first: Buffer, then: Buffer[], ms: number): Promise<{ closed: boolean; received: Buffer; closeMs: number }> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port: server.mqttPort });
    const chunks: Buffer[] = [];
    let sentAt = Date.now();
    const timer = setTimeout(() => {
      socket.removeAllListeners('close');
      socket.destroy();
      resolve({ closed: false, received: Buffer.concat(chunks), closeMs: -1 });
    }, ms);
    const sendRest = () => {
      sentAt = Date.now();
      for (const b of then) socket.write(b);
    };
    socket.on('error', () => {});
    socket.on('data', (d: Buffer) => {
      if (chunks.push(d) === 1 && first.length > 0) sendRest();
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ closed: true, received: Buffer.concat(chunks), closeMs: Date.now() - sentAt });
    });
    socket.on('connect', () => (first.length > 0 ? socket.write(first) : sendRest()));
  });
}

const CONNACK_OK = Buffer.from([0x20, 0x02, 0x00, 0x00]);

describe('MQTT ingest under malformed input (broker in a child process)', () => {
  beforeAll(async () => {
    await start();
    baselineRssMb = rssMb(server);
    console.log(`ingest fuzz: seed=${FUZZ_SEED} cases=${FUZZ_CASES} health check every ${HEALTH_EVERY} (FUZZ_SEED / FUZZ_CASES to change)`);
  });

  // A test that killed the broker must not take the ones after it down too.
  beforeEach(async () => {
    if (!alive(server)) {
      dataDir.cleanup();
      await start();
    }
  });

  afterAll(async () => {
    console.log(`ingest fuzz: broker RSS baseline ${baselineRssMb.toFixed(1)} MB, max ${maxRssMb.toFixed(1)} MB (limit ${RSS_LIMIT_MB} MB)`);
    if (server) await stop();
  });

  it('replays every saved regression case', async () => {
    const regressions = loadRegressions();
    for (const { file, reg } of regressions) {
      for (const c of reg.cases) await runCase(c);
      expect(await diesWithin(SETTLE_MS), `${file} crashed the broker again:\n${server.output().slice(-2000)}`).toBe(false);
    }
    expect(errorLines(server)).toEqual([]);
    await healthCheck();
    console.log(`ingest fuzz: replayed ${regressions.length} regression file(s)`);
  });

  it(
    `survives ${FUZZ_CASES} generated malformed connections with bounded memory`,
    async () => {
      const outcomes: Record<Outcome, number> = { closed: 0, answered: 0, pending: 0, silent: 0 };
      const silentKinds = new Map<string, number>();
      let index = 0;
      const recent: FuzzCase[] = [];
      const started = Date.now();
      await fc.assert(
        fc.asyncProperty(fuzzCase, async (c) => {
          const i = index++;
          const errorsBefore = errorLines(server).length;
          const outcome = await runCase(c);
          outcomes[outcome]++;
          if (outcome === 'silent') silentKinds.set(c.kind, (silentKinds.get(c.kind) ?? 0) + 1);
          recent.push(c);
          if (recent.length > RECENT_CASES) recent.shift();
          const crashed = !alive(server);
          const errors = errorLines(server).slice(errorsBefore);
          if (crashed || errors.length > 0) {
            const what = crashed ? `exited (code ${server.child.exitCode}, signal ${server.child.signalCode})` : `logged errors: ${errors.join('\n')}`;
            const output = server.output().slice(-3000);
            // The harm may come from an earlier case (a will published on close, a write that
            // finished later): find the case that does it alone on a fresh broker.
            const culprit = crashed ? await isolateCrash(recent) : undefined;
            const file = saveRegression(
              {
                description: `seed ${FUZZ_SEED}, case ${i}: the broker ${what.slice(0, 500)}; ${culprit ? 'the case below crashes a fresh broker alone' : `the last ${recent.length} cases, in order (no single one crashed a fresh broker)`}`,
                seed: FUZZ_SEED,
                cases: culprit ? [culprit] : [...recent],
              },
              `seed${FUZZ_SEED}-case${i}`,
            );
            throw new Error(`case ${i} (${c.kind}): the broker ${what}\nculprit: ${culprit ? JSON.stringify(culprit) : 'not isolated'}\nsaved as ${file}\n${output}`);
          }
          rssMb(server);
          if ((i + 1) % HEALTH_EVERY === 0) await healthCheck();
        }),
        { seed: FUZZ_SEED, numRuns: FUZZ_CASES, endOnFailure: true },
      );
      await healthCheck();
      const secs = (Date.now() - started) / 1000;
      console.log(
        `ingest fuzz: ${FUZZ_CASES} cases in ${secs.toFixed(1)} s; outcomes ${JSON.stringify(outcomes)}; ${probes} health checks; RSS max ${maxRssMb.toFixed(1)} MB`,
      );
      const step = Math.max(1, Math.floor(rssAtChecks.length / 10));
      console.log(`ingest fuzz: RSS (MB) at health checks, every ${step * HEALTH_EVERY} cases: ${rssAtChecks.filter((_, k) => k % step === 0).join(' ')}`);
      if (silentKinds.size > 0) console.log(`ingest fuzz: neither answered nor closed within ${ANSWER_MS} ms: ${JSON.stringify([...silentKinds].slice(0, 20))}`);
      expect(maxRssMb).toBeLessThan(RSS_LIMIT_MB);
    },
    30_000 + FUZZ_CASES * 100,
  );

  it(`accounts for every acknowledged telemetry payload: stored, or in the rejects log with its reason and bytes (${ACCOUNTING_CASES} cases)`, { timeout: 30_000 + ACCOUNTING_CASES * 100 }, async () => {
    const device = await connectClient(server.mqttUrl, { clientId: 'fz-accounting' });
    const limits = { ...DEFAULT_LIMITS, maxPayloadBytes: MAX_PAYLOAD_BYTES };
    const reasons = new Map<string, number>();
    let n = 0;
    try {
      await fc.assert(
        fc.asyncProperty(telemetryPayload, async (payload) => {
          // A fresh device per case, so its rejects list holds this case's entry or nothing.
          const deviceId = `fz-acct-${n++}`;
          let expected: string | undefined;
          try {
            checkTimeWindow(decodePayload(payload, limits), { now: Date.now(), maxFutureMs: 3_600_000, maxAgeMs: 0 });
          } catch (err) {
            if (!(err instanceof RejectedPayload)) throw err; // the decoder only ever throws rejects
            expected = err.reason;
          }
          await device.publishAsync(`devices/${deviceId}/telemetry`, payload, { qos: 1 });
          // The PUBACK came: the outcome is already durable, no waiting.
          const rejects = (await getJson(`${server.httpUrl}/v1/rejects?deviceId=${deviceId}`)).body as { items: RejectEntry[] };
          if (expected === undefined) {
            expect(rejects.items).toEqual([]);
            const info = await getJson(`${server.httpUrl}/v1/devices/${deviceId}`);
            expect(info.status).toBe(200);
          } else {
            expect(rejects.items.map((r) => r.reason)).toEqual([expected]);
            const entry = rejects.items[0] as RejectEntry;
            const kept = Buffer.from(entry.payload, entry.payloadEncoding);
            expect(entry.payloadBytes).toBe(payload.length);
            expect(kept.equals(payload.subarray(0, KEPT_PAYLOAD_BYTES))).toBe(true);
            reasons.set(expected, (reasons.get(expected) ?? 0) + 1);
          }
        }),
        { seed: FUZZ_SEED, numRuns: ACCOUNTING_CASES, endOnFailure: true },
      );
    } finally {
      device.end(true);
    }
    console.log(`ingest fuzz: accounting, rejects by reason ${JSON.stringify(Object.fromEntries(reasons))} of ${ACCOUNTING_CASES}`);
    expect(errorLines(server)).toEqual([]);
  });

  it('drops a connection whose 5-byte header announces 256 MB, before buffering the body', async () => {
    const before = rssMb(server);
    const header256 = (first: number) => Buffer.from([first, 0xff, 0xff, 0xff, 0x7f]);
    // Before CONNECT (a CONNECT that big), and after it (a PUBLISH that big).
    const alone = await exchange(Buffer.alloc(0), [header256(0x10)], 2000);
    expect(alone.closed).toBe(true);
    const afterConnect = await exchange(connectBytes('fz-big-header'), [header256(0x30)], 2000);
    expect(afterConnect.closed).toBe(true);
    expect(afterConnect.received).toEqual(CONNACK_OK); // then dropped

    // 20 at once, each followed by 1 MB of body: none of it is kept.
    const body = Buffer.alloc(1 << 20, 0x41);
    const many = await Promise.all(Array.from({ length: 20 }, (_, k) => exchange(connectBytes(`fz-big-${k}`), [header256(0x30), body], 5000)));
    expect(many.map((r) => [r.closed, r.received.equals(CONNACK_OK)])).toEqual(many.map(() => [true, true]));
    const after = rssMb(server);
    console.log(`ingest fuzz: 256 MB headers: RSS ${before.toFixed(1)} → ${after.toFixed(1)} MB; closed after ${alone.closeMs} / ${afterConnect.closeMs} ms`);
    expect(after - before).toBeLessThan(32);
    await healthCheck();
  });

  it('acknowledges but does not store a PUBLISH over the payload limit, and drops one over the packet limit', async () => {
    const device = await connectClient(server.mqttUrl, { clientId: 'fz-too-big' });
    try {
      await device.publishAsync('devices/fz-too-big/telemetry', JSON.stringify({ blob: 'x'.repeat(MAX_PAYLOAD_BYTES * 3) }), { qos: 1 });
      expect(device.connected).toBe(true);
      const page = await getJson(`${server.httpUrl}/v1/devices/fz-too-big/telemetry?from=-1h`);
      if (page.status === 200) expect((page.body as { items: unknown[] }).items).toEqual([]);
      else expect(page.status).toBe(404);
      const metrics = await fetch(`${server.httpUrl}/metrics`).then((r) => r.text());
      expect(metrics).toMatch(/tributary_ingest_rejects_total\{reason="payload_too_large",transport="mqtt"\} [1-9]/);
    } finally {
      device.end(true);
    }

    // Announcing one byte more than the broker's packet limit: dropped at the header.
    const over = Buffer.concat([Buffer.from([0x30]), encodeRemainingLength(DEFAULT_MAX_PACKET_BYTES + 1), mqttString('devices/fz-too-big/telemetry'), Buffer.alloc(64 * 1024)]);
    const r = await exchange(connectBytes('fz-over-limit'), [over], 2000);
    expect(r.closed).toBe(true);
    expect(r.received).toEqual(CONNACK_OK);
    await healthCheck();
  });

  it('keeps serving while slowloris clients dribble a CONNECT at 1 byte/s, and completes them', async () => {
    const connect = connectBytes('fz-slow', { keepalive: 30 });
    const sockets = Array.from({ length: 20 }, () => net.connect({ host: '127.0.0.1', port: server.mqttPort }));
    const received = sockets.map(() => [] as Buffer[]);
    sockets.forEach((s, k) => {
      s.on('error', () => {});
      s.on('data', (d: Buffer) => received[k]?.push(d));
    });
    await Promise.all(sockets.map((s) => new Promise((r) => s.once('connect', r))));
    try {
      for (let second = 0; second < 3; second++) {
        for (const s of sockets) s.write(connect.subarray(second, second + 1));
        if (second === 1) await healthCheck(); // other clients are served meanwhile
        await new Promise((r) => setTimeout(r, 1000));
      }
      expect(sockets.every((s) => !s.destroyed)).toBe(true);
      // Distinct client ids, or aedes would take the session over from one to the next.
      sockets.forEach((s, k) => s.write(Buffer.concat([connect.subarray(3, connect.length - 1), Buffer.from([0x41 + k])])));
      await waitFor(() => received.every((r) => Buffer.concat(r).equals(CONNACK_OK)), 5000, 'a CONNACK on every slow connection');
    } finally {
      for (const s of sockets) s.destroy();
    }
    await healthCheck();
  });

  it(`kept the broker's RSS under ${RSS_LIMIT_MB} MB and logged no errors`, () => {
    rssMb(server);
    expect(maxRssMb).toBeLessThan(RSS_LIMIT_MB);
    expect(errorLines(server)).toEqual([]);
  });
});

describe('the MQTT packet size limit (broker in process)', () => {
  it('PacketInspector follows packets across arbitrary chunking and flags only an over-limit header', () => {
    const packets = [connectBytes('a'), encode({ cmd: 'publish', topic: 't', payload: Buffer.alloc(300), qos: 1, messageId: 7, retain: false, dup: false }), PINGREQ];
    const stream = Buffer.concat(packets);
    const inspector = new PacketInspector(400);
    for (const byte of stream) expect(inspector.feed(Buffer.from([byte]))).toBeUndefined();
    expect(new PacketInspector(400).feed(Buffer.concat([stream, Buffer.from([0x30, 0x92, 0x03])]))?.reason).toMatch(/402 bytes exceeds the limit of 400/);
    expect(new PacketInspector(400).feed(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff]))?.reason).toMatch(/invalid MQTT remaining length/);
  });

  it('drops a connection announcing more than maxPacketBytes and serves packets up to it', async () => {
    const broker = await MqttBroker.start({
      host: '127.0.0.1',
      port: 0,
      ingest: {} as unknown as TelemetryIngest, // only non-telemetry topics below: ingest is never called
      logger: createLogger('silent'),
      maxPacketBytes: 1024,
    });
    try {
      const port = broker.address.port;
      const talk = (bytes: Buffer[]) =>
        new Promise<{ closed: boolean; received: Buffer }>((resolve) => {
          const s = net.connect({ host: '127.0.0.1', port });
          const got: Buffer[] = [];
          const timer = setTimeout(() => {
            s.removeAllListeners('close');
            s.destroy();
            resolve({ closed: false, received: Buffer.concat(got) });
          }, 500);
          s.on('error', () => {});
          s.on('data', (d: Buffer) => got.push(d));
          s.on('close', () => {
            clearTimeout(timer);
            resolve({ closed: true, received: Buffer.concat(got) });
          });
          s.on('connect', () => bytes.forEach((b) => s.write(b)));
        });
      const publishOf = (bodyBytes: number) => {
        const topicAndId = Buffer.concat([mqttString('other/topic'), Buffer.from([0, 9])]);
        return rawPacket(0x32, Buffer.concat([topicAndId, Buffer.alloc(bodyBytes - topicAndId.length)]));
      };
      const fits = await talk([connectBytes('c-fits'), publishOf(1024)]);
      expect(fits.closed).toBe(false);
      expect(fits.received).toEqual(Buffer.from([0x20, 0x02, 0x00, 0x00, 0x40, 0x02, 0x00, 0x09])); // CONNACK, PUBACK
      const tooBig = await talk([connectBytes('c-big'), publishOf(1025).subarray(0, 3)]); // just the header
      expect(tooBig.closed).toBe(true);
    } finally {
      await broker.close();
    }
  });
});

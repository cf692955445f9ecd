/**
 * The crash-safety harness: real mqtt.js devices publish QoS 1 readings with persistent
 * sessions into a `tributary start` child process, which is `kill -9`ed at random points
 * and restarted on the same MQTT port, so that the devices reconnect by themselves and
 * re-send what was never acknowledged (mqtt.js keeps unacked QoS 1 PUBLISHes in its
 * outgoing store and re-sends them with the same packet id). Afterwards the data
 * directory is opened in-process and checked: every PUBACK'd reading stored exactly once,
 * once on the change stream as an INSERT, sequence numbers gap-free per shard.
 *
 * A `kill -9` ends the process, not the machine: what the server had written but not yet
 * fsynced survives in the page cache. So this covers process crashes at any point of the
 * write path (atomicity of the batch, PUBACK after commit, the redelivery guard, recovery
 * of sequence numbers and server stamps), not power loss.
 *
 * Used by test/crash.test.ts (CRASH_CYCLES kills; `npm run test:crash` runs a longer soak).
 */
import { prng } from '../../core/prng.js';
import mqtt, { type MqttClient, type Packet } from 'mqtt';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import { MAX_TIMESTAMP_MS } from '../../core/time.js';
import { Database } from '../../store/database.js';
import { LevelTelemetryStore } from '../../store/level-store.js';
import type { Values } from '../../store/types.js';
import { EmbeddedChangeLog } from '../../streams/embedded-log.js';
import { shardOf } from '../../streams/shard.js';
import { tempDir, waitFor } from '../helpers.js';
import { startServerProcess, type ServerProcess } from '../process.js';

/** The server's defaults, which the in-process check must open the directory with. */
const PARTITION_WINDOW_MS = 86_400_000;
const STREAM_SHARDS = 4;
/** Device-stamped readings lie in the past, a minute apart, so they never meet a server stamp and span many partitions. */
const DEVICE_TS_BASE = Date.UTC(2024, 0, 1);
const DEVICE_TS_STEP = 60_000;

export interface CrashOptions {
  cycles: number;
  devices?: number;
  /** QoS 1 PUBLISHes each device keeps unacknowledged at most (its in-flight window). */
  window?: number;
  /** Random delay before each kill, counted from when every device has been acknowledged again by the new server. */
  killDelayMs?: [number, number];
  seed?: number;
  log?: (line: string) => void;
}

/** One reading as the device sent it: its unique `n`, and what the store must hold for it. */
interface SentReading {
  n: string;
  values: Values;
  /** Device-supplied ts, if any. */
  ts?: number;
}

interface Message {
  device: Device;
  payload: string;
  readings: SentReading[];
  /** PUBLISH packets written to a socket for it: 1, plus re-sends after reconnects. */
  sends: number;
  state: 'pending' | 'acked' | 'failed';
  /** Server instance (index into CrashRun's `instances`) whose connection delivered the PUBACK. */
  ackedBy?: number;
}

/** How long an aimed kill waits for a group commit before it signals anyway. */
const AIM_LIMIT_MS = 1000;

export interface KillRecord {
  cycle: number;
  /** Aimed at a group commit (see {@link CrashRun.kill}) rather than signalled at once. */
  aimed: boolean;
  /** An aimed kill that saw no commit within AIM_LIMIT_MS and signalled anyway. */
  aimMissed: boolean;
  /** ms after the devices were acknowledged by this server instance. */
  delayMs: number;
  /** PUBLISHes written by the devices and not yet acknowledged when the signal was sent. */
  unacked: number;
  /** What the server's threads were doing, sampled from /proc right before the signal (see {@link sampleCommit}). */
  commit: CommitSample;
  /**
   * Of the `unacked` PUBLISHes, those whose readings the killed server had committed
   * (known after the run, from their change records' commit time): the crash fell
   * between a commit and its PUBACKs.
   */
  committedUnacked?: number;
}

/**
 * The direct signal for "a batch was in flight": a thread of the server inside the
 * write(2) or fsync(2)/fdatasync(2) of LevelDB's write-ahead log (`db/NNNNNN.log`).
 * Every store write is a synced batch (`Database.commit`, `sync: true`) and nothing else
 * writes or syncs the WAL, so such a thread is a group commit on its way to disk
 * (compactions write `.ldb` and `MANIFEST` files, not the log). `unavailable` where
 * /proc/<pid>/task/<tid>/syscall cannot be read (not Linux, another architecture,
 * restricted ptrace). There, and where these calls are too quick ever to be caught (a log
 * on tmpfs), the test falls back to the weaker proxy: PUBLISHes sent but not yet
 * acknowledged. A kill during the fdatasync leaves the batch's log record written, so
 * the restarted server recovers it while its PUBACKs were never sent: the case the
 * redelivery guard exists for.
 */
export type CommitSample = 'wal-sync' | 'wal-write' | 'none' | 'unavailable';

export interface CrashReport {
  seed: number;
  kills: KillRecord[];
  /** Kills that landed while a group commit was writing or syncing the WAL (direct signal). */
  killsDuringCommit: number;
  /** Kills with PUBLISHes sent but unacknowledged (proxy signal). */
  killsWithUnacked: number;
  /**
   * Whether the direct signal works here: /proc readable at every kill and a WAL
   * write/fdatasync seen at least once. Where the log is on tmpfs (or fsync is
   * otherwise a no-op) those calls take microseconds and are never caught; the test
   * then judges by the proxy.
   */
  directSignal: boolean;
  /** Kills after which a PUBLISH the killed server had committed was still unacknowledged (known after the run). */
  killsBetweenCommitAndPuback: number;
  messagesSent: number;
  readingsSent: number;
  messagesAcked: number;
  readingsAcked: number;
  /** PUBLISHes mqtt.js re-sent after a reconnect (same packet id, same payload). */
  resends: number;
  /** Messages that were re-sent at least once and then acknowledged. */
  resentMessagesAcked: number;
  /** Most PUBLISHes written for one message (more than 2: re-sent again after a later crash). */
  maxSends: number;
  /**
   * Re-sent, acknowledged messages whose readings a killed server had already committed
   * (their change records are older than the server instance that acknowledged them):
   * the crash fell between commit and PUBACK, and the redelivery was acknowledged without
   * a second write. `withServerStamp` counts those only the delivery-id guard protects.
   */
  redeliveriesOfCommitted: number;
  redeliveriesOfCommittedWithServerStamp: number;
  /** Publishes mqtt.js failed before writing them (queued behind a re-send when the connection dropped). */
  messagesFailedUnsent: number;
  readingsStored: number;
  changeRecords: number;
  shardsUsed: number;
  durationMs: number;
}

export interface Verification {
  problems: string[];
  readingsStored: number;
  changeRecords: number;
  shardsUsed: number;
  /** createdAt of each reading's change record, by `n`. */
  createdAt: Map<string, number>;
}

/** One simulated device: an mqtt.js client with a persistent session and a window of QoS 1 publishes. */
class Device {
  readonly client: MqttClient;
  readonly messages: Message[] = [];
  private readonly byPayload = new Map<string, Message>();
  private outstanding = 0;
  private counter = 0;
  private deviceTsCounter = 0;
  /** Acks received per server instance. */
  readonly acks: number[] = [];
  resends = 0;
  stopped = false;
  /** The server instance this device's current connection belongs to (set on CONNACK, before mqtt.js re-sends anything). */
  private connection = -1;

  constructor(
    readonly id: string,
    port: number,
    private readonly window: number,
    private readonly random: () => number,
    private readonly instance: () => number,
  ) {
    this.client = mqtt.connect(`mqtt://127.0.0.1:${port}`, {
      clientId: id,
      clean: false,
      reconnectPeriod: 25,
      connectTimeout: 5000,
      keepalive: 30,
    });
    // Errors (ECONNREFUSED while the server is down) are expected; mqtt.js reconnects.
    this.client.on('error', () => undefined);
    this.client.on('connect', () => this.pump());
    this.client.on('packetreceive', (packet: Packet) => {
      if (packet.cmd === 'connack') this.connection = this.instance();
    });
    this.client.on('packetsend', (packet: Packet) => {
      if (packet.cmd !== 'publish') return;
      const m = this.byPayload.get(String(packet.payload));
      if (m === undefined) return;
      m.sends++;
      if (m.sends > 1) this.resends++;
    });
  }

  /** Adds the PUBLISHes written and not yet acknowledged to `out`. */
  collectUnacked(out: Message[]): void {
    for (const m of this.messages) if (m.state === 'pending' && m.sends > 0) out.push(m);
  }

  get pending(): number {
    return this.outstanding;
  }

  /** Publishes until the window is full. Only while connected, so nothing piles up offline. */
  pump(): void {
    while (!this.stopped && this.client.connected && this.outstanding < this.window) this.publishOne();
  }

  private nextReading(serverStamped: boolean, topLevelTs = false): { json: unknown; reading: SentReading } {
    const n = `${this.id}:${this.counter++}`;
    const values: Values = { n, temp: Math.round(this.random() * 1000) / 10 };
    if (serverStamped) return { json: values, reading: { n, values } };
    const ts = DEVICE_TS_BASE + this.deviceTsCounter++ * DEVICE_TS_STEP;
    return { json: topLevelTs ? { ts, ...values } : { ts, values }, reading: { n, values, ts } };
  }

  private publishOne(): void {
    // The mix the issue asks for: server-stamped objects, device-stamped ones (both
    // shapes), and arrays of 2-3 readings mixing the two.
    const r = this.random();
    let body: unknown;
    let readings: SentReading[];
    if (r < 0.4) {
      const one = this.nextReading(true);
      body = one.json;
      readings = [one.reading];
    } else if (r < 0.7) {
      const one = this.nextReading(false, r < 0.55);
      body = one.json;
      readings = [one.reading];
    } else {
      const size = this.random() < 0.5 ? 2 : 3;
      const items = Array.from({ length: size }, () => this.nextReading(this.random() < 0.5));
      body = items.map((i) => i.json);
      readings = items.map((i) => i.reading);
    }
    const payload = JSON.stringify(body);
    const message: Message = { device: this, payload, readings, sends: 0, state: 'pending' };
    this.messages.push(message);
    this.byPayload.set(payload, message);
    this.outstanding++;
    this.client.publish(`devices/${this.id}/telemetry`, payload, { qos: 1 }, (err) => {
      this.outstanding--;
      if (err) {
        message.state = 'failed';
      } else {
        message.state = 'acked';
        const i = this.connection;
        message.ackedBy = i;
        this.acks[i] = (this.acks[i] ?? 0) + 1;
      }
      // Deferred: mqtt.js fails queued publishes synchronously while it tears a connection down.
      setImmediate(() => this.pump());
    });
  }

  async end(force: boolean): Promise<void> {
    this.stopped = true;
    await this.client.endAsync(force).catch(() => undefined);
  }
}

const SYSCALLS: Record<string, { write: number[]; sync: number[] }> = {
  x64: { write: [1, 18], sync: [74, 75] }, // write, pwrite64; fsync, fdatasync
  arm64: { write: [64, 68], sync: [82, 83] },
};

/** Samples every thread of `pid` once (see {@link CommitSample}); synchronous, so the kill can follow within microseconds. */
export function sampleCommit(pid: number): CommitSample {
  const nr = SYSCALLS[process.arch];
  if (nr === undefined || process.platform !== 'linux') return 'unavailable';
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return 'unavailable';
  }
  let sample: CommitSample = 'none';
  let readable = 0;
  for (const tid of tids) {
    let fields: string[];
    try {
      fields = readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'utf8').trim().split(' ');
      readable++;
    } catch {
      continue;
    }
    const call = Number(fields[0]);
    const isSync = nr.sync.includes(call);
    if (!isSync && !nr.write.includes(call)) continue;
    const fd = Number.parseInt(fields[1] ?? '', 16);
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (!/\/db\/\d+\.log$/.test(target)) continue;
    if (isSync) return 'wal-sync';
    sample = 'wal-write';
  }
  return readable === 0 ? 'unavailable' : sample;
}

/** A crash run: owns the data directory, the server child and the devices; `dispose()` releases all of them. */
export class CrashRun {
  private readonly dir = tempDir('tributary-crash-');
  private readonly random: () => number;
  private readonly devices: Device[] = [];
  private server: ServerProcess | undefined;
  private mqttPort = 0;
  /** Start time (test clock, before spawning) of each server instance. */
  private readonly instances: number[] = [];
  private readonly kills: KillRecord[] = [];
  private readonly log: (line: string) => void;
  private readonly startedAt = Date.now();
  private disposed = false;
  /** A WAL write/fdatasync has been seen at a kill in this run. */
  private commitSeen = false;
  /** The direct signal cannot be seen here, so aiming only costs time. */
  private aimingUseless = false;
  /** Per kill, the PUBLISHes written and not yet acknowledged at that moment. */
  private readonly outstandingAtKill: Message[][] = [];

  constructor(private readonly opts: CrashOptions) {
    this.seed = opts.seed ?? Math.floor(Math.random() * 2 ** 31);
    this.random = prng(this.seed);
    this.log = opts.log ?? (() => undefined);
  }

  readonly seed: number;

  get dataDir(): string {
    return this.dir.path;
  }

  /** Runs `cycles` kill -9 / restart cycles, then drains the devices and stops the server gracefully. */
  async run(): Promise<{ exitCode: number | null; drained: boolean }> {
    await this.startServer();
    const deviceCount = this.opts.devices ?? 4;
    for (let i = 0; i < deviceCount; i++) {
      this.devices.push(new Device(`crash-dev-${i}`, this.mqttPort, this.opts.window ?? 6, this.random, () => this.instances.length - 1));
    }
    const [minDelay, maxDelay] = this.opts.killDelayMs ?? [0, 400];
    for (let cycle = 1; cycle <= this.opts.cycles; cycle++) {
      // From the first acknowledgement on: a short delay can land amid the re-sends of the last crash.
      await this.waitForAcks(1);
      // One kill in four comes within a few ms, often while the devices are still re-sending
      // what the previous crash left unacknowledged (so a message can be re-sent twice).
      const span = this.random() < 0.25 ? Math.min(maxDelay - minDelay, 10) : maxDelay - minDelay;
      const delayMs = Math.round(minDelay + this.random() * span);
      await new Promise((r) => setTimeout(r, delayMs)); // the random kill point, not a synchronization
      // Two kills in three are aimed at a group commit, the third lands wherever the delay ends.
      this.kills.push(await this.kill(cycle, delayMs, cycle % 3 !== 0));
      const server = this.server as ServerProcess;
      await server.signal('SIGKILL');
      await this.startServer();
    }

    // Drain: no new publishes; every written PUBLISH must be acknowledged by the last server.
    await this.waitForAcks(1);
    for (const d of this.devices) d.stopped = true;
    let drained = true;
    try {
      await waitFor(() => this.devices.every((d) => d.pending === 0), 30_000, 'every outstanding PUBLISH to be acknowledged after the last restart');
    } catch (err) {
      drained = false;
      this.log(String(err));
    }
    // A clean DISCONNECT when drained; mqtt.js would otherwise wait for the missing PUBACKs.
    await Promise.all(this.devices.map((d) => d.end(!drained)));
    const exitCode = await (this.server as ServerProcess).signal('SIGTERM');
    this.server = undefined;
    return { exitCode, drained };
  }

  /**
   * Kills the server. A random kill signals at once; an aimed one first polls the server's
   * threads (see {@link sampleCommit}) and signals the moment a group commit is seen writing
   * or syncing the WAL: the next commit after the random delay, so still a random point of
   * the stream, but one inside a batch. Polling runs in short synchronous slices (the
   * signal follows the sample within microseconds) with the event loop free in between,
   * so the devices keep publishing; after AIM_LIMIT_MS without a sighting it signals
   * anyway, and if no commit has ever been seen in this run, later kills are not aimed.
   */
  private async kill(cycle: number, delayMs: number, aim: boolean): Promise<KillRecord> {
    const server = this.server as ServerProcess;
    const pid = server.child.pid as number;
    const aimed = aim && !this.aimingUseless;
    const deadline = Date.now() + AIM_LIMIT_MS;
    while (true) {
      const sliceEnd = Date.now() + 2;
      do {
        const commit = sampleCommit(pid);
        const inCommit = commit === 'wal-sync' || commit === 'wal-write';
        const missed = aimed && !inCommit && commit !== 'unavailable' && Date.now() >= deadline;
        if (!aimed || inCommit || commit === 'unavailable' || missed) {
          server.child.kill('SIGKILL');
          // Recorded after the signal: nothing can settle before this synchronous code ends.
          const outstanding: Message[] = [];
          for (const d of this.devices) d.collectUnacked(outstanding);
          if (inCommit) this.commitSeen = true;
          if (missed && !this.commitSeen) this.aimingUseless = true;
          if (commit === 'unavailable') this.aimingUseless = true;
          this.outstandingAtKill.push(outstanding);
          return { cycle, delayMs, aimed, aimMissed: missed, unacked: outstanding.length, commit };
        }
      } while (Date.now() < sliceEnd);
      await new Promise((r) => setImmediate(r));
    }
  }

  /** Every device connected to the current instance and acknowledged `n` times by it. */
  private async waitForAcks(n: number): Promise<void> {
    const instance = this.instances.length - 1;
    await waitFor(() => this.devices.every((d) => d.client.connected && (d.acks[instance] ?? 0) >= n), 20_000, `every device to be acknowledged by server instance ${instance}`);
  }

  /** Starts the server; after the first start, on the same MQTT port (retrying while the kill's port is not yet free). */
  private async startServer(): Promise<void> {
    const args = ['--data-dir', this.dir.path];
    if (this.mqttPort !== 0) args.push('--mqtt-port', String(this.mqttPort));
    for (let attempt = 1; ; attempt++) {
      this.instances.push(Date.now());
      try {
        this.server = await startServerProcess(args);
        // dispose() may have run meanwhile (a timed-out test): leave no server behind.
        if (this.disposed) {
          await this.server.signal('SIGKILL');
          this.server = undefined;
          throw new Error('the crash run was disposed');
        }
        break;
      } catch (err) {
        this.instances.pop();
        if (this.disposed || attempt >= 50 || !/EADDRINUSE/.test(String(err))) throw err;
        this.log(`port ${this.mqttPort} still in use; retrying (${attempt})`);
        await new Promise((r) => setTimeout(r, 50)); // back-off between attempts
      }
    }
    this.mqttPort = this.server.mqttPort;
  }

  /** Opens the stopped server's data directory in-process and checks it against what the devices sent and had acknowledged. */
  async verify(): Promise<Verification> {
    if (this.server !== undefined) throw new Error('stop the server before verifying');
    const problems: string[] = [];
    const problem = (text: string) => {
      if (problems.length < 50) problems.push(text);
    };
    const database = await Database.open(this.dir.path);
    try {
      const changeLog = await EmbeddedChangeLog.open(database, { shards: STREAM_SHARDS });
      const store = await LevelTelemetryStore.open({ database, changeLog, partitionWindowMs: PARTITION_WINDOW_MS, maxBatch: 2000, maxDelayMs: 0 });
      try {
        const sent = new Map<string, { reading: SentReading; message: Message }>();
        for (const d of this.devices) for (const m of d.messages) for (const r of m.readings) sent.set(r.n, { reading: r, message: m });

        // The store: every stored reading is one we sent, with its values, at most once.
        const stored = new Map<string, { deviceId: string; ts: number; seq: number; count: number }>();
        let readingsStored = 0;
        for (const d of this.devices) {
          let cursor: string | undefined;
          let deviceCount = 0;
          let last: { ts: number; seq: number } | undefined;
          for (let page = 0; page < 100_000; page++) {
            const res = await store.query({ deviceId: d.id, from: 0, to: MAX_TIMESTAMP_MS, order: 'asc', limit: 10_000, ...(cursor === undefined ? {} : { cursor }) });
            for (const item of res.items) {
              readingsStored++;
              deviceCount++;
              last = item;
              const n = item.values.n;
              const s = typeof n === 'string' ? sent.get(n) : undefined;
              if (s === undefined) {
                problem(`stored reading ${d.id}@${item.ts}/${item.seq} is not one the devices sent: ${JSON.stringify(item.values)}`);
                continue;
              }
              const seen = stored.get(n as string);
              if (seen !== undefined) {
                seen.count++;
                problem(`reading ${String(n)} is stored ${seen.count} times (also at ${item.ts}/${item.seq}, first at ${seen.ts}/${seen.seq}); acked: ${s.message.state === 'acked'}, sends: ${s.message.sends}`);
                continue;
              }
              stored.set(n as string, { deviceId: d.id, ts: item.ts, seq: item.seq, count: 1 });
              if (s.message.device !== d) problem(`reading ${String(n)} is stored under device ${d.id}`);
              if (!isDeepStrictEqual(item.values, s.reading.values)) problem(`reading ${String(n)} has values ${JSON.stringify(item.values)}, sent ${JSON.stringify(s.reading.values)}`);
              if (s.reading.ts !== undefined && item.ts !== s.reading.ts) problem(`reading ${String(n)} is stored at ts ${item.ts}, sent with ts ${s.reading.ts}`);
            }
            if (res.nextCursor === null) break;
            cursor = res.nextCursor;
          }
          // The registry's count and the latest index come out of the same batches.
          const info = await store.getDevice(d.id);
          if ((info?.readings ?? 0) !== deviceCount) problem(`registry counts ${info?.readings} readings for ${d.id}, the store holds ${deviceCount}`);
          const latest = await store.latest(d.id);
          if (latest?.ts !== last?.ts || latest?.seq !== last?.seq) problem(`latest of ${d.id} is ${latest?.ts}/${latest?.seq}, the highest stored item is ${last?.ts}/${last?.seq}`);
        }

        // Every PUBACK'd reading is stored (exactly once: duplicates were reported above).
        for (const [n, s] of sent) {
          if (s.message.state === 'acked' && !stored.has(n)) problem(`acknowledged reading ${n} is missing (payload ${s.message.payload}, sends ${s.message.sends}, acked by instance ${s.message.ackedBy})`);
          if (s.message.state === 'failed' && s.message.sends > 0) problem(`reading ${n}: mqtt.js failed a publish it had already written, which this harness does not expect`);
        }

        // The change stream: one INSERT per stored reading, gap-free sequence numbers per shard.
        const inserted = new Set<string>();
        const createdAt = new Map<string, number>();
        let changeRecords = 0;
        let shardsUsed = 0;
        for (let shard = 0; shard < STREAM_SHARDS; shard++) {
          let after = 0;
          for (let page = 0; page < 100_000; page++) {
            const records = await changeLog.read(shard, after, 10_000);
            if (records.length === 0) break;
            for (const rec of records) {
              changeRecords++;
              if (rec.sequenceNumber !== after + 1) problem(`shard ${shard}: sequence number ${rec.sequenceNumber} follows ${after}`);
              after = rec.sequenceNumber;
              if (shardOf(rec.deviceId, STREAM_SHARDS) !== shard) problem(`shard ${shard} holds a record of ${rec.deviceId}, which maps to shard ${shardOf(rec.deviceId, STREAM_SHARDS)}`);
              const n = rec.newValues?.n;
              if (rec.eventName !== 'INSERT' || typeof n !== 'string') {
                problem(`shard ${shard}/${rec.sequenceNumber}: unexpected ${rec.eventName} of ${rec.deviceId}@${rec.ts}/${rec.seq}`);
                continue;
              }
              if (inserted.has(n)) problem(`reading ${n} appears more than once on the change stream (again at ${shard}/${rec.sequenceNumber})`);
              inserted.add(n);
              createdAt.set(n, rec.createdAt);
              const s = stored.get(n);
              if (s === undefined) problem(`change record ${shard}/${rec.sequenceNumber} inserts ${n}, which is not in the store`);
              else if (s.deviceId !== rec.deviceId || s.ts !== rec.ts || s.seq !== rec.seq) problem(`change record ${shard}/${rec.sequenceNumber} has key ${rec.deviceId}@${rec.ts}/${rec.seq}, the store ${s.deviceId}@${s.ts}/${s.seq}`);
            }
          }
          if (after > 0) shardsUsed++;
          const info = (await changeLog.shards())[shard];
          if ((info?.lastSequenceNumber ?? 0) !== after) problem(`shard ${shard}: last sequence number ${info?.lastSequenceNumber}, read up to ${after}`);
          if (after > 0 && info?.firstSequenceNumber !== 1) problem(`shard ${shard}: first sequence number ${info?.firstSequenceNumber}`);
        }
        for (const n of stored.keys()) if (!inserted.has(n)) problem(`stored reading ${n} has no INSERT on the change stream`);
        return { problems, readingsStored, changeRecords, shardsUsed, createdAt };
      } finally {
        await store.close();
      }
    } finally {
      await database.close();
    }
  }

  report(verification: Verification): CrashReport {
    const messages = this.devices.flatMap((d) => d.messages);
    const acked = messages.filter((m) => m.state === 'acked');
    let redeliveriesOfCommitted = 0;
    let withServerStamp = 0;
    for (const m of acked) {
      if (m.sends < 2 || m.ackedBy === undefined) continue;
      const first = m.readings[0] as SentReading;
      const created = verification.createdAt.get(first.n);
      if (created !== undefined && created < (this.instances[m.ackedBy] as number)) {
        redeliveriesOfCommitted++;
        if (m.readings.some((r) => r.ts === undefined)) withServerStamp++;
      }
    }
    this.kills.forEach((k, i) => {
      // The instance killed by kill i is instance i; instance i + 1 was spawned after its death.
      const restartedAt = this.instances[i + 1] ?? Infinity;
      k.committedUnacked = (this.outstandingAtKill[i] ?? []).filter((m) => {
        const created = verification.createdAt.get((m.readings[0] as SentReading).n);
        return created !== undefined && created < restartedAt;
      }).length;
    });
    return {
      seed: this.seed,
      kills: this.kills,
      killsDuringCommit: this.kills.filter((k) => k.commit === 'wal-sync' || k.commit === 'wal-write').length,
      killsWithUnacked: this.kills.filter((k) => k.unacked > 0).length,
      directSignal: this.commitSeen && this.kills.every((k) => k.commit !== 'unavailable'),
      killsBetweenCommitAndPuback: this.kills.filter((k) => (k.committedUnacked ?? 0) > 0).length,
      messagesSent: messages.filter((m) => m.sends > 0).length,
      readingsSent: messages.reduce((n, m) => n + (m.sends > 0 ? m.readings.length : 0), 0),
      messagesAcked: acked.length,
      readingsAcked: acked.reduce((n, m) => n + m.readings.length, 0),
      resends: this.devices.reduce((n, d) => n + d.resends, 0),
      resentMessagesAcked: acked.filter((m) => m.sends > 1).length,
      maxSends: messages.reduce((n, m) => Math.max(n, m.sends), 0),
      redeliveriesOfCommitted,
      redeliveriesOfCommittedWithServerStamp: withServerStamp,
      messagesFailedUnsent: messages.filter((m) => m.state === 'failed' && m.sends === 0).length,
      readingsStored: verification.readingsStored,
      changeRecords: verification.changeRecords,
      shardsUsed: verification.shardsUsed,
      durationMs: Date.now() - this.startedAt,
    };
  }

  /** Kills the server if it still runs, drops the devices and removes the data directory. Safe to call twice. */
  async dispose(): Promise<void> {
    this.disposed = true;
    await Promise.all(this.devices.map((d) => d.end(true)));
    if (this.server !== undefined) {
      await this.server.signal('SIGKILL');
      this.server = undefined;
    }
    this.dir.cleanup();
  }
}

export function formatReport(r: CrashReport): string {
  const count = (f: (k: KillRecord) => boolean) => r.kills.filter(f).length;
  const inCommit = (k: KillRecord) => k.commit === 'wal-sync' || k.commit === 'wal-write';
  const aimed = count((k) => k.aimed);
  const random = r.kills.length - aimed;
  return [
    `crash test: ${r.kills.length} kill -9s (${aimed} aimed at a group commit, ${random} at random) in ${(r.durationMs / 1000).toFixed(1)} s, seed ${r.seed}`,
    r.directSignal
      ? `  kills that landed while a group commit was writing/syncing the LevelDB WAL: ${r.killsDuringCommit}/${r.kills.length} ` +
        `(aimed ${count((k) => k.aimed && inCommit(k))}/${aimed}, random ${count((k) => !k.aimed && inCommit(k))}/${random}; in fdatasync ${count((k) => k.commit === 'wal-sync')}, in write ${count((k) => k.commit === 'wal-write')})`
      : `  kills that landed during a group commit: not observable here (no WAL write/fdatasync ever caught in /proc/<pid>/task/*/syscall; tmpfs?), judged by the proxy below`,
    `  kills with PUBLISHes sent but unacknowledged (proxy): ${r.killsWithUnacked}/${r.kills.length} (mean ${(r.kills.reduce((n, k) => n + k.unacked, 0) / Math.max(1, r.kills.length)).toFixed(1)} per kill)`,
    `  kills between a commit and its PUBACKs (an unacknowledged PUBLISH turned out committed): ${r.killsBetweenCommitAndPuback}/${r.kills.length}`,
    `  published: ${r.messagesSent} messages / ${r.readingsSent} readings; PUBACK'd: ${r.messagesAcked} / ${r.readingsAcked}; failed before sending: ${r.messagesFailedUnsent}`,
    `  re-sends after reconnect: ${r.resends}; re-sent messages acknowledged: ${r.resentMessagesAcked} (most sends of one: ${r.maxSends}); of those already committed by a killed server: ${r.redeliveriesOfCommitted} (${r.redeliveriesOfCommittedWithServerStamp} with server-stamped readings)`,
    `  stored: ${r.readingsStored} readings; change records: ${r.changeRecords} over ${r.shardsUsed} shards`,
  ].join('\n');
}

/**
 * `tributary simulate`: N devices publishing realistic telemetry over MQTT (a
 * temperature and humidity random walk, a draining battery, a noisy signal), so that a
 * newcomer sees data flow, queries and handlers within the first minute. A progress
 * line goes to stderr; a summary to stdout when it stops (`--duration`, or Ctrl-C).
 *
 * @module
 */
import type { Command } from 'commander';
import type { MqttClient } from 'mqtt';
import { durationFlag, positiveInt } from './args.js';
import { CliError, EXIT, usageError } from './exit.js';
import { clientFrom, seg, withClientOptions, type ClientFlags } from './http-client.js';
import { note, printFields, printJson } from './output.js';

export const DEFAULT_MQTT_URL = 'mqtt://127.0.0.1:1883';
/** Unacknowledged QoS 1 readings a device may have before it skips ticks: a slow server is not buried. */
const MAX_OUTSTANDING = 100;
/** Time allowed after the stop for outstanding PUBACKs. */
const DRAIN_MS = 5000;
/** CONNACK return codes of MQTT 3.1.1 that mean "credentials" ([MQTT-3.2.2.3]: 4 bad user name or password, 5 not authorized). */
const AUTH_REFUSALS = new Set([4, 5]);

/** One simulated sensor: values that wander like real ones, not white noise. */
export class SensorModel {
  private temp: number;
  private humidity: number;
  private battery: number;
  private readonly baseTemp: number;

  constructor(private readonly random: () => number = Math.random) {
    this.baseTemp = 18 + random() * 6;
    this.temp = this.baseTemp;
    this.humidity = 35 + random() * 25;
    this.battery = 80 + random() * 20;
  }

  next(): { temp: number; humidity: number; battery: number; rssi: number } {
    // A random walk pulled back towards the device's own base, so it drifts without running away.
    this.temp += (this.random() - 0.5) * 0.2 + (this.baseTemp - this.temp) * 0.01;
    this.humidity = Math.min(100, Math.max(0, this.humidity + (this.random() - 0.5) * 0.5));
    this.battery = Math.max(0, this.battery - 0.001);
    return {
      temp: round(this.temp, 2),
      humidity: round(this.humidity, 1),
      battery: round(this.battery, 2),
      rssi: Math.round(-60 - this.random() * 30),
    };
  }
}

function round(v: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

interface SimDevice {
  id: string;
  client: MqttClient;
  model: SensorModel;
  /** When this device's schedule starts: its first CONNACK plus a random offset, so devices do not all publish in the same millisecond. */
  startAt: number | undefined;
  scheduled: number;
  outstanding: number;
}

interface Counts {
  sent: number;
  acked: number;
  failed: number;
  /** Not sent: the device had MAX_OUTSTANDING readings awaiting PUBACK (back-pressure, by design). */
  skipped: number;
  /** Not sent: the device had lost its connection (the broker went away); readings simulate could not store. */
  disconnected: number;
}

interface SimulateFlags extends ClientFlags {
  devices: string;
  rate: string;
  duration?: string;
  mqttUrl?: string;
  prefix: string;
  qos: string;
  provision?: boolean;
}

/** Registers the devices and issues each a secret over the HTTP API (secured mode). */
async function provision(ids: string[], flags: ClientFlags): Promise<Map<string, string>> {
  const client = clientFrom(flags);
  const secrets = new Map<string, string>();
  const queue = [...ids];
  // A few requests at a time: quick for 100 devices, gentle on the server.
  await Promise.all(
    Array.from({ length: Math.min(8, ids.length) }, async () => {
      for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
        await client.request('PUT', `/devices/${seg(id)}`, { body: { tags: { simulated: 'true' } } });
        const creds = await client.request<{ secret: string }>('POST', `/devices/${seg(id)}/credentials`);
        secrets.set(id, creds.secret);
      }
    }),
  );
  return secrets;
}

export function registerSimulate(program: Command): void {
  withClientOptions(
    program
      .command('simulate')
      .description('simulate devices publishing realistic telemetry over MQTT (temperature, humidity, battery, rssi)')
      .option('--devices <n>', 'number of devices', '10')
      .option('--rate <n>', 'readings per second per device (fractions allowed: 0.2 = one every 5 s)', '1')
      .option('--duration <duration>', 'stop after this long, e.g. 30s, 5m (default: until Ctrl-C)')
      .option('--mqtt-url <url>', `the broker [env TRIBUTARY_MQTT_URL, default ${DEFAULT_MQTT_URL}]`)
      .option('--prefix <prefix>', 'device ids are <prefix>001, <prefix>002, ...', 'sim-')
      .option('--qos <0|1>', 'MQTT QoS; 1 counts a reading once the server has stored it', '1')
      .option('--provision', 'secured mode: register the devices and issue their secrets over the HTTP API first (needs an admin key)')
      .addHelpText('after', '\nExamples:\n  tributary simulate --devices 100 --rate 10 --duration 1m\n  tributary simulate --provision --api-key $KEY   # against a secured server'),
  ).action(async (opts: SimulateFlags) => {
    const count = positiveInt(opts.devices, 'devices', 100_000);
    const rate = Number(opts.rate);
    if (!Number.isFinite(rate) || rate <= 0 || rate > 1000) throw usageError(`--rate must be a number of readings per second per device, above 0 and at most 1000 (got ${JSON.stringify(opts.rate)})`);
    const durationMs = opts.duration === undefined ? undefined : durationFlag(opts.duration, 'duration');
    if (opts.qos !== '0' && opts.qos !== '1') throw usageError(`--qos must be 0 or 1 (got ${JSON.stringify(opts.qos)})`);
    const qos = Number(opts.qos) as 0 | 1;
    const url = opts.mqttUrl ?? process.env.TRIBUTARY_MQTT_URL ?? DEFAULT_MQTT_URL;
    if (!/^mqtts?:\/\/|^wss?:\/\//.test(url)) throw usageError(`--mqtt-url must be an mqtt://, mqtts://, ws:// or wss:// URL (got ${JSON.stringify(url)})`);
    if (!/^[A-Za-z0-9._:-]{0,100}$/.test(opts.prefix)) throw usageError('--prefix must be characters of A-Z a-z 0-9 . _ : - (it starts each device id)');

    const width = Math.max(3, String(count).length);
    const ids = Array.from({ length: count }, (_, i) => `${opts.prefix}${String(i + 1).padStart(width, '0')}`);
    const secrets = opts.provision ? await provision(ids, opts) : undefined;
    if (secrets) note(`provisioned ${ids.length} devices (${ids[0]} ... ${ids[ids.length - 1]})`);

    const counts: Counts = { sent: 0, acked: 0, failed: 0, skipped: 0, disconnected: 0 };
    const periodMs = 1000 / rate;
    let fatal: CliError | undefined;
    let stopping = false;
    let lostNoted = false;
    let stop!: () => void;
    const stopped = new Promise<void>((resolve) => (stop = resolve)).then(() => {
      stopping = true;
    });

    const { default: mqtt } = await import('mqtt');
    const devices: SimDevice[] = ids.map((id) => {
      const client = mqtt.connect(url, {
        clientId: id,
        clean: true,
        connectTimeout: 5000,
        reconnectPeriod: 1000,
        ...(secrets ? { username: id, password: secrets.get(id) as string } : {}),
      });
      const device: SimDevice = { id, client, model: new SensorModel(), startAt: undefined, scheduled: 0, outstanding: 0 };
      client.on('connect', () => (device.startAt ??= Date.now() + Math.random() * periodMs));
      // Said at once, not only in the summary: the broker went away (mqtt.js keeps reconnecting).
      client.on('close', () => {
        if (device.startAt !== undefined && !stopping && !lostNoted) {
          lostNoted = true;
          note(`simulate: lost the connection to ${url}; reconnecting (readings due meanwhile are counted as disconnected)`);
        }
      });
      client.on('error', (err: Error & { code?: number | string }) => {
        if (typeof err.code === 'number' && AUTH_REFUSALS.has(err.code)) {
          fatal ??= new CliError(
            `the broker refused ${id}: ${err.message}${secrets ? '' : ' — a secured server needs device credentials: run with --provision (and an admin key)'}`,
            EXIT.denied,
          );
          stop();
        }
      });
      return device;
    });

    const started = Date.now();
    const tick = (): void => {
      const now = Date.now();
      for (const d of devices) {
        const due = d.startAt === undefined || now < d.startAt ? 0 : Math.floor((now - d.startAt) / periodMs) + 1;
        for (; d.scheduled < due; d.scheduled++) {
          if (!d.client.connected) {
            counts.disconnected++;
            continue;
          }
          if (d.outstanding >= MAX_OUTSTANDING) {
            counts.skipped++;
            continue;
          }
          counts.sent++;
          d.outstanding++;
          d.client.publish(`devices/${d.id}/telemetry`, JSON.stringify(d.model.next()), { qos }, (err) => {
            d.outstanding--;
            if (err) counts.failed++;
            else counts.acked++;
          });
        }
      }
    };
    const ticker = setInterval(tick, Math.max(10, Math.min(100, periodMs)));

    let lastAcked = 0;
    let lastAt = started;
    const progress = (): string => {
      const now = Date.now();
      const perSecond = Math.round(((counts.acked - lastAcked) * 1000) / Math.max(1, now - lastAt));
      lastAcked = counts.acked;
      lastAt = now;
      const connected = devices.filter((d) => d.client.connected).length;
      return `simulate: ${connected}/${count} connected · sent ${counts.sent} · stored ${counts.acked} · ${perSecond}/s · skipped ${counts.skipped} · disconnected ${counts.disconnected} · failed ${counts.failed} · ${Math.round((now - started) / 1000)}s`;
    };
    // On a terminal the line is redrawn every second; in a log, a line every 10 s is enough.
    const tty = process.stderr.isTTY === true;
    const progressTimer = setInterval(() => process.stderr.write(tty ? `\r\x1b[K${progress()}` : `${progress()}\n`), tty ? 1000 : 10_000);
    const durationTimer = durationMs === undefined ? undefined : setTimeout(() => stop(), durationMs);
    // Nobody connected within the connect timeout: the broker is not there (or not reachable).
    const connectWatch = setTimeout(() => {
      if (!devices.some((d) => d.startAt !== undefined)) stop();
    }, 5500);
    const onSignal = () => stop();
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    note(`simulating ${count} devices × ${rate}/s against ${url}${durationMs === undefined ? ' (Ctrl-C to stop)' : ''}`);

    await stopped;
    clearInterval(ticker);
    clearInterval(progressTimer);
    clearTimeout(durationTimer);
    clearTimeout(connectWatch);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (tty) process.stderr.write(`\r\x1b[K`);
    if (!devices.some((d) => d.startAt !== undefined)) {
      fatal ??= new CliError(`no device could connect to ${url}; is \`tributary start\` running? Set --mqtt-url or TRIBUTARY_MQTT_URL otherwise`, EXIT.failure);
    }
    // Let what is in flight be acknowledged before closing (bounded: the server may be gone).
    const drainUntil = Date.now() + DRAIN_MS;
    while (!fatal && devices.some((d) => d.outstanding > 0) && Date.now() < drainUntil) await new Promise((r) => setTimeout(r, 20));
    const seconds = (Date.now() - started) / 1000;
    // Devices that had connected and are not connected now: the broker is gone.
    const offline = devices.filter((d) => d.startAt !== undefined && !d.client.connected).length;
    await Promise.all(devices.map((d) => d.client.endAsync(true)));
    if (fatal) throw fatal;

    const unacknowledged = counts.sent - counts.acked - counts.failed;
    const summary = { devices: count, seconds: round(seconds, 1), sent: counts.sent, stored: counts.acked, failed: counts.failed, unacknowledged, skipped: counts.skipped, disconnected: counts.disconnected, offline, perSecond: Math.round(counts.acked / seconds) };
    if (opts.json) printJson(summary);
    else {
      printFields([
        ['devices', String(count)],
        ['duration', `${summary.seconds} s`],
        ['sent', String(summary.sent)],
        [qos === 1 ? 'stored (PUBACK)' : 'written (QoS 0)', String(summary.stored)],
        ['failed', String(summary.failed)],
        ['unacknowledged', String(unacknowledged)],
        ['skipped', `${summary.skipped} (${MAX_OUTSTANDING} readings awaiting PUBACK)`],
        ['disconnected', `${summary.disconnected} (not sent: the device had lost its connection)`],
        ['offline at the end', String(offline)],
        ['rate', `${summary.perSecond} readings/s`],
      ]);
    }
    // Exit 1 (cli/exit.ts): readings simulate could not store, whether refused, never acknowledged or never sent for want of a broker.
    if (counts.failed > 0 || unacknowledged > 0 || counts.disconnected > 0 || offline > 0) {
      note(`not every reading was stored: ${counts.failed} failed, ${unacknowledged} unacknowledged, ${counts.disconnected} not sent while disconnected; ${offline} of ${count} devices disconnected from ${url} at the end`);
      process.exitCode = EXIT.failure;
    }
  });
}

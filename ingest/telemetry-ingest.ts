import { hash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Counter, Gauge, Histogram } from 'prom-client';
import type { Logger } from '../core/logger.js';
import type { Metrics } from '../core/metrics.js';
import { assertDeviceId } from '../core/ids.js';
import { isTributaryError, TributaryError } from '../core/errors.js';
import { stringifyJson } from '../core/numbers.js';
import type { DeliveryId, ReadingInput, TelemetryStore, WriteRequest, WriteResult } from '../store/types.js';
import { checkTimeWindow, DEFAULT_LIMITS, decodePayload, decodeReadings, RejectedPayload, type PayloadLimits, type RejectReason } from './payload.js';
import type { PublishRate } from './publish-rate.js';
import type { WriteOrigin } from '../streams/types.js';
import type { RejectInput, RejectsLog } from './rejects-log.js';

export interface IngestMetrics {
  readings: Counter<string>;
  rejects: Counter<'reason' | 'transport'>;
  messages: Counter<'transport'>;
  throttled: Counter;
  durableLatency: Histogram<'transport'>;
  backlog: Gauge;
}

/** The ingest metrics out of the app's registry. */
export function ingestMetricsOf(m: Metrics): IngestMetrics {
  return {
    readings: m.ingestReadings,
    rejects: m.ingestRejects,
    messages: m.ingestMessages,
    throttled: m.ingestThrottled,
    durableLatency: m.ingestDurableLatency,
    backlog: m.storeQueuedReadings,
  };
}

export type Transport = 'mqtt' | 'http';

/** Metric labels of the MQTT path, built once (an object literal per publish adds up). */
const MQTT = { transport: 'mqtt' } as const;

/** Where validated requests go: the store, or in cluster mode the telemetry topic (cluster/kafka-writer.ts). */
export type TelemetryWriter = Pick<TelemetryStore, 'write' | 'backlog'>;

export interface TelemetryIngestOptions {
  store: TelemetryWriter;
  rejects: Pick<RejectsLog, 'append'>;
  logger: Logger;
  metrics: IngestMetrics;
  maxPayloadBytes: number;
  maxKeysPerReading: number;
  /** How far past the server's clock a reading's ts may be. */
  maxClockSkewMs: number;
  /** The store's retention (0: off); older readings are rejected here, with their own reason. */
  retentionMs: number;
  /** Per-device pacing of MQTT publishes; none: unlimited. */
  publishRate?: PublishRate;
  now?: () => number;
}

/**
 * Longest a publish is held to bring its device back under `devicePublishRate`. A device
 * further ahead than this is disconnected without a PUBACK (`Throttled`), so that it
 * re-sends later instead of the broker holding its packets — and not reading its
 * keepalive PINGREQs — for longer.
 */
export const MAX_PACING_MS = 5000;

/** What {@link TelemetryIngest.reject} records besides the reason. */
export interface RejectDetail {
  clientId?: string;
  topic?: string;
  deviceId?: string;
  field?: string;
  payload?: Buffer;
}

/** Where an MQTT payload came from, for the rejects log. */
export type PublishSource = Pick<RejectDetail, 'clientId' | 'topic'>;

/**
 * The one write path for readings, whatever transport brought them: validate, then
 * hand to the store. Rejected payloads never reach the store or the stream; they are
 * counted by reason and recorded in the rejects log (durably, before the caller hears
 * of the reject, so a QoS 1 reject is acknowledged only once its record is on disk).
 */
export class TelemetryIngest {
  private readonly limits: PayloadLimits;
  private readonly now: () => number;

  constructor(private readonly deps: TelemetryIngestOptions) {
    this.limits = { ...DEFAULT_LIMITS, maxKeys: deps.maxKeysPerReading, maxPayloadBytes: deps.maxPayloadBytes };
    this.now = deps.now ?? Date.now;
  }

  /**
   * A raw MQTT payload for `deviceId`. Resolves once the readings are durable (or the
   * delivery is a known redelivery). Rejects with a {@link RejectedPayload} once the
   * reject is recorded; with `Throttled` when the device is too far over its rate; with
   * `StoreUnavailable` when nothing could be written.
   */
  ingestPayload(deviceId: string, payload: Buffer, delivery?: Omit<DeliveryId, 'payloadHash'>, source: PublishSource = {}): Promise<WriteResult> {
    this.deps.metrics.messages.inc(MQTT);
    let wait: number;
    try {
      wait = this.paceWait(deviceId);
    } catch (err) {
      return Promise.reject(err);
    }
    // Only a device over its rate waits: waiting for nothing would cost every publish a turn.
    if (wait > 0) return sleep(wait).then(() => this.ingestPaced(deviceId, payload, delivery, source));
    return this.ingestPaced(deviceId, payload, delivery, source);
  }

  /**
   * {@link ingestPayload} once paced. Promise callbacks rather than `async`: a publish
   * waits here for its batch to commit, and a suspended async frame per publish in
   * flight was the largest object the write path kept alive under load.
   */
  private ingestPaced(deviceId: string, payload: Buffer, delivery: Omit<DeliveryId, 'payloadHash'> | undefined, source: PublishSource): Promise<WriteResult> {
    const started = performance.now();
    let written: Promise<WriteResult>;
    try {
      const readings = decodePayload(payload, this.limits);
      this.checkTime(readings);
      written = this.write(
        delivery === undefined ? { deviceId, readings } : { deviceId, readings, delivery: { clientId: delivery.clientId, packetId: delivery.packetId, payloadHash: payloadHash(payload) } },
      );
    } catch (err) {
      return this.publishFailed(err, deviceId, payload, delivery, source, started);
    }
    return written.then(
      (result) => {
        this.deps.metrics.readings.inc(MQTT, result.items.length);
        this.observeLatency(MQTT, started);
        return result;
      },
      (err: unknown) => this.publishFailed(err, deviceId, payload, delivery, source, started),
    );
  }

  /** Records a rejected publish in the rejects log, then fails with the reject (or with whatever else went wrong). */
  private publishFailed(caught: unknown, deviceId: string, payload: Buffer, delivery: Omit<DeliveryId, 'payloadHash'> | undefined, source: PublishSource, started: number): Promise<never> {
    const err = asReject(caught);
    const recorded =
      err instanceof RejectedPayload
        ? this.record({ transport: 'mqtt', reason: err.reason, message: err.message, field: err.field, deviceId, clientId: source.clientId ?? delivery?.clientId, topic: source.topic ?? `devices/${deviceId}/telemetry`, payload })
        : Promise.resolve();
    return recorded
      .finally(() => this.observeLatency(MQTT, started))
      .then(() => {
        throw err;
      });
  }

  private observeLatency(labels: { transport: Transport | 'function' }, started: number): void {
    this.deps.metrics.durableLatency.observe(labels, (performance.now() - started) / 1000);
  }

  /**
   * A parsed body: one reading or an array, from HTTP or from a handler's `context.put`
   * (`origin` set: the write is marked so that mappings do not re-trigger on it forever).
   * `raw`: the body's bytes as received, for the rejects log (HTTP). Resolves once
   * durable; rejects like {@link ingestPayload}.
   */
  async ingestBody(deviceId: string, body: unknown, origin?: WriteOrigin, raw?: Buffer): Promise<WriteResult> {
    assertDeviceId(deviceId, 'id');
    const transport = origin === undefined ? 'http' : 'function';
    const m = this.deps.metrics;
    m.messages.inc({ transport });
    const started = performance.now();
    try {
      const readings = decodeReadings(body, this.limits);
      this.checkTime(readings);
      const result = await this.write({ deviceId, readings, ...(origin === undefined ? {} : { origin }) });
      m.readings.inc({ transport }, result.items.length);
      return result;
    } catch (caught) {
      const err = asReject(caught);
      if (err instanceof RejectedPayload) {
        await this.record({ transport, reason: err.reason, message: err.message, field: err.field, deviceId, payload: raw ?? Buffer.from(stringifyJson(body) ?? '', 'utf8') });
      }
      throw err;
    } finally {
      this.observeLatency({ transport }, started);
    }
  }

  /**
   * Records a reject found outside this class (a topic whose device id is invalid):
   * counted and written to the rejects log. Resolves once the record is durable; a QoS 1
   * PUBLISH should be acknowledged only then. A caller that does not wait still gets the
   * record written (a failure is then only logged).
   */
  reject(transport: Transport, reason: RejectReason, detail: RejectDetail, message: string): Promise<void> {
    const recorded = this.record({ transport, reason, message, ...detail, payload: detail.payload ?? Buffer.alloc(0) });
    recorded.catch((err: unknown) => this.deps.logger.warn({ err, reason }, 'a reject could not be recorded in the rejects log'));
    return recorded;
  }

  private async record(input: RejectInput): Promise<void> {
    this.deps.metrics.rejects.inc({ reason: input.reason, transport: input.transport });
    // Debug only: a flood of garbage must not flood the log too; the rejects log has every one.
    this.deps.logger.debug({ deviceId: input.deviceId, clientId: input.clientId, reason: input.reason, field: input.field, transport: input.transport }, `telemetry rejected: ${input.message}`);
    await this.deps.rejects.append(input);
  }

  /**
   * How long an MQTT publish must be held to bring its device back within its rate
   * (see publish-rate.ts); 0: go ahead.
   * @throws TributaryError `Throttled` when the device is more than {@link MAX_PACING_MS} ahead.
   */
  private paceWait(deviceId: string): number {
    const rate = this.deps.publishRate;
    if (rate === undefined) return 0;
    const wait = rate.take(deviceId);
    if (wait === 0) return 0;
    if (wait > MAX_PACING_MS) {
      rate.giveBack(deviceId);
      throw new TributaryError('Throttled', `device ${deviceId} publishes faster than its rate allows and is more than ${MAX_PACING_MS} ms ahead; disconnecting it without a PUBACK`);
    }
    this.deps.metrics.throttled.inc();
    return wait;
  }

  private checkTime(readings: ReadingInput[]): void {
    checkTimeWindow(readings, { now: this.now(), maxFutureMs: this.deps.maxClockSkewMs, maxAgeMs: this.deps.retentionMs });
  }

  /**
   * The store validates what only it can judge at commit time (a retention pass may
   * have moved its horizon since {@link checkTime} checked). Such a refusal is a reject
   * like any other — not a failed write, which would make an MQTT client re-send it
   * forever. Applied in the callers' catch rather than by wrapping the store's promise,
   * which would cost every write a promise and a microtask turn.
   */
  private write(req: WriteRequest): Promise<WriteResult> {
    const written = this.deps.store.write(req);
    this.deps.metrics.backlog.set(this.deps.store.backlog);
    return written;
  }
}

/** The payload hash of a delivery id: the first 48 bits of the payload's SHA-1. */
export function payloadHash(payload: Buffer): number {
  return hash('sha1', payload, 'buffer').readUIntBE(0, 6);
}

/** {@link payloadHash} from the SHA-1 in hex (how builds before data format 2 recorded it). */
export function payloadHashOfSha1(hex: string): number {
  return Number.parseInt(hex.slice(0, 12), 16);
}

/** A store's `ValidationError` (see {@link TelemetryIngest.write}) as the reject it stands for; anything else as is. */
function asReject(err: unknown): unknown {
  if (err instanceof RejectedPayload || !isTributaryError(err) || err.code !== 'ValidationError') return err;
  return new RejectedPayload('rejected_by_store', err.message, err.field);
}

import { createHash } from 'node:crypto';
import type { Counter } from 'prom-client';
import type { Logger } from '../core/logger.js';
import { assertDeviceId } from '../core/ids.js';
import { isTributaryError } from '../core/errors.js';
import type { DeliveryId, TelemetryStore, WriteRequest, WriteResult } from '../store/types.js';
import { DEFAULT_LIMITS, decodePayload, decodeReadings, RejectedPayload, type PayloadLimits, type RejectReason } from './payload.js';

export interface IngestMetrics {
  readings: Counter<string>;
  rejects: Counter<'reason' | 'transport'>;
}

export type Transport = 'mqtt' | 'http';

/**
 * The one write path for readings, whatever transport brought them: validate, then
 * hand to the store. Rejected payloads never reach the store or the stream; they are
 * logged and counted by reason.
 */
export class TelemetryIngest {
  private readonly limits: PayloadLimits;

  constructor(
    private readonly deps: { store: TelemetryStore; logger: Logger; metrics: IngestMetrics; maxPayloadBytes: number },
  ) {
    this.limits = { ...DEFAULT_LIMITS, maxPayloadBytes: deps.maxPayloadBytes };
  }

  /** A raw MQTT payload. Resolves once the readings are durable (or the delivery is a known redelivery). */
  async ingestPayload(deviceId: string, payload: Buffer, delivery?: Omit<DeliveryId, 'payloadHash'>): Promise<WriteResult> {
    const readings = this.guard('mqtt', deviceId, payload, () => decodePayload(payload, this.limits));
    const req = delivery
      ? { deviceId, readings, delivery: { ...delivery, payloadHash: createHash('sha1').update(payload).digest('hex') } }
      : { deviceId, readings };
    const result = await this.write('mqtt', req);
    this.deps.metrics.readings.inc({ transport: 'mqtt' }, result.items.length);
    return result;
  }

  /** A parsed HTTP body: one reading or an array. */
  async ingestBody(deviceId: string, body: unknown): Promise<WriteResult> {
    assertDeviceId(deviceId, 'id');
    const readings = this.guard('http', deviceId, body, () => decodeReadings(body, this.limits));
    const result = await this.write('http', { deviceId, readings });
    this.deps.metrics.readings.inc({ transport: 'http' }, result.items.length);
    return result;
  }

  /**
   * The store validates what only it can judge (e.g. a reading older than the
   * retention). Such a refusal is a reject like any other: counted, and for MQTT
   * acknowledged — not a failed write, which would make the client re-send it forever.
   */
  private async write(transport: Transport, req: WriteRequest): Promise<WriteResult> {
    try {
      return await this.deps.store.write(req);
    } catch (err) {
      if (isTributaryError(err) && err.code === 'ValidationError') {
        const rejected = new RejectedPayload('rejected_by_store', err.message, err.field);
        this.reject(transport, rejected.reason, { deviceId: req.deviceId, field: err.field }, err.message);
        throw rejected;
      }
      throw err;
    }
  }

  /** Counts and logs a reject that happened before decoding (e.g. a topic outside the scheme). */
  reject(transport: Transport, reason: RejectReason | 'invalid_topic', detail: Record<string, unknown>, message: string): void {
    this.deps.metrics.rejects.inc({ reason, transport });
    this.deps.logger.warn({ ...detail, reason, transport }, `telemetry rejected: ${message}`);
  }

  private guard<T>(transport: Transport, deviceId: string, raw: unknown, decode: () => T): T {
    try {
      return decode();
    } catch (err) {
      if (err instanceof RejectedPayload) {
        const sample = Buffer.isBuffer(raw) ? raw.subarray(0, 200).toString('utf8') : undefined;
        this.reject(transport, err.reason, { deviceId, field: err.field, sample }, err.message);
      }
      throw err;
    }
  }
}

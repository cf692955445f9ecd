/**
 * Ingest's write path in cluster mode (ADR 0002): a validated request is durable once
 * every in-sync replica of the telemetry topic has it, so that is when a QoS 1 PUBACK or
 * an HTTP 201 goes out. The partition's owner materializes it into its store later.
 */
import { prepareWrite } from '../store/items.js';
import type { TelemetryWriter } from '../ingest/telemetry-ingest.js';
import type { WriteRequest, WriteResult } from '../store/types.js';
import { acceptedResult, type TelemetryProducer } from './telemetry-topic.js';

export class KafkaTelemetryWriter implements TelemetryWriter {
  constructor(
    private readonly producer: TelemetryProducer,
    private readonly now: () => number = Date.now,
  ) {}

  get backlog(): number {
    return this.producer.backlog;
  }

  async write(req: WriteRequest): Promise<WriteResult> {
    // The store's own validation, here, so that a request the owner would refuse is refused to the device instead.
    prepareWrite(req);
    const receivedAt = this.now();
    const { offset } = await this.producer.send(req, receivedAt);
    return acceptedResult(req, receivedAt, offset);
  }
}

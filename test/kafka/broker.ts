/**
 * Which Kafka the tests use: `KAFKA_BROKERS` (host:port[,host:port]), e.g. the broker
 * `test/kafka/start-kafka.sh` starts. Without it, Kafka tests skip with a message naming
 * the variable — except under CI=true, where a missing broker fails the run: CI always
 * runs them against a real broker.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, describe, it } from 'vitest';
import { KafkaClient } from '../../cluster/kafka-client.js';
import { createLogger, type Logger } from '../../core/logger.js';

export function kafkaBrokers(): string[] | undefined {
  const value = process.env.KAFKA_BROKERS?.trim();
  return value ? value.split(',').map((b) => b.trim()) : undefined;
}

/** `describe` when a broker is configured; otherwise a skipped (or, in CI, failing) placeholder. */
export function describeWithKafka(name: string, body: (brokers: string[]) => void): void {
  const brokers = kafkaBrokers();
  if (brokers) {
    body(brokers);
    return;
  }
  if (process.env.CI === 'true') {
    describe(name, () => {
      it('has a Kafka broker to run against', () => {
        throw new Error('CI=true but KAFKA_BROKERS is unset: CI runs the Kafka tests against a real broker (eval "$(test/kafka/start-kafka.sh)")');
      });
    });
    return;
  }
  const why = `${name} — skipped: set KAFKA_BROKERS=host:port to run (test/kafka/start-kafka.sh starts a local broker)`;
  // The default reporter prints no names of skipped suites; this line says what was left out.
  console.warn(why);
  describe.skip(why, () => {
    it('needs KAFKA_BROKERS', () => {});
  });
}

/** A topic name no other test run uses (kafkajs' own tests do the same). */
export function uniqueTopic(label: string): string {
  return `tributary-test.${label}.${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
}

/**
 * For a Kafka test file: one client made on first use and closed after the file, a logger
 * (TEST_LOG=info shows it), and a list of cleanups run after each test, last first.
 */
export function kafkaTestKit(brokers: string[], clientId = 'tributary-test'): { kafka: () => Promise<KafkaClient>; logger: Logger; cleanups: Array<() => Promise<void> | void> } {
  const logger = createLogger((process.env.TEST_LOG as 'info' | undefined) ?? 'silent');
  let shared: Promise<KafkaClient> | undefined;
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  afterAll(async () => {
    await (await shared)?.close();
  });
  return { kafka: () => (shared ??= KafkaClient.connect({ brokers, clientId, logger })), logger, cleanups };
}

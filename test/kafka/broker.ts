/**
 * Which Kafka the tests use: `KAFKA_BROKERS` (host:port[,host:port]), e.g. the broker
 * `test/kafka/start-kafka.sh` starts. Without it, Kafka tests skip with a message naming
 * the variable — except under CI=true, where a missing broker fails the run: CI always
 * runs them against a real broker.
 */
import { randomBytes } from 'node:crypto';
import { describe, it } from 'vitest';

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

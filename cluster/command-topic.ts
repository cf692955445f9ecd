/**
 * Commands to devices in cluster mode (ADR 0002). A device may be connected to any node,
 * and its persistent session kept on the node it last used, so a command goes to the
 * topic `<prefix>commands` (one partition: one order for everyone) and every node follows
 * the topic and publishes each command on its own broker. No consumer group: every node
 * reads everything.
 *
 * What a device sees:
 * - The API's 202 (and a handler's `context.publish`) means Kafka has the command, every
 *   in-sync replica of it. Each running node then publishes it moments later: connected
 *   subscribers receive it, and QoS 1 is queued for the offline persistent sessions held
 *   on that node.
 * - A node follows from the topic's end as of its start: a node that is down (or
 *   restarting) when a command is sent never publishes it, so an offline persistent
 *   session kept on that node misses it (its live connections were gone anyway).
 * - A device with persistent sessions on two nodes gets a QoS 1 command from each of them
 *   when it comes back to each.
 * - Commands keep the topic's order on every node. The topic keeps them an hour: a node
 *   that cannot reach Kafka longer than that skips the lost ones and logs how many.
 * - Nobody subscribed anywhere is not an error, as in single-node mode.
 */
import { Packr } from 'msgpackr';
import type { Producer } from 'kafkajs';
import { TributaryError } from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { commandOf, type Command, type CommandSender } from '../ingest/mqtt-broker.js';
import { OffsetOutOfRange, type KafkaClient, type KafkaPoller } from './kafka-client.js';

/** How long the topic keeps a command: far longer than any node should lag. */
const COMMAND_RETENTION_MS = 3_600_000;
const PARTITION = 0;
/** How long a fetch at the topic's end waits at the broker for a command to arrive. */
const POLL_WAIT_MS = 500;
/** After a failed fetch (Kafka unreachable): from the first to the last pause before the next try. */
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5_000;

const packr = new Packr({ useRecords: false });

function encodeCommand(command: Command): Buffer {
  return packr.pack([command.topic, command.payload, command.qos]);
}

/** Undefined for a record that is not a command of this version. */
function decodeCommand(bytes: Buffer): Command | undefined {
  try {
    const [topic, payload, qos] = packr.unpack(bytes) as [unknown, unknown, unknown];
    if (typeof topic !== 'string' || !(payload instanceof Uint8Array) || (qos !== 0 && qos !== 1)) return undefined;
    return { topic, payload: Buffer.from(payload), qos };
  } catch {
    return undefined;
  }
}

export interface CommandTopicOptions {
  client: KafkaClient;
  /** `<prefix>commands`. */
  topic: string;
  replicationFactor: number;
  /** Publishes a command on this node's broker (`MqttBroker.publishLocal`). */
  deliver: (command: Command) => Promise<void>;
  logger: Logger;
}

/**
 * Both ends of the command topic on one node: {@link sendCommand} (the node's
 * {@link CommandSender} in cluster mode) and the follower that hands every node's commands
 * to `deliver`, from the topic's end at {@link open} on.
 */
export class CommandTopic implements CommandSender {
  private position: number;
  private closed = false;
  private following: Promise<void> = Promise.resolve();
  /** Ends the follower's pause between retries early (at close). */
  private wake: (() => void) | undefined;

  private constructor(
    private readonly opts: CommandTopicOptions,
    private readonly producer: Producer,
    private readonly poller: KafkaPoller,
    start: number,
  ) {
    this.position = start;
  }

  /** Creates or checks the topic, then follows it from its current end. */
  static async open(opts: CommandTopicOptions): Promise<CommandTopic> {
    const { client, topic } = opts;
    await client.ensureLogTopic({ name: topic, partitions: 1, replicationFactor: opts.replicationFactor, retentionMs: COMMAND_RETENTION_MS, retentionOf: 'command delivery (1 hour)' });
    const producer = await client.producer();
    let poller: KafkaPoller | undefined;
    let end: number;
    try {
      poller = await client.poller();
      end = (await partitionOffsets(client, topic)).high;
    } catch (err) {
      await Promise.allSettled([client.closeProducer(producer), poller?.close()]);
      throw err;
    }
    const commands = new CommandTopic(opts, producer, poller, end);
    commands.following = commands.follow();
    return commands;
  }

  /** Resolves with the command's topic once Kafka has it (acks=all); every node's follower publishes it. */
  async sendCommand(deviceId: string, name: string, payload: unknown, qos: 0 | 1): Promise<string> {
    const command = commandOf(deviceId, name, payload, qos);
    await this.opts.client.send(this.producer, this.opts.topic, [{ partition: PARTITION, key: deviceId, value: encodeCommand(command) }]);
    return command.topic;
  }

  /** Stops following (after the command being published; close it before the broker) and closes the producer. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.wake?.();
    await this.following;
    await Promise.allSettled([this.opts.client.closeProducer(this.producer), this.poller.close()]);
  }

  private async follow(): Promise<void> {
    const { topic, logger } = this.opts;
    let retryMs = RETRY_MIN_MS;
    while (!this.closed) {
      let records;
      try {
        records = await this.poller.fetch(topic, PARTITION, this.position, POLL_WAIT_MS);
        retryMs = RETRY_MIN_MS;
      } catch (err) {
        try {
          if (!(err instanceof OffsetOutOfRange)) throw err;
          await this.reposition();
        } catch (failure) {
          if (this.closed) return;
          logger.warn({ err: failure, topic, retryMs }, 'reading the command topic failed; retrying');
          await this.pause(retryMs);
          retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
        }
        continue;
      }
      for (const record of records) {
        if (this.closed) return;
        const command = record.value === null ? undefined : decodeCommand(record.value);
        if (command === undefined) logger.warn({ topic, offset: record.offset }, 'skipped a record of the command topic that is not a command');
        else await this.opts.deliver(command).catch((err: unknown) => logger.error({ err, topic: command.topic }, 'publishing a command on this node failed'));
        this.position = record.offset + 1;
      }
    }
  }

  /** The position fell out of the log: behind its start (retention) or past its end (the topic was recreated). */
  private async reposition(): Promise<void> {
    const { client, topic, logger } = this.opts;
    const { low, high } = await partitionOffsets(client, topic);
    if (this.position < low) {
      logger.error({ topic, missed: low - this.position }, "the command topic's retention deleted commands this node never published; its devices miss them");
      this.position = low;
    } else if (this.position > high) {
      logger.warn({ topic, from: this.position, to: high }, 'the command topic ends before this node\'s position (was it recreated?); following from its end');
      this.position = high;
    } else {
      throw new TributaryError('StoreUnavailable', `Kafka: offset ${this.position} of ${topic} was out of range, then in range again`);
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = done;
    });
  }
}

async function partitionOffsets(client: KafkaClient, topic: string): Promise<{ low: number; high: number }> {
  const [offsets] = await client.offsets(topic);
  return { low: offsets?.low ?? 0, high: offsets?.high ?? 0 };
}

/** An MQTT load generator: C connections, each keeping W QoS 1 publishes in flight. */
import mqtt, { type MqttClient } from 'mqtt';
import { percentile } from './harness.js';

export interface LoadResult {
  rate: number;
  p50: number;
  p99: number;
  count: number;
}

export interface LoadOptions {
  /** The broker, or several (a cluster's nodes): connection `c` goes to `url[c % url.length]`. */
  url: string | readonly string[];
  connections: number;
  /** Publishes in flight per connection (closed loop) — or a fixed total rate (open loop). */
  window?: number;
  ratePerSecond?: number;
  durationMs: number;
  /**
   * QoS 0 has no acknowledgement, so a QoS 0 run ends with one QoS 1 PUBLISH per
   * connection: a broker handles a connection's packets in order, so once every one of
   * those is acknowledged, every QoS 0 reading sent before it has been handled (stored,
   * by Tributary). The rate counts until then; p50 and p99 are NaN (nothing to time).
   */
  qos: 0 | 1;
  topic: (device: number) => string;
  payload: (i: number) => string;
}

async function connect(url: string, clientId: string): Promise<MqttClient> {
  const client = mqtt.connect(url, { clientId, reconnectPeriod: 0, clean: true });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  return client;
}

export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const urls = typeof o.url === 'string' ? [o.url] : o.url;
  const clients = await Promise.all(Array.from({ length: o.connections }, (_, i) => connect(urls[i % urls.length] as string, `bench-${i}-${process.pid}`)));
  const latencies: number[] = [];
  let count = 0;
  let seq = 0;
  const deadline = performance.now() + o.durationMs;
  const publishOne = async (c: number) => {
    const t0 = performance.now();
    const i = seq++;
    await (clients[c] as MqttClient).publishAsync(o.topic(c), o.payload(i), { qos: o.qos });
    latencies.push(performance.now() - t0);
    count++;
  };
  const t0 = performance.now();
  if (o.ratePerSecond) {
    // Open loop: a fixed offered rate, spread over the connections, so latency is not hidden by queueing in the client.
    const interval = 1000 / o.ratePerSecond;
    const pending: Array<Promise<void>> = [];
    let n = 0;
    while (performance.now() < deadline) {
      const due = Math.floor((performance.now() - t0) / interval);
      while (n < due) pending.push(publishOne(n++ % o.connections));
      await new Promise((r) => setTimeout(r, 1));
    }
    await Promise.all(pending);
  } else {
    await Promise.all(
      clients.flatMap((_, c) =>
        Array.from({ length: o.window ?? 10 }, async () => {
          while (performance.now() < deadline) await publishOne(c);
        }),
      ),
    );
  }
  if (o.qos === 0) {
    await Promise.all(clients.map((c, i) => c.publishAsync(o.topic(i), o.payload(seq++), { qos: 1 })));
    count += clients.length;
  }
  const elapsed = (performance.now() - t0) / 1000;
  await Promise.all(clients.map((c) => c.endAsync(true)));
  const timed = o.qos === 1;
  return { rate: count / elapsed, p50: timed ? percentile(latencies, 50) : Number.NaN, p99: timed ? percentile(latencies, 99) : Number.NaN, count };
}

/** Overview: live ingest figures, connections, latency, shards, functions, DLQ, store, mode and version. */
import { ApiError, get } from './api.js';
import { bytes, el, errorNote, num, replace, stat, table, time } from './dom.js';
import { allowsAll, allowsAny } from './session.js';

interface Summary {
  ingest?: { windowSeconds: number; readingsPerSecond: number; rejectsPerSecond: number; durableLatencyP50Seconds: number | null; durableLatencyP99Seconds: number | null; readingsTotal: number; rejectsTotal: number; connectedClients: number; queuedReadings: number };
  functions?: Array<{ name: string; invocations: number; errors: number; throttles: number; iteratorAgeSeconds: number | null }>;
  dlqDepth?: number;
}
interface Server {
  version: string;
  mode: string;
  uptimeSeconds: number;
  startedAt: number;
}
interface StoreStats {
  sizeBytes: number;
  devices: number;
  readings: number;
  partitions: number;
}
interface Shards {
  items: Array<{ shardId: string; firstSequenceNumber: string | null; lastSequenceNumber: string | null }>;
}

const ms = (s: number | null) => (s === null ? '—' : `${(s * 1000).toFixed(1)} ms`);

/** A panel that shows what a call answers, or why it could not (403: the key's policy). */
async function panel<T>(into: HTMLElement, load: () => Promise<T>, render: (value: T) => Node, allowed = true, needs = ''): Promise<void> {
  if (!allowed) {
    replace(into, el('p', { class: 'muted' }, `Not available to this key: it needs ${needs}.`));
    return;
  }
  try {
    replace(into, render(await load()));
  } catch (err) {
    replace(into, err instanceof ApiError && err.status === 403 ? el('p', { class: 'muted' }, `Not available to this key: ${err.message}`) : errorNote(err));
  }
}

export async function overview(root: HTMLElement, signal: AbortSignal): Promise<void> {
  const server = el('section', { 'aria-label': 'Server' });
  const ingest = el('section', { 'aria-label': 'Ingest', 'aria-live': 'polite' });
  const store = el('section', { 'aria-label': 'Store' });
  const shards = el('section', { 'aria-label': 'Stream shards' });
  const functions = el('section', { 'aria-label': 'Functions' });
  replace(root, el('h1', {}, 'Overview'), server, el('h2', {}, 'Ingest'), ingest, el('h2', {}, 'Store'), store, el('h2', {}, 'Stream shards'), shards, el('h2', {}, 'Functions'), functions);

  await panel(server, () => get<Server>('/v1/server'), (s) => el('div', { class: 'stats' }, stat('Version', s.version), stat('Mode', s.mode), stat('Started', time(s.startedAt))));
  const refresh = async (): Promise<void> => {
    await Promise.all([
      panel(ingest, () => get<Summary>('/v1/metrics/summary'), (m) => {
        const fnPanel =
          m.functions === undefined
            ? el('p', { class: 'muted' }, 'Function figures need functions:Deploy on every device.')
            : el(
                'div',
                {},
                stat('DLQ depth', num(m.dlqDepth ?? 0), 'dlq-depth'),
                table(
                  ['Function', 'Invocations', 'Errors', 'Throttles', 'Iterator age'],
                  m.functions.map((f) => [el('a', { href: `#/functions/${encodeURIComponent(f.name)}` }, f.name), num(f.invocations), num(f.errors), num(f.throttles), f.iteratorAgeSeconds === null ? '—' : `${f.iteratorAgeSeconds.toFixed(2)} s`]),
                  'Since the server started',
                ),
              );
        replace(functions, fnPanel);
        const i = m.ingest;
        if (i === undefined) return el('p', { class: 'muted' }, 'Ingest figures need telemetry:Read on some device.');
        return el(
          'div',
          { class: 'stats' },
          stat('Readings/s', num(i.readingsPerSecond), 'readings-rate'),
          stat('Rejects/s', num(i.rejectsPerSecond), 'rejects-rate'),
          stat('Connected devices', num(i.connectedClients), 'connected'),
          stat('Publish→durable p50', ms(i.durableLatencyP50Seconds)),
          stat('Publish→durable p99', ms(i.durableLatencyP99Seconds)),
          stat('Readings since start', num(i.readingsTotal)),
          stat('Queued for commit', num(i.queuedReadings)),
        );
      }),
      panel(store, () => get<StoreStats>('/v1/store/stats'), (s) => el('div', { class: 'stats' }, stat('Size on disk', bytes(s.sizeBytes), 'store-size'), stat('Devices', num(s.devices)), stat('Readings', num(s.readings)), stat('Partitions', num(s.partitions))), allowsAll('telemetry:Read'), 'telemetry:Read on every device'),
      panel(shards, () => get<Shards>('/v1/streams/shards'), (s) => table(['Shard', 'First sequence number', 'Last sequence number'], s.items.map((x) => [x.shardId, x.firstSequenceNumber ?? '—', x.lastSequenceNumber ?? '—'])), allowsAny('streams:Read'), 'streams:Read'),
    ]);
  };
  await refresh();
  const timer = setInterval(() => void refresh(), 2000);
  signal.addEventListener('abort', () => clearInterval(timer));
}

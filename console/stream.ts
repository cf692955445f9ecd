/** Stream: the shards with their sequence ranges, and a live tail of change records as DynamoDB shapes them. */
import { get, streamEvents } from './api.js';
import { el, errorNote, replace, table, time } from './dom.js';
import { allowsAny } from './session.js';

interface StreamRecord {
  eventName: string;
  dynamodb: { ApproximateCreationDateTime: number; Keys: { deviceId?: { S: string } }; SequenceNumber: string };
}

const MAX_RECORDS = 200;

export async function streamPage(root: HTMLElement, signal: AbortSignal): Promise<void> {
  if (!allowsAny('streams:Read')) {
    replace(root, el('h1', {}, 'Stream'), el('p', { class: 'muted' }, 'Not available to this key: it needs streams:Read.'));
    return;
  }
  const shards = await get<{ streamArn: string; items: Array<{ shardId: string; firstSequenceNumber: string | null; lastSequenceNumber: string | null }> }>('/v1/streams/shards');
  const records = el('div', { id: 'stream-records', class: 'records' });
  const state = el('span', { class: 'muted', role: 'status', id: 'stream-state' }, 'connecting…');
  replace(
    root,
    el('h1', {}, 'Stream'),
    el('p', { class: 'muted' }, el('code', {}, shards.streamArn)),
    table(['Shard', 'First sequence number', 'Last sequence number'], shards.items.map((s) => [s.shardId, s.firstSequenceNumber ?? '—', s.lastSequenceNumber ?? '—'])),
    el('h2', {}, 'Live tail ', state),
    records,
  );
  const controller = new AbortController();
  signal.addEventListener('abort', () => controller.abort());
  streamEvents(
    '/v1/streams/tail',
    (event, data) => {
      if (event !== 'record') return;
      const r = data as StreamRecord;
      const details = el(
        'details',
        { class: 'record' },
        el('summary', {}, `${r.eventName} · ${r.dynamodb.Keys.deviceId?.S ?? '?'} · #${r.dynamodb.SequenceNumber} · ${time(r.dynamodb.ApproximateCreationDateTime * 1000)}`),
        el('pre', {}, JSON.stringify(r, null, 2)),
      );
      records.prepend(details);
      while (records.childElementCount > MAX_RECORDS) records.lastElementChild?.remove();
    },
    controller.signal,
    () => (state.textContent = 'live'),
  ).catch((err: unknown) => replace(records, errorNote(err)));
}

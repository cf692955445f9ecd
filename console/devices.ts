/** Devices: the searchable, paged list, and one device's page (live chart, ranges, readings, tags, commands). */
import { api, download, flattenImage, flattenValues, get, streamEvents, withQuery } from './api.js';
import { TimeChart } from './chart.js';
import { actionForm, el, errorNote, field, num, replace, table, time } from './dom.js';
import { allowsAny, isSecured } from './session.js';

interface Device {
  deviceId: string;
  firstSeen: number | null;
  lastSeen: number | null;
  readings: number;
  readingsPerMinute: number;
  tags: Record<string, string>;
}
interface Page<T> {
  items: T[];
  nextCursor: string | null;
}
interface Reading {
  ts: number;
  seq: number;
  values: Record<string, unknown>;
}

const PAGE = 25;
const tagText = (tags: Record<string, string>) => Object.entries(tags).map(([k, v]) => `${k}=${v}`).join(', ');
const deviceHref = (id: string) => `#/devices/${encodeURIComponent(id)}`;
const devicePath = (id: string) => `/v1/devices/${encodeURIComponent(id)}`;

export async function deviceList(root: HTMLElement, query: URLSearchParams): Promise<void> {
  const prefix = el('input', { type: 'search', id: 'device-prefix', name: 'prefix', value: query.get('prefix') ?? '', placeholder: 'site-7-', autocomplete: 'off' });
  const tag = el('input', { type: 'search', id: 'device-tag', name: 'tag', value: query.get('tag') ?? '', placeholder: 'key or key=value', autocomplete: 'off' });
  const results = el('div', { 'aria-live': 'polite' });
  const form = el(
    'form',
    { class: 'toolbar', role: 'search' },
    el('label', { for: 'device-prefix' }, 'Id starts with'),
    prefix,
    el('label', { for: 'device-tag' }, 'Tag'),
    tag,
    el('button', { type: 'submit' }, 'Search'),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if (prefix.value !== '') q.set('prefix', prefix.value);
    if (tag.value !== '') q.set('tag', tag.value);
    location.hash = `#/devices${q.size > 0 ? `?${q}` : ''}`;
  });
  replace(root, el('h1', {}, 'Devices'), form, results);

  const cursors: Array<string | undefined> = [query.get('cursor') ?? undefined];
  const load = async (): Promise<void> => {
    const cursor = cursors.at(-1);
    try {
      const page = await get<Page<Device>>(withQuery('/v1/devices', { limit: PAGE, prefix: prefix.value || undefined, tag: tag.value || undefined, cursor }));
      // Latest values per device: one small request each for the page shown.
      const latest = await Promise.all(page.items.map((d) => get<Reading>(`${devicePath(d.deviceId)}/latest`).catch(() => undefined)));
      const rows = page.items.map((d, i) => {
        const values = latest[i] === undefined ? {} : flattenValues(latest[i].values);
        return [el('a', { href: deviceHref(d.deviceId), class: 'device-link' }, d.deviceId), tagText(d.tags), time(d.lastSeen), num(d.readings), num(d.readingsPerMinute), Object.entries(values).slice(0, 4).map(([k, v]) => `${k}=${String(v)}`).join(', ')];
      });
      const nav = el(
        'div',
        { class: 'toolbar' },
        el('button', { type: 'button', disabled: cursors.length <= 1, onclick: () => (cursors.pop(), void load()) }, 'Previous'),
        el('button', { type: 'button', disabled: page.nextCursor === null, onclick: () => (cursors.push(page.nextCursor ?? undefined), void load()) }, 'Next'),
      );
      replace(results, page.items.length === 0 ? el('p', { class: 'muted' }, 'No devices on this page.') : table(['Device', 'Tags', 'Last seen', 'Readings', 'Readings/min', 'Latest values'], rows), nav);
    } catch (err) {
      replace(results, errorNote(err));
    }
  };
  await load();
}

/** Ranges of the picker; longer ones are drawn from the aggregate route. */
const RANGES: Array<{ label: string; ms: number }> = [
  { label: '15 m', ms: 15 * 60_000 },
  { label: '1 h', ms: 3_600_000 },
  { label: '1 d', ms: 86_400_000 },
  { label: '7 d', ms: 7 * 86_400_000 },
  { label: '30 d', ms: 30 * 86_400_000 },
];
/** Up to this range the chart shows raw readings and follows the live tail. */
const RAW_MAX_MS = 3_600_000;
/** Raw readings loaded for a chart at most (then the range is aggregated). */
const RAW_MAX_POINTS = 10_000;
/** Buckets an aggregated chart aims for. */
const BUCKETS = 720;

/** Numeric keys of some readings, in first-seen order. */
function numericKeys(points: Array<{ values: Record<string, unknown> }>): string[] {
  const keys = new Set<string>();
  for (const p of points) for (const [k, v] of Object.entries(p.values)) if (typeof v === 'number') keys.add(k);
  return [...keys];
}

/** The page's live chart, for debugging from the browser console (and the browser tests). */
declare global {
  interface Window {
    tributaryConsole?: { chart?: TimeChart };
  }
}

export async function devicePage(root: HTMLElement, id: string, signal: AbortSignal): Promise<void> {
  const device = await get<Device>(devicePath(id));
  const chartBox = el('div', { id: 'chart', class: 'chart' });
  const chartNote = el('p', { class: 'muted', id: 'chart-note', 'aria-live': 'polite' });
  const latestBox = el('section', { 'aria-label': 'Latest values' });
  const readingsBox = el('section', { 'aria-label': 'Readings' });
  const rangeSelect = el('select', { id: 'range', name: 'range' }, ...RANGES.map((r) => el('option', { value: r.ms, selected: r.ms === RAW_MAX_MS }, r.label)), el('option', { value: 'custom' }, 'custom'));
  const fromInput = el('input', { type: 'datetime-local', id: 'range-from', hidden: true, 'aria-label': 'From' });
  const toInput = el('input', { type: 'datetime-local', id: 'range-to', hidden: true, 'aria-label': 'To' });
  const rangeForm = el('form', { class: 'toolbar' }, el('label', { for: 'range' }, 'Range'), rangeSelect, fromInput, toInput, el('button', { type: 'submit' }, 'Show'));
  const csv = el('button', { type: 'button', onclick: () => void download(withQuery(`${devicePath(id)}/telemetry`, { ...currentRange(), format: 'csv' }), `${id}.csv`) }, 'Download CSV');
  const ndjson = el('button', { type: 'button', onclick: () => void download(withQuery(`${devicePath(id)}/telemetry`, { ...currentRange(), format: 'ndjson' }), `${id}.ndjson`) }, 'Download NDJSON');

  replace(
    root,
    el('h1', {}, 'Device ', el('code', { id: 'device-id' }, id)),
    el('p', { class: 'muted' }, `First seen ${time(device.firstSeen)} · last seen ${time(device.lastSeen)} · ${device.readings} readings · ${device.readingsPerMinute} a minute recently`),
    rangeForm,
    chartBox,
    chartNote,
    el('div', { class: 'toolbar' }, csv, ndjson),
    el('div', { class: 'columns' }, el('div', {}, el('h2', {}, 'Latest values'), latestBox), el('div', {}, el('h2', {}, 'Tags'), tagsEditor(id, device.tags), el('h2', {}, 'Send a command'), commandForm(id), isSecured() && allowsAny('devices:Manage') ? el('div', {}, el('h2', {}, 'Credentials'), credentialsForm(id)) : null)),
    el('h2', {}, 'Readings'),
    readingsBox,
  );

  function currentRange(): { from: string; to: string } {
    if (rangeSelect.value === 'custom' && fromInput.value !== '' && toInput.value !== '') {
      return { from: new Date(fromInput.value).toISOString(), to: new Date(toInput.value).toISOString() };
    }
    return { from: String(Date.now() - Number(rangeSelect.value === 'custom' ? RAW_MAX_MS : rangeSelect.value)), to: 'now' };
  }

  let chart: TimeChart | undefined;
  let live: AbortController | undefined;
  signal.addEventListener('abort', () => {
    live?.abort();
    chart?.destroy();
  });

  const showLatest = async (): Promise<void> => {
    try {
      const latest = await get<Reading>(`${devicePath(id)}/latest`);
      replace(latestBox, table(['Key', 'Value'], Object.entries(flattenValues(latest.values)).map(([k, v]) => [k, String(v)]), `at ${time(latest.ts)}`));
    } catch (err) {
      replace(latestBox, errorNote(err));
    }
  };

  const draw = async (): Promise<void> => {
    live?.abort();
    chart?.destroy();
    chart = undefined;
    const range = currentRange();
    const from = Number(range.from) || Date.parse(range.from);
    const to = range.to === 'now' ? Date.now() : Date.parse(range.to);
    const span = to - from;
    const isLive = range.to === 'now' && span <= RAW_MAX_MS;
    let points: Array<{ ts: number; values: Record<string, unknown> }>;
    const started = performance.now();
    if (span <= RAW_MAX_MS) {
      points = [];
      let cursor: string | undefined;
      do {
        const page = await get<Page<Reading>>(withQuery(`${devicePath(id)}/telemetry`, { from: range.from, to: range.to, limit: 10_000, cursor }));
        for (const r of page.items) points.push({ ts: r.ts, values: flattenValues(r.values) });
        cursor = page.nextCursor ?? undefined;
      } while (cursor !== undefined && points.length < RAW_MAX_POINTS);
    } else {
      // Long ranges: one bucket average per point. Without rollups (storage v2) the server reads every raw reading of the range.
      const interval = Math.max(1000, Math.ceil(span / BUCKETS / 1000) * 1000);
      const result = await get<{ buckets: Array<{ start: number; values: Record<string, { avg?: number | null }> }> }>(withQuery(`${devicePath(id)}/telemetry/aggregate`, { from: range.from, to: range.to, interval, agg: 'avg' }));
      points = result.buckets.map((b) => ({ ts: b.start, values: Object.fromEntries(Object.entries(b.values).map(([k, v]) => [k, v.avg ?? null])) }));
    }
    if (signal.aborted) return;
    const keys = numericKeys(points);
    if (keys.length === 0 && !isLive) {
      replace(chartBox);
      chartNote.textContent = 'No numeric values in this range.';
      return;
    }
    chart = new TimeChart(chartBox, keys.length > 0 ? keys : numericKeys([{ values: (await get<Reading>(`${devicePath(id)}/latest`).catch(() => ({ values: {} }))).values }]), points, isLive ? span : 0);
    window.tributaryConsole = { chart };
    chartBox.dataset.points = String(chart.points);
    chartNote.textContent = `${points.length} ${span <= RAW_MAX_MS ? 'readings' : 'buckets (averages)'} drawn in ${Math.round(performance.now() - started)} ms${isLive ? ' · live' : ''}`;
    if (!isLive) return;
    const liveChart = chart;
    live = new AbortController();
    const tail = live;
    streamEvents(
      withQuery('/v1/streams/tail', { deviceId: id, viewType: 'NEW_IMAGE' }),
      (event, data) => {
        if (event !== 'record') return;
        const record = data as { eventName: string; dynamodb: { NewImage?: Record<string, Record<string, unknown>> } };
        const image = record.dynamodb.NewImage;
        if (record.eventName === 'REMOVE' || image === undefined) return;
        // The image is the item: its key attributes next to the reading's values.
        const { deviceId: _deviceId, ts, seq: _seq, ...values } = flattenImage(image);
        liveChart.append(Number(ts), values);
        chartBox.dataset.points = String(liveChart.points);
        refreshSoon();
      },
      tail.signal,
      () => (chartBox.dataset.live = 'open'),
    ).catch((err: unknown) => replace(chartNote, errorNote(err)));
  };

  rangeSelect.addEventListener('change', () => {
    fromInput.hidden = toInput.hidden = rangeSelect.value !== 'custom';
  });
  rangeForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    void draw().catch((err: unknown) => replace(chartNote, errorNote(err)));
  });

  // Live readings refresh the latest values and the newest page of readings, at most every second.
  let refreshTimer: ReturnType<typeof setTimeout> | undefined;
  const refreshSoon = (): void => {
    refreshTimer ??= setTimeout(() => {
      refreshTimer = undefined;
      if (signal.aborted) return;
      void showLatest();
      if (cursors.length === 1) void showReadings();
    }, 1000);
  };
  const cursors: Array<string | undefined> = [undefined];
  const showReadings = async (): Promise<void> => {
    try {
      const page = await get<Page<Reading>>(withQuery(`${devicePath(id)}/telemetry`, { from: '0', order: 'desc', limit: PAGE, cursor: cursors.at(-1) }));
      replace(
        readingsBox,
        table(['Time', 'Seq', 'Values'], page.items.map((r) => [time(r.ts), String(r.seq), el('code', {}, JSON.stringify(r.values))]), 'Newest first'),
        el(
          'div',
          { class: 'toolbar' },
          el('button', { type: 'button', disabled: cursors.length <= 1, onclick: () => (cursors.pop(), void showReadings()) }, 'Newer'),
          el('button', { type: 'button', disabled: page.nextCursor === null, onclick: () => (cursors.push(page.nextCursor ?? undefined), void showReadings()) }, 'Older'),
        ),
      );
    } catch (err) {
      replace(readingsBox, errorNote(err));
    }
  };
  await Promise.all([draw(), showLatest(), showReadings()]);
}

function tagsEditor(id: string, tags: Record<string, string>): HTMLElement {
  const text = el('textarea', { id: 'tags', name: 'tags', rows: 3 });
  text.value = Object.entries(tags).map(([k, v]) => `${k}=${v}`).join('\n');
  return actionForm('Save tags', [...field('One key=value a line (saving replaces every tag)', text)], async () => {
    const next: Record<string, string> = {};
    for (const line of text.value.split('\n')) {
      const eq = line.indexOf('=');
      if (line.trim() !== '' && eq > 0) next[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
    }
    await api('PUT', devicePath(id), { tags: next });
    return 'Saved.';
  });
}

function commandForm(id: string): HTMLElement {
  const name = el('input', { id: 'command-name', name: 'name', required: true, placeholder: 'reboot', autocomplete: 'off' });
  const payload = el('textarea', { id: 'command-payload', name: 'payload', rows: 3, placeholder: '{"delayMs": 1000}' });
  return actionForm('Send', [...field('Name', name), ...field('Payload (JSON, optional)', payload)], async () => {
    const body = payload.value.trim() === '' ? {} : { payload: JSON.parse(payload.value) as unknown };
    const r = await api<{ topic: string }>('POST', `${devicePath(id)}/commands/${encodeURIComponent(name.value)}`, body);
    return `Sent on ${r.topic}.`;
  });
}

/** Secured mode: issue or rotate the device's MQTT secret, shown once. */
function credentialsForm(id: string): HTMLElement {
  const secret = el('code', { id: 'device-secret' });
  const form = actionForm('Issue or rotate the secret', [el('p', { class: 'muted' }, 'Rotating disconnects the device; the old secret stops working at once. The new one is shown here only.')], async () => {
    const r = await api<{ secret: string; rotated: boolean }>('POST', `${devicePath(id)}/credentials`, {});
    secret.textContent = r.secret;
    return r.rotated ? 'Rotated. Username: the device id; password:' : 'Issued. Username: the device id; password:';
  });
  form.append(' ', secret);
  return form;
}

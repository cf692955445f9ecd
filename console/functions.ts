/** Functions: the list with their figures, and one function's page (logs with a live tail, triggers, invoke). */
import { api, get, streamEvents, withQuery } from './api.js';
import { actionForm, el, errorNote, field, num, replace, table, time } from './dom.js';
import { allowsAll } from './session.js';

interface FunctionInfo {
  name: string;
  version: number;
  createdAt?: number;
}
interface Trigger {
  id: string;
  enabled: boolean;
  batchSize: number;
  startingPosition: string;
}
interface LogLine {
  time: number;
  level: string;
  message: string;
  requestId: string;
  functionVersion: number;
}
interface Stats {
  name: string;
  invocations: number;
  errors: number;
  throttles: number;
  iteratorAgeSeconds: number | null;
}

const fnPath = (name: string) => `/v1/functions/${encodeURIComponent(name)}`;

export async function functionList(root: HTMLElement): Promise<void> {
  if (!allowsAll('functions:Deploy')) {
    replace(root, el('h1', {}, 'Functions'), el('p', { class: 'muted' }, 'Not available to this key: functions see every device\'s records, so they need functions:Deploy on every device (*).'));
    return;
  }
  const [list, summary] = await Promise.all([get<{ items: FunctionInfo[] }>('/v1/functions?limit=1000'), get<{ functions?: Stats[] }>('/v1/metrics/summary').catch(() => ({ functions: undefined }))]);
  const stats = new Map((summary.functions ?? []).map((s) => [s.name, s]));
  const [triggers, dlq] = await Promise.all([
    Promise.all(list.items.map((f) => get<{ items: Trigger[] }>(`${fnPath(f.name)}/triggers`).catch(() => ({ items: [] })))),
    // Dead-letter entries per function: one page each, counted (the list says "1000+" past it).
    Promise.all(list.items.map((f) => get<{ items: unknown[]; nextCursor: string | null }>(withQuery('/v1/dlq', { functionName: f.name, limit: DLQ_COUNT_MAX })).catch(() => undefined))),
  ]);
  replace(
    root,
    el('h1', {}, 'Functions'),
    list.items.length === 0
      ? el('p', { class: 'muted' }, 'No functions deployed.')
      : table(
          ['Function', 'Status', 'Version', 'Triggers', 'Invocations', 'Errors', 'Throttles', 'Iterator age', 'DLQ'],
          list.items.map((f, i) => {
            const s = stats.get(f.name);
            const t = triggers[i]?.items ?? [];
            const d = dlq[i];
            return [
              el('a', { href: `#/functions/${encodeURIComponent(f.name)}`, class: 'function-link' }, f.name),
              status(s),
              String(f.version),
              `${t.filter((x) => x.enabled).length} enabled / ${t.length}`,
              num(s?.invocations ?? 0),
              num(s?.errors ?? 0),
              num(s?.throttles ?? 0),
              s?.iteratorAgeSeconds == null ? '—' : `${s.iteratorAgeSeconds.toFixed(2)} s`,
              d === undefined ? '—' : `${d.items.length}${d.nextCursor === null ? '' : '+'}`,
            ];
          }),
        ),
  );
}

/** Largest dead-letter count the list shows exactly. */
const DLQ_COUNT_MAX = 1000;

/** A function's state from its counts since the server started: errors seen, or none, or not invoked yet. */
function status(s: Stats | undefined): string {
  if (s === undefined || s.invocations === 0) return 'not invoked';
  return s.errors > 0 ? 'errors' : 'ok';
}

const LEVELS = ['debug', 'info', 'warn', 'error'];
const MAX_LINES = 500;

export async function functionPage(root: HTMLElement, name: string, signal: AbortSignal): Promise<void> {
  const fn = await get<FunctionInfo>(fnPath(name));
  const level = el('select', { id: 'log-level', name: 'level' }, ...LEVELS.map((l) => el('option', { value: l }, l)));
  const logBody = el('tbody', { id: 'log-lines' });
  const logState = el('span', { class: 'muted', role: 'status', id: 'log-state' });
  const triggersBox = el('section', { 'aria-label': 'Triggers' });
  const event = el('textarea', { id: 'invoke-event', name: 'event', rows: 6 });
  event.value = '{}';
  const result = el('pre', { id: 'invoke-result', 'aria-live': 'polite' });
  const invokeForm = el('form', {}, el('label', { for: 'invoke-event' }, 'Event (JSON)'), event, el('button', { type: 'submit' }, 'Invoke'));
  const dlqBox = el('section', { 'aria-label': 'Dead-letter queue' });

  replace(
    root,
    el('h1', {}, 'Function ', el('code', {}, name)),
    el('p', { class: 'muted' }, `Version ${fn.version}${fn.createdAt === undefined ? '' : ` · deployed ${time(fn.createdAt)}`}`),
    el('h2', {}, 'Logs'),
    el('div', { class: 'toolbar' }, el('label', { for: 'log-level' }, 'Level at least'), level, logState),
    el('div', { class: 'log' }, el('table', {}, el('thead', {}, el('tr', {}, ...['Time', 'Level', 'Request', 'Message'].map((h) => el('th', { scope: 'col' }, h)))), logBody)),
    el('h2', {}, 'Triggers'),
    triggersBox,
    el('h2', {}, 'Invoke'),
    invokeForm,
    result,
    el('h2', {}, 'Deploy a new version'),
    deployForm(name),
    el('h2', {}, 'Replay a window of the stream'),
    replayForm(name),
    el('h2', {}, 'Dead-letter queue'),
    dlqBox,
  );

  const line = (l: LogLine): HTMLElement => el('tr', { class: `level-${l.level}` }, el('td', {}, time(l.time)), el('td', {}, l.level), el('td', {}, el('code', {}, l.requestId.slice(0, 8))), el('td', {}, el('pre', {}, l.message)));
  let tail: AbortController | undefined;
  signal.addEventListener('abort', () => tail?.abort());
  const showLogs = async (): Promise<void> => {
    tail?.abort();
    tail = new AbortController();
    const current = tail;
    const page = await get<{ items: LogLine[] }>(withQuery(`${fnPath(name)}/logs`, { order: 'desc', limit: 100, level: level.value }));
    replace(logBody, ...page.items.map(line));
    logState.textContent = 'connecting…';
    streamEvents(
      withQuery(`${fnPath(name)}/logs/tail`, { level: level.value }),
      (ev, data) => {
        if (ev !== 'log') return;
        logBody.prepend(line(data as LogLine));
        while (logBody.childElementCount > MAX_LINES) logBody.lastElementChild?.remove();
      },
      current.signal,
      () => (logState.textContent = 'live'),
    ).then(
      () => (logState.textContent = current.signal.aborted ? '' : 'tail ended'),
      (err: unknown) => (logState.textContent = err instanceof Error ? err.message : String(err)),
    );
  };
  level.addEventListener('change', () => void showLogs());

  const showTriggers = async (): Promise<void> => {
    try {
      const list = await get<{ items: Trigger[] }>(`${fnPath(name)}/triggers`);
      replace(
        triggersBox,
        list.items.length === 0
          ? el('p', { class: 'muted' }, 'No triggers: the function runs only when invoked.')
          : table(
              ['Trigger', 'Starting position', 'Batch size', 'Enabled', ''],
              list.items.map((t) => [
                el('code', {}, t.id),
                t.startingPosition,
                String(t.batchSize),
                t.enabled ? 'yes' : 'no',
                el('button', { type: 'button', onclick: () => void api('PATCH', `${fnPath(name)}/triggers/${encodeURIComponent(t.id)}`, { enabled: !t.enabled }).then(showTriggers, (err: unknown) => replace(triggersBox, errorNote(err))) }, t.enabled ? 'Disable' : 'Enable'),
              ]),
            ),
        el('button', { type: 'button', onclick: () => void api('POST', `${fnPath(name)}/triggers`, { startingPosition: 'LATEST' }).then(showTriggers, (err: unknown) => replace(triggersBox, errorNote(err))) }, 'Add a trigger (from LATEST)'),
      );
    } catch (err) {
      replace(triggersBox, errorNote(err));
    }
  };

  invokeForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    let body: unknown;
    try {
      body = JSON.parse(event.value) as unknown;
    } catch {
      result.textContent = 'The event is not valid JSON.';
      return;
    }
    result.textContent = 'invoking…';
    api('POST', `${fnPath(name)}/invoke`, body).then(
      (r) => (result.textContent = JSON.stringify(r, null, 2)),
      (err: unknown) => (result.textContent = err instanceof Error ? err.message : String(err)),
    );
  });
  const showDlq = async (): Promise<void> => {
    try {
      const page = await get<{ items: DlqEntry[] }>(withQuery('/v1/dlq', { functionName: name, limit: 100 }));
      replace(
        dlqBox,
        page.items.length === 0
          ? el('p', { class: 'muted' }, 'Empty.')
          : table(
              ['Entry', 'Shard', 'Records', 'Reason', 'Discarded', ''],
              page.items.map((e) => [
                el('code', {}, e.id),
                String(e.shard),
                String(e.count),
                e.reason,
                time(e.createdAt),
                el('button', { type: 'button', onclick: () => void api<{ status: string }>('POST', `/v1/dlq/${encodeURIComponent(e.id)}/redrive`, {}).then(showDlq, (err: unknown) => replace(dlqBox, errorNote(err))) }, 'Redrive'),
              ]),
            ),
      );
    } catch (err) {
      replace(dlqBox, errorNote(err));
    }
  };
  await Promise.all([showLogs(), showTriggers(), showDlq()]);
}

interface DlqEntry {
  id: string;
  shard: number;
  count: number;
  reason: string;
  createdAt: number;
}

function deployForm(name: string): HTMLElement {
  const code = el('textarea', { id: 'deploy-code', name: 'code', rows: 8, placeholder: 'export async function handler(event, context) { … }' });
  return actionForm('Deploy', field('Module source (ES module or CommonJS)', code), async () => {
    const fn = await api<FunctionInfo>('PUT', fnPath(name), { code: code.value });
    return `Deployed version ${fn.version}.`;
  });
}

function replayForm(name: string): HTMLElement {
  const from = el('input', { id: 'replay-from', name: 'from', value: '-1h', required: true });
  const to = el('input', { id: 'replay-to', name: 'to', value: 'now', required: true });
  return actionForm('Start the replay', [...field('From (epoch ms, ISO-8601 or -1h)', from), ...field('To', to)], async () => {
    const job = await api<{ id: string; status: string }>('POST', `${fnPath(name)}/replay`, { from: from.value, to: to.value });
    return `Replay ${job.id}: ${job.status}.`;
  });
}

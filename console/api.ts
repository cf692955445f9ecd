/**
 * The console's only way to the server: the public REST API with the user's key, and its
 * live tails read as Server-Sent Events through `fetch` (a browser's `EventSource` cannot
 * send `Authorization`). The key lives in `sessionStorage`: it goes when the tab closes.
 */
const KEY_STORAGE = 'tributary.apiKey';

export function apiKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key: string | null): void {
  if (key === null) sessionStorage.removeItem(KEY_STORAGE);
  else sessionStorage.setItem(KEY_STORAGE, key);
}

/** An error answer of the API (`{ error: { code, message, field? } }`). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Called on every 401, so the page can ask for a key. */
let onUnauthorized: () => void = () => {};
export function whenUnauthorized(handler: () => void): void {
  onUnauthorized = handler;
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const key = apiKey();
  return key === null ? extra : { ...extra, authorization: `Bearer ${key}` };
}

async function failure(res: Response): Promise<ApiError> {
  let code = 'HttpError';
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = (await res.json()) as { error?: { code?: string; message?: string } };
    code = body.error?.code ?? code;
    message = body.error?.message ?? message;
  } catch {
    // Not our JSON envelope; the status says enough.
  }
  if (res.status === 401) onUnauthorized();
  return new ApiError(res.status, code, message);
}

/** One JSON request; resolves with the parsed body (undefined for 204). */
export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const init: RequestInit = { method, headers: headers(body === undefined ? {} : { 'content-type': 'application/json' }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  if (!res.ok) throw await failure(res);
  if (res.status === 204) return undefined as T;
  return (await res.json()) as T;
}

export const get = <T>(path: string): Promise<T> => api<T>('GET', path);

/** A path with query parameters (undefined ones left out). */
export function withQuery(path: string, query: Record<string, string | number | undefined>): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined) params.set(k, String(v));
  const text = params.toString();
  return text === '' ? path : `${path}?${text}`;
}

/** Fetches a download (CSV, NDJSON) with the key and hands it to the browser as a file. */
export async function download(path: string, filename: string): Promise<void> {
  const res = await fetch(path, { headers: headers() });
  if (!res.ok) throw await failure(res);
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * Reads an SSE endpoint until `signal` aborts, calling `onEvent` for each event. Resolves
 * when the stream ends (server closing, slow-client cut-off); rejects on an error answer.
 */
export async function streamEvents(path: string, onEvent: (event: string, data: unknown) => void, signal: AbortSignal, onOpen?: () => void): Promise<void> {
  const res = await fetch(path, { headers: headers({ accept: 'text/event-stream' }), signal });
  if (!res.ok || res.body === null) throw await failure(res);
  onOpen?.();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // Events end with a blank line (WHATWG HTML, server-sent events: "dispatch the event").
      let end: number;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = 'message';
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          if (line.startsWith('event: ')) event = line.slice(7);
          else if (line.startsWith('data: ')) data.push(line.slice(6));
        }
        if (data.length > 0) onEvent(event, JSON.parse(data.join('\n')) as unknown);
      }
    }
  } catch (err) {
    if (signal.aborted) return;
    throw err;
  }
}

/** The leaves of a DynamoDB AttributeValue map as plain values by dotted path (stream images). */
export function flattenImage(image: Record<string, Record<string, unknown>>, prefix = '', out: Record<string, unknown> = {}): Record<string, unknown> {
  for (const [key, attr] of Object.entries(image)) {
    const path = prefix === '' ? key : `${prefix}.${key}`;
    if ('N' in attr) out[path] = Number(attr.N);
    else if ('S' in attr) out[path] = attr.S;
    else if ('BOOL' in attr) out[path] = attr.BOOL;
    else if ('M' in attr) flattenImage(attr.M as Record<string, Record<string, unknown>>, path, out);
  }
  return out;
}

/**
 * A reading's values flattened by dotted path. The CLI's `flatten` (cli/output.ts) does the
 * same in Node; the console is compiled on its own for the browser and cannot import it.
 */
export function flattenValues(values: Record<string, unknown>, prefix = '', out: Record<string, unknown> = {}): Record<string, unknown> {
  for (const [key, v] of Object.entries(values)) {
    const path = prefix === '' ? key : `${prefix}.${key}`;
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) flattenValues(v as Record<string, unknown>, path, out);
    else out[path] = v;
  }
  return out;
}

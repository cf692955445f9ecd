/**
 * Server-Sent Events responses (the live tails: `GET /v1/streams/tail`,
 * `GET /v1/functions/{name}/logs/tail`): headers, a heartbeat comment that keeps proxies
 * from timing an idle stream out, and a bound on what a slow client may leave unsent.
 *
 * @module
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { TributaryError } from '../core/errors.js';

/** Interval of the SSE heartbeat comment. */
export const DEFAULT_HEARTBEAT_MS = 15_000;
/** Bytes a tail may have queued for a client that reads too slowly before it is cut off. */
export const DEFAULT_MAX_BUFFERED_BYTES = 1024 * 1024;
/** After cutting a slow client off, how long its final event may take to drain before the socket is destroyed. */
const DRAIN_GRACE_MS = 5000;

export interface EventStreamOptions {
  heartbeatMs: number;
  maxBufferedBytes: number;
  /** What a client cut off for reading too slowly should do instead (ends the error message). */
  slowClientHint: string;
  /** Runs once when the stream ends (client gone, server closing, slow client cut off): unsubscribe here. */
  onStop: () => void;
}

export interface EventStream {
  /** Writes pre-rendered events (`event: ...\ndata: ...\n\n`); ignored once stopped. */
  send(chunk: string): void;
  /** Ends the stream (idempotent). */
  stop(): void;
  readonly stopped: boolean;
}

/** One SSE event as text. */
export function sseEvent(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/**
 * Takes the response over from fastify (it neither serializes nor ends it) and opens an
 * event stream on it. `firstComment` is written at once, which flushes the headers so the
 * client knows the stream is live.
 */
export function openEventStream(request: FastifyRequest, reply: FastifyReply, firstComment: string, opts: EventStreamOptions): EventStream {
  const res = reply.raw;
  reply.hijack();
  res.writeHead(200, {
    ...(reply.getHeaders() as Record<string, string>),
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    // Tell buffering reverse proxies (nginx) to pass events through at once.
    'x-accel-buffering': 'no',
  });
  let done = false;
  let drainTimer: NodeJS.Timeout | undefined;
  const stream: EventStream = {
    get stopped() {
      return done;
    },
    stop() {
      if (done) return;
      done = true;
      clearInterval(heartbeat);
      opts.onStop();
      res.end();
    },
    send(chunk) {
      if (done) return;
      // writableLength counts what the response and its socket still hold unsent. Past
      // the bound the client is not keeping up: cut it off rather than buffer without
      // end. Checked before writing, so that one large group of events is not taken
      // for a slow client: the bound is on what is left over from earlier writes.
      if (res.writableLength > opts.maxBufferedBytes) {
        const error = new TributaryError('Throttled', `the client read the tail too slowly (over ${opts.maxBufferedBytes} bytes unsent); ${opts.slowClientHint}`);
        request.log.info({ bufferedBytes: res.writableLength }, 'live tail cut off: the client reads too slowly');
        res.write(sseEvent('error', { error: error.toJSON() }));
        stream.stop();
        // The final event may never drain to a client that stopped reading.
        drainTimer = setTimeout(() => res.destroy(), DRAIN_GRACE_MS);
        return;
      }
      res.write(chunk);
    },
  };
  const heartbeat = setInterval(() => stream.send(': heartbeat\n\n'), opts.heartbeatMs);
  res.once('close', () => {
    clearTimeout(drainTimer);
    stream.stop();
  });
  stream.send(`: ${firstComment}\n\n`);
  return stream;
}

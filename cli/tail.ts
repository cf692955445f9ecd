/**
 * `tributary tail [--device ID]`: the change stream live, from the moment of
 * connecting (`GET /v1/streams/tail`, Server-Sent Events). One line per record for
 * people; `--json` prints each stream record as one JSON line (NDJSON) for scripts.
 *
 * @module
 */
import { unmarshall } from '@aws-sdk/util-dynamodb';
import type { Command } from 'commander';
import { parseTsSeq } from '../store/table-key.js';
import { deviceIdArg, positiveInt } from './args.js';
import { CliError, EXIT } from './exit.js';
import { clientFrom, withClientOptions, type ClientFlags } from './http-client.js';
import { flatten, formatTime, formatValue, note } from './output.js';

/** The parts of a DynamoDB stream record the line format shows. */
interface StreamRecord {
  eventName: string;
  dynamodb: {
    Keys: Record<string, unknown>;
    NewImage?: Record<string, unknown>;
    SequenceNumber: string;
  };
}

export interface SseEvent {
  event: string;
  data: string;
}

/**
 * Splits Server-Sent Events text into events (the WHATWG format: blocks separated by a
 * blank line, `event:` and `data:` fields, `:` comments). Returns the events complete
 * so far and the unfinished rest to prepend to the next chunk.
 */
export function parseSse(text: string): { events: SseEvent[]; rest: string } {
  const blocks = text.replace(/\r\n?/g, '\n').split('\n\n');
  const rest = blocks.pop() as string;
  const events: SseEvent[] = [];
  for (const block of blocks) {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length > 0) events.push({ event, data: data.join('\n') });
  }
  return { events, rest };
}

/** `2026-11-26T10:00:00.000Z  INSERT  sensor-1  temp=21.5 hum=40` */
export function formatRecord(record: StreamRecord): string {
  const keys = record.dynamodb.Keys as { deviceId?: { S?: string }; tsSeq?: { N?: string } };
  // From the sort key's text (store/table-key.ts): ts is its integer part.
  const ts = parseTsSeq(keys.tsSeq?.N ?? '')?.ts;
  let values = '';
  if (record.dynamodb.NewImage !== undefined) {
    const { deviceId: _d, tsSeq: _k, ts: _t, seq: _s, ...rest } = unmarshall(record.dynamodb.NewImage as never);
    values = Object.entries(flatten(rest))
      .map(([k, v]) => `${k}=${formatValue(v)}`)
      .join(' ');
  }
  return `${formatTime(ts)}  ${record.eventName.padEnd(6)}  ${keys.deviceId?.S ?? '-'}${values ? `  ${values}` : ''}`;
}

export function registerTail(program: Command): void {
  withClientOptions(
    program
      .command('tail')
      .description('follow the change stream live (INSERT/MODIFY/REMOVE records) until Ctrl-C')
      .option('--device <deviceId>', "only this device's records")
      .option('--count <n>', 'stop after this many records'),
  ).action(async (opts: ClientFlags & { device?: string; count?: string }) => {
    const deviceId = opts.device === undefined ? undefined : deviceIdArg(opts.device);
    const count = opts.count === undefined ? Infinity : positiveInt(opts.count, 'count');
    const abort = new AbortController();
    const onSignal = () => abort.abort();
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    let seen = 0;
    try {
      const res = await clientFrom(opts).send('GET', '/streams/tail', { query: { deviceId }, accept: 'text/event-stream', signal: abort.signal });
      note(`following the change stream${deviceId === undefined ? '' : ` of ${deviceId}`} (Ctrl-C to stop)`);
      const decoder = new TextDecoder();
      let buffered = '';
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        const { events, rest } = parseSse(buffered + decoder.decode(chunk, { stream: true }));
        buffered = rest;
        for (const e of events) {
          if (e.event === 'error') {
            const body = JSON.parse(e.data) as { error?: { code: string; message: string } };
            throw new CliError(`the server ended the tail: ${body.error ? `${body.error.code}: ${body.error.message}` : e.data}`, EXIT.failure);
          }
          if (e.event !== 'record') continue;
          const record = JSON.parse(e.data) as StreamRecord;
          process.stdout.write(opts.json ? `${e.data}\n` : `${formatRecord(record)}\n`);
          if (++seen >= count) return;
        }
      }
      throw new CliError('the server closed the tail (it is shutting down?)', EXIT.failure);
    } catch (err) {
      // Ctrl-C is how a tail normally ends.
      if (abort.signal.aborted) return;
      throw err;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      abort.abort();
    }
  });
}

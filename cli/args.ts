/**
 * Argument parsers shared by the commands. Times and durations use the server's own
 * parsers (core/time.ts), so `--from -1h` means what `?from=-1h` means; a bad value is
 * a usage error (exit 2) before anything is sent.
 *
 * @module
 */
import { Option } from 'commander';
import type { SettingDef } from '../core/config.js';
import { isValidDeviceId } from '../core/ids.js';
import { parseDuration, parseTime } from '../core/time.js';
import { usageError } from './exit.js';

/**
 * The `start` flags of one setting. Commander camel-cases `--data-dir` into `dataDir`:
 * flags are named after their setting keys (a test checks). A boolean takes an optional
 * value, so `--secure`, `--secure true` and `--secure false` all parse and a bare
 * `--secure` never swallows the next flag (commander takes no `-…` word as an optional
 * value), and gets its `--no-secure` twin; loadConfig validates the value as for any source.
 */
export function settingOptions(def: SettingDef<unknown>): Option[] {
  const help = `${def.description} [env ${def.env}, default ${JSON.stringify(def.default)}]`;
  if (def.kind.type !== 'bool') return [new Option(`${def.flag} <value>`, help)];
  return [new Option(`${def.flag} [true|false]`, help), new Option(`--no-${def.flag.slice(2)}`, `same as ${def.flag} false`)];
}

/** Commander collector for a repeatable `--tag k=v`. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** `['site=7', 'floor=2']` → `{site: '7', floor: '2'}`. */
export function keyValues(pairs: string[], flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw usageError(`${flag} must be key=value (got ${JSON.stringify(pair)})`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

/** A time flag resolved once against `now`, so that paging through results keeps one window. */
export function timeFlag(text: string, flag: string, now: number): number {
  try {
    return parseTime(text, flag, now);
  } catch (err) {
    throw usageError(`--${flag}: ${(err as Error).message}`);
  }
}

export function durationFlag(text: string, flag: string): number {
  try {
    return parseDuration(text, flag);
  } catch (err) {
    throw usageError(`--${flag}: ${(err as Error).message}`);
  }
}

export function positiveInt(text: string, flag: string, max = Number.MAX_SAFE_INTEGER): number {
  return intInRange(text, flag, 1, max);
}

export function intInRange(text: string, flag: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw usageError(`--${flag} must be a whole number from ${min} to ${max} (got ${JSON.stringify(text)})`);
  }
  return n;
}

export function deviceIdArg(id: string): string {
  if (!isValidDeviceId(id)) throw usageError(`device id ${JSON.stringify(id)} is not valid: 1-128 characters of A-Z a-z 0-9 . _ : -`);
  return id;
}

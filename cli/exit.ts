/**
 * Exit codes of the CLI, and the one error type its commands throw. Scripts branch on
 * the code, so each failure class keeps its number:
 *
 * | code | meaning |
 * |---|---|
 * | 0 | success |
 * | 1 | server or runtime error: unreachable server, 5xx, a handler that failed in `fn test`, a replay with failed batches, readings `simulate` could not store |
 * | 2 | usage or config error: bad flags or arguments, a request the server rejects as invalid (400, 413) |
 * | 3 | not found: unknown device, function, key (404) |
 * | 4 | not allowed: missing or wrong API key (401), outside the key's policy (403), a device the broker refused |
 *
 * @module
 */

export const EXIT = { ok: 0, failure: 1, usage: 2, notFound: 3, denied: 4 } as const;
export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/** The help text's summary of {@link EXIT}. */
export const EXIT_CODES_HELP = `Exit codes:
  0  success
  1  server or runtime error (server unreachable, 5xx, a handler that failed in fn test,
     a replay with failed batches, readings simulate could not store)
  2  usage or config error (bad flags, or the server rejected the request as invalid)
  3  not found (unknown device, function or key)
  4  not allowed (no or wrong API key, outside the key's policy, a device the broker refused)`;

/** A failure the CLI reports as one stderr line and an exit code. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: ExitCode,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

export function usageError(message: string): CliError {
  return new CliError(message, EXIT.usage);
}

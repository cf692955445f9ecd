/**
 * The Node.js flags and environment of every process that touches user code: a function's
 * host (`host.js`) and the deploy-time checks (`deploy-check.ts`). One place, so a check
 * runs under exactly the restrictions the function will.
 *
 * The flags differ by Node version, so they are detected on the running binary (a
 * function runs on the server's own `process.execPath`), never assumed from the version
 * number. What was found on the binaries Tributary supports:
 *
 * | Node | permission flag                | network under it              | `node:sqlite`                          |
 * |------|--------------------------------|-------------------------------|----------------------------------------|
 * | 20   | `--experimental-permission`    | not restricted                | absent                                 |
 * | 22   | `--permission` (both accepted) | not restricted                | loads without a flag; `--no-experimental-sqlite` turns it off |
 * | 24   | `--permission`                 | not restricted                | as 22                                  |
 * | 26   | `--permission`                 | refused unless `--allow-net`  | as 22                                  |
 *
 * `node:sqlite` opens database files without the permission model's `fs` checks on some of
 * these versions, so it is turned off wherever it exists. Network access is a setting of
 * each function (default on, as in Lambda). Off, `host.js` refuses the socket APIs before
 * user code loads (`lockNetwork` in its init message), so the same calls fail the same way
 * (`ERR_ACCESS_DENIED` through the callback or 'error' event) on every version; where Node
 * can enforce it (`--allow-net` exists, Node 25+), the permission model does so beneath
 * (Node 26 alone would throw some of these as uncaught exceptions, e.g. `listen`).
 */

const flags = process.allowedNodeEnvironmentFlags;

/** `--permission` from Node 22 (stable from 23.5); Node 20 only knows the experimental name. */
const PERMISSION_FLAG = flags.has('--permission') ? '--permission' : '--experimental-permission';

/** True where the permission model itself refuses network access without `--allow-net` (Node 25+). */
const NODE_ENFORCES_NETWORK = flags.has('--allow-net');

const SQLITE_OFF: readonly string[] = flags.has('--no-experimental-sqlite') ? ['--no-experimental-sqlite'] : [];

export interface SandboxOptions {
  /** Files and folders the process may read (nothing else; nothing may be written). */
  read: readonly string[];
  /** Whether the process may open sockets. */
  network: boolean;
}

/**
 * The flags of a sandboxed process: the permission model with read access to `read` only
 * (no writes, child processes, workers, native addons, WASI or inspector), no `node:sqlite`,
 * and network only when asked for and Node can enforce it.
 * @throws Error when a path contains `*`, which Node 20 reads as a wildcard (it would widen access).
 */
export function sandboxFlags(options: SandboxOptions): string[] {
  for (const path of options.read) {
    if (path.includes('*')) throw new Error(`${path} contains "*", which the permission model treats as a wildcard`);
  }
  return [
    PERMISSION_FLAG,
    ...options.read.map((path) => `--allow-fs-read=${path}`),
    ...(options.network && NODE_ENFORCES_NETWORK ? ['--allow-net'] : []),
    ...SQLITE_OFF,
    // The permission model announces itself on every start; that line is noise in logs.
    '--disable-warning=ExperimentalWarning',
  ];
}

/** The environment every sandboxed process starts from: nothing of the server's (secrets), no `NODE_OPTIONS` (it could add flags). */
export function sandboxEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { TZ: 'UTC', ...extra, NODE_OPTIONS: '' };
}

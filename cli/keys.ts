/**
 * `tributary keys add|list|rm`: API keys with policies (`/v1/keys`).
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { positiveInt } from './args.js';
import { usageError } from './exit.js';
import { clientFrom, seg, withClientOptions, type ClientFlags } from './http-client.js';
import { formatTime, note, printFields, printJson, printTable } from './output.js';

interface Statement {
  actions: string[];
  devices: string[];
}

interface ApiKeyInfo {
  id: string;
  name: string;
  policy: { statements: Statement[] };
  createdAt: number;
}

interface CreatedKey extends ApiKeyInfo {
  /** The token, in this answer only. */
  key: string;
}

function splitList(text: string): string[] {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

/** The policy from `--policy file.json`, or one statement from `--actions` and `--devices`. */
function policyFrom(opts: { policy?: string; actions?: string; devices: string }): { statements: Statement[] } {
  if (opts.policy !== undefined) {
    if (opts.actions !== undefined) throw usageError('give either --policy or --actions/--devices, not both');
    try {
      return JSON.parse(readFileSync(opts.policy, 'utf8')) as { statements: Statement[] };
    } catch (err) {
      throw usageError(`--policy ${opts.policy}: ${(err as Error).message}`);
    }
  }
  if (opts.actions === undefined) throw usageError('say what the key may do: --actions telemetry:Read,... (and --devices), or --policy file.json');
  return { statements: [{ actions: splitList(opts.actions), devices: splitList(opts.devices) }] };
}

function describePolicy(policy: { statements: Statement[] }): string {
  return policy.statements.map((s) => `${s.actions.join(',')} on ${s.devices.join(',')}`).join('; ');
}

export function registerKeys(program: Command): void {
  const keys = program.command('keys').description('API keys: create (shown once), list, delete');

  withClientOptions(
    keys
      .command('add <name>')
      .description('create an API key with a policy; the key is shown only once')
      .option('--actions <list>', 'comma-separated actions: telemetry:Read, telemetry:Write, devices:Manage, functions:Deploy, functions:Invoke, streams:Read, admin:*')
      .option('--devices <patterns>', 'comma-separated device-id globs the actions apply to (site-7-*, sensor-1, *)', '*')
      .option('--policy <file>', 'a JSON policy {"statements": [{"actions": [...], "devices": [...]}]} instead of --actions/--devices'),
  ).action(async (name: string, opts: ClientFlags & { actions?: string; devices: string; policy?: string }) => {
    const created = await clientFrom(opts).request<CreatedKey>('POST', '/keys', { body: { name, policy: policyFrom(opts) } });
    if (opts.json) return printJson(created);
    printFields([
      ['id', created.id],
      ['name', created.name],
      ['policy', describePolicy(created.policy)],
      ['key', created.key],
    ]);
    note('The key is shown only this once: pass it as --api-key, TRIBUTARY_API_KEY or "Authorization: Bearer <key>".');
  });

  withClientOptions(keys.command('list').description('list API keys (never their tokens)').option('--limit <n>', 'at most this many keys', '1000')).action(
    async (opts: ClientFlags & { limit: string }) => {
      const items = await clientFrom(opts).listAll<ApiKeyInfo>('/keys', {}, positiveInt(opts.limit, 'limit'), 'keys');
      if (opts.json) return printJson(items);
      printTable(
        [
          { header: 'ID', value: (k: ApiKeyInfo) => k.id },
          { header: 'NAME', value: (k) => k.name },
          { header: 'CREATED', value: (k) => formatTime(k.createdAt) },
          { header: 'POLICY', value: (k) => describePolicy(k.policy) },
        ],
        items,
        'no API keys (the admin key in admin.key is not listed)',
      );
    },
  );

  withClientOptions(keys.command('rm <id>').description('delete an API key: requests with it fail from now on')).action(async (id: string, opts: ClientFlags) => {
    await clientFrom(opts).request('DELETE', `/keys/${seg(id)}`);
    if (opts.json) printJson({ id, deleted: true });
    else note(`deleted API key ${id}`);
  });
}

/**
 * `tributary devices add|list|rm|rotate`: the device registry and device secrets
 * (`/v1/devices`, `POST /v1/devices/{id}/credentials`).
 *
 * @module
 */
import type { Command } from 'commander';
import { collect, deviceIdArg, keyValues, positiveInt } from './args.js';
import { clientFrom, seg, withClientOptions, type ClientFlags } from './http-client.js';
import { formatTags, formatTime, note, printFields, printJson, printTable } from './output.js';

interface DeviceInfo {
  deviceId: string;
  firstSeen: number | null;
  lastSeen: number | null;
  readings: number;
  tags: Record<string, string>;
}

interface Credentials {
  deviceId: string;
  secret: string;
  createdAt: number;
  rotated: boolean;
}

function printSecret(creds: Credentials, json: boolean | undefined, verb: string): void {
  if (json) return printJson(creds);
  printFields([
    ['device', creds.deviceId],
    ['secret', creds.secret],
  ]);
  note(`${verb}: the secret is shown only this once. The device connects with client id and username ${creds.deviceId} and this secret as password.`);
}

export function registerDevices(program: Command): void {
  const devices = program.command('devices').description('register devices, list them, delete them, rotate their secrets');

  withClientOptions(
    devices
      .command('add <deviceId>')
      .description('register a device (or replace its tags) and issue its secret, shown once')
      .option('--tag <key=value>', 'a tag (repeatable)', collect)
      .option('--no-secret', 'register only; issue no secret'),
  ).action(async (id: string, opts: ClientFlags & { tag?: string[]; secret: boolean }) => {
    const deviceId = deviceIdArg(id);
    const tags = keyValues(opts.tag ?? [], '--tag');
    const client = clientFrom(opts);
    const device = await client.request<DeviceInfo>('PUT', `/devices/${seg(deviceId)}`, { body: { tags } });
    if (!opts.secret) {
      if (opts.json) printJson(device);
      else note(`registered ${deviceId}${Object.keys(tags).length ? ` (${formatTags(tags)})` : ''}`);
      return;
    }
    const creds = await client.request<Credentials>('POST', `/devices/${seg(deviceId)}/credentials`);
    if (opts.json) printJson({ ...device, secret: creds.secret });
    else printSecret(creds, false, `registered ${deviceId}${creds.rotated ? ' (it had a secret already: that one no longer works)' : ''}`);
  });

  withClientOptions(
    devices
      .command('list')
      .description('list registered devices')
      .option('--tag <key[=value]>', 'only devices with this tag (key, or key=value as in devices add)')
      .option('--limit <n>', 'at most this many devices', '1000'),
  ).action(async (opts: ClientFlags & { tag?: string; limit: string }) => {
    const limit = positiveInt(opts.limit, 'limit');
    const items = await clientFrom(opts).listAll<DeviceInfo>('/devices', { tag: opts.tag }, limit, 'devices');
    if (opts.json) return printJson(items);
    printTable(
      [
        { header: 'DEVICE', value: (d: DeviceInfo) => d.deviceId },
        { header: 'READINGS', value: (d) => String(d.readings), right: true },
        { header: 'FIRST SEEN', value: (d) => formatTime(d.firstSeen) },
        { header: 'LAST SEEN', value: (d) => formatTime(d.lastSeen) },
        { header: 'TAGS', value: (d) => formatTags(d.tags) },
      ],
      items,
      'no devices',
    );
  });

  withClientOptions(
    devices.command('rm <deviceId>').description('delete a device: its readings (with REMOVE records on the change stream), its secret, its connection'),
  ).action(async (id: string, opts: ClientFlags) => {
    const deviceId = deviceIdArg(id);
    await clientFrom(opts).request('DELETE', `/devices/${seg(deviceId)}`);
    if (opts.json) printJson({ deviceId, deleted: true });
    else note(`deleted ${deviceId} and all its readings`);
  });

  withClientOptions(
    devices.command('rotate <deviceId>').description('issue a new secret for a device (the old one stops working), shown once'),
  ).action(async (id: string, opts: ClientFlags) => {
    const deviceId = deviceIdArg(id);
    const client = clientFrom(opts);
    // The credentials route registers unknown devices; a rotation of a mistyped id should fail instead.
    await client.request('GET', `/devices/${seg(deviceId)}`);
    const creds = await client.request<Credentials>('POST', `/devices/${seg(deviceId)}/credentials`);
    printSecret(creds, opts.json, `rotated the secret of ${deviceId}; the old one no longer works and its connection was closed`);
  });
}

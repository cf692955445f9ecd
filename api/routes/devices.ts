/**
 * Device registry routes (`/v1/devices`). Devices appear on their first write, or are
 * registered with `PUT` (tags); `DELETE` revokes the device's MQTT secret, closes its
 * live connection and removes the device and all its data, each reading with a REMOVE
 * record on the change stream.
 *
 * @module
 */
import type { FastifyPluginAsync } from 'fastify';
import type { DeviceCredentials } from '../../access/device-credentials.js';
import { invalidParameter, TributaryError } from '../../core/errors.js';
import { TAG_KEY_PATTERN } from '../../store/items.js';
import type { DeviceInfo as StoredDevice, Page, TelemetryStore } from '../../store/types.js';
import { accessOf } from '../auth.js';
import { DEFAULT_LIMIT, DeviceIdParams, DeviceInfo, DevicePage, errorResponses, ListDevicesQuery, NoQuery, PutDeviceBody } from '../schemas.js';

/** Marks a node's fan-out of `GET /v1/devices` to the others: the node asked answers with its own part only. */
export const DEVICE_LIST_FANOUT_HEADER = 'x-tributary-fanout';
/** On the answer to a fan-out: the partitions whose devices it lists, comma-separated. */
export const DEVICE_LIST_PARTITIONS_HEADER = 'x-tributary-partitions';

/** A device list request as the route validated it (`tag` unparsed, to pass along). */
export interface DeviceListRequest {
  limit: number;
  cursor?: string;
  prefix?: string;
  tag?: string;
}

/**
 * Cluster mode (cluster/device-directory.ts): each node's registry holds the devices of the
 * partitions it materialized, so the list is every node's part, merged.
 */
export interface DeviceDirectory {
  /** A page of the whole cluster's devices, same cursor semantics as one node's; `authorization` is passed to the nodes asked. */
  list(query: DeviceListRequest, authorization: string | undefined): Promise<Page<StoredDevice>>;
  /** This node's part of a fan-out: the devices of a local page whose partitions this node answers for now, and those partitions. */
  localPart(page: Page<StoredDevice>): { page: Page<StoredDevice>; partitions: readonly number[] };
}

/** Options of {@link deviceRoutes}. */
export interface DeviceRoutesOptions {
  store: TelemetryStore;
  /** Device secrets; a deleted device's secret is revoked. */
  credentials?: Pick<DeviceCredentials, 'revoke'>;
  /** Closes a device's live MQTT connection, if any. */
  disconnect?: (deviceId: string) => void;
  /** Cluster mode: `GET /devices` lists every node's devices. */
  directory?: DeviceDirectory;
}

/**
 * `?tag=key` (has the tag) or `?tag=key=value` (has it with that value): the `key=value`
 * that `tributary devices add --tag` takes. A key that is not a valid tag key (such as
 * `site:7`) matches no device ever, so it is refused rather than answered with an empty list.
 * @throws TributaryError `InvalidParameter` (field `tag`).
 */
export function parseTagFilter(text: string): Record<string, string | undefined> {
  const eq = text.indexOf('=');
  const key = eq < 0 ? text : text.slice(0, eq);
  if (!TAG_KEY_RE.test(key)) {
    throw invalidParameter('tag', `tag filter must be key or key=value, with a key of 1-64 characters of A-Z a-z 0-9 . _ - (got ${JSON.stringify(text.slice(0, 80))})`);
  }
  return { [key]: eq < 0 ? undefined : text.slice(eq + 1) };
}
const TAG_KEY_RE = new RegExp(TAG_KEY_PATTERN);

/**
 * `GET /devices` (paged registry, optionally filtered by tag), `GET`, `PUT` and
 * `DELETE /devices/:id`.
 */
export const deviceRoutes: FastifyPluginAsync<DeviceRoutesOptions> = async (app, { store, credentials, disconnect, directory }) => {
  app.get<{ Querystring: ListDevicesQuery }>(
    '/devices',
    { config: { access: { action: 'telemetry:Read' } }, schema: { tags: ['devices'], summary: 'List devices', querystring: ListDevicesQuery, response: { 200: DevicePage, ...errorResponses } } },
    async (request, reply) => {
      const { limit = DEFAULT_LIMIT, cursor, tag, prefix } = request.query;
      const paging = { limit, ...(cursor === undefined ? {} : { cursor }), ...(prefix === undefined ? {} : { prefix }) };
      // Checked here too in cluster mode, before the filter goes to the other nodes.
      const tags = tag === undefined ? undefined : parseTagFilter(tag);
      let page: Page<StoredDevice>;
      if (directory !== undefined && request.headers[DEVICE_LIST_FANOUT_HEADER] === undefined) {
        page = await directory.list({ ...paging, ...(tag === undefined ? {} : { tag }) }, request.headers.authorization);
      } else {
        page = await store.listDevices({ ...paging, ...(tags === undefined ? {} : { tags }) });
        if (directory !== undefined) {
          const part = directory.localPart(page);
          void reply.header(DEVICE_LIST_PARTITIONS_HEADER, part.partitions.join(','));
          page = part.page;
        }
      }
      // Devices outside the key's policy are left out (a page may then be short, as with a tag filter).
      const access = accessOf(request);
      return { ...page, items: page.items.filter((d) => access.allowsDevice(d.deviceId)) };
    },
  );

  app.put<{ Params: DeviceIdParams; Body: PutDeviceBody }>(
    '/devices/:id',
    { config: { access: { action: 'devices:Manage', device: 'id' } }, schema: { tags: ['devices'], summary: 'Register a device or replace its tags', params: DeviceIdParams, querystring: NoQuery, body: PutDeviceBody, response: { 200: DeviceInfo, 201: DeviceInfo, ...errorResponses } } },
    async (request, reply) => {
      const { created, device } = await store.putDevice({ deviceId: request.params.id, tags: request.body.tags ?? {} });
      return reply.code(created ? 201 : 200).send(device);
    },
  );

  app.delete<{ Params: DeviceIdParams }>(
    '/devices/:id',
    { config: { access: { action: 'devices:Manage', device: 'id' } }, schema: { tags: ['devices'], summary: 'Delete a device and all its data; revoke its secret and disconnect it', params: DeviceIdParams, querystring: NoQuery, response: { 204: { type: 'null', description: 'Deleted.' }, ...errorResponses } } },
    async (request, reply) => {
      const deviceId = request.params.id;
      // Locked out first, so it cannot reconnect and write while its data is being deleted.
      const revoked = (await credentials?.revoke(deviceId)) ?? false;
      disconnect?.(deviceId);
      // Synchronous: answers once every reading is gone (in bounded batches, each with its REMOVE records).
      const deleted = await store.deleteDevice(deviceId);
      if (deleted === undefined && !revoked) throw deviceNotFound(deviceId);
      return reply.code(204).send();
    },
  );

  app.get<{ Params: DeviceIdParams }>(
    '/devices/:id',
    { config: { access: { action: 'telemetry:Read', device: 'id' } }, schema: { tags: ['devices'], summary: 'Get a device', params: DeviceIdParams, querystring: NoQuery, response: { 200: DeviceInfo, ...errorResponses } } },
    async (request) => {
      const device = await store.getDevice(request.params.id);
      if (device === undefined) throw deviceNotFound(request.params.id);
      return device;
    },
  );
};

/** The 404 for a device id that is well-formed but unknown. */
export function deviceNotFound(deviceId: string): TributaryError {
  return new TributaryError('DeviceNotFound', `no device with id ${JSON.stringify(deviceId)}`, { field: 'id' });
}

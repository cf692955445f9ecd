/**
 * Device registry routes (`/v1/devices`). Devices appear on their first write, or are
 * registered with `PUT` (tags); `DELETE` removes a device and all its data, each
 * reading with a REMOVE record on the change stream.
 *
 * @module
 */
import type { FastifyPluginAsync } from 'fastify';
import { TributaryError } from '../../core/errors.js';
import type { TelemetryStore } from '../../store/types.js';
import { DEFAULT_LIMIT, DeviceIdParams, DeviceInfo, DevicePage, errorResponses, ListDevicesQuery, NoQuery, PutDeviceBody } from '../schemas.js';

/** Options of {@link deviceRoutes}. */
export interface DeviceRoutesOptions {
  store: TelemetryStore;
}

/** `?tag=key` (has the tag) or `?tag=key:value` (has it with that value). */
export function parseTagFilter(text: string): Record<string, string | undefined> {
  const colon = text.indexOf(':');
  return colon < 0 ? { [text]: undefined } : { [text.slice(0, colon)]: text.slice(colon + 1) };
}

/**
 * `GET /devices` (paged registry, optionally filtered by tag), `GET`, `PUT` and
 * `DELETE /devices/:id`.
 */
export const deviceRoutes: FastifyPluginAsync<DeviceRoutesOptions> = async (app, { store }) => {
  app.get<{ Querystring: ListDevicesQuery }>(
    '/devices',
    { schema: { tags: ['devices'], summary: 'List devices', querystring: ListDevicesQuery, response: { 200: DevicePage, ...errorResponses } } },
    async (request) => {
      const { limit = DEFAULT_LIMIT, cursor, tag } = request.query;
      return store.listDevices({ limit, ...(cursor === undefined ? {} : { cursor }), ...(tag === undefined ? {} : { tags: parseTagFilter(tag) }) });
    },
  );

  app.put<{ Params: DeviceIdParams; Body: PutDeviceBody }>(
    '/devices/:id',
    { schema: { tags: ['devices'], summary: 'Register a device or replace its tags', params: DeviceIdParams, querystring: NoQuery, body: PutDeviceBody, response: { 200: DeviceInfo, 201: DeviceInfo, ...errorResponses } } },
    async (request, reply) => {
      const { created, device } = await store.putDevice({ deviceId: request.params.id, tags: request.body.tags ?? {} });
      return reply.code(created ? 201 : 200).send(device);
    },
  );

  app.delete<{ Params: DeviceIdParams }>(
    '/devices/:id',
    { schema: { tags: ['devices'], summary: 'Delete a device and all its data', params: DeviceIdParams, querystring: NoQuery, response: { 204: { type: 'null', description: 'Deleted.' }, ...errorResponses } } },
    async (request, reply) => {
      // Synchronous: answers once every reading is gone (in bounded batches, each with its REMOVE records).
      const deleted = await store.deleteDevice(request.params.id);
      if (deleted === undefined) throw deviceNotFound(request.params.id);
      return reply.code(204).send();
    },
  );

  app.get<{ Params: DeviceIdParams }>(
    '/devices/:id',
    { schema: { tags: ['devices'], summary: 'Get a device', params: DeviceIdParams, querystring: NoQuery, response: { 200: DeviceInfo, ...errorResponses } } },
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

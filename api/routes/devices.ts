/**
 * Device registry routes (`/v1/devices`). Devices appear on their first write in
 * open mode; provisioning (PUT/DELETE) arrives with the access model.
 *
 * @module
 */
import type { FastifyPluginAsync } from 'fastify';
import { TributaryError } from '../../core/errors.js';
import type { TelemetryStore } from '../../store/types.js';
import { DEFAULT_LIMIT, DeviceIdParams, DeviceInfo, DevicePage, errorResponses, ListDevicesQuery, NoQuery } from '../schemas.js';

/** Options of {@link deviceRoutes}. */
export interface DeviceRoutesOptions {
  store: TelemetryStore;
}

/** `GET /devices` (paged registry) and `GET /devices/:id` (one entry). */
export const deviceRoutes: FastifyPluginAsync<DeviceRoutesOptions> = async (app, { store }) => {
  app.get<{ Querystring: ListDevicesQuery }>(
    '/devices',
    { schema: { querystring: ListDevicesQuery, response: { 200: DevicePage, ...errorResponses } } },
    async (request) => {
      const { limit = DEFAULT_LIMIT, cursor } = request.query;
      return store.listDevices(cursor === undefined ? { limit } : { limit, cursor });
    },
  );

  app.get<{ Params: DeviceIdParams }>(
    '/devices/:id',
    { schema: { params: DeviceIdParams, querystring: NoQuery, response: { 200: DeviceInfo, ...errorResponses } } },
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

/**
 * Device provisioning: `POST /v1/devices/{id}/credentials` issues the device's MQTT
 * secret, or rotates it. The secret is in this one response only (`Cache-Control:
 * no-store`); the server keeps its SHA-256 digest.
 *
 * An unregistered device is registered (no tags) first, so provisioning a new device is
 * one call. Rotating replaces the secret at once: the old one stops verifying and the
 * device's live MQTT connection, which logged in with it, is closed.
 *
 * @module
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import type { DeviceCredentials } from '../../access/device-credentials.js';
import type { TelemetryStore } from '../../store/types.js';
import { DeviceIdParams, errorResponses, NoQuery } from '../schemas.js';

/** Options of {@link credentialRoutes}. */
export interface CredentialRoutesOptions {
  credentials: Pick<DeviceCredentials, 'issue'>;
  /** Where an unregistered device is registered. */
  store: Pick<TelemetryStore, 'getDevice' | 'putDevice'>;
  /** Closes the device's live MQTT connection, if any (after a rotation). */
  disconnect?: (deviceId: string) => void;
}

const IssuedCredentialBody = Type.Object(
  {
    deviceId: Type.String(),
    secret: Type.String({ description: 'The MQTT password of the device. Shown only here: store it now.' }),
    createdAt: Type.Integer({ description: 'When the secret was issued, epoch ms.' }),
    rotated: Type.Boolean({ description: 'True when it replaced an earlier secret, which no longer works.' }),
  },
  { description: 'The new secret. MQTT login: username and client id = deviceId, password = secret.' },
);
type IssuedCredentialBody = Static<typeof IssuedCredentialBody>;

export const credentialRoutes: FastifyPluginAsync<CredentialRoutesOptions> = async (app, { credentials, store, disconnect }) => {
  app.post<{ Params: DeviceIdParams; Reply: IssuedCredentialBody }>(
    '/devices/:id/credentials',
    {
      // Provisioning is device management (api/auth.ts; audited as administrative).
      config: { access: { action: 'devices:Manage', device: 'id' } },
      schema: {
        tags: ['devices'],
        summary: 'Issue or rotate a device secret (shown once)',
        description:
          'Registers the device if it is not registered yet, then issues a new MQTT secret for it. An earlier secret stops working at once and the device is disconnected. The response is the only place the secret appears.',
        params: DeviceIdParams,
        querystring: NoQuery,
        response: { 201: IssuedCredentialBody, ...errorResponses },
      },
    },
    async (request, reply) => {
      const deviceId = request.params.id;
      // Registered before the secret exists, so a failure in between leaves a device without a secret, never the reverse.
      if ((await store.getDevice(deviceId)) === undefined) await store.putDevice({ deviceId, tags: {} });
      const issued = await credentials.issue(deviceId);
      if (issued.rotated) disconnect?.(deviceId);
      request.log.info({ deviceId, rotated: issued.rotated }, 'device secret issued');
      return reply.code(201).header('cache-control', 'no-store').send(issued);
    },
  );
};

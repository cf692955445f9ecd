/**
 * Commands to devices: `POST /v1/devices/{id}/commands/{name}` publishes the body's
 * `payload` as JSON on the MQTT topic `devices/{id}/commands/{name}`.
 *
 * @module
 */
import type { FastifyPluginAsync } from 'fastify';
import type { CommandSender } from '../../ingest/mqtt-broker.js';
import { CommandBody, CommandParams, CommandResult, errorResponses, NoQuery } from '../schemas.js';

/** Options of {@link commandRoutes}. */
export interface CommandRoutesOptions {
  commands: CommandSender;
}

export const commandRoutes: FastifyPluginAsync<CommandRoutesOptions> = async (app, { commands }) => {
  app.post<{ Params: CommandParams; Body: CommandBody }>(
    '/devices/:id/commands/:name',
    {
      // Steering a device is managing it (and audited as such); a finer action would belong in access/policy.ts.
      config: { access: { action: 'devices:Manage', device: 'id' } },
      schema: {
        tags: ['devices'],
        summary: 'Send a command to a device over MQTT',
        description:
          'Publishes `payload` (as JSON) on `devices/{id}/commands/{name}` with QoS `qos` (default 1). 202 means the broker has delivered it to the subscribers connected now and queued it for persistent sessions that are offline (QoS 1); a device that is not subscribed does not receive it, and that is not an error. In cluster mode 202 means Kafka has the command; every node then publishes it to the devices connected to it.',
        params: CommandParams,
        querystring: NoQuery,
        body: CommandBody,
        response: { 202: CommandResult, ...errorResponses },
      },
    },
    async (request, reply) => {
      const qos = request.body.qos ?? 1;
      const topic = await commands.sendCommand(request.params.id, request.params.name, request.body.payload, qos);
      return reply.code(202).send({ topic, qos });
    },
  );
};

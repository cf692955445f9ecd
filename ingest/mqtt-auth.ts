/**
 * The broker's access control in secured mode ({@link BrokerAccess}): every MQTT client
 * is a provisioned device, and what it may do is derived from its identity alone.
 *
 * - CONNECT: username = device id = client id; the id must pass the device-id rule (no
 *   `+`, `#`, `/`, spaces or control characters: the mosquitto CVE-2017-7650 class),
 *   the device must have a credential, the password must be its secret (constant-time
 *   compare), and failed logins are throttled per client id and per address. A will
 *   message must lie in the device's own namespace, like any publish.
 * - PUBLISH (also wills when they fire, and retained messages): only topics under
 *   `devices/{ownId}/`. `$SYS` and everything else is outside it.
 * - SUBSCRIBE: only `devices/{ownId}/commands` and filters below it. `#`,
 *   `devices/+/commands/#`, `$SYS/#` and `$share/...` are refused (SUBACK 0x80); a filter
 *   is granted as sent or not at all, never rewritten.
 * - Delivery: a device is only ever sent messages on its own command topics, whatever
 *   subscription might have been restored from an earlier session.
 *
 * The allowed topics are prefixes built from the authenticated id (which the id rule
 * has already proven wildcard- and slash-free) and compared byte for byte; the id is
 * never pasted into a filter that the broker would then interpret.
 *
 * @module
 */
import type { Socket } from 'node:net';
import type { AuthenticateError, Client, PublishPacket, Subscription } from 'aedes';
import { isValidDeviceId } from '../core/ids.js';
import type { Logger } from '../core/logger.js';
import { addressKey, type LoginThrottle } from '../access/login-throttle.js';
import type { BrokerAccess } from './mqtt-broker.js';

/** Why a client was refused; the label of `tributary_mqtt_auth_failures_total`. */
export type AuthFailureReason =
  | 'missing_credentials'
  | 'invalid_client_id'
  | 'client_id_mismatch'
  | 'throttled'
  | 'unknown_device'
  | 'bad_secret'
  | 'will_denied'
  | 'publish_denied'
  | 'subscribe_denied';

export interface DeviceAccessOptions {
  /** Checks a device's secret (constant time); `has` tells unknown devices from wrong secrets in logs and metrics. */
  credentials: { verify(deviceId: string, secret: Buffer): boolean; has(deviceId: string): boolean };
  throttle: LoginThrottle;
  logger: Logger;
  /** Counts refusals by reason (`tributary_mqtt_auth_failures_total`). */
  failures?: { inc(labels: { reason: AuthFailureReason }): void };
}

// CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3).
const IDENTIFIER_REJECTED = 2;
const BAD_USERNAME_OR_PASSWORD = 4;
const NOT_AUTHORIZED = 5;

/** The BrokerAccess of secured mode. */
export function deviceAccess(opts: DeviceAccessOptions): BrokerAccess {
  const { credentials, throttle, logger } = opts;
  const refused = (reason: AuthFailureReason, fields: Record<string, unknown>, message: string): void => {
    opts.failures?.inc({ reason });
    // Throttled attempts can come by the thousand; the first refusals already said why.
    if (reason === 'throttled') logger.debug({ ...fields, reason }, message);
    else logger.warn({ ...fields, reason }, message);
  };

  return {
    authenticate(client, username, password, done) {
      const clientId = client.id;
      const address = remoteAddress(client);
      const fail = (reason: AuthFailureReason, returnCode: number, message: string): void => {
        refused(reason, { clientId: clientId.slice(0, 140), address }, message);
        done(authError(returnCode, message), false);
      };
      // Checked before anything else, so an id that could widen a topic never gets further.
      if (!isValidDeviceId(clientId)) return fail('invalid_client_id', IDENTIFIER_REJECTED, 'client id is not a valid device id');
      if (username === undefined || password === undefined) return fail('missing_credentials', NOT_AUTHORIZED, 'username (the device id) and password (its secret) are required');
      if (username !== clientId) return fail('client_id_mismatch', IDENTIFIER_REJECTED, 'client id must equal the username (the device id)');
      const throttleKey = addressKey(address);
      const blocked = throttle.check(clientId, throttleKey);
      if (blocked !== undefined) {
        return fail('throttled', BAD_USERNAME_OR_PASSWORD, `too many failed logins by ${blocked.by}; refused until ${new Date(blocked.until).toISOString()}`);
      }
      if (!credentials.verify(clientId, password)) {
        throttle.failure(clientId, throttleKey);
        return credentials.has(clientId)
          ? fail('bad_secret', BAD_USERNAME_OR_PASSWORD, 'wrong secret')
          : fail('unknown_device', BAD_USERNAME_OR_PASSWORD, 'no credentials for this device (provision it first)');
      }
      throttle.success(clientId);
      // aedes keeps the CONNECT's will in client._will until authentication succeeds.
      const will = (client as Client & { _will?: PublishPacket | null })._will;
      if (will && !mayPublish(clientId, will.topic)) {
        return fail('will_denied', NOT_AUTHORIZED, `will topic ${JSON.stringify(will.topic)} is outside devices/${clientId}/`);
      }
      done(null, true);
    },

    checkPublish(client, packet) {
      if (mayPublish(client.id, packet.topic)) return null;
      const message = `device ${client.id} may not publish to ${JSON.stringify(packet.topic)} (only under devices/${client.id}/)`;
      refused('publish_denied', { clientId: client.id, topic: packet.topic, retain: packet.retain }, message);
      return new Error(message);
    },

    authorizeSubscribe(client, sub, done) {
      if (mayReceive(client.id, sub.topic)) return done(null, sub);
      refused('subscribe_denied', { clientId: client.id, topic: sub.topic }, `device ${client.id} may only subscribe under devices/${client.id}/commands`);
      // A null subscription is a failure return code (0x80) in the SUBACK [MQTT-3.9.3]; the client stays connected.
      done(null, null as unknown as Subscription);
    },

    authorizeForward(client, packet) {
      return mayReceive(client.id, packet.topic) ? packet : null;
    },
  };
}

/** Topics under `devices/{deviceId}/`. `deviceId` must already have passed the device-id rule. */
export function mayPublish(deviceId: string, topic: string): boolean {
  return topic.startsWith(`devices/${deviceId}/`);
}

/**
 * Topics and filters at or under `devices/{deviceId}/commands`. A filter below that
 * level, wildcards included, can only match topics below it; `$share/...` and `$SYS`
 * start elsewhere and are refused.
 */
export function mayReceive(deviceId: string, topicOrFilter: string): boolean {
  const base = `devices/${deviceId}/commands`;
  return topicOrFilter === base || topicOrFilter.startsWith(`${base}/`);
}

function authError(returnCode: number, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

/** The peer's address: TCP socket, or the HTTP upgrade request of a WebSocket. */
function remoteAddress(client: Client): string {
  return client.req?.socket.remoteAddress ?? (client.conn as Partial<Socket>).remoteAddress ?? 'unknown';
}

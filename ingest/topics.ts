import { isValidDeviceId } from '../core/ids.js';

/** What a topic means to Tributary. */
export type TopicRoute =
  | { kind: 'telemetry'; deviceId: string }
  | { kind: 'device-other'; deviceId: string }
  | { kind: 'invalid-device'; segment: string }
  | { kind: 'other' };

/**
 * Parses a PUBLISH topic. Readings go to `devices/{deviceId}/telemetry`; anything
 * else under `devices/` is device traffic that is not telemetry (e.g. commands);
 * topics outside `devices/` are plain MQTT, routed by the broker as usual.
 */
export function routeTopic(topic: string): TopicRoute {
  if (!topic.startsWith('devices/')) return { kind: 'other' };
  const rest = topic.slice('devices/'.length);
  const slash = rest.indexOf('/');
  const deviceId = slash < 0 ? rest : rest.slice(0, slash);
  if (!isValidDeviceId(deviceId)) return { kind: 'invalid-device', segment: deviceId };
  if (rest.slice(slash + 1) === 'telemetry' && slash >= 0) return { kind: 'telemetry', deviceId };
  return { kind: 'device-other', deviceId };
}

/**
 * A command name is one topic level of `devices/{id}/commands/{name}`: 1–128
 * characters without `/`, the wildcards `+` and `#` ([MQTT-3.3.2-2]: not allowed in a
 * PUBLISH topic) or control characters.
 */
export const COMMAND_NAME_PATTERN = '^[^/+#\\u0000-\\u001f\\u007f]{1,128}$';

export function telemetryTopic(deviceId: string): string {
  return `devices/${deviceId}/telemetry`;
}

export function commandTopic(deviceId: string, name: string): string {
  return `devices/${deviceId}/commands/${name}`;
}

import { TributaryError } from './errors.js';

/**
 * Device ids: 1–128 characters of `[A-Za-z0-9._:-]`, case-sensitive. The alphabet
 * excludes MQTT wildcards, `/`, spaces and control characters, so an id can never
 * widen a topic filter (the mosquitto CVE-2017-7650 class) and never contains the
 * 0x00 separator of the store's keys.
 */
export const DEVICE_ID_PATTERN = '^[A-Za-z0-9._:-]{1,128}$';
const DEVICE_ID_RE = new RegExp(DEVICE_ID_PATTERN);

export function isValidDeviceId(id: string): boolean {
  return DEVICE_ID_RE.test(id);
}

export function assertDeviceId(id: string, field = 'deviceId'): string {
  if (!isValidDeviceId(id)) {
    throw new TributaryError(
      'InvalidParameter',
      `device id must be 1-128 characters of A-Z a-z 0-9 . _ : - (got ${JSON.stringify(id.slice(0, 140))})`,
      { field },
    );
  }
  return id;
}

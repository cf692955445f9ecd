/**
 * Open or secured mode, decided the way mosquitto 2 does it: anonymous access only
 * while every listener is bound to loopback, unless `--secure` asks for credentials
 * anyway. Any non-loopback bind means secured mode.
 */
import { isIP } from 'node:net';
import type { Config } from '../core/config.js';

export type SecurityMode = 'open' | 'secured';

export function securityMode(config: Pick<Config, 'secure' | 'mqttHost' | 'httpHost'>): SecurityMode {
  if (config.secure) return 'secured';
  return isLoopback(config.mqttHost) && isLoopback(config.httpHost) ? 'open' : 'secured';
}

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1';
}

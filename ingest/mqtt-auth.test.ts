import { describe, expect, it } from 'vitest';
import { mayPublish, mayReceive } from './mqtt-auth.js';

describe('topics a device may use, derived from its id', () => {
  it('publishes only under devices/{id}/', () => {
    for (const topic of ['devices/d1/telemetry', 'devices/d1/status', 'devices/d1/commands/ack', 'devices/d1/a/b/c']) expect(mayPublish('d1', topic), topic).toBe(true);
    for (const topic of ['devices/d1', 'devices/d10/telemetry', 'devices/d/telemetry', 'devices/D1/telemetry', 'devices//telemetry', '$SYS/x', '$tributary/rejects/d1', 'other', 'devices/d2/telemetry', '/devices/d1/telemetry']) {
      expect(mayPublish('d1', topic), topic).toBe(false);
    }
  });

  it('receives only at or under devices/{id}/commands, however the filter is dressed up', () => {
    for (const filter of ['devices/d1/commands', 'devices/d1/commands/#', 'devices/d1/commands/+', 'devices/d1/commands/+/../', 'devices/d1/commands/reboot']) expect(mayReceive('d1', filter), filter).toBe(true);
    for (const filter of [
      '#',
      '+',
      '+/+/+/#',
      'devices/#',
      'devices/+/commands/#',
      'devices/d1/#',
      'devices/d1/+',
      'devices/d1/+/#',
      'devices/d1/telemetry',
      'devices/d1/commandsx',
      'devices/d1/commands#',
      'devices/d10/commands/#',
      'devices/d2/commands/#',
      '$SYS/#',
      '$share/g/devices/d1/commands/#',
      '$share/g/#',
      '$tributary/rejects/#',
      '/devices/d1/commands/#',
    ]) {
      expect(mayReceive('d1', filter), filter).toBe(false);
    }
  });
});

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDir } from '../test/helpers.js';
import { ConfigError, loadConfig, SETTINGS } from './config.js';

const dirs: Array<{ cleanup: () => void }> = [];
afterEach(() => dirs.splice(0).forEach((d) => d.cleanup()));

function configFile(content: unknown): string {
  const dir = tempDir();
  dirs.push(dir);
  const path = join(dir.path, 'tributary.json');
  writeFileSync(path, JSON.stringify(content));
  return path;
}

describe('loadConfig', () => {
  it('starts from the defaults and freezes the result', () => {
    const config = loadConfig();
    expect(config.mqttPort).toBe(1883);
    expect(config.httpPort).toBe(3000);
    expect(config.dataDir).toBe('./data');
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('layers file < env < flags', () => {
    const file = configFile({ mqttPort: 1000, httpPort: 2000, logLevel: 'debug' });
    const config = loadConfig({ file, env: { TRIBUTARY_HTTP_PORT: '2001', TRIBUTARY_LOG_LEVEL: 'warn' }, flags: { logLevel: 'error' } });
    expect(config.mqttPort).toBe(1000);
    expect(config.httpPort).toBe(2001);
    expect(config.logLevel).toBe('error');
  });

  it('parses durations', () => {
    expect(loadConfig({ flags: { partitionWindow: '1h' } }).partitionWindow).toBe(3_600_000);
  });

  it.each([
    [{ flags: { mqttPort: '70000' } }, /invalid mqttPort \(flag --mqtt-port\)/],
    [{ flags: { httpPort: 'abc' } }, /invalid httpPort/],
    [{ env: { TRIBUTARY_LOG_LEVEL: 'loud' } }, /invalid logLevel \(environment TRIBUTARY_LOG_LEVEL\): expected one of/],
    [{ flags: { partitionWindow: 'daily' } }, /invalid partitionWindow/],
    [{ flags: { streamShards: '0' } }, /invalid streamShards/],
  ])('names the setting of a bad value: %j', (sources, message) => {
    expect(() => loadConfig(sources)).toThrow(message);
  });

  it('rejects unknown keys and non-object files', () => {
    expect(() => loadConfig({ file: configFile({ mqttPrt: 1 }) })).toThrow(/unknown setting "mqttPrt"/);
    expect(() => loadConfig({ file: configFile([1]) })).toThrow(ConfigError);
    expect(() => loadConfig({ file: '/nonexistent/tributary.json' })).toThrow(/cannot read config file/);
  });

  it('gives every setting a distinct flag and env variable', () => {
    const defs = Object.values(SETTINGS);
    expect(new Set(defs.map((d) => d.flag)).size).toBe(defs.length);
    expect(new Set(defs.map((d) => d.env)).size).toBe(defs.length);
  });

  it('names each flag after its key, so the CLI maps flags to settings by camel-casing', () => {
    for (const [key, def] of Object.entries(SETTINGS)) {
      expect(def.flag.slice(2).replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())).toBe(key);
    }
  });
});

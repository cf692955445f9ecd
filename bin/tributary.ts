#!/usr/bin/env node
/**
 * The command line. The only place that reads argv and the environment; everything
 * below gets a frozen config.
 */
import { Command, Option } from 'commander';
import { isIP } from 'node:net';
import { createApp } from '../app.js';
import { ConfigError, loadConfig, SETTINGS, type Config, type SettingKey } from '../core/config.js';
import { createLogger } from '../core/logger.js';

const program = new Command();
program.name('tributary').description('Self-hosted IoT telemetry backend: MQTT ingest, time-partitioned store, change streams, functions.');

const start = program
  .command('start')
  .description('start the broker, the store, the change stream, functions and the HTTP API in one process')
  .option('-c, --config <file>', 'JSON config file (keys as in docs/configuration.md)', process.env.TRIBUTARY_CONFIG);
for (const def of Object.values(SETTINGS)) {
  // Commander camel-cases `--data-dir` into `dataDir`: flags are named after their setting keys (a test checks).
  start.addOption(new Option(`${def.flag} <value>`, `${def.description} [env ${def.env}, default ${JSON.stringify(def.default)}]`));
}

start.action(async (options: Record<string, unknown>) => {
  let config: Config;
  try {
    const flags: Partial<Record<SettingKey, unknown>> = {};
    for (const key of Object.keys(SETTINGS) as SettingKey[]) if (options[key] !== undefined) flags[key] = options[key];
    config = loadConfig({ file: options.config as string | undefined, env: process.env, flags });
    refuseExposedOpenMode(config);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`tributary: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }

  const logger = createLogger(config.logLevel as 'info');
  const app = createApp(config, { logger });
  let signals = 0;
  const shutdown = (signal: string) => {
    if (++signals > 1) {
      process.stderr.write(`tributary: second ${signal}, exiting without waiting\n`);
      process.exit(130);
    }
    logger.info({ signal }, 'shutting down: flushing in-flight writes');
    app.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'error while shutting down');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));

  try {
    const addresses = await app.start();
    logger.warn('open mode: MQTT and HTTP accept anonymous clients (bound to loopback only)');
    process.stdout.write(
      `\ntributary is running\n  MQTT  ${addresses.mqtt}\n  HTTP  ${addresses.http}\n  data  ${addresses.dataDir}\n\n`,
    );
  } catch (err) {
    process.stderr.write(`tributary: cannot start: ${(err as Error).message}\n`);
    await app.stop().catch(() => undefined);
    process.exit(1);
  }
});

/**
 * Device credentials and API keys are not built yet, so the only safe mode is open
 * mode on loopback: refuse to expose an unauthenticated broker or API.
 */
function refuseExposedOpenMode(config: Config): void {
  for (const key of ['mqttHost', 'httpHost'] as const) {
    const host = config[key];
    if (!isLoopback(host)) {
      throw new ConfigError(`${key}=${host} is not a loopback address; binding beyond loopback needs secured mode (credentials and API keys), which this build does not have yet`);
    }
  }
}

function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1';
}

program.parseAsync(process.argv).catch((err: unknown) => {
  process.stderr.write(`tributary: ${(err as Error).message}\n`);
  process.exit(1);
});

#!/usr/bin/env -S node --max-semi-space-size=64
/**
 * The command line. The only place that reads argv and the environment; everything
 * below gets a frozen config.
 */
import { Command, CommanderError } from 'commander';
import { join } from 'node:path';
import { securityMode } from '../access/mode.js';
import { settingOptions } from '../cli/args.js';
import { registerDevices } from '../cli/devices.js';
import { CliError, EXIT, EXIT_CODES_HELP } from '../cli/exit.js';
import { registerFn } from '../cli/fn.js';
import { registerKeys } from '../cli/keys.js';
import { registerQuery } from '../cli/query.js';
import { registerSimulate } from '../cli/simulate.js';
import { registerTail } from '../cli/tail.js';
import { ConfigError, loadConfig, SETTINGS, type Config, type SettingKey } from '../core/config.js';
import { createLogger } from '../core/logger.js';

const program = new Command();
program
  .name('tributary')
  .description('Self-hosted IoT telemetry backend: MQTT ingest, time-partitioned store, change streams, functions.')
  // Usage errors throw (see the end of this file) so that they exit 2, not commander's 1.
  .exitOverride()
  .addHelpText(
    'after',
    `
Every command but start (and fn test) talks to a running server over HTTP: --url or
TRIBUTARY_URL (default http://127.0.0.1:3000), with --api-key, TRIBUTARY_API_KEY or
<data-dir>/admin.key in secured mode. \`tributary <command> --help\` for each command.

${EXIT_CODES_HELP}`,
  );

const start = program
  .command('start')
  .description('start the broker, the store, the change stream, functions and the HTTP API in one process')
  .option('-c, --config <file>', 'JSON config file (keys as in docs/configuration.md)', process.env.TRIBUTARY_CONFIG);
for (const def of Object.values(SETTINGS)) for (const option of settingOptions(def)) start.addOption(option);

start.action(async (options: Record<string, unknown>) => {
  let config: Config;
  try {
    const flags: Partial<Record<SettingKey, unknown>> = {};
    for (const key of Object.keys(SETTINGS) as SettingKey[]) if (options[key] !== undefined) flags[key] = options[key];
    config = loadConfig({ file: options.config as string | undefined, env: process.env, flags });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`tributary: ${err.message}\n`);
      process.exit(EXIT.usage);
    }
    throw err;
  }

  const logger = createLogger(config.logLevel as 'info');
  // Loaded here, not at the top: the client commands should not pay for the whole server's start-up.
  const { createApp } = await import('../app.js');
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
    const mode = securityMode(config);
    if (mode === 'open') logger.warn('open mode: MQTT and HTTP accept anonymous clients (bound to loopback only; --secure to require credentials)');
    // Only on the first secured start: the key exists nowhere else in clear, so say where it went.
    // One write with the addresses, so that whoever reads the addresses has the key too.
    const { adminKey } = addresses;
    const keyLines =
      adminKey === undefined
        ? ''
        : `  admin API key (shown once): ${adminKey}\n  saved to ${join(config.dataDir, 'admin.key')} (mode 0600); the CLI reads it from there, or pass it as --api-key / TRIBUTARY_API_KEY\n\n`;
    const clusterLine = config.kafkaBrokers === '' ? '' : `  kafka ${config.kafkaBrokers} (cluster mode, topics ${config.kafkaTopicPrefix}*)\n`;
    process.stdout.write(`\ntributary is running (${mode} mode)\n  MQTT  ${addresses.mqtt}\n  HTTP  ${addresses.http}\n  WS    ${addresses.ws}\n  data  ${addresses.dataDir}\n${clusterLine}\n${keyLines}`);
  } catch (err) {
    process.stderr.write(`tributary: cannot start: ${(err as Error).message}\n`);
    await app.stop().catch(() => undefined);
    // A setting that turns out bad only at start (e.g. unreadable TLS files) is still a configuration error.
    process.exit(err instanceof ConfigError ? 2 : 1);
  }
});

// `tributary query ... | head` closes the pipe early: stop quietly, as other Unix tools do.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(EXIT.ok);
  throw err;
});

registerDevices(program);
registerKeys(program);
registerQuery(program);
registerTail(program);
registerFn(program);
registerSimulate(program);

program.parseAsync(process.argv).catch((err: unknown) => {
  // Commander has printed its message (or the help) already.
  if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? EXIT.ok : EXIT.usage);
  process.stderr.write(`tributary: ${(err as Error).message}\n`);
  process.exit(err instanceof CliError ? err.exitCode : EXIT.failure);
});

import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/** One logger for the process; modules take `logger.child({ module })`. */
export function createLogger(level: LevelWithSilent, destination?: NodeJS.WritableStream): Logger {
  return pino({ level, base: { pid: process.pid } }, destination ?? process.stdout);
}

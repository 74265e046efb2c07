// One pino logger for the process: JSON lines on stderr (stdout is for command output such as
// `ambpf map dump`, which must stay byte-identical to bpftool), pretty-printed when stderr is a TTY.
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

const LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function isLogLevel(value: string): value is LevelWithSilent {
  return (LEVELS as readonly string[]).includes(value);
}

function makeLogger(level: LevelWithSilent): Logger {
  if (process.stderr.isTTY && process.env['AMBPF_LOG_FORMAT'] !== 'json') {
    return pino({
      level,
      base: undefined,
      transport: { target: 'pino-pretty', options: { destination: 2, colorize: true, translateTime: 'HH:MM:ss.l' } },
    });
  }
  return pino({ level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}

let root: Logger = makeLogger((process.env['AMBPF_LOG_LEVEL'] as LevelWithSilent | undefined) ?? 'info');

/** The process logger; `component` names the module in every line it writes. */
export function logger(component?: string): Logger {
  return component ? root.child({ component }) : root;
}

/** Reconfigure the level (from `--log-level`); call once at start, before children are made. */
export function setLogLevel(level: LevelWithSilent): void {
  root = makeLogger(level);
}

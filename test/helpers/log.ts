// A logger whose lines a test can read: what a source says is part of what it does.
import { pino, type Logger } from 'pino';

export interface CapturedLog {
  readonly log: Logger;
  /** Every line written so far, parsed. */
  readonly lines: Array<Record<string, unknown>>;
  /** The lines whose msg starts with `prefix`. */
  with(prefix: string): Array<Record<string, unknown>>;
}

export function captureLog(): CapturedLog {
  const lines: Array<Record<string, unknown>> = [];
  const log = pino(
    { level: 'debug', base: undefined },
    {
      write: (s: string) => {
        lines.push(JSON.parse(s) as Record<string, unknown>);
      },
    },
  );
  return { log, lines, with: (prefix) => lines.filter((l) => String(l['msg']).startsWith(prefix)) };
}

// Shared by the ZDS tests: a temp dir for sockets, a logger whose lines the test can read, and raw
// peers built on SeqpacketSocket that play a (mis)behaving node agent or ztunnel byte by byte.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import type { Logger } from '../../src/log.ts';
import { closeFd } from '../../src/libbpf/handle.ts';
import {
  SeqpacketSocket,
  decodeAck,
  decodeRequest,
  encodeAck,
  encodeHello,
  type Datagram,
} from '../../src/zds/index.ts';
import { testPrefix } from '../helpers/prefix.ts';

export interface Teardown {
  teardown(fn: () => unknown): void;
}

/** A fresh directory under the system temp dir, removed at teardown; returns a socket path inside it. */
export function socketPath(t: Teardown, name = 'ztunnel.sock'): string {
  const dir = mkdtempSync(join(tmpdir(), `${testPrefix()}-zds-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return join(dir, name);
}

export interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

export interface CapturedLog {
  log: Logger;
  lines: LogLine[];
  /** Lines at `level` or above (pino numbers: 40 warn, 50 error) whose message or err text matches `re`. */
  find(re: RegExp, level?: number): LogLine[];
}

/** A pino logger writing JSON into memory (debug and up). */
export function captureLog(): CapturedLog {
  const lines: LogLine[] = [];
  const log = pino(
    { level: 'debug', base: undefined },
    { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) },
  );
  const text = (l: LogLine): string => `${l.msg} ${JSON.stringify(l['err'] ?? '')}`;
  return { log, lines, find: (re, level = 0) => lines.filter((l) => l.level >= level && re.test(text(l))) };
}

export const WARN = 40;
export const ERROR = 50;

/** The next datagram, failing the test (by throwing) when none comes within `ms`. */
export async function recvWithin(sock: SeqpacketSocket, ms: number, what: string): Promise<Datagram | null> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([sock.recv(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A hand-driven ztunnel: connects, says hello, reads requests, answers what the test says. */
export class RawZtunnel {
  readonly sock: SeqpacketSocket;
  private constructor(sock: SeqpacketSocket) {
    this.sock = sock;
  }

  static async connect(path: string, hello = true): Promise<RawZtunnel> {
    const z = new RawZtunnel(SeqpacketSocket.connect(path));
    if (hello) await z.sock.send(encodeHello());
    return z;
  }

  /** Next request, decoded; its fds are closed here (the datagram still lists their numbers). */
  async request(ms = 5000): Promise<{ d: Datagram; req: ReturnType<typeof decodeRequest> }> {
    const d = await recvWithin(this.sock, ms, 'request');
    if (d === null) throw new Error('EOF from the agent');
    const req = decodeRequest(d.data);
    for (const fd of d.fds) closeFd(fd);
    return { d, req };
  }

  ack(error = ''): Promise<void> {
    return this.sock.send(encodeAck(error));
  }

  close(): void {
    this.sock.close();
  }
}

/** A hand-driven node agent: accepts connections, reads hellos and acks, sends any bytes with any fds. */
export class RawAgent {
  readonly listener: SeqpacketSocket;
  private constructor(listener: SeqpacketSocket) {
    this.listener = listener;
  }

  static listen(path: string): RawAgent {
    return new RawAgent(SeqpacketSocket.listen(path));
  }

  /** Accept the next connection and read its hello. */
  async accept(ms = 5000): Promise<SeqpacketSocket> {
    let timer: NodeJS.Timeout | undefined;
    const conn = await Promise.race([
      this.listener.accept(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no connection within ${ms} ms`)), ms);
      }),
    ]).finally(() => clearTimeout(timer));
    const hello = await recvWithin(conn, ms, 'hello');
    if (hello === null) throw new Error('EOF instead of a hello');
    return conn;
  }

  close(): void {
    this.listener.close();
  }
}

/** The Ack text of the next datagram on `conn` ('' = ack), or 'EOF'. */
export async function answerOf(conn: SeqpacketSocket, ms = 5000): Promise<string> {
  const d = await recvWithin(conn, ms, 'answer');
  if (d === null) return 'EOF';
  const a = decodeAck(d.data);
  if (a === undefined) throw new Error('answer without an Ack');
  return a;
}

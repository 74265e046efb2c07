// ztunnel's side of ZDS, for the testbed's ztunnel stand-in: connect with ztunnel's backoff, say hello,
// read requests, let the handler decide, answer. The behaviours are ztunnel's (istio/ztunnel
// src/inpod/workloadmanager.rs for the connection loop, src/inpod/protocol.rs for reading a message),
// noted where they apply; the handler plays src/inpod/statemanager.rs.
import { describeError } from '../errors.ts';
import { closeFd } from '../libbpf/handle.ts';
import type { Logger } from '../log.ts';
import { ZdsClosedError, ZdsProtocolError, type ZdsError } from './errors.ts';
import { decodeRequest, encodeAck, encodeHello, requestKind, type WorkloadInfo } from './messages.ts';
import { SeqpacketSocket, ZDS_MAX_MESSAGE, type Datagram } from './transport.ts';

/** workloadmanager.rs connect(): 10 ms, doubled before each sleep, <= 15 s. */
const CONNECT_BACKOFF_START_MS = 10;
const BACKOFF_MAX_MS = 15_000;
/** workloadmanager.rs WorkloadProxyReadinessHandler: after a failed hello, 5 ms doubling, +-20% jitter, <= 15 s. */
const ANNOUNCE_BACKOFF_START_MS = 5;
const ANNOUNCE_JITTER = 0.2;

/**
 * One request as the handler sees it. The library has already applied protocol.rs's read checks
 * (see ZdsClient), so an Add always has exactly one fd: `netnsFd` is set and `fdCount` is 1. The
 * handler owns `netnsFd` from then on (ztunnel keeps it for the proxy's life): it must close it.
 */
export type ZdsRequest =
  | { kind: 'add'; uid: string; info: WorkloadInfo | undefined; netnsFd: number | undefined; fdCount: number }
  | { kind: 'keep'; uid: string }
  | { kind: 'del'; uid: string }
  | { kind: 'snapshot-sent' };

/**
 * What the handler decides (statemanager.rs process_msg's outcomes as workloadmanager.rs process() acts on them):
 * - `{ ack: '' }` success; `{ ack: reason }` a nack that keeps the connection (a proxy that failed to start);
 * - `{ reconnect: reason }` nack with reason, then drop the connection and connect again (other errors);
 * - `{ exit: reason }` nack with reason, then stop for good (Error::ProtocolError: ztunnel exits).
 */
export type ZdsVerdict = { ack: string } | { reconnect: string } | { exit: string };

export interface ZdsClientOptions {
  path: string;
  handle: (req: ZdsRequest) => Promise<ZdsVerdict>;
  log: Logger;
  /** After the hello was sent on a new connection. */
  onConnected?: () => void;
  /** A connection ended: undefined for EOF (or stop()), else why. */
  onDisconnected?: (err: ZdsError | undefined) => void;
  /** After an `exit` verdict was nacked and the client stopped: the caller exits (ztunnel: process exit). */
  onExit?: (reason: string) => void;
}

type SessionEnd =
  | { kind: 'eof' }
  | { kind: 'stopped' }
  | { kind: 'error'; err: ZdsError }
  | { kind: 'exit'; err: ZdsError; reason: string };

const STOPPED = Symbol('stopped');

/** The ZDS client (ztunnel's side). See src/zds/README.md. */
export class ZdsClient {
  readonly #opts: ZdsClientOptions;
  readonly #log: Logger;
  #connected = false;
  #stopped = false;
  #sock: SeqpacketSocket | undefined;
  #announceBackoffMs = ANNOUNCE_BACKOFF_START_MS;
  readonly #stopSignal: Promise<typeof STOPPED>;
  #signalStop: () => void = () => undefined;
  #loop: Promise<void> = Promise.resolve();

  private constructor(opts: ZdsClientOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    this.#stopSignal = new Promise((resolve) => {
      this.#signalStop = () => resolve(STOPPED);
    });
  }

  /** Start connecting (in the background) and serving. */
  static start(opts: ZdsClientOptions): ZdsClient {
    const client = new ZdsClient(opts);
    client.#loop = client.#run();
    return client;
  }

  /** A connection is up and the hello was sent. */
  get connected(): boolean {
    return this.#connected;
  }

  /** Close the connection and stop reconnecting. A handler still running is not waited for (its answer is dropped). */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#signalStop();
    this.#sock?.close();
    await this.#loop;
  }

  async #run(): Promise<void> {
    while (!this.#stopped) {
      const sock = await this.#connect();
      if (!sock) break;
      this.#sock = sock;
      const pid = sock.peerPid();
      const label = pid === undefined ? this.#opts.path : `pid ${pid} on ${this.#opts.path}`;
      try {
        await sock.send(encodeHello());
      } catch (err) {
        // workloadmanager.rs: an announce error backs off (it may be a version mismatch) before reconnecting.
        sock.close();
        const wait = this.#nextAnnounceBackoff();
        this.#log.error(`node agent announcement failed (${describeError(err)}), retrying in ${wait} ms`);
        if (await this.#sleep(wait)) break;
        continue;
      }
      this.#connected = true;
      this.#log.info({ peer: label }, 'connected to the node agent; hello sent');
      this.#opts.onConnected?.();
      const end = await this.#serve(sock, label);
      this.#connected = false;
      sock.close();
      this.#sock = undefined;
      switch (end.kind) {
        case 'stopped':
          this.#opts.onDisconnected?.(undefined);
          return;
        case 'eof':
          this.#log.info({ peer: label }, 'the node agent closed the connection; reconnecting');
          this.#opts.onDisconnected?.(undefined);
          break;
        case 'error':
          this.#log.warn({ err: end.err }, `connection to the node agent ended: ${end.err.message}; reconnecting`);
          this.#opts.onDisconnected?.(end.err);
          break;
        case 'exit':
          this.#log.error({ err: end.err }, `protocol error from the node agent, stopping: ${end.err.message}`);
          this.#stopped = true;
          this.#opts.onDisconnected?.(end.err);
          this.#opts.onExit?.(end.reason);
          return;
      }
    }
  }

  /** workloadmanager.rs connect(): retry forever, the first attempt at once, then 20, 40, ... ms up to 15 s. */
  async #connect(): Promise<SeqpacketSocket | undefined> {
    let backoff = CONNECT_BACKOFF_START_MS;
    while (!this.#stopped) {
      try {
        return SeqpacketSocket.connect(this.#opts.path);
      } catch (err) {
        backoff = Math.min(BACKOFF_MAX_MS, backoff * 2);
        this.#log.warn(
          `failed to connect to the node agent over ${this.#opts.path} (${describeError(err)}); ` +
            `retrying in ${backoff} ms`,
        );
        if (await this.#sleep(backoff)) break;
      }
    }
    return undefined;
  }

  #nextAnnounceBackoff(): number {
    const base = this.#announceBackoffMs;
    this.#announceBackoffMs = Math.min(BACKOFF_MAX_MS, base * 2);
    return Math.round(base * (1 - ANNOUNCE_JITTER + 2 * ANNOUNCE_JITTER * Math.random()));
  }

  /** Sleep, or return true at once if stop() is called meanwhile. */
  async #sleep(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const slept = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    });
    const r = await Promise.race([slept, this.#stopSignal]);
    clearTimeout(timer);
    return r === STOPPED;
  }

  /** workloadmanager.rs process(): read, decide, answer, until EOF, an error or an exit verdict. */
  async #serve(sock: SeqpacketSocket, label: string): Promise<SessionEnd> {
    for (;;) {
      let d: Datagram | null;
      try {
        d = await sock.recv();
      } catch (err) {
        if (this.#stopped) return { kind: 'stopped' };
        return {
          kind: 'error',
          err: new ZdsClosedError(label, 'datagram', `receive failed: ${describeError(err)}`, { cause: err }),
        };
      }
      if (this.#stopped) {
        for (const fd of d?.fds ?? []) closeFd(fd);
        return { kind: 'stopped' };
      }
      // protocol.rs read_message: 0 bytes is EOF (process stream ended with eof; ztunnel reconnects).
      if (d === null) return { kind: 'eof' };
      const parsed = parseRequest(d, label);
      if (parsed instanceof ZdsProtocolError) {
        // workloadmanager.rs process(): a read error is nacked ("failure to read message : ...") and the
        // connection dropped; ztunnel then reconnects.
        this.#log.error({ err: parsed }, `failed to read message: ${parsed.message}`);
        await this.#answer(sock, label, 'datagram', `failure to read message : ${parsed.reason}`).catch(
          () => undefined,
        );
        return { kind: 'error', err: parsed };
      }
      const req = parsed;
      const uid = 'uid' in req ? req.uid : undefined;
      let verdict: ZdsVerdict | typeof STOPPED;
      try {
        verdict = await Promise.race([this.#opts.handle(req), this.#stopSignal]);
      } catch (err) {
        verdict = { reconnect: `failure to process message : ${describeError(err)}` };
        this.#log.error(
          { uid, kind: req.kind, err: describeError(err) },
          'the ZDS handler threw; treating it as an error that reconnects',
        );
      }
      if (verdict === STOPPED) return { kind: 'stopped' };
      try {
        if ('ack' in verdict) {
          await this.#answer(sock, label, req.kind, verdict.ack);
          if (req.kind === 'snapshot-sent' && verdict.ack === '') this.#announceBackoffMs = ANNOUNCE_BACKOFF_START_MS;
          continue;
        }
        const reason = 'reconnect' in verdict ? verdict.reconnect : verdict.exit;
        await this.#answer(sock, label, req.kind, reason).catch(() => undefined);
        const err = new ZdsProtocolError(label, req.kind, reason, { uid });
        return 'reconnect' in verdict ? { kind: 'error', err } : { kind: 'exit', err, reason };
      } catch (err) {
        return {
          kind: 'error',
          err: new ZdsClosedError(label, 'ack', `cannot send the ack: ${describeError(err)}`, { uid, cause: err }),
        };
      }
    }
  }

  /** Send Ack{error}; a reason too long for one datagram is cut (ztunnel's nacks are short; ours must fit). */
  async #answer(sock: SeqpacketSocket, label: string, kind: string, error: string): Promise<void> {
    let text = error;
    let bytes = encodeAck(text);
    while (bytes.length > ZDS_MAX_MESSAGE) {
      text = text.slice(0, text.length - (bytes.length - ZDS_MAX_MESSAGE) - 3) + '...';
      bytes = encodeAck(text);
    }
    if (text !== error) this.#log.warn({ peer: label, kind }, 'nack reason cut to fit one ZDS datagram');
    await sock.send(bytes);
  }
}

/**
 * protocol.rs read_message + get_workload_data, in its order: more than one fd, MSG_TRUNC, MSG_CTRUNC,
 * undecodable bytes, no payload, an Add without its fd, a fd on anything but an Add. Any of these is a
 * ZdsProtocolError whose reason is ztunnel's text; the fds are closed (as ztunnel drops them).
 */
function parseRequest(d: Datagram, label: string): ZdsRequest | ZdsProtocolError {
  const fail = (kind: string, reason: string, cause?: unknown): ZdsProtocolError => {
    for (const fd of d.fds) closeFd(fd);
    return new ZdsProtocolError(label, kind, reason, { cause });
  };
  if (d.fds.length > 1) return fail('datagram', `Expected 1 FD, got ${d.fds.length}`);
  if (d.truncated)
    return fail('datagram', `received truncated message (${d.size} bytes; the limit is ${ZDS_MAX_MESSAGE})`);
  if (d.controlTruncated) return fail('datagram', 'received truncated message (control data: more fds than expected)');
  let decoded;
  try {
    decoded = decodeRequest(d.data);
  } catch (err) {
    return fail('datagram', `not a WorkloadRequest: ${describeError(err)}`, err);
  }
  const kind = requestKind(decoded) ?? 'datagram';
  const p = decoded.payload;
  if (p.case === undefined) return fail(kind, 'no payload');
  if (p.case === 'add' && d.fds.length === 0) return fail(kind, 'No control message (an Add must carry the netns fd)');
  if (p.case !== 'add' && d.fds.length > 0) return fail(kind, 'Unexpected control message (only an Add carries a fd)');
  switch (p.case) {
    case 'add': {
      const wi = p.value.workloadInfo;
      const info =
        wi === undefined ? undefined : { name: wi.name, namespace: wi.namespace, serviceAccount: wi.serviceAccount };
      return { kind: 'add', uid: p.value.uid, info, netnsFd: d.fds[0], fdCount: d.fds.length };
    }
    case 'keep':
      return { kind: 'keep', uid: p.value.uid };
    case 'del':
      return { kind: 'del', uid: p.value.uid };
    case 'snapshotSent':
      return { kind: 'snapshot-sent' };
  }
}

// The node agent's side of ZDS: listen, and for each ztunnel that connects run one session that reads
// its hello, sends a snapshot, then serves add/del. Behaviours follow istio-cni
// (istio/istio cni/pkg/nodeagent/ztunnelserver.go and ztunnelserver_linux.go), noted where they apply.
import { EventEmitter } from 'node:events';
import { lstatSync, openSync, statSync, unlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { describeError } from '../errors.ts';
import { closeFd } from '../libbpf/handle.ts';
import type { Logger } from '../log.ts';
import { ZdsClosedError, ZdsError, ZdsNackError, ZdsNoPeerError, ZdsProtocolError, ZdsTimeoutError } from './errors.ts';
import {
  addRequest,
  decodeAck,
  decodeHello,
  delRequest,
  encodeRequest,
  keepRequest,
  snapshotSentRequest,
  Version,
  versionName,
  type RequestKind,
  type WorkloadInfo,
} from './messages.ts';
import { SeqpacketSocket, ZDS_MAX_MESSAGE } from './transport.ts';

/** ztunnel's INPOD_UDS default and istio-cni's --ztunnel-uds-address default. */
export const ZDS_DEFAULT_SOCKET = '/var/run/ztunnel/ztunnel.sock';
/** istio-cni's readWriteDeadline (ztunnelserver.go): each send and each ack. */
export const ZDS_ACK_TIMEOUT_MS = 5000;
/** After a failed accept (EMFILE, ENFILE, ENOMEM): wait before the next, so the loop cannot spin. */
const ACCEPT_ERROR_PAUSE_MS = 100;

export type SnapshotItem =
  /** The server opens netnsPath, sends the fd with the Add, closes its copy; a path it cannot open becomes a Keep. */
  { kind: 'add'; uid: string; info: WorkloadInfo; netnsPath: string } | { kind: 'keep'; uid: string };

export interface ZdsPeer {
  /** Per-server connection number, from 1. */
  readonly id: number;
  /** The ztunnel process (SO_PEERCRED); undefined if the kernel would not say. */
  readonly pid: number | undefined;
  readonly connectedAt: Date;
  /** Its snapshot (SnapshotSent included) was acked. */
  readonly snapshotDone: boolean;
}

export interface ZdsServerOptions {
  path: string;
  /** Called once per new connection, after the peer's hello: what to put in the snapshot. */
  snapshot: () => readonly SnapshotItem[] | Promise<readonly SnapshotItem[]>;
  log: Logger;
  /** Deadline of each exchange (send + ack) and of the hello. Default ZDS_ACK_TIMEOUT_MS. */
  ackTimeoutMs?: number;
}

export interface ZdsServerEvents {
  /** The peer's snapshot was acked: it now serves (ready). */
  peer: [ZdsPeer];
  /** The connection ended: undefined for a clean EOF or a local close, else why it was dropped. Once per peer. */
  'peer-gone': [ZdsPeer, ZdsError | undefined];
  /** The snapshot did not complete (timeout, EOF, protocol error, the snapshot callback threw); before 'peer-gone'. */
  'snapshot-failed': [ZdsPeer, ZdsError];
}

type Phase = 'hello' | 'snapshot' | 'serving';

interface Pending {
  kind: string;
  uid: string | undefined;
  resolve: (data: Uint8Array) => void;
  reject: (err: ZdsError) => void;
}

interface SessionHost {
  readonly log: Logger;
  readonly ackTimeoutMs: number;
  snapshot(): Promise<readonly SnapshotItem[]>;
  snapshotDone(session: Session): void;
  gone(session: Session, err: ZdsError | undefined, snapshotErr: ZdsError | undefined): void;
}

/**
 * One ztunnel connection. One writer: every request goes through `enqueue`, which runs them one at a
 * time, each waiting for its ack before the next is written — acks correlate only by order
 * (ztunnelserver.go: "messages to ztunnel are sent from a single goroutine").
 */
class Session implements ZdsPeer {
  readonly id: number;
  readonly pid: number | undefined;
  readonly connectedAt = new Date();
  /** "pid 123 on /path (conn 4)": the peer in every error and log line. */
  readonly label: string;
  readonly #sock: SeqpacketSocket;
  readonly #host: SessionHost;
  readonly #log: Logger;
  #phase: Phase = 'hello';
  #snapshotDone = false;
  #gone = false;
  #tail: Promise<unknown> = Promise.resolve();
  #pending: Pending | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(id: number, sock: SeqpacketSocket, host: SessionHost) {
    this.id = id;
    this.#sock = sock;
    this.#host = host;
    const pid = sock.peerPid();
    this.pid = pid;
    this.label = `${pid === undefined ? 'unknown pid' : `pid ${pid}`} on ${sock.path} (conn ${id})`;
    this.#log = host.log.child({ conn: id, peerPid: pid });
  }

  get snapshotDone(): boolean {
    return this.#snapshotDone;
  }

  get gone(): boolean {
    return this.#gone;
  }

  /** Wait for the hello (ztunnel speaks first), then send the snapshot; later requests queue behind it. */
  start(): void {
    const hello = this.#expect('hello', undefined);
    hello.catch(() => undefined); // awaited by #intro; this only keeps an early drop from looking unhandled
    void this.#readLoop();
    this.enqueue(() => this.#intro(hello)).catch((err: unknown) => {
      if (!this.#gone) this.drop(asZdsError(err, this.label, 'snapshot'));
    });
  }

  /** Run `fn` after every request queued before it (lock-step, one writer). */
  enqueue<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn, fn);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  /** Send one request and wait for its ack: ZdsNackError on Ack{error}; any other failure drops the peer. */
  async exchange(kind: RequestKind, uid: string | undefined, bytes: Uint8Array, fd?: number): Promise<void> {
    if (this.#gone) throw new ZdsClosedError(this.label, kind, 'the connection is closed', { uid });
    const answer = this.#expect(kind, uid);
    this.#sock.send(bytes, fd === undefined ? [] : [fd]).catch((err: unknown) => {
      this.drop(new ZdsClosedError(this.label, kind, `cannot send: ${describeError(err)}`, { uid, cause: err }));
    });
    const data = await answer;
    let error: string | undefined;
    try {
      error = decodeAck(data);
    } catch (err) {
      throw this.drop(
        new ZdsProtocolError(this.label, kind, `the answer is not a WorkloadResponse: ${describeError(err)}`, {
          uid,
          cause: err,
        }),
      );
    }
    // istio-cni takes a response without an Ack as success (GetAck().GetError() == ""); with acks
    // correlated only by order, an unknown answer cannot be trusted as one: protocol error.
    if (error === undefined)
      throw this.drop(new ZdsProtocolError(this.label, kind, 'the answer carries no Ack', { uid }));
    if (error !== '') {
      const nack = new ZdsNackError(this.label, kind, error, { uid });
      this.#log.error({ kind, uid, reason: error }, `ztunnel nacked the ${kind}: ${error}`);
      throw nack;
    }
  }

  /**
   * Close the connection (idempotent): the pending request rejects with `err` (or ZdsClosedError),
   * queued ones with ZdsClosedError when their turn comes. `local`: closed by us, not a failure.
   * Returns `err` so callers can `throw this.drop(err)`.
   */
  drop<E extends ZdsError | undefined>(err: E, local = false): E {
    if (this.#gone) return err;
    this.#gone = true;
    clearTimeout(this.#timer);
    const pending = this.#pending;
    this.#pending = undefined;
    pending?.reject(
      err ??
        new ZdsClosedError(
          this.label,
          pending.kind,
          local ? 'the server is closing' : 'the connection closed before the answer',
          { uid: pending.uid },
        ),
    );
    this.#sock.close();
    let snapshotErr: ZdsError | undefined;
    if (this.#phase === 'snapshot' && !local) {
      snapshotErr = err ?? new ZdsClosedError(this.label, 'snapshot', 'the peer went away during the snapshot');
    }
    if (err) this.#log.error({ err }, `ztunnel connection dropped: ${err.message}`);
    else this.#log.info(local ? 'ztunnel connection closed by the server' : 'ztunnel disconnected');
    this.#host.gone(this, err, snapshotErr);
    return err;
  }

  /** Arm the deadline and the slot the reader fills with the next datagram. */
  #expect(kind: string, uid: string | undefined): Promise<Uint8Array> {
    return new Promise<Uint8Array>((resolve, reject) => {
      if (this.#gone) {
        reject(new ZdsClosedError(this.label, kind, 'the connection is closed', { uid }));
        return;
      }
      this.#pending = { kind, uid, resolve, reject };
      const ms = this.#host.ackTimeoutMs;
      const what = kind === 'hello' ? 'no hello' : 'no ack';
      // Unlike istio-cni's update loop (which logs a timeout and keeps the connection), the peer is
      // dropped: a late ack would otherwise be taken as the answer to the next request.
      this.#timer = setTimeout(
        () => this.drop(new ZdsTimeoutError(this.label, kind, `${what} within ${ms} ms`, { uid })),
        ms,
      );
    });
  }

  async #readLoop(): Promise<void> {
    for (;;) {
      let d;
      try {
        d = await this.#sock.recv();
      } catch (err) {
        if (!this.#gone)
          this.drop(
            new ZdsClosedError(this.label, this.#pending?.kind ?? 'datagram', `receive failed: ${describeError(err)}`, {
              cause: err,
            }),
          );
        return;
      }
      if (this.#gone) {
        for (const fd of d?.fds ?? []) closeFd(fd);
        return;
      }
      const pending = this.#pending;
      if (d === null) {
        this.drop(
          pending
            ? new ZdsClosedError(this.label, pending.kind, 'the peer closed the connection before answering', {
                uid: pending.uid,
              })
            : undefined,
        );
        return;
      }
      // ztunnel only answers. istio-cni probes for this every 5 s (CheckAlive: "ztunnel protocol
      // error, unexpected message"); reading all the time finds it at once, and EOF too.
      if (!pending) {
        for (const fd of d.fds) closeFd(fd);
        const reason = `unexpected ${d.size}-byte message while no request was outstanding`;
        this.drop(new ZdsProtocolError(this.label, 'datagram', reason));
        return;
      }
      // Errors name the request being answered, or the hello.
      const { kind, uid } = pending;
      const answer = kind === 'hello' ? 'hello' : 'answer';
      // istio-cni reads without room for control data: any fd from ztunnel is MSG_CTRUNC, an error.
      if (d.fds.length > 0) {
        for (const fd of d.fds) closeFd(fd);
        this.drop(
          new ZdsProtocolError(
            this.label,
            kind,
            `unexpected ${d.fds.length} fd(s) with the ${answer} (ztunnel sends none)`,
            { uid },
          ),
        );
        return;
      }
      if (d.truncated) {
        this.drop(
          new ZdsProtocolError(
            this.label,
            kind,
            `truncated message: the ${answer} is ${d.size} bytes, the limit ${ZDS_MAX_MESSAGE}`,
            { uid },
          ),
        );
        return;
      }
      clearTimeout(this.#timer);
      this.#pending = undefined;
      pending.resolve(d.data);
    }
  }

  async #intro(helloAnswer: Promise<Uint8Array>): Promise<void> {
    const data = await helloAnswer;
    let version: number;
    try {
      version = decodeHello(data).version;
    } catch (err) {
      throw this.drop(
        new ZdsProtocolError(this.label, 'hello', `not a ZdsHello: ${describeError(err)}`, { cause: err }),
      );
    }
    // istio-cni logs the version and carries on whatever it is (ztunnelserver.go handleConn).
    if (version === Version.V1) this.#log.info({ version: versionName(version) }, 'ztunnel said hello');
    else
      this.#log.warn(
        { version: versionName(version) },
        `ztunnel said hello with version ${versionName(version)}; carrying on as V1`,
      );
    this.#phase = 'snapshot';
    let items: readonly SnapshotItem[];
    try {
      items = await this.#host.snapshot();
    } catch (err) {
      throw this.drop(
        new ZdsError(this.label, 'snapshot', `the snapshot callback failed: ${describeError(err)}`, { cause: err }),
      );
    }
    if (this.#gone) throw new ZdsClosedError(this.label, 'snapshot', 'the connection closed during the snapshot');
    this.#log.info({ items: items.length }, 'sending the snapshot');
    for (const item of items) await this.#nackTolerant(() => this.#sendItem(item));
    await this.#nackTolerant(() => this.exchange('snapshot-sent', undefined, encodeRequest(snapshotSentRequest())));
    this.#phase = 'serving';
    this.#snapshotDone = true;
    this.#log.info({ items: items.length }, 'snapshot acked');
    this.#host.snapshotDone(this);
  }

  /** A nack inside the snapshot is logged (by exchange) and the snapshot goes on, as istio-cni's sendSnapshot does. */
  async #nackTolerant(fn: () => Promise<void>): Promise<void> {
    try {
      await fn();
    } catch (err) {
      if (!(err instanceof ZdsNackError)) throw err;
    }
  }

  async #sendItem(item: SnapshotItem): Promise<void> {
    const keep = (): Promise<void> => this.exchange('keep', item.uid, encodeRequest(keepRequest(item.uid)));
    if (item.kind === 'keep') return keep();
    const bytes = encodeRequest(addRequest(item.uid, item.info));
    if (bytes.length > ZDS_MAX_MESSAGE) {
      this.#log.error(
        { uid: item.uid, bytes: bytes.length },
        `snapshot Add is ${bytes.length} bytes (limit ${ZDS_MAX_MESSAGE}); sending Keep instead`,
      );
      return keep();
    }
    let fd: number;
    try {
      fd = openSync(item.netnsPath, 'r');
    } catch (err) {
      // istio-cni sends Keep for a pod whose netns it does not hold (ztunnelserver.go sendSnapshot).
      this.#log.warn(
        { uid: item.uid, netnsPath: item.netnsPath, err: describeError(err) },
        'cannot open the netns; sending Keep instead',
      );
      return keep();
    }
    try {
      await this.exchange('add', item.uid, bytes, fd);
    } finally {
      closeFd(fd);
    }
  }
}

function asZdsError(err: unknown, peer: string, kind: string): ZdsError {
  return err instanceof ZdsError ? err : new ZdsError(peer, kind, describeError(err), { cause: err });
}

/** The ZDS server (the node agent's side). See src/zds/README.md for the protocol and the behaviours. */
export class ZdsServer extends EventEmitter<ZdsServerEvents> {
  readonly path: string;
  readonly #listener: SeqpacketSocket;
  readonly #inode: number;
  readonly #opts: ZdsServerOptions;
  readonly #log: Logger;
  readonly #ackTimeoutMs: number;
  #sessions: Session[] = [];
  #nextId = 1;
  #closing: Promise<void> | undefined;
  readonly #acceptLoop: Promise<void>;

  private constructor(opts: ZdsServerOptions, listener: SeqpacketSocket) {
    super();
    this.path = opts.path;
    this.#opts = opts;
    this.#listener = listener;
    this.#inode = statSync(opts.path).ino;
    this.#log = opts.log;
    this.#ackTimeoutMs = opts.ackTimeoutMs ?? ZDS_ACK_TIMEOUT_MS;
    this.#acceptLoop = this.#accept();
  }

  /** Listen on opts.path: mkdir -p, and a stale socket file is removed (ztunnelserver_linux.go newZtunnelServer). */
  static async listen(opts: ZdsServerOptions): Promise<ZdsServer> {
    const server = new ZdsServer(opts, SeqpacketSocket.listen(opts.path));
    opts.log.info({ path: opts.path }, 'ZDS server listening');
    return server;
  }

  /**
   * Add to the newest connection (istio-cni's LatestConn): queued behind that connection's hello and
   * snapshot when they are still running, so a ztunnel that just connected during a rollout does not
   * miss a pod created while its snapshot was being sent. Resolves on ack.
   */
  async add(uid: string, info: WorkloadInfo, netnsPath: string): Promise<void> {
    const session = this.#sessions.at(-1);
    if (!session) {
      const err = new ZdsNoPeerError(this.path, 'add', 'no ztunnel is connected', { uid });
      this.#log.warn({ uid }, err.message);
      throw err;
    }
    const bytes = encodeRequest(addRequest(uid, info));
    if (bytes.length > ZDS_MAX_MESSAGE) {
      const err = new ZdsProtocolError(
        session.label,
        'add',
        `the message would be ${bytes.length} bytes; the limit is ${ZDS_MAX_MESSAGE}`,
        { uid },
      );
      this.#log.error({ uid }, err.message);
      throw err;
    }
    let fd: number;
    try {
      fd = openSync(netnsPath, 'r');
    } catch (err) {
      throw new ZdsError(session.label, 'add', `cannot open the netns ${netnsPath}: ${describeError(err)}`, {
        uid,
        cause: err,
      });
    }
    try {
      await session.enqueue(() => session.exchange('add', uid, bytes, fd));
    } finally {
      closeFd(fd);
    }
  }

  /** Del to every connection, old and new (istio-cni PodDeleted); resolves when each acked or failed. */
  async del(uid: string): Promise<{ peer: ZdsPeer; error?: ZdsError }[]> {
    const bytes = encodeRequest(delRequest(uid));
    return Promise.all(
      this.#sessions.map(async (session) => {
        try {
          await session.enqueue(() => session.exchange('del', uid, bytes));
          return { peer: session };
        } catch (err) {
          const error = asZdsError(err, session.label, 'del');
          this.#log.warn({ uid, conn: session.id }, `del not acked: ${error.message}`);
          return { peer: session, error };
        }
      }),
    );
  }

  /** Connected peers, oldest first (including ones still in hello or snapshot). */
  peers(): readonly ZdsPeer[] {
    return [...this.#sessions];
  }

  /** At least one peer has acked its snapshot. */
  get ready(): boolean {
    return this.#sessions.some((s) => s.snapshotDone);
  }

  /** Why ztunnel cannot connect to this server now (/healthz), or undefined when it can. */
  problem(): string | undefined {
    if (this.#closing || this.#listener.closed) return `the ZDS server on ${this.path} is closed`;
    try {
      if (lstatSync(this.path).ino !== this.#inode)
        return `the ZDS socket ${this.path} was replaced by another file: ztunnel cannot reach this agent`;
    } catch {
      return `the ZDS socket ${this.path} is gone: ztunnel cannot reach this agent`;
    }
    return undefined;
  }

  /** Stop accepting, close every connection (pending requests reject with ZdsClosedError), unlink the socket file. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#listener.close();
    await this.#acceptLoop;
    for (const session of [...this.#sessions]) session.drop(undefined, true);
    // Unlink only our own file: a new server may already have replaced it at the same path.
    try {
      if (lstatSync(this.path).ino === this.#inode) unlinkSync(this.path);
    } catch {
      // already gone
    }
    this.#log.info({ path: this.path }, 'ZDS server closed');
  }

  async #accept(): Promise<void> {
    const host: SessionHost = {
      log: this.#log,
      ackTimeoutMs: this.#ackTimeoutMs,
      snapshot: async () => this.#opts.snapshot(),
      snapshotDone: (s) => this.emit('peer', s),
      gone: (s, err, snapshotErr) => {
        this.#sessions = this.#sessions.filter((x) => x !== s);
        if (snapshotErr) this.emit('snapshot-failed', s, snapshotErr);
        this.emit('peer-gone', s, err);
      },
    };
    while (!this.#closing) {
      let sock: SeqpacketSocket;
      try {
        sock = await this.#listener.accept();
      } catch (err) {
        if (this.#closing || this.#listener.closed) return;
        this.#log.error({ err: describeError(err) }, 'ZDS accept failed; retrying');
        await sleep(ACCEPT_ERROR_PAUSE_MS);
        continue;
      }
      if (this.#closing) {
        sock.close();
        return;
      }
      const session = new Session(this.#nextId++, sock, host);
      this.#sessions.push(session);
      this.#log.info({ conn: session.id, peerPid: session.pid, connected: this.#sessions.length }, 'ztunnel connected');
      session.start();
    }
  }
}

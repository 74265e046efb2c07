// One workload's L4 proxy, as ztunnel runs it (the per-pod half of the stand-in; standin.ts and
// inpod.ts are the processes around it):
//   15001 outbound: original dst ONLY via getsockopt(SO_ORIGINAL_DST), else the accepted socket's
//         local address (TPROXY/sk_assign); to a mesh pod -> HBONE (HTTP/2 CONNECT over mTLS, ALPN h2)
//         to <orig ip>:15008 with :authority = orig dst; to anything else -> plain TCP passthrough.
//   15008 inbound HBONE: terminate TLS + CONNECT, connect to :authority.
//   15006 inbound plaintext: connect to the original dst.
// Every socket it opens carries SO_MARK 0x539, set with libc setsockopt on a socket made by libc
// socket() BEFORE connect (then wrapped by net.Socket({fd})), so the very first SYN is marked. In the
// inpod topology those sockets are made inside the pod's netns (setns around socket() only, as
// ztunnel's InPodSocketFactory in src/inpod/config.rs), so outbound legs leave from the pod.
// Inbound legs (15006, 15008) connect to the app from the original client's IP when origSrc is on
// (src/proxy.rs freebind_connect, src/proxy/inbound*.rs in istio/ztunnel). One JSON line per connection.
import net from 'node:net';
import tls from 'node:tls';
import http2 from 'node:http2';
import { appendFileSync, readFileSync } from 'node:fs';
import { withNetnsFd } from '../../libbpf/netns.ts';
import {
  bindFd,
  familyOf,
  listenFd,
  originalDst,
  setFreebindTransparent,
  socketFd,
  tcpSocket,
  type SockAddr,
} from './sockopt.ts';
import { relay, type RelayResult } from './relay.ts';
import { pkiPaths, ZTUNNEL_SPIFFE_ID } from './pki.ts';
import { PORT_HBONE, PORT_INBOUND_PLAINTEXT, PORT_OUTBOUND, ZTUNNEL_MARK } from './config.ts';
import type { ZtunnelLogEntry } from '../types.ts';

/** ztunnel's CONNECTION_TIMEOUT for upstream connects (src/proxy.rs). */
const CONNECT_TIMEOUT_MS = 10_000;

export interface TlsMaterial {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
}

export function loadTls(pkiDir: string): TlsMaterial {
  const p = pkiPaths(pkiDir);
  return { ca: readFileSync(p.caCert), cert: readFileSync(p.cert), key: readFileSync(p.key) };
}

export interface ProxyOptions {
  readonly node: string;
  /** The workload served, for the log: "<ns>/<pod>" (inpod) or the ztunnel pod (node topology). */
  readonly where: string;
  readonly logPath: string;
  readonly tls: TlsMaterial;
  /** Pod IPs in the mesh: outbound to them goes HBONE to <ip>:15008 (ztunnel's workload lookup). */
  readonly mesh: ReadonlySet<string>;
  /** Node topology: same-node mesh pods, tunnelled to our own 127.0.0.1:15008 (see config.ts). */
  readonly localMesh: ReadonlySet<string>;
  /** The pod's netns (inpod, ztunnel's per-workload socket factory); undefined = the process's own. */
  readonly netnsFd: number | undefined;
  /** IP_TRANSPARENT on the listeners is required (node topology: TPROXY / sk_assign hand them foreign dsts). */
  readonly transparent: boolean;
  /** Spoof the client's address on inbound legs (ztunnel default; false = ENABLE_ORIG_SRC=false). */
  readonly origSrc: boolean;
  /** SO_REUSEPORT on the listeners (in-pod: two ztunnels share a pod's ports during an upgrade). */
  readonly reusePort: boolean;
  /** Where non-fatal troubles go (a spoof bind that failed, a listener error). */
  readonly warn: (msg: string) => void;
}

export type DrainMode = 'immediate' | 'graceful';

const unmap = (ip: string | undefined): string => (ip ?? '').replace(/^::ffff:/, '');
export const fmtAddr = (a: SockAddr): string => (a.ip.includes(':') ? `[${a.ip}]:${a.port}` : `${a.ip}:${a.port}`);

function errText(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e instanceof Error ? e.message : String(e));
}

function checkPeer(_host: string, cert: tls.PeerCertificate): Error | undefined {
  return (cert.subjectaltname ?? '').includes(`URI:${ZTUNNEL_SPIFFE_ID}`)
    ? undefined
    : new Error(`peer is not ${ZTUNNEL_SPIFFE_ID}`);
}

function parseAuthority(a: string): SockAddr | undefined {
  const m = /^\[?([0-9a-fA-F:.]+?)\]?:(\d+)$/.exec(a);
  if (!m || m[1] === undefined || m[2] === undefined || net.isIP(m[1]) === 0) return undefined;
  return { ip: m[1], port: Number(m[2]) };
}

/**
 * Whose address an inbound HBONE leg spoofs: the tunnel's peer, as ztunnel does (src/proxy/inbound.rs,
 * rbac_ctx.conn.src). One exception: the node topology's same-node shortcut tunnels to our own
 * 127.0.0.1:15008 where node-mode ztunnel stayed in-process with the client's address; there the
 * peer is loopback and the client comes from the Forwarded header our outbound half sent.
 */
function hboneClient(peer: string, headers: http2.IncomingHttpHeaders): string {
  if (!(peer.startsWith('127.') || peer === '::1')) return peer;
  const m = /for="\[?([0-9a-fA-F:.]+?)\]?(?::\d+)?"/.exec(String(headers['forwarded'] ?? ''));
  return m?.[1] && net.isIP(m[1]) !== 0 ? m[1] : peer;
}

/** The original destination the way ztunnel learns it (src/socket.rs orig_dst_addr_or_default). */
function learnOriginalDst(s: net.Socket): { dst: SockAddr; from: string } {
  // ztunnel's accept (tokio) asks for the peer's address, which runs the inpod getpeername program on
  // the accepted socket: that is where the client's original is handed over (bpf/ambpf_inpod.bpf.c).
  // libuv accepts without it, so ask as ztunnel would before SO_ORIGINAL_DST.
  void s.remoteAddress;
  const fd = socketFd(s);
  const local = unmap(s.localAddress);
  const viaSockopt = fd === undefined ? undefined : originalDst(fd);
  if (viaSockopt) return { dst: viaSockopt.addr, from: viaSockopt.option };
  return { dst: { ip: local, port: s.localPort ?? 0 }, from: 'local-address' };
}

type LogBase = Pick<ZtunnelLogEntry, 'direction' | 'source' | 'originalDst' | 'dstFrom'>;
type LogUpstream = LogBase & Pick<ZtunnelLogEntry, 'upstream' | 'upstreamProtocol'>;

/** "ip:port" of a connected socket's own end (the upstream's source: spoofed or not). */
const localOf = (s: net.Socket): string => fmtAddr({ ip: unmap(s.localAddress), port: s.localPort ?? 0 });
type Closable = { destroy(): void };

export class WorkloadProxy {
  readonly opts: ProxyOptions;
  readonly #servers: (net.Server | http2.Http2SecureServer)[] = [];
  /** Downstream sockets, upstream sockets and HBONE sessions still open: what a drain waits for. */
  readonly #open = new Set<Closable>();
  readonly #sessions = new Set<http2.ServerHttp2Session>();
  /** HBONE sessions whose CONNECT stream arrived: GOAWAY on drain is safe for them (see #drain). */
  readonly #streamed = new WeakSet<http2.ServerHttp2Session>();
  #draining: Promise<void> | undefined;
  /** Called when the last open connection closed (a graceful drain waits for it). */
  #whenIdle: (() => void) | undefined;

  private constructor(opts: ProxyOptions) {
    this.opts = opts;
  }

  /**
   * Opens [::]:15001, 15006 and 15008. With a netns fd the sockets are created inside that netns;
   * a bind failure (EADDRINUSE …) closes what was opened and throws: the caller nacks and retries.
   */
  static async start(opts: ProxyOptions): Promise<WorkloadProxy> {
    const p = new WorkloadProxy(opts);
    try {
      await p.#listenAll();
    } catch (e) {
      await p.drain('immediate');
      throw e;
    }
    return p;
  }

  get openConnections(): number {
    return this.#open.size;
  }

  #track<T extends Closable & NodeJS.EventEmitter>(x: T): T {
    this.#open.add(x);
    x.once('close', () => {
      this.#open.delete(x);
      if (this.#open.size === 0) this.#whenIdle?.();
    });
    return x;
  }

  /** A socket made in the workload's netns (or ours), marked before anything else happens to it. */
  #socket(family: 4 | 6): number {
    const make = (): number => tcpSocket(family, ZTUNNEL_MARK);
    return this.opts.netnsFd === undefined
      ? make()
      : withNetnsFd(this.opts.netnsFd, make, `netns of ${this.opts.where}`);
  }

  /**
   * ztunnel's freebind_connect: from the client's IP (IP_TRANSPARENT + IP_FREEBIND, bind ip:0) when
   * one is given and differs from the destination; a failed bind is a warning and the connect goes
   * ahead from our own address, as ztunnel does.
   */
  #connect(dst: SockAddr, spoofFrom: string | undefined): Promise<net.Socket> {
    const from = spoofFrom !== undefined && spoofFrom !== dst.ip ? spoofFrom : undefined;
    const family = familyOf(from ?? dst.ip);
    const fd = this.#socket(family);
    if (from !== undefined) {
      try {
        setFreebindTransparent(fd, family);
        bindFd(fd, family, from, 0);
      } catch (e) {
        this.opts.warn(`upstream to ${fmtAddr(dst)}: cannot bind the client's address ${from}: ${errText(e)}`);
      }
    }
    const s = this.#track(new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => s.destroy(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' })),
        CONNECT_TIMEOUT_MS,
      );
      s.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      s.connect(dst.port, dst.ip, () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(s);
      });
    });
  }

  #log(e: Omit<ZtunnelLogEntry, 'time' | 'node' | 'where'>): void {
    const line: ZtunnelLogEntry = {
      time: new Date().toISOString(),
      node: this.opts.node,
      where: this.opts.where,
      ...e,
    };
    appendFileSync(this.opts.logPath, JSON.stringify(line) + '\n');
  }

  /** A relayed connection's line: bytes each way, "ok" or the error that ended it. */
  #relayed(base: LogUpstream, upstreamLocal: string, r: RelayResult): void {
    const result = r.error ? `error: ${r.error}` : 'ok';
    this.#log({ ...base, upstreamLocal, bytesIn: r.bytesIn, bytesOut: r.bytesOut, result });
  }

  /** A connection that never reached its upstream. */
  #failed(base: LogUpstream, result: string): void {
    this.#log({ ...base, bytesIn: 0, bytesOut: 0, result });
  }

  /** HTTP/2 CONNECT over mTLS to <dst ip>:15008; resolves to the tunnel stream once the peer answered 200. */
  async #openHbone(
    dst: SockAddr,
    client: string,
  ): Promise<{ stream: http2.ClientHttp2Stream; session: http2.ClientHttp2Session; local: string }> {
    const raw = await this.#connect(
      { ip: this.opts.localMesh.has(dst.ip) ? '127.0.0.1' : dst.ip, port: PORT_HBONE },
      undefined,
    );
    const local = localOf(raw);
    const secure = tls.connect({
      socket: raw,
      ...this.opts.tls,
      ALPNProtocols: ['h2'],
      servername: 'ztunnel.istio-system',
      checkServerIdentity: checkPeer,
    });
    const session = this.#track(
      http2.connect(`https://${fmtAddr({ ip: dst.ip, port: PORT_HBONE })}`, { createConnection: () => secure }),
    );
    session.on('error', () => {
      /* reported through the stream */
    });
    // ztunnel's outbound sends `Forwarded: for="<client>"` (src/proxy/outbound.rs build_forwarded).
    const stream = session.request({ ':method': 'CONNECT', ':authority': fmtAddr(dst), forwarded: `for="${client}"` });
    await new Promise<void>((resolve, reject) => {
      stream.once('error', reject);
      stream.once('close', () => reject(new Error(`HBONE stream closed (rst code ${stream.rstCode ?? '?'})`)));
      stream.once('response', (h) => {
        const status = Number(h[':status']);
        if (status === 200) resolve();
        else reject(new Error(`HBONE CONNECT answered ${status}`));
      });
    });
    stream.removeAllListeners('close');
    return { stream, session, local };
  }

  /**
   * A client that connected straight to a ztunnel port (no redirect, so no SO_ORIGINAL_DST and the local
   * address is ztunnel's own): there is nowhere to forward to, and forwarding would loop into ourselves.
   */
  #noOriginalDst(s: net.Socket, base: LogBase): boolean {
    const port = s.localPort ?? 0;
    if (base.dstFrom !== 'local-address' || ![PORT_OUTBOUND, PORT_INBOUND_PLAINTEXT, PORT_HBONE].includes(port))
      return false;
    this.#failed({ ...base, upstream: '', upstreamProtocol: '' }, 'error: no original destination');
    s.destroy();
    return true;
  }

  async #onOutbound(s: net.Socket): Promise<void> {
    const source = fmtAddr({ ip: unmap(s.remoteAddress), port: s.remotePort ?? 0 });
    const { dst, from } = learnOriginalDst(s);
    s.pause();
    const base = { direction: 'outbound' as const, source, originalDst: fmtAddr(dst), dstFrom: from };
    if (this.#noOriginalDst(s, base)) return;
    const hbone = this.opts.mesh.has(dst.ip);
    const upstream = hbone
      ? fmtAddr({ ip: this.opts.localMesh.has(dst.ip) ? '127.0.0.1' : dst.ip, port: PORT_HBONE })
      : fmtAddr(dst);
    const upstreamProtocol = hbone ? ('hbone' as const) : ('tcp' as const);
    try {
      if (hbone) {
        const { stream, session, local } = await this.#openHbone(dst, source);
        const r = await relay(s, stream);
        session.close();
        this.#relayed({ ...base, upstream, upstreamProtocol }, local, r);
      } else {
        const up = await this.#connect(dst, undefined);
        const local = localOf(up); // read now: the socket is gone once the relay ends
        const r = await relay(s, up);
        this.#relayed({ ...base, upstream, upstreamProtocol }, local, r);
      }
    } catch (e) {
      this.#failed({ ...base, upstream, upstreamProtocol }, `error: ${errText(e)}`);
      s.destroy();
    }
  }

  async #onPlaintextInbound(s: net.Socket): Promise<void> {
    const client = unmap(s.remoteAddress);
    const source = fmtAddr({ ip: client, port: s.remotePort ?? 0 });
    const { dst, from } = learnOriginalDst(s);
    s.pause();
    const base = {
      direction: 'inbound-plaintext' as const,
      source,
      originalDst: fmtAddr(dst),
      dstFrom: from,
      upstream: fmtAddr(dst),
      upstreamProtocol: 'tcp' as const,
    };
    if (this.#noOriginalDst(s, base)) return;
    try {
      const up = await this.#connect(dst, this.opts.origSrc ? client : undefined);
      const local = localOf(up); // read now: the socket is gone once the relay ends
      const r = await relay(s, up);
      this.#relayed(base, local, r);
    } catch (e) {
      this.#failed(base, `error: ${errText(e)}`);
      s.destroy();
    }
  }

  async #onHboneStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): Promise<void> {
    const sock = stream.session?.socket;
    const client = hboneClient(unmap(sock?.remoteAddress), headers);
    const source = fmtAddr({ ip: unmap(sock?.remoteAddress), port: sock?.remotePort ?? 0 });
    const authority = String(headers[':authority'] ?? '');
    const base = {
      direction: 'inbound-hbone' as const,
      source,
      originalDst: authority,
      dstFrom: 'authority',
      upstream: authority,
      upstreamProtocol: 'tcp' as const,
    };
    const dst = parseAuthority(authority);
    if (headers[':method'] !== 'CONNECT' || !dst) {
      stream.respond({ ':status': headers[':method'] !== 'CONNECT' ? 405 : 400 }, { endStream: true });
      this.#failed(base, `error: bad request ${String(headers[':method'])} ${authority}`);
      return;
    }
    try {
      const up = await this.#connect(dst, this.opts.origSrc ? client : undefined);
      const local = localOf(up); // read now: the socket is gone once the relay ends
      stream.respond({ ':status': 200 });
      const r = await relay(stream, up);
      this.#relayed(base, local, r);
    } catch (e) {
      if (!stream.headersSent) stream.respond({ ':status': 503 }, { endStream: true });
      this.#failed(base, `error: ${errText(e)}`);
    }
  }

  async #listenAll(): Promise<void> {
    const tcp = (handler: (s: net.Socket) => Promise<void>): net.Server =>
      net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => {
        this.#track(s);
        void handler.call(this, s);
      });
    const outbound = tcp(this.#onOutbound);
    const plaintext = tcp(this.#onPlaintextInbound);
    const hbone = http2.createSecureServer({
      ...this.opts.tls,
      requestCert: true,
      rejectUnauthorized: true,
      ALPNProtocols: ['h2'],
      allowHTTP1: false,
    });
    hbone.on('stream', (stream, headers) => {
      const session = stream.session as http2.ServerHttp2Session | undefined;
      if (session) {
        this.#streamed.add(session);
        // Draining: this session's first stream was already on its way when the drain began; it is
        // served, then the session goes away (see #drain).
        if (this.#draining) session.close();
      }
      void this.#onHboneStream(stream, headers);
    });
    // A connection still in its TLS handshake is open too: a drain that ignored it would end it
    // with the process (ztunnel drains accepted connections, src/drain.rs).
    hbone.on('connection', (raw: net.Socket) => this.#track(raw));
    hbone.on('session', (session) => {
      this.#sessions.add(this.#track(session));
      session.once('close', () => this.#sessions.delete(session));
    });
    hbone.on('secureConnection', (s: tls.TLSSocket) => {
      const err = checkPeer('', s.getPeerCertificate());
      if (err) s.destroy(err);
    });
    hbone.on('sessionError', () => {
      /* the session's streams report their own errors */
    });
    for (const srv of [outbound, plaintext, hbone])
      srv.on('error', (e) => this.opts.warn(`listener of ${this.opts.where}: ${e.message}`));
    await this.#listen(outbound, PORT_OUTBOUND);
    await this.#listen(plaintext, PORT_INBOUND_PLAINTEXT);
    await this.#listen(hbone, PORT_HBONE);
  }

  async #listen(server: net.Server, port: number): Promise<void> {
    const { netnsFd, reusePort } = this.opts;
    // ztunnel's maybe_set_transparent (src/proxy.rs): required when asked for, else best effort when
    // spoofing is on; the listener is the same either way since we run with NET_ADMIN.
    const transparent = this.opts.transparent || this.opts.origSrc;
    const mark = netnsFd === undefined ? undefined : ZTUNNEL_MARK;
    const make = (): number => listenFd(6, '::', port, { transparent, reusePort, mark });
    const fd = netnsFd === undefined ? make() : withNetnsFd(netnsFd, make, `netns of ${this.opts.where}`);
    this.#servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  /**
   * Stops listening, then ends the open connections: at once ('immediate': ztunnel's Del and snapshot
   * reconcile, src/inpod/statemanager.rs) or when they finish, bounded by deadlineMs ('graceful':
   * SIGTERM, src/drain.rs run_with_drain with the 5 s connection termination deadline of src/config.rs).
   */
  drain(mode: DrainMode, deadlineMs = 5000): Promise<void> {
    this.#draining ??= this.#drain(mode, deadlineMs);
    return this.#draining;
  }

  async #drain(mode: DrainMode, deadlineMs: number): Promise<void> {
    // close() stops accepting at once; its callback waits for the connections, which are ours to end.
    for (const s of this.#servers) if (s.listening) s.close();
    if (mode === 'graceful' && this.#open.size > 0) {
      // HTTP/2 sessions: GOAWAY, then they close once their streams are done. A session whose CONNECT
      // has not arrived yet is left to receive it (one CONNECT per HBONE connection here): a GOAWAY
      // before it would refuse a connection the client already handed over.
      for (const x of this.#sessions) if (this.#streamed.has(x)) x.close();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, deadlineMs);
        this.#whenIdle = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    for (const x of [...this.#open]) x.destroy();
  }
}

// The stand-in's DNS proxy, as ztunnel opens it in each pod (src/dns/server.rs in istio/ztunnel): UDP
// and TCP on localhost:15053 — 127.0.0.1, and [::1] unless IPv6 is disabled on the pod's lo (its
// ipv6_enabled_localhost reads net.ipv6.conf.lo.disable_ipv6 inside the pod) — every socket made in
// the pod's netns, marked 0x539 and SO_REUSEPORT (src/inpod/config.rs). Names of the testbed zone
// (a map from the config: "<pod>.<ns>.svc.cluster.local" -> pod IP) are answered here; anything else is
// forwarded to the upstream resolver from a socket made in the pod's netns and marked 0x539, so no
// redirect captures it again. ztunnel's forwarder is a resolver (hickory, src/dns/forwarder.rs): it
// asks the upstream over UDP whatever the client used, and again over TCP when the answer is truncated.
import dgram from 'node:dgram';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import dnsPacket, { type Answer, type Packet } from 'dns-packet';
import { withNetnsFd } from '../../libbpf/netns.ts';
import { closeFd, familyOf, listenFd, tcpSocket, udpBoundFd, type Family, type SockAddr } from './sockopt.ts';
import { ZTUNNEL_MARK } from './config.ts';

export const PORT_DNS = 15053;
const UPSTREAM_TIMEOUT_MS = 5000;
const TTL = 30;
const RCODE_SERVFAIL = 2;

export interface DnsOptions {
  /** The pod's netns (inpod); undefined = the process's own. */
  readonly netnsFd: number | undefined;
  readonly where: string;
  /** Lower-case names without the trailing dot -> addresses (v4 answer A, v6 answer AAAA). */
  readonly records: ReadonlyMap<string, readonly string[]>;
  /** The resolver for everything else; undefined = SERVFAIL. */
  readonly upstream: SockAddr | undefined;
  readonly warn: (msg: string) => void;
}

export function normalizeName(name: string): string {
  return name.replace(/\.$/, '').toLowerCase();
}

/** Answers a query from the zone, or undefined when a name is not in it (then it is forwarded). */
export function answerFromZone(query: Packet, records: ReadonlyMap<string, readonly string[]>): Buffer | undefined {
  const questions = query.questions ?? [];
  if (questions.length === 0) return undefined;
  const answers: Answer[] = [];
  for (const q of questions) {
    const ips = records.get(normalizeName(q.name));
    if (ips === undefined) return undefined;
    // A name we know but a type we have no data for: NOERROR with no answer (NODATA), as ztunnel.
    const want = q.type === 'A' ? 4 : q.type === 'AAAA' ? 6 : 0;
    for (const ip of ips) {
      if (familyOf(ip) === want)
        answers.push({ type: q.type === 'A' ? 'A' : 'AAAA', name: q.name, ttl: TTL, class: 'IN', data: ip });
    }
  }
  const rd = (query.flags ?? 0) & dnsPacket.RECURSION_DESIRED;
  return dnsPacket.encode({
    id: query.id ?? 0,
    type: 'response',
    flags: dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.RECURSION_AVAILABLE | rd,
    questions,
    answers,
  });
}

function servfail(raw: Buffer): Buffer {
  const out = Buffer.from(raw.subarray(0, Math.max(raw.length, 12)));
  if (out.length < 12) return out;
  // Same id and question; QR set, rcode SERVFAIL, no answers.
  out.writeUInt16BE(((out.readUInt16BE(2) | 0x8000 | dnsPacket.RECURSION_AVAILABLE) & ~0xf) | RCODE_SERVFAIL, 2);
  out.writeUInt16BE(0, 6);
  out.writeUInt16BE(0, 8);
  out.writeUInt16BE(0, 10);
  return out;
}

/** The TC bit: a UDP answer cut to fit, to be asked again over TCP. */
function isTruncated(answer: Buffer): boolean {
  return answer.length >= 4 && (answer.readUInt16BE(2) & dnsPacket.TRUNCATED_RESPONSE) !== 0;
}

/** IPv6 on the pod's loopback, read inside its netns (/proc/sys/net follows the reading thread's netns). */
function ipv6OnLoopback(netnsFd: number | undefined): boolean {
  const read = (): string => {
    try {
      return readFileSync('/proc/sys/net/ipv6/conf/lo/disable_ipv6', 'utf8').trim();
    } catch {
      return '1';
    }
  };
  return (netnsFd === undefined ? read() : withNetnsFd(netnsFd, read)) !== '1';
}

export class DnsProxy {
  readonly #opts: DnsOptions;
  readonly #udp: dgram.Socket[] = [];
  readonly #tcp: net.Server[] = [];
  readonly #open = new Set<net.Socket | dgram.Socket>();
  /** The addresses it listens on, "127.0.0.1" and maybe "::1". */
  readonly addresses: string[] = [];

  private constructor(opts: DnsOptions) {
    this.#opts = opts;
  }

  static async start(opts: DnsOptions): Promise<DnsProxy> {
    const d = new DnsProxy(opts);
    try {
      const hosts = ipv6OnLoopback(opts.netnsFd) ? ['127.0.0.1', '::1'] : ['127.0.0.1'];
      for (const host of hosts) await d.#listen(host);
    } catch (e) {
      d.close();
      throw e;
    }
    return d;
  }

  #inNetns<T>(fn: () => T): T {
    return this.#opts.netnsFd === undefined
      ? fn()
      : withNetnsFd(this.#opts.netnsFd, fn, `netns of ${this.#opts.where}`);
  }

  async #listen(host: string): Promise<void> {
    const family = familyOf(host);
    const opts = { transparent: false, reusePort: true, mark: ZTUNNEL_MARK };
    const [udpFd, tcpFd] = this.#inNetns(() => {
      const u = udpBoundFd(family, host, PORT_DNS, opts);
      try {
        return [u, listenFd(family, host, PORT_DNS, opts)] as const;
      } catch (e) {
        // The TCP bind failed: the UDP socket is not handed to Node yet, so close it here.
        closeFd(u);
        throw e;
      }
    });
    const udp = dgram.createSocket(family === 4 ? 'udp4' : 'udp6');
    this.#udp.push(udp);
    udp.on('message', (msg, rinfo) => void this.#onUdp(udp, msg, rinfo));
    udp.on('error', (e) => this.#opts.warn(`dns udp ${host}: ${e.message}`));
    await new Promise<void>((resolve) => udp.bind({ fd: udpFd }, resolve));
    const tcp = net.createServer((s) => this.#onTcp(s));
    this.#tcp.push(tcp);
    tcp.on('error', (e) => this.#opts.warn(`dns tcp ${host}: ${e.message}`));
    await new Promise<void>((resolve) => tcp.listen({ fd: tcpFd }, resolve));
    this.addresses.push(host);
  }

  async #resolve(raw: Buffer): Promise<Buffer> {
    let query: Packet;
    try {
      query = dnsPacket.decode(raw);
    } catch {
      return servfail(raw);
    }
    const local = answerFromZone(query, this.#opts.records);
    if (local) return local;
    const up = this.#opts.upstream;
    if (!up) return servfail(raw);
    try {
      const answer = await this.#forwardUdp(raw, up);
      return isTruncated(answer) ? await this.#forwardTcp(raw, up) : answer;
    } catch (e) {
      this.#opts.warn(`dns forward to ${up.ip}:${up.port}: ${(e as Error).message}`);
      return servfail(raw);
    }
  }

  async #onUdp(sock: dgram.Socket, msg: Buffer, rinfo: dgram.RemoteInfo): Promise<void> {
    const answer = await this.#resolve(msg);
    sock.send(answer, rinfo.port, rinfo.address);
  }

  #onTcp(s: net.Socket): void {
    this.#open.add(s);
    s.on('close', () => this.#open.delete(s));
    s.on('error', () => s.destroy());
    let buf = Buffer.alloc(0);
    s.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        const len = buf.readUInt16BE(0);
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        void this.#resolve(msg).then((answer) => {
          const framed = Buffer.alloc(2 + answer.length);
          framed.writeUInt16BE(answer.length, 0);
          answer.copy(framed, 2);
          if (!s.destroyed) s.write(framed);
        });
      }
    });
  }

  /** A UDP exchange from a socket made in the pod's netns and marked 0x539. */
  #forwardUdp(raw: Buffer, up: SockAddr): Promise<Buffer> {
    const family: Family = familyOf(up.ip);
    const fd = this.#inNetns(() =>
      udpBoundFd(family, family === 4 ? '0.0.0.0' : '::', 0, { transparent: false, mark: ZTUNNEL_MARK }),
    );
    const sock = dgram.createSocket(family === 4 ? 'udp4' : 'udp6');
    this.#open.add(sock);
    return new Promise<Buffer>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#open.delete(sock);
        sock.close();
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error('no answer'));
      }, UPSTREAM_TIMEOUT_MS);
      sock.on('error', (e) => {
        done();
        reject(e);
      });
      sock.on('message', (msg) => {
        done();
        resolve(msg);
      });
      sock.bind({ fd }, () => sock.send(raw, up.port, up.ip));
    });
  }

  /** A TCP exchange (2-byte length framing) from a socket made in the pod's netns and marked 0x539. */
  #forwardTcp(raw: Buffer, up: SockAddr): Promise<Buffer> {
    const fd = this.#inNetns(() => tcpSocket(familyOf(up.ip), ZTUNNEL_MARK));
    const s = new net.Socket({ fd, readable: true, writable: true });
    this.#open.add(s);
    return new Promise<Buffer>((resolve, reject) => {
      let buf = Buffer.alloc(0);
      const timer = setTimeout(() => s.destroy(new Error('no answer')), UPSTREAM_TIMEOUT_MS);
      s.on('close', () => {
        clearTimeout(timer);
        this.#open.delete(s);
        reject(new Error('closed before an answer'));
      });
      s.on('error', reject);
      s.on('data', (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
        if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
          resolve(buf.subarray(2, 2 + buf.readUInt16BE(0)));
          s.destroy();
        }
      });
      s.connect(up.port, up.ip, () => {
        const framed = Buffer.alloc(2 + raw.length);
        framed.writeUInt16BE(raw.length, 0);
        raw.copy(framed, 2);
        s.write(framed);
      });
    });
  }

  /** Stops listening and ends what is in flight (a drained workload takes its DNS proxy with it). */
  close(): void {
    for (const u of this.#udp) {
      try {
        u.close();
      } catch {
        /* not bound yet or closed */
      }
    }
    for (const t of this.#tcp) t.close();
    for (const x of this.#open) {
      if (x instanceof net.Socket) x.destroy();
      else
        try {
          x.close();
        } catch {
          /* closed */
        }
    }
    this.#open.clear();
  }
}

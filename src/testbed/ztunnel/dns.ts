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
  /** The client pod's namespace (ztunnel knows its workload): short names and search domains. */
  readonly namespace?: string;
  /** The resolver for everything else; undefined = SERVFAIL. */
  readonly upstream: SockAddr | undefined;
  readonly warn: (msg: string) => void;
}

export function normalizeName(name: string): string {
  return name.replace(/\.$/, '').toLowerCase();
}

/** kube-dns's domain; ztunnel's CLUSTER_DOMAIN default. */
const CLUSTER_DOMAIN = 'cluster.local';

interface Alias {
  readonly name: string;
  /** The name with one of the client's search domains taken off, when this alias came from that. */
  readonly stripped?: string;
}

/**
 * The Kubernetes FQDNs a short name can stand for, from a client in `ns` (ztunnel's to_kube_fqdns):
 * svc -> svc.<ns>.svc.<domain>; a.b -> a.b.svc.<domain>, a.b.<ns>.svc.<domain>; a.b.c -> a.b.c.<domain>
 * when c is "svc", and a.b.c.svc.<domain>; a.b.c.svc -> a.b.c.svc.<domain>.
 */
export function kubeFqdns(name: string, ns: string): string[] {
  const labels = name.split('.');
  const svcDomain = `svc.${CLUSTER_DOMAIN}`;
  const endsSvc = labels.at(-1) === 'svc';
  switch (labels.length) {
    case 1:
      return [`${name}.${ns}.${svcDomain}`];
    case 2:
      return [`${name}.${svcDomain}`, `${name}.${ns}.${svcDomain}`];
    case 3:
      return [...(endsSvc ? [`${name}.${CLUSTER_DOMAIN}`] : []), `${name}.${svcDomain}`];
    case 4:
      return endsSvc ? [`${name}.${CLUSTER_DOMAIN}`] : [];
    default:
      return [];
  }
}

/**
 * The names a query may mean, in ztunnel's order (src/dns/server.rs get_aliases): the name itself, its
 * Kubernetes expansions, then with each search domain of the client taken off (PROXY_MODE=shared:
 * <ns>.svc.<domain>, svc.<domain>, <domain>) and that name's expansions. Without a namespace (a proxy
 * that does not know its client) only the name itself.
 */
export function aliasesOf(name: string, ns: string | undefined): Alias[] {
  const out = new Map<string, Alias>([[name, { name }]]);
  if (ns === undefined) return [...out.values()];
  const add = (a: Alias): void => {
    if (!out.has(a.name)) out.set(a.name, a);
  };
  for (const fqdn of kubeFqdns(name, ns)) add({ name: fqdn });
  for (const search of [`${ns}.svc.${CLUSTER_DOMAIN}`, `svc.${CLUSTER_DOMAIN}`, CLUSTER_DOMAIN]) {
    if (!name.endsWith(`.${search}`)) continue;
    const stripped = name.slice(0, -search.length - 1);
    add({ name: stripped, stripped });
    for (const fqdn of kubeFqdns(stripped, ns)) add({ name: fqdn, stripped });
  }
  return [...out.values()];
}

/**
 * Answers a query from the zone as ztunnel answers the hosts it knows, or undefined when it would
 * forward it: only the first question counts (hickory's request), only A and AAAA are answered here
 * (other types of a known name are forwarded too), and a name found after a search domain was taken
 * off is answered with a CNAME to that name, then its addresses.
 */
export function answerFromZone(
  query: Packet,
  records: ReadonlyMap<string, readonly string[]>,
  ns?: string,
): Buffer | undefined {
  const q = query.questions?.[0];
  if (q === undefined || (q.type !== 'A' && q.type !== 'AAAA')) return undefined;
  const requested = normalizeName(q.name);
  let match: { alias: Alias; ips: readonly string[] } | undefined;
  for (const alias of aliasesOf(requested, ns)) {
    const ips = records.get(alias.name);
    if (ips !== undefined) {
      match = { alias, ips };
      break;
    }
  }
  if (match === undefined) return undefined;
  const answers: Answer[] = [];
  let owner = q.name;
  // A name we know but a family it has no address of: NOERROR with no answer (NODATA), as ztunnel.
  const ips = match.ips.filter((ip) => familyOf(ip) === (q.type === 'A' ? 4 : 6));
  if (match.alias.stripped !== undefined && ips.length > 0) {
    answers.push({ type: 'CNAME', name: q.name, ttl: TTL, class: 'IN', data: match.alias.stripped });
    owner = match.alias.stripped;
  }
  for (const ip of ips) answers.push({ type: q.type, name: owner, ttl: TTL, class: 'IN', data: ip });
  const rd = (query.flags ?? 0) & dnsPacket.RECURSION_DESIRED;
  return dnsPacket.encode({
    id: query.id ?? 0,
    type: 'response',
    flags: dnsPacket.AUTHORITATIVE_ANSWER | dnsPacket.RECURSION_AVAILABLE | rd,
    questions: [q],
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
    const local = answerFromZone(query, this.#opts.records, this.#opts.namespace);
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

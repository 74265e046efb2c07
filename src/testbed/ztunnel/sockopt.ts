// The socket options ztunnel relies on, which Node's net module cannot reach: SO_ORIGINAL_DST
// (getsockopt), SO_MARK and IP_TRANSPARENT (setsockopt). libc is called through koffi on the fd of a
// Node socket (`socket._handle.fd`), or on a socket made here with libc socket() so an option can be
// set BEFORE bind/listen/connect, then handed to Node (`net.Socket({ fd })`, `server.listen({ fd })`).
import koffi from 'koffi';
import { SystemError } from '../../errors.ts';

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
const SO_MARK = 36;
const SOL_IP = 0;
const SOL_IPV6 = 41;
const IP_TRANSPARENT = 19;
const IPV6_TRANSPARENT = 75;
const IPV6_V6ONLY = 26;
/** SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST share the number 80 (netfilter_ipv4.h, ip6_tables.h). */
const SO_ORIGINAL_DST = 80;

const libc = koffi.load('libc.so.6');
const c = {
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  close: libc.func('int close(int fd)'),
  setsockopt: libc.func('int setsockopt(int fd, int level, int name, void *val, uint32_t len)'),
  getsockopt: libc.func('int getsockopt(int fd, int level, int name, _Out_ uint8_t *val, _Inout_ uint32_t *len)'),
  bind: libc.func('int bind(int fd, void *addr, uint32_t len)'),
  listen: libc.func('int listen(int fd, int backlog)'),
};

export type Family = 4 | 6;

export interface SockAddr {
  readonly ip: string;
  readonly port: number;
}

function fail(op: string, fd: number): never {
  const errno = koffi.errno();
  throw new SystemError(op, errno, `${op} on socket fd ${fd} failed`, { fd });
}

function setInt(fd: number, level: number, name: number, value: number, what: string): void {
  const buf = Buffer.alloc(4);
  buf.writeInt32LE(value);
  if (c.setsockopt(fd, level, name, buf, 4) !== 0) fail(`setsockopt(${what})`, fd);
}

/** SO_MARK (ztunnel marks every socket it opens 0x539 so no redirect captures it again). */
export function setMark(fd: number, mark: number): void {
  setInt(fd, SOL_SOCKET, SO_MARK, mark, 'SO_MARK');
}

/** IP_TRANSPARENT (+ IPV6_TRANSPARENT on v6 sockets): accept connections for non-local destinations (TPROXY, sk_assign). */
export function setTransparent(fd: number, family: Family): void {
  setInt(fd, SOL_IP, IP_TRANSPARENT, 1, 'IP_TRANSPARENT');
  if (family === 6) setInt(fd, SOL_IPV6, IPV6_TRANSPARENT, 1, 'IPV6_TRANSPARENT');
}

export function getMark(fd: number): number {
  const buf = Buffer.alloc(4);
  const len = [4];
  if (c.getsockopt(fd, SOL_SOCKET, SO_MARK, buf, len) !== 0) fail('getsockopt(SO_MARK)', fd);
  return buf.readUInt32LE(0);
}

function decodeSockaddr(buf: Buffer): SockAddr | undefined {
  const family = buf.readUInt16LE(0);
  const port = buf.readUInt16BE(2);
  if (family === AF_INET) return { ip: [...buf.subarray(4, 8)].join('.'), port };
  if (family === AF_INET6) {
    const raw = buf.subarray(8, 24);
    if (raw.subarray(0, 10).every((b) => b === 0) && raw[10] === 0xff && raw[11] === 0xff) return { ip: [...raw.subarray(12, 16)].join('.'), port };
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(raw.readUInt16BE(i).toString(16));
    return { ip: groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::'), port };
  }
  return undefined;
}

/**
 * The original destination exactly as ztunnel asks for it: getsockopt(SOL_IP, SO_ORIGINAL_DST) for an
 * IPv4 (or v4-mapped) peer, getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST) for IPv6. undefined when the
 * kernel has no answer (no NAT conntrack entry and no BPF getsockopt program answering).
 */
export function originalDst(fd: number, peerIsV4: boolean): SockAddr | undefined {
  const buf = Buffer.alloc(28);
  const len = [28];
  const rc = c.getsockopt(fd, peerIsV4 ? SOL_IP : SOL_IPV6, SO_ORIGINAL_DST, buf, len);
  if (rc !== 0) return undefined;
  return decodeSockaddr(buf);
}

function sockaddr(family: Family, ip: string, port: number): Buffer {
  if (family === 4) {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(port, 2);
    ip.split('.').forEach((o, i) => b.writeUInt8(Number(o), 4 + i));
    return b;
  }
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(port, 2);
  // Only the wildcard "::" is needed for listeners.
  if (ip !== '::') throw new RangeError(`listenFd supports "::" for IPv6, not ${ip}`);
  return b;
}

/** A new TCP socket fd (close-on-exec), optionally marked before anything else happens to it. */
export function tcpSocket(family: Family, mark?: number): number {
  const fd = c.socket(family === 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) fail('socket', fd);
  try {
    if (mark !== undefined) setMark(fd, mark);
  } catch (e) {
    c.close(fd);
    throw e;
  }
  return fd;
}

/**
 * A listening socket with IP_TRANSPARENT set before bind (nginx-style `listen … transparent` after the
 * fact is refused by some kernels' TPROXY paths). `[::]` listeners are dual-stack (V6ONLY off).
 */
export function listenFd(family: Family, ip: string, port: number, opts: { transparent: boolean; mark?: number }): number {
  const fd = tcpSocket(family, opts.mark);
  try {
    setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1, 'SO_REUSEADDR');
    if (family === 6) setInt(fd, SOL_IPV6, IPV6_V6ONLY, 0, 'IPV6_V6ONLY');
    if (opts.transparent) setTransparent(fd, family);
    const sa = sockaddr(family, ip, port);
    if (c.bind(fd, sa, sa.length) !== 0) fail(`bind(${ip}:${port})`, fd);
    if (c.listen(fd, 1024) !== 0) fail('listen', fd);
  } catch (e) {
    c.close(fd);
    throw e;
  }
  return fd;
}

export function closeFd(fd: number): void {
  c.close(fd);
}

/** The fd behind a Node net.Socket (libuv keeps it on the handle; undefined before the socket exists). */
export function socketFd(socket: unknown): number | undefined {
  const handle = (socket as { _handle?: { fd?: unknown } })._handle;
  return typeof handle?.fd === 'number' && handle.fd >= 0 ? handle.fd : undefined;
}

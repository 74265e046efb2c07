// The socket options ztunnel relies on, which Node's net module cannot reach: SO_ORIGINAL_DST
// (getsockopt), SO_MARK, SO_REUSEPORT, IP_TRANSPARENT and IP_FREEBIND (setsockopt). libc is called
// through koffi on the fd of a Node socket (`socket._handle.fd`), or on a socket made here with libc
// socket() so an option can be set BEFORE bind/listen/connect, then handed to Node
// (`net.Socket({ fd })`, `server.listen({ fd })`, `dgram` `bind({ fd })`).
import { SystemError } from '../../errors.ts';
import { lastErrno, libcRaw as c } from '../../libbpf/ffi.ts';
import { bytesToIp, ipToBytes } from '../../bpf/schema.ts';
import { LINUX_SOCKET } from '../../libbpf/constants.ts';

const {
  AF_INET,
  AF_INET6,
  SOCK_STREAM,
  SOCK_DGRAM,
  SOCK_CLOEXEC,
  SOL_SOCKET,
  SO_REUSEADDR,
  SO_REUSEPORT,
  SO_MARK,
  SOL_IP,
  SOL_IPV6,
  IP_FREEBIND,
  IP_TRANSPARENT,
} = LINUX_SOCKET;

const IPV6_TRANSPARENT = 75;
const IPV6_FREEBIND = 78;
const IPV6_V6ONLY = 26;
/** SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST share the number 80 (netfilter_ipv4.h, ip6_tables.h). */
const SO_ORIGINAL_DST = 80;

export type Family = 4 | 6;

export interface SockAddr {
  readonly ip: string;
  readonly port: number;
}

function fail(op: string, fd: number): never {
  const errno = lastErrno();
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

/** IP_TRANSPARENT (+ IPV6_TRANSPARENT on v6 sockets): accept connections for non-local destinations (TPROXY). */
export function setTransparent(fd: number, family: Family): void {
  setInt(fd, SOL_IP, IP_TRANSPARENT, 1, 'IP_TRANSPARENT');
  if (family === 6) setInt(fd, SOL_IPV6, IPV6_TRANSPARENT, 1, 'IPV6_TRANSPARENT');
}

/**
 * IP_TRANSPARENT + IP_FREEBIND (their IPv6 twins on v6 sockets) before bind: what ztunnel sets to bind
 * an upstream socket to the original client's address, which is not local (src/socket.rs
 * set_freebind_and_transparent in istio/ztunnel).
 */
export function setFreebindTransparent(fd: number, family: Family): void {
  if (family === 4) {
    setInt(fd, SOL_IP, IP_TRANSPARENT, 1, 'IP_TRANSPARENT');
    setInt(fd, SOL_IP, IP_FREEBIND, 1, 'IP_FREEBIND');
  } else {
    setInt(fd, SOL_IPV6, IPV6_TRANSPARENT, 1, 'IPV6_TRANSPARENT');
    setInt(fd, SOL_IPV6, IPV6_FREEBIND, 1, 'IPV6_FREEBIND');
  }
}

/** SO_REUSEPORT before bind: two ztunnels (a rolling upgrade) share the pod's ports. */
export function setReusePort(fd: number): void {
  setInt(fd, SOL_SOCKET, SO_REUSEPORT, 1, 'SO_REUSEPORT');
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
  // RFC 5952 text, a v4-mapped address as the IPv4 it stands for (src/ip.ts).
  if (family === AF_INET6) return { ip: bytesToIp(buf.subarray(8, 24)), port };
  return undefined;
}

/** Which option answered: SO_ORIGINAL_DST (SOL_IP) or IP6T_SO_ORIGINAL_DST (SOL_IPV6). */
export type OrigDstOption = 'SO_ORIGINAL_DST' | 'IP6T_SO_ORIGINAL_DST';

function getOrigDst(fd: number, level: number): SockAddr | undefined {
  const buf = Buffer.alloc(28);
  const len = [28];
  return c.getsockopt(fd, level, SO_ORIGINAL_DST, buf, len) === 0 ? decodeSockaddr(buf) : undefined;
}

/**
 * The original destination exactly as ztunnel asks for it (src/socket.rs orig_dst_addr): first
 * getsockopt(SOL_IP, SO_ORIGINAL_DST), whatever the socket's family, then getsockopt(SOL_IPV6,
 * IP6T_SO_ORIGINAL_DST); with the option that answered. undefined when neither has an answer (no NAT
 * conntrack entry and no BPF getsockopt program answering).
 */
export function originalDst(fd: number): { addr: SockAddr; option: OrigDstOption } | undefined {
  const v4 = getOrigDst(fd, SOL_IP);
  if (v4) return { addr: v4, option: 'SO_ORIGINAL_DST' };
  const v6 = getOrigDst(fd, SOL_IPV6);
  return v6 ? { addr: v6, option: 'IP6T_SO_ORIGINAL_DST' } : undefined;
}

/** sockaddr_in / sockaddr_in6 for any literal address of the socket's family. */
function sockaddr(family: Family, ip: string, port: number): Buffer {
  const bytes = ipToBytes(ip);
  if (family === 4) {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(port, 2);
    b.set(bytes.subarray(12), 4);
    return b;
  }
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(port, 2);
  b.set(bytes, 8);
  return b;
}

export function familyOf(ip: string): Family {
  return ip.includes(':') ? 6 : 4;
}

/** bind(2) on a socket made here (before connect: the upstream's source; before listen: the port). */
export function bindFd(fd: number, family: Family, ip: string, port: number): void {
  const sa = sockaddr(family, ip, port);
  if (c.bind(fd, sa, sa.length) !== 0) fail(`bind(${family === 6 ? `[${ip}]` : ip}:${port})`, fd);
}

function newSocket(family: Family, type: number, mark: number | undefined): number {
  const fd = c.socket(family === 4 ? AF_INET : AF_INET6, type | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) fail('socket', fd);
  try {
    if (mark !== undefined) setMark(fd, mark);
  } catch (e) {
    c.close(fd);
    throw e;
  }
  return fd;
}

/** A new TCP socket fd (close-on-exec), optionally marked before anything else happens to it. */
export function tcpSocket(family: Family, mark?: number): number {
  return newSocket(family, SOCK_STREAM, mark);
}

/** A new UDP socket fd (close-on-exec), optionally marked. */
export function udpSocket(family: Family, mark?: number): number {
  return newSocket(family, SOCK_DGRAM, mark);
}

export interface ListenOptions {
  readonly transparent: boolean;
  readonly mark?: number;
  /** SO_REUSEPORT instead of SO_REUSEADDR (ztunnel's in-pod listeners). */
  readonly reusePort?: boolean;
}

/** Applies the options, binds, and for TCP listens; closes the fd on failure. */
function bound(fd: number, family: Family, ip: string, port: number, opts: ListenOptions, listen: boolean): number {
  try {
    if (opts.reusePort) setReusePort(fd);
    else setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1, 'SO_REUSEADDR');
    if (family === 6 && ip === '::') setInt(fd, SOL_IPV6, IPV6_V6ONLY, 0, 'IPV6_V6ONLY');
    if (opts.transparent) setTransparent(fd, family);
    bindFd(fd, family, ip, port);
    if (listen && c.listen(fd, 1024) !== 0) fail('listen', fd);
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
export function listenFd(family: Family, ip: string, port: number, opts: ListenOptions): number {
  return bound(tcpSocket(family, opts.mark), family, ip, port, opts, true);
}

/** A bound UDP socket (the DNS proxy's), options as listenFd. */
export function udpBoundFd(family: Family, ip: string, port: number, opts: ListenOptions): number {
  return bound(udpSocket(family, opts.mark), family, ip, port, opts, false);
}

export function closeFd(fd: number): void {
  c.close(fd);
}

/** The fd behind a Node net.Socket (libuv keeps it on the handle; undefined before the socket exists). */
export function socketFd(socket: unknown): number | undefined {
  const handle = (socket as { _handle?: { fd?: unknown } })._handle;
  return typeof handle?.fd === 'number' && handle.fd >= 0 ? handle.fd : undefined;
}

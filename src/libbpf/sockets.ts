// Socket-level facts user space needs about a netns: its cookie (the key connect4 programs see via
// bpf_get_netns_cookie). Read as getsockopt(SO_NETNS_COOKIE) on a throwaway socket made inside it.
import { libcRaw, lastErrno } from './ffi.ts';
import { SystemError } from '../errors.ts';
import { withNetns } from './netns.ts';
import { LINUX_SOCKET } from './constants.ts';

const { AF_INET, SOCK_DGRAM, SOL_SOCKET, SOL_IP, SO_NETNS_COOKIE, SO_COOKIE, IP_TRANSPARENT } = LINUX_SOCKET;

function getsockoptU64(fd: number, opt: number, what: string): bigint {
  const buf = new Uint8Array(8);
  const len = [8];
  if ((libcRaw.getsockopt(fd, SOL_SOCKET, opt, buf, len) as number) !== 0) {
    throw new SystemError(`getsockopt(${what})`, lastErrno(), 'the kernel refused the socket option');
  }
  return Buffer.from(buf).readBigUInt64LE(0);
}

/** Cookie of the current thread's netns (SO_NETNS_COOKIE, Linux 5.14+). */
export function currentNetnsCookie(): bigint {
  const fd = libcRaw.socket(AF_INET, SOCK_DGRAM, 0) as number;
  if (fd < 0) throw new SystemError('socket', lastErrno(), 'cannot create a socket');
  try {
    return getsockoptU64(fd, SO_NETNS_COOKIE, 'SO_NETNS_COOKIE');
  } finally {
    libcRaw.close(fd);
  }
}

/** Cookie of the netns at path (/run/netns/NAME or /proc/PID/ns/net). */
export function netnsCookie(path: string): bigint {
  return withNetns(path, currentNetnsCookie);
}

/** Socket cookie (SO_COOKIE) of a socket fd, as bpf_get_socket_cookie sees it. */
export function socketCookie(fd: number): bigint {
  return getsockoptU64(fd, SO_COOKIE, 'SO_COOKIE');
}

/**
 * Whether a socket has IP_TRANSPARENT (one flag for both families: ztunnel sets it with SOL_IP on its
 * [::] listeners). False when the option cannot be read: callers treat that as the safe answer.
 */
export function isTransparent(fd: number): boolean {
  const buf = new Uint8Array(4);
  const len = [4];
  if ((libcRaw.getsockopt(fd, SOL_IP, IP_TRANSPARENT, buf, len) as number) !== 0) return false;
  return Buffer.from(buf).readInt32LE(0) !== 0;
}

/** ifindex of an interface name in the current netns (0 => not found). */
export function ifIndex(name: string): number {
  return libcRaw.if_nametoindex(name) as number;
}

/** Name of an interface index in the current netns (null => no such interface here). */
export function ifName(index: number): string | null {
  const buf = new Uint8Array(16); // IF_NAMESIZE
  if (libcRaw.if_indextoname(index, buf) === null) return null;
  const b = Buffer.from(buf);
  return b.toString('utf8', 0, Math.max(0, b.indexOf(0)));
}

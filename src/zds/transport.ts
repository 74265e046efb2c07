// AF_UNIX SOCK_SEQPACKET through koffi (Node's net module has neither SEQPACKET nor SCM_RIGHTS).
// Every socket is non-blocking; a call that would block waits for readiness in reactor.ts, so the event
// loop never blocks. One datagram per message: send refuses more than ZDS_MAX_MESSAGE bytes, recv
// reads into a buffer of that size and reports truncation (MSG_TRUNC, with the datagram's real size)
// instead of handing back a cut message. SCM_RIGHTS fds travel both ways; received ones are CLOEXEC.
import { lstatSync, mkdirSync, unlinkSync, type Stats } from 'node:fs';
import { endianness } from 'node:os';
import { dirname } from 'node:path';
import { ERRNO, SystemError, errnoName } from '../errors.ts';
import { addressOf, koffi, lastErrno, libcRaw } from '../libbpf/ffi.ts';
import { closeFd } from '../libbpf/handle.ts';
import { LINUX_SOCKET } from '../libbpf/constants.ts';
import { ZdsClosedError, ZdsProtocolError } from './errors.ts';
import { reactor, type Direction } from './reactor.ts';

const { AF_UNIX, SOCK_SEQPACKET, SOCK_NONBLOCK, SOCK_CLOEXEC, SOL_SOCKET, SO_PEERCRED } = LINUX_SOCKET;

/** Largest ZDS datagram: ztunnel and istio-cni read into 1024-byte buffers (protocol.rs, ztunnelserver_linux.go). */
export const ZDS_MAX_MESSAGE = 1024;

const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_TRUNC = 0x20;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const SHUT_RDWR = 2;
/** sizeof(sockaddr_un.sun_path) */
const SUN_PATH_MAX = 108;
/** Room for this many received fds: more than ZDS ever sends, so a peer sending several is counted, not cut. */
const MAX_RECV_FDS = 8;
const LISTEN_BACKLOG = 128;

// struct msghdr, iovec and cmsghdr as koffi lays them out for this ABI; only offsets and sizes are used.
// The Buffers below are written with 64-bit little-endian pointers: refuse any other ABI loudly.
if (koffi.sizeof('void *') !== 8 || endianness() !== 'LE') {
  throw new Error('src/zds/transport.ts supports 64-bit little-endian Linux only (x86_64, arm64)');
}
const MSGHDR = koffi.struct('zds_msghdr', {
  msg_name: 'void *',
  msg_namelen: 'uint32_t',
  msg_iov: 'void *',
  msg_iovlen: 'size_t',
  msg_control: 'void *',
  msg_controllen: 'size_t',
  msg_flags: 'int',
});
const CMSGHDR = koffi.struct('zds_cmsghdr', { cmsg_len: 'size_t', cmsg_level: 'int', cmsg_type: 'int' });
const off = (field: string): number => koffi.offsetof(MSGHDR, field);
const MSGHDR_SIZE = koffi.sizeof(MSGHDR);
const CMSG_HDR = koffi.sizeof(CMSGHDR);
const IOVEC_SIZE = 16;
const cmsgAlign = (n: number): number => (n + 7) & ~7;
const cmsgSpace = (fdCount: number): number => CMSG_HDR + cmsgAlign(4 * fdCount);

/** The peer process of a connected AF_UNIX socket, from SO_PEERCRED (at connect/listen time). */
export interface PeerCred {
  readonly pid: number;
  readonly uid: number;
  readonly gid: number;
}

/** One received datagram. `fds` are owned by the caller (close them). */
export interface Datagram {
  /** The bytes received (at most ZDS_MAX_MESSAGE). */
  readonly data: Uint8Array;
  readonly fds: number[];
  /** MSG_TRUNC: the datagram was larger than ZDS_MAX_MESSAGE; `size` is its real length. */
  readonly truncated: boolean;
  /** MSG_CTRUNC: more fds came than there was room for (the kernel closed the rest). */
  readonly controlTruncated: boolean;
  readonly size: number;
}

function sysFail(op: string, what: string): never {
  const errno = lastErrno();
  throw new SystemError(op, errno, what);
}

function sockaddrUn(path: string): Buffer {
  const bytes = Buffer.from(path, 'utf8');
  if (bytes.length >= SUN_PATH_MAX) {
    throw new SystemError(
      'sockaddr_un',
      ERRNO.ENAMETOOLONG,
      `socket path ${path} is ${bytes.length} bytes; the limit is ${SUN_PATH_MAX - 1}`,
    );
  }
  const sa = Buffer.alloc(2 + bytes.length + 1);
  sa.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(sa, 2);
  return sa;
}

function newSocket(): number {
  const fd = libcRaw.socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) sysFail('socket(AF_UNIX, SOCK_SEQPACKET)', 'cannot create a unix socket');
  return fd;
}

/** A non-blocking AF_UNIX SOCK_SEQPACKET socket: a listener or one end of a connection. */
export class SeqpacketSocket {
  readonly fd: number;
  /** The socket path this socket was bound or connected to (accepted sockets: their listener's). */
  readonly path: string;
  #closed = false;
  #reading = false;

  private constructor(fd: number, path: string) {
    this.fd = fd;
    this.path = path;
  }

  /** Bind and listen on `path`: creates its directory, removes a stale socket file first (as istio-cni does). */
  static listen(path: string, opts: { backlog?: number; removeStale?: boolean } = {}): SeqpacketSocket {
    mkdirSync(dirname(path), { recursive: true });
    if (opts.removeStale ?? true) removeStaleSocket(path);
    const fd = newSocket();
    try {
      const sa = sockaddrUn(path);
      if ((libcRaw.bind(fd, sa, sa.length) as number) !== 0)
        sysFail(`bind(${path})`, `cannot bind the ZDS socket ${path}`);
      if ((libcRaw.listen(fd, opts.backlog ?? LISTEN_BACKLOG) as number) !== 0)
        sysFail(`listen(${path})`, 'listen failed');
    } catch (err) {
      closeFd(fd);
      throw err;
    }
    return new SeqpacketSocket(fd, path);
  }

  /**
   * Connect to `path`. A unix connect completes at once or fails (ENOENT, ECONNREFUSED, EAGAIN when the
   * listener's backlog is full): never EINPROGRESS, so this is synchronous; callers retry with backoff.
   */
  static connect(path: string): SeqpacketSocket {
    const fd = newSocket();
    try {
      const sa = sockaddrUn(path);
      if ((libcRaw.connect(fd, sa, sa.length) as number) !== 0)
        sysFail(`connect(${path})`, `cannot connect to ${path}`);
    } catch (err) {
      closeFd(fd);
      throw err;
    }
    return new SeqpacketSocket(fd, path);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Next connection; waits (without blocking the loop) until one arrives. */
  async accept(): Promise<SeqpacketSocket> {
    for (;;) {
      this.#ensureOpen('accept');
      const fd = libcRaw.accept4(this.fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC) as number;
      if (fd >= 0) return new SeqpacketSocket(fd, this.path);
      const errno = lastErrno();
      const code = errnoName(errno);
      // ECONNABORTED: the client gave up between SYN-equivalent and accept; EINTR: a signal. Try again.
      if (code === 'EAGAIN' || code === 'EWOULDBLOCK') await this.#wait('read');
      else if (code !== 'ECONNABORTED' && code !== 'EINTR')
        throw new SystemError(`accept4(${this.path})`, errno, 'accept failed');
    }
  }

  /** Send one datagram of at most ZDS_MAX_MESSAGE bytes, with `fds` as SCM_RIGHTS (the fds stay ours). */
  send(bytes: Uint8Array, fds: readonly number[] = []): Promise<void> {
    if (bytes.length > ZDS_MAX_MESSAGE) {
      return Promise.reject(
        new ZdsProtocolError(
          this.path,
          'datagram',
          `refusing to send ${bytes.length} bytes: a ZDS message is at most ${ZDS_MAX_MESSAGE} bytes ` +
            '(the peer would see it truncated)',
        ),
      );
    }
    return this.sendUnchecked(bytes, fds);
  }

  /** send() without the size limit: only for tests that play a peer sending oversized datagrams. */
  async sendUnchecked(bytes: Uint8Array, fds: readonly number[] = []): Promise<void> {
    const data = Buffer.from(bytes);
    const iov = Buffer.alloc(IOVEC_SIZE);
    iov.writeBigUInt64LE(data.length ? addressOf(data) : 0n, 0);
    iov.writeBigUInt64LE(BigInt(data.length), 8);
    const control = fds.length ? Buffer.alloc(cmsgSpace(fds.length)) : undefined;
    if (control) {
      control.writeBigUInt64LE(BigInt(CMSG_HDR + 4 * fds.length), 0);
      control.writeInt32LE(SOL_SOCKET, 8);
      control.writeInt32LE(SCM_RIGHTS, 12);
      fds.forEach((fd, i) => control.writeInt32LE(fd, CMSG_HDR + 4 * i));
    }
    const msg = Buffer.alloc(MSGHDR_SIZE);
    msg.writeBigUInt64LE(addressOf(iov), off('msg_iov'));
    msg.writeBigUInt64LE(1n, off('msg_iovlen'));
    if (control) {
      msg.writeBigUInt64LE(addressOf(control), off('msg_control'));
      msg.writeBigUInt64LE(BigInt(control.length), off('msg_controllen'));
    }
    for (;;) {
      this.#ensureOpen('send');
      const rc = Number(libcRaw.sendmsg(this.fd, msg, MSG_DONTWAIT | MSG_NOSIGNAL));
      if (rc >= 0) return;
      const errno = lastErrno();
      const code = errnoName(errno);
      if (code === 'EAGAIN' || code === 'EWOULDBLOCK') await this.#wait('write');
      else if (code !== 'EINTR')
        throw new SystemError(`sendmsg(${this.path})`, errno, `cannot send ${data.length} bytes`);
    }
  }

  /** The next datagram, or null at EOF (a zero-length datagram reads the same, as it does for ztunnel). */
  async recv(): Promise<Datagram | null> {
    if (this.#reading) throw new Error(`SeqpacketSocket(${this.path}): recv() while another recv() is pending`);
    this.#reading = true;
    try {
      return await this.#recv();
    } finally {
      this.#reading = false;
    }
  }

  async #recv(): Promise<Datagram | null> {
    const data = Buffer.alloc(ZDS_MAX_MESSAGE);
    const iov = Buffer.alloc(IOVEC_SIZE);
    iov.writeBigUInt64LE(addressOf(data), 0);
    iov.writeBigUInt64LE(BigInt(data.length), 8);
    const control = Buffer.alloc(cmsgSpace(MAX_RECV_FDS));
    const msg = Buffer.alloc(MSGHDR_SIZE);
    for (;;) {
      this.#ensureOpen('recv');
      msg.fill(0);
      msg.writeBigUInt64LE(addressOf(iov), off('msg_iov'));
      msg.writeBigUInt64LE(1n, off('msg_iovlen'));
      msg.writeBigUInt64LE(addressOf(control), off('msg_control'));
      msg.writeBigUInt64LE(BigInt(control.length), off('msg_controllen'));
      // MSG_TRUNC in flags: the return value is the datagram's real size even when it did not fit.
      const rc = Number(libcRaw.recvmsg(this.fd, msg, MSG_DONTWAIT | MSG_TRUNC | MSG_CMSG_CLOEXEC));
      if (rc < 0) {
        const errno = lastErrno();
        const code = errnoName(errno);
        if (code === 'EAGAIN' || code === 'EWOULDBLOCK') await this.#wait('read');
        else if (code === 'ECONNRESET') return null;
        else if (code !== 'EINTR') throw new SystemError(`recvmsg(${this.path})`, errno, 'receive failed');
        continue;
      }
      const flags = msg.readInt32LE(off('msg_flags'));
      const fds = parseRights(control, Number(msg.readBigUInt64LE(off('msg_controllen'))));
      if (rc === 0) {
        for (const fd of fds) closeFd(fd);
        return null;
      }
      return {
        data: new Uint8Array(data.subarray(0, Math.min(rc, ZDS_MAX_MESSAGE))),
        fds,
        truncated: (flags & MSG_TRUNC) !== 0,
        controlTruncated: (flags & MSG_CTRUNC) !== 0,
        size: rc,
      };
    }
  }

  /** SO_PEERCRED of a connected socket. */
  peerCred(): PeerCred {
    this.#ensureOpen('peerCred');
    const buf = Buffer.alloc(12);
    const len = [12];
    if ((libcRaw.getsockopt(this.fd, SOL_SOCKET, SO_PEERCRED, buf, len) as number) !== 0) {
      sysFail(`getsockopt(SO_PEERCRED, ${this.path})`, 'cannot read the peer credentials');
    }
    return { pid: buf.readInt32LE(0), uid: buf.readUInt32LE(4), gid: buf.readUInt32LE(8) };
  }

  /** The peer's pid, or undefined when SO_PEERCRED fails (the connection is already gone): for labels and logs. */
  peerPid(): number | undefined {
    try {
      return this.peerCred().pid;
    } catch {
      return undefined;
    }
  }

  /** Idempotent. Pending recv/send/accept reject with ZdsClosedError; the peer sees EOF at once. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    reactor.cancel(this.fd, new ZdsClosedError(this.path, 'datagram', 'socket closed locally'));
    // shutdown first: the peer's EOF must not wait for a pending poll that still lists this fd.
    libcRaw.shutdown(this.fd, SHUT_RDWR);
    reactor.closeFd(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #ensureOpen(op: string): void {
    if (this.#closed) throw new ZdsClosedError(this.path, 'datagram', `${op} on a closed socket`);
  }

  #wait(dir: Direction): Promise<void> {
    return reactor.wait(this.fd, dir);
  }
}

/** The fds of every SCM_RIGHTS message in a received control buffer. */
function parseRights(control: Buffer, controlLen: number): number[] {
  const fds: number[] = [];
  let at = 0;
  while (at + CMSG_HDR <= controlLen) {
    const len = Number(control.readBigUInt64LE(at));
    if (len < CMSG_HDR) break;
    const level = control.readInt32LE(at + 8);
    const type = control.readInt32LE(at + 12);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      for (let p = at + CMSG_HDR; p + 4 <= at + len; p += 4) fds.push(control.readInt32LE(p));
    }
    at += cmsgAlign(len);
  }
  return fds;
}

/** Remove a socket file left by a previous run. Only a socket: a mistyped path must not delete someone's file. */
function removeStaleSocket(path: string): void {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') return;
    throw new SystemError(`lstat(${path})`, -(e.errno ?? -5), `cannot inspect ${path}`);
  }
  if (!st.isSocket()) throw new SystemError(`listen(${path})`, ERRNO.EEXIST, `${path} exists and is not a socket`);
  try {
    unlinkSync(path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code !== 'ENOENT')
      throw new SystemError(`unlink(${path})`, -(e.errno ?? -5), `cannot remove the stale socket ${path}`);
  }
}

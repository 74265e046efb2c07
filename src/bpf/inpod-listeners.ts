// Finds ztunnel's listeners inside a mesh pod's netns and lends them to the loader (inpod topology).
// Real ztunnel is one process that opens sockets in many pods' netns; the stand-in is one process per
// pod. Either way: the pod's own /proc/<pid>/net/tcp{,6} names the inodes listening on 15001/15006/
// 15008 in that netns, /proc/<zpid>/fd of ztunnel's processes says which of them holds each inode,
// and pidfd_getfd (Linux 5.6+, root) copies the socket into this process.
import { readdirSync, readlinkSync } from 'node:fs';
import koffi from 'koffi';
import { SystemError } from '../errors.ts';
import { listeningInodes } from './datapath-ztunnel.ts';

const libc = koffi.load('libc.so.6');
const syscall = libc.func('long syscall(long nr, ...)') as (...args: unknown[]) => number | bigint;
const closeFd = libc.func('int close(int fd)') as (fd: number) => number;
const SYS_PIDFD_OPEN = 434;
const SYS_PIDFD_GETFD = 438;

/** Where a socket lives: which process holds it under which fd. */
export interface SocketHolder {
  readonly pid: number;
  readonly fd: number;
}

/** socket inode -> holder, over every fd of these processes (one readdir per process). */
export function socketHolders(pids: readonly number[]): Map<string, SocketHolder> {
  const out = new Map<string, SocketHolder>();
  for (const pid of pids) {
    let names: string[];
    try {
      names = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // exited
    }
    for (const name of names) {
      let target: string;
      try {
        target = readlinkSync(`/proc/${pid}/fd/${name}`);
      } catch {
        continue; // closed meanwhile
      }
      const m = /^socket:\[(\d+)\]$/.exec(target);
      if (m?.[1] && !out.has(m[1])) out.set(m[1], { pid, fd: Number(name) });
    }
  }
  return out;
}

/** The listener inodes of the three ztunnel ports in the netns of `podPid` (undefined: none). */
export interface ListenerInodes {
  readonly outbound: string | undefined;
  readonly inbound: string | undefined;
  readonly hbone: string | undefined;
}

export function podListenerInodes(podPid: number, ports: { outbound: number; inbound: number; hbone: number }): ListenerInodes {
  const first = (port: number): string | undefined => [...listeningInodes(podPid, port)].sort()[0];
  return { outbound: first(ports.outbound), inbound: first(ports.inbound), hbone: first(ports.hbone) };
}

/** Runs fn with copies (in this process) of the held sockets; the copies are closed afterwards. */
export function withCopiedFds<T>(holders: readonly SocketHolder[], fn: (fds: number[]) => T): T {
  const mine: number[] = [];
  try {
    for (const h of holders) {
      const pidfd = Number(syscall(SYS_PIDFD_OPEN, 'int', h.pid, 'uint', 0));
      if (pidfd < 0) throw new SystemError('pidfd_open', koffi.errno(), `cannot open ztunnel process ${h.pid}`, { pid: h.pid });
      try {
        const fd = Number(syscall(SYS_PIDFD_GETFD, 'int', pidfd, 'int', h.fd, 'uint', 0));
        if (fd < 0) throw new SystemError('pidfd_getfd', koffi.errno(), `cannot copy fd ${h.fd} out of ztunnel process ${h.pid}`, { pid: h.pid, fd: h.fd });
        mine.push(fd);
      } finally {
        closeFd(pidfd);
      }
    }
    return fn(mine);
  } finally {
    mine.forEach((fd) => closeFd(fd));
  }
}

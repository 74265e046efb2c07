// Finds ztunnel's listeners inside a mesh pod's netns and lends them to the loader (inpod topology).
// Real ztunnel is one process that opens sockets in many pods' netns; the stand-in is one process per
// pod. Either way: the pod's own /proc/<pid>/net/tcp{,6} names the inodes listening on 15001/15006/
// 15008 in that netns, /proc/<zpid>/fd of ztunnel's processes says which of them holds each inode,
// and pidfd_getfd (Linux 5.6+, root) copies the socket into this process. Unlike the node topology
// (withListenerFd), the netns and the holding process differ, so discovery is split in two steps and
// the copy takes the holder found; the /proc readers and the copy are datapath-ztunnel.ts's.
import {
  fdNumbers,
  listeningInodesByPort,
  socketFds,
  socketInode,
  withSocketFd,
  type SocketHolder,
} from './datapath-ztunnel.ts';

export type { SocketHolder } from './datapath-ztunnel.ts';

/** socket inode -> holder, over every fd of these processes (one readdir per process). */
export function socketHolders(pids: readonly number[]): Map<string, SocketHolder> {
  const out = new Map<string, SocketHolder>();
  for (const pid of pids) {
    for (const [inode, fd] of socketFds(pid)) {
      if (!out.has(inode)) out.set(inode, { pid, fd });
    }
  }
  return out;
}

/**
 * socketHolders for a few inodes at a time, remembering what it read: ztunnel holds thousands of fds
 * (three listeners per pod, and connections), and reading all of them (~20 ms at 250 pods) for each
 * pod ztunnel just took was most of that pod's second pass. A lookup first checks the fds it knows the
 * inodes by, then reads the fds it has not seen or was told to forget (a new pod's listeners take new
 * fds, or those a released pod's listeners left: the lowest free ones), and only then all of them.
 */
export class SocketHolderCache {
  /** pid -> fd -> socket inode, as last read. */
  readonly #fds = new Map<number, Map<number, string | undefined>>();

  /** Holder of each of `inodes` found among `pids`' fds (a missing inode: no such socket held). */
  find(pids: readonly number[], inodes: readonly string[]): Map<string, SocketHolder> {
    for (const pid of this.#fds.keys()) if (!pids.includes(pid)) this.#fds.delete(pid);
    const found = (): Map<string, SocketHolder> => {
      const out = new Map<string, SocketHolder>();
      for (const pid of pids) {
        for (const [fd, inode] of this.#fds.get(pid) ?? []) {
          if (inode !== undefined && inodes.includes(inode) && !out.has(inode)) out.set(inode, { pid, fd });
        }
      }
      return out;
    };
    // Every inode found, and each fd (read now or before) still refers to it.
    const complete = (m: Map<string, SocketHolder>): boolean =>
      m.size === inodes.length && [...m].every(([inode, h]) => socketInode(h.pid, h.fd) === inode);
    const known = found();
    if (complete(known)) return known;
    this.#read(pids, false);
    const fresh = found();
    if (complete(fresh)) return fresh;
    this.#read(pids, true);
    return found();
  }

  /**
   * These sockets closed (a released pod's listeners): the fds that held them are read again next
   * time, as a new socket takes the lowest free fd (a new pod's listeners, often the ones just freed).
   */
  forget(inodes: readonly string[]): void {
    for (const fds of this.#fds.values()) {
      for (const [fd, inode] of fds) if (inode !== undefined && inodes.includes(inode)) fds.delete(fd);
    }
  }

  /** Reads the fds of `pids`: those not seen before, or all of them. */
  #read(pids: readonly number[], all: boolean): void {
    for (const pid of pids) {
      const prev = this.#fds.get(pid) ?? new Map<number, string | undefined>();
      const next = new Map<number, string | undefined>();
      for (const fd of fdNumbers(pid) ?? []) next.set(fd, !all && prev.has(fd) ? prev.get(fd) : socketInode(pid, fd));
      this.#fds.set(pid, next);
    }
  }
}

/** The listener inodes of the three ztunnel ports in the netns of `podPid` (undefined: none). */
export interface ListenerInodes {
  readonly outbound: string | undefined;
  readonly inbound: string | undefined;
  readonly hbone: string | undefined;
  /** A second listener of each reuseport group (two ztunnels during a rolling upgrade). */
  readonly outbound2: string | undefined;
  readonly inbound2: string | undefined;
  readonly hbone2: string | undefined;
}

export function podListenerInodes(
  podPid: number,
  ports: { outbound: number; inbound: number; hbone: number },
): ListenerInodes {
  // Up to two sockets of each reuseport group. During a ztunnel rolling upgrade both ztunnels listen,
  // and which one outlives the other cannot be told from the inodes (they come from per-CPU batches,
  // not in creation order): both are registered, sk_lookup falls back from one to the other as the
  // old one closes, and reuseport selection still spreads connections over the whole group.
  const listening = listeningInodesByPort(podPid, [ports.outbound, ports.inbound, ports.hbone]);
  const two = (port: number): [string | undefined, string | undefined] => {
    const all = [...(listening.get(port) ?? [])].sort();
    return [all[0], all[1]];
  };
  const [inbound, inbound2] = two(ports.inbound);
  const [hbone, hbone2] = two(ports.hbone);
  const [outbound, outbound2] = two(ports.outbound);
  return { outbound, inbound, hbone, outbound2, inbound2, hbone2 };
}

/** Runs fn with copies (in this process) of the held sockets; the copies are closed afterwards. */
export function withCopiedFds<T>(holders: readonly SocketHolder[], fn: (fds: number[]) => T): T {
  const copy = (i: number, fds: number[]): T => {
    const h = holders[i];
    return h === undefined ? fn(fds) : withSocketFd(h, (fd) => copy(i + 1, [...fds, fd]));
  };
  return copy(0, []);
}

// Finds ztunnel's listeners inside a mesh pod's netns and lends them to the loader (inpod topology).
// Real ztunnel is one process that opens sockets in many pods' netns; the stand-in is one process per
// pod. Either way: the pod's own /proc/<pid>/net/tcp{,6} names the inodes listening on 15001/15006/
// 15008 in that netns, /proc/<zpid>/fd of ztunnel's processes says which of them holds each inode,
// and pidfd_getfd (Linux 5.6+, root) copies the socket into this process. Unlike the node topology
// (withListenerFd), the netns and the holding process differ, so discovery is split in two steps and
// the copy takes the holder found; the /proc readers and the copy are datapath-ztunnel.ts's.
import { listeningInodesByPort, socketFds, withSocketFd, type SocketHolder } from './datapath-ztunnel.ts';

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

/** The listener inodes of the three ztunnel ports in the netns of `podPid` (undefined: none). */
export interface ListenerInodes {
  readonly outbound: string | undefined;
  readonly inbound: string | undefined;
  readonly hbone: string | undefined;
  /** A second listener of the 15006 / 15008 reuseport group (two ztunnels during a rolling upgrade). */
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
  return { outbound: two(ports.outbound)[0], inbound, hbone, inbound2, hbone2 };
}

/** Runs fn with copies (in this process) of the held sockets; the copies are closed afterwards. */
export function withCopiedFds<T>(holders: readonly SocketHolder[], fn: (fds: number[]) => T): T {
  const copy = (i: number, fds: number[]): T => {
    const h = holders[i];
    return h === undefined ? fn(fds) : withSocketFd(h, (fd) => copy(i + 1, [...fds, fd]));
  };
  return copy(0, []);
}

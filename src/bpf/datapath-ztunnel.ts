// The ztunnel side of node-topology inbound: what ambpf_sk_lookup needs inside ztunnel's netns.
//  - ztunnel's 15006/15008 listener sockets in the ambpf_zt_listen SOCKMAP. ztunnel does not hand
//    them over, so the loader copies them out of its process with pidfd_getfd (Linux 5.6+, root):
//    /proc/<pid>/net/tcp{,6} names the listening sockets' inodes, /proc/<pid>/fd maps inodes to fds.
//    The inpod topology finds and copies ztunnel's sockets in the pods' netns with the same pieces
//    (listeningInodes, socketFds, withSocketFd; see inpod-listeners.ts).
//  - the policy route that makes any destination arriving on eth0 local (`ip rule iif eth0 lookup
//    100`, `local 0.0.0.0/0 dev lo table 100`, and their IPv6 twins with `local ::/0`) and
//    arp_ignore=1 on eth0 so ztunnel does not answer ARP for the pods' addresses. Routing rules, not
//    iptables.
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { promisify } from 'node:util';
import { AmbpfError } from '../errors.ts';
import { withFdOf, withNetns } from '../libbpf/index.ts';
import { writeNetSysctl } from './sysctl.ts';

const run = promisify(execFile);

export class ZtunnelSetupError extends AmbpfError {
  override readonly name: string = 'ZtunnelSetupError';
}

/** Inodes of the TCP sockets in LISTEN state on `port`, as process `pid`'s netns sees them. */
export function listeningInodes(pid: number, port: number): Set<string> {
  return listeningInodesByPort(pid, [port]).get(port)!;
}

/**
 * The same for several ports from one read of /proc/<pid>/net/tcp{,6}: each read walks the kernel's
 * whole TCP hash (every socket of the node), so a pod's three ports cost one walk per family, not three.
 */
export function listeningInodesByPort(pid: number, ports: readonly number[]): Map<number, Set<string>> {
  const byPort = new Map(ports.map((p) => [p, new Set<string>()]));
  for (const file of ['tcp', 'tcp6']) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${file}`, 'utf8');
    } catch {
      continue; // no IPv6 in that netns
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      const local = f[1];
      if (!local || f[3] !== '0A' || !f[9]) continue; // 0A = TCP_LISTEN
      byPort.get(parseInt(local.slice(local.indexOf(':') + 1), 16))?.add(f[9]);
    }
  }
  return byPort;
}

/** Where a socket lives: which process holds it under which fd. */
export interface SocketHolder {
  readonly pid: number;
  readonly fd: number;
}

/** socket inode -> fd (the first one, in readdir order) over process `pid`'s fds; empty once it exited. */
export function socketFds(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const fd of fdNumbers(pid) ?? []) {
    const inode = socketInode(pid, fd);
    if (inode !== undefined && !out.has(inode)) out.set(inode, fd);
  }
  return out;
}

/** Process `pid`'s open fds (undefined once it exited). */
export function fdNumbers(pid: number): number[] | undefined {
  try {
    return readdirSync(`/proc/${pid}/fd`).map(Number);
  } catch {
    return undefined;
  }
}

/** The socket inode fd `fd` of process `pid` refers to; undefined if it is no socket (or closed). */
export function socketInode(pid: number, fd: number): string | undefined {
  let target: string;
  try {
    target = readlinkSync(`/proc/${pid}/fd/${fd}`);
  } catch {
    return undefined; // closed meanwhile
  }
  return /^socket:\[(\d+)\]$/.exec(target)?.[1];
}

/** Run fn with a copy (in this process) of the socket `h` holds; the copy is closed afterwards. */
export function withSocketFd<T>(h: SocketHolder, fn: (fd: number) => T): T {
  return withFdOf(h.pid, h.fd, fn);
}

/**
 * Run fn with a duplicate (in this process) of the listener socket `pid` holds on `port`; the
 * duplicate is closed afterwards. Throws when the process has no such listener.
 */
export function withListenerFd<T>(pid: number, port: number, fn: (fd: number) => T): T {
  const inodes = listeningInodes(pid, port);
  const theirs = [...socketFds(pid)].find(([inode]) => inodes.has(inode))?.[1];
  if (theirs === undefined) {
    throw new ZtunnelSetupError(
      `process ${pid} has no TCP socket listening on port ${port}; is ztunnel running and ready?`,
      { pid, port },
    );
  }
  return withSocketFd({ pid, fd: theirs }, fn);
}

export interface PolicyRouteOptions {
  netnsPath: string;
  /** ztunnel's interface towards the node (default eth0). */
  ifname: string;
  /** Routing table for the local route (default 100, as Istio uses). */
  table: number;
  /** ip rule preference. */
  pref: number;
}

async function ipIn(netnsPath: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await run('nsenter', [`--net=${netnsPath}`, 'ip', ...args]);
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new ZtunnelSetupError(`ip ${args.join(' ')} in ${netnsPath} failed: ${(e.stderr ?? e.message).trim()}`, {
      netnsPath,
    });
  }
}

/** The address families the policy route is made for: IPv6 too unless this kernel has none. */
function families(netnsPath: string): Array<'-4' | '-6'> {
  // /proc/sys/net follows the netns of the thread that opens it; no ipv6 there = booted ipv6.disable=1.
  return withNetns(netnsPath, () => existsSync('/proc/sys/net/ipv6')) ? ['-4', '-6'] : ['-4'];
}

const anyAddr = (family: '-4' | '-6'): string => (family === '-4' ? '0.0.0.0/0' : '::/0');

/**
 * The `ip` commands that remove the policy route, both families (a missing piece fails its own
 * command only). Shared with the ledger's synchronous undo (ledger-undo.ts).
 */
export function policyRouteDelCommands(o: Pick<PolicyRouteOptions, 'ifname' | 'table' | 'pref'>): string[][] {
  return (['-4', '-6'] as const).flatMap((f) => [
    [f, 'rule', 'del', 'pref', String(o.pref), 'iif', o.ifname, 'lookup', String(o.table)],
    [f, 'route', 'del', 'local', anyAddr(f), 'dev', 'lo', 'table', String(o.table)],
  ]);
}

/**
 * Install (idempotently) the policy route in ztunnel's netns, for IPv4 and IPv6 alike (a steered
 * IPv6 packet keeps the pod's IPv6 address as destination), and arp_ignore on its interface. IPv6
 * needs no arp_ignore twin: neighbour discovery answers only for addresses on the interface, never
 * for what a route makes local.
 */
export async function installPolicyRoute(o: PolicyRouteOptions): Promise<void> {
  for (const f of families(o.netnsPath)) {
    const rules = await ipIn(o.netnsPath, [f, 'rule', 'show', 'pref', String(o.pref)]);
    if (!rules.includes(`iif ${o.ifname} lookup ${o.table}`)) {
      await ipIn(o.netnsPath, [f, 'rule', 'add', 'pref', String(o.pref), 'iif', o.ifname, 'lookup', String(o.table)]);
    }
    await ipIn(o.netnsPath, [f, 'route', 'replace', 'local', anyAddr(f), 'dev', 'lo', 'table', String(o.table)]);
  }
  // /proc/sys/net follows the netns of the thread that opens it.
  withNetns(o.netnsPath, () => writeNetSysctl(`ipv4/conf/${o.ifname}/arp_ignore`, '1'));
}

/** Remove what installPolicyRoute added (missing pieces are fine). */
export async function removePolicyRoute(o: PolicyRouteOptions): Promise<void> {
  for (const args of policyRouteDelCommands(o)) await ipIn(o.netnsPath, args).catch(() => undefined);
}

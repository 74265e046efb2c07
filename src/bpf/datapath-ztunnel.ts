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
  const out = new Set<string>();
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
      if (!local || f[3] !== '0A') continue; // 0A = TCP_LISTEN
      if (parseInt(local.slice(local.indexOf(':') + 1), 16) === port && f[9]) out.add(f[9]);
    }
  }
  return out;
}

/** Where a socket lives: which process holds it under which fd. */
export interface SocketHolder {
  readonly pid: number;
  readonly fd: number;
}

/** socket inode -> fd (the first one, in readdir order) over process `pid`'s fds; empty once it exited. */
export function socketFds(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  let names: string[];
  try {
    names = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return out; // exited
  }
  for (const name of names) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${name}`);
    } catch {
      continue; // closed meanwhile
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m?.[1] && !out.has(m[1])) out.set(m[1], Number(name));
  }
  return out;
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

// The ztunnel side of node-topology inbound: what ambpf_sk_lookup needs inside ztunnel's netns.
//  - ztunnel's 15006/15008 listener sockets in the ambpf_zt_listen SOCKMAP. ztunnel does not hand
//    them over, so the loader copies them out of its process with pidfd_getfd (Linux 5.6+, root):
//    /proc/<pid>/net/tcp{,6} names the listening sockets' inodes, /proc/<pid>/fd maps inodes to fds.
//  - the policy route that makes any destination arriving on eth0 local (`ip rule iif eth0 lookup
//    100`, `local 0.0.0.0/0 dev lo table 100`) and arp_ignore=1 on eth0 so ztunnel does not answer ARP
//    for the pods' addresses. Routing rules, not iptables.
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { promisify } from 'node:util';
import koffi from 'koffi';
import { AmbpfError, SystemError } from '../errors.ts';
import { withNetns } from '../libbpf/index.ts';
import { writeNetSysctl } from '../node/sysctl.ts';

const run = promisify(execFile);

const libc = koffi.load('libc.so.6');
const syscall = libc.func('long syscall(long nr, ...)') as (...args: unknown[]) => number | bigint;
const closeFd = libc.func('int close(int fd)') as (fd: number) => number;
const SYS_PIDFD_OPEN = 434;
const SYS_PIDFD_GETFD = 438;

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

/** fd numbers, in process `pid`, of the sockets with these inodes. */
function fdsOfInodes(pid: number, inodes: Set<string>): number[] {
  const fds: number[] = [];
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${name}`);
    } catch {
      continue; // closed meanwhile
    }
    const m = /^socket:\[(\d+)\]$/.exec(target);
    if (m && m[1] && inodes.has(m[1])) fds.push(Number(name));
  }
  return fds;
}

/**
 * Run fn with a duplicate (in this process) of the listener socket `pid` holds on `port`; the
 * duplicate is closed afterwards. Throws when the process has no such listener.
 */
export function withListenerFd<T>(pid: number, port: number, fn: (fd: number) => T): T {
  const fds = fdsOfInodes(pid, listeningInodes(pid, port));
  const theirs = fds[0];
  if (theirs === undefined) {
    throw new ZtunnelSetupError(`process ${pid} has no TCP socket listening on port ${port}; is ztunnel running and ready?`, { pid, port });
  }
  const pidfd = Number(syscall(SYS_PIDFD_OPEN, 'int', pid, 'uint', 0));
  if (pidfd < 0) throw new SystemError('pidfd_open', koffi.errno(), `cannot open process ${pid}`, { pid });
  try {
    const fd = Number(syscall(SYS_PIDFD_GETFD, 'int', pidfd, 'int', theirs, 'uint', 0));
    if (fd < 0) throw new SystemError('pidfd_getfd', koffi.errno(), `cannot copy fd ${theirs} out of process ${pid}`, { pid, fd: theirs });
    try {
      return fn(fd);
    } finally {
      closeFd(fd);
    }
  } finally {
    closeFd(pidfd);
  }
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
    throw new ZtunnelSetupError(`ip ${args.join(' ')} in ${netnsPath} failed: ${(e.stderr ?? e.message).trim()}`, { netnsPath }, );
  }
}

/** Install (idempotently) the policy route in ztunnel's netns, and arp_ignore on its interface. */
export async function installPolicyRoute(o: PolicyRouteOptions): Promise<void> {
  const rules = await ipIn(o.netnsPath, ['-4', 'rule', 'show', 'pref', String(o.pref)]);
  if (!rules.includes(`iif ${o.ifname} lookup ${o.table}`)) {
    await ipIn(o.netnsPath, ['-4', 'rule', 'add', 'pref', String(o.pref), 'iif', o.ifname, 'lookup', String(o.table)]);
  }
  await ipIn(o.netnsPath, ['-4', 'route', 'replace', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', String(o.table)]);
  // /proc/sys/net follows the netns of the thread that opens it.
  withNetns(o.netnsPath, () => writeNetSysctl(`ipv4/conf/${o.ifname}/arp_ignore`, '1'));
}

/** Remove what installPolicyRoute added (missing pieces are fine). */
export async function removePolicyRoute(o: PolicyRouteOptions): Promise<void> {
  await ipIn(o.netnsPath, ['-4', 'rule', 'del', 'pref', String(o.pref), 'iif', o.ifname, 'lookup', String(o.table)]).catch(() => undefined);
  await ipIn(o.netnsPath, ['-4', 'route', 'del', 'local', '0.0.0.0/0', 'dev', 'lo', 'table', String(o.table)]).catch(() => undefined);
}

// Where a pod's packets leave the node: the host-side interface of the /32 (or /128) route the CNI
// installed for its IP (Calico-style), with that interface's index (and, for ztunnel, its MAC).
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { readFileSync } from 'node:fs';
import { AmbpfError } from '../errors.ts';
import { ifIndex } from '../libbpf/index.ts';
import { bytesToIp } from '../ip.ts';

const run = promisify(execFile);

export interface HostLink {
  readonly ifname: string;
  readonly ifindex: number;
  readonly mac: string;
}

interface IpLink {
  ifindex?: number;
  ifname?: string;
  address?: string;
}

async function ipJson<T>(args: readonly string[], netnsPath?: string): Promise<T[]> {
  const argv = netnsPath ? ['--net=' + netnsPath, 'ip', '-j', ...args] : ['-j', ...args];
  try {
    const { stdout } = await run(netnsPath ? 'nsenter' : 'ip', argv, { maxBuffer: 64 * 1024 * 1024 });
    return stdout.trim() ? (JSON.parse(stdout) as T[]) : [];
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    throw new AmbpfError(`ip ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`, { netns: netnsPath });
  }
}

/** IPv4 from /proc/net/route's little-endian hex. */
function hexToIpv4(hex: string): string {
  const n = parseInt(hex, 16);
  return [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24].join('.');
}

/** IPv6 from /proc/net/ipv6_route's 32 hex digits (network order). */
function hexToIpv6(hex: string): string {
  return bytesToIp(Buffer.from(hex, 'hex'));
}

/**
 * The node's pod routes: IP -> host interface, for every host (/32, /128) route of the main table
 * in the netns this process is in. Read from /proc/net (no `ip` spawn per pass: this runs on every
 * reconcile, and a spawn costs more than the rest of the pass); ifindex via if_nametoindex. The MAC
 * is not read here (only ztunnel's is needed: see readLinkMac).
 */
export function readHostRoutes(procNet = '/proc/self/net'): Map<string, HostLink> {
  const out = new Map<string, HostLink>();
  const index = new Map<string, number>();
  const link = (ifname: string): HostLink | undefined => {
    let i = index.get(ifname);
    if (i === undefined) index.set(ifname, (i = ifIndex(ifname)));
    return i > 0 ? { ifname, ifindex: i, mac: '' } : undefined;
  };
  const v4 = readIfExists(`${procNet}/route`);
  for (const line of v4.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    if (f.length < 8 || f[7] !== 'FFFFFFFF' || f[0] === 'lo') continue;
    const l = link(f[0]!);
    if (l) out.set(hexToIpv4(f[1]!), l);
  }
  const v6 = readIfExists(`${procNet}/ipv6_route`);
  for (const line of v6.split('\n')) {
    const f = line.trim().split(/\s+/);
    // dest plen src splen nexthop metric refcnt use flags iface
    if (f.length < 10 || f[1] !== '80' || f[9] === 'lo') continue;
    const l = link(f[9]!);
    if (l) out.set(hexToIpv6(f[0]!), l);
  }
  return out;
}

function readIfExists(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return ''; // no IPv6 in this netns
  }
}

/** The MAC of an interface (of the netns at netnsPath, or ours). */
export async function readLinkMac(ifname: string, netnsPath?: string): Promise<string> {
  const [l] = await ipJson<IpLink>(['link', 'show', 'dev', ifname], netnsPath);
  return l?.address ?? '';
}

/** Interfaces of a netns (e.g. ztunnel's eth0 MAC), by name. */
export async function readLinks(netnsPath?: string): Promise<Map<string, HostLink>> {
  const out = new Map<string, HostLink>();
  for (const l of await ipJson<IpLink>(['link', 'show'], netnsPath)) {
    if (l.ifname && l.ifindex !== undefined)
      out.set(l.ifname, { ifname: l.ifname, ifindex: l.ifindex, mac: l.address ?? '' });
  }
  return out;
}

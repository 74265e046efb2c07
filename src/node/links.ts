// Where a pod's packets leave the node: the host-side interface of the /32 (or /128) route the CNI
// installed for its IP (Calico-style), with that interface's index and MAC. Read once per
// reconcile from `ip -j`, so the cost does not grow with a spawn per pod.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { AmbpfError } from '../errors.ts';

const run = promisify(execFile);

export interface HostLink {
  readonly ifname: string;
  readonly ifindex: number;
  readonly mac: string;
}

interface IpRoute { dst?: string; dev?: string; type?: string }
interface IpLink { ifindex?: number; ifname?: string; address?: string }

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

/** The node's pod routes: IP -> host interface, for every host (/32, /128) route in the main table. */
export async function readHostRoutes(netnsPath?: string): Promise<Map<string, HostLink>> {
  const [routes4, routes6, links] = await Promise.all([
    ipJson<IpRoute>(['-4', 'route', 'show', 'table', 'main'], netnsPath),
    ipJson<IpRoute>(['-6', 'route', 'show', 'table', 'main'], netnsPath),
    ipJson<IpLink>(['link', 'show'], netnsPath),
  ]);
  const byName = new Map<string, HostLink>();
  for (const l of links) {
    if (l.ifname && l.ifindex !== undefined) byName.set(l.ifname, { ifname: l.ifname, ifindex: l.ifindex, mac: l.address ?? '' });
  }
  const out = new Map<string, HostLink>();
  for (const r of [...routes4, ...routes6]) {
    if (!r.dst || !r.dev || (r.type && r.type !== 'unicast')) continue;
    const ip = r.dst.replace(/\/(32|128)$/, '');
    if (ip.includes('/')) continue; // a subnet route, not a pod
    const link = byName.get(r.dev);
    if (link) out.set(ip, link);
  }
  return out;
}

/** Interfaces of a netns (e.g. ztunnel's eth0 MAC), by name. */
export async function readLinks(netnsPath?: string): Promise<Map<string, HostLink>> {
  const out = new Map<string, HostLink>();
  for (const l of await ipJson<IpLink>(['link', 'show'], netnsPath)) {
    if (l.ifname && l.ifindex !== undefined) out.set(l.ifname, { ifname: l.ifname, ifindex: l.ifindex, mac: l.address ?? '' });
  }
  return out;
}

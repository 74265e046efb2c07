// Resolves the desired state's pods to kernel facts on this node: the pod's network namespace
// (via a process in its cgroup, as istio-cni does), that netns's cookie (what connect4 sees), and
// the host-side interface the CNI routes its IP to. A pod whose sandbox is not up yet is reported
// and retried; it never blocks the others.
import { netnsCookie, currentNetnsCookie } from '../libbpf/index.ts';
import { describeError } from '../errors.ts';
import type { DesiredPod, DesiredState, Problem } from '../state/desired.ts';
import { findPodProcesses, type PodProcess } from './procs.ts';
import { readHostRoutes, readLinkMac, readLinks, type HostLink } from './links.ts';

const ztunnelLinkCache = new Map<string, { podLink: HostLink | undefined; hostMac: string }>();

export interface ResolvedPod extends DesiredPod {
  readonly pid: number;
  /** Every process found in the pod's cgroup (the sandbox first): ztunnel's listeners live in one of them. */
  readonly pids: readonly number[];
  readonly netnsPath: string;
  readonly netnsCookie: bigint;
  /** The node-side interface of the pod's route; undefined if the CNI routes it some other way. */
  readonly hostLink: HostLink | undefined;
}

export interface ResolvedZtunnel extends ResolvedPod {
  /** ztunnel's eth0 inside its own netns. */
  readonly podLink: HostLink | undefined;
}

export interface Resolution {
  readonly pods: readonly ResolvedPod[];
  readonly ztunnel: ResolvedZtunnel | undefined;
  /** The cluster has a ztunnel pod for this node (even if it could not be resolved this pass). */
  readonly ztunnelWanted?: boolean;
  /** Pods that could not be resolved yet (no process, netns gone…): retried on the next pass. */
  readonly unresolved: readonly Problem[];
}

export interface DiscoveryOptions {
  readonly procRoot?: string;
  /** uid -> netns path the CNI plugin handed over (src/agent/cni.ts): such a pod resolves from it,
   * even before any process runs in it (pid 0, no pids). */
  readonly netnsHints?: ReadonlyMap<string, string>;
  /** false: no /proc scan; a pod with a netns hint resolves from it alone (pid 0), the others do not.
   * For a pod CNI ADD just handed over: no process to find yet, and its ADD waits for this pass. */
  readonly scanProcesses?: boolean;
}

/** An earlier resolution still holds: the pod's process still runs in that netns (no /proc scan). */
export function stillResolved(pod: ResolvedPod): boolean {
  if (pod.pid === 0) return false;
  try {
    return netnsCookie(`/proc/${pod.pid}/ns/net`) === pod.netnsCookie;
  } catch {
    return false; // it exited
  }
}

export async function resolveNode(desired: DesiredState, options: DiscoveryOptions = {}): Promise<Resolution> {
  const wanted = [...desired.ambientPods, ...(desired.ztunnel ? [desired.ztunnel] : [])];
  const [processes, routes] = await Promise.all([
    options.scanProcesses === false
      ? new Map<string, PodProcess[]>()
      : findPodProcesses(
          wanted.map((p) => p.uid),
          options.procRoot,
        ),
    readHostRoutes(),
  ]);
  const ownCookie = currentNetnsCookie();
  const unresolved: Problem[] = [];

  const fromHint = (pod: DesiredPod, netnsPath: string): ResolvedPod | undefined => {
    let cookie: bigint;
    try {
      cookie = netnsCookie(netnsPath);
    } catch (err) {
      const reason = `cannot read the netns ${netnsPath}: ${describeError(err)}`;
      unresolved.push({ object: `pod ${pod.namespace}/${pod.name}`, reason });
      return undefined;
    }
    if (cookie === ownCookie) {
      const reason = `the netns ${netnsPath} CNI gave is the node's own; refusing to redirect the node`;
      unresolved.push({ object: `pod ${pod.namespace}/${pod.name}`, reason });
      return undefined;
    }
    // The pod's processes in that netns (none yet during CNI ADD): ztunnel's listeners are read from one.
    const pids = (processes.get(pod.uid) ?? [])
      .map((p) => p.pid)
      .filter((pid) => {
        try {
          return netnsCookie(`/proc/${pid}/ns/net`) === cookie;
        } catch {
          return false;
        }
      });
    const hostLink = pod.ips.map((ip) => routes.get(ip)).find((l) => l !== undefined);
    return { ...pod, pid: pids[0] ?? 0, pids, netnsPath, netnsCookie: cookie, hostLink };
  };

  const resolve = (pod: DesiredPod): ResolvedPod | undefined => {
    const what = `pod ${pod.namespace}/${pod.name}`;
    const hint = options.netnsHints?.get(pod.uid);
    if (hint !== undefined) return fromHint(pod, hint);
    const procs = processes.get(pod.uid);
    if (!procs || procs.length === 0) {
      unresolved.push({
        object: what,
        reason: `no process found in a cgroup named pod${pod.uid} (sandbox not started yet?)`,
      });
      return undefined;
    }
    // All containers of a pod share its netns; the oldest process (procs.ts) is the sandbox (pause).
    for (const proc of procs) {
      const netnsPath = `/proc/${proc.pid}/ns/net`;
      let cookie: bigint;
      try {
        cookie = netnsCookie(netnsPath);
      } catch (err) {
        unresolved.push({ object: what, reason: `cannot read the netns of pid ${proc.pid}: ${describeError(err)}` });
        continue;
      }
      if (cookie === ownCookie) {
        unresolved.push({
          object: what,
          reason: `pid ${proc.pid} runs in the node's own network namespace; refusing to redirect the node`,
        });
        return undefined;
      }
      const hostLink = pod.ips.map((ip) => routes.get(ip)).find((l) => l !== undefined);
      return { ...pod, pid: proc.pid, pids: procs.map((p) => p.pid), netnsPath, netnsCookie: cookie, hostLink };
    }
    return undefined;
  };

  const pods: ResolvedPod[] = [];
  for (const pod of desired.ambientPods) {
    const r = resolve(pod);
    if (r) pods.push(r);
  }
  let ztunnel: ResolvedZtunnel | undefined;
  if (desired.ztunnel) {
    const r = resolve(desired.ztunnel);
    if (r) {
      // ztunnel's MACs take two `ip` spawns; they only change with its netns or its veth, so they
      // are read once per (netns, host veth) and not on every pass.
      const key = `${r.netnsCookie}/${r.hostLink?.ifindex ?? 0}`;
      let links = ztunnelLinkCache.get(key);
      if (!links) {
        try {
          const podLink = (await readLinks(r.netnsPath)).get('eth0');
          const hostMac = r.hostLink ? await readLinkMac(r.hostLink.ifname) : '';
          links = { podLink, hostMac };
          ztunnelLinkCache.clear();
          ztunnelLinkCache.set(key, links);
        } catch (err) {
          unresolved.push({
            object: `pod ${r.namespace}/${r.name}`,
            reason: `cannot read ztunnel's interfaces: ${describeError(err)}`,
          });
        }
      }
      const hostLink = r.hostLink && links ? { ...r.hostLink, mac: links.hostMac } : r.hostLink;
      ztunnel = { ...r, hostLink, podLink: links?.podLink };
    }
  }
  return { pods, ztunnel, ztunnelWanted: desired.ztunnel !== undefined, unresolved };
}

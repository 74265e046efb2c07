// From resolved pods to the exact map contents and attachments the node should have, and the
// difference to what the kernel holds now. Pure: the apply step does the I/O, so the diff logic is
// tested without a kernel and a restarted loader computes the same plan from the pins alone.
import type { Resolution } from '../node/discovery.ts';
import {
  POD_AMBIENT,
  POD_IS_ZTUNNEL,
  ztunnelValue,
  type NetnsValue,
  type PodValue,
  type ZtunnelValue,
} from '../bpf/schema.ts';

export type PodEntry = Readonly<PodValue>;
export type NetnsEntry = Readonly<NetnsValue>;
export type ZtunnelEntry = Readonly<ZtunnelValue>;

/** What the node's datapath should hold. */
export interface Target {
  /** ambpf_pods: pod IP -> entry, one per IP of a dual-stack pod. */
  readonly pods: ReadonlyMap<string, PodEntry>;
  /** ambpf_netns: netns cookie -> entry (mesh pods, and ztunnel's own netns flagged to bypass). */
  readonly netns: ReadonlyMap<bigint, NetnsEntry>;
  readonly ztunnel: ZtunnelEntry | undefined;
  /** Host-side interfaces of mesh pods, where inbound steering attaches. */
  readonly inbound: ReadonlySet<string>;
  /**
   * ztunnel exists in the cluster but could not be resolved this pass (a failed `ip`, a route not
   * there yet): keep what the kernel has rather than switch redirection off on a transient error.
   */
  readonly keepZtunnel?: boolean;
}

/** What the kernel holds now, read back from the pinned maps and links. */
export interface Current {
  readonly pods: ReadonlyMap<string, PodEntry>;
  readonly netns: ReadonlyMap<bigint, NetnsEntry>;
  readonly ztunnel: ZtunnelEntry | undefined;
  readonly inbound: ReadonlySet<string>;
}

export interface Plan {
  readonly podsSet: ReadonlyMap<string, PodEntry>;
  readonly podsDelete: readonly string[];
  readonly netnsSet: ReadonlyMap<bigint, NetnsEntry>;
  readonly netnsDelete: readonly bigint[];
  /** undefined: leave as is; null: clear (no ztunnel => nothing redirected); else write. */
  readonly ztunnel: ZtunnelEntry | null | undefined;
  readonly inboundAttach: readonly string[];
  readonly inboundDetach: readonly string[];
}

export function buildTarget(resolution: Resolution): Target {
  const pods = new Map<string, PodEntry>();
  const netns = new Map<bigint, NetnsEntry>();
  const inbound = new Set<string>();
  for (const pod of resolution.pods) {
    for (const ip of pod.ips) {
      pods.set(ip, { netnsCookie: pod.netnsCookie, hostIfindex: pod.hostLink?.ifindex ?? 0, flags: POD_AMBIENT });
    }
    // connect4 identifies a pod by its netns; the entry names the pod's first IP for inspection.
    netns.set(pod.netnsCookie, { podIp: pod.ips[0]!, flags: POD_AMBIENT });
    if (pod.hostLink) inbound.add(pod.hostLink.ifname);
  }
  const z = resolution.ztunnel;
  let ztunnel: ZtunnelEntry | undefined;
  // connect4 rewrites to ztunnel's IPv4 address: an IPv6-only ztunnel cannot serve the node topology.
  const zIp4 = z?.ips.find((ip) => !ip.includes(':'));
  if (z && z.hostLink && z.podLink && zIp4) {
    ztunnel = ztunnelValue({
      ip: zIp4,
      ip6: z.ips.find((ip) => ip.includes(':')) ?? null,
      netnsCookie: z.netnsCookie,
      hostIfindex: z.hostLink.ifindex,
      ifindex: z.podLink.ifindex,
      mac: z.podLink.mac,
      hostMac: z.hostLink.mac,
    });
    netns.set(z.netnsCookie, { podIp: ztunnel.ip, flags: POD_IS_ZTUNNEL });
  }
  return { pods, netns, ztunnel, inbound, keepZtunnel: ztunnel === undefined && resolution.ztunnelWanted === true };
}

/** Field by field; an optional field left out equals one read back as undefined (ambpf_netns.pod_ip6). */
function sameEntry(a: object, b: object): boolean {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...keys].every((k) => (a as Record<string, unknown>)[k] === (b as Record<string, unknown>)[k]);
}

function diffMap<K, V extends object>(
  target: ReadonlyMap<K, V>,
  current: ReadonlyMap<K, V>,
): { set: Map<K, V>; del: K[] } {
  const set = new Map<K, V>();
  for (const [k, v] of target) {
    const cur = current.get(k);
    if (!cur || !sameEntry(cur, v)) set.set(k, v);
  }
  const del = [...current.keys()].filter((k) => !target.has(k));
  return { set, del };
}

export function planReconcile(target: Target, current: Current): Plan {
  const pods = diffMap(target.pods, current.pods);
  const netns = diffMap(target.netns, current.netns);
  if (target.keepZtunnel) {
    // Keep ztunnel's own netns entry too: it is what makes ztunnel's sockets bypass connect4.
    netns.del = netns.del.filter((cookie) => (current.netns.get(cookie)!.flags & POD_IS_ZTUNNEL) === 0);
  }
  let ztunnel: ZtunnelEntry | null | undefined;
  if (target.keepZtunnel) ztunnel = undefined;
  else if (target.ztunnel === undefined) ztunnel = current.ztunnel === undefined ? undefined : null;
  else ztunnel = current.ztunnel && sameEntry(current.ztunnel, target.ztunnel) ? undefined : target.ztunnel;
  return {
    podsSet: pods.set,
    podsDelete: pods.del,
    netnsSet: netns.set,
    netnsDelete: netns.del,
    ztunnel,
    inboundAttach: [...target.inbound].filter((i) => !current.inbound.has(i)).sort(),
    inboundDetach: [...current.inbound].filter((i) => !target.inbound.has(i)).sort(),
  };
}

export function isEmptyPlan(plan: Plan): boolean {
  return (
    plan.podsSet.size === 0 &&
    plan.podsDelete.length === 0 &&
    plan.netnsSet.size === 0 &&
    plan.netnsDelete.length === 0 &&
    plan.ztunnel === undefined &&
    plan.inboundAttach.length === 0 &&
    plan.inboundDetach.length === 0
  );
}

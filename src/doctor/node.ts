// `ambpf doctor`'s node checks: the sysctls the datapath depends on (each with the value to set and
// why), and whether the node's pod capacity fits the per-pod maps. Advisory: a node may run the
// other topology, or its kubelet config may not be readable from here; the report says so and what to
// do, and `ok` (the exit code) stays about the kernel.
import { existsSync, readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { BpfMap } from '../libbpf/index.ts';
import { mapPin } from '../bpf/pins.ts';
import { outsideMessage, readZtunnelCgroupReport, ztunnelCgroupFile } from '../agent/ztunnel-cgroup.ts';

export interface NodeCheck {
  readonly group: 'sysctl' | 'capacity' | 'ztunnel';
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
  /** A warning: shown, but not a missing feature (the exit code ignores it). */
  readonly advisory: true;
}

/** A sysctl by its dotted name, from /proc/sys (this process's netns: the node's, for the DaemonSet). */
export function readSysctl(name: string): string | undefined {
  try {
    return readFileSync(`/proc/sys/${name.replace(/\./g, '/')}`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

interface SysctlRule {
  readonly name: string;
  readonly want: (v: string) => boolean;
  readonly set: string;
  readonly why: string;
}

/** What the datapath depends on. ambpf sets its own per-interface and per-pod values itself. */
const SYSCTL_RULES: readonly SysctlRule[] = [
  {
    name: 'net.ipv4.conf.all.rp_filter',
    want: (v) => v === '0',
    set: '0',
    why: "node topology: the effective rp_filter of ztunnel's host veth is max(all, veth); ztunnel's replies from pod addresses are dropped otherwise",
  },
  {
    name: 'net.ipv4.ip_default_ttl',
    want: (v) => v === '64',
    set: '64',
    why: "inpod: kubelet's probes are told from forwarded traffic by TTL 64 (AMBPF_NODE_TTL); with another value they go through ztunnel",
  },
  {
    name: 'net.core.bpf_jit_enable',
    want: (v) => v === '1',
    set: '1',
    why: 'the programs run interpreted otherwise (slower on every connect and packet)',
  },
  {
    name: 'net.ipv4.tcp_migrate_req',
    want: () => true,
    set: '-',
    why: 'inpod: ambpf sets it per pod so a ztunnel rolling upgrade moves queued connections; Linux 5.14+',
  },
];

export function sysctlChecks(read: (name: string) => string | undefined = readSysctl): NodeCheck[] {
  return SYSCTL_RULES.map((r) => {
    const v = read(r.name);
    if (v === undefined) {
      return {
        group: 'sysctl',
        name: r.name,
        ok: false,
        detail: `not present on this kernel: ${r.why}`,
        advisory: true,
      };
    }
    const ok = r.want(v);
    return {
      group: 'sysctl',
      name: r.name,
      ok,
      advisory: true,
      detail: ok ? `${v}` : `${v}; set ${r.name}=${r.set} (sysctl -w, and in /etc/sysctl.d to keep it): ${r.why}`,
    };
  });
}

export const KUBELET_CONFIG = '/var/lib/kubelet/config.yaml';
/** kubelet's own default when its config does not set maxPods. */
export const KUBELET_DEFAULT_MAX_PODS = 110;
/** The per-pod maps' defaults (bpf/include/ambpf_maps.h, bpf/ambpf_inpod.bpf.c) and entries per pod. */
const PER_POD_MAPS = [
  { map: 'ambpf_pods', perPod: 1, size: 16384 },
  { map: 'ambpf_netns', perPod: 1, size: 16384 },
  { map: 'ambpf_inpod_listen', perPod: 6, size: 98304 },
] as const;

export interface CapacityOptions {
  readonly bpffs: string;
  /** kubelet's config file (maxPods), default KUBELET_CONFIG. */
  readonly kubeletConfig?: string;
  /** The node's pod capacity when known otherwise (e.g. `kubectl get node -o jsonpath={.status.capacity.pods}`). */
  readonly nodeMaxPods?: number;
  /** The `--max-pods` the loader runs with, for maps not created yet. */
  readonly maxPods?: number;
}

/** kubelet's maxPods from its config file; undefined (with why) when it cannot tell. */
export function kubeletMaxPods(path: string): { maxPods: number; from: string } | { why: string } {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    return { why: `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})` };
  }
  let doc: unknown;
  try {
    doc = parse(text);
  } catch (err) {
    return { why: `${path} is not YAML: ${(err as Error).message.split('\n')[0]}` };
  }
  const v = doc !== null && typeof doc === 'object' ? (doc as { maxPods?: unknown }).maxPods : undefined;
  if (v === undefined) return { maxPods: KUBELET_DEFAULT_MAX_PODS, from: `${path} (no maxPods: kubelet's default)` };
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1)
    return { why: `${path}: maxPods is not a positive integer (${JSON.stringify(v)})` };
  return { maxPods: v, from: path };
}

/** How many pods each per-pod map holds: the pinned size if the map exists, else --max-pods or its default. */
export function mapPodCapacity(o: CapacityOptions): Array<{ map: string; pods: number; from: string }> {
  return PER_POD_MAPS.map((m) => {
    const pin = mapPin(o.bpffs, m.map);
    if (existsSync(pin)) {
      try {
        const map = BpfMap.openPinned(pin);
        try {
          return {
            map: m.map,
            pods: Math.floor(map.maxEntries / m.perPod),
            from: `pinned, max_entries ${map.maxEntries}`,
          };
        } finally {
          map.close();
        }
      } catch {
        // unreadable pin: fall back to the configured size
      }
    }
    const size = o.maxPods !== undefined ? o.maxPods * m.perPod : m.size;
    return {
      map: m.map,
      pods: Math.floor(size / m.perPod),
      from: o.maxPods !== undefined ? `--max-pods ${o.maxPods}` : `default max_entries ${m.size}`,
    };
  });
}

export function capacityCheck(o: CapacityOptions): NodeCheck {
  const path = o.kubeletConfig ?? KUBELET_CONFIG;
  const node = o.nodeMaxPods !== undefined ? { maxPods: o.nodeMaxPods, from: '--node-max-pods' } : kubeletMaxPods(path);
  const maps = mapPodCapacity(o);
  const fits = Math.min(...maps.map((m) => m.pods));
  const sizes = maps.map((m) => `${m.map} ${m.pods} pods (${m.from})`).join(', ');
  if ('why' in node) {
    return {
      group: 'capacity',
      name: 'pods per node',
      ok: false,
      advisory: true,
      detail:
        `cannot tell the node's pod capacity: ${node.why}; pass --kubelet-config F or --node-max-pods N ` +
        `(kubectl get node <name> -o jsonpath='{.status.capacity.pods}'). The maps hold ${fits} pods: ${sizes}`,
    };
  }
  const ok = node.maxPods <= fits;
  return {
    group: 'capacity',
    name: 'pods per node',
    ok,
    advisory: true,
    detail: ok
      ? `the node runs at most ${node.maxPods} pods (${node.from}); the maps hold ${fits}: ${sizes}`
      : `the node may run ${node.maxPods} pods (${node.from}) but the maps hold only ${fits} (${sizes}): pods beyond that are ` +
        'not captured (reported, never silently). Run the loader with --max-pods >= ' +
        `${node.maxPods} (after uninstall: a pinned map keeps its size)`,
  };
}

/**
 * inpod: ztunnel's own sockets must pass through the cgroup programs, so ztunnel must run inside the
 * loader's --cgroup (as a pod under kubepods does). Doctor cannot see ZDS; it reads what the running
 * loader found when each ztunnel connected (src/agent/ztunnel-cgroup.ts), beside its state file.
 */
export function ztunnelCgroupCheck(stateFile: string): NodeCheck {
  const name = 'inside --cgroup';
  const report = readZtunnelCgroupReport(stateFile);
  const need =
    "inpod: ztunnel must run inside the cgroup ambpf's programs are attached to (`ambpf run --cgroup`, " +
    'kubepods by default), as a ztunnel pod does';
  if (!report || report.ztunnels.length === 0) {
    return {
      group: 'ztunnel',
      name,
      ok: true,
      advisory: true,
      detail:
        `${need}; no connected ztunnel recorded in ${ztunnelCgroupFile(stateFile)} ` +
        '(the loader checks each one as it connects over ZDS)',
    };
  }
  const outside = report.ztunnels.filter((c) => c.placement === 'outside');
  if (outside.length > 0) {
    return {
      group: 'ztunnel',
      name,
      ok: false,
      advisory: true,
      detail: outside.map((c) => outsideMessage(report.attach, c)).join('; '),
    };
  }
  const pids = report.ztunnels.map((c) => `${c.pid} (${c.placement === 'inside' ? c.cgroup : 'cgroup not readable'})`);
  return {
    group: 'ztunnel',
    name,
    ok: true,
    advisory: true,
    detail: `ztunnel pid ${pids.join(', ')}: checked against ${report.attach} at ${report.updatedAt}`,
  };
}

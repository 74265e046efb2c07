// Istio 1.21+ in-pod redirection (docs/istio-ambient.md#istio-cnis-in-pod-rules) as NetnsRules, for either
// backend: the golden rules inside each mesh pod's netns with the 0x111 connmark policy route (v4
// and v6), and in the node's netns the SNAT of kubelet's probes to 169.254.7.127 for the node's
// mesh pods (a set of their IPs, one entry per pod tagged with its UID as istio-cni does).
import type { TestbedInfo } from '../testbed/types.ts';
import { inNetns } from '../testbed/run.ts';
import { isIP } from 'node:net';
import { existsSync } from 'node:fs';
import {
  hostIptables,
  hostNft,
  hostNftSets,
  inpodIptables,
  inpodNft,
  inpodPolicyRouting,
  iptTables,
  probeSetName,
  NFT_NAT,
  NFT_POD_TABLES,
  NO_OVERRIDES,
  ISTIO_DEFAULTS,
  type Backend,
  type IptRule,
  type IstioConfig,
  type PodOverrides,
} from './istio-rules.ts';
import type { IpsetMember, IptablesTable, NetnsRules } from './ruleset.ts';

function asTables(rules: readonly IptRule[]): IptablesTable[] {
  return iptTables(rules).map((t) => ({ table: t.table, chains: t.chains, rules: t.lines }));
}

/** Whether IPv6 is enabled on the netns's loopback (istio-cni adds the v6 local route only then). */
export async function loopbackIpv6(netnsPath: string): Promise<boolean> {
  const r = await inNetns(netnsPath, ['cat', '/proc/sys/net/ipv6/conf/lo/disable_ipv6'], { check: false });
  return r.code === 0 && r.stdout.trim() === '0';
}

export interface PodRulesOptions {
  readonly cfg?: IstioConfig;
  readonly overrides?: PodOverrides;
  /** IPv6 on the pod's lo (see loopbackIpv6); default true. */
  readonly v6Loopback?: boolean;
}

/** What istio-cni installs inside one pod's netns. */
export function inpodPodRules(netnsPath: string, backend: Backend = 'iptables', o: PodRulesOptions = {}): NetnsRules {
  const cfg = o.cfg ?? ISTIO_DEFAULTS;
  const overrides = o.overrides ?? NO_OVERRIDES;
  const routing = inpodPolicyRouting(cfg, o.v6Loopback ?? true);
  const base = { netnsPath, ipsets: [], ipRules: routing.rules, ipRoutes: routing.routes };
  if (backend === 'nftables') {
    return { ...base, iptables: [], ip6tables: [], nft: { script: inpodNft(cfg, overrides), tables: NFT_POD_TABLES } };
  }
  const r = inpodIptables(cfg, overrides);
  return { ...base, iptables: asTables(r.v4), ip6tables: asTables(r.v6) };
}

export interface ProbeTarget {
  readonly ip: string;
  readonly uid: string;
}

function members(pods: readonly ProbeTarget[], family: 4 | 6): IpsetMember[] {
  return pods.filter((p) => isIP(p.ip) === family).map((p) => ({ ip: p.ip, comment: p.uid }));
}

const nftElement = (m: IpsetMember, family: 4 | 6): string =>
  `add element inet ${NFT_NAT} ${probeSetName(family)} { ${m.ip} comment "${m.comment ?? ''}" }`;

/** The node's probe SNAT, with its set already holding `pods` (the node's mesh pods). */
export function inpodNodeRules(
  netnsPath: string,
  pods: readonly ProbeTarget[],
  backend: Backend = 'iptables',
  cfg: IstioConfig = ISTIO_DEFAULTS,
): NetnsRules {
  const families: (4 | 6)[] = cfg.ipv6 ? [4, 6] : [4];
  if (backend === 'nftables') {
    // Sets, then the rules (istio-cni's order: its `flush table` would empty sets filled before it).
    const elements = families.flatMap((f) => members(pods, f).map((m) => nftElement(m, f)));
    const script = [...hostNftSets(cfg), ...hostNft(cfg), ...elements];
    return {
      netnsPath,
      ipsets: [],
      iptables: [],
      ip6tables: [],
      nft: { script, tables: [`inet ${NFT_NAT}`] },
      ipRules: [],
      ipRoutes: [],
    };
  }
  const r = hostIptables(cfg);
  return {
    netnsPath,
    ipsets: families.map((f) => ({
      name: probeSetName(f),
      type: 'hash:ip',
      family: f === 4 ? 'inet' : 'inet6',
      comments: true,
      members: members(pods, f),
    })),
    iptables: asTables(r.v4),
    ip6tables: asTables(r.v6),
    ipRules: [],
    ipRoutes: [],
  };
}

/** Adds (or, with `del`, removes) one pod's IP in the node's probe set, as pods come and go. */
export async function updateProbeSet(
  netnsPath: string,
  backend: Backend,
  pod: ProbeTarget,
  del: boolean,
): Promise<void> {
  const family = isIP(pod.ip) === 6 ? 6 : 4;
  if (backend === 'nftables') {
    const line = del
      ? `delete element inet ${NFT_NAT} ${probeSetName(family)} { ${pod.ip} }`
      : nftElement({ ip: pod.ip, comment: pod.uid }, family);
    // Deleting an absent element fails; a pod leaving twice must not.
    await inNetns(netnsPath, ['nft', '-f', '-'], { input: line + '\n', check: !del });
    return;
  }
  const argv = del
    ? ['ipset', 'del', '-exist', probeSetName(family), pod.ip]
    : ['ipset', 'add', '-exist', probeSetName(family), pod.ip, 'comment', pod.uid];
  await inNetns(netnsPath, argv);
}

// ---- the testbed's in-pod path, installed in one go (bench and scenario tests) ----

/**
 * Every netns the in-pod path touches on this testbed, with its rules (nodes first). The testbed's
 * netns keep the kernel's IPv6 defaults, so IPv6 is on wherever the kernel has it.
 */
export function inpodPathRules(info: TestbedInfo, backend: Backend, cfg: IstioConfig = testbedConfig()): NetnsRules[] {
  const mesh = info.pods.filter((p) => p.mesh);
  const nodes = info.nodes.map((n) =>
    inpodNodeRules(
      n.netnsPath,
      mesh.filter((p) => p.node === n.name),
      backend,
      cfg,
    ),
  );
  return [...nodes, ...mesh.map((p) => inpodPodRules(p.netnsPath, backend, { cfg }))];
}

/** Istio's defaults, minus IPv6 on a kernel booted without it (ipv6.disable=1). */
export function testbedConfig(): IstioConfig {
  return { ...ISTIO_DEFAULTS, ipv6: existsSync('/proc/sys/net/ipv6') };
}

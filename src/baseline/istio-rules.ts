// istio-cni's in-pod and host redirection rules, both backends, as pure data: what Istio's node agent
// programs for an ambient pod (cni/pkg/iptables/iptables.go AppendInpodRules / AppendHostRules and
// cni/pkg/nftables/nftables.go, Istio 1.28+). The output is compared line for line with Istio's own
// golden files (test/baseline/golden/): the order of rules, chains and tables, and the spelling of
// every match (double spaces included), are Istio's, so a diff there is a bug here.
//
// Marks and ports are ztunnel's contract (docs/istio-ambient.md#ports-and-marks): 0x539/0xfff on
// ztunnel's own sockets, connmark 0x111/0xfff for the replies to its spoofed inbound connections,
// 15001 outbound, 15006 inbound plaintext, 15008 HBONE, 15053 DNS.

export type Backend = 'iptables' | 'nftables';
export const BACKENDS: readonly Backend[] = ['iptables', 'nftables'];

/** The node agent's global settings (istio-cni's AmbientConfig), with Istio's chart defaults. */
export interface IstioConfig {
  /** Redirect DNS (UDP/TCP 53) to ztunnel's 15053 (chart `ambient.dnsCapture`, default on). */
  readonly dns: boolean;
  /** Also program the v6 twins (chart `ambient.ipv6`, default on). */
  readonly ipv6: boolean;
  /** Source of kubelet's probes after the host SNAT; the pod accepts it without capture. */
  readonly probeV4: string;
  readonly probeV6: string;
  /** nftables host rule: whose sockets are kubelet's (istio-cni reads kubelet's UID from /proc). */
  readonly kubeletUid: number;
}

export const ISTIO_DEFAULTS: IstioConfig = {
  dns: true,
  ipv6: true,
  probeV4: '169.254.7.127',
  probeV6: 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff',
  kubeletUid: 0,
};

/** Per-pod annotations istio-cni honours (cni/pkg/nodeagent/net.go getPodLevelTrafficOverrides). */
export const ANNOTATION_BYPASS_INBOUND = 'ambient.istio.io/bypass-inbound-capture';
export const ANNOTATION_DNS_CAPTURE = 'ambient.istio.io/dns-capture';
export const ANNOTATION_VIRTUAL_INTERFACES = 'istio.io/reroute-virtual-interfaces';

export interface PodOverrides {
  /** "Ingress mode": no inbound capture (and no probe accept, which only inbound needs). */
  readonly ingress: boolean;
  /** undefined = the global setting. */
  readonly dns: boolean | undefined;
  /** Interfaces whose inbound TCP is treated as outbound (KubeVirt-style). */
  readonly virtualInterfaces: readonly string[];
}

export const NO_OVERRIDES: PodOverrides = { ingress: false, dns: undefined, virtualInterfaces: [] };

/** Go's strconv.ParseBool, which istio-cni uses: anything else is ignored, as if absent. */
function goBool(v: string | undefined): boolean | undefined {
  if (v === undefined) return undefined;
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(v)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(v)) return false;
  return undefined;
}

export function podOverrides(annotations: Readonly<Record<string, string>>): PodOverrides {
  const virt = annotations[ANNOTATION_VIRTUAL_INTERFACES];
  return {
    ingress: goBool(annotations[ANNOTATION_BYPASS_INBOUND]) ?? false,
    dns: goBool(annotations[ANNOTATION_DNS_CAPTURE]),
    virtualInterfaces:
      virt === undefined
        ? []
        : virt
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean),
  };
}

// ---- iptables ----

export type IptTableName = 'mangle' | 'nat' | 'raw';

/** One iptables-restore line (`-A CHAIN …` or `-I CHAIN N …`) with the table and chain it goes to. */
export interface IptRule {
  readonly table: IptTableName;
  readonly chain: string;
  readonly line: string;
}

export interface IptRules {
  readonly v4: readonly IptRule[];
  /** Empty when IPv6 is off. */
  readonly v6: readonly IptRule[];
}

export const CHAIN_PRERT = 'ISTIO_PRERT';
export const CHAIN_OUTPUT = 'ISTIO_OUTPUT';
export const CHAIN_POSTRT = 'ISTIO_POSTRT';
export const PROBE_SET = 'istio-inpod-probes';
export const probeSetName = (family: 4 | 6): string => `${PROBE_SET}-v${family}`;

const MARK = '0x539/0xfff';
const CONNMARK = '0x111/0xfff';
const LOCALHOST = { 4: '127.0.0.1/32', 6: '::1/128' } as const;

/** Collects rules in append order for both families; `each` writes a family-specific twin. */
class IptBuilder {
  readonly v4: IptRule[] = [];
  readonly v6: IptRule[] = [];
  private readonly ipv6: boolean;
  constructor(ipv6: boolean) {
    this.ipv6 = ipv6;
  }
  both(table: IptTableName, chain: string, spec: string): void {
    this.each(table, chain, () => spec);
  }
  each(table: IptTableName, chain: string, spec: (f: 4 | 6) => string): void {
    this.v4.push({ table, chain, line: `-A ${chain} ${spec(4)}` });
    if (this.ipv6) this.v6.push({ table, chain, line: `-A ${chain} ${spec(6)}` });
  }
}

const redirectDns = (cfg: IstioConfig, o: PodOverrides): boolean => o.dns ?? cfg.dns;

/** The rules inside one pod's netns. */
export function inpodIptables(cfg: IstioConfig, o: PodOverrides = NO_OVERRIDES): IptRules {
  const b = new IptBuilder(cfg.ipv6);
  const dns = redirectDns(cfg, o);
  const probe = (f: 4 | 6): string => (f === 4 ? cfg.probeV4 : cfg.probeV6);
  b.both('mangle', 'PREROUTING', `-j ${CHAIN_PRERT}`);
  b.both('mangle', 'OUTPUT', `-j ${CHAIN_OUTPUT}`);
  b.both('nat', 'OUTPUT', `-j ${CHAIN_OUTPUT}`);
  if (dns) {
    b.both('raw', 'PREROUTING', `-j ${CHAIN_PRERT}`);
    b.both('raw', 'OUTPUT', `-j ${CHAIN_OUTPUT}`);
  }
  b.both('nat', 'PREROUTING', `-j ${CHAIN_PRERT}`);
  for (const vi of o.virtualInterfaces) {
    b.both('nat', CHAIN_PRERT, `-i ${vi} -p tcp -j REDIRECT --to-ports 15001`);
    b.both('nat', CHAIN_PRERT, `-i ${vi} -p tcp -j RETURN`);
  }
  // Packets of ztunnel's (marked) sockets mark their connection: the app's replies find their way back.
  b.both('mangle', CHAIN_PRERT, `-m mark --mark ${MARK} -j CONNMARK --set-xmark ${CONNMARK}`);
  if (!o.ingress) b.each('nat', CHAIN_PRERT, (f) => `-s ${probe(f)} -p tcp -m tcp -j ACCEPT`);
  b.each('nat', CHAIN_OUTPUT, (f) => `-d ${probe(f)} -p tcp -m tcp -j ACCEPT`);
  if (!o.ingress) {
    b.each(
      'nat',
      CHAIN_PRERT,
      (f) => `! -d ${LOCALHOST[f]} -p tcp ! --dport 15008 -m mark ! --mark ${MARK} -j REDIRECT --to-ports 15006`,
    );
  }
  b.both(
    'mangle',
    CHAIN_OUTPUT,
    `-m connmark --mark ${CONNMARK} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff`,
  );
  if (dns) {
    b.both(
      'nat',
      CHAIN_OUTPUT,
      `! -o lo -p udp -m mark ! --mark ${MARK} -m udp --dport 53 -j REDIRECT --to-port 15053`,
    );
    b.each(
      'nat',
      CHAIN_OUTPUT,
      (f) => `! -d ${LOCALHOST[f]} -p tcp --dport 53 -m mark ! --mark ${MARK} -j REDIRECT --to-ports 15053`,
    );
    // ztunnel's upstream DNS and the app's DNS answers get their own conntrack zone: the REDIRECT of
    // the app's query and ztunnel's own query to the same server must not share an entry.
    b.both('raw', CHAIN_OUTPUT, `-p udp -m mark --mark ${MARK} -m udp --dport 53 -j CT --zone 1`);
    b.both('raw', CHAIN_PRERT, `-p udp -m mark ! --mark ${MARK} -m udp --sport 53 -j CT --zone 1`);
  }
  b.both('nat', CHAIN_OUTPUT, `-p tcp -m mark --mark ${CONNMARK} -j ACCEPT`);
  b.each('nat', CHAIN_OUTPUT, (f) => `! -d ${LOCALHOST[f]} -o lo -j ACCEPT`);
  b.each(
    'nat',
    CHAIN_OUTPUT,
    (f) => `! -d ${LOCALHOST[f]} -p tcp -m mark ! --mark ${MARK} -j REDIRECT --to-ports 15001`,
  );
  return { v4: b.v4, v6: b.v6 };
}

/** The node's rules: kubelet's probes to mesh pods leave with the probe source. */
export function hostIptables(cfg: IstioConfig): IptRules {
  const rules = (f: 4 | 6): IptRule[] => [
    { table: 'nat', chain: 'POSTROUTING', line: `-I POSTROUTING 1 -j ${CHAIN_POSTRT}` },
    {
      table: 'nat',
      chain: CHAIN_POSTRT,
      line: `-A ${CHAIN_POSTRT} -m owner --socket-exists -p tcp -m set --match-set ${probeSetName(f)} dst -j SNAT --to-source ${f === 4 ? cfg.probeV4 : cfg.probeV6}`,
    },
  ];
  return { v4: rules(4), v6: cfg.ipv6 ? rules(6) : [] };
}

const BUILTIN_CHAINS = new Set(['PREROUTING', 'INPUT', 'FORWARD', 'OUTPUT', 'POSTROUTING']);

/** The chain a rule jumps to (`… -j X`), if it is a user chain. */
function jumpTarget(line: string): string | undefined {
  const m = / -j (\S+)$/.exec(line);
  return m?.[1] && /^[A-Z_]+$/.test(m[1]) && m[1].startsWith('ISTIO_') ? m[1] : undefined;
}

/** Per table (sorted by name, as Istio emits them): its user chains in Istio's order, then its rules. */
export function iptTables(rules: readonly IptRule[]): { table: IptTableName; chains: string[]; lines: string[] }[] {
  const byTable = new Map<IptTableName, { chains: string[]; lines: string[] }>();
  const get = (t: IptTableName): { chains: string[]; lines: string[] } => {
    let e = byTable.get(t);
    if (!e) byTable.set(t, (e = { chains: [], lines: [] }));
    return e;
  };
  // Chains are declared in the order their first rule was appended, then chains only jumped to.
  for (const r of rules) {
    const e = get(r.table);
    if (!BUILTIN_CHAINS.has(r.chain) && !e.chains.includes(r.chain)) e.chains.push(r.chain);
  }
  for (const r of rules) {
    const e = get(r.table);
    const target = jumpTarget(r.line);
    if (target && !e.chains.includes(target)) e.chains.push(target);
  }
  for (const r of rules) get(r.table).lines.push(r.line);
  return [...byTable.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([table, e]) => ({ table, ...e }));
}

/** iptables-restore input in Istio's form (`* table`, `-N CHAIN`, rules, `COMMIT`). */
export function restoreText(rules: readonly IptRule[]): string {
  const out: string[] = [];
  for (const t of iptTables(rules)) out.push(`* ${t.table}`, ...t.chains.map((c) => `-N ${c}`), ...t.lines, 'COMMIT');
  return out.length === 0 ? '' : out.join('\n') + '\n';
}

// ---- nftables ----

export const NFT_NAT = 'istio-ambient-nat';
export const NFT_MANGLE = 'istio-ambient-mangle';
export const NFT_RAW = 'istio-ambient-raw';
type NftTable = typeof NFT_NAT | typeof NFT_MANGLE | typeof NFT_RAW;

interface NftRule {
  readonly table: NftTable;
  readonly chain: string;
  readonly rule: string;
}

/** Base chains per table: name and its `{ type … hook … priority … ; }`. */
const NFT_BASE_CHAINS: Readonly<Record<NftTable, readonly [string, string][]>> = {
  [NFT_NAT]: [
    ['prerouting', 'type nat hook prerouting priority -100'],
    ['output', 'type nat hook output priority -100'],
  ],
  [NFT_MANGLE]: [
    ['prerouting', 'type filter hook prerouting priority -150'],
    ['output', 'type route hook output priority -150'],
  ],
  [NFT_RAW]: [
    ['prerouting', 'type filter hook prerouting priority -300'],
    ['output', 'type filter hook output priority -300'],
  ],
};

/** The `nft -f` transaction for one pod's netns: tables nat, mangle, raw (each only if it has rules). */
export function inpodNft(cfg: IstioConfig, o: PodOverrides = NO_OVERRIDES): string[] {
  const rules: NftRule[] = [];
  const add = (table: NftTable, chain: string, rule: string): void => {
    rules.push({ table, chain, rule });
  };
  const v6 = (table: NftTable, chain: string, rule: string): void => {
    if (cfg.ipv6) add(table, chain, rule);
  };
  const dns = redirectDns(cfg, o);
  add(NFT_MANGLE, 'prerouting', 'jump istio-prerouting');
  add(NFT_MANGLE, 'output', 'jump istio-output');
  add(NFT_NAT, 'output', 'jump istio-output');
  if (dns) {
    add(NFT_RAW, 'prerouting', 'jump istio-prerouting');
    add(NFT_RAW, 'output', 'jump istio-output');
  }
  add(NFT_NAT, 'prerouting', 'jump istio-prerouting');
  for (const vi of o.virtualInterfaces) {
    add(NFT_NAT, 'istio-prerouting', `iifname ${vi} meta l4proto tcp counter redirect to :15001`);
    add(NFT_NAT, 'istio-prerouting', `iifname ${vi} meta l4proto tcp counter return`);
  }
  // Spacing as Istio's builder joins its tokens ("… | " + " " + "0x111"): the golden files keep it.
  add(NFT_MANGLE, 'istio-prerouting', 'meta mark & 0xfff == 0x539 counter ct mark set ct mark & 0xfffff000 |  0x111');
  if (!o.ingress) {
    add(NFT_NAT, 'istio-prerouting', `meta l4proto tcp ip saddr ${cfg.probeV4} counter accept`);
    v6(NFT_NAT, 'istio-prerouting', `meta l4proto tcp ip6 saddr ${cfg.probeV6} counter accept`);
  }
  add(NFT_NAT, 'istio-output', `meta l4proto tcp ip daddr ${cfg.probeV4} counter accept`);
  v6(NFT_NAT, 'istio-output', `meta l4proto tcp ip6 daddr ${cfg.probeV6} counter accept`);
  if (!o.ingress) {
    add(
      NFT_NAT,
      'istio-prerouting',
      'ip daddr != 127.0.0.1/32 tcp dport != 15008 mark and 0xfff  != 0x539 counter redirect to :15006',
    );
    v6(
      NFT_NAT,
      'istio-prerouting',
      'ip6 daddr != ::1/128 tcp dport != 15008 mark and 0xfff != 0x539 counter redirect to :15006',
    );
  }
  add(NFT_MANGLE, 'istio-output', 'ct mark and 0xfff == 0x111 counter meta mark set ct mark');
  if (dns) {
    add(NFT_NAT, 'istio-output', 'oifname != lo mark and 0xfff != 0x539 udp dport 53 counter redirect to :15053');
    add(
      NFT_NAT,
      'istio-output',
      'ip daddr != 127.0.0.1/32 tcp dport 53 mark and 0xfff != 0x539 counter redirect to :15053',
    );
    v6(NFT_NAT, 'istio-output', 'ip6 daddr != ::1/128 tcp dport 53 mark and 0xfff != 0x539 counter redirect to :15053');
    add(NFT_RAW, 'istio-output', 'udp dport 53 meta mark and 0xfff == 0x539 counter ct zone set 1');
    add(NFT_RAW, 'istio-prerouting', 'udp sport 53 meta mark and 0xfff != 0x539 counter ct zone set 1');
  }
  add(NFT_NAT, 'istio-output', 'meta l4proto tcp mark and 0xfff == 0x111 counter accept');
  add(NFT_NAT, 'istio-output', 'oifname lo ip daddr != 127.0.0.1/32 counter accept');
  v6(NFT_NAT, 'istio-output', 'oifname lo ip6 daddr != ::1/128 counter accept');
  add(
    NFT_NAT,
    'istio-output',
    'meta l4proto tcp ip daddr != 127.0.0.1/32 mark and 0xfff != 0x539 counter redirect to :15001',
  );
  v6(
    NFT_NAT,
    'istio-output',
    'meta l4proto tcp ip6 daddr != ::1/128 mark and 0xfff != 0x539 counter redirect to :15001',
  );

  const out: string[] = [];
  for (const table of [NFT_NAT, NFT_MANGLE, NFT_RAW] as const) {
    const mine = rules.filter((r) => r.table === table);
    if (mine.length === 0) continue;
    out.push(`add table inet ${table}`, `flush table inet ${table}`);
    for (const [name, spec] of NFT_BASE_CHAINS[table]) out.push(`add chain inet ${table} ${name} { ${spec} ; }`);
    out.push(`add chain inet ${table} istio-prerouting`, `add chain inet ${table} istio-output`);
    for (const r of mine) out.push(`add rule inet ${table} ${r.chain} ${r.rule}`);
  }
  return out;
}

/** The nft tables inpodNft may create (removal deletes those present). */
export const NFT_POD_TABLES: readonly string[] = [NFT_NAT, NFT_MANGLE, NFT_RAW].map((t) => `inet ${t}`);

const SET_COMMENT = 'UUID of the pods that are part of ambient mesh';

/**
 * The node's sets of mesh pod IPs (istio-cni's HostNftSetManager, created before the rules) and
 * the postrouting SNAT of kubelet's sockets to those IPs. Sets come first: the rules name them.
 */
export function hostNftSets(cfg: IstioConfig): string[] {
  return [
    `add table inet ${NFT_NAT}`,
    `add set inet ${NFT_NAT} ${probeSetName(4)} { type ipv4_addr ; comment "${SET_COMMENT}" ; }`,
    ...(cfg.ipv6 ? [`add set inet ${NFT_NAT} ${probeSetName(6)} { type ipv6_addr ; comment "${SET_COMMENT}" ; }`] : []),
  ];
}

export function hostNft(cfg: IstioConfig): string[] {
  const rule = (f: 4 | 6): string =>
    `add rule inet ${NFT_NAT} postrouting meta l4proto tcp skuid ${cfg.kubeletUid} ${f === 4 ? 'ip' : 'ip6'} daddr @${probeSetName(f)} counter snat to ${f === 4 ? cfg.probeV4 : cfg.probeV6}`;
  return [
    `add table inet ${NFT_NAT}`,
    `flush table inet ${NFT_NAT}`,
    `add chain inet ${NFT_NAT} postrouting { type nat hook postrouting priority 100 ; }`,
    rule(4),
    ...(cfg.ipv6 ? [rule(6)] : []),
  ];
}

// ---- policy routing (both backends; cni/pkg/iptables/iptables_linux.go) ----

/** `ip rule` / `ip route` specs; a leading "-6 " means the v6 twin. */
export function inpodPolicyRouting(cfg: IstioConfig, v6Loopback: boolean): { rules: string[]; routes: string[] } {
  const rule = 'fwmark 0x111/0xfff pref 32764 lookup 100';
  return {
    rules: [rule, ...(cfg.ipv6 ? [`-6 ${rule}`] : [])],
    // istio-cni skips the v6 local route when lo has IPv6 disabled (the kernel would refuse it).
    routes: ['local 0.0.0.0/0 dev lo table 100', ...(cfg.ipv6 && v6Loopback ? ['-6 local ::/0 dev lo table 100'] : [])],
  };
}

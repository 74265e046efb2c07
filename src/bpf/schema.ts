// TS mirror of bpf/include/ambpf.h: the constants and flag bits, the counter indices of ambpf_stats,
// and one declarative description per shared struct (STRUCTS: C field, offset, type) from which
// every map key/value codec derives (src/bpf/layout.ts). test/bpf/schema-layout.test.ts compiles
// ambpf.h with gcc and checks every struct size, field offset and field size, every enum value and
// every AMBPF_* constant here against the C compiler's: change both sides together.
//
// Conventions (as in ambpf.h): addresses are 16 bytes, IPv4 as v4-mapped IPv6, network order; ports
// inside keys/values are network order unless the C field ends in _host; everything else is the
// host's (little-endian) order, as the kernel stores it.
import { ipToBytes, isV4Mapped, isZeroIp } from '../ip.ts';
import * as L from './layout.ts';
import { SchemaError, Struct, field } from './layout.ts';

// ---- constants (ambpf.h) ----
export const ZTUNNEL_MARK = 0x539;
export const ZTUNNEL_MARK_MASK = 0xfff;
export const PORT_OUTBOUND = 15001;
export const PORT_INBOUND = 15006;
export const PORT_HBONE = 15008;
export const PORT_DNS = 15053;
export const MAX_EXCLUDED_PORTS = 16;
export const MAX_NODE_IPS = 8;
export const LISTENER_INBOUND = 0;
export const LISTENER_HBONE = 1;
export const LISTENER_SLOTS = 2;
/** ztunnel's 15001 (AMBPF_LISTENER_OUTBOUND): after the second listeners (2, 3) of the two above. */
export const LISTENER_OUTBOUND = 4;

export const POD_AMBIENT = 1 << 0;
export const POD_OPT_OUT = 1 << 1;
export const POD_DNS_CAPTURE = 1 << 2;
export const POD_IS_ZTUNNEL = 1 << 3;
export const POD_NO_DNS_CAPTURE = 1 << 4;
/** ambpf_netns: connect4/6 keep the destination (AMBPF_POD_LOCAL_ROUTE in bpf/include/ambpf.h). */
export const POD_LOCAL_ROUTE = 1 << 5;
/** The first kernel where POD_LOCAL_ROUTE can be set: sk_lookup's ingress_ifindex (inpod_arrived_on_lo). */
export const LOCAL_ROUTE_KERNEL = [5, 17] as const;
export const ZT_READY = 1 << 0;
export const CFG_SPLICE = 1 << 0;
export const CFG_INPOD = 1 << 1;
export const CFG_FAIL_OPEN = 1 << 2;
export const CFG_NO_DNS_CAPTURE = 1 << 3;
export const MARK_ORIG_SRC = 0x1000;
/** DNS capture (inpod): per-socket server slots, named by source addresses 127.0.53.<slot + 1>. */
export const DNS_SLOTS = 4;
export const DNS_SLOT_NET = 0x7f003500;
export const DNS_PORT = 53;
export const SPLICE_UNDECIDED = 0;
export const SPLICE_ON = 1;
export const SPLICE_OFF = 2;
export const INPOD_SK_APP = 0;
export const INPOD_SK_ACCEPTED = 1;
export const INPOD_SK_HANDED = 2;
/** +1 on ambpf_pair.closed through the 32-bit word at splice_fwd (bpf/include/ambpf.h). */
export const PAIR_CLOSED_ONE = 1 << 24;
/** AMBPF_* macros of ambpf.h the loader has no use for (the layout test mirrors every other one). */
export const C_ONLY_CONSTANTS = ['NODE_TTL'] as const;

export const AF_INET = 2;
export const AF_INET6 = 10;
/** Default kubelet probe source (istio-cni SNATs probes to it); never redirected. */
export const PROBE_IP = '169.254.7.127';
export const PROBE_IP6 = 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff';

/** ambpf_stats indices, in the order of `enum ambpf_stat` (names without the AMBPF_STAT_ prefix). */
export const STAT_NAMES = [
  'connect4_redirected',
  'connect4_not_ambient',
  'connect4_bypass_mark',
  'connect4_bypass_ztunnel',
  'connect4_bypass_dst',
  'connect4_bypass_port',
  'connect4_no_ztunnel',
  'connect4_error',
  'connect6_redirected',
  'connect6_bypass',
  'connect6_error',
  'sockops_pair_added',
  'sockops_pair_closed',
  'sockops_stale_deleted',
  'sockops_sockhash_added',
  'sockops_error',
  'skmsg_spliced',
  'skmsg_spliced_bytes',
  'skmsg_passed',
  'skmsg_miss',
  'getsockopt_answered',
  'getsockopt_miss',
  'getsockopt_error',
  'getpeername_restored',
  'tc_steered',
  'tc_pass_ztunnel',
  'tc_pass_probe',
  'tc_pass_not_ambient',
  'tc_pass_pod_flow',
  'tc_error',
  'sklookup_assigned',
  'sklookup_no_listener',
  'sklookup_error',
  'sklookup_pass_probe',
  'sklookup_pass_not_ambient',
  'tc_pass_local',
  'tc_rst_cloned',
  'sockops_outflow_added',
  'sklookup_refused',
  'sklookup_pass_ztunnel',
  'orig_src_marked',
  'connect4_fail_open',
  'dns_redirected',
  'dns_bypass',
  'dns_restored',
  'dns_slot_reused',
  'dns_error',
  'dns_answer_source',
  // Failed inserts by the programs, one per map (metrics/map-health.ts names the map of each).
  'mapfull_pair_dst',
  'mapfull_outflow',
  'mapfull_sockhash',
  'mapfull_orig_dst',
  'mapfull_inpod_closed',
  'mapfull_inpod_origsrc',
  'mapfull_inpod_nodesyn',
  'mapfull_inpod_sk',
  'mapfull_inpod_dns',
  'inpod_handed',
  'inpod_closed_early',
  'mapfull_outflow6',
  'inpod_kept_dst',
  'sklookup_outbound',
] as const;
export type StatName = (typeof STAT_NAMES)[number];
export const STAT_MAX = STAT_NAMES.length;
export type Stats = Record<StatName, bigint>;

export function statIndex(name: StatName): number {
  return STAT_NAMES.indexOf(name);
}

/** Sum one ambpf_stats entry over CPUs (each per-CPU value is a u64). */
export function sumPerCpu(values: readonly Uint8Array[]): bigint {
  let sum = 0n;
  for (const v of values) sum += L.u64.decode(v, 0);
  return sum;
}

// ---- structs: one description per struct of ambpf.h (C field, offset, type); the codecs below and
// the layout test derive from it (src/bpf/layout.ts) ----
export interface PodValue {
  netnsCookie: bigint;
  hostIfindex: number;
  flags: number;
}
/** podIp: the IPv4 address (an IPv6-only pod's IPv6 one); podIp6 (inpod): the IPv6 address of a pod that
 * has one, absent otherwise (decode omits it for all-zero bytes, so entries compare field by field). */
export interface NetnsValue {
  podIp: string;
  flags: number;
  podIp6?: string;
}
export interface ZtunnelValue {
  ip: string;
  /** IPv6 address, or null when ztunnel has none. */
  ip6: string | null;
  netnsCookie: bigint;
  /** ztunnel's host-side veth ifindex in the node netns (tc redirects there). */
  hostIfindex: number;
  /** ztunnel's eth0 ifindex inside its netns (informational). */
  ifindex: number;
  /** ztunnel's eth0 MAC. */
  mac: string;
  /** MAC of ztunnel's host-side veth. */
  hostMac: string;
  portOut: number;
  portIn: number;
  portHbone: number;
  portDns: number;
  mark: number;
  markMask: number;
  flags: number;
}
export interface ConfigValue {
  flags: number;
  spliceMinBytes: number;
  probeIp: string;
  probeIp6: string;
  excludedPorts: number[];
  nodeIps: string[];
  logLevel: number;
}
export interface OrigDst {
  ip: string;
  port: number;
  family: number;
}
export interface Tuple {
  localIp: string;
  localPort: number;
  remoteIp: string;
  remotePort: number;
}
/** ztSeen: ztunnel's accepted socket will report its close; closed: how many of the two sockets have
 * closed (the entry goes at 2). Both are the datapath's; the loader never writes them. */
export interface PairValue {
  orig: OrigDst;
  spliceFwd: number;
  spliceRev: number;
  ztSeen?: number;
  closed?: number;
}
export interface Flow4 {
  saddr: string;
  daddr: string;
  sport: number;
  dport: number;
}
/** role: INPOD_SK_APP (an app socket, or ztunnel's tagged listener), INPOD_SK_ACCEPTED (ztunnel's
 * accepted socket carrying its client's original dst) or INPOD_SK_HANDED (an app socket whose original
 * ztunnel's accepted socket took). */
export interface InpodSk {
  orig: OrigDst | null;
  netnsCookie: bigint;
  role?: number;
}
export interface InpodKey {
  netnsCookie: bigint;
  tuple: Tuple;
}
/** ambpf_inpod_lkey: pod IP + listener slot (LISTENER_INBOUND / LISTENER_HBONE). */
export interface InpodListenKey {
  podIp: string;
  slot: number;
}
/** ambpf_inpod_dns value: the servers a UDP socket sent captured queries to (null: a free slot). */
export interface InpodDns {
  servers: Array<OrigDst | null>;
  last: number;
  next: number;
}

const ORIG = new Struct<OrigDst>('ambpf_orig', 20, {
  ip: field('ip', 0, L.ip),
  port: field('port', 16, L.be16),
  family: field('family', 18, L.u16),
});
/** An orig that was never set (family 0) reads as null. */
/** ambpf_netns.pod_ip6: absent (all zero) for a pod with no IPv6 address; an IPv4 address is refused. */
const optionalIp6: L.FieldType<string | undefined> = {
  size: 16,
  encode: (b, off, v) => {
    if (v === undefined) return;
    if (isV4Mapped(ipToBytes(v))) throw new SchemaError(`podIp6 must be IPv6 (got ${v}).`);
    L.ip.encode(b, off, v);
  },
  decode: (b, off) => (isZeroIp(b.subarray(off, off + 16)) ? undefined : L.ip.decode(b, off)),
};
const optionalOrig = L.nullable(
  ORIG,
  (b, off) => ORIG.fields.family.type.decode(b, off + ORIG.fields.family.offset) === 0,
);
const TUPLE = new Struct<Tuple>('ambpf_tuple', 36, {
  localIp: field('local_ip', 0, L.ip),
  remoteIp: field('remote_ip', 16, L.ip),
  localPort: field('local_port', 32, L.be16),
  remotePort: field('remote_port', 34, L.be16),
});
const ZERO_PORT = (p: number): boolean => p === 0;

/** Every struct ambpf.h shares with the loader, by its C name. */
export const STRUCTS = {
  ambpf_ip: new Struct<{ addr: string }>('ambpf_ip', 16, { addr: field('addr', 0, L.ip) }),
  ambpf_pod: new Struct<PodValue>('ambpf_pod', 16, {
    netnsCookie: field('netns_cookie', 0, L.u64),
    hostIfindex: field('host_ifindex', 8, L.u32),
    flags: field('flags', 12, L.u32),
  }),
  ambpf_netns: new Struct<NetnsValue>('ambpf_netns', 40, {
    podIp: field('pod_ip', 0, L.ip),
    flags: field('flags', 16, L.u32),
    podIp6: field('pod_ip6', 24, optionalIp6),
  }),
  ambpf_ztunnel: new Struct<ZtunnelValue>('ambpf_ztunnel', 80, {
    ip: field('ip', 0, L.ipv4Mapped("ztunnel's ip (put an IPv6 address in ip6)")),
    ip6: field('ip6', 16, L.optionalIp),
    netnsCookie: field('netns_cookie', 32, L.u64),
    hostIfindex: field('host_ifindex', 40, L.u32),
    ifindex: field('ifindex', 44, L.u32),
    mac: field('mac', 48, L.mac),
    hostMac: field('host_mac', 54, L.mac),
    portOut: field('port_out_host', 60, L.u16),
    portIn: field('port_in_host', 62, L.u16),
    portHbone: field('port_hbone_host', 64, L.u16),
    portDns: field('port_dns_host', 66, L.u16),
    mark: field('mark', 68, L.u32),
    markMask: field('mark_mask', 72, L.u32),
    flags: field('flags', 76, L.u32),
  }),
  ambpf_config: new Struct<ConfigValue>('ambpf_config', 204, {
    flags: field('flags', 0, L.u32),
    spliceMinBytes: field('splice_min_bytes', 4, L.u32),
    probeIp: field('probe_ip', 8, L.ip),
    probeIp6: field('probe_ip6', 24, L.ip),
    excludedPorts: field(
      'excluded_ports',
      40,
      L.list(L.be16, MAX_EXCLUDED_PORTS, 'excluded ports in ambpf_config', ZERO_PORT),
    ),
    nodeIps: field(
      'node_ips',
      72,
      L.list(L.ip, MAX_NODE_IPS, 'node IPs in ambpf_config', (ip) => isZeroIp(ipToBytes(ip))),
    ),
    logLevel: field('log_level', 200, L.u32),
  }),
  ambpf_orig: ORIG,
  ambpf_tuple: TUPLE,
  ambpf_pair: new Struct<PairValue>('ambpf_pair', 24, {
    orig: field('orig', 0, ORIG),
    spliceFwd: field('splice_fwd', 20, L.u8),
    spliceRev: field('splice_rev', 21, L.u8),
    ztSeen: field('zt_seen', 22, L.withDefault(L.u8, 0)),
    closed: field('closed', 23, L.withDefault(L.u8, 0)),
  }),
  ambpf_flow4: new Struct<Flow4>('ambpf_flow4', 12, {
    saddr: field('saddr', 0, L.ip4),
    daddr: field('daddr', 4, L.ip4),
    sport: field('sport', 8, L.be16),
    dport: field('dport', 10, L.be16),
  }),
  ambpf_inpod_sk: new Struct<InpodSk>('ambpf_inpod_sk', 32, {
    orig: field('orig', 0, optionalOrig),
    role: field('role', 20, L.withDefault(L.u32, INPOD_SK_APP)),
    netnsCookie: field('netns_cookie', 24, L.u64),
  }),
  ambpf_inpod_key: new Struct<InpodKey>('ambpf_inpod_key', 48, {
    netnsCookie: field('netns_cookie', 0, L.u64),
    tuple: field('t', 8, TUPLE),
  }),
  ambpf_inpod_lkey: new Struct<InpodListenKey>('ambpf_inpod_lkey', 20, {
    podIp: field('pod_ip', 0, L.ip),
    slot: field('slot', 16, L.u32),
  }),
  ambpf_inpod_dns: new Struct<InpodDns>('ambpf_inpod_dns', 88, {
    servers: field('srv', 0, L.array(optionalOrig, DNS_SLOTS)),
    last: field('last', 80, L.u32),
    next: field('next', 84, L.u32),
  }),
} as const;
export type StructName = keyof typeof STRUCTS;

/** Sizes and field offsets by C name (what offsetof says), derived from STRUCTS. */
export const LAYOUT = Object.fromEntries(
  Object.entries(STRUCTS).map(([name, st]) => [name, { size: st.size, fields: st.offsets() }]),
) as Record<StructName, { readonly size: number; readonly fields: Readonly<Record<string, number>> }>;

// ---- addresses (src/ip.ts) and MACs (src/bpf/layout.ts) ----
export { bytesToIp, ipToBytes } from '../ip.ts';
export { SchemaError, macToBytes, bytesToMac } from './layout.ts';

// ---- codecs: map keys and values as bytes, all from STRUCTS ----
const codec = <V>(st: Struct<V>): [(v: V) => Uint8Array, (b: Uint8Array) => V] => [
  (v) => st.toBytes(v),
  (b) => st.fromBytes(b),
];

export const encodeIpKey = (ip: string): Uint8Array => STRUCTS.ambpf_ip.toBytes({ addr: ip });
export const decodeIpKey = (b: Uint8Array): string => STRUCTS.ambpf_ip.fromBytes(b).addr;

export function encodeU32Key(n: number): Uint8Array {
  const b = new Uint8Array(4);
  L.u32.encode(b, 0, n);
  return b;
}

export function encodeU64Key(n: bigint): Uint8Array {
  const b = new Uint8Array(8);
  L.u64.encode(b, 0, n);
  return b;
}

export function decodeU64Key(b: Uint8Array): bigint {
  if (b.length < 8) throw new SchemaError(`a u64 key is 8 bytes, got ${b.length}.`, { what: 'u64 key' });
  return L.u64.decode(b, 0);
}

export const [encodePod, decodePod] = codec(STRUCTS.ambpf_pod);
export const [encodeNetns, decodeNetns] = codec(STRUCTS.ambpf_netns);
export const [encodeZtunnel, decodeZtunnel] = codec(STRUCTS.ambpf_ztunnel);
export const [encodeConfig, decodeConfig] = codec(STRUCTS.ambpf_config);
export const [encodeOrig, decodeOrig] = codec(STRUCTS.ambpf_orig);
export const [encodeTuple, decodeTuple] = codec(STRUCTS.ambpf_tuple);
export const [encodePair, decodePair] = codec(STRUCTS.ambpf_pair);
export const [encodeFlow4, decodeFlow4] = codec(STRUCTS.ambpf_flow4);
/** ambpf_inpod_sk value; the loader writes { orig: null, netnsCookie } on ztunnel's 15001 listener. */
export const [encodeInpodSk, decodeInpodSk] = codec(STRUCTS.ambpf_inpod_sk);
export const [encodeInpodKey, decodeInpodKey] = codec(STRUCTS.ambpf_inpod_key);
export const decodeInpodDns = (b: Uint8Array): InpodDns => STRUCTS.ambpf_inpod_dns.fromBytes(b);

/** ztunnel defaults (ports and mark of ztunnel's contract) for the fields a caller rarely sets. */
export function ztunnelValue(
  v: Pick<ZtunnelValue, 'ip' | 'netnsCookie' | 'hostIfindex' | 'mac' | 'hostMac'> & Partial<ZtunnelValue>,
): ZtunnelValue {
  return {
    ip6: null,
    ifindex: 0,
    portOut: PORT_OUTBOUND,
    portIn: PORT_INBOUND,
    portHbone: PORT_HBONE,
    portDns: PORT_DNS,
    mark: ZTUNNEL_MARK,
    markMask: ZTUNNEL_MARK_MASK,
    flags: ZT_READY,
    ...v,
  };
}

/** The config a fresh install starts with: splice on for writes of 16 KiB and more (see
 * bpf/ambpf_skmsg.bpf.c for why), Istio's probe source, nothing excluded. */
export function defaultConfig(over: Partial<ConfigValue> = {}): ConfigValue {
  return {
    flags: CFG_SPLICE,
    spliceMinBytes: 16384,
    probeIp: PROBE_IP,
    probeIp6: PROBE_IP6,
    excludedPorts: [],
    nodeIps: [],
    logLevel: 0,
    ...over,
  };
}

/**
 * The DNS bits of a pod's ambpf_netns/ambpf_pods flags from its annotation
 * (ambient.istio.io/dns-capture): true captures even with --no-dns-capture, false never captures,
 * undefined follows the node's switch (AMBPF_CFG_NO_DNS_CAPTURE), as istio-cni decides.
 */
export function dnsCaptureFlags(dnsCapture: boolean | undefined): number {
  return dnsCapture === undefined ? 0 : dnsCapture ? POD_DNS_CAPTURE : POD_NO_DNS_CAPTURE;
}

/** ambpf_inpod_listen key: pod IP + listener slot (LISTENER_INBOUND / LISTENER_HBONE). */
export const encodeInpodListenKey = (podIp: string, slot: number): Uint8Array =>
  STRUCTS.ambpf_inpod_lkey.toBytes({ podIp, slot });

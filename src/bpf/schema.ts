// TS mirror of bpf/include/ambpf.h: byte-exact encode/decode of every map key and value, the flag
// bits, and the counter indices of ambpf_stats. test/bpf/schema-layout.test.ts compiles ambpf.h with
// gcc and checks every size, offset and enum value here against the C compiler's: change both sides
// together.
//
// Conventions (as in ambpf.h): addresses are 16 bytes, IPv4 as v4-mapped IPv6, network order; ports
// inside keys/values are network order unless the C field ends in _host; everything else is the
// host's (little-endian) order, as the kernel stores it.
import { AmbpfError } from '../errors.ts';
import { bytesToIp, ip4ToBytes, ipToBytes, isV4Mapped, isZeroIp } from '../ip.ts';

export class SchemaError extends AmbpfError {
  override readonly name: string = 'SchemaError';
}

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

export const POD_AMBIENT = 1 << 0;
export const POD_OPT_OUT = 1 << 1;
export const POD_DNS_CAPTURE = 1 << 2;
export const POD_IS_ZTUNNEL = 1 << 3;
export const POD_NO_DNS_CAPTURE = 1 << 4;
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

export const AF_INET = 2;
export const AF_INET6 = 10;
/** Default kubelet probe source (istio-cni SNATs probes to it); never redirected. */
export const PROBE_IP = '169.254.7.127';
export const PROBE_IP6 = 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff';

/** ambpf_stats indices, in the order of `enum ambpf_stat` (names without the AMBPF_STAT_ prefix). */
export const STAT_NAMES = [
  'connect4_redirected', 'connect4_not_ambient', 'connect4_bypass_mark', 'connect4_bypass_ztunnel',
  'connect4_bypass_dst', 'connect4_bypass_port', 'connect4_no_ztunnel', 'connect4_error',
  'connect6_redirected', 'connect6_bypass', 'connect6_error',
  'sockops_pair_added', 'sockops_pair_closed', 'sockops_stale_deleted', 'sockops_sockhash_added', 'sockops_error',
  'skmsg_spliced', 'skmsg_spliced_bytes', 'skmsg_passed', 'skmsg_miss',
  'getsockopt_answered', 'getsockopt_miss', 'getsockopt_error',
  'getpeername_restored',
  'tc_steered', 'tc_pass_ztunnel', 'tc_pass_probe', 'tc_pass_not_ambient', 'tc_pass_pod_flow', 'tc_error',
  'sklookup_assigned', 'sklookup_no_listener', 'sklookup_error', 'sklookup_pass_probe', 'sklookup_pass_not_ambient',
  'tc_pass_local', 'tc_rst_cloned', 'sockops_outflow_added',
  'sklookup_refused', 'sklookup_pass_ztunnel', 'tc_orig_src_marked', 'connect4_fail_open',
  'dns_redirected', 'dns_bypass', 'dns_restored', 'dns_slot_reused', 'dns_error', 'tc_dns_answer',
  'inpod_handed', 'inpod_closed_early',
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
  for (const v of values) sum += view(v).getBigUint64(0, true);
  return sum;
}

// ---- layouts: sizes and field offsets, checked against gcc by the layout test ----
export const LAYOUT = {
  ambpf_ip: { size: 16, fields: { addr: 0 } },
  ambpf_pod: { size: 16, fields: { netns_cookie: 0, host_ifindex: 8, flags: 12 } },
  ambpf_netns: { size: 24, fields: { pod_ip: 0, flags: 16 } },
  ambpf_ztunnel: {
    size: 80,
    fields: {
      ip: 0, ip6: 16, netns_cookie: 32, host_ifindex: 40, ifindex: 44, mac: 48, host_mac: 54,
      port_out_host: 60, port_in_host: 62, port_hbone_host: 64, port_dns_host: 66,
      mark: 68, mark_mask: 72, flags: 76,
    },
  },
  ambpf_config: {
    size: 204,
    fields: { flags: 0, splice_min_bytes: 4, probe_ip: 8, probe_ip6: 24, excluded_ports: 40, node_ips: 72, log_level: 200 },
  },
  ambpf_orig: { size: 20, fields: { ip: 0, port: 16, family: 18 } },
  ambpf_tuple: { size: 36, fields: { local_ip: 0, remote_ip: 16, local_port: 32, remote_port: 34 } },
  ambpf_pair: { size: 24, fields: { orig: 0, splice_fwd: 20, splice_rev: 21, zt_seen: 22, closed: 23 } },
  ambpf_flow4: { size: 12, fields: { saddr: 0, daddr: 4, sport: 8, dport: 10 } },
  ambpf_inpod_sk: { size: 32, fields: { orig: 0, role: 20, netns_cookie: 24 } },
  ambpf_inpod_key: { size: 48, fields: { netns_cookie: 0, t: 8 } },
  ambpf_inpod_lkey: { size: 20, fields: { pod_ip: 0, slot: 16 } },
  ambpf_inpod_dns: { size: 88, fields: { srv: 0, last: 80, next: 84 } },
} as const;

// ---- addresses (src/ip.ts) ----
export { bytesToIp, ipToBytes } from '../ip.ts';

export function macToBytes(mac: string): Uint8Array {
  const parts = mac.split(':');
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{1,2}$/.test(p))) {
    throw new SchemaError(`"${mac}" is not a MAC address (six hex bytes separated by colons).`, { mac });
  }
  return Uint8Array.from(parts.map((p) => parseInt(p, 16)));
}

export function bytesToMac(b: Uint8Array): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

function checkPort(port: number): number {
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new SchemaError(`port ${port} is out of range 0-65535.`);
  return port;
}

// ---- byte helpers ----
function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function need(b: Uint8Array, size: number, what: string): DataView {
  if (b.length < size) throw new SchemaError(`a ${what} is ${size} bytes, got ${b.length}.`, { what });
  return view(b);
}

function putPortBE(dv: DataView, off: number, port: number): void {
  dv.setUint16(off, checkPort(port), false);
}

// ---- codecs ----
export interface PodValue { netnsCookie: bigint; hostIfindex: number; flags: number }
export interface NetnsValue { podIp: string; flags: number }
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
export interface OrigDst { ip: string; port: number; family: number }
export interface Tuple { localIp: string; localPort: number; remoteIp: string; remotePort: number }
/** ztSeen: ztunnel's accepted socket will report its close; closed: how many of the two sockets have
 * closed (the entry goes at 2). Both are the datapath's; the loader never writes them. */
export interface PairValue { orig: OrigDst; spliceFwd: number; spliceRev: number; ztSeen?: number; closed?: number }
export interface Flow4 { saddr: string; daddr: string; sport: number; dport: number }

export const encodeIpKey = (ip: string): Uint8Array => ipToBytes(ip);
export const decodeIpKey = (b: Uint8Array): string => bytesToIp(b.subarray(0, 16));

export function encodeU32Key(n: number): Uint8Array {
  const b = new Uint8Array(4);
  view(b).setUint32(0, n, true);
  return b;
}

export function encodeU64Key(n: bigint): Uint8Array {
  const b = new Uint8Array(8);
  view(b).setBigUint64(0, n, true);
  return b;
}

export function decodeU64Key(b: Uint8Array): bigint {
  return need(b, 8, 'u64 key').getBigUint64(0, true);
}

export function encodePod(v: PodValue): Uint8Array {
  const b = new Uint8Array(LAYOUT.ambpf_pod.size);
  const dv = view(b);
  dv.setBigUint64(0, v.netnsCookie, true);
  dv.setUint32(8, v.hostIfindex, true);
  dv.setUint32(12, v.flags, true);
  return b;
}

export function decodePod(b: Uint8Array): PodValue {
  const dv = need(b, LAYOUT.ambpf_pod.size, 'ambpf_pod');
  return { netnsCookie: dv.getBigUint64(0, true), hostIfindex: dv.getUint32(8, true), flags: dv.getUint32(12, true) };
}

export function encodeNetns(v: NetnsValue): Uint8Array {
  const b = new Uint8Array(LAYOUT.ambpf_netns.size);
  b.set(ipToBytes(v.podIp), 0);
  view(b).setUint32(16, v.flags, true);
  return b;
}

export function decodeNetns(b: Uint8Array): NetnsValue {
  const dv = need(b, LAYOUT.ambpf_netns.size, 'ambpf_netns');
  return { podIp: bytesToIp(b.subarray(0, 16)), flags: dv.getUint32(16, true) };
}

export function encodeZtunnel(v: ZtunnelValue): Uint8Array {
  const b = new Uint8Array(LAYOUT.ambpf_ztunnel.size);
  const dv = view(b);
  const ip = ipToBytes(v.ip);
  if (!isV4Mapped(ip)) throw new SchemaError(`ztunnel's ip must be IPv4 (got ${v.ip}); put an IPv6 address in ip6.`);
  b.set(ip, 0);
  if (v.ip6 !== null) b.set(ipToBytes(v.ip6), 16);
  dv.setBigUint64(32, v.netnsCookie, true);
  dv.setUint32(40, v.hostIfindex, true);
  dv.setUint32(44, v.ifindex, true);
  b.set(macToBytes(v.mac), 48);
  b.set(macToBytes(v.hostMac), 54);
  dv.setUint16(60, checkPort(v.portOut), true);
  dv.setUint16(62, checkPort(v.portIn), true);
  dv.setUint16(64, checkPort(v.portHbone), true);
  dv.setUint16(66, checkPort(v.portDns), true);
  dv.setUint32(68, v.mark, true);
  dv.setUint32(72, v.markMask, true);
  dv.setUint32(76, v.flags, true);
  return b;
}

export function decodeZtunnel(b: Uint8Array): ZtunnelValue {
  const dv = need(b, LAYOUT.ambpf_ztunnel.size, 'ambpf_ztunnel');
  const ip6 = b.subarray(16, 32);
  return {
    ip: bytesToIp(b.subarray(0, 16)),
    ip6: isZeroIp(ip6) ? null : bytesToIp(ip6),
    netnsCookie: dv.getBigUint64(32, true),
    hostIfindex: dv.getUint32(40, true),
    ifindex: dv.getUint32(44, true),
    mac: bytesToMac(b.subarray(48, 54)),
    hostMac: bytesToMac(b.subarray(54, 60)),
    portOut: dv.getUint16(60, true),
    portIn: dv.getUint16(62, true),
    portHbone: dv.getUint16(64, true),
    portDns: dv.getUint16(66, true),
    mark: dv.getUint32(68, true),
    markMask: dv.getUint32(72, true),
    flags: dv.getUint32(76, true),
  };
}

/** ztunnel defaults (ports and mark of ztunnel's contract) for the fields a caller rarely sets. */
export function ztunnelValue(v: Pick<ZtunnelValue, 'ip' | 'netnsCookie' | 'hostIfindex' | 'mac' | 'hostMac'> & Partial<ZtunnelValue>): ZtunnelValue {
  return {
    ip6: null, ifindex: 0, portOut: PORT_OUTBOUND, portIn: PORT_INBOUND, portHbone: PORT_HBONE, portDns: PORT_DNS,
    mark: ZTUNNEL_MARK, markMask: ZTUNNEL_MARK_MASK, flags: ZT_READY, ...v,
  };
}

export function encodeConfig(v: ConfigValue): Uint8Array {
  const b = new Uint8Array(LAYOUT.ambpf_config.size);
  const dv = view(b);
  if (v.excludedPorts.length > MAX_EXCLUDED_PORTS) {
    throw new SchemaError(`at most ${MAX_EXCLUDED_PORTS} excluded ports fit in ambpf_config, got ${v.excludedPorts.length}.`);
  }
  if (v.nodeIps.length > MAX_NODE_IPS) {
    throw new SchemaError(`at most ${MAX_NODE_IPS} node IPs fit in ambpf_config, got ${v.nodeIps.length}.`);
  }
  dv.setUint32(0, v.flags, true);
  dv.setUint32(4, v.spliceMinBytes, true);
  b.set(ipToBytes(v.probeIp), 8);
  b.set(ipToBytes(v.probeIp6), 24);
  v.excludedPorts.forEach((p, i) => {
    if (p === 0) throw new SchemaError('port 0 cannot be excluded (0 marks an unused slot).');
    putPortBE(dv, 40 + 2 * i, p);
  });
  v.nodeIps.forEach((ip, i) => b.set(ipToBytes(ip), 72 + 16 * i));
  dv.setUint32(200, v.logLevel, true);
  return b;
}

export function decodeConfig(b: Uint8Array): ConfigValue {
  const dv = need(b, LAYOUT.ambpf_config.size, 'ambpf_config');
  const excludedPorts: number[] = [];
  for (let i = 0; i < MAX_EXCLUDED_PORTS; i++) {
    const p = dv.getUint16(40 + 2 * i, false);
    if (p !== 0) excludedPorts.push(p);
  }
  const nodeIps: string[] = [];
  for (let i = 0; i < MAX_NODE_IPS; i++) {
    const ip = b.subarray(72 + 16 * i, 88 + 16 * i);
    if (!isZeroIp(ip)) nodeIps.push(bytesToIp(ip));
  }
  return {
    flags: dv.getUint32(0, true),
    spliceMinBytes: dv.getUint32(4, true),
    probeIp: bytesToIp(b.subarray(8, 24)),
    probeIp6: bytesToIp(b.subarray(24, 40)),
    excludedPorts,
    nodeIps,
    logLevel: dv.getUint32(200, true),
  };
}

/** The config a fresh install starts with: splice on for writes of 16 KiB and more (see
 * bpf/ambpf_skmsg.bpf.c for why), Istio's probe source, nothing excluded. */
export function defaultConfig(over: Partial<ConfigValue> = {}): ConfigValue {
  return {
    flags: CFG_SPLICE, spliceMinBytes: 16384, probeIp: PROBE_IP, probeIp6: PROBE_IP6,
    excludedPorts: [], nodeIps: [], logLevel: 0, ...over,
  };
}

function encodeOrigInto(b: Uint8Array, off: number, v: OrigDst): void {
  b.set(ipToBytes(v.ip), off);
  const dv = view(b);
  putPortBE(dv, off + 16, v.port);
  dv.setUint16(off + 18, v.family, true);
}

function decodeOrigAt(b: Uint8Array, off: number): OrigDst {
  const dv = view(b);
  return { ip: bytesToIp(b.subarray(off, off + 16)), port: dv.getUint16(off + 16, false), family: dv.getUint16(off + 18, true) };
}

export function encodeOrig(v: OrigDst): Uint8Array {
  const b = new Uint8Array(LAYOUT.ambpf_orig.size);
  encodeOrigInto(b, 0, v);
  return b;
}

export function decodeOrig(b: Uint8Array): OrigDst {
  need(b, LAYOUT.ambpf_orig.size, 'ambpf_orig');
  return decodeOrigAt(b, 0);
}

export function encodeTuple(t: Tuple): Uint8Array {
  const b = new Uint8Array(LAYOUT.ambpf_tuple.size);
  const dv = view(b);
  b.set(ipToBytes(t.localIp), 0);
  b.set(ipToBytes(t.remoteIp), 16);
  putPortBE(dv, 32, t.localPort);
  putPortBE(dv, 34, t.remotePort);
  return b;
}

export function decodeTuple(b: Uint8Array): Tuple {
  const dv = need(b, LAYOUT.ambpf_tuple.size, 'ambpf_tuple');
  return {
    localIp: bytesToIp(b.subarray(0, 16)),
    remoteIp: bytesToIp(b.subarray(16, 32)),
    localPort: dv.getUint16(32, false),
    remotePort: dv.getUint16(34, false),
  };
}

export function encodePair(v: PairValue): Uint8Array {
  const b = new Uint8Array(LAYOUT.ambpf_pair.size);
  encodeOrigInto(b, 0, v.orig);
  b[20] = v.spliceFwd;
  b[21] = v.spliceRev;
  b[22] = v.ztSeen ?? 0;
  b[23] = v.closed ?? 0;
  return b;
}

export function decodePair(b: Uint8Array): PairValue {
  need(b, LAYOUT.ambpf_pair.size, 'ambpf_pair');
  return { orig: decodeOrigAt(b, 0), spliceFwd: b[20] ?? 0, spliceRev: b[21] ?? 0, ztSeen: b[22] ?? 0, closed: b[23] ?? 0 };
}

export function encodeFlow4(f: Flow4): Uint8Array {
  const b = new Uint8Array(LAYOUT.ambpf_flow4.size);
  const dv = view(b);
  b.set(ip4ToBytes(f.saddr), 0);
  b.set(ip4ToBytes(f.daddr), 4);
  putPortBE(dv, 8, f.sport);
  putPortBE(dv, 10, f.dport);
  return b;
}

export function decodeFlow4(b: Uint8Array): Flow4 {
  const dv = need(b, LAYOUT.ambpf_flow4.size, 'ambpf_flow4');
  return {
    saddr: bytesToIp(b.subarray(0, 4)),
    daddr: bytesToIp(b.subarray(4, 8)),
    sport: dv.getUint16(8, false),
    dport: dv.getUint16(10, false),
  };
}

// ---- inpod topology (ambpf_inpod.bpf.c) ----
/** role: INPOD_SK_APP (an app socket, or ztunnel's tagged listener), INPOD_SK_ACCEPTED (ztunnel's
 * accepted socket carrying its client's original dst) or INPOD_SK_HANDED (an app socket whose original
 * ztunnel's accepted socket took). */
export interface InpodSk { orig: OrigDst | null; netnsCookie: bigint; role?: number }
export interface InpodKey { netnsCookie: bigint; tuple: Tuple }

/** ambpf_inpod_sk value; the loader writes { orig: null, netnsCookie } on ztunnel's 15001 listener. */
export function encodeInpodSk(v: InpodSk): Uint8Array {
  const b = new Uint8Array(LAYOUT.ambpf_inpod_sk.size);
  if (v.orig) encodeOrigInto(b, 0, v.orig);
  view(b).setUint32(20, v.role ?? INPOD_SK_APP, true);
  view(b).setBigUint64(24, v.netnsCookie, true);
  return b;
}

export function decodeInpodSk(b: Uint8Array): InpodSk {
  const dv = need(b, LAYOUT.ambpf_inpod_sk.size, 'ambpf_inpod_sk');
  const orig = decodeOrigAt(b, 0);
  return { orig: orig.family === 0 ? null : orig, netnsCookie: dv.getBigUint64(24, true), role: dv.getUint32(20, true) };
}

export function encodeInpodKey(k: InpodKey): Uint8Array {
  const b = new Uint8Array(LAYOUT.ambpf_inpod_key.size);
  view(b).setBigUint64(0, k.netnsCookie, true);
  b.set(encodeTuple(k.tuple), 8);
  return b;
}

export function decodeInpodKey(b: Uint8Array): InpodKey {
  const dv = need(b, LAYOUT.ambpf_inpod_key.size, 'ambpf_inpod_key');
  return { netnsCookie: dv.getBigUint64(0, true), tuple: decodeTuple(b.subarray(8, 8 + LAYOUT.ambpf_tuple.size)) };
}

/** ambpf_inpod_dns value: the servers a UDP socket sent captured queries to (null: a free slot). */
export interface InpodDns { servers: Array<OrigDst | null>; last: number; next: number }

export function decodeInpodDns(b: Uint8Array): InpodDns {
  const dv = need(b, LAYOUT.ambpf_inpod_dns.size, 'ambpf_inpod_dns');
  const servers: Array<OrigDst | null> = [];
  for (let i = 0; i < DNS_SLOTS; i++) {
    const o = decodeOrigAt(b, i * LAYOUT.ambpf_orig.size);
    servers.push(o.family === 0 ? null : o);
  }
  return { servers, last: dv.getUint32(80, true), next: dv.getUint32(84, true) };
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
export function encodeInpodListenKey(podIp: string, slot: number): Uint8Array {
  const b = new Uint8Array(LAYOUT.ambpf_inpod_lkey.size);
  b.set(ipToBytes(podIp), 0);
  view(b).setUint32(16, slot, true);
  return b;
}

// The names bpf/*.bpf.c gives its objects, maps and programs: the one place the loader spells them.
// test/bpf/names.test.ts opens every built object and checks that each name here is one the object
// declares and that every map and program the objects declare is named here. The counter names are
// STAT_NAMES in schema.ts (checked against `enum ambpf_stat` by test/bpf/schema-layout.test.ts).

/** Object files of the node topology (bpf/<name>.bpf.c), loaded in this order: the first creates
 * and pins the maps. */
export const OBJECTS = ['ambpf_sock', 'ambpf_skmsg', 'ambpf_inbound'] as const;
/** The inpod topology's one object (bpf/ambpf_inpod.bpf.c). */
export const INPOD_OBJECT = 'ambpf_inpod';

/** The maps of the design's contract (docs/architecture.md "Maps") plus the inbound maps, shared by both topologies
 * (bpf/include/ambpf_maps.h), by pinned name. */
export const MAP_NAMES = [
  'ambpf_pods',
  'ambpf_netns',
  'ambpf_ztunnel',
  'ambpf_config',
  'ambpf_orig_dst',
  'ambpf_pair_dst',
  'ambpf_sockhash',
  'ambpf_zt_listen',
  'ambpf_stats',
  'ambpf_outflow',
  'ambpf_outflow6',
] as const;
export type MapName = (typeof MAP_NAMES)[number];

/** Maps only the inpod object declares (bpf/ambpf_inpod.bpf.c). */
export const INPOD_MAP_NAMES = [
  'ambpf_inpod_sk',
  'ambpf_inpod_closed',
  'ambpf_inpod_listen',
  'ambpf_inpod_origsrc',
  'ambpf_inpod_nodesyn',
  'ambpf_inpod_dns',
] as const;
export type InpodMapName = (typeof INPOD_MAP_NAMES)[number];

/**
 * Maps earlier versions pinned and no object declares any more. A node upgraded from such a version
 * still has their pins: nothing uses them, and uninstall removes them with the rest.
 * ambpf_inflow: the LRU of inbound SYNs that ambpf_outflow replaced. ambpf_inpod_pair: the inpod
 * topology's per-connection {cookie, 4-tuple} map, before accept() took the original (issue 20).
 */
export const RETIRED_MAP_NAMES = ['ambpf_inflow', 'ambpf_inpod_pair'] as const;

/** Any map ambpf pins (or pinned once): what a pin path may be made of (src/bpf/pins.ts). */
export type AnyMapName = MapName | InpodMapName | (typeof RETIRED_MAP_NAMES)[number];
const ANY_MAP: ReadonlySet<string> = new Set([...MAP_NAMES, ...INPOD_MAP_NAMES, ...RETIRED_MAP_NAMES]);
export const isAmbpfMap = (name: string): name is AnyMapName => ANY_MAP.has(name);

/** Maps whose fill matters (status, metrics): the loader fills the first two, the programs the last two. */
export const FILL_MAPS = [
  'ambpf_pods',
  'ambpf_netns',
  'ambpf_pair_dst',
  'ambpf_outflow',
  'ambpf_outflow6',
] as const satisfies readonly MapName[];

/** cgroup hooks of the node topology: pin name under <bpffs>/links/ -> program. Order matters only
 * for sk_msg (datapath.ts). */
export const CGROUP_HOOKS = {
  connect4: 'ambpf_connect4',
  connect6: 'ambpf_connect6',
  getpeername4: 'ambpf_peername4',
  getpeername6: 'ambpf_peername6',
  getsockopt: 'ambpf_getsopt',
  sockops: 'ambpf_sockops',
} as const;
export type CgroupHook = keyof typeof CGROUP_HOOKS;

/** cgroup hooks only the inpod topology attaches (DNS capture, the early close of a client;
 * bpf/ambpf_inpod.bpf.c), pinned as <bpffs>/links/<hook> like CGROUP_HOOKS. */
export const INPOD_ONLY_HOOKS = ['sendmsg4', 'sendmsg6', 'recvmsg4', 'recvmsg6', 'release'] as const;
/** A cgroup hook of the inpod topology: the node topology's but sockops (inpod needs no per-connection
 * callbacks), plus UDP send/receive for DNS capture and sock_release. */
export type InpodCgroupHook = Exclude<CgroupHook, 'sockops'> | (typeof INPOD_ONLY_HOOKS)[number];

/** The inpod object's program for each of its cgroup hooks (same pin names as the node topology's:
 * one mode per bpffs). */
export const INPOD_CGROUP_HOOKS: Readonly<Record<InpodCgroupHook, string>> = {
  connect4: 'ambpf_inpod_connect4',
  connect6: 'ambpf_inpod_connect6',
  getpeername4: 'ambpf_inpod_peername4',
  getpeername6: 'ambpf_inpod_peername6',
  getsockopt: 'ambpf_inpod_getsopt',
  // A client that closes before ztunnel's accept() took its original.
  release: 'ambpf_inpod_release',
  // DNS capture: an unconnected UDP socket's query to port 53 goes to ztunnel's 15053, and its
  // answer shows the server asked (connected sockets go through connect4/6 and getpeername4/6).
  sendmsg4: 'ambpf_inpod_sendmsg4',
  sendmsg6: 'ambpf_inpod_sendmsg6',
  recvmsg4: 'ambpf_inpod_recvmsg4',
  recvmsg6: 'ambpf_inpod_recvmsg6',
};

/** The programs that are not cgroup hooks, by what they do. */
export const PROGRAMS = {
  /** node: sk_msg verdict on ambpf_sockhash (ambpf_skmsg.bpf.c). */
  skmsg: 'ambpf_skmsg',
  /** node: tc egress on a mesh pod's host-side veth (ambpf_inbound.bpf.c). */
  tcPod: 'ambpf_tc_pod',
  /** node: sk_lookup in ztunnel's netns (ambpf_inbound.bpf.c). */
  skLookup: 'ambpf_sk_lookup',
  /** inpod: sk_lookup in a mesh pod's netns. */
  inpodLookup: 'ambpf_inpod_lookup',
  /** inpod: tc ingress on the pod's eth0 (the node's own connections reach the app directly). */
  inpodNodeSyn: 'ambpf_inpod_node_syn',
} as const;

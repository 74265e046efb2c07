// Type names exactly as bpftool v7.1 prints them: libbpf 1.1's libbpf_bpf_map_type_str() and
// libbpf_bpf_prog_type_str() tables. They stop at user_ringbuf and syscall; a newer kernel type
// (cgrp_storage, arena, netfilter, ...) prints as "type N" in bpftool, and so here.
const MAP_TYPE_NAMES: readonly string[] = [
  'unspec',
  'hash',
  'array',
  'prog_array',
  'perf_event_array',
  'percpu_hash',
  'percpu_array',
  'stack_trace',
  'cgroup_array',
  'lru_hash',
  'lru_percpu_hash',
  'lpm_trie',
  'array_of_maps',
  'hash_of_maps',
  'devmap',
  'sockmap',
  'cpumap',
  'xskmap',
  'sockhash',
  'cgroup_storage',
  'reuseport_sockarray',
  'percpu_cgroup_storage',
  'queue',
  'stack',
  'sk_storage',
  'devmap_hash',
  'struct_ops',
  'ringbuf',
  'inode_storage',
  'task_storage',
  'bloom_filter',
  'user_ringbuf',
];

const PROG_TYPE_NAMES: readonly string[] = [
  'unspec',
  'socket_filter',
  'kprobe',
  'sched_cls',
  'sched_act',
  'tracepoint',
  'xdp',
  'perf_event',
  'cgroup_skb',
  'cgroup_sock',
  'lwt_in',
  'lwt_out',
  'lwt_xmit',
  'sock_ops',
  'sk_skb',
  'cgroup_device',
  'sk_msg',
  'raw_tracepoint',
  'cgroup_sock_addr',
  'lwt_seg6local',
  'lirc_mode2',
  'sk_reuseport',
  'flow_dissector',
  'cgroup_sysctl',
  'raw_tracepoint_writable',
  'cgroup_sockopt',
  'tracing',
  'struct_ops',
  'ext',
  'lsm',
  'sk_lookup',
  'syscall',
];

export function mapTypeName(type: number): string | undefined {
  return MAP_TYPE_NAMES[type];
}

export function progTypeName(type: number): string | undefined {
  return PROG_TYPE_NAMES[type];
}

export const MAP_TYPE = {
  PERCPU_HASH: 5,
  PERCPU_ARRAY: 6,
  PROG_ARRAY: 3,
  LRU_PERCPU_HASH: 10,
  ARRAY_OF_MAPS: 12,
  HASH_OF_MAPS: 13,
  REUSEPORT_SOCKARRAY: 20,
  PERCPU_CGROUP_STORAGE: 21,
} as const;

export function mapIsPerCpu(type: number): boolean {
  return (
    type === MAP_TYPE.PERCPU_HASH ||
    type === MAP_TYPE.PERCPU_ARRAY ||
    type === MAP_TYPE.LRU_PERCPU_HASH ||
    type === MAP_TYPE.PERCPU_CGROUP_STORAGE
  );
}

export function mapIsMapOfMaps(type: number): boolean {
  return type === MAP_TYPE.ARRAY_OF_MAPS || type === MAP_TYPE.HASH_OF_MAPS;
}

// Kernel enum values (linux/bpf.h) as plain objects: TS `enum` is not erasable syntax.
// Names are lower-case like bpftool prints them; the header is 6.1, newer values are added by hand.

export const MAP_TYPES = {
  unspec: 0,
  hash: 1,
  array: 2,
  prog_array: 3,
  perf_event_array: 4,
  percpu_hash: 5,
  percpu_array: 6,
  stack_trace: 7,
  cgroup_array: 8,
  lru_hash: 9,
  lru_percpu_hash: 10,
  lpm_trie: 11,
  array_of_maps: 12,
  hash_of_maps: 13,
  devmap: 14,
  sockmap: 15,
  cpumap: 16,
  xskmap: 17,
  sockhash: 18,
  cgroup_storage: 19,
  reuseport_sockarray: 20,
  percpu_cgroup_storage: 21,
  queue: 22,
  stack: 23,
  sk_storage: 24,
  devmap_hash: 25,
  struct_ops: 26,
  ringbuf: 27,
  inode_storage: 28,
  task_storage: 29,
  bloom_filter: 30,
  user_ringbuf: 31,
  cgrp_storage: 32,
  arena: 33,
} as const;
export type MapTypeName = keyof typeof MAP_TYPES;

export const PROG_TYPES = {
  unspec: 0,
  socket_filter: 1,
  kprobe: 2,
  sched_cls: 3,
  sched_act: 4,
  tracepoint: 5,
  xdp: 6,
  perf_event: 7,
  cgroup_skb: 8,
  cgroup_sock: 9,
  lwt_in: 10,
  lwt_out: 11,
  lwt_xmit: 12,
  sock_ops: 13,
  sk_skb: 14,
  cgroup_device: 15,
  sk_msg: 16,
  raw_tracepoint: 17,
  cgroup_sock_addr: 18,
  lwt_seg6local: 19,
  lirc_mode2: 20,
  sk_reuseport: 21,
  flow_dissector: 22,
  cgroup_sysctl: 23,
  raw_tracepoint_writable: 24,
  cgroup_sockopt: 25,
  tracing: 26,
  struct_ops: 27,
  ext: 28,
  lsm: 29,
  sk_lookup: 30,
  syscall: 31,
  netfilter: 32,
} as const;
export type ProgTypeName = keyof typeof PROG_TYPES;

export const ATTACH_TYPES = {
  cgroup_inet_ingress: 0,
  cgroup_inet_egress: 1,
  cgroup_inet_sock_create: 2,
  cgroup_sock_ops: 3,
  sk_skb_stream_parser: 4,
  sk_skb_stream_verdict: 5,
  cgroup_device: 6,
  sk_msg_verdict: 7,
  cgroup_inet4_bind: 8,
  cgroup_inet6_bind: 9,
  cgroup_inet4_connect: 10,
  cgroup_inet6_connect: 11,
  cgroup_inet4_post_bind: 12,
  cgroup_inet6_post_bind: 13,
  cgroup_udp4_sendmsg: 14,
  cgroup_udp6_sendmsg: 15,
  lirc_mode2: 16,
  flow_dissector: 17,
  cgroup_sysctl: 18,
  cgroup_udp4_recvmsg: 19,
  cgroup_udp6_recvmsg: 20,
  cgroup_getsockopt: 21,
  cgroup_setsockopt: 22,
  trace_raw_tp: 23,
  trace_fentry: 24,
  trace_fexit: 25,
  modify_return: 26,
  lsm_mac: 27,
  trace_iter: 28,
  cgroup_inet4_getpeername: 29,
  cgroup_inet6_getpeername: 30,
  cgroup_inet4_getsockname: 31,
  cgroup_inet6_getsockname: 32,
  xdp_devmap: 33,
  cgroup_inet_sock_release: 34,
  xdp_cpumap: 35,
  sk_lookup: 36,
  xdp: 37,
  sk_skb_verdict: 38,
  sk_reuseport_select: 39,
  sk_reuseport_select_or_migrate: 40,
  perf_event: 41,
  trace_kprobe_multi: 42,
  lsm_cgroup: 43,
  struct_ops: 44,
  netfilter: 45,
  tcx_ingress: 46,
  tcx_egress: 47,
} as const;
export type AttachTypeName = keyof typeof ATTACH_TYPES;

export const LINK_TYPES = {
  unspec: 0,
  raw_tracepoint: 1,
  tracing: 2,
  cgroup: 3,
  iter: 4,
  netns: 5,
  xdp: 6,
  perf_event: 7,
  kprobe_multi: 8,
  struct_ops: 9,
  netfilter: 10,
  tcx: 11,
  uprobe_multi: 12,
  netkit: 13,
  sockmap: 14,
} as const;
export type LinkTypeName = keyof typeof LINK_TYPES;

/** Helper ids (enum bpf_func_id) of the helpers ambpf uses. */
export const HELPERS = {
  redirect: 23,
  get_socket_cookie: 46,
  sock_hash_update: 70,
  msg_redirect_hash: 71,
  sk_lookup_tcp: 84,
  sk_release: 86,
  skc_lookup_tcp: 99,
  sk_storage_get: 107,
  get_netns_cookie: 122,
  sk_assign: 124,
  redirect_peer: 155,
} as const;
export type HelperName = keyof typeof HELPERS;

/** Map update flags. */
export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;
/** Program attach flags (bpf_prog_attach). */
export const BPF_F_ALLOW_OVERRIDE = 1;
export const BPF_F_ALLOW_MULTI = 2;
/** Map creation flags. */
export const BPF_F_NO_PREALLOC = 1;
export const BPF_F_RDONLY_PROG = 1 << 7;
export const BPF_F_WRONLY_PROG = 1 << 8;

/** Reverse lookup: numeric kernel value -> our lower-case name (or the number when unknown). */
export function nameOf(table: Readonly<Record<string, number>>, value: number): string {
  for (const [k, v] of Object.entries(table)) if (v === value) return k;
  return String(value);
}

/**
 * Socket-layer numbers of Linux's uapi headers (<sys/socket.h>, <asm-generic/socket.h>,
 * <netinet/in.h>, <linux/in.h>) for the raw libc calls made through koffi: one home, so the ZDS
 * transport, the netns cookie reader and the testbed's sockets cannot disagree.
 */
export const LINUX_SOCKET = {
  AF_UNIX: 1,
  AF_INET: 2,
  AF_INET6: 10,
  SOCK_STREAM: 1,
  SOCK_DGRAM: 2,
  SOCK_SEQPACKET: 5,
  SOCK_NONBLOCK: 0o4000,
  SOCK_CLOEXEC: 0o2000000,
  SOL_SOCKET: 1,
  SOL_IP: 0,
  SOL_IPV6: 41,
  SO_REUSEADDR: 2,
  SO_REUSEPORT: 15,
  SO_PEERCRED: 17,
  SO_MARK: 36,
  SO_COOKIE: 57,
  SO_NETNS_COOKIE: 71,
  IP_FREEBIND: 15,
  IP_TRANSPARENT: 19,
} as const;

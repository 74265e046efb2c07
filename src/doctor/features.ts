// What ambpf needs from the kernel, and the first Linux version that brings each piece, so a
// missing feature can be named with the upgrade that fixes it. Versions are upstream mainline.
import type { ProgTypeName, MapTypeName, HelperName } from '../libbpf/index.ts';

export interface ProgFeature {
  readonly kind: 'prog';
  readonly type: ProgTypeName;
  readonly since: string;
  readonly why: string;
}
export interface MapFeature {
  readonly kind: 'map';
  readonly type: MapTypeName;
  readonly since: string;
  readonly why: string;
}
export interface HelperFeature {
  readonly kind: 'helper';
  readonly prog: ProgTypeName;
  readonly helper: HelperName;
  readonly since: string;
}

export const PROG_FEATURES: readonly ProgFeature[] = [
  { kind: 'prog', type: 'cgroup_sock_addr', since: '4.17', why: 'connect4/connect6/getpeername redirect' },
  { kind: 'prog', type: 'cgroup_sockopt', since: '5.3', why: 'SO_ORIGINAL_DST answers' },
  { kind: 'prog', type: 'sock_ops', since: '4.13', why: 'socket pairing for the splice' },
  { kind: 'prog', type: 'sk_msg', since: '4.17', why: 'same-node splice' },
  { kind: 'prog', type: 'sched_cls', since: '4.1', why: 'inbound steering on veths' },
  { kind: 'prog', type: 'sk_lookup', since: '5.9', why: 'inbound socket assignment' },
];

export const MAP_FEATURES: readonly MapFeature[] = [
  { kind: 'map', type: 'hash', since: '3.19', why: 'pods, netns, tuples' },
  { kind: 'map', type: 'array', since: '3.19', why: 'ztunnel and config' },
  { kind: 'map', type: 'percpu_array', since: '4.6', why: 'counters' },
  { kind: 'map', type: 'sockhash', since: '4.18', why: 'splice socket map' },
  { kind: 'map', type: 'sk_storage', since: '5.2', why: 'per-socket original destination' },
  { kind: 'map', type: 'lru_hash', since: '4.10', why: 'bounded caches' },
];

/**
 * Helper x program type pairs ambpf's programs call. bpf_get_netns_cookie in sock_ops/getsockopt
 * (5.15) is deliberately absent: no program calls it there (the inpod getsockopt reads the cookie
 * from socket storage instead, see ambpf.h), so listing it would fail doctor on the 5.10-5.14 kernels
 * ambpf supports.
 */
export const HELPER_FEATURES: readonly HelperFeature[] = [
  { kind: 'helper', prog: 'cgroup_sock_addr', helper: 'get_netns_cookie', since: '5.7' },
  { kind: 'helper', prog: 'cgroup_sock_addr', helper: 'get_socket_cookie', since: '5.0' },
  { kind: 'helper', prog: 'cgroup_sock_addr', helper: 'sk_storage_get', since: '5.10' },
  { kind: 'helper', prog: 'cgroup_sockopt', helper: 'sk_storage_get', since: '5.3' },
  { kind: 'helper', prog: 'sock_ops', helper: 'sock_hash_update', since: '4.18' },
  { kind: 'helper', prog: 'sock_ops', helper: 'get_socket_cookie', since: '5.4' },
  { kind: 'helper', prog: 'sk_msg', helper: 'msg_redirect_hash', since: '4.18' },
  { kind: 'helper', prog: 'sched_cls', helper: 'redirect', since: '4.4' },
  { kind: 'helper', prog: 'sched_cls', helper: 'redirect_peer', since: '5.10' },
  { kind: 'helper', prog: 'sched_cls', helper: 'sk_lookup_tcp', since: '4.20' },
  { kind: 'helper', prog: 'sched_cls', helper: 'skc_lookup_tcp', since: '5.2' },
  { kind: 'helper', prog: 'sched_cls', helper: 'sk_assign', since: '5.7' },
  { kind: 'helper', prog: 'sched_cls', helper: 'sk_release', since: '4.20' },
  { kind: 'helper', prog: 'sk_lookup', helper: 'sk_assign', since: '5.9' },
  { kind: 'helper', prog: 'sk_lookup', helper: 'sk_release', since: '5.9' },
];

export const TCX_SINCE = '6.6';
export const BTF_SINCE = '5.4';

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ambpf_maps.h: the BTF-defined maps every ambpf object shares (docs/architecture.md "Maps" names them: a contract).
 *
 * Each object that includes this header declares the same maps; the loader gives every map a pin path
 * under <bpffs>/ before load, so the first object creates and pins a map and every later object (and a
 * restarted loader) reuses the pinned one. That is why no `pinning` attribute is set here: libbpf's
 * default pin root is /sys/fs/bpf itself, and ambpf must only ever pin under its own directory.
 * Sizes are defaults; the loader may change max_entries before load.
 */
#ifndef AMBPF_MAPS_H
#define AMBPF_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "ambpf.h"

/* Pod IP -> pod. Filled by the loader only, so a plain HASH (never an LRU: an eviction would silently
 * take a pod out of the mesh). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ambpf_ip);
	__type(value, struct ambpf_pod);
} ambpf_pods SEC(".maps");

/* netns cookie -> pod: connect-time identity (all containers of a pod share the netns). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct ambpf_netns);
} ambpf_netns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ambpf_ztunnel);
} ambpf_ztunnel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ambpf_config);
} ambpf_config SEC(".maps");

/* Per-socket original destination, freed with the socket: no cookie-keyed LRU (a full LRU costs
 * ~800 ns per connect, docs/kernel-facts.md "Measured costs"). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ambpf_orig);
} ambpf_orig_dst SEC(".maps");

/* Client 4-tuple -> original dst: ztunnel's accepted socket has another cookie and no storage of
 * ours, but it knows the same 4-tuple reversed. An entry is deleted when both the client's and
 * ztunnel's socket have reached TCP_CLOSE (struct ambpf_pair.closed). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ambpf_tuple);
	__type(value, struct ambpf_pair);
} ambpf_pair_dst SEC(".maps");

/* Own 4-tuple -> socket, for the same-node pod <-> ztunnel splice. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct ambpf_tuple);
	__type(value, __u64);
} ambpf_sockhash SEC(".maps");

/*
 * Connections an ambient pod opened itself (IPv4), keyed as the packets coming back into the pod see
 * them (saddr = the peer), value = when they started. The tc program steers every inbound TCP packet
 * to ztunnel except these (and SYN-ACKs): inbound itself needs no state, so nothing an outside client
 * sends can fill or evict anything. It replaced an LRU of inbound SYNs, whose evictions reset idle
 * long-lived inbound connections (65,536 newer flows were enough). Entries are added by sockops at
 * ACTIVE_ESTABLISHED and deleted at the socket's TCP_CLOSE: a plain HASH, its size is the number of
 * outbound connections the node's pods can hold open at once (`ambpf status` shows the fill).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ambpf_flow4);
	__type(value, __u64);
} ambpf_outflow SEC(".maps");

/* ambpf_outflow for IPv6: the pod's own connections by its own 4-tuple (local = the pod), which is
 * what sockops has and what tc reads off a packet entering the pod (tc_tcp). A map of its own rather
 * than a wider ambpf_outflow key: a pinned map keeps its key size across upgrades, and IPv4's lookups
 * stay at 12 bytes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ambpf_tuple);
	__type(value, __u64);
} ambpf_outflow6 SEC(".maps");

/* ztunnel's inbound listeners (slot AMBPF_LISTENER_*), for sk_lookup in ztunnel's netns. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, AMBPF_LISTENER_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} ambpf_zt_listen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AMBPF_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ambpf_stats SEC(".maps");

#endif /* AMBPF_MAPS_H */

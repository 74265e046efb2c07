/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ambpf_lib.h: small always-inline helpers shared by the programs (counters, addresses, lookups). */
#ifndef AMBPF_LIB_H
#define AMBPF_LIB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "ambpf.h"
#include "ambpf_maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef IPPROTO_TCP
#define IPPROTO_TCP 6
#endif

/* Return codes, named (Cilium style). cgroup sock_addr/sockopt/sockops: 1 = let the call proceed,
 * 0 = fail it with EPERM. ambpf fails a call only where proceeding would take a captured pod's
 * connection around ztunnel (inpod, fail closed); every other miss proceeds unchanged. */
#define SYS_PROCEED 1
#define SYS_REJECT  0

/* Keep clang from merging or reordering adjacent ctx stores/reads the verifier checks one by one. */
#define barrier() asm volatile("" ::: "memory")

/* Read a 32-bit ctx field into a register and pin it there. Without this clang 14 may sink loads from
 * two branches into one block that loads through a computed ctx pointer, which the verifier refuses
 * ("dereference of modified ctx ptr"). */
#define CTX_READ(field)                       \
	({                                    \
		__u32 __v = (field);          \
		asm volatile("" : "+r"(__v)); \
		__v;                          \
	})

/* An IPv6 address out of a ctx's four 32-bit words (local_ip6, remote_ip6, src_ip6, ...), one plain
 * ctx load each. */
#define CTX_IP6(dst, src)                      \
	do {                                   \
		(dst)[0] = CTX_READ((src)[0]); \
		(dst)[1] = CTX_READ((src)[1]); \
		(dst)[2] = CTX_READ((src)[2]); \
		(dst)[3] = CTX_READ((src)[3]); \
	} while (0)

static __always_inline void stat_add(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&ambpf_stats, &idx);

	if (v)
		*v += n; /* per-CPU slot: no atomic needed */
}

static __always_inline void stat_inc(__u32 idx)
{
	stat_add(idx, 1);
}

static __always_inline struct ambpf_ztunnel *ztunnel_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ambpf_ztunnel, &zero);
}

static __always_inline struct ambpf_config *config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ambpf_config, &zero);
}

/* ztunnel is known once the loader has set READY (after writing everything else). Until then
 * nothing is redirected: a rewrite to 0.0.0.0:15001 would break every connection. */
static __always_inline int ztunnel_ready(const struct ambpf_ztunnel *zt)
{
	return zt && (zt->flags & AMBPF_ZT_READY) && zt->ip[3] != 0;
}

#define V4MAPPED_W2 bpf_htonl(0x0000ffff)

static __always_inline void ip_set_v4(__u32 dst[4], __u32 ip4)
{
	dst[0] = 0;
	dst[1] = 0;
	dst[2] = V4MAPPED_W2;
	dst[3] = ip4;
}

static __always_inline int ip_is_v4mapped(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == V4MAPPED_W2;
}

static __always_inline int ip_eq(const __u32 a[4], const __u32 b[4])
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline int ip_is_zero(const __u32 a[4])
{
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

static __always_inline int ip4_is_loopback(__u32 ip4)
{
	return (bpf_ntohl(ip4) >> 24) == 127;
}

static __always_inline int ip6_is_loopback(const __u32 a[4])
{
	return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == bpf_htonl(1);
}

/* 127.0.0.0/8 (v4-mapped) or ::1. */
static __always_inline int ip_is_loopback(const __u32 a[4])
{
	return ip_is_v4mapped(a) ? ip4_is_loopback(a[3]) : ip6_is_loopback(a);
}

/* fe80::/10. */
static __always_inline int ip6_is_linklocal(const __u32 a[4])
{
	return (bpf_ntohl(a[0]) >> 22) == (0xfe80 >> 6);
}

/* One of ztunnel's own addresses: its IPv4 (v4-mapped) or, when it has one, its IPv6. */
static __always_inline int ip_is_ztunnel(const __u32 a[4], const struct ambpf_ztunnel *zt)
{
	return ip_eq(a, zt->ip) || (!ip_is_zero(zt->ip6) && ip_eq(a, zt->ip6));
}

/* The kubelet probe source of a's family (169.254.7.127 v4-mapped, or the IPv6 one when configured). */
static __always_inline int ip_is_probe(const __u32 a[4], const struct ambpf_config *cfg)
{
	return (!ip_is_zero(cfg->probe_ip) && ip_eq(a, cfg->probe_ip)) ||
	       (!ip_is_zero(cfg->probe_ip6) && ip_eq(a, cfg->probe_ip6));
}

/* A v4-mapped or IPv6 address the pod must reach directly: loopback, ztunnel itself, the node's own
 * addresses, the probe source. */
static __always_inline int dst_is_bypassed(const __u32 a[4], const struct ambpf_ztunnel *zt,
					   const struct ambpf_config *cfg)
{
	if (ip_is_v4mapped(a)) {
		if (ip4_is_loopback(a[3]))
			return 1;
	} else if (ip6_is_loopback(a) || ip6_is_linklocal(a)) {
		return 1; /* ::1, fe80::/10 */
	}
	if (ip_eq(a, zt->ip) || ip_eq(a, zt->ip6))
		return 1;
	if (!cfg)
		return 0;
	if (ip_eq(a, cfg->probe_ip) || ip_eq(a, cfg->probe_ip6))
		return 1;
#pragma unroll
	for (int i = 0; i < AMBPF_MAX_NODE_IPS; i++) {
		if (ip_eq(a, cfg->node_ips[i]))
			return 1;
	}
	return 0;
}

static __always_inline int port_is_excluded(__u16 port_be, const struct ambpf_config *cfg)
{
	if (!cfg)
		return 0;
#pragma unroll
	for (int i = 0; i < AMBPF_MAX_EXCLUDED_PORTS; i++) {
		if (cfg->excluded_ports[i] != 0 && cfg->excluded_ports[i] == port_be)
			return 1;
	}
	return 0;
}

/*
 * A socket's own 4-tuple from a bpf_sock_ops or sk_msg_md (same field names and encodings: local_port
 * host order; remote_port network order in the upper 16 bits on little endian, since the kernel shifts
 * it). IPv4 becomes v4-mapped whatever the socket family: dual-stack sockets see IPv4 peers as
 * ::ffff:a.b.c.d, and without one form the client's and ztunnel's keys never meet.
 * A macro because the two ctx types differ; CTX_READ keeps every load a plain ctx access.
 */
#define CTX_TUPLE(ctx, t)                                                                     \
	do {                                                                                  \
		if (CTX_READ((ctx)->family) == AF_INET) {                                     \
			ip_set_v4((t)->local_ip, CTX_READ((ctx)->local_ip4));                 \
			ip_set_v4((t)->remote_ip, CTX_READ((ctx)->remote_ip4));               \
		} else {                                                                      \
			CTX_IP6((t)->local_ip, (ctx)->local_ip6);                             \
			CTX_IP6((t)->remote_ip, (ctx)->remote_ip6);                           \
		}                                                                             \
		(t)->local_port = bpf_htons((__u16)CTX_READ((ctx)->local_port));              \
		(t)->remote_port = bpf_htons((__u16)bpf_ntohl(CTX_READ((ctx)->remote_port))); \
	} while (0)

/*
 * An sk_lookup's connection as the receiving end sees it (local = the destination), IPv4 as
 * v4-mapped; 0 for a family that is neither. Ports are not filled: local_port is host order in the
 * ctx, remote_port network order, and callers want different ones.
 */
static __always_inline int sklookup_addrs(struct bpf_sk_lookup *ctx, struct ambpf_tuple *t)
{
	__u32 family = CTX_READ(ctx->family);

	if (family == AF_INET) {
		ip_set_v4(t->local_ip, CTX_READ(ctx->local_ip4));
		ip_set_v4(t->remote_ip, CTX_READ(ctx->remote_ip4));
		return 1;
	}
	if (family != AF_INET6)
		return 0;
	CTX_IP6(t->local_ip, ctx->local_ip6);
	CTX_IP6(t->remote_ip, ctx->remote_ip6);
	return 1;
}

/*
 * A pod's own connection, for the node topology's tc program to leave its replies alone: `t` is the
 * pod's 4-tuple (local = the pod). IPv4 goes to ambpf_outflow (keyed as the packets coming back see
 * it), IPv6 to ambpf_outflow6 (keyed by the tuple itself). A v4-mapped tuple is IPv4 whatever the
 * socket's family.
 */
static __always_inline void outflow4_key(const struct ambpf_tuple *t, struct ambpf_flow4 *f)
{
	f->saddr = t->remote_ip[3];
	f->daddr = t->local_ip[3];
	f->sport = t->remote_port;
	f->dport = t->local_port;
}

static __always_inline int outflow_has(const struct ambpf_tuple *t)
{
	struct ambpf_flow4 f;

	if (!ip_is_v4mapped(t->local_ip))
		return bpf_map_lookup_elem(&ambpf_outflow6, t) != 0;
	outflow4_key(t, &f);
	return bpf_map_lookup_elem(&ambpf_outflow, &f) != 0;
}

/* 0, or the insert's error with its map-full counter bumped. */
static __always_inline long outflow_put(const struct ambpf_tuple *t, __u64 now)
{
	struct ambpf_flow4 f;
	long err;

	if (!ip_is_v4mapped(t->local_ip)) {
		err = bpf_map_update_elem(&ambpf_outflow6, t, &now, BPF_ANY);
		if (err)
			stat_inc(AMBPF_STAT_MAPFULL_OUTFLOW6);
		return err;
	}
	outflow4_key(t, &f);
	err = bpf_map_update_elem(&ambpf_outflow, &f, &now, BPF_ANY);
	if (err)
		stat_inc(AMBPF_STAT_MAPFULL_OUTFLOW);
	return err;
}

static __always_inline void outflow_del(const struct ambpf_tuple *t)
{
	struct ambpf_flow4 f;

	if (!ip_is_v4mapped(t->local_ip)) {
		bpf_map_delete_elem(&ambpf_outflow6, t);
		return;
	}
	outflow4_key(t, &f);
	bpf_map_delete_elem(&ambpf_outflow, &f);
}

static __always_inline void tuple_reverse(struct ambpf_tuple *dst, const struct ambpf_tuple *src)
{
	__builtin_memcpy(dst->local_ip, src->remote_ip, sizeof(dst->local_ip));
	__builtin_memcpy(dst->remote_ip, src->local_ip, sizeof(dst->remote_ip));
	dst->local_port = src->remote_port;
	dst->remote_port = src->local_port;
}

/* sk_lookup: hand the connection to `sk` (a listener from a SOCKMAP/SOCKHASH lookup, NULL when there
 * is none) and count the outcome. Always SK_PASS: on a miss or an error the normal lookup decides. */
static __always_inline int sklookup_assign(struct bpf_sk_lookup *ctx, struct bpf_sock *sk)
{
	long err;

	if (!sk) {
		stat_inc(AMBPF_STAT_SKLOOKUP_NO_LISTENER);
		return SK_PASS;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		stat_inc(AMBPF_STAT_SKLOOKUP_ERROR);
		return SK_PASS;
	}
	stat_inc(AMBPF_STAT_SKLOOKUP_ASSIGNED);
	return SK_PASS;
}

#endif /* AMBPF_LIB_H */

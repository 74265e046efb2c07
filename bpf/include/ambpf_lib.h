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

/* A v4-mapped or IPv6 address the pod must reach directly: loopback, ztunnel itself, the node's own
 * addresses, the probe source. */
static __always_inline int dst_is_bypassed(const __u32 a[4], const struct ambpf_ztunnel *zt,
					   const struct ambpf_config *cfg)
{
	if (ip_is_v4mapped(a)) {
		if (ip4_is_loopback(a[3]))
			return 1;
	} else if (ip6_is_loopback(a)) {
		return 1; /* ::1 */
	} else if ((bpf_ntohl(a[0]) >> 22) == (0xfe80 >> 6)) {
		return 1; /* fe80::/10 link-local */
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
			(t)->local_ip[0] = CTX_READ((ctx)->local_ip6[0]);                     \
			(t)->local_ip[1] = CTX_READ((ctx)->local_ip6[1]);                     \
			(t)->local_ip[2] = CTX_READ((ctx)->local_ip6[2]);                     \
			(t)->local_ip[3] = CTX_READ((ctx)->local_ip6[3]);                     \
			(t)->remote_ip[0] = CTX_READ((ctx)->remote_ip6[0]);                   \
			(t)->remote_ip[1] = CTX_READ((ctx)->remote_ip6[1]);                   \
			(t)->remote_ip[2] = CTX_READ((ctx)->remote_ip6[2]);                   \
			(t)->remote_ip[3] = CTX_READ((ctx)->remote_ip6[3]);                   \
		}                                                                             \
		(t)->local_port = bpf_htons((__u16)CTX_READ((ctx)->local_port));              \
		(t)->remote_port = bpf_htons((__u16)bpf_ntohl(CTX_READ((ctx)->remote_port))); \
	} while (0)

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

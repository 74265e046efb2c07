/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ambpf_sockaddr.h: the cgroup sock_addr pieces shared by the node (ambpf_sock.bpf.c) and inpod
 * (ambpf_inpod.bpf.c) connect4/6 and getpeername4/6 programs. The two topologies differ in whom they
 * redirect and where to (ztunnel's IP vs 127.0.0.1 in the pod's netns) and where they keep the
 * original dst (ambpf_orig_dst vs ambpf_inpod_sk); reading the app's dst, the bypass rules after
 * ztunnel is known, recording the original and handing it back to getpeername are the same.
 */
#ifndef AMBPF_SOCKADDR_H
#define AMBPF_SOCKADDR_H

#include "ambpf_lib.h"

/* connect_bypass() result: redirect (not a counter index; AMBPF_STAT_MAX indexes nothing). */
#define CONNECT_REDIRECT AMBPF_STAT_MAX

/* A TCP connect4's destination (IPv4 as v4-mapped) and port (network order, low 16 bits of the
 * 32-bit field); 0 for anything but TCP, which is never redirected. */
static __always_inline int connect_dst4(struct bpf_sock_addr *ctx, __u32 dst[4], __u16 *dport_be)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	ip_set_v4(dst, ctx->user_ip4);
	*dport_be = (__u16)ctx->user_port;
	return 1;
}

/* The same for connect6: a dual-stack socket's IPv4 peer arrives v4-mapped already. */
static __always_inline int connect_dst6(struct bpf_sock_addr *ctx, __u32 dst[4], __u16 *dport_be)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	dst[0] = ctx->user_ip6[0];
	dst[1] = ctx->user_ip6[1];
	dst[2] = ctx->user_ip6[2];
	dst[3] = ctx->user_ip6[3];
	*dport_be = (__u16)ctx->user_port;
	return 1;
}

/* Whole 32-bit stores, one per word: narrow ctx writes are rejected by the verifier. */
static __always_inline void sockaddr_set_ip6(struct bpf_sock_addr *ctx, const __u32 a[4])
{
	ctx->user_ip6[0] = a[0];
	ctx->user_ip6[1] = a[1];
	ctx->user_ip6[2] = a[2];
	ctx->user_ip6[3] = a[3];
}

/*
 * The bypass rules that apply once the pod is ambient and ztunnel ready, in this order (the first
 * that matches is counted): ztunnel's mark on the socket (ztunnel's own upstreams; a pod may set it
 * to opt a socket out, as with Istio), a destination the pod must reach directly (dst_is_bypassed,
 * or `direct` when the caller has one more such address), an excluded port. Returns the counter
 * index of the reason, or CONNECT_REDIRECT.
 */
static __always_inline __u32 connect_bypass(struct bpf_sock_addr *ctx, const __u32 dst[4], __u16 dport_be,
					    const struct ambpf_ztunnel *zt, const struct ambpf_config *cfg,
					    const __u32 *direct)
{
	if ((ctx->sk->mark & zt->mark_mask) == zt->mark)
		return AMBPF_STAT_CONNECT4_BYPASS_MARK;
	if (dst_is_bypassed(dst, zt, cfg) || (direct && ip_eq(dst, direct)))
		return AMBPF_STAT_CONNECT4_BYPASS_DST;
	if (port_is_excluded(dport_be, cfg))
		return AMBPF_STAT_CONNECT4_BYPASS_PORT;
	return CONNECT_REDIRECT;
}

/* What the app asked connect() for, kept for getsockopt and getpeername. */
static __always_inline void orig_set(struct ambpf_orig *orig, const __u32 dst[4], __u16 port_be, __u16 family)
{
	__builtin_memcpy(orig->ip, dst, sizeof(orig->ip));
	orig->port = port_be;
	orig->family = family;
}

/* getpeername4/6: the app sees the peer it asked for, not ztunnel (as with iptables NAT). `orig` is
 * NULL for a socket that was not redirected; getpeername4 restores only an IPv4 original. */
static __always_inline int peername4_restore(struct bpf_sock_addr *ctx, const struct ambpf_orig *orig)
{
	if (!orig || !ip_is_v4mapped(orig->ip))
		return SYS_PROCEED;
	ctx->user_ip4 = orig->ip[3];
	ctx->user_port = (__u32)orig->port;
	stat_inc(AMBPF_STAT_GETPEERNAME_RESTORED);
	return SYS_PROCEED;
}

static __always_inline int peername6_restore(struct bpf_sock_addr *ctx, const struct ambpf_orig *orig)
{
	if (!orig)
		return SYS_PROCEED;
	sockaddr_set_ip6(ctx, orig->ip);
	ctx->user_port = (__u32)orig->port;
	stat_inc(AMBPF_STAT_GETPEERNAME_RESTORED);
	return SYS_PROCEED;
}

#endif /* AMBPF_SOCKADDR_H */

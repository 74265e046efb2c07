/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ambpf_sockopt.h: the SO_ORIGINAL_DST answer shared by the node (ambpf_sock.bpf.c) and inpod
 * (ambpf_inpod.bpf.c) getsockopt programs. They differ only in how they find the original dst; the
 * client's 4-tuple seen from ztunnel's accepted socket and the sockaddr written back are the same.
 */
#ifndef AMBPF_SOCKOPT_H
#define AMBPF_SOCKOPT_H

#include "ambpf_lib.h"

#define SOL_IP		0
#define SOL_IPV6	41
#define SO_ORIGINAL_DST 80 /* <linux/netfilter_ipv4.h>; IP6T_SO_ORIGINAL_DST is 80 too */
#define SOL_SOCKET	1  /* <asm-generic/socket.h> */
#define SO_MARK		36

/* Userspace sockaddr layouts, written into getsockopt's optval. */
struct sockaddr_in_ {
	__u16 sin_family;
	__be16 sin_port;
	__u32 sin_addr;
	__u8 sin_zero[8];
};

struct sockaddr_in6_ {
	__u16 sin6_family;
	__be16 sin6_port;
	__u32 sin6_flowinfo;
	__u32 sin6_addr[4];
	__u32 sin6_scope_id;
};

/*
 * Must be the first thing every getsockopt program does. A getsockopt whose optlen is larger than a
 * page (iptables-legacy's IPT_SO_GET_ENTRIES from a hostNetwork pod under kubepods, SO_PEERSEC with a
 * big buffer) gets only a page-sized buffer in the BPF context; before Linux 6.5 the kernel then fails
 * the call with EFAULT unless the program sets optlen to 0, which means "leave the kernel's answer
 * alone" (Documentation/bpf/prog_cgroup_sockopt.rst, "Large CGROUP_SOCKOPT"). SO_ORIGINAL_DST asks for
 * 16 or 28 bytes, so it never takes this branch. 4096 rather than the real page size: on a
 * bigger-page kernel a 4-64 KiB call also gets optlen 0, which is still "the kernel's answer".
 */
#define SOCKOPT_MAX_BUF 4096

static __always_inline int sockopt_too_large(struct bpf_sockopt *ctx)
{
	if (ctx->optlen > SOCKOPT_MAX_BUF) {
		ctx->optlen = 0;
		return 1;
	}
	return 0;
}

/* Only the two options conntrack would answer, on TCP sockets; everything else is left alone. */
static __always_inline int sockopt_wants_orig_dst(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;

	if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6))
		return 0;
	return sk && sk->protocol == IPPROTO_TCP;
}

/* ztunnel's accepted socket: its remote is the client's local and vice versa. */
static __always_inline void sockopt_client_tuple(struct bpf_sock *sk, struct ambpf_tuple *client)
{
	if (CTX_READ(sk->family) == AF_INET) {
		ip_set_v4(client->local_ip, CTX_READ(sk->dst_ip4));
		ip_set_v4(client->remote_ip, CTX_READ(sk->src_ip4));
	} else {
		CTX_IP6(client->local_ip, sk->dst_ip6);
		CTX_IP6(client->remote_ip, sk->src_ip6);
	}
	client->local_port = (__u16)sk->dst_port;			/* __be16 */
	client->remote_port = bpf_htons((__u16)CTX_READ(sk->src_port)); /* host order */
}

/* Write orig as the option's value and clear the kernel's error; counts the outcome. */
static __always_inline int sockopt_answer(struct bpf_sockopt *ctx, const struct ambpf_orig *orig)
{
	void *optval = ctx->optval, *optval_end = ctx->optval_end;
	__u32 optlen;

	if (ctx->level == SOL_IP) {
		struct sockaddr_in_ *sin = optval;

		/* ztunnel asks SOL_IP first whatever the family (src/socket.rs orig_dst_addr), then SOL_IPV6:
		 * for an IPv6 original the IPv4 option has no answer, as with conntrack. */
		if (!ip_is_v4mapped(orig->ip)) {
			stat_inc(AMBPF_STAT_GETSOCKOPT_MISS);
			return SYS_PROCEED; /* the kernel's own error stands */
		}
		if ((void *)(sin + 1) > optval_end) {
			stat_inc(AMBPF_STAT_GETSOCKOPT_ERROR);
			return SYS_PROCEED; /* the kernel's own error stands */
		}
		sin->sin_family = AF_INET;
		sin->sin_port = orig->port;
		sin->sin_addr = orig->ip[3];
		__builtin_memset(sin->sin_zero, 0, sizeof(sin->sin_zero));
		optlen = sizeof(*sin);
	} else {
		struct sockaddr_in6_ *sin6 = optval;

		if ((void *)(sin6 + 1) > optval_end) {
			stat_inc(AMBPF_STAT_GETSOCKOPT_ERROR);
			return SYS_PROCEED;
		}
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = orig->port;
		sin6->sin6_flowinfo = 0;
		sin6->sin6_addr[0] = orig->ip[0];
		sin6->sin6_addr[1] = orig->ip[1];
		sin6->sin6_addr[2] = orig->ip[2];
		sin6->sin6_addr[3] = orig->ip[3];
		sin6->sin6_scope_id = 0;
		optlen = sizeof(*sin6);
	}
	/* The kernel's getsockopt already failed (no conntrack): clear its error and say how much we
	 * wrote. The barrier keeps clang 14 from merging the two 4-byte ctx stores into one 8-byte store
	 * that every kernel rejects (invalid bpf_context access off=32 size=8). */
	ctx->retval = 0;
	barrier();
	ctx->optlen = optlen;
	stat_inc(AMBPF_STAT_GETSOCKOPT_ANSWERED);
	return SYS_PROCEED;
}

#endif /* AMBPF_SOCKOPT_H */

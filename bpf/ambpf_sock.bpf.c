// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ambpf_sock.bpf.c: the outbound half of the node topology, all attached to the pods' cgroup subtree.
 *
 *   connect4/6     an ambient pod's TCP connect() goes to ztunnel IP:15001; the original dst is kept in
 *                  the socket's local storage (ambpf_orig_dst).
 *   sockops        at ESTABLISHED the original dst is copied to ambpf_pair_dst under the 4-tuple, which is
 *                  the only thing ztunnel's accepted socket shares with the client's; deleted once both
 *                  sockets reached TCP_CLOSE. Same-node pod <-> ztunnel sockets go into ambpf_sockhash
 *                  for sk_msg.
 *   getsockopt     answers SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST for ztunnel from ambpf_pair_dst, as
 *                  conntrack would after an iptables REDIRECT.
 *   getpeername4/6 the app sees the peer it asked for, not ztunnel (as with iptables NAT).
 *
 * Every program lets the call proceed: a miss means "not ours", never an error for the app.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "include/ambpf.h"
#include "include/ambpf_maps.h"
#include "include/ambpf_lib.h"
#include "include/ambpf_sockaddr.h"
#include "include/ambpf_sockopt.h"

/*
 * Decide whether a connect from this socket is redirected. Returns the ztunnel entry to redirect to,
 * or NULL (and counts why) when the connect must go where the app asked.
 */
static __always_inline struct ambpf_ztunnel *redirect_target(struct bpf_sock_addr *ctx, const __u32 dst[4],
							     __u16 dport_be, __u32 stat_bypass6)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);
	struct ambpf_netns *ns = bpf_map_lookup_elem(&ambpf_netns, &cookie);
	struct ambpf_config *cfg = config_get();
	struct ambpf_ztunnel *zt;
	__u32 why;

	if (!ns || !(ns->flags & AMBPF_POD_AMBIENT) || (ns->flags & AMBPF_POD_OPT_OUT)) {
		why = AMBPF_STAT_CONNECT4_NOT_AMBIENT;
		goto bypass;
	}
	if (ns->flags & AMBPF_POD_IS_ZTUNNEL) {
		why = AMBPF_STAT_CONNECT4_BYPASS_ZTUNNEL;
		goto bypass;
	}
	zt = ztunnel_get();
	if (!ztunnel_ready(zt)) {
		why = AMBPF_STAT_CONNECT4_NO_ZTUNNEL;
		goto bypass;
	}
	if (zt->netns_cookie == cookie) {
		why = AMBPF_STAT_CONNECT4_BYPASS_ZTUNNEL;
		goto bypass;
	}
	why = connect_bypass(ctx, dst, dport_be, zt, cfg, 0);
	if (why != CONNECT_REDIRECT)
		goto bypass;
	return zt;
bypass:
	/* connect6 folds its reasons into one counter: IPv6 is rare, and connect4 has the detail. */
	stat_inc(stat_bypass6 ? stat_bypass6 : why);
	return NULL;
}

static __always_inline int save_orig(struct bpf_sock_addr *ctx, const __u32 dst[4], __u16 port_be, __u16 family)
{
	struct ambpf_orig *orig = bpf_sk_storage_get(&ambpf_orig_dst, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!orig) {
		stat_inc(AMBPF_STAT_MAPFULL_ORIG_DST); /* no memory: the connect goes as asked, counted */
		return -1;
	}
	orig_set(orig, dst, port_be, family);
	return 0;
}

SEC("cgroup/connect4")
int ambpf_connect4(struct bpf_sock_addr *ctx)
{
	struct ambpf_ztunnel *zt;
	__u32 dst[4];
	__u16 dport;

	if (!connect_dst4(ctx, dst, &dport))
		return SYS_PROCEED;
	zt = redirect_target(ctx, dst, dport, 0);
	if (!zt)
		return SYS_PROCEED;
	/* No storage, no redirect: ztunnel could not learn where the connection was going. */
	if (save_orig(ctx, dst, dport, AF_INET)) {
		stat_inc(AMBPF_STAT_CONNECT4_ERROR);
		return SYS_PROCEED;
	}
	/* Whole 32-bit stores: narrow ctx writes are rejected by the verifier. */
	ctx->user_ip4 = zt->ip[3];
	ctx->user_port = (__u32)bpf_htons(zt->port_out_host);
	stat_inc(AMBPF_STAT_CONNECT4_REDIRECTED);
	return SYS_PROCEED;
}

SEC("cgroup/connect6")
int ambpf_connect6(struct bpf_sock_addr *ctx)
{
	struct ambpf_ztunnel *zt;
	__u32 dst[4];
	__u16 dport;
	int mapped;

	if (!connect_dst6(ctx, dst, &dport))
		return SYS_PROCEED;
	mapped = ip_is_v4mapped(dst);
	zt = redirect_target(ctx, dst, dport, AMBPF_STAT_CONNECT6_BYPASS);
	if (!zt)
		return SYS_PROCEED;
	/* A v4-mapped dst (dual-stack socket) goes to ztunnel's IPv4 as v4-mapped; real IPv6 needs
	 * ztunnel to have an IPv6 address. */
	if (!mapped && ip_is_zero(zt->ip6)) {
		stat_inc(AMBPF_STAT_CONNECT6_BYPASS);
		return SYS_PROCEED;
	}
	if (save_orig(ctx, dst, dport, AF_INET6)) {
		stat_inc(AMBPF_STAT_CONNECT6_ERROR);
		return SYS_PROCEED;
	}
	if (mapped)
		sockaddr_set_ip6(ctx, zt->ip);
	else
		sockaddr_set_ip6(ctx, zt->ip6);
	ctx->user_port = (__u32)bpf_htons(zt->port_out_host);
	stat_inc(AMBPF_STAT_CONNECT6_REDIRECTED);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int ambpf_peername4(struct bpf_sock_addr *ctx)
{
	return peername4_restore(ctx, bpf_sk_storage_get(&ambpf_orig_dst, ctx->sk, 0, 0));
}

SEC("cgroup/getpeername6")
int ambpf_peername6(struct bpf_sock_addr *ctx)
{
	return peername6_restore(ctx, bpf_sk_storage_get(&ambpf_orig_dst, ctx->sk, 0, 0));
}

/* ---- sockops ---- */

static __always_inline int splice_enabled(void)
{
	struct ambpf_config *cfg = config_get();

	return cfg && (cfg->flags & AMBPF_CFG_SPLICE);
}

/* A pod opened a connection that is not ztunnel's: the tc program must let its replies in (IPv4 in
 * ambpf_outflow, IPv6 in ambpf_outflow6). Any pod in ambpf_pods, not only ambient ones: a pod that
 * turns ambient keeps the connections it already had. The close deletes it whatever ambpf_pods says
 * by then. */
static __always_inline void outflow_add(struct bpf_sock_ops *skops, const struct ambpf_tuple *t)
{
	if (!bpf_map_lookup_elem(&ambpf_pods, t->local_ip))
		return;
	if (outflow_put(t, bpf_ktime_get_ns())) {
		stat_inc(AMBPF_STAT_SOCKOPS_ERROR); /* full: its replies will be steered; counted */
		return;
	}
	stat_inc(AMBPF_STAT_SOCKOPS_OUTFLOW_ADDED);
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* The pod side: connect() returned on a socket connect4 redirected (or not). */
static __always_inline void on_active_established(struct bpf_sock_ops *skops)
{
	struct ambpf_tuple t = {};
	struct ambpf_pair pair = {};
	struct ambpf_orig *orig;
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return;
	CTX_TUPLE(skops, &t);
	orig = bpf_sk_storage_get(&ambpf_orig_dst, sk, 0, 0);
	if (!orig) {
		/* Not redirected, but an entry on this very tuple may survive from an earlier redirected
		 * connection whose close we missed: left there, getsockopt would answer a stale dst. */
		if (bpf_map_delete_elem(&ambpf_pair_dst, &t) == 0)
			stat_inc(AMBPF_STAT_SOCKOPS_STALE_DELETED);
		/* Its replies come from the peer, not from ztunnel: inbound steering must pass them. */
		outflow_add(skops, &t);
		return;
	}
	pair.orig = *orig;
	if (bpf_map_update_elem(&ambpf_pair_dst, &t, &pair, BPF_ANY)) {
		stat_inc(AMBPF_STAT_SOCKOPS_ERROR); /* full map: counted, getsockopt will miss */
		stat_inc(AMBPF_STAT_MAPFULL_PAIR_DST);
		return;
	}
	stat_inc(AMBPF_STAT_SOCKOPS_PAIR_ADDED);
	/* Ask for state changes: the entry goes when this socket and ztunnel's have both closed. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	if (!splice_enabled())
		return;
	/* Full: this socket is not spliced and takes the normal path, counted. */
	if (bpf_sock_hash_update(skops, &ambpf_sockhash, &t, BPF_ANY) == 0)
		stat_inc(AMBPF_STAT_SOCKOPS_SOCKHASH_ADDED);
	else
		stat_inc(AMBPF_STAT_MAPFULL_SOCKHASH);
}

/* The ztunnel side: its listener accepted a connection (before accept(): the child socket exists once
 * the handshake completes). If the client is a pod connect4 redirected (its pair entry exists: the
 * client reached ESTABLISHED first, its ACK made this socket), this socket's close is asked for too,
 * so the entry outlives a client that closes before ztunnel accepts; and it is spliced when enabled. */
static __always_inline void on_passive_established(struct bpf_sock_ops *skops)
{
	struct ambpf_tuple t = {}, client = {};
	struct ambpf_pair *pair;

	CTX_TUPLE(skops, &t);
	tuple_reverse(&client, &t);
	pair = bpf_map_lookup_elem(&ambpf_pair_dst, &client);
	if (!pair)
		return;
	if (bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG) == 0)
		pair->zt_seen = 1;
	if (!splice_enabled())
		return;
	if (bpf_sock_hash_update(skops, &ambpf_sockhash, &t, BPF_ANY) == 0) {
		stat_inc(AMBPF_STAT_SOCKOPS_SOCKHASH_ADDED);
	} else {
		stat_inc(AMBPF_STAT_SOCKOPS_ERROR);
		stat_inc(AMBPF_STAT_MAPFULL_SOCKHASH);
	}
}

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "AMBPF_PAIR_CLOSED_ONE puts the close count in the top byte of a little-endian word"
#endif
_Static_assert(__builtin_offsetof(struct ambpf_pair, closed) == __builtin_offsetof(struct ambpf_pair, splice_fwd) + 3,
	       "ambpf_pair.closed must be the top byte of the word at splice_fwd");

/*
 * One socket of a pair reached TCP_CLOSE: the client's (its own tuple is the key) or ztunnel's (the
 * reversed one). The entry goes when both have closed, or at the client's close when ztunnel's side
 * never registered (the client gave up before the handshake completed: nobody will ask). Counting
 * with an atomic add and reading back after it: of two closes racing on two CPUs at least the later
 * one reads 2 (both may, and a second delete is a harmless miss).
 */
static __always_inline void on_close(struct bpf_sock_ops *skops)
{
	struct ambpf_tuple t = {}, key = {};
	struct ambpf_pair *pair;
	int client_side = 1;

	CTX_TUPLE(skops, &t);
	outflow_del(&t);
	pair = bpf_map_lookup_elem(&ambpf_pair_dst, &t);
	if (pair) {
		key = t;
	} else {
		tuple_reverse(&key, &t);
		pair = bpf_map_lookup_elem(&ambpf_pair_dst, &key);
		if (!pair)
			return;
		client_side = 0;
	}
	if (client_side && !pair->zt_seen)
		goto delete;
	/* Result unused on purpose: clang then emits the plain atomic add 5.10 accepts. */
	__sync_fetch_and_add((__u32 *)&pair->splice_fwd, AMBPF_PAIR_CLOSED_ONE);
	if (*(volatile __u8 *)&pair->closed < 2)
		return;
	delete : if (bpf_map_delete_elem(&ambpf_pair_dst, &key) == 0) stat_inc(AMBPF_STAT_SOCKOPS_PAIR_CLOSED);
}

SEC("sockops")
int ambpf_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on_active_established(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_passive_established(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* args[0] old state, args[1] new: count a socket's close once. */
		if (skops->args[1] == BPF_TCP_CLOSE && skops->args[0] != BPF_TCP_CLOSE)
			on_close(skops);
		break;
	default:
		break;
	}
	return SYS_PROCEED;
}

/* ---- getsockopt ---- */

SEC("cgroup/getsockopt")
int ambpf_getsopt(struct bpf_sockopt *ctx)
{
	struct ambpf_tuple client = {};
	struct ambpf_pair *pair;

	/* First: a large call keeps the kernel's own answer (ambpf_sockopt.h). */
	if (sockopt_too_large(ctx))
		return SYS_PROCEED;
	if (!sockopt_wants_orig_dst(ctx))
		return SYS_PROCEED;
	sockopt_client_tuple(ctx->sk, &client);
	pair = bpf_map_lookup_elem(&ambpf_pair_dst, &client);
	if (!pair) {
		stat_inc(AMBPF_STAT_GETSOCKOPT_MISS);
		return SYS_PROCEED;
	}
	return sockopt_answer(ctx, &pair->orig);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ambpf_inpod.bpf.c: the inpod topology (Istio 1.21+), where ztunnel opens its 15001/15006/15008
 * listeners inside every mesh pod's own netns. Replaces Istio's in-pod iptables rules; nothing of
 * ours runs in the node's netns (no program, route or rule there), so it cannot clash with the CNI.
 *
 *   connect4/6       (pods' cgroup subtree) an ambient pod's TCP connect() goes to ztunnel's 15001 in
 *                    the pod's own netns. Where the pod's route and ztunnel's IP_TRANSPARENT 15001
 *                    allow (AMBPF_POD_LOCAL_ROUTE, 5.17+), it keeps its destination and is delivered
 *                    on lo, TPROXY-style, to sk_lookup (inpod_keep_dst): nothing recorded. Otherwise
 *                    it is rewritten to 15001 at the pod's own address of the destination's family (its
 *                    IPv4 address, v4-mapped on a dual-stack socket; its IPv6 address for native
 *                    IPv6), so ztunnel sees the pod's address as source as with Istio's REDIRECT;
 *                    127.0.0.1 / ::1 when the pod has no address of that family. The original dst
 *                    and the netns cookie go into the socket's storage (ambpf_inpod_sk). ztunnel's
 *                    own connects are never redirected; those of its inbound legs that spoof the
 *                    client's address are recorded for sk_lookup (inpod_ztunnel_leg). ztunnel runs
 *                    in a pod, inside the cgroup subtree these programs are attached to.
 *   getpeername4/6   the app sees the peer it asked for. On ztunnel's accepted 15001 socket (the kernel
 *                    runs getpeername inside accept()) the client's socket is looked up by the 4-tuple
 *                    and its original copied onto the accepted socket (inpod_handover): no map entry
 *                    per connection, no sockops. A socket at neither end of 15001/15053 (a kept
 *                    connection's, both ends) returns after one port test.
 *   getsockopt       answers SO_ORIGINAL_DST for ztunnel's accepted socket, from its storage (or from
 *                    ambpf_inpod_closed). Its netns cookie comes from socket storage the loader put on
 *                    ztunnel's 15001 listener and the kernel cloned to the accepted socket
 *                    (BPF_F_CLONE): bpf_get_netns_cookie is not callable from getsockopt before 5.15
 *                    (docs/kernel-facts.md), and this loads on 5.10.
 *   sock_release     a redirected client that closes before ztunnel's accept() took its original
 *                    leaves it in ambpf_inpod_closed for getsockopt.
 *   sk_lookup        attached to each mesh pod's netns (one pinned link per pod): a kept outbound
 *                    connection's SYN (arrived on lo) goes to ztunnel's 15001; a new inbound TCP
 *                    connection (IPv4 or IPv6) to one of the pod's IPs is handed to ztunnel's listener
 *                    in that netns, 15008
 *                    for dport 15008 (HBONE), 15006 otherwise. The destination is already local, so no
 *                    route, mark, sysctl or IP_TRANSPARENT is needed, and the accepted socket's local
 *                    address is the original destination.
 *
 * Why sk_lookup and not tc ingress + bpf_sk_assign on the pod's eth0: tc silently drops a SYN whose
 * 4-tuple is still in TIME_WAIT in the pod (docs/kernel-facts.md, "Inbound steering", measured ~27k -> ~630 conn/s), and it
 * would need a per-packet flow table to leave the replies of the pod's own outbound connections
 * alone; sk_lookup runs only when the established/TIME_WAIT lookup found nothing, i.e. exactly for new
 * inbound connections. Listener keys are {pod IP, slot} rather than the netns cookie because
 * sk_lookup has no netns cookie helper on older kernels, and the local address is the pod's IP.
 *
 *   sendmsg4/6, recvmsg4/6 and UDP connect4/6: DNS capture. A captured pod's UDP to port 53 goes to
 *                    ztunnel's DNS proxy on localhost:15053 and the answers come back from the server
 *                    the app asked (Istio's nat OUTPUT REDIRECT to 15053 does the same); TCP to port 53
 *                    goes there too, at connect4/6. See "DNS capture" below.
 *
 * Not captured: connections ztunnel makes (SO_MARK 0x539: connect4 skips them), connections between
 * two local addresses (the loop trap, docs/kernel-facts.md: ztunnel's upstream to the pod's own IP
 * arrives with ingress_ifindex = eth0 and would be steered back into ztunnel), the kubelet probe
 * source 169.254.7.127, loopback, pods not (or no longer) ambient in ambpf_pods.
 *
 * The same-node splice (sk_msg) is not wired for inpod: the pod <-> ztunnel hop is loopback inside
 * one netns here, and the splice's sockhash is keyed by a 4-tuple that repeats across pods.
 */
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include "include/ambpf.h"
#include "include/ambpf_maps.h"
#include "include/ambpf_lib.h"
#include "include/ambpf_sockaddr.h"
#include "include/ambpf_sockopt.h"
#include "include/ambpf_pkt.h"

#define INPOD_LOOPBACK4	   bpf_htonl(0x7f000001) /* 127.0.0.1 */
#define INPOD_DNS_PORT_BE  bpf_htons(AMBPF_DNS_PORT)
#define INPOD_DNS_PROXY_BE bpf_htons(AMBPF_PORT_DNS)

/* Per socket: see struct ambpf_inpod_sk. BPF_F_CLONE: accepted sockets inherit their listener's. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct ambpf_inpod_sk);
} ambpf_inpod_sk SEC(".maps");

/* {netns cookie, client 4-tuple} -> original dst of a client that closed before ztunnel's accept()
 * took it (ambpf_inpod_release); getsockopt takes it. Only that race writes here, never the common
 * case. An LRU: an entry ztunnel never asks for (it never accepted) goes by itself. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ambpf_inpod_key);
	__type(value, struct ambpf_orig);
} ambpf_inpod_closed SEC(".maps");

/* {pod IP, slot} -> ztunnel's 15001/15006/15008 listener inside that pod's netns. Filled by the loader;
 * an entry leaves by itself when the listener closes (ztunnel restarted). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 98304); /* 6 per pod IP (15001, 15006, 15008, twice in a rolling upgrade) x 16384 */
	__type(key, struct ambpf_inpod_lkey);
	__type(value, __u64);
} ambpf_inpod_listen SEC(".maps");

/* ztunnel's mark and ports when the loader has not written ambpf_ztunnel (no ztunnel pod known yet):
 * a captured pod is redirected all the same (fail closed), and ztunnel's sockets are known by the mark
 * every ztunnel uses (reference: docs/inpod.md). */
static const struct ambpf_ztunnel inpod_default_zt = {
	.mark = AMBPF_ZTUNNEL_MARK,
	.mark_mask = AMBPF_ZTUNNEL_MARK_MASK,
};

/* ztunnel's inbound legs that spoof the client's address (ztunnel binds to it, IP_TRANSPARENT), by the
 * app-side 4-tuple (local = pod IP:port, remote = client IP:port) -> when connect4/6 recorded it
 * (inpod_leg_clock): put there when ztunnel connects such a leg (inpod_ztunnel_leg), read by sk_lookup,
 * which lets the leg reach the app instead of steering it back into ztunnel (its source is not the
 * pod's own IP, so the loop guard local == remote does not catch it). An entry answers for
 * INPOD_LEG_WINDOW, the time a connect() retransmits its SYN, so a SYN the app's full accept queue
 * dropped still reaches the app when it comes again (the connect runs once; the SYNs do not); older,
 * it is deleted when met. An LRU: were one evicted first, that leg would go to ztunnel's 15006 (one more
 * hop through ztunnel), never around it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ambpf_tuple);
	__type(value, __u32);
} ambpf_inpod_origsrc SEC(".maps");

/* New connections the node itself opened to a pod (kubelet's probes, hostNetwork pods), by the app-side
 * 4-tuple: put there by tc on the pod's eth0 (ambpf_inpod_node_syn), taken by sk_lookup, which lets
 * them reach the app as Istio's host SNAT rule + 169.254.7.127 exemption does, without a rule in the
 * node's netns. An LRU: an entry is normally gone a few microseconds after it was written; if one were
 * evicted first, that probe would go through ztunnel instead (and still reach the app). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct ambpf_tuple);
	__type(value, __u32);
} ambpf_inpod_nodesyn SEC(".maps");

/* The pod's annotation first, then the node's switch (--no-dns-capture), as istio-cni decides. */
/* A coarse clock for ambpf_inpod_origsrc: ~1.05 ms units (ns >> 20) fit a __u32 for 52 days, and the
 * unsigned difference of two readings stays right across a wrap. */
static __always_inline __u32 inpod_leg_clock(void)
{
	return (__u32)(bpf_ktime_get_ns() >> 20);
}

/* 7 s: a connect()'s first SYN and its retransmits at 1 s and 3 s (tcp_syn_retries counts from there). */
#define INPOD_LEG_WINDOW ((__u32)((7ULL * 1000000000ULL) >> 20))

static __always_inline int inpod_dns_wanted(const struct ambpf_netns *ns)
{
	struct ambpf_config *cfg = config_get();

	if (ns->flags & AMBPF_POD_DNS_CAPTURE)
		return 1;
	if (ns->flags & AMBPF_POD_NO_DNS_CAPTURE)
		return 0;
	return cfg && !(cfg->flags & AMBPF_CFG_NO_DNS_CAPTURE);
}

/*
 * The bypass rules of a captured query to port 53 (connect_bypass's for everything else): Istio
 * captures DNS to any address that does not go via lo, so only ztunnel's mark, loopback, this host
 * (0.0.0.0, ::), the pod's own IP and an excluded port 53 leave it alone. The node's addresses are
 * captured: a resolver on the node is still the pod's resolver.
 */
static __always_inline __u32 inpod_dns_bypass(struct bpf_sock_addr *ctx, const __u32 dst[4], __u16 dport_be,
					      const struct ambpf_ztunnel *zt, const struct ambpf_config *cfg,
					      const __u32 *pod_ip)
{
	int local = ip_is_v4mapped(dst)
			    ? ip4_is_loopback(dst[3]) || dst[3] == 0
			    : ip_is_zero(dst) || (dst[0] == 0 && dst[1] == 0 && dst[2] == 0 && dst[3] == bpf_htonl(1));

	if ((ctx->sk->mark & zt->mark_mask) == zt->mark)
		return AMBPF_STAT_CONNECT4_BYPASS_MARK;
	if (local || ip_eq(dst, pod_ip))
		return AMBPF_STAT_CONNECT4_BYPASS_DST;
	if (port_is_excluded(dport_be, cfg))
		return AMBPF_STAT_CONNECT4_BYPASS_PORT;
	return CONNECT_REDIRECT;
}

/* The pod's own address of dst's family: its IPv6 address for a native IPv6 dst when it has one, else
 * pod_ip (IPv4, or an IPv6-only pod's IPv6 address). Its connects to it stay direct (over lo); a
 * --fail-open check looks for ztunnel's listener under it (every pod IP has its entries). */
static __always_inline const __u32 *inpod_own_ip(const struct ambpf_netns *ns, const __u32 dst[4])
{
	return ip_is_v4mapped(dst) || ip_is_zero(ns->pod_ip6) ? ns->pod_ip : ns->pod_ip6;
}

/*
 * ztunnel's inbound leg to the app of this pod, bound to the original client's address: ztunnel binds
 * (client IP, port 0) with IP_TRANSPARENT and then connects (ENABLE_ORIG_SRC, its default; ztunnel
 * src/proxy.rs), so the whole 4-tuple is known here, before the SYN exists. Recorded for sk_lookup,
 * and AMBPF_MARK_ORIG_SRC is added to the socket's mark: the SYN carries it, the app's accepted socket
 * takes it (tcp_fwmark_accept=1 in the pod), and the pod's `ip rule fwmark 0x1000/0x1000 lookup 41919`
 * sends the app's replies to the client's address back over lo to ztunnel instead of out of eth0. The
 * same socket's route is unchanged (its destination is local). Any other connect of ztunnel's (not
 * bound, or to another address) is left as it is.
 */
static __always_inline int inpod_ztunnel_leg(struct bpf_sock_addr *ctx, const struct ambpf_netns *ns,
					     const __u32 dst[4], __u16 dport_be)
{
	struct bpf_sock *sk = ctx->sk;
	struct ambpf_tuple t = {};
	__u32 now = inpod_leg_clock();
	int mark;

	t.remote_port = bpf_htons((__u16)CTX_READ(sk->src_port));
	if (!t.remote_port || !(ip_eq(dst, ns->pod_ip) || ip_eq(dst, ns->pod_ip6)))
		return 0;
	if (CTX_READ(sk->family) == AF_INET)
		ip_set_v4(t.remote_ip, CTX_READ(sk->src_ip4));
	else
		CTX_IP6(t.remote_ip, sk->src_ip6);
	if (ip_is_zero(t.remote_ip) || ip_eq(t.remote_ip, dst))
		return 0;
	__builtin_memcpy(t.local_ip, dst, sizeof(t.local_ip));
	t.local_port = dport_be;
	/* Unrecorded, the leg would be steered back into ztunnel; unmarked, the app's replies would leave
	 * through eth0: either way refused (EPERM), and ztunnel reports the failed connect. */
	if (bpf_map_update_elem(&ambpf_inpod_origsrc, &t, &now, BPF_ANY)) {
		stat_inc(AMBPF_STAT_MAPFULL_INPOD_ORIGSRC); /* an LRU: only out of memory */
		return -1;
	}
	mark = (int)(CTX_READ(sk->mark) | AMBPF_MARK_ORIG_SRC);
	if (bpf_setsockopt(ctx, SOL_SOCKET, SO_MARK, &mark, sizeof(mark))) {
		bpf_map_delete_elem(&ambpf_inpod_origsrc, &t);
		return -1;
	}
	stat_inc(AMBPF_STAT_ORIG_SRC_MARKED);
	return 0;
}

/*
 * Whether this connect is redirected; counts why not. A pod is in ambpf_netns from the moment the
 * loader armed its capture, before ztunnel was told about it over ZDS: its connects then go to its
 * own IP:15001, where nobody listens until ztunnel took the pod, so they are refused (fail closed, as
 * with Istio's rules), never sent direct. With --fail-open (AMBPF_CFG_FAIL_OPEN) a pod whose ztunnel
 * listener is missing talks direct instead. 2: a DNS query (port 53, the pod's DNS captured) for
 * ztunnel's 15053; 1: anything else for 15001; 0: as asked; -1: refused (a ztunnel leg that could not
 * be recorded, inpod_ztunnel_leg).
 */
static __always_inline int inpod_redirect(struct bpf_sock_addr *ctx, const __u32 dst[4], __u16 dport_be, __u64 cookie,
					  __u32 stat_bypass6, int tcp_connect, struct ambpf_netns **out)
{
	struct ambpf_netns *ns = bpf_map_lookup_elem(&ambpf_netns, &cookie);
	struct ambpf_config *cfg = config_get();
	const struct ambpf_ztunnel *zt;
	struct ambpf_inpod_lkey lkey = {};
	const __u32 *own;
	__u32 why;
	int dns;

	/* The inpod loader says so (see AMBPF_CFG_INPOD): one topology per node. */
	if (!cfg || !(cfg->flags & AMBPF_CFG_INPOD)) {
		why = AMBPF_STAT_CONNECT4_NO_ZTUNNEL;
		goto bypass;
	}
	if (!ns || !(ns->flags & AMBPF_POD_AMBIENT) || (ns->flags & (AMBPF_POD_OPT_OUT | AMBPF_POD_IS_ZTUNNEL))) {
		why = AMBPF_STAT_CONNECT4_NOT_AMBIENT;
		goto bypass;
	}
	zt = ztunnel_get();
	if (!ztunnel_ready(zt))
		zt = &inpod_default_zt;
	own = inpod_own_ip(ns, dst);
	/* tcp_connect is a constant: sendmsg4/6 and UDP connects, which may not call bpf_setsockopt on
	 * 5.10, never contain this. */
	if (tcp_connect && ctx->protocol == IPPROTO_TCP && (ctx->sk->mark & zt->mark_mask) == zt->mark &&
	    inpod_ztunnel_leg(ctx, ns, dst, dport_be)) {
		stat_inc(stat_bypass6 ? AMBPF_STAT_CONNECT6_ERROR : AMBPF_STAT_CONNECT4_ERROR);
		return -1;
	}
	/* ztunnel's own sockets in the pod netns (its upstreams) carry the mark. The pod's own IP goes
	 * over lo, as Istio's `! -d 127.0.0.1/32 -o lo -j ACCEPT` lets it. */
	dns = dport_be == INPOD_DNS_PORT_BE && inpod_dns_wanted(ns);
	why = dns ? inpod_dns_bypass(ctx, dst, dport_be, zt, cfg, own)
		  : connect_bypass(ctx, dst, dport_be, zt, cfg, own);
	if (why != CONNECT_REDIRECT)
		goto bypass;
	if (cfg->flags & AMBPF_CFG_FAIL_OPEN) {
		struct bpf_sock *listener;

		__builtin_memcpy(lkey.pod_ip, own, sizeof(lkey.pod_ip));
		lkey.slot = AMBPF_LISTENER_INBOUND;
		/* A sockhash lookup outside sk_lookup takes a reference. */
		listener = bpf_map_lookup_elem(&ambpf_inpod_listen, &lkey);
		if (!listener) {
			why = AMBPF_STAT_CONNECT4_FAIL_OPEN;
			goto bypass;
		}
		bpf_sk_release(listener);
	}
	*out = ns;
	return dns ? 2 : 1;
bypass:
	stat_inc(stat_bypass6 ? stat_bypass6 : why);
	return 0;
}

static __always_inline int inpod_save(struct bpf_sock_addr *ctx, const __u32 dst[4], __u16 port_be, __u16 family,
				      __u64 cookie)
{
	struct ambpf_inpod_sk *st = bpf_sk_storage_get(&ambpf_inpod_sk, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!st) {
		stat_inc(AMBPF_STAT_MAPFULL_INPOD_SK);
		return -1;
	}
	orig_set(&st->orig, dst, port_be, family);
	st->netns_cookie = cookie;
	return 0;
}

/*
 * The cut of per-connection state (issue 20): a redirected connection keeps its destination. Its socket
 * is bound to the pod's own address (as Istio's REDIRECT leaves the source) and gets
 * AMBPF_MARK_ORIG_SRC, which the pod's `ip rule fwmark 0x1000/0x1000 lookup 41919` (`local default dev
 * lo`, the return path's table) delivers over lo inside the pod; sk_lookup sees the SYN arrive on lo
 * and hands it to ztunnel's 15001 (inpod_steer_outbound). ztunnel's accepted socket then has the
 * original destination as its local address, as with TPROXY: its listener is IP_TRANSPARENT, so it
 * answers from that address, and getsockopt answers SO_ORIGINAL_DST from it (ztunnel would fall back to
 * it anyway: src/socket.rs orig_dst_addr_or_default). Nothing is recorded, handed over or cleaned up.
 *
 * Only where the loader set AMBPF_POD_LOCAL_ROUTE (the pod's rule and route are in place, recorded in
 * the ledger, and sk_lookup has ingress_ifindex, 5.17+): without the rule the marked SYN would leave
 * through eth0 for the destination itself. Not for a socket already bound to a port or to another
 * address (its SYN would not carry the pod's address, by which sk_lookup finds the pod's ztunnel), nor
 * for a family the pod has no address of. 1: kept and marked; 0: the caller records the original and
 * rewrites the destination instead.
 */
static __always_inline int inpod_keep_dst(struct bpf_sock_addr *ctx, const struct ambpf_netns *ns, const __u32 dst[4])
{
	struct bpf_sock *sk = ctx->sk;
	const __u32 *own = inpod_own_ip(ns, dst);
	int v4 = ip_is_v4mapped(dst);
	int mark;

	if (!(ns->flags & AMBPF_POD_LOCAL_ROUTE) || ip_is_v4mapped(own) != v4 || ip_is_zero(own))
		return 0;
	if (CTX_READ(sk->src_port) != 0)
		return 0;
	if (CTX_READ(sk->family) == AF_INET) {
		struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = own[3]};
		__u32 bound = CTX_READ(sk->src_ip4);

		if (bound != 0 && bound != own[3])
			return 0;
		/* Port 0: the kernel picks it at connect as for any client (BIND_FORCE_ADDRESS_NO_PORT). */
		if (bound == 0 && bpf_bind(ctx, (struct sockaddr *)&sin, sizeof(sin)))
			return 0;
	} else {
		struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
		__u32 bound[4];

		CTX_IP6(bound, sk->src_ip6);
		if (!ip_is_zero(bound) && !ip_eq(bound, own))
			return 0;
		__builtin_memcpy(&sin6.sin6_addr, own, sizeof(sin6.sin6_addr));
		if (ip_is_zero(bound) && bpf_bind(ctx, (struct sockaddr *)&sin6, sizeof(sin6)))
			return 0;
	}
	mark = (int)(CTX_READ(sk->mark) | AMBPF_MARK_ORIG_SRC);
	/* Bound but not marked: the record path still works from the pod's address. */
	if (bpf_setsockopt(ctx, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)))
		return 0;
	stat_inc(AMBPF_STAT_INPOD_KEPT_DST);
	return 1;
}

/* connect4/6: the redirect decision and the saved original; 2 (DNS, to 15053) or 1 (to 15001) when
 * the caller rewrites the address, 3 when the destination stays (inpod_keep_dst), 0 when the connect
 * goes where it asked, -1 when it is refused. */
static __always_inline int inpod_capture(struct bpf_sock_addr *ctx, const __u32 dst[4], __u16 dport_be, __u16 family,
					 struct ambpf_netns **ns)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);
	int v6 = family == AF_INET6;
	int verdict = inpod_redirect(ctx, dst, dport_be, cookie, v6 ? AMBPF_STAT_CONNECT6_BYPASS : 0, 1, ns);

	if (verdict <= 0)
		return verdict;
	if (verdict == 1 && inpod_keep_dst(ctx, *ns, dst))
		return 3;
	if (inpod_save(ctx, dst, dport_be, family, cookie)) {
		/* No socket storage (memory): without the original ztunnel cannot forward the connection,
		 * and sending it direct would leave the mesh. Refused (EPERM) unless --fail-open. */
		struct ambpf_config *cfg = config_get();

		stat_inc(v6 ? AMBPF_STAT_CONNECT6_ERROR : AMBPF_STAT_CONNECT4_ERROR);
		return cfg && (cfg->flags & AMBPF_CFG_FAIL_OPEN) ? 0 : -1;
	}
	return verdict;
}

/* A redirected app socket's original dst; NULL for any other socket (orig.family 0 is ztunnel's tagged
 * listener and its accepted sockets, which carry only the netns cookie). */
static __always_inline struct ambpf_orig *inpod_orig_of(struct ambpf_inpod_sk *st)
{
	return st && st->orig.family != 0 && st->role != AMBPF_INPOD_SK_ACCEPTED ? &st->orig : 0;
}

static __always_inline struct ambpf_orig *inpod_orig(struct bpf_sock *sk)
{
	return inpod_orig_of(bpf_sk_storage_get(&ambpf_inpod_sk, sk, 0, 0));
}

/* The address ztunnel's 15001 is reached at: the pod's own IPv4 address, so the connection's source is
 * the pod's IP as with Istio's REDIRECT (ztunnel's [::]:15001 accepts it); 127.0.0.1 for a pod the
 * loader knows only by an IPv6 address. */
static __always_inline __u32 inpod_outbound_ip4(const struct ambpf_netns *ns)
{
	return ip_is_v4mapped(ns->pod_ip) && ns->pod_ip[3] != 0 ? ns->pod_ip[3] : INPOD_LOOPBACK4;
}

/* connect6: where ztunnel's [::]:15001 is reached. A v4-mapped dst (a dual-stack socket reaching an
 * IPv4 peer) stays IPv4: ::ffff:<pod IPv4>. A native IPv6 dst goes to the pod's IPv6 address, so the
 * client's 4-tuple is unique on the node as over IPv4 (no netns cookie in its closed-map key) and
 * ztunnel sees the pod's IPv6 address as source; ::1 for a pod the loader knows by no IPv6 address. */
static __always_inline void inpod_outbound6(struct bpf_sock_addr *ctx, const struct ambpf_netns *ns, const __u32 dst[4])
{
	if (ip_is_v4mapped(dst)) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = V4MAPPED_W2;
		ctx->user_ip6[3] = inpod_outbound_ip4(ns);
	} else if (!ip_is_zero(ns->pod_ip6)) {
		sockaddr_set_ip6(ctx, ns->pod_ip6);
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
}

/* ---- DNS capture: port 53 -> ztunnel's DNS proxy on localhost:15053 ----
 *
 * Istio's in-pod rules REDIRECT a captured pod's UDP and TCP to port 53 to 15053, and conntrack gives
 * the answers the server's address back. Here the socket carries that state (the Kmesh recipe): the
 * destination is rewritten at send (sendmsg4/6, unconnected) or connect (connect4/6), the server
 * asked is kept in the socket's storage, and recvmsg4/6 puts it back as the answer's source.
 *
 * An unconnected socket may ask several servers at once (musl asks every nameserver in parallel),
 * and recvmsg sees nothing of an answer but its source. So each server gets a slot in the socket's
 * struct ambpf_inpod_dns, and its queries leave from the slot's own loopback address 127.0.53.<slot +
 * 1> (msg_src_ip4; the socket is bound to the wildcard, so the answer to that address is its own).
 * ztunnel answers there; its sendmsg4 sends the answer from that same address (inpod_dns_answer), and
 * recvmsg reads the slot from it: the answer to each query carries the server of that query, with no
 * map shared between sockets (all state dies with the socket, so a reused port inherits nothing).
 * Where the source could not name a slot (the app bound an address or chose one, IPv6 to ::1),
 * recvmsg falls back to the socket's connected peer, then to the server of its latest query.
 *
 * Never captured: sockets with ztunnel's mark (ztunnel's own upstream queries), destinations that go
 * via lo (loopback, this host, the pod's own IP: Istio's `! -o lo`), an excluded port 53
 * (inpod_dns_bypass).
 */

/* Per UDP socket that sent a captured query: see struct ambpf_inpod_dns. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ambpf_inpod_dns);
} ambpf_inpod_dns SEC(".maps");

/* Whether a UDP query to dst:53 (send or connect) is captured. */
static __always_inline int inpod_dns_udp(struct bpf_sock_addr *ctx, const __u32 dst[4], __u16 dport_be, __u64 cookie)
{
	struct ambpf_netns *ns = 0;
	int verdict = inpod_redirect(ctx, dst, dport_be, cookie, AMBPF_STAT_DNS_BYPASS, 0, &ns);

	if (verdict == 1)
		stat_inc(AMBPF_STAT_DNS_BYPASS); /* the pod's DNS is not captured: UDP is never proxied */
	return verdict == 2;
}

/* No socket storage (memory): the answer could not get its server's address back, and sending the
 * query direct would leave the mesh. Refused (EPERM) unless --fail-open, where it goes as asked. */
static __always_inline int inpod_dns_no_storage(void)
{
	struct ambpf_config *cfg = config_get();

	stat_inc(AMBPF_STAT_DNS_ERROR);
	return cfg && (cfg->flags & AMBPF_CFG_FAIL_OPEN) ? SYS_PROCEED : SYS_REJECT;
}

/* The slot of server dst:port in the socket's DNS storage, taking the oldest slot for a new one;
 * -1 without storage. */
static __always_inline int inpod_dns_remember(struct bpf_sock *sk, const __u32 dst[4], __u16 port_be, __u16 family)
{
	struct ambpf_inpod_dns *d = bpf_sk_storage_get(&ambpf_inpod_dns, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	__u32 i;

	if (!d) {
		stat_inc(AMBPF_STAT_MAPFULL_INPOD_DNS);
		return -1;
	}
#pragma unroll
	for (i = 0; i < AMBPF_DNS_SLOTS; i++) {
		if (d->srv[i].family != 0 && d->srv[i].port == port_be && ip_eq(d->srv[i].ip, dst)) {
			d->last = i;
			return i;
		}
	}
	/* A fifth server at once: an answer still due from the evicted one would carry the new one's
	 * address (counted; resolv.conf allows three nameservers). */
	i = d->next & (AMBPF_DNS_SLOTS - 1);
	if (d->srv[i].family != 0)
		stat_inc(AMBPF_STAT_DNS_SLOT_REUSED);
	orig_set(&d->srv[i], dst, port_be, family);
	d->next = (i + 1) & (AMBPF_DNS_SLOTS - 1);
	d->last = i;
	return i;
}

/* The loopback address that names a slot (network order). */
static __always_inline __u32 inpod_dns_slot_ip4(int slot)
{
	return bpf_htonl(AMBPF_DNS_SLOT_NET + 1 + (__u32)slot);
}

/* The slot an answer's IPv4 source names, or -1 when it names none. */
static __always_inline int inpod_dns_slot_of(__u32 from4)
{
	__u32 n = bpf_ntohl(from4) - AMBPF_DNS_SLOT_NET;

	return n >= 1 && n <= AMBPF_DNS_SLOTS ? (int)n - 1 : -1;
}

/*
 * The server an answer from ztunnel's DNS proxy is for, or NULL when this socket sent no captured
 * query. `from4` is the answer's IPv4 source (a slot address, or 127.0.0.1); `v6` is set for an
 * answer from [::1], which names no slot. An IPv4 answer gets an IPv4 server (possibly v4-mapped) and
 * an IPv6 answer an IPv6 one, never the other kind.
 */
static __always_inline const struct ambpf_orig *inpod_dns_server(struct bpf_sock *sk, __u32 from4, int v6)
{
	const struct ambpf_orig *srv;
	struct ambpf_inpod_dns *d;
	int slot = v6 ? -1 : inpod_dns_slot_of(from4);

	if (slot < 0 && !v6 && from4 != INPOD_LOOPBACK4)
		return 0;
	if (slot < 0) {
		/* A connected socket: the peer it asked connect() for. */
		srv = inpod_orig(sk);
		if (srv && srv->port == INPOD_DNS_PORT_BE && ip_is_v4mapped(srv->ip) == !v6)
			return srv;
	}
	d = bpf_sk_storage_get(&ambpf_inpod_dns, sk, 0, 0);
	if (!d)
		return 0;
	srv = &d->srv[(slot < 0 ? d->last : (__u32)slot) & (AMBPF_DNS_SLOTS - 1)];
	return srv->family != 0 && ip_is_v4mapped(srv->ip) == !v6 ? srv : 0;
}

/* A UDP connect: to port 53 of a captured pod, the socket talks to ztunnel's DNS proxy from now on,
 * and getpeername/recvmsg give the server it asked (ambpf_inpod_sk, as a TCP connect's). Any other
 * connect of that socket makes it forget the server. 1: rewrite; 0: as asked; -1: refuse. */
static __always_inline int inpod_dns_connect(struct bpf_sock_addr *ctx, const __u32 dst[4], __u16 dport_be,
					     __u16 family)
{
	__u64 cookie = bpf_get_netns_cookie(ctx);
	struct ambpf_inpod_sk *st;

	if (dport_be != INPOD_DNS_PORT_BE || !inpod_dns_udp(ctx, dst, dport_be, cookie)) {
		st = bpf_sk_storage_get(&ambpf_inpod_sk, ctx->sk, 0, 0);
		if (st)
			st->orig.family = 0;
		return 0;
	}
	if (inpod_save(ctx, dst, dport_be, family, cookie))
		return inpod_dns_no_storage() == SYS_PROCEED ? 0 : -1;
	stat_inc(AMBPF_STAT_DNS_REDIRECTED);
	return 1;
}

/* ztunnel's DNS proxy for an IPv6 socket: ::ffff:127.0.0.1 for an IPv4 server, [::1] for IPv6. */
static __always_inline void inpod_dns_proxy6(struct bpf_sock_addr *ctx, const __u32 dst[4])
{
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	if (ip_is_v4mapped(dst)) {
		ctx->user_ip6[2] = V4MAPPED_W2;
		ctx->user_ip6[3] = INPOD_LOOPBACK4;
	} else {
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = (__u32)INPOD_DNS_PROXY_BE;
}

/* sendmsg4/6 of a datagram to port 53: the slot of its server when it is captured (counted), -1 when
 * it goes as asked, -2 when it is refused. */
static __always_inline int inpod_dns_send(struct bpf_sock_addr *ctx, const __u32 dst[4], __u16 dport_be, __u16 family)
{
	int slot;

	if (!inpod_dns_udp(ctx, dst, dport_be, bpf_get_netns_cookie(ctx)))
		return -1;
	slot = inpod_dns_remember(ctx->sk, dst, dport_be, family);
	if (slot < 0)
		return inpod_dns_no_storage() == SYS_PROCEED ? -1 : -2;
	stat_inc(AMBPF_STAT_DNS_REDIRECTED);
	return slot;
}

/*
 * An answer of ztunnel's DNS proxy (its socket: ztunnel's mark, port 15053) to a slot address
 * 127.0.53.<n> (see "DNS capture"): sent from that same address (msg_src_ip4), so the app's recvmsg,
 * which sees only the source, knows the server of the query. ztunnel answers with sendto() from an
 * unconnected socket, which is what runs sendmsg4/6. 1 when the source was set.
 */
static __always_inline int inpod_dns_answer(struct bpf_sock_addr *ctx, __u32 to4)
{
	struct bpf_sock *sk = ctx->sk;

	if (inpod_dns_slot_of(to4) < 0 || CTX_READ(sk->src_port) != AMBPF_PORT_DNS ||
	    (CTX_READ(sk->mark) & AMBPF_ZTUNNEL_MARK_MASK) != AMBPF_ZTUNNEL_MARK)
		return 0;
	stat_inc(AMBPF_STAT_DNS_ANSWER_SOURCE);
	return 1;
}

/* sendmsg4: an unconnected UDP socket's datagram (also a dual-stack socket's to a v4-mapped address,
 * which the kernel sends through the IPv4 path). Every other port costs one compare. */
SEC("cgroup/sendmsg4")
int ambpf_inpod_sendmsg4(struct bpf_sock_addr *ctx)
{
	__u16 dport = (__u16)CTX_READ(ctx->user_port);
	__u32 dst[4];
	__u32 to4 = CTX_READ(ctx->user_ip4);
	int slot;

	if (dport != INPOD_DNS_PORT_BE) {
		if (inpod_dns_answer(ctx, to4))
			ctx->msg_src_ip4 = to4;
		return SYS_PROCEED;
	}
	ip_set_v4(dst, to4);
	slot = inpod_dns_send(ctx, dst, dport, AF_INET);
	if (slot < 0)
		return slot == -1 ? SYS_PROCEED : SYS_REJECT;
	ctx->user_ip4 = INPOD_LOOPBACK4;
	ctx->user_port = (__u32)INPOD_DNS_PROXY_BE;
	/* The source names the slot unless the app chose one (a bound address, IP_PKTINFO): then the
	 * answer comes to that address, and recvmsg falls back to the latest server. */
	if (CTX_READ(ctx->msg_src_ip4) == 0)
		ctx->msg_src_ip4 = inpod_dns_slot_ip4(slot);
	return SYS_PROCEED;
}

/* sendmsg6: IPv6 servers go to [::1]:15053 (no loopback range to name a slot in); a v4-mapped server,
 * should it come here, is handled as sendmsg4 does. */
SEC("cgroup/sendmsg6")
int ambpf_inpod_sendmsg6(struct bpf_sock_addr *ctx)
{
	__u16 dport = (__u16)CTX_READ(ctx->user_port);
	__u32 dst[4];
	int slot;

	/* ztunnel's answers to a slot address go through sendmsg4 (a v4-mapped destination too: the kernel
	 * hands those to udp_sendmsg before this hook). */
	if (dport != INPOD_DNS_PORT_BE)
		return SYS_PROCEED;
	dst[0] = CTX_READ(ctx->user_ip6[0]);
	dst[1] = CTX_READ(ctx->user_ip6[1]);
	dst[2] = CTX_READ(ctx->user_ip6[2]);
	dst[3] = CTX_READ(ctx->user_ip6[3]);
	slot = inpod_dns_send(ctx, dst, dport, AF_INET6);
	if (slot < 0)
		return slot == -1 ? SYS_PROCEED : SYS_REJECT;
	inpod_dns_proxy6(ctx, dst);
	if (ip_is_v4mapped(dst) && CTX_READ(ctx->msg_src_ip6[0]) == 0 && CTX_READ(ctx->msg_src_ip6[1]) == 0 &&
	    CTX_READ(ctx->msg_src_ip6[2]) == 0 && CTX_READ(ctx->msg_src_ip6[3]) == 0) {
		ctx->msg_src_ip6[2] = V4MAPPED_W2;
		ctx->msg_src_ip6[3] = inpod_dns_slot_ip4(slot);
	}
	return SYS_PROCEED;
}

/* recvmsg4: an answer from ztunnel's DNS proxy shows the server the query was for. Every other
 * datagram costs one compare. recvmsg cannot fail a call: always SYS_PROCEED. */
SEC("cgroup/recvmsg4")
int ambpf_inpod_recvmsg4(struct bpf_sock_addr *ctx)
{
	const struct ambpf_orig *srv;

	if ((__u16)CTX_READ(ctx->user_port) != INPOD_DNS_PROXY_BE)
		return SYS_PROCEED;
	srv = inpod_dns_server(ctx->sk, CTX_READ(ctx->user_ip4), 0);
	if (!srv)
		return SYS_PROCEED;
	ctx->user_ip4 = srv->ip[3];
	ctx->user_port = (__u32)srv->port;
	stat_inc(AMBPF_STAT_DNS_RESTORED);
	return SYS_PROCEED;
}

/* recvmsg6: the same for IPv6 sockets; an IPv4 answer arrives v4-mapped. */
SEC("cgroup/recvmsg6")
int ambpf_inpod_recvmsg6(struct bpf_sock_addr *ctx)
{
	const struct ambpf_orig *srv;
	__u32 from[4];

	if ((__u16)CTX_READ(ctx->user_port) != INPOD_DNS_PROXY_BE)
		return SYS_PROCEED;
	from[0] = CTX_READ(ctx->user_ip6[0]);
	from[1] = CTX_READ(ctx->user_ip6[1]);
	from[2] = CTX_READ(ctx->user_ip6[2]);
	from[3] = CTX_READ(ctx->user_ip6[3]);
	if (ip_is_v4mapped(from))
		srv = inpod_dns_server(ctx->sk, from[3], 0);
	else if (from[0] == 0 && from[1] == 0 && from[2] == 0 && from[3] == bpf_htonl(1))
		srv = inpod_dns_server(ctx->sk, 0, 1);
	else
		return SYS_PROCEED;
	if (!srv)
		return SYS_PROCEED;
	sockaddr_set_ip6(ctx, srv->ip);
	ctx->user_port = (__u32)srv->port;
	stat_inc(AMBPF_STAT_DNS_RESTORED);
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int ambpf_inpod_connect4(struct bpf_sock_addr *ctx)
{
	struct ambpf_netns *ns = 0;
	__u32 dst[4];
	__u16 dport;

	int verdict;

	if (ctx->protocol == IPPROTO_UDP) {
		ip_set_v4(dst, ctx->user_ip4);
		verdict = inpod_dns_connect(ctx, dst, (__u16)ctx->user_port, AF_INET);
		if (verdict > 0) {
			ctx->user_ip4 = INPOD_LOOPBACK4;
			ctx->user_port = (__u32)INPOD_DNS_PROXY_BE;
		}
		return verdict < 0 ? SYS_REJECT : SYS_PROCEED;
	}
	if (!connect_dst4(ctx, dst, &dport))
		return SYS_PROCEED;
	verdict = inpod_capture(ctx, dst, dport, AF_INET, &ns);
	if (verdict < 0)
		return SYS_REJECT;
	if (verdict == 0 || !ns)
		return SYS_PROCEED;
	if (verdict == 3) {
		stat_inc(AMBPF_STAT_CONNECT4_REDIRECTED);
		return SYS_PROCEED;
	}
	if (verdict == 2) {
		ctx->user_ip4 = INPOD_LOOPBACK4;
		ctx->user_port = (__u32)INPOD_DNS_PROXY_BE;
		stat_inc(AMBPF_STAT_DNS_REDIRECTED);
		return SYS_PROCEED;
	}
	ctx->user_ip4 = inpod_outbound_ip4(ns);
	ctx->user_port = (__u32)bpf_htons(AMBPF_PORT_OUTBOUND);
	stat_inc(AMBPF_STAT_CONNECT4_REDIRECTED);
	return SYS_PROCEED;
}

SEC("cgroup/connect6")
int ambpf_inpod_connect6(struct bpf_sock_addr *ctx)
{
	struct ambpf_netns *ns = 0;
	__u32 dst[4];
	__u16 dport;

	int verdict;

	if (ctx->protocol == IPPROTO_UDP) {
		dst[0] = ctx->user_ip6[0];
		dst[1] = ctx->user_ip6[1];
		dst[2] = ctx->user_ip6[2];
		dst[3] = ctx->user_ip6[3];
		verdict = inpod_dns_connect(ctx, dst, (__u16)ctx->user_port, AF_INET6);
		if (verdict > 0)
			inpod_dns_proxy6(ctx, dst);
		return verdict < 0 ? SYS_REJECT : SYS_PROCEED;
	}
	if (!connect_dst6(ctx, dst, &dport))
		return SYS_PROCEED;
	verdict = inpod_capture(ctx, dst, dport, AF_INET6, &ns);
	if (verdict < 0)
		return SYS_REJECT;
	if (verdict == 0 || !ns)
		return SYS_PROCEED;
	if (verdict == 3) {
		stat_inc(AMBPF_STAT_CONNECT6_REDIRECTED);
		return SYS_PROCEED;
	}
	if (verdict == 2) {
		inpod_dns_proxy6(ctx, dst);
		stat_inc(AMBPF_STAT_DNS_REDIRECTED);
		return SYS_PROCEED;
	}
	inpod_outbound6(ctx, ns, dst);
	ctx->user_port = (__u32)bpf_htons(AMBPF_PORT_OUTBOUND);
	stat_inc(AMBPF_STAT_CONNECT6_REDIRECTED);
	return SYS_PROCEED;
}

/* ---- the original dst from the client's socket to ztunnel's accepted one ---- */

/*
 * The netns cookie part of an ambpf_inpod_closed key. A pod reaches its ztunnel at its own IP:15001, so
 * the client-side 4-tuple is unique on the node by itself (pod IPs are): cookie 0, and ztunnel's side
 * finds the entry from its own tuple with no help. Only a connection over loopback (an IPv6 connect of
 * a pod the loader knows by no IPv6 address goes to ::1) repeats across pods and needs the cookie,
 * which ztunnel's side learns from its tagged 15001 listener.
 */
static __always_inline __u64 inpod_key_cookie(const struct ambpf_tuple *t, __u64 cookie)
{
	const __u32 *z = t->remote_ip; /* ztunnel's end */

	if (ip_is_v4mapped(z) ? ip4_is_loopback(z[3]) : (z[0] == 0 && z[1] == 0 && z[2] == 0 && z[3] == bpf_htonl(1)))
		return cookie;
	return 0;
}

/*
 * ztunnel accepted a connection on 15001: copy the client's original dst onto the accepted socket.
 * Runs in getpeername4/6, which the kernel calls on the accepted socket inside accept() whenever the
 * caller asks for the peer's address (ztunnel's tokio accept does, as do nginx, Go and Python), so
 * before ztunnel can ask SO_ORIGINAL_DST. Both sockets are in the pod's netns, so the client's socket
 * is found by the 4-tuple in the kernel's own established table: no map of ours holds connections,
 * and sockops (a dozen runs per connection for the callbacks nobody can switch off) is not needed.
 * The accepted socket already has storage, cloned from the tagged listener, so nothing is allocated.
 * A client that closed first is not found here: its close() left its original in ambpf_inpod_closed
 * (ambpf_inpod_release), and getsockopt takes it from there.
 */
static __always_inline void inpod_handover(struct bpf_sock_addr *ctx, struct ambpf_inpod_sk *zst)
{
	struct bpf_sock *sk = ctx->sk;
	struct bpf_sock_tuple tup = {};
	struct ambpf_inpod_key key = {};
	struct ambpf_inpod_sk *cst;
	struct bpf_sock *client;
	__u32 len = sizeof(tup.ipv4);

	if (sk->protocol != IPPROTO_TCP || sk->src_port != AMBPF_PORT_OUTBOUND)
		return;
	if (zst && zst->role == AMBPF_INPOD_SK_ACCEPTED)
		return; /* a second getpeername */
	/* The client's socket as a packet coming to it sees it: from ztunnel's end to the client's. A
	 * v4-mapped pair (dual-stack listener) is an IPv4 connection, in the IPv4 table. */
	sockopt_client_tuple(sk, &key.t);
	if (ip_is_v4mapped(key.t.local_ip) && ip_is_v4mapped(key.t.remote_ip)) {
		tup.ipv4.saddr = key.t.remote_ip[3];
		tup.ipv4.daddr = key.t.local_ip[3];
		tup.ipv4.sport = key.t.remote_port;
		tup.ipv4.dport = key.t.local_port;
	} else {
		__builtin_memcpy(tup.ipv6.saddr, key.t.remote_ip, sizeof(tup.ipv6.saddr));
		__builtin_memcpy(tup.ipv6.daddr, key.t.local_ip, sizeof(tup.ipv6.daddr));
		tup.ipv6.sport = key.t.remote_port;
		tup.ipv6.dport = key.t.local_port;
		len = sizeof(tup.ipv6);
	}
	client = bpf_sk_lookup_tcp(ctx, &tup, len, BPF_F_CURRENT_NETNS, 0);
	if (!client)
		return;
	cst = bpf_sk_storage_get(&ambpf_inpod_sk, client, 0, 0);
	if (!cst || cst->orig.family == 0) {
		/* Not redirected (a direct connect to 15001): an entry a closed client left on this tuple
		 * must not answer for it. */
		key.netns_cookie = inpod_key_cookie(&key.t, zst ? zst->netns_cookie : 0);
		bpf_map_delete_elem(&ambpf_inpod_closed, &key);
	} else if (cst->role == AMBPF_INPOD_SK_APP) {
		if (!zst)
			zst = bpf_sk_storage_get(&ambpf_inpod_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (zst) {
			zst->orig = cst->orig;
			zst->role = AMBPF_INPOD_SK_ACCEPTED;
			cst->role = AMBPF_INPOD_SK_HANDED;
			stat_inc(AMBPF_STAT_INPOD_HANDED);
		} else {
			stat_inc(AMBPF_STAT_SOCKOPS_ERROR); /* no storage: getsockopt misses, ztunnel refuses */
			stat_inc(AMBPF_STAT_MAPFULL_INPOD_SK);
		}
	}
	bpf_sk_release(client);
}

/*
 * Whether a getpeername may concern us: a socket connected to one of the ports connect4/6 rewrite to
 * (15001, or 15053 for DNS: a redirected app socket, whose peer is restored) or accepted at 15001
 * (ztunnel's, for the handover). Every other socket, which includes ztunnel's socket of a connection
 * inpod_keep_dst kept (accepted at the original port, its peer the app's real address), is spared
 * the storage lookup: the peer the kernel gives is already right.
 */
static __always_inline int inpod_peername_concerns(const struct bpf_sock *sk)
{
	__u16 dport = (__u16)sk->dst_port;

	return sk->src_port == AMBPF_PORT_OUTBOUND || dport == bpf_htons(AMBPF_PORT_OUTBOUND) ||
	       dport == INPOD_DNS_PROXY_BE;
}

/* The original to show as the peer of an app socket connect4/6 rewrote; on ztunnel's socket accepted
 * at 15001, the handover first (and nothing to show: its peer is the app). */
static __always_inline struct ambpf_orig *inpod_peer_orig(struct bpf_sock_addr *ctx)
{
	struct ambpf_inpod_sk *st;
	struct ambpf_orig *orig;

	if (!inpod_peername_concerns(ctx->sk))
		return 0;
	st = bpf_sk_storage_get(&ambpf_inpod_sk, ctx->sk, 0, 0);
	orig = inpod_orig_of(st);
	if (!orig)
		inpod_handover(ctx, st);
	return orig;
}

SEC("cgroup/getpeername4")
int ambpf_inpod_peername4(struct bpf_sock_addr *ctx)
{
	return peername4_restore(ctx, inpod_peer_orig(ctx));
}

SEC("cgroup/getpeername6")
int ambpf_inpod_peername6(struct bpf_sock_addr *ctx)
{
	return peername6_restore(ctx, inpod_peer_orig(ctx));
}

/* ---- getsockopt: SO_ORIGINAL_DST for ztunnel's accepted socket ---- */

SEC("cgroup/getsockopt")
int ambpf_inpod_getsopt(struct bpf_sockopt *ctx)
{
	struct ambpf_inpod_key key = {};
	struct ambpf_inpod_sk *st;
	struct ambpf_orig *orig;

	/* First: a large call keeps the kernel's own answer (ambpf_sockopt.h). */
	if (sockopt_too_large(ctx))
		return SYS_PROCEED;
	if (!sockopt_wants_orig_dst(ctx))
		return SYS_PROCEED;
	st = bpf_sk_storage_get(&ambpf_inpod_sk, ctx->sk, 0, 0);
	/* The usual case: accept() copied the client's original onto this socket (inpod_handover). */
	if (st && st->role == AMBPF_INPOD_SK_ACCEPTED && st->orig.family != 0)
		return sockopt_answer(ctx, &st->orig);
	/* Accepted from ztunnel's tagged 15001 (storage cloned, no original) at an address that is not
	 * 15001: a connection inpod_keep_dst kept, whose original is this socket's own address. */
	if (st && st->role == AMBPF_INPOD_SK_APP && st->orig.family == 0 &&
	    CTX_READ(ctx->sk->src_port) != AMBPF_PORT_OUTBOUND) {
		struct ambpf_orig local = {};
		__u32 ip[4];

		if (CTX_READ(ctx->sk->family) == AF_INET)
			ip_set_v4(ip, CTX_READ(ctx->sk->src_ip4));
		else
			CTX_IP6(ip, ctx->sk->src_ip6);
		orig_set(&local, ip, bpf_htons((__u16)CTX_READ(ctx->sk->src_port)),
			 ip_is_v4mapped(ip) ? AF_INET : AF_INET6);
		return sockopt_answer(ctx, &local);
	}
	/* The client closed before that (ambpf_inpod_release). Taken once, onto this socket: a second
	 * getsockopt answers from there, and the entry cannot answer a later connection on the tuple. */
	sockopt_client_tuple(ctx->sk, &key.t);
	key.netns_cookie = inpod_key_cookie(&key.t, st ? st->netns_cookie : 0);
	orig = bpf_map_lookup_elem(&ambpf_inpod_closed, &key);
	if (!orig) {
		stat_inc(AMBPF_STAT_GETSOCKOPT_MISS);
		return SYS_PROCEED;
	}
	if (!st)
		st = bpf_sk_storage_get(&ambpf_inpod_sk, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (st) {
		st->orig = *orig;
		st->role = AMBPF_INPOD_SK_ACCEPTED;
		bpf_map_delete_elem(&ambpf_inpod_closed, &key);
		return sockopt_answer(ctx, &st->orig);
	}
	return sockopt_answer(ctx, orig);
}

/* ---- sk_lookup: inbound to the pod -> ztunnel's listener in the pod's netns ---- */

/* ---- tc ingress on a captured pod's eth0 (inside the pod's netns): which SYNs the node sent ---- */

/*
 * A packet the node itself sends to a pod arrives with the TTL it left with, the node's default (64);
 * anything the node forwarded (another pod, another node, a NodePort after SNAT, even with the node's
 * address as source) has been decremented on the way. So a SYN with TTL AMBPF_NODE_TTL was opened by
 * a process of the node: kubelet's probe, which must reach the app directly (istio#52208: eBPF CNIs
 * break Istio's host SNAT rule; this needs none). Records the SYN for sk_lookup; never drops or
 * changes a packet.
 */
/*
 * The TTL alone could be forged (IP_TTL 65 from another node) or be untouched by a bridge CNI between
 * two pods of the node: the source must also be one of the node's own addresses of its family
 * (--node-ip, the DaemonSet passes the host IPs). With none of that family configured the TTL (IPv6:
 * hop limit, whose default is 64 too) decides alone.
 */
static __always_inline int from_node(const __u32 saddr[4])
{
	struct ambpf_config *cfg = config_get();
	int v4 = ip_is_v4mapped(saddr), any = 0;

	if (!cfg)
		return 0;
#pragma unroll
	for (int i = 0; i < AMBPF_MAX_NODE_IPS; i++) {
		if (ip_is_zero(cfg->node_ips[i]) || ip_is_v4mapped(cfg->node_ips[i]) != v4)
			continue;
		any = 1;
		if (ip_eq(cfg->node_ips[i], saddr))
			return 1;
	}
	return !any;
}

SEC("tc")
int ambpf_inpod_node_syn(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ambpf_tuple t = {};
	__u32 one = 1;
	__u8 hops = 0;

	if (!tc_syn(data, data_end, &t, &hops) || hops != AMBPF_NODE_TTL || !from_node(t.remote_ip))
		return TC_ACT_UNSPEC;
	if (bpf_map_update_elem(&ambpf_inpod_nodesyn, &t, &one, BPF_ANY))
		stat_inc(AMBPF_STAT_MAPFULL_INPOD_NODESYN); /* this probe then goes through ztunnel */
	return TC_ACT_UNSPEC;
}

/* ---- sock_release: a client that closes before ztunnel's accept() took its original ---- */

/*
 * The head of the kernel's struct sock_common (include/net/sock.h): the IPv4 addresses and the ports,
 * at the same offsets since the struct exists, because the socket hash tables read them as two 64-bit
 * and one 32-bit word (skc_addrpair, skc_portpair). cgroup/sock_release may not read src_ip4/src_port
 * from its context (net/core/filter.c allows them only at post_bind), so the release program reads
 * this head of the socket itself.
 */
struct ambpf_sock_common_head {
	__be32 daddr;
	__be32 rcv_saddr;
	__u32 hash;
	__be16 dport;
	__u16 num; /* the local port, host order */
};

/*
 * A redirected app socket closed (connect, write, close at once; ztunnel busy) with its original not
 * handed over yet: once its FIN is acked the kernel turns it into a TIME_WAIT sock, whose storage is
 * gone, so accept()'s handover finds nothing. Its original goes to ambpf_inpod_closed under the
 * client's 4-tuple, where getsockopt takes it. One run per socket the pods close; every socket but a
 * redirected TCP client costs the protocol and port tests (sockops, which older ambpf used on kernels
 * without tcx, runs a dozen times per connection). A redirected client reaches ztunnel at one of the
 * pod's own addresses (inpod_outbound_ip4/inpod_outbound6), so its source is that same address: for
 * IPv6, whose source sits at no fixed offset, the destination stands for it. Loads from 5.10 on
 * (bpf_sk_storage_get and bpf_probe_read_kernel in cgroup/sock: the kernel matrix).
 */
SEC("cgroup/sock_release")
int ambpf_inpod_release(struct bpf_sock *sk)
{
	struct ambpf_sock_common_head head;
	struct ambpf_inpod_key key = {};
	struct ambpf_inpod_sk *st;
	__u32 state;

	if (CTX_READ(sk->protocol) != IPPROTO_TCP || (__u16)sk->dst_port != bpf_htons(AMBPF_PORT_OUTBOUND))
		return SYS_PROCEED;
	/* Never connected (refused, aborted in SYN_SENT): nobody will ask for its original. */
	state = CTX_READ(sk->state);
	if (state == BPF_TCP_SYN_SENT || state == BPF_TCP_CLOSE)
		return SYS_PROCEED;
	st = bpf_sk_storage_get(&ambpf_inpod_sk, sk, 0, 0);
	if (!st || st->role != AMBPF_INPOD_SK_APP || st->orig.family == 0)
		return SYS_PROCEED;
	if (bpf_probe_read_kernel(&head, sizeof(head), sk))
		return SYS_PROCEED;
	if (CTX_READ(sk->family) == AF_INET) {
		ip_set_v4(key.t.local_ip, head.rcv_saddr);
		ip_set_v4(key.t.remote_ip, CTX_READ(sk->dst_ip4));
	} else {
		CTX_IP6(key.t.remote_ip, sk->dst_ip6);
		/* An IPv4 peer of a dual-stack socket: the head holds its IPv4 source exactly. */
		if (ip_is_v4mapped(key.t.remote_ip))
			ip_set_v4(key.t.local_ip, head.rcv_saddr);
		else
			__builtin_memcpy(key.t.local_ip, key.t.remote_ip, sizeof(key.t.local_ip));
	}
	key.t.local_port = bpf_htons(head.num);
	key.t.remote_port = (__u16)sk->dst_port;
	key.netns_cookie = inpod_key_cookie(&key.t, st->netns_cookie);
	if (bpf_map_update_elem(&ambpf_inpod_closed, &key, &st->orig, BPF_ANY))
		stat_inc(AMBPF_STAT_MAPFULL_INPOD_CLOSED); /* an LRU: only out of memory; getsockopt misses */
	else
		stat_inc(AMBPF_STAT_INPOD_CLOSED_EARLY);
	st->role = AMBPF_INPOD_SK_HANDED;
	return SYS_PROCEED;
}

/*
 * The SYN of a connection inpod_keep_dst kept: from the pod's own address to wherever the app asked,
 * delivered on lo by the mark's route (nothing else reaches a pod's sockets on lo from a non-loopback
 * source to a non-local address; ztunnel's legs and connects to the pod's own address arrive with the
 * address's device, eth0: docs/kernel-facts.md). Handed to ztunnel's 15001 of the pod whose address is
 * the source: lo never carries a packet out of its netns, so that is this netns's pod. Refused when
 * ztunnel has no 15001 here, never to a listener of the app's that happens to hold the port: the SYN
 * goes unanswered (the reset, from the original destination, has no route) and the client retransmits
 * into a ztunnel that came back, or times out (docs/kernel-facts.md).
 * ingress_ifindex exists from 5.17 on; before, the loader never sets AMBPF_POD_LOCAL_ROUTE and the
 * verifier drops this branch as dead code.
 */
static __always_inline int inpod_arrived_on_lo(struct bpf_sk_lookup *ctx)
{
	if (!bpf_core_field_exists(ctx->ingress_ifindex))
		return 0;
	return ctx->ingress_ifindex == 1; /* LOOPBACK_IFINDEX, in every netns */
}

static __always_inline int inpod_steer_outbound(struct bpf_sk_lookup *ctx, const struct ambpf_tuple *app)
{
	struct ambpf_inpod_lkey lkey = {.slot = AMBPF_LISTENER_OUTBOUND};
	struct bpf_sock *sk;

	__builtin_memcpy(lkey.pod_ip, app->remote_ip, sizeof(lkey.pod_ip));
	sk = bpf_map_lookup_elem(&ambpf_inpod_listen, &lkey);
	if (!sk) {
		lkey.slot += AMBPF_LISTENER_SLOTS; /* a rolling upgrade's second ztunnel */
		sk = bpf_map_lookup_elem(&ambpf_inpod_listen, &lkey);
	}
	if (!sk) {
		stat_inc(AMBPF_STAT_SKLOOKUP_REFUSED);
		return SK_DROP;
	}
	if (bpf_sk_assign(ctx, sk, 0)) {
		bpf_sk_release(sk);
		stat_inc(AMBPF_STAT_SKLOOKUP_ERROR);
		return SK_DROP;
	}
	bpf_sk_release(sk);
	stat_inc(AMBPF_STAT_SKLOOKUP_OUTBOUND);
	return SK_PASS;
}

/*
 * Inbound over IPv4 and IPv6 alike: the pod's addresses are all in ambpf_pods and ztunnel's [::]
 * listeners are registered under each of them; an IPv6 connection is assigned to the same dual-stack
 * listener with its original destination as the accepted socket's local address.
 */
SEC("sk_lookup")
int ambpf_inpod_lookup(struct bpf_sk_lookup *ctx)
{
	struct ambpf_inpod_lkey lkey = {};
	struct ambpf_tuple app = {};
	struct ambpf_config *cfg;
	struct ambpf_pod *pod;
	struct bpf_sock *sk;
	__u32 *stamp;

	if (ctx->protocol != IPPROTO_TCP || !sklookup_addrs(ctx, &app))
		return SK_PASS;
	/* Loopback is the pod <-> ztunnel hop itself (a loopback source too: an app bound to 127.0.0.x whose
	 * connect was sent to its own IP:15001; such a packet can only come from inside the netns); local ==
	 * remote is the pod's connect to its own IP and ztunnel's upstream from the pod's IP (the loop
	 * trap); all stay as they are. */
	if (ip_is_loopback(app.local_ip) || ip_is_loopback(app.remote_ip) || ip_eq(app.local_ip, app.remote_ip))
		return SK_PASS;
	cfg = config_get();
	if (!cfg || !(cfg->flags & AMBPF_CFG_INPOD))
		return SK_PASS;
	if (inpod_arrived_on_lo(ctx))
		return inpod_steer_outbound(ctx, &app);
	if (ip_is_probe(app.remote_ip, cfg)) {
		stat_inc(AMBPF_STAT_SKLOOKUP_PASS_PROBE);
		return SK_PASS;
	}
	__builtin_memcpy(lkey.pod_ip, app.local_ip, sizeof(lkey.pod_ip));
	pod = bpf_map_lookup_elem(&ambpf_pods, &lkey.pod_ip);
	if (!pod) {
		/* This program runs only in captured pods' netns, so an address without an entry is one that
		 * did not fit a full ambpf_pods, or a pod being armed or released: refuse, as Istio's rules
		 * would send it to ztunnel whatever the address (unless --fail-open). */
		if (cfg->flags & AMBPF_CFG_FAIL_OPEN) {
			stat_inc(AMBPF_STAT_SKLOOKUP_PASS_NOT_AMBIENT);
			return SK_PASS;
		}
		stat_inc(AMBPF_STAT_SKLOOKUP_REFUSED);
		return SK_DROP;
	}
	if (!(pod->flags & AMBPF_POD_AMBIENT) || (pod->flags & AMBPF_POD_OPT_OUT)) {
		stat_inc(AMBPF_STAT_SKLOOKUP_PASS_NOT_AMBIENT);
		return SK_PASS;
	}
	/* ztunnel's own leg to the app, from the client's address (inpod_ztunnel_leg), within the window
	 * of its SYN retransmits. Once the leg is established its own socket holds the tuple, so a later
	 * SYN on it never reaches sk_lookup; an entry past the window is deleted and counts for nothing. */
	app.local_port = bpf_htons((__u16)CTX_READ(ctx->local_port));
	app.remote_port = (__u16)CTX_READ(ctx->remote_port);
	stamp = bpf_map_lookup_elem(&ambpf_inpod_origsrc, &app);
	if (stamp) {
		if (inpod_leg_clock() - *stamp <= INPOD_LEG_WINDOW) {
			stat_inc(AMBPF_STAT_SKLOOKUP_PASS_ZTUNNEL);
			return SK_PASS;
		}
		bpf_map_delete_elem(&ambpf_inpod_origsrc, &app);
	}
	/* The node's own connection (kubelet's probe): to the app. Taken once; a retransmitted SYN is
	 * recorded again by tc. Only a source tc could have recorded is looked up (from_node: one of the
	 * node's addresses, or any when none of that family is configured), sparing every connection
	 * from elsewhere a hash lookup. */
	if (from_node(app.remote_ip) && bpf_map_lookup_elem(&ambpf_inpod_nodesyn, &app)) {
		bpf_map_delete_elem(&ambpf_inpod_nodesyn, &app);
		stat_inc(AMBPF_STAT_SKLOOKUP_PASS_PROBE);
		return SK_PASS;
	}
	lkey.slot = CTX_READ(ctx->local_port) == AMBPF_PORT_HBONE ? AMBPF_LISTENER_HBONE : AMBPF_LISTENER_INBOUND;
	sk = bpf_map_lookup_elem(&ambpf_inpod_listen, &lkey);
	if (!sk) {
		/* The group's second listener (two ztunnels during a rolling upgrade): the first one's
		 * entry left the sockhash when the old ztunnel closed it. */
		lkey.slot += AMBPF_LISTENER_SLOTS;
		sk = bpf_map_lookup_elem(&ambpf_inpod_listen, &lkey);
	}
	if (!sk) {
		/* Captured, but ztunnel does not serve the pod (not yet, or gone): refuse (SK_DROP answers
		 * the SYN with a RST), never hand the connection to the app past ztunnel. */
		if (cfg->flags & AMBPF_CFG_FAIL_OPEN) {
			stat_inc(AMBPF_STAT_SKLOOKUP_NO_LISTENER);
			return SK_PASS;
		}
		stat_inc(AMBPF_STAT_SKLOOKUP_REFUSED);
		return SK_DROP;
	}
	/* A listener that cannot take the connection (e.g. of the wrong family) must not hand it to the
	 * app instead: refused unless --fail-open. */
	if (bpf_sk_assign(ctx, sk, 0)) {
		bpf_sk_release(sk);
		stat_inc(AMBPF_STAT_SKLOOKUP_ERROR);
		return cfg->flags & AMBPF_CFG_FAIL_OPEN ? SK_PASS : SK_DROP;
	}
	bpf_sk_release(sk);
	stat_inc(AMBPF_STAT_SKLOOKUP_ASSIGNED);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ambpf_inbound.bpf.c: inbound capture for the node topology, without iptables and without a tunnel.
 *
 * Two halves (docs/kernel-facts.md#inbound-steering: both proven on this kernel):
 *
 * 1. ambpf_tc_pod, tc egress on an ambient pod's host-side veth (node netns), i.e. on packets about to
 *    enter the pod. TCP (IPv4 or IPv6) that did not come from the local ztunnel (its host veth or an address of its),
 *    from the node itself, or from the kubelet probe source is steered to ztunnel instead: MACs
 *    rewritten for ztunnel's link, bpf_redirect() to ztunnel's host-side veth. Except the replies to
 *    connections the pod opened itself, which ztunnel would reset: SYN-ACKs (the answer to the pod's
 *    SYN, before anything is recorded) and the flows in ambpf_outflow / ambpf_outflow6 (recorded by
 *    sockops at the pod's ACTIVE_ESTABLISHED, deleted at its close). Inbound itself is stateless (see ambpf_outflow
 *    for why). Costs of that choice: an inbound connection the pod had before it became ambient is
 *    steered too (ztunnel resets it), as is a pod's outbound connection opened before ambpf ran;
 *    a peer's late retransmission after the pod's socket is gone (TIME_WAIT) meets ztunnel's RST
 *    instead of the pod's ACK.
 *
 * 2. ambpf_sk_lookup, attached to ztunnel's netns. Steered packets keep the pod's IP as destination;
 *    a policy route in ztunnel's netns (`ip rule iif eth0 lookup 100`, `local 0.0.0.0/0 dev lo
 *    table 100`, and `local ::/0` for IPv6) makes them local, and this program hands the connection
 *    to ztunnel's 15008 listener
 *    (dport 15008, HBONE) or 15006 (anything else). The listeners bind a wildcard with IP_TRANSPARENT,
 *    so the accepted socket's local address is the original destination, which is how ztunnel learns
 *    it. Chosen over tc ingress + bpf_sk_assign because that one silently drops a SYN reusing a tuple
 *    still in TIME_WAIT in ztunnel's netns (connections fell from ~27k/s to ~630/s without
 *    tcp_max_tw_buckets=0); sk_lookup runs after the established/TIME_WAIT lookup, so it does not.
 *
 * IPv6 exactly as IPv4 (ztunnel's [::] listeners take both; the accepted socket's local address is
 * the pod's IPv6 address). An IPv6 packet whose TCP header hides behind extension headers is steered
 * without the reply exceptions (which need its ports): fail closed, and TCP's own packets carry none.
 * No bpf_get_netns_cookie here: tc accepts it only on
 * 6.18 (docs/kernel-facts.md#what-each-kernel-has-and-lacks), and ingress_ifindex in sk_lookup needs 5.17;
 * neither is needed.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in6.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "include/ambpf.h"
#include "include/ambpf_maps.h"
#include "include/ambpf_lib.h"
#include "include/ambpf_pkt.h"

/* How many IPv6 extension headers are walked before TCP; past that the packet counts as TCP. */
#define EXTHDR_MAX 4

/*
 * An IPv6 packet tc_tcp gave up on: whether TCP follows its extension headers (hop-by-hop, routing,
 * destination options, fragment). Such a packet to an ambient pod must not reach it past ztunnel, so
 * anything still unresolved after EXTHDR_MAX headers counts as TCP too; a non-first fragment has no
 * TCP header of its own and goes with its first. Fills the addresses (not the ports) of `t`.
 */
static __always_inline int v6_exthdr_tcp(struct __sk_buff *skb, struct ambpf_tuple *t)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6;
	__u32 off = ETH_HLEN + sizeof(*ip6);
	__u8 nexthdr, hdr[2];

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return 0;
	ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return 0;
	__builtin_memcpy(t->local_ip, &ip6->daddr, sizeof(t->local_ip));
	__builtin_memcpy(t->remote_ip, &ip6->saddr, sizeof(t->remote_ip));
	nexthdr = ip6->nexthdr;
#pragma unroll
	for (int i = 0; i < EXTHDR_MAX; i++) {
		if (nexthdr == IPPROTO_TCP)
			return 1;
		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING && nexthdr != IPPROTO_DSTOPTS &&
		    nexthdr != IPPROTO_FRAGMENT)
			return 0;
		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)))
			return 1; /* truncated: ztunnel's stack drops it, the pod must not see it */
		/* The fragment header's second byte is reserved: it is 8 bytes long. */
		off += nexthdr == IPPROTO_FRAGMENT ? 8 : ((__u32)hdr[1] + 1) * 8;
		nexthdr = hdr[0];
	}
	return nexthdr == IPPROTO_TCP || nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT;
}

/*
 * Hand the packet to ztunnel: MACs rewritten for ztunnel's link, redirected to its host-side veth.
 * A RST that is not from a recorded flow may answer the pod's own SYN (connection refused: the pod
 * records nothing before ESTABLISHED) or reset an inbound connection ztunnel holds. Both get it: a
 * copy goes to ztunnel, the original to the pod; whichever has no such socket drops it without a word
 * (a RST is never answered). Stealing it would turn ECONNREFUSED into a timeout.
 */
static __always_inline int steer(struct __sk_buff *skb, const struct ambpf_ztunnel *zt, int rst)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u8 orig_macs[2 * ETH_ALEN];

	if (data + sizeof(orig_macs) > data_end)
		return TC_ACT_OK;
	__builtin_memcpy(orig_macs, data, sizeof(orig_macs));
	/* A packet with a foreign dst MAC is PACKET_OTHERHOST in ztunnel's netns and ip_rcv drops it. */
	if (bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_dest), zt->mac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, offsetof(struct ethhdr, h_source), zt->host_mac, ETH_ALEN, 0)) {
		stat_inc(AMBPF_STAT_TC_ERROR);
		return TC_ACT_OK;
	}
	if (!rst) {
		stat_inc(AMBPF_STAT_TC_STEERED);
		return bpf_redirect(zt->host_ifindex, 0);
	}
	if (bpf_clone_redirect(skb, zt->host_ifindex, 0) == 0)
		stat_inc(AMBPF_STAT_TC_RST_CLONED);
	else
		stat_inc(AMBPF_STAT_TC_ERROR);
	if (bpf_skb_store_bytes(skb, 0, orig_macs, sizeof(orig_macs), 0))
		stat_inc(AMBPF_STAT_TC_ERROR);
	return TC_ACT_OK;
}

SEC("tc")
int ambpf_tc_pod(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ambpf_tuple t = {};
	struct ambpf_ztunnel *zt;
	struct ambpf_config *cfg;
	struct ambpf_pod *pod;
	struct tcphdr *tcp;
	int syn = 0, ack = 0, rst = 0, ports;
	__u32 iif;
	__u8 hops;

	tcp = tc_tcp(data, data_end, &t, &hops);
	if (tcp) {
		syn = tcp->syn;
		ack = tcp->ack;
		rst = tcp->rst;
	} else if (!v6_exthdr_tcp(skb, &t)) {
		return TC_ACT_OK;
	}
	ports = tcp != 0;

	zt = ztunnel_get();
	if (!ztunnel_ready(zt) || zt->host_ifindex == 0)
		return TC_ACT_OK;
	/*
	 * ztunnel's own upstream (HBONE to 15008, or plaintext to the app) is the delivery itself. Real
	 * ztunnel connects to a local pod from the ORIGINAL client's address (IP_TRANSPARENT), so its
	 * source address proves nothing: what does is the interface the packet entered the node on,
	 * ztunnel's host-side veth. skb->ingress_ifindex (skb_iif) survives forwarding and is readable
	 * at tc egress on every kernel we support; bpf_redirect() scrubs skb->mark across the veth, so
	 * ztunnel's 0x539 would not do.
	 */
	iif = skb->ingress_ifindex;
	if (iif == zt->host_ifindex || ip_is_ztunnel(t.remote_ip, zt)) {
		stat_inc(AMBPF_STAT_TC_PASS_ZTUNNEL);
		return TC_ACT_OK;
	}
	/*
	 * Traffic the node itself originates (kubelet probes from the node's address, hostNetwork pods)
	 * goes to the pod directly, as Istio's `-m socket --socket-exists` exempts it. A locally made
	 * packet never entered through an interface: skb_iif is 0 (a forwarded one keeps the interface
	 * it came in on). Not skb->sk: BPF_PROG_TEST_RUN attaches a dummy socket to every packet.
	 */
	if (iif == 0) {
		stat_inc(AMBPF_STAT_TC_PASS_LOCAL);
		return TC_ACT_OK;
	}
	cfg = config_get();
	if (cfg && ip_is_probe(t.remote_ip, cfg)) {
		stat_inc(AMBPF_STAT_TC_PASS_PROBE);
		return TC_ACT_OK;
	}
	pod = bpf_map_lookup_elem(&ambpf_pods, t.local_ip);
	if (!pod || !(pod->flags & AMBPF_POD_AMBIENT) || (pod->flags & AMBPF_POD_OPT_OUT)) {
		stat_inc(AMBPF_STAT_TC_PASS_NOT_AMBIENT);
		return TC_ACT_OK;
	}
	/* A SYN-ACK answers the pod's own SYN: sockops records the flow only once it has processed it. */
	if (ports && ((syn && ack) || outflow_has(&t))) {
		stat_inc(AMBPF_STAT_TC_PASS_POD_FLOW);
		return TC_ACT_OK;
	}
	return steer(skb, zt, rst);
}

SEC("sk_lookup")
int ambpf_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct ambpf_tuple t = {};
	struct ambpf_ztunnel *zt;
	__u32 slot;

	if (ctx->protocol != IPPROTO_TCP || !sklookup_addrs(ctx, &t))
		return SK_PASS;
	zt = ztunnel_get();
	if (!ztunnel_ready(zt))
		return SK_PASS;
	/* Connections to ztunnel's own addresses (pods to 15001, peers to its IP, its IPv6 link-local)
	 * and to loopback are ztunnel's business; only the policy route makes any other destination
	 * local here, so the rest is exactly what ambpf_tc_pod steered. */
	if (ip_is_ztunnel(t.local_ip, zt) || ip_is_loopback(t.local_ip) ||
	    (!ip_is_v4mapped(t.local_ip) && ip6_is_linklocal(t.local_ip)))
		return SK_PASS;
	/* A connection between two local addresses is not inbound (the inpod loop trap). */
	if (ip_eq(t.local_ip, t.remote_ip))
		return SK_PASS;

	slot = ctx->local_port == zt->port_hbone_host ? AMBPF_LISTENER_HBONE : AMBPF_LISTENER_INBOUND;
	/* No listener: the normal lookup, a RST as if nothing listened. */
	return sklookup_assign(ctx, bpf_map_lookup_elem(&ambpf_zt_listen, &slot));
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

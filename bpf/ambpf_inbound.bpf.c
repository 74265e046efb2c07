// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ambpf_inbound.bpf.c: inbound capture for the node topology, without iptables and without a tunnel.
 *
 * Two halves (docs/kernel-facts.md#inbound-steering: both proven on this kernel):
 *
 * 1. ambpf_tc_pod, tc egress on an ambient pod's host-side veth (node netns), i.e. on packets about to
 *    enter the pod. TCP/IPv4 that did not come from the local ztunnel (its host veth or its address),
 *    from the node itself, or from the kubelet probe source is steered to ztunnel instead: MACs
 *    rewritten for ztunnel's link, bpf_redirect() to ztunnel's host-side veth. Except the replies to
 *    connections the pod opened itself, which ztunnel would reset: SYN-ACKs (the answer to the pod's
 *    SYN, before anything is recorded) and the flows in ambpf_outflow (recorded by sockops at the
 *    pod's ACTIVE_ESTABLISHED, deleted at its close). Inbound itself is stateless (see ambpf_outflow
 *    for why). Costs of that choice: an inbound connection the pod had before it became ambient is
 *    steered too (ztunnel resets it), as is a pod's outbound connection opened before ambpf ran;
 *    a peer's late retransmission after the pod's socket is gone (TIME_WAIT) meets ztunnel's RST
 *    instead of the pod's ACK.
 *
 * 2. ambpf_sk_lookup, attached to ztunnel's netns. Steered packets keep the pod's IP as destination;
 *    a policy route in ztunnel's netns (`ip rule iif eth0 lookup 100`, `local 0.0.0.0/0 dev lo
 *    table 100`) makes them local, and this program hands the connection to ztunnel's 15008 listener
 *    (dport 15008, HBONE) or 15006 (anything else). The listeners bind a wildcard with IP_TRANSPARENT,
 *    so the accepted socket's local address is the original destination, which is how ztunnel learns
 *    it. Chosen over tc ingress + bpf_sk_assign because that one silently drops a SYN reusing a tuple
 *    still in TIME_WAIT in ztunnel's netns (connections fell from ~27k/s to ~630/s without
 *    tcp_max_tw_buckets=0); sk_lookup runs after the established/TIME_WAIT lookup, so it does not.
 *
 * IPv4 only for now (IPv6 passes untouched). No bpf_get_netns_cookie here: tc accepts it only on
 * 6.18 (docs/kernel-facts.md#what-each-kernel-has-and-lacks), and ingress_ifindex in sk_lookup needs 5.17;
 * neither is needed.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "include/ambpf.h"
#include "include/ambpf_maps.h"
#include "include/ambpf_lib.h"

SEC("tc")
int ambpf_tc_pod(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ambpf_ztunnel *zt;
	struct ambpf_config *cfg;
	struct ambpf_flow4 flow;
	struct ambpf_pod *pod;
	struct ambpf_ip dst;
	struct iphdr *ip;
	struct tcphdr *tcp;
	__u8 orig_macs[2 * ETH_ALEN];
	__u32 ihl, iif, rst;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP)
		return TC_ACT_OK;
	ihl = (__u32)ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return TC_ACT_OK;
	tcp = (void *)ip + ihl;
	if ((void *)(tcp + 1) > data_end)
		return TC_ACT_OK;

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
	if (iif == zt->host_ifindex || ip->saddr == zt->ip[3]) {
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
	if (cfg && ip_is_v4mapped(cfg->probe_ip) && ip->saddr == cfg->probe_ip[3]) {
		stat_inc(AMBPF_STAT_TC_PASS_PROBE);
		return TC_ACT_OK;
	}
	ip_set_v4(dst.addr, ip->daddr);
	pod = bpf_map_lookup_elem(&ambpf_pods, &dst);
	if (!pod || !(pod->flags & AMBPF_POD_AMBIENT) || (pod->flags & AMBPF_POD_OPT_OUT)) {
		stat_inc(AMBPF_STAT_TC_PASS_NOT_AMBIENT);
		return TC_ACT_OK;
	}

	/* A SYN-ACK answers the pod's own SYN: sockops records the flow only once it has processed it. */
	if (tcp->syn && tcp->ack) {
		stat_inc(AMBPF_STAT_TC_PASS_POD_FLOW);
		return TC_ACT_OK;
	}
	flow.saddr = ip->saddr;
	flow.daddr = ip->daddr;
	flow.sport = tcp->source;
	flow.dport = tcp->dest;
	if (bpf_map_lookup_elem(&ambpf_outflow, &flow)) {
		stat_inc(AMBPF_STAT_TC_PASS_POD_FLOW);
		return TC_ACT_OK;
	}
	rst = tcp->rst;
	__builtin_memcpy(orig_macs, eth, sizeof(orig_macs));

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
	/*
	 * A RST that is not from a recorded flow may answer the pod's own SYN (connection refused: the
	 * pod records nothing before ESTABLISHED) or reset an inbound connection ztunnel holds. Both get
	 * it: a copy goes to ztunnel, the original to the pod; whichever has no such socket drops it
	 * without a word (a RST is never answered). Stealing it would turn ECONNREFUSED into a timeout.
	 */
	if (bpf_clone_redirect(skb, zt->host_ifindex, 0) == 0)
		stat_inc(AMBPF_STAT_TC_RST_CLONED);
	else
		stat_inc(AMBPF_STAT_TC_ERROR);
	if (bpf_skb_store_bytes(skb, 0, orig_macs, sizeof(orig_macs), 0))
		stat_inc(AMBPF_STAT_TC_ERROR);
	return TC_ACT_OK;
}

SEC("sk_lookup")
int ambpf_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct ambpf_ztunnel *zt;
	__u32 slot;

	if (ctx->protocol != IPPROTO_TCP || ctx->family != AF_INET)
		return SK_PASS;
	zt = ztunnel_get();
	if (!ztunnel_ready(zt))
		return SK_PASS;
	/* Connections to ztunnel's own address (pods to 15001, peers to its IP) and to loopback are
	 * ztunnel's business; only the policy route makes any other destination local here, so the
	 * rest is exactly what ambpf_tc_pod steered. */
	if (ctx->local_ip4 == zt->ip[3] || ip4_is_loopback(ctx->local_ip4))
		return SK_PASS;
	/* A connection between two local addresses is not inbound (the inpod loop trap). */
	if (ctx->local_ip4 == ctx->remote_ip4)
		return SK_PASS;

	slot = ctx->local_port == zt->port_hbone_host ? AMBPF_LISTENER_HBONE : AMBPF_LISTENER_INBOUND;
	/* No listener: the normal lookup, a RST as if nothing listened. */
	return sklookup_assign(ctx, bpf_map_lookup_elem(&ambpf_zt_listen, &slot));
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ambpf_pkt.h: reading a frame's TCP/IP headers in tc programs, shared by the node topology's inbound
 * steering (ambpf_inbound.bpf.c) and the inpod programs on a pod's eth0 and lo (ambpf_inpod.bpf.c).
 */
#ifndef AMBPF_PKT_H
#define AMBPF_PKT_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include "ambpf_lib.h"

/*
 * A frame's TCP header, IPv4 or IPv6, with its addresses and ports as the receiving end sees them
 * (t->local = the destination) and its TTL / hop limit; NULL for anything else. IPv4 options are
 * skipped (ihl); IPv6 extension headers are not parsed (the kernel's own connect() sends none): a
 * caller that must not let such a packet slip by looks for them itself (ambpf_inbound.bpf.c).
 */
static __always_inline struct tcphdr *tc_tcp(void *data, void *data_end, struct ambpf_tuple *t, __u8 *hops)
{
	struct ethhdr *eth = data;
	struct tcphdr *tcp;

	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		__u32 ihl;

		if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_TCP)
			return 0;
		ihl = (__u32)ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return 0;
		ip_set_v4(t->local_ip, ip->daddr);
		ip_set_v4(t->remote_ip, ip->saddr);
		*hops = ip->ttl;
		tcp = (void *)ip + ihl;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_TCP)
			return 0;
		__builtin_memcpy(t->local_ip, &ip6->daddr, sizeof(t->local_ip));
		__builtin_memcpy(t->remote_ip, &ip6->saddr, sizeof(t->remote_ip));
		*hops = ip6->hop_limit;
		tcp = (void *)(ip6 + 1);
	} else {
		return 0;
	}
	if ((void *)(tcp + 1) > data_end)
		return 0;
	t->local_port = tcp->dest;
	t->remote_port = tcp->source;
	return tcp;
}

/* A connection's first SYN (no ACK): see tc_tcp. */
static __always_inline int tc_syn(void *data, void *data_end, struct ambpf_tuple *t, __u8 *hops)
{
	struct tcphdr *tcp = tc_tcp(data, data_end, t, hops);

	return tcp && tcp->syn && !tcp->ack;
}

#endif /* AMBPF_PKT_H */

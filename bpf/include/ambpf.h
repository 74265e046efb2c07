/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ambpf.h: the structs, constants and counter indices that the BPF programs and the loader share.
 *
 * This header is the map contract of docs/architecture.md "Maps". src/bpf/schema.ts mirrors it byte for byte and a
 * test (test/bpf/schema-layout.test.ts) compiles this file with gcc and compares every sizeof/offsetof
 * and every enum value with the TS side: change both at once.
 *
 * Only <linux/types.h> is needed, so the same file compiles for the BPF target and for userspace.
 * Addresses are always 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), in network byte order,
 * so one key type serves AF_INET sockets, dual-stack sockets that see v4-mapped peers, and IPv6.
 * Ports in keys and values are network order (__be16) unless the field name says _host.
 */
#ifndef AMBPF_H
#define AMBPF_H

#include <linux/types.h>

/* ---- marks, ports, defaults (ztunnel's contract, docs/istio-ambient.md) ---- */
#define AMBPF_ZTUNNEL_MARK	0x539 /* SO_MARK on every socket ztunnel opens */
#define AMBPF_ZTUNNEL_MARK_MASK 0xfff
#define AMBPF_PORT_OUTBOUND	15001
#define AMBPF_PORT_INBOUND	15006
#define AMBPF_PORT_HBONE	15008
#define AMBPF_PORT_DNS		15053

#define AMBPF_MAX_EXCLUDED_PORTS 16
#define AMBPF_MAX_NODE_IPS	 8

/* SOCKMAP slots of ambpf_zt_listen (the ztunnel listeners that sk_lookup assigns to). */
#define AMBPF_LISTENER_INBOUND	0 /* 15006: plaintext inbound */
#define AMBPF_LISTENER_HBONE	1 /* 15008: HBONE */
#define AMBPF_LISTENER_SLOTS	2
/* inpod: ztunnel's 15001, for the connections connect4/6 kept their destination (AMBPF_POD_LOCAL_ROUTE).
 * 4, not 2: slots 2 and 3 are the second listeners of 0 and 1 (slot + AMBPF_LISTENER_SLOTS), and a
 * pinned map an older ambpf filled holds them. Its own second listener is slot 6. */
#define AMBPF_LISTENER_OUTBOUND 4

/* ---- flags ---- */
/* ambpf_pods / ambpf_netns value flags */
#define AMBPF_POD_AMBIENT (1U << 0) /* redirect this pod's traffic */
#define AMBPF_POD_OPT_OUT (1U << 1) /* known to the loader but opted out: never redirect */
#define AMBPF_POD_DNS_CAPTURE \
	(1U << 2)		       /* inpod: capture this pod's DNS (annotation
					    * ambient.istio.io/dns-capture: "true"), even with
					    * AMBPF_CFG_NO_DNS_CAPTURE */
#define AMBPF_POD_IS_ZTUNNEL (1U << 3) /* this netns is ztunnel's own: never redirect */
#define AMBPF_POD_NO_DNS_CAPTURE \
	(1U << 4) /* inpod: never capture this pod's DNS (the annotation's
					    * "false"). Neither DNS bit: the node's default */
#define AMBPF_POD_LOCAL_ROUTE \
	(1U << 5) /* inpod (ambpf_netns): the pod's netns delivers a socket marked
					    * AMBPF_MARK_ORIG_SRC to lo (rule + table 41919, in the ledger), and
					    * the kernel has sk_lookup's ingress_ifindex: connect4/6 keep the
					    * destination, TPROXY-style (inpod_keep_dst) */

/* ambpf_ztunnel.flags */
#define AMBPF_ZT_READY (1U << 0) /* set last by the loader: before it, nothing is redirected */

/* ambpf_config.flags */
#define AMBPF_CFG_SPLICE (1U << 0) /* same-node sockhash splice (sockops + sk_msg) enabled */
#define AMBPF_CFG_INPOD \
	(1U << 1) /* the inpod loader runs: ambpf_inpod.bpf.c acts only then, so
					    * its programs stay inert next to a node-topology datapath */
#define AMBPF_CFG_FAIL_OPEN \
	(1U << 2) /* inpod: a captured pod whose ztunnel is away talks direct
					    * (--fail-open); off = refused both ways, as with Istio */
#define AMBPF_CFG_NO_DNS_CAPTURE \
	(1U << 3) /* inpod: DNS goes where it asked unless the pod's annotation
					    * says "true" (--no-dns-capture); off = captured by default */

/* inpod: the mark ambpf adds to the SYN of ztunnel's spoofed inbound legs (bound to the client's
 * address) as it crosses the pod's lo. The app's accepted socket inherits it (tcp_fwmark_accept=1 in
 * the pod), and `ip rule fwmark 0x1000/0x1000 lookup 41919` + `local default dev lo table 41919`
 * deliver the app's replies to the client's address back to ztunnel instead of eth0. Above Istio's
 * 0xfff mask. See inpod_ztunnel_leg. */
#define AMBPF_MARK_ORIG_SRC 0x1000U

/* inpod: the TTL a packet the node itself sends arrives with (Linux's default net.ipv4.ip_default_ttl;
 * a forwarded packet has less). See ambpf_inpod_node_syn. */
#define AMBPF_NODE_TTL 64

/* inpod DNS capture: an unconnected UDP socket's query to a server leaves from 127.0.53.<slot + 1>, the
 * slot of that server in the socket's struct ambpf_inpod_dns; ztunnel answers to that address, tc on the
 * pod's lo copies it into the answer's source, and recvmsg reads the slot back from there. See
 * ambpf_inpod_sendmsg4. */
#define AMBPF_DNS_SLOTS	   4	       /* servers per socket at once (resolv.conf allows 3) */
#define AMBPF_DNS_SLOT_NET 0x7f003500U /* 127.0.53.0/24, host order */
#define AMBPF_DNS_PORT	   53

/* ambpf_pair.splice_fwd / splice_rev: per-direction splice decision, sticky for the connection */
#define AMBPF_SPLICE_UNDECIDED 0
#define AMBPF_SPLICE_ON	       1
#define AMBPF_SPLICE_OFF       2

/* ---- map keys and values ---- */

/* ambpf_pods: key = pod IP (16 bytes). */
struct ambpf_ip {
	__u32 addr[4];
};

struct ambpf_pod {
	__u64 netns_cookie; /* the pod's netns (for cross-checks and inspection) */
	__u32 host_ifindex; /* the pod's host-side veth in the node netns */
	__u32 flags;	    /* AMBPF_POD_* */
};

/* ambpf_netns: key = netns cookie (__u64). */
struct ambpf_netns {
	__u32 pod_ip[4]; /* the pod's IPv4 address (v4-mapped); an IPv6-only pod's IPv6 address */
	__u32 flags;	 /* AMBPF_POD_* */
	__u32 _pad;
	__u32 pod_ip6[4]; /* inpod: the pod's IPv6 address, all zero when it has none. Native IPv6
			     * connects go to [pod_ip6]:15001 (ztunnel sees the pod's v6 address as source) */
};

/* ambpf_ztunnel: ARRAY[1], key 0. */
struct ambpf_ztunnel {
	__u32 ip[4];	       /* ztunnel's IPv4 address, v4-mapped */
	__u32 ip6[4];	       /* ztunnel's IPv6 address, all zero when it has none */
	__u64 netns_cookie;    /* ztunnel's own netns: never redirected */
	__u32 host_ifindex;    /* ztunnel's host-side veth (node netns): tc inbound redirects there */
	__u32 ifindex;	       /* ztunnel's eth0 inside its netns (informational) */
	__u8 mac[6];	       /* ztunnel's eth0 MAC: dst MAC of steered packets */
	__u8 host_mac[6];      /* MAC of ztunnel's host-side veth: src MAC of steered packets */
	__u16 port_out_host;   /* 15001 */
	__u16 port_in_host;    /* 15006 */
	__u16 port_hbone_host; /* 15008 */
	__u16 port_dns_host;   /* 15053 */
	__u32 mark;	       /* 0x539 */
	__u32 mark_mask;       /* 0xfff */
	__u32 flags;	       /* AMBPF_ZT_* */
};

/* ambpf_config: ARRAY[1], key 0. */
struct ambpf_config {
	__u32 flags;		/* AMBPF_CFG_* */
	__u32 splice_min_bytes; /* first sendmsg of a direction must be at least this big to splice */
	__u32 probe_ip[4];	/* kubelet probe source, v4-mapped 169.254.7.127 */
	__u32 probe_ip6[4];	/* fd16:9254:7127:1337:ffff:ffff:ffff:ffff */
	__u16 excluded_ports[AMBPF_MAX_EXCLUDED_PORTS]; /* network order, 0 = unused slot */
	__u32 node_ips[AMBPF_MAX_NODE_IPS][4];		/* all zero = unused slot */
	__u32 log_level;				/* reserved */
};

/* ambpf_orig_dst (SK_STORAGE value): what the app asked connect() for. */
struct ambpf_orig {
	__u32 ip[4];
	__u16 port;   /* network order */
	__u16 family; /* AF_INET or AF_INET6 of the address the app used */
};

/* ambpf_pair_dst and ambpf_sockhash key: a socket's 4-tuple as the client (pod) side sees it. */
struct ambpf_tuple {
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u16 local_port;  /* network order */
	__u16 remote_port; /* network order */
};

/* ambpf_pair_dst value. It lives until BOTH sockets of the pair have closed: a fire-and-forget client
 * (connect, write, close) reaches TCP_CLOSE before a busy ztunnel accepts and asks SO_ORIGINAL_DST. */
struct ambpf_pair {
	struct ambpf_orig orig;
	__u8 splice_fwd; /* client -> ztunnel direction, AMBPF_SPLICE_* */
	__u8 splice_rev; /* ztunnel -> client direction */
	__u8 zt_seen;	 /* 1: ztunnel's accepted socket exists and will report its own close */
	__u8 closed;	 /* how many of the two sockets reached TCP_CLOSE (the entry goes at 2). Bumped
			   * with an atomic add on the 32-bit word that starts at splice_fwd (5.10 has no
			   * atomic fetch-or), so this must stay its top byte: AMBPF_PAIR_CLOSED_ONE. */
};
#define AMBPF_PAIR_CLOSED_ONE (1U << 24) /* +1 on `closed` through that word (little endian) */

/* ambpf_outflow key: a TCP flow as packets entering the pod see it
 * (saddr = the peer, daddr = the pod; IPv4, network order). Its IPv6 twin, ambpf_outflow6, is keyed
 * by the pod's own struct ambpf_tuple (local = the pod, remote = the peer). */
struct ambpf_flow4 {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
};

/* ---- inpod topology (ambpf_inpod.bpf.c): ztunnel listens inside every mesh pod's netns ---- */

/* ambpf_inpod_sk (SK_STORAGE, BPF_F_CLONE): per socket. On an app socket connect4 redirected: the
 * original dst and the pod's netns. On ztunnel's 15001 listener in a pod netns the loader writes only
 * netns_cookie, and the kernel clones it to every accepted socket: that is how getsockopt, which has
 * no bpf_get_netns_cookie before 5.15, knows which pod an accepted 127.0.0.1 connection came from
 * (and the accepted socket has storage to take the client's original without an allocation). */
struct ambpf_inpod_sk {
	struct ambpf_orig orig; /* app socket: what it asked for; ztunnel's accepted socket: its client's */
	__u32 role;		/* AMBPF_INPOD_SK_* */
	__u64 netns_cookie;
};
/* ambpf_inpod_sk.role. An app socket has orig set and role APP; ztunnel's tagged 15001 listener has
 * only the cookie. When ztunnel accepts (its accept() asks for the peer's address: getpeername4/6 run
 * on the accepted socket) the client's socket is looked up by the 4-tuple and its original copied
 * onto ztunnel's accepted socket (role ACCEPTED), and the client's marked HANDED: getsockopt answers
 * from there for as long as that socket lives. A client that closes before that (fire and forget)
 * leaves its original in ambpf_inpod_closed instead. */
#define AMBPF_INPOD_SK_APP	0
#define AMBPF_INPOD_SK_ACCEPTED 1
#define AMBPF_INPOD_SK_HANDED	2 /* an app socket whose original ztunnel's accepted socket has */

/* ambpf_inpod_closed key: a pod's connection to its ztunnel over loopback (::1) repeats its 4-tuple
 * across pods; the pod's netns cookie makes it unique on the node (0 for the pod's own IP). */
struct ambpf_inpod_key {
	__u64 netns_cookie;
	struct ambpf_tuple t;
	__u32 _pad;
};

/* ambpf_inpod_listen key: the pod IP (the local address of an inbound connection, unique on the
 * node) and the listener slot (AMBPF_LISTENER_*). */
struct ambpf_inpod_lkey {
	__u32 pod_ip[4];
	__u32 slot;
};

/* ambpf_inpod_dns (SK_STORAGE): the DNS servers a pod's UDP socket sent captured queries to, so that
 * recvmsg can give each answer from ztunnel's 15053 the address of the server that query was for. */
struct ambpf_inpod_dns {
	struct ambpf_orig srv[AMBPF_DNS_SLOTS]; /* family 0: a free slot */
	__u32 last;				/* slot of the latest query: the answer's server when
						  * the answer's source names no slot */
	__u32 next;				/* slot a new server takes (the oldest) */
};

/* ---- counters: ambpf_stats index = one program x outcome ---- */
enum ambpf_stat {
	AMBPF_STAT_CONNECT4_REDIRECTED = 0,
	AMBPF_STAT_CONNECT4_NOT_AMBIENT,
	AMBPF_STAT_CONNECT4_BYPASS_MARK,
	AMBPF_STAT_CONNECT4_BYPASS_ZTUNNEL,
	AMBPF_STAT_CONNECT4_BYPASS_DST,
	AMBPF_STAT_CONNECT4_BYPASS_PORT,
	AMBPF_STAT_CONNECT4_NO_ZTUNNEL,
	AMBPF_STAT_CONNECT4_ERROR,
	AMBPF_STAT_CONNECT6_REDIRECTED,
	AMBPF_STAT_CONNECT6_BYPASS,
	AMBPF_STAT_CONNECT6_ERROR,
	AMBPF_STAT_SOCKOPS_PAIR_ADDED,
	AMBPF_STAT_SOCKOPS_PAIR_CLOSED,
	AMBPF_STAT_SOCKOPS_STALE_DELETED,
	AMBPF_STAT_SOCKOPS_SOCKHASH_ADDED,
	AMBPF_STAT_SOCKOPS_ERROR,
	AMBPF_STAT_SKMSG_SPLICED,
	AMBPF_STAT_SKMSG_SPLICED_BYTES,
	AMBPF_STAT_SKMSG_PASSED,
	AMBPF_STAT_SKMSG_MISS,
	AMBPF_STAT_GETSOCKOPT_ANSWERED,
	AMBPF_STAT_GETSOCKOPT_MISS,
	AMBPF_STAT_GETSOCKOPT_ERROR,
	AMBPF_STAT_GETPEERNAME_RESTORED,
	AMBPF_STAT_TC_STEERED,
	AMBPF_STAT_TC_PASS_ZTUNNEL,
	AMBPF_STAT_TC_PASS_PROBE,
	AMBPF_STAT_TC_PASS_NOT_AMBIENT,
	AMBPF_STAT_TC_PASS_POD_FLOW, /* tc: a reply to a connection the pod opened (or a SYN-ACK) */
	AMBPF_STAT_TC_ERROR,
	AMBPF_STAT_SKLOOKUP_ASSIGNED,
	AMBPF_STAT_SKLOOKUP_NO_LISTENER,
	AMBPF_STAT_SKLOOKUP_ERROR,
	AMBPF_STAT_SKLOOKUP_PASS_PROBE,	      /* inpod sk_lookup: from the kubelet probe source */
	AMBPF_STAT_SKLOOKUP_PASS_NOT_AMBIENT, /* inpod sk_lookup: the pod is not (or no longer) ambient */
	AMBPF_STAT_TC_PASS_LOCAL,	      /* tc: the node itself sent it (kubelet, hostNetwork pods) */
	AMBPF_STAT_TC_RST_CLONED,	      /* tc: an unknown RST went to the pod and a copy to ztunnel */
	AMBPF_STAT_SOCKOPS_OUTFLOW_ADDED,     /* sockops: an ambient pod's own connection recorded */
	AMBPF_STAT_SKLOOKUP_REFUSED,	      /* inpod sk_lookup: captured pod, no ztunnel listener: RST */
	AMBPF_STAT_SKLOOKUP_PASS_ZTUNNEL,     /* inpod sk_lookup: ztunnel's own (spoofed) leg to the app */
	AMBPF_STAT_ORIG_SRC_MARKED,	      /* inpod connect: a spoofed ztunnel leg recorded and marked */
	AMBPF_STAT_CONNECT4_FAIL_OPEN,	      /* inpod connect: no ztunnel listener, --fail-open: direct */
	AMBPF_STAT_DNS_REDIRECTED,	      /* inpod: a query (UDP send or connect, TCP connect) to 15053 */
	AMBPF_STAT_DNS_BYPASS,		      /* inpod: port 53, but not captured (pod, mark, dst, switch) */
	AMBPF_STAT_DNS_RESTORED,	      /* inpod recvmsg: an answer given its server's address */
	AMBPF_STAT_DNS_SLOT_REUSED,	      /* inpod: a socket asked a 5th server: its oldest slot reused */
	AMBPF_STAT_DNS_ERROR,		      /* inpod: no socket storage for a query (refused) */
	AMBPF_STAT_DNS_ANSWER_SOURCE,	      /* inpod sendmsg: an answer's source set to its slot address */
	/* An insert a program made failed, one counter per map (the map full, or no memory for socket
	 * storage). What each failure does to the connection is documented at the map (docs/maps.md):
	 * never a captured pod's traffic sent around ztunnel. */
	AMBPF_STAT_MAPFULL_PAIR_DST,
	AMBPF_STAT_MAPFULL_OUTFLOW,
	AMBPF_STAT_MAPFULL_SOCKHASH,
	AMBPF_STAT_MAPFULL_ORIG_DST,
	AMBPF_STAT_MAPFULL_INPOD_CLOSED,
	AMBPF_STAT_MAPFULL_INPOD_ORIGSRC,
	AMBPF_STAT_MAPFULL_INPOD_NODESYN,
	AMBPF_STAT_MAPFULL_INPOD_SK,
	AMBPF_STAT_MAPFULL_INPOD_DNS,
	AMBPF_STAT_INPOD_HANDED,       /* inpod: a client's original copied onto ztunnel's accepted socket */
	AMBPF_STAT_INPOD_CLOSED_EARLY, /* inpod: a client closed before ztunnel took its original */
	AMBPF_STAT_MAPFULL_OUTFLOW6,   /* node: a pod's own IPv6 connection not recorded (ambpf_outflow6) */
	AMBPF_STAT_INPOD_KEPT_DST,     /* inpod: a connect kept its destination, marked for lo (no record) */
	AMBPF_STAT_SKLOOKUP_OUTBOUND,  /* inpod: such a connection's SYN handed to ztunnel's 15001 */
	AMBPF_STAT_MAX,
};

#endif /* AMBPF_H */

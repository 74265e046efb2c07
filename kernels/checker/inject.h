/* A packet that enters the test netns through an interface, as a pod's or another node's traffic
 * does, rather than one the checker's own sockets make (the tc program passes the node's own). */
#ifndef AMBPF_CHECKER_INJECT_H
#define AMBPF_CHECKER_INJECT_H

/* Send a TCP SYN src_ip:40000 -> dst_ip:dport as an Ethernet frame out of `out_if` (AF_PACKET), to the
 * MAC of `to_if`, its veth peer: the netns receives it on to_if and forwards it (ip_forward on). TTL 2,
 * so a packet the tc program steers back onto the same link dies after one more hop. Returns 0 or
 * -errno. */
int inject_syn(const char *out_if, const char *to_if, const char *src_ip, const char *dst_ip, int dport);

/* The same over IPv6 (hop limit 2). */
int inject_syn6(const char *out_if, const char *to_if, const char *src_ip, const char *dst_ip, int dport);

#endif /* AMBPF_CHECKER_INJECT_H */

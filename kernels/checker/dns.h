/* The inpod topology's DNS capture checks (bpf/ambpf_inpod.bpf.c "DNS capture"): queries to port 53
 * reach ztunnel's DNS proxy on 127.0.0.1:15053 and the answers show the server asked. */
#ifndef AMBPF_CHECKER_DNS_H
#define AMBPF_CHECKER_DNS_H

#include "checks.h"

/* Runs the UDP (unconnected, connected) and TCP checks against a stand-in proxy on 127.0.0.1:15053,
 * marked as ztunnel's sockets are; returns the number that failed. The maps must be filled for inpod. */
int inpod_dns_checks(const struct func_ctx *c);

#endif /* AMBPF_CHECKER_DNS_H */

/* The functional checks' socket helpers: IPv4 addresses, listeners, a bounded accept. Shared by the
 * node (func.c) and inpod (inpod.c) check suites. */
#ifndef AMBPF_CHECKER_SOCKETS_H
#define AMBPF_CHECKER_SOCKETS_H

#include <stdbool.h>
#include <stddef.h>
#include <netinet/in.h>

void sock_addr4(struct sockaddr_in *sin, const char *ip, int port);
const char *sock_fmt(const struct sockaddr_in *sin, char *buf, size_t len);
bool sock_same(const struct sockaddr_in *a, const struct sockaddr_in *b);

/* A TCP listener on ip:port (SO_REUSEADDR), or -1 with errno set. */
int sock_listen(const char *ip, int port);

/* accept() that gives up after 3 s: a lost redirect must fail the check, not hang the guest. */
int sock_accept_within(int lfd);

#endif /* AMBPF_CHECKER_SOCKETS_H */

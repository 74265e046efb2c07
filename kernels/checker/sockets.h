/* The functional checks' socket helpers: IPv4 and IPv6 addresses, listeners, a bounded accept. Shared
 * by the node (func.c, node6.c) and inpod (inpod.c, inpod6.c) check suites. */
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

/* The same for IPv6 (the listener is IPV6_V6ONLY: IPv4 checks hold the IPv4 ports). */
void sock_addr6(struct sockaddr_in6 *sin6, const char *ip, int port);
const char *sock_fmt6(const struct sockaddr_in6 *sin6, char *buf, size_t len);
bool sock_same6(const struct sockaddr_in6 *a, const struct sockaddr_in6 *b);
int sock_listen6(const char *ip, int port);

/* accept() that gives up after 3 s: a lost redirect must fail the check, not hang the guest. */
int sock_accept_within(int lfd);

#endif /* AMBPF_CHECKER_SOCKETS_H */

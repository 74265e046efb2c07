#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "sockets.h"

void sock_addr4(struct sockaddr_in *sin, const char *ip, int port)
{
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_port = htons((unsigned short)port);
	inet_pton(AF_INET, ip, &sin->sin_addr);
}

const char *sock_fmt(const struct sockaddr_in *sin, char *buf, size_t len)
{
	char ip[INET_ADDRSTRLEN];

	inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
	snprintf(buf, len, "%s:%d", ip, ntohs(sin->sin_port));
	return buf;
}

bool sock_same(const struct sockaddr_in *a, const struct sockaddr_in *b)
{
	return a->sin_addr.s_addr == b->sin_addr.s_addr && a->sin_port == b->sin_port;
}

int sock_listen(const char *ip, int port)
{
	struct sockaddr_in sin;
	int one = 1, saved, fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	sock_addr4(&sin, ip, port);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) || listen(fd, 16)) {
		saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

void sock_addr6(struct sockaddr_in6 *sin6, const char *ip, int port)
{
	memset(sin6, 0, sizeof(*sin6));
	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons((unsigned short)port);
	inet_pton(AF_INET6, ip, &sin6->sin6_addr);
}

const char *sock_fmt6(const struct sockaddr_in6 *sin6, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];

	inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
	snprintf(buf, len, "[%s]:%d", ip, ntohs(sin6->sin6_port));
	return buf;
}

bool sock_same6(const struct sockaddr_in6 *a, const struct sockaddr_in6 *b)
{
	return a->sin6_family == AF_INET6 && !memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) &&
	       a->sin6_port == b->sin6_port;
}

int sock_listen6(const char *ip, int port)
{
	struct sockaddr_in6 sin6;
	int one = 1, saved, fd = socket(AF_INET6, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	sock_addr6(&sin6, ip, port);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sin6, sizeof(sin6)) || listen(fd, 16)) {
		saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

int sock_accept_within(int lfd)
{
	struct pollfd p = {.fd = lfd, .events = POLLIN};
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);

	if (poll(&p, 1, 3000) != 1) {
		errno = ETIMEDOUT;
		return -1;
	}
	/* With the peer's address, as ztunnel's accept (tokio) asks: the inpod getpeername program hands
	 * the client's original over to the accepted socket there. */
	return accept(lfd, (struct sockaddr *)&peer, &len);
}

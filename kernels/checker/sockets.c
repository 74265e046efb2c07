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

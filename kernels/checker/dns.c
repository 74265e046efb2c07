#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "ambpf.h"
#include "dns.h"
#include "fill.h"
#include "report.h"
#include "sockets.h"

#define CHECK_UDP  "UDP to port 53 lands on 15053, the answer shows the server"
#define CHECK_CONN "connected UDP to port 53: getpeername and the answer show the server"
#define CHECK_TCP  "TCP to port 53 lands on 15053, getpeername gives the original"
#define PROXY_IP   "127.0.0.1"

static bool readable_within(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	if (poll(&p, 1, 3000) == 1)
		return true;
	errno = ETIMEDOUT;
	return false;
}

/* The proxy answers one datagram to whoever sent it: from 127.0.0.1:15053, to the query's source
 * (a slot address 127.0.53.<n> on an unconnected socket). */
static bool proxy_answer(int ufd)
{
	struct sockaddr_storage peer;
	socklen_t len = sizeof(peer);
	char buf[64];
	ssize_t n;

	if (!readable_within(ufd))
		return false;
	n = recvfrom(ufd, buf, sizeof(buf), 0, (struct sockaddr *)&peer, &len);
	return n > 0 && sendto(ufd, buf, (size_t)n, 0, (struct sockaddr *)&peer, len) == n;
}

/* One query from `cfd` (connected when `connected`) to the original server; 0 when the answer came
 * back from that server's address (and, connected, getpeername gives it too). */
static int udp_exchange(const struct func_ctx *c, const char *name, int ufd, bool connected)
{
	struct sockaddr_in orig, from, peer;
	socklen_t len = sizeof(from), plen = sizeof(peer);
	int cfd = socket(AF_INET, SOCK_DGRAM, 0);
	char a[64], b[64];
	bool sent;

	sock_addr4(&orig, FILL_ORIG_DST_IP, AMBPF_DNS_PORT);
	memset(&from, 0, sizeof(from));
	memset(&peer, 0, sizeof(peer));
	if (cfd < 0) {
		report(c->label, name, "func", "fail", "socket: %s", strerror(errno));
		return 1;
	}
	if (connected)
		sent = connect(cfd, (struct sockaddr *)&orig, sizeof(orig)) == 0 && send(cfd, "q", 1, 0) == 1 &&
		       getpeername(cfd, (struct sockaddr *)&peer, &plen) == 0;
	else
		sent = sendto(cfd, "q", 1, 0, (struct sockaddr *)&orig, sizeof(orig)) == 1;
	if (!sent || !proxy_answer(ufd) || !readable_within(cfd) ||
	    recvfrom(cfd, a, sizeof(a), 0, (struct sockaddr *)&from, &len) != 1) {
		report(c->label, name, "func", "fail", "the query to %s did not come back through %s:%d: %s",
		       sock_fmt(&orig, a, sizeof(a)), PROXY_IP, AMBPF_PORT_DNS, strerror(errno));
		close(cfd);
		return 1;
	}
	close(cfd);
	if (!sock_same(&from, &orig) || (connected && !sock_same(&peer, &orig))) {
		report(c->label, name, "func", "fail", "answer from %s, getpeername %s, want %s",
		       sock_fmt(&from, a, sizeof(a)), connected ? sock_fmt(&peer, b, sizeof(b)) : "-",
		       sock_fmt(&orig, b, sizeof(b)));
		return 1;
	}
	report(c->label, name, "func", "ok", "answer from %s (restored %lld)", sock_fmt(&from, a, sizeof(a)),
	       fill_stat(c->maps, c->nmaps, AMBPF_STAT_DNS_RESTORED));
	return 0;
}

static int tcp_exchange(const struct func_ctx *c, int lfd)
{
	struct sockaddr_in orig, peer;
	socklen_t len = sizeof(peer);
	int cfd = socket(AF_INET, SOCK_STREAM, 0), afd;
	char a[64], b[64];

	sock_addr4(&orig, FILL_ORIG_DST_IP, AMBPF_DNS_PORT);
	memset(&peer, 0, sizeof(peer));
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&orig, sizeof(orig)) < 0 ||
	    (afd = sock_accept_within(lfd)) < 0) {
		report(c->label, CHECK_TCP, "func", "fail", "connect to %s did not reach %s:%d: %s",
		       sock_fmt(&orig, a, sizeof(a)), PROXY_IP, AMBPF_PORT_DNS, strerror(errno));
		if (cfd >= 0)
			close(cfd);
		return 1;
	}
	close(afd);
	if (getpeername(cfd, (struct sockaddr *)&peer, &len) || !sock_same(&peer, &orig)) {
		report(c->label, CHECK_TCP, "func", "fail", "getpeername %s, want %s", sock_fmt(&peer, a, sizeof(a)),
		       sock_fmt(&orig, b, sizeof(b)));
		close(cfd);
		return 1;
	}
	close(cfd);
	report(c->label, CHECK_TCP, "func", "ok", "%s -> %s:%d", sock_fmt(&orig, a, sizeof(a)), PROXY_IP,
	       AMBPF_PORT_DNS);
	return 0;
}

int inpod_dns_checks(const struct func_ctx *c)
{
	unsigned int mark = AMBPF_ZTUNNEL_MARK;
	struct sockaddr_in proxy;
	int ufd = socket(AF_INET, SOCK_DGRAM, 0);
	int lfd = sock_listen(PROXY_IP, AMBPF_PORT_DNS);
	int failures = 0;

	sock_addr4(&proxy, PROXY_IP, AMBPF_PORT_DNS);
	/* ztunnel marks every socket it opens in a pod; tc on lo recognises its answers by it. */
	if (ufd < 0 || lfd < 0 || setsockopt(ufd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) ||
	    bind(ufd, (struct sockaddr *)&proxy, sizeof(proxy))) {
		report(c->label, CHECK_UDP, "func", "fail", "the proxy's sockets on %s:%d: %s", PROXY_IP,
		       AMBPF_PORT_DNS, strerror(errno));
		report(c->label, CHECK_CONN, "func", "fail", "no proxy");
		report(c->label, CHECK_TCP, "func", "fail", "no proxy");
		failures = 3;
		goto out;
	}
	failures += udp_exchange(c, CHECK_UDP, ufd, false);
	failures += udp_exchange(c, CHECK_CONN, ufd, true);
	failures += tcp_exchange(c, lfd);
out:
	if (ufd >= 0)
		close(ufd);
	if (lfd >= 0)
		close(lfd);
	return failures;
}

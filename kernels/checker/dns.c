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
#define CHECK_TWO  "two servers at once on one UDP socket: each answer shows its own server"
#define PROXY_IP   "127.0.0.1"
#define SERVER2_IP "198.18.5.6" /* a second nameserver, assigned nowhere as FILL_ORIG_DST_IP */

static bool readable_within(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};

	if (poll(&p, 1, 3000) == 1)
		return true;
	errno = ETIMEDOUT;
	return false;
}

/* One query at the proxy: its one-byte payload and its source (a slot address 127.0.53.<n> on an
 * unconnected socket). */
static bool proxy_recv(int ufd, char *q, struct sockaddr_in *peer)
{
	socklen_t len = sizeof(*peer);

	memset(peer, 0, sizeof(*peer));
	return readable_within(ufd) && recvfrom(ufd, q, 1, 0, (struct sockaddr *)peer, &len) == 1;
}

/* The proxy answers to the query's source: from its own socket on 127.0.0.1:15053, which sendmsg4 gives
 * the slot address as source when it sends to one (inpod_dns_answer). */
static bool proxy_send(int ufd, char q, const struct sockaddr_in *peer)
{
	return sendto(ufd, &q, 1, 0, (const struct sockaddr *)peer, sizeof(*peer)) == 1;
}

static bool proxy_answer(int ufd)
{
	struct sockaddr_in peer;
	char q;

	return proxy_recv(ufd, &q, &peer) && proxy_send(ufd, q, &peer);
}

static bool is_slot(const struct sockaddr_in *sin)
{
	unsigned int n = ntohl(sin->sin_addr.s_addr) - AMBPF_DNS_SLOT_NET;

	return n >= 1 && n <= AMBPF_DNS_SLOTS;
}

/* One query from `cfd` (connected when `connected`) to the original server; 0 when the answer came
 * back from that server's address (and, connected, getpeername gives it too). */
static int udp_exchange(const struct func_ctx *c, const char *name, int ufd, bool connected)
{
	struct sockaddr_in orig, from, peer;
	socklen_t len = sizeof(from), plen = sizeof(peer);
	long long sourced = fill_stat(c->maps, c->nmaps, AMBPF_STAT_DNS_ANSWER_SOURCE);
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
	/* Unconnected, the query left from a slot address, and the answer to it from that same address. */
	sourced = fill_stat(c->maps, c->nmaps, AMBPF_STAT_DNS_ANSWER_SOURCE) - sourced;
	if (!connected && sourced <= 0) {
		report(c->label, name, "func", "fail", "answer from %s, but sendmsg4 gave no answer its slot source",
		       sock_fmt(&from, a, sizeof(a)));
		return 1;
	}
	snprintf(b, sizeof(b), connected ? "" : ", slot sources %lld", sourced);
	report(c->label, name, "func", "ok", "answer from %s (restored %lld%s)", sock_fmt(&from, a, sizeof(a)),
	       fill_stat(c->maps, c->nmaps, AMBPF_STAT_DNS_RESTORED), b);
	return 0;
}

/* musl asks every nameserver at once from one socket, and recvmsg sees nothing of an answer but its
 * source: each server's queries leave from their own slot address, the proxy answers each from that
 * address (sendmsg4), and recvmsg4 names the server by it. The answers come back in the other order,
 * so a recvmsg that fell back to the socket's latest server would name the wrong one. */
static int udp_two_servers(const struct func_ctx *c, int ufd)
{
	struct sockaddr_in srv[2], peer[2], from;
	socklen_t len;
	int cfd = socket(AF_INET, SOCK_DGRAM, 0), failed = 1;
	char q[2], got, a[64], b[64], d[64], e[64];

	sock_addr4(&srv[0], FILL_ORIG_DST_IP, AMBPF_DNS_PORT);
	sock_addr4(&srv[1], SERVER2_IP, AMBPF_DNS_PORT);
	if (cfd < 0 || sendto(cfd, "a", 1, 0, (struct sockaddr *)&srv[0], sizeof(srv[0])) != 1 ||
	    sendto(cfd, "b", 1, 0, (struct sockaddr *)&srv[1], sizeof(srv[1])) != 1 ||
	    !proxy_recv(ufd, &q[0], &peer[0]) || !proxy_recv(ufd, &q[1], &peer[1])) {
		report(c->label, CHECK_TWO, "func", "fail", "the queries did not reach %s:%d: %s", PROXY_IP,
		       AMBPF_PORT_DNS, strerror(errno));
		goto out;
	}
	if (!is_slot(&peer[0]) || !is_slot(&peer[1]) || sock_same(&peer[0], &peer[1])) {
		report(c->label, CHECK_TWO, "func", "fail", "the queries came from %s and %s, want two slot addresses",
		       sock_fmt(&peer[0], a, sizeof(a)), sock_fmt(&peer[1], b, sizeof(b)));
		goto out;
	}
	for (int i = 1; i >= 0; i--) {
		len = sizeof(from);
		memset(&from, 0, sizeof(from));
		if (!proxy_send(ufd, q[i], &peer[i]) || !readable_within(cfd) ||
		    recvfrom(cfd, &got, 1, 0, (struct sockaddr *)&from, &len) != 1) {
			report(c->label, CHECK_TWO, "func", "fail", "the answer from %s did not come back: %s",
			       sock_fmt(&peer[i], a, sizeof(a)), strerror(errno));
			goto out;
		}
		if (!sock_same(&from, &srv[got == 'b'])) {
			report(c->label, CHECK_TWO, "func", "fail", "the answer to %s came from %s",
			       sock_fmt(&srv[got == 'b'], a, sizeof(a)), sock_fmt(&from, b, sizeof(b)));
			goto out;
		}
	}
	report(c->label, CHECK_TWO, "func", "ok", "%s via %s, %s via %s", sock_fmt(&srv[0], a, sizeof(a)),
	       sock_fmt(&peer[0], b, sizeof(b)), sock_fmt(&srv[1], d, sizeof(d)), sock_fmt(&peer[1], e, sizeof(e)));
	failed = 0;
out:
	if (cfd >= 0)
		close(cfd);
	return failed;
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
	/* ztunnel marks every socket it opens in a pod; sendmsg4 recognises its answers by it. */
	if (ufd < 0 || lfd < 0 || setsockopt(ufd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) ||
	    bind(ufd, (struct sockaddr *)&proxy, sizeof(proxy))) {
		report(c->label, CHECK_UDP, "func", "fail", "the proxy's sockets on %s:%d: %s", PROXY_IP,
		       AMBPF_PORT_DNS, strerror(errno));
		report(c->label, CHECK_CONN, "func", "fail", "no proxy");
		report(c->label, CHECK_TCP, "func", "fail", "no proxy");
		report(c->label, CHECK_TWO, "func", "fail", "no proxy");
		failures = 4;
		goto out;
	}
	failures += udp_exchange(c, CHECK_UDP, ufd, false);
	failures += udp_exchange(c, CHECK_CONN, ufd, true);
	failures += udp_two_servers(c, ufd);
	failures += tcp_exchange(c, lfd);
out:
	if (ufd >= 0)
		close(ufd);
	if (lfd >= 0)
		close(lfd);
	return failures;
}

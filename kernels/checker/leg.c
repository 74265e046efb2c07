/* ztunnel's spoofed inbound leg in the inpod topology (bpf/ambpf_inpod.bpf.c, inpod_ztunnel_leg):
 * ztunnel connects to the app from the original client's address (IP_TRANSPARENT, bound to (client
 * IP, 0)) with its mark. connect4/6 records the 4-tuple for sk_lookup and adds AMBPF_MARK_ORIG_SRC to
 * the socket's mark; sk_lookup lets that SYN reach the app's listener, where every other SYN to the
 * pod's IP from a foreign address goes to ztunnel's 15006. The app's SYN-ACK to the client's address
 * comes back over lo only through check.sh's `ip rule fwmark 0x1000/0x1000 lookup 41919` (the loader's
 * return path, src/bpf/return-path.ts) with tcp_fwmark_accept=1: the handshake completes only if the
 * SYN carried the mark. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "ambpf.h"
#include "fill.h"
#include "inpod.h"
#include "report.h"
#include "sockets.h"

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#ifndef IPV6_TRANSPARENT
#define IPV6_TRANSPARENT 75
#endif

#define LEG_MARK_WANT (AMBPF_ZTUNNEL_MARK | AMBPF_MARK_ORIG_SRC)

/* One family's leg: its check names and addresses. */
struct leg {
	const char *check_mark, *check_app;
	int family;
	const char *client_ip, *pod_ip, *any_ip;
};

static const struct leg legs[] = {
	{"connect4 adds 0x1000 to the SO_MARK of ztunnel's spoofed leg",
	 "ztunnel's spoofed leg reaches the app (not 15006), the app's socket has mark 0x1000", AF_INET,
	 FILL_LEG_CLIENT_IP, FILL_POD_IP, "0.0.0.0"},
	{"connect6 adds 0x1000 to the SO_MARK of ztunnel's spoofed IPv6 leg",
	 "ztunnel's spoofed IPv6 leg reaches the app (not 15006), the app's socket has mark 0x1000", AF_INET6,
	 FILL_LEG_CLIENT_IP6, FILL_POD_IP6, "::"},
};

union leg_addr {
	struct sockaddr sa;
	struct sockaddr_in v4;
	struct sockaddr_in6 v6;
};

static void leg_addr(union leg_addr *a, int family, const char *ip, int port)
{
	if (family == AF_INET)
		sock_addr4(&a->v4, ip, port);
	else
		sock_addr6(&a->v6, ip, port);
}

static const char *leg_fmt(const union leg_addr *a, char *buf, size_t len)
{
	return a->sa.sa_family == AF_INET6 ? sock_fmt6(&a->v6, buf, len) : sock_fmt(&a->v4, buf, len);
}

static bool leg_same(const union leg_addr *a, const union leg_addr *b)
{
	return a->sa.sa_family == b->sa.sa_family &&
	       (a->sa.sa_family == AF_INET6 ? sock_same6(&a->v6, &b->v6) : sock_same(&a->v4, &b->v4));
}

static unsigned int mark_of(int fd)
{
	unsigned int mark = 0;
	socklen_t len = sizeof(mark);

	return getsockopt(fd, SOL_SOCKET, SO_MARK, &mark, &len) ? 0 : mark;
}

/* Where a leg that missed the app went instead: ztunnel's 15006 (sk_lookup did not let it through). */
static const char *landed_elsewhere(int inbound_fd)
{
	struct pollfd p = {.fd = inbound_fd, .events = POLLIN};
	int fd;

	if (inbound_fd < 0 || poll(&p, 1, 0) != 1 || (fd = accept(inbound_fd, NULL, NULL)) < 0)
		return "nothing on ztunnel's 15006 either (without the 0x1000 mark its SYN-ACK has no way back)";
	close(fd);
	return "it landed on ztunnel's 15006 listener";
}

/* The leg, connected without blocking: a SYN-ACK that never comes back must fail the check, not the
 * guest's timeout. 0, or -1 with errno set. */
static int leg_connect(const struct leg *l, int fd, union leg_addr *src)
{
	unsigned int mark = AMBPF_ZTUNNEL_MARK;
	socklen_t len = sizeof(*src);
	union leg_addr app;
	int one = 1;

	leg_addr(src, l->family, l->client_ip, 0);
	leg_addr(&app, l->family, l->pod_ip, FILL_APP_PORT);
	if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) ||
	    (l->family == AF_INET ? setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one))
				  : setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one))) ||
	    bind(fd, &src->sa, sizeof(*src)) || getsockname(fd, &src->sa, &len))
		return -1;
	if (connect(fd, &app.sa, sizeof(app)) == 0 || errno == EINPROGRESS)
		return 0;
	return -1;
}

/* The app's accepted socket: from the client's address and port, to the pod's IP, with the mark. */
static int leg_accepted(const struct func_ctx *c, const struct leg *l, int afd, const union leg_addr *client,
			long long passed)
{
	union leg_addr peer, local, want;
	socklen_t plen = sizeof(peer), llen = sizeof(local);
	unsigned int mark = mark_of(afd);
	char a[80], b[80], d[80], e[80];

	leg_addr(&want, l->family, l->pod_ip, FILL_APP_PORT);
	memset(&peer, 0, sizeof(peer));
	memset(&local, 0, sizeof(local));
	if (getpeername(afd, &peer.sa, &plen) || getsockname(afd, &local.sa, &llen) || !leg_same(&peer, client) ||
	    !leg_same(&local, &want)) {
		report(c->label, l->check_app, "func", "fail", "the app accepted %s -> %s, want %s -> %s",
		       leg_fmt(&peer, a, sizeof(a)), leg_fmt(&local, b, sizeof(b)), leg_fmt(client, d, sizeof(d)),
		       leg_fmt(&want, e, sizeof(e)));
		return 1;
	}
	if (!(mark & AMBPF_MARK_ORIG_SRC) || passed <= 0) {
		report(c->label, l->check_app, "func", "fail",
		       "the app's socket has mark %#x (want 0x1000 in it), sk_lookup passed %lld leg(s) as ztunnel's",
		       mark, passed);
		return 1;
	}
	report(c->label, l->check_app, "func", "ok", "%s -> %s, app's mark %#x (sk_lookup passed %lld as ztunnel's)",
	       leg_fmt(client, a, sizeof(a)), leg_fmt(&want, b, sizeof(b)), mark, passed);
	return 0;
}

int inpod_leg_checks(const struct func_ctx *c, int inbound_fd, int family)
{
	const struct leg *l = &legs[family == AF_INET6];
	long long marked = fill_stat(c->maps, c->nmaps, AMBPF_STAT_ORIG_SRC_MARKED);
	long long passed = fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_PASS_ZTUNNEL);
	int lfd = family == AF_INET6 ? sock_listen6(l->any_ip, FILL_APP_PORT) : sock_listen(l->any_ip, FILL_APP_PORT);
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0), afd, failures = 0;
	union leg_addr client;
	unsigned int mark;
	char a[80];

	if (lfd < 0 || fd < 0 || leg_connect(l, fd, &client)) {
		report(c->label, l->check_mark, "func", "fail", "the app's listener or the leg from %s: %s",
		       l->client_ip, strerror(errno));
		report(c->label, l->check_app, "func", "fail", "no leg");
		failures = 2;
		goto out;
	}
	/* bpf_setsockopt ran inside connect(): the mark is there before the handshake is done. */
	mark = mark_of(fd);
	marked = fill_stat(c->maps, c->nmaps, AMBPF_STAT_ORIG_SRC_MARKED) - marked;
	if ((mark & LEG_MARK_WANT) == LEG_MARK_WANT && marked > 0) {
		report(c->label, l->check_mark, "func", "ok", "%s -> %s port %d has mark %#x",
		       leg_fmt(&client, a, sizeof(a)), l->pod_ip, FILL_APP_PORT, mark);
	} else {
		report(c->label, l->check_mark, "func", "fail", "the leg's mark is %#x (want %#x in it), marked %lld",
		       mark, LEG_MARK_WANT, marked);
		failures++;
	}
	if (!c->has_sk_lookup) {
		report(c->label, l->check_app, "func", "fail",
		       "ambpf_inpod_lookup is not attached (see its load/attach row)");
		failures++;
		goto out;
	}
	if ((afd = sock_accept_within(lfd)) < 0) {
		report(c->label, l->check_app, "func", "fail", "the app on %s port %d accepted nothing (%s): %s",
		       l->pod_ip, FILL_APP_PORT, strerror(errno), landed_elsewhere(inbound_fd));
		failures++;
		goto out;
	}
	failures += leg_accepted(c, l, afd, &client,
				 fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_PASS_ZTUNNEL) - passed);
	close(afd);
out:
	if (fd >= 0)
		close(fd);
	if (lfd >= 0)
		close(lfd);
	return failures;
}

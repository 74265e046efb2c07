/* ztunnel's spoofed inbound leg in the inpod topology (bpf/ambpf_inpod.bpf.c, inpod_ztunnel_leg):
 * ztunnel connects to the app from the original client's address (IP_TRANSPARENT, bound to (client
 * IP, 0)) with its mark. connect4 records the 4-tuple for sk_lookup and adds AMBPF_MARK_ORIG_SRC to
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

#define CHECK_LEG_MARK "connect4 adds 0x1000 to the SO_MARK of ztunnel's spoofed leg"
#define CHECK_LEG_APP  "ztunnel's spoofed leg reaches the app (not 15006), the app's socket has mark 0x1000"
#define LEG_MARK_WANT  (AMBPF_ZTUNNEL_MARK | AMBPF_MARK_ORIG_SRC)

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
static int leg_connect(int fd, struct sockaddr_in *src)
{
	unsigned int mark = AMBPF_ZTUNNEL_MARK;
	socklen_t len = sizeof(*src);
	struct sockaddr_in app;
	int one = 1;

	sock_addr4(src, FILL_LEG_CLIENT_IP, 0);
	sock_addr4(&app, FILL_POD_IP, FILL_APP_PORT);
	if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) ||
	    setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one)) ||
	    bind(fd, (struct sockaddr *)src, sizeof(*src)) || getsockname(fd, (struct sockaddr *)src, &len))
		return -1;
	if (connect(fd, (struct sockaddr *)&app, sizeof(app)) == 0 || errno == EINPROGRESS)
		return 0;
	return -1;
}

/* The app's accepted socket: from the client's address and port, to the pod's IP, with the mark. */
static int leg_accepted(const struct func_ctx *c, int afd, const struct sockaddr_in *client, long long passed)
{
	struct sockaddr_in peer, local, want;
	socklen_t plen = sizeof(peer), llen = sizeof(local);
	unsigned int mark = mark_of(afd);
	char a[64], b[64];

	sock_addr4(&want, FILL_POD_IP, FILL_APP_PORT);
	memset(&peer, 0, sizeof(peer));
	memset(&local, 0, sizeof(local));
	if (getpeername(afd, (struct sockaddr *)&peer, &plen) || getsockname(afd, (struct sockaddr *)&local, &llen) ||
	    !sock_same(&peer, client) || !sock_same(&local, &want)) {
		report(c->label, CHECK_LEG_APP, "func", "fail", "the app accepted %s -> %s, want %s -> %s",
		       sock_fmt(&peer, a, sizeof(a)), sock_fmt(&local, b, sizeof(b)), sock_fmt(client, a, sizeof(a)),
		       sock_fmt(&want, b, sizeof(b)));
		return 1;
	}
	if (!(mark & AMBPF_MARK_ORIG_SRC) || passed <= 0) {
		report(c->label, CHECK_LEG_APP, "func", "fail",
		       "the app's socket has mark %#x (want 0x1000 in it), sk_lookup passed %lld leg(s) as ztunnel's",
		       mark, passed);
		return 1;
	}
	report(c->label, CHECK_LEG_APP, "func", "ok", "%s -> %s, app's mark %#x (sk_lookup passed %lld as ztunnel's)",
	       sock_fmt(client, a, sizeof(a)), sock_fmt(&want, b, sizeof(b)), mark, passed);
	return 0;
}

int inpod_leg_checks(const struct func_ctx *c, int inbound_fd)
{
	long long marked = fill_stat(c->maps, c->nmaps, AMBPF_STAT_ORIG_SRC_MARKED);
	long long passed = fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_PASS_ZTUNNEL);
	int lfd = sock_listen("0.0.0.0", FILL_APP_PORT), fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in client;
	unsigned int mark;
	int afd, failures = 0;
	char a[64];

	if (lfd < 0 || fd < 0 || leg_connect(fd, &client)) {
		report(c->label, CHECK_LEG_MARK, "func", "fail", "the app's listener or the leg from %s: %s",
		       FILL_LEG_CLIENT_IP, strerror(errno));
		report(c->label, CHECK_LEG_APP, "func", "fail", "no leg");
		failures = 2;
		goto out;
	}
	/* bpf_setsockopt ran inside connect(): the mark is there before the handshake is done. */
	mark = mark_of(fd);
	marked = fill_stat(c->maps, c->nmaps, AMBPF_STAT_ORIG_SRC_MARKED) - marked;
	if ((mark & LEG_MARK_WANT) == LEG_MARK_WANT && marked > 0) {
		report(c->label, CHECK_LEG_MARK, "func", "ok", "%s -> %s:%d has mark %#x",
		       sock_fmt(&client, a, sizeof(a)), FILL_POD_IP, FILL_APP_PORT, mark);
	} else {
		report(c->label, CHECK_LEG_MARK, "func", "fail", "the leg's mark is %#x (want %#x in it), marked %lld",
		       mark, LEG_MARK_WANT, marked);
		failures++;
	}
	if (!c->has_sk_lookup) {
		report(c->label, CHECK_LEG_APP, "func", "fail",
		       "ambpf_inpod_lookup is not attached (see its load/attach row)");
		failures++;
		goto out;
	}
	if ((afd = sock_accept_within(lfd)) < 0) {
		report(c->label, CHECK_LEG_APP, "func", "fail", "the app on %s:%d accepted nothing (%s): %s",
		       FILL_POD_IP, FILL_APP_PORT, strerror(errno), landed_elsewhere(inbound_fd));
		failures++;
		goto out;
	}
	failures +=
		leg_accepted(c, afd, &client, fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_PASS_ZTUNNEL) - passed);
	close(afd);
out:
	if (fd >= 0)
		close(fd);
	if (lfd >= 0)
		close(lfd);
	return failures;
}

/* A kept destination in the inpod topology (bpf/ambpf_inpod.bpf.c, inpod_keep_dst): with
 * AMBPF_POD_LOCAL_ROUTE on the pod's netns, connect4 leaves the destination as the app asked, binds the
 * socket to the pod's address and adds mark 0x1000; check.sh's rule and table 41919 (the loader's
 * return path, src/bpf/return-path.ts) deliver the SYN on lo, where sk_lookup hands it to ztunnel's
 * IP_TRANSPARENT 15001. The accepted socket's own address is then the original, and getsockopt answers
 * SO_ORIGINAL_DST from it. Without ztunnel's 15001 the SYN is refused (SK_DROP) and gets no reset (the
 * reset, from the original destination, has no route): the connect stays pending, retransmits its SYN,
 * and completes once a 15001 is registered again, never anywhere else.
 * sk_lookup knows lo by ingress_ifindex, which exists from 5.17 on: before, the loader never sets the
 * flag (src/bpf/datapath-inpod.ts keepDstFor), and both checks report "na" (src/kernels/verdict.ts
 * holds that known answer). Runs last of the inpod checks: the flag stays set. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>
#include "ambpf.h"
#include "fill.h"
#include "inpod.h"
#include "report.h"
#include "sockets.h"

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif
#define SO_ORIGINAL_DST 80

#define CHECK_KEEP "a kept destination reaches ztunnel's 15001 over lo, SO_ORIGINAL_DST from its own address"
#define CHECK_KEEP_CLOSED \
	"a kept destination without ztunnel's 15001: no reset, its SYN retransmitted reaches ztunnel once back"
/* ztunnel's transparent 15001 stand-in: any port, since sk_lookup assigns by the map, not the port. */
#define KEEP_LISTEN_PORT 15101

/* sk_lookup's ingress_ifindex: Linux 5.17 (docs/kernel-facts.md). */
static bool kernel_has_ingress_ifindex(void)
{
	struct utsname u;
	int major = 0, minor = 0;

	if (uname(&u) || sscanf(u.release, "%d.%d", &major, &minor) != 2)
		return false;
	return major > 5 || (major == 5 && minor >= 17);
}

static int transparent_listener(void)
{
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0), saved;
	struct sockaddr_in sin;

	if (fd < 0)
		return -1;
	sock_addr4(&sin, FILL_INPOD_ZT_IP, KEEP_LISTEN_PORT);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one)) ||
	    bind(fd, (struct sockaddr *)&sin, sizeof(sin)) || listen(fd, 16)) {
		saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/* The accepted socket: its own address the original, its peer the pod's address; the client's peer is
 * the original too (nothing was rewritten), and SO_ORIGINAL_DST answers the original. */
static int keep_accepted(const struct func_ctx *c, int cfd, int afd, const struct sockaddr_in *orig, long long kept,
			 long long steered)
{
	struct sockaddr_in local = {0}, peer = {0}, cpeer = {0}, od = {0};
	socklen_t l1 = sizeof(local), l2 = sizeof(peer), l3 = sizeof(cpeer), l4 = sizeof(od);
	char a[64], b[64], d[64], e[64], w[64];
	int od_ok, od_err;

	getsockname(afd, (struct sockaddr *)&local, &l1);
	getpeername(afd, (struct sockaddr *)&peer, &l2);
	getpeername(cfd, (struct sockaddr *)&cpeer, &l3);
	od_ok = getsockopt(afd, SOL_IP, SO_ORIGINAL_DST, &od, &l4) == 0;
	od_err = od_ok ? 0 : errno;
	sock_fmt(&peer, b, sizeof(b));
	if (!sock_same(&local, orig) || !sock_same(&cpeer, orig) || !od_ok || !sock_same(&od, orig) ||
	    strncmp(b, FILL_POD_IP ":", strlen(FILL_POD_IP ":")) != 0 || kept <= 0 || steered <= 0) {
		report(c->label, CHECK_KEEP, "func", "fail",
		       "accepted at %s from %s, client's peer %s, SO_ORIGINAL_DST %s (%s); want %s from %s; kept %lld, "
		       "sk_lookup outbound %lld",
		       sock_fmt(&local, a, sizeof(a)), b, sock_fmt(&cpeer, d, sizeof(d)), sock_fmt(&od, e, sizeof(e)),
		       od_ok ? "no error" : strerror(od_err), sock_fmt(orig, w, sizeof(w)), FILL_POD_IP, kept, steered);
		return 1;
	}
	report(c->label, CHECK_KEEP, "func", "ok",
	       "%s from %s, SO_ORIGINAL_DST %s (kept %lld, sk_lookup outbound %lld)", sock_fmt(&local, a, sizeof(a)), b,
	       sock_fmt(&od, d, sizeof(d)), kept, steered);
	return 0;
}

/* A non-blocking connect to `orig`, started; -1 with errno set when it could not be. */
static int keep_start(const struct sockaddr_in *orig)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), saved;

	if (fd < 0)
		return -1;
	if (connect(fd, (const struct sockaddr *)orig, sizeof(*orig)) && errno != EINPROGRESS) {
		saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

/* Waits up to `ms` for a connect to end: 1 connected, 0 still pending, -1 failed (*err: why). */
static int keep_wait(int fd, int ms, int *err)
{
	struct pollfd p = {.fd = fd, .events = POLLOUT};
	socklen_t len = sizeof(*err);

	int n = poll(&p, 1, ms);

	*err = 0;
	if (n == 0)
		return 0;
	if (n < 0) {
		*err = errno;
		return -1;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, err, &len))
		*err = errno;
	return *err == 0 ? 1 : -1;
}

/* ztunnel's 15001 closed (its entry leaves the sockhash): a new kept connection gets no reset and is
 * refused at least twice (its first SYN and the retransmit a second later), reaches nothing else (not
 * the listener on the destination's port, `app_fd`), and completes once a new 15001 is registered. */
static int keep_without_ztunnel(const struct func_ctx *c, const struct sockaddr_in *orig, int app_fd)
{
	long long refused = fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_REFUSED);
	struct pollfd p = {.fd = app_fd, .events = POLLIN};
	int fd = keep_start(orig), zt = -1, afd = -1, err = 0, state = -1, failures = 1;
	char msg[256] = "";

	if (fd < 0) {
		report(c->label, CHECK_KEEP_CLOSED, "func", "fail", "connect: %s", strerror(errno));
		return 1;
	}
	/* The first SYN, and its retransmit at the initial RTO (1 s). */
	state = keep_wait(fd, 2500, &err);
	refused = fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_REFUSED) - refused;
	if (state != 0 || refused < 2 || poll(&p, 1, 0) == 1) {
		report(c->label, CHECK_KEEP_CLOSED, "func", "fail",
		       "after 2.5 s: %s, sk_lookup refused %lld (want pending, >= 2)%s",
		       state > 0   ? "connected"
		       : state < 0 ? strerror(err)
				   : "pending",
		       refused, poll(&p, 1, 0) == 1 ? ", and it reached the listener on the destination's port" : "");
		goto out;
	}
	/* ztunnel back: the next retransmit (3 s after the first SYN) reaches it. */
	if ((zt = transparent_listener()) < 0 ||
	    fill_inpod_keep(c->maps, c->nmaps, c->netns_cookie, zt, msg, sizeof(msg))) {
		report(c->label, CHECK_KEEP_CLOSED, "func", "fail", "a new 15001: %s", zt < 0 ? strerror(errno) : msg);
		goto out;
	}
	state = keep_wait(fd, 4000, &err);
	if (state != 1 || (afd = sock_accept_within(zt)) < 0) {
		report(c->label, CHECK_KEEP_CLOSED, "func", "fail", "with ztunnel back: %s",
		       state == 1  ? "connected, but nothing to accept"
		       : state < 0 ? strerror(err)
				   : "still pending");
		goto out;
	}
	report(c->label, CHECK_KEEP_CLOSED, "func", "ok",
	       "pending with no reset, refused %lld times in 2.5 s; accepted by the new 15001 once registered",
	       refused);
	failures = 0;
out:
	if (afd >= 0)
		close(afd);
	if (zt >= 0)
		close(zt);
	close(fd);
	return failures;
}

int inpod_keep_checks(const struct func_ctx *c)
{
	long long kept = fill_stat(c->maps, c->nmaps, AMBPF_STAT_INPOD_KEPT_DST);
	long long steered = fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_OUTBOUND);
	int zt = -1, app = -1, cfd = -1, afd = -1, err = 0, failures = 0, saved;
	struct sockaddr_in orig;
	char msg[256], a[64];

	if (!kernel_has_ingress_ifindex()) {
		report(c->label, CHECK_KEEP, "func", "na",
		       "sk_lookup has no ingress_ifindex before 5.17: the loader never keeps a destination (record "
		       "path)");
		report(c->label, CHECK_KEEP_CLOSED, "func", "na", "no kept destinations before 5.17");
		return 0;
	}
	sock_addr4(&orig, FILL_ORIG_DST_IP, FILL_ORIG_DST_PORT);
	zt = transparent_listener();
	saved = errno;
	app = sock_listen("0.0.0.0", FILL_ORIG_DST_PORT);
	if (zt < 0 || app < 0 || fill_inpod_keep(c->maps, c->nmaps, c->netns_cookie, zt, msg, sizeof(msg))) {
		report(c->label, CHECK_KEEP, "func", "fail", "setup: %s",
		       zt < 0	 ? strerror(saved)
		       : app < 0 ? "the listener on the destination's port"
				 : msg);
		report(c->label, CHECK_KEEP_CLOSED, "func", "fail", "no setup");
		failures = 2;
		goto out;
	}
	if (!c->has_sk_lookup) {
		report(c->label, CHECK_KEEP, "func", "fail",
		       "ambpf_inpod_lookup is not attached (see its load/attach row)");
		report(c->label, CHECK_KEEP_CLOSED, "func", "fail", "ambpf_inpod_lookup is not attached");
		failures = 2;
		goto out;
	}
	cfd = keep_start(&orig);
	if (cfd < 0 || keep_wait(cfd, 3000, &err) != 1 || (afd = sock_accept_within(zt)) < 0) {
		saved = cfd < 0 ? errno : err ? err : ETIMEDOUT;
		report(c->label, CHECK_KEEP, "func", "fail", "connect to %s: %s (kept %lld)",
		       sock_fmt(&orig, a, sizeof(a)), strerror(saved),
		       fill_stat(c->maps, c->nmaps, AMBPF_STAT_INPOD_KEPT_DST) - kept);
		failures = 1;
	} else {
		failures = keep_accepted(c, cfd, afd, &orig,
					 fill_stat(c->maps, c->nmaps, AMBPF_STAT_INPOD_KEPT_DST) - kept,
					 fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_OUTBOUND) - steered);
	}
	close(zt);
	zt = -1;
	failures += keep_without_ztunnel(c, &orig, app);
out:
	if (afd >= 0)
		close(afd);
	if (cfd >= 0)
		close(cfd);
	if (app >= 0)
		close(app);
	if (zt >= 0)
		close(zt);
	return failures;
}

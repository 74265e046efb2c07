/* A kept destination in the inpod topology (bpf/ambpf_inpod.bpf.c, inpod_keep_dst): with
 * AMBPF_POD_LOCAL_ROUTE on the pod's netns, connect4 leaves the destination as the app asked, binds the
 * socket to the pod's address and adds mark 0x1000; check.sh's rule and table 41919 (the loader's
 * return path, src/bpf/return-path.ts) deliver the SYN on lo, where sk_lookup hands it to ztunnel's
 * IP_TRANSPARENT 15001. The accepted socket's own address is then the original, and getsockopt answers
 * SO_ORIGINAL_DST from it. sk_lookup knows lo by ingress_ifindex, which exists from 5.17 on: before,
 * the loader never sets the flag (src/bpf/datapath-inpod.ts keepDstFor). On every kernel, a kept SYN
 * that finds no ztunnel 15001 (gone, or a kernel before 5.17 were the flag set) must fail closed: it
 * connects nowhere, in particular not to a listener that holds the destination's port. sk_lookup's
 * SK_DROP makes the kernel answer with a reset from the original destination, which no route of the
 * kernel's own reply path takes as a local source: the SYN goes unanswered and the client retransmits
 * (into a ztunnel that came back meanwhile, or until its connect times out). Runs last of the inpod
 * checks: the flag stays set. */
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

#define CHECK_KEEP	  "a kept destination reaches ztunnel's 15001 over lo, SO_ORIGINAL_DST from its own address"
#define CHECK_KEEP_CLOSED "a kept destination without ztunnel's 15001 connects nowhere"
/* ztunnel's transparent 15001 stand-in: any port, since sk_lookup assigns by the map, not the port. */
#define KEEP_LISTEN_PORT  15101

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
	char a[64], b[64], d[64], e[64];
	int od_ok;

	getsockname(afd, (struct sockaddr *)&local, &l1);
	getpeername(afd, (struct sockaddr *)&peer, &l2);
	getpeername(cfd, (struct sockaddr *)&cpeer, &l3);
	od_ok = getsockopt(afd, SOL_IP, SO_ORIGINAL_DST, &od, &l4) == 0;
	sock_fmt(&peer, b, sizeof(b));
	if (!sock_same(&local, orig) || !sock_same(&cpeer, orig) || !od_ok || !sock_same(&od, orig) ||
	    strncmp(b, FILL_POD_IP ":", strlen(FILL_POD_IP ":")) != 0 || kept <= 0 || steered <= 0) {
		report(c->label, CHECK_KEEP, "func", "fail",
		       "accepted at %s from %s, client's peer %s, SO_ORIGINAL_DST %s (%s); want %s from %s; kept %lld, "
		       "sk_lookup outbound %lld",
		       sock_fmt(&local, a, sizeof(a)), b, sock_fmt(&cpeer, d, sizeof(d)), sock_fmt(&od, e, sizeof(e)),
		       od_ok ? "no error" : strerror(errno), sock_fmt(orig, a, sizeof(a)), FILL_POD_IP, kept, steered);
		return 1;
	}
	report(c->label, CHECK_KEEP, "func", "ok",
	       "%s from %s, SO_ORIGINAL_DST %s (kept %lld, sk_lookup outbound %lld)", sock_fmt(&local, a, sizeof(a)), b,
	       sock_fmt(&od, d, sizeof(d)), kept, steered);
	return 0;
}

/* A non-blocking connect to `orig` and whether it completed within `ms`; the socket in *fd. */
static bool keep_connect(const struct sockaddr_in *orig, int ms, int *fd, int *err)
{
	struct pollfd p = {.events = POLLOUT};
	socklen_t len = sizeof(*err);

	*err = 0;
	p.fd = *fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (*fd < 0) {
		*err = errno;
		return false;
	}
	if (connect(*fd, (const struct sockaddr *)orig, sizeof(*orig)) && errno != EINPROGRESS) {
		*err = errno;
		return false;
	}
	if (poll(&p, 1, ms) != 1) {
		*err = ETIMEDOUT;
		return false;
	}
	getsockopt(*fd, SOL_SOCKET, SO_ERROR, err, &len);
	return *err == 0;
}

/* No ztunnel 15001 for a kept connection (`why`): it connects nowhere within a second, and nothing
 * reached the listener on the destination's port (`app_fd`). 1 when it failed. */
static int keep_fails_closed(const struct func_ctx *c, const char *name, const char *why,
			     const struct sockaddr_in *orig, int app_fd)
{
	long long refused = fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_REFUSED);
	struct pollfd p = {.fd = app_fd, .events = POLLIN};
	int fd, err;
	bool connected = keep_connect(orig, 1000, &fd, &err), reached = poll(&p, 1, 0) == 1;

	refused = fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_REFUSED) - refused;
	if (fd >= 0)
		close(fd);
	if (!connected && !reached && refused > 0) {
		report(c->label, name, "func", "ok", "%s: no connection (%s), sk_lookup refused %lld", why,
		       strerror(err), refused);
		return 0;
	}
	report(c->label, name, "func", "fail", "%s: %s%s, sk_lookup refused %lld", why,
	       connected ? "it connected" : strerror(err),
	       reached ? ", and reached the listener on the destination's port" : "", refused);
	return 1;
}

int inpod_keep_checks(const struct func_ctx *c)
{
	long long kept = fill_stat(c->maps, c->nmaps, AMBPF_STAT_INPOD_KEPT_DST);
	long long steered = fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_OUTBOUND);
	int zt = transparent_listener(), app = sock_listen("0.0.0.0", FILL_ORIG_DST_PORT);
	int cfd = -1, afd, err, failures = 0;
	struct sockaddr_in orig;
	char msg[256];

	sock_addr4(&orig, FILL_ORIG_DST_IP, FILL_ORIG_DST_PORT);
	if (zt < 0 || app < 0 || fill_inpod_keep(c->maps, c->nmaps, c->netns_cookie, zt, msg, sizeof(msg))) {
		report(c->label, CHECK_KEEP, "func", "fail", "setup: %s", zt < 0 || app < 0 ? strerror(errno) : msg);
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
	if (!kernel_has_ingress_ifindex()) {
		/* The loader never sets the flag here; were it set, sk_lookup cannot tell lo and refuses. */
		failures = keep_fails_closed(c, CHECK_KEEP, "before 5.17 (no ingress_ifindex) it fails closed", &orig,
					     app);
		close(zt);
		zt = -1;
		failures += keep_fails_closed(c, CHECK_KEEP_CLOSED, "ztunnel's 15001 gone", &orig, app);
		goto out;
	}
	if (!keep_connect(&orig, 3000, &cfd, &err) || (afd = sock_accept_within(zt)) < 0) {
		report(c->label, CHECK_KEEP, "func", "fail", "connect to %s: %s (kept %lld)",
		       sock_fmt(&orig, msg, sizeof(msg)), strerror(err ? err : errno),
		       fill_stat(c->maps, c->nmaps, AMBPF_STAT_INPOD_KEPT_DST) - kept);
		failures = 1;
	} else {
		failures = keep_accepted(c, cfd, afd, &orig,
					 fill_stat(c->maps, c->nmaps, AMBPF_STAT_INPOD_KEPT_DST) - kept,
					 fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_OUTBOUND) - steered);
		close(afd);
	}
	/* ztunnel gone: its listener leaves the sockhash when closed. */
	close(zt);
	zt = -1;
	failures += keep_fails_closed(c, CHECK_KEEP_CLOSED, "ztunnel's 15001 gone", &orig, app);
out:
	if (cfd >= 0)
		close(cfd);
	if (app >= 0)
		close(app);
	if (zt >= 0)
		close(zt);
	return failures;
}

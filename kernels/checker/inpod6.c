/* The inpod topology over native IPv6 (bpf/ambpf_inpod.bpf.c): a pod's IPv6 connect lands on ztunnel's
 * 15001 at the pod's own IPv6 address, and inbound IPv6 is assigned to ztunnel's 15006 by sk_lookup.
 * ztunnel's IPv6 listeners here are IPV6_V6ONLY (the IPv4 checks hold the IPv4 ports). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "ambpf.h"
#include "fill.h"
#include "inpod.h"
#include "report.h"
#include "sockets.h"

#define SO_ORIGINAL_DST 80 /* IP6T_SO_ORIGINAL_DST has the same number */
#define CHECK_OUT6 \
	"connect6 native IPv6: lands on [pod IPv6]:15001, getpeername and IP6T_SO_ORIGINAL_DST give the original"
#define CHECK_IN6     "sk_lookup assigns IPv6 to the 15006 listener"
#define CHECK_CLOSED6 "IP6T_SO_ORIGINAL_DST after the native IPv6 client closed"

/* The accepted socket comes from the pod's IPv6 address (ztunnel sees the pod as source), the client
 * sees its original peer, SOL_IP has no answer and SOL_IPV6 has the original (ztunnel asks both, in
 * that order). */
static int check_out6(const struct func_ctx *c, int lfd)
{
	struct sockaddr_in6 orig, pod, got, peer;
	socklen_t len = sizeof(got);
	char a[80], b[80];
	unsigned char v4[16];
	socklen_t len4 = sizeof(v4);
	int cfd = socket(AF_INET6, SOCK_STREAM, 0), afd, v4_answered;

	sock_addr6(&orig, FILL_ORIG_DST_IP6, FILL_ORIG_DST_PORT);
	sock_addr6(&pod, FILL_POD_IP6, 0);
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&orig, sizeof(orig)) < 0 ||
	    (afd = sock_accept_within(lfd)) < 0) {
		report(c->label, CHECK_OUT6, "func", "fail", "connect to %s did not reach [::]:%d: %s",
		       sock_fmt6(&orig, a, sizeof(a)), AMBPF_PORT_OUTBOUND, strerror(errno));
		if (cfd >= 0)
			close(cfd);
		return 1;
	}
	memset(&peer, 0, sizeof(peer));
	if (getpeername(afd, (struct sockaddr *)&peer, &len) ||
	    memcmp(&peer.sin6_addr, &pod.sin6_addr, sizeof(pod.sin6_addr))) {
		report(c->label, CHECK_OUT6, "func", "fail", "ztunnel's side sees %s as source, want %s",
		       sock_fmt6(&peer, a, sizeof(a)), FILL_POD_IP6);
		goto fail;
	}
	memset(&got, 0, sizeof(got));
	len = sizeof(got);
	if (getpeername(cfd, (struct sockaddr *)&got, &len) || !sock_same6(&got, &orig)) {
		report(c->label, CHECK_OUT6, "func", "fail", "getpeername gave %s, want %s",
		       sock_fmt6(&got, a, sizeof(a)), sock_fmt6(&orig, b, sizeof(b)));
		goto fail;
	}
	v4_answered = getsockopt(afd, SOL_IP, SO_ORIGINAL_DST, v4, &len4) == 0;
	memset(&got, 0, sizeof(got));
	len = sizeof(got);
	if (v4_answered || getsockopt(afd, SOL_IPV6, SO_ORIGINAL_DST, &got, &len) || !sock_same6(&got, &orig)) {
		report(c->label, CHECK_OUT6, "func", "fail", "SOL_IP %s; IP6T_SO_ORIGINAL_DST gave %s, want %s",
		       v4_answered ? "answered (want no answer)" : "no answer", sock_fmt6(&got, a, sizeof(a)),
		       sock_fmt6(&orig, b, sizeof(b)));
		goto fail;
	}
	report(c->label, CHECK_OUT6, "func", "ok", "%s from [%s] (redirected %lld)", sock_fmt6(&orig, a, sizeof(a)),
	       FILL_POD_IP6, fill_stat(c->maps, c->nmaps, AMBPF_STAT_CONNECT6_REDIRECTED));
	close(afd);
	close(cfd);
	return 0;
fail:
	close(afd);
	close(cfd);
	return 1;
}

/* The client's FIN was acked (FIN_WAIT2): closed now, it becomes a TIME_WAIT sock at once, without
 * its storage, as a client long gone by ztunnel's accept. Waits up to 3 s. */
static bool fin_acked_within(int fd)
{
	struct tcp_info ti;
	socklen_t len;

	for (int i = 0; i < 300; i++) {
		len = sizeof(ti);
		if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_state == TCP_FIN_WAIT2)
			return true;
		usleep(10 * 1000);
	}
	errno = ETIMEDOUT;
	return false;
}

/* A fire-and-forget IPv6 client (connect, write, close) is gone before ztunnel accepts: its close()
 * left the original in ambpf_inpod_closed (ambpf_inpod_release, which takes the IPv6 client's source
 * from its destination, the pod's own IPv6), and IP6T_SO_ORIGINAL_DST must still answer. */
static int check_orig_after_close6(const struct func_ctx *c, int lfd)
{
	long long before = fill_stat(c->maps, c->nmaps, AMBPF_STAT_INPOD_CLOSED_EARLY);
	struct sockaddr_in6 orig, got;
	socklen_t len = sizeof(got);
	char a[80], b[80];
	int cfd = socket(AF_INET6, SOCK_STREAM, 0), afd, ok;

	sock_addr6(&orig, FILL_ORIG_DST_IP6, FILL_ORIG_DST_PORT);
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&orig, sizeof(orig)) < 0 || write(cfd, "x", 1) != 1 ||
	    shutdown(cfd, SHUT_WR) || !fin_acked_within(cfd)) {
		report(c->label, CHECK_CLOSED6, "func", "fail", "client: %s", strerror(errno));
		if (cfd >= 0)
			close(cfd);
		return 1;
	}
	close(cfd);
	if ((afd = sock_accept_within(lfd)) < 0) {
		report(c->label, CHECK_CLOSED6, "func", "fail", "nothing to accept: %s", strerror(errno));
		return 1;
	}
	memset(&got, 0, sizeof(got));
	ok = getsockopt(afd, SOL_IPV6, SO_ORIGINAL_DST, &got, &len) == 0 && sock_same6(&got, &orig);
	close(afd);
	if (!ok) {
		report(c->label, CHECK_CLOSED6, "func", "fail",
		       "IP6T_SO_ORIGINAL_DST gave %s (%s), want %s (kept %lld)", sock_fmt6(&got, a, sizeof(a)),
		       strerror(errno), sock_fmt6(&orig, b, sizeof(b)),
		       fill_stat(c->maps, c->nmaps, AMBPF_STAT_INPOD_CLOSED_EARLY) - before);
		return 1;
	}
	report(c->label, CHECK_CLOSED6, "func", "ok", "%s (kept %lld on close)", sock_fmt6(&got, a, sizeof(a)),
	       fill_stat(c->maps, c->nmaps, AMBPF_STAT_INPOD_CLOSED_EARLY) - before);
	return 0;
}

int inpod6_checks(const struct func_ctx *c)
{
	int out = sock_listen6("::", AMBPF_PORT_OUTBOUND), in = sock_listen6("::1", AMBPF_PORT_INBOUND), failures = 0;
	char err[256];

	if (out < 0 || in < 0) {
		report(c->label, CHECK_OUT6, "func", "fail", "ztunnel's IPv6 listeners: %s", strerror(errno));
		failures = 1;
		goto out;
	}
	if (fill_inpod6(c->maps, c->nmaps, c->netns_cookie, in, err, sizeof(err))) {
		report(c->label, CHECK_OUT6, "func", "fail", "filling maps: %s", err);
		failures = 1;
		goto out;
	}
	failures += check_out6(c, out);
	failures += check_orig_after_close6(c, out);
	failures += inpod_leg_checks(c, in, AF_INET6);
	if (c->has_sk_lookup) {
		failures += check_sk_lookup6(c, CHECK_IN6, 80, in, false);
	} else {
		report(c->label, CHECK_IN6, "func", "fail",
		       "ambpf_inpod_lookup is not attached (see its load/attach row)");
		failures++;
	}
out:
	if (out >= 0)
		close(out);
	if (in >= 0)
		close(in);
	return failures;
}

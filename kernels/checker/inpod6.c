/* The inpod topology over native IPv6 (bpf/ambpf_inpod.bpf.c): a pod's IPv6 connect lands on ztunnel's
 * 15001 at the pod's own IPv6 address, and inbound IPv6 is assigned to ztunnel's 15006 by sk_lookup.
 * ztunnel's IPv6 listeners here are IPV6_V6ONLY (the IPv4 checks hold the IPv4 ports). */
#include <arpa/inet.h>
#include <errno.h>
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
#define CHECK_IN6 "sk_lookup assigns IPv6 to the 15006 listener"

static void addr6(struct sockaddr_in6 *sin6, const char *ip, int port)
{
	memset(sin6, 0, sizeof(*sin6));
	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons((unsigned short)port);
	inet_pton(AF_INET6, ip, &sin6->sin6_addr);
}

static const char *fmt6(const struct sockaddr_in6 *sin6, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];

	inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
	snprintf(buf, len, "[%s]:%d", ip, ntohs(sin6->sin6_port));
	return buf;
}

static int same6(const struct sockaddr_in6 *a, const struct sockaddr_in6 *b)
{
	return a->sin6_family == AF_INET6 && !memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)) &&
	       a->sin6_port == b->sin6_port;
}

static int listen6(const char *ip, int port)
{
	struct sockaddr_in6 sin6;
	int one = 1, saved, fd = socket(AF_INET6, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	addr6(&sin6, ip, port);
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

	addr6(&orig, FILL_ORIG_DST_IP6, FILL_ORIG_DST_PORT);
	addr6(&pod, FILL_POD_IP6, 0);
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&orig, sizeof(orig)) < 0 ||
	    (afd = sock_accept_within(lfd)) < 0) {
		report(c->label, CHECK_OUT6, "func", "fail", "connect to %s did not reach [::]:%d: %s",
		       fmt6(&orig, a, sizeof(a)), AMBPF_PORT_OUTBOUND, strerror(errno));
		if (cfd >= 0)
			close(cfd);
		return 1;
	}
	memset(&peer, 0, sizeof(peer));
	if (getpeername(afd, (struct sockaddr *)&peer, &len) ||
	    memcmp(&peer.sin6_addr, &pod.sin6_addr, sizeof(pod.sin6_addr))) {
		report(c->label, CHECK_OUT6, "func", "fail", "ztunnel's side sees %s as source, want %s",
		       fmt6(&peer, a, sizeof(a)), FILL_POD_IP6);
		goto fail;
	}
	memset(&got, 0, sizeof(got));
	len = sizeof(got);
	if (getpeername(cfd, (struct sockaddr *)&got, &len) || !same6(&got, &orig)) {
		report(c->label, CHECK_OUT6, "func", "fail", "getpeername gave %s, want %s", fmt6(&got, a, sizeof(a)),
		       fmt6(&orig, b, sizeof(b)));
		goto fail;
	}
	v4_answered = getsockopt(afd, SOL_IP, SO_ORIGINAL_DST, v4, &len4) == 0;
	memset(&got, 0, sizeof(got));
	len = sizeof(got);
	if (v4_answered || getsockopt(afd, SOL_IPV6, SO_ORIGINAL_DST, &got, &len) || !same6(&got, &orig)) {
		report(c->label, CHECK_OUT6, "func", "fail", "SOL_IP %s; IP6T_SO_ORIGINAL_DST gave %s, want %s",
		       v4_answered ? "answered (want no answer)" : "no answer", fmt6(&got, a, sizeof(a)),
		       fmt6(&orig, b, sizeof(b)));
		goto fail;
	}
	report(c->label, CHECK_OUT6, "func", "ok", "%s from [%s] (redirected %lld)", fmt6(&orig, a, sizeof(a)),
	       FILL_POD_IP6, fill_stat(c->maps, c->nmaps, AMBPF_STAT_CONNECT6_REDIRECTED));
	close(afd);
	close(cfd);
	return 0;
fail:
	close(afd);
	close(cfd);
	return 1;
}

/* From another local IPv6 address to the pod's, port 80, where nobody listens: only sk_lookup can put
 * it on the 15006 listener, with the original destination as local address. */
static int check_in6(const struct func_ctx *c, int lfd)
{
	struct sockaddr_in6 dst, src, got;
	socklen_t len = sizeof(got);
	char a[80], b[80];
	int cfd = socket(AF_INET6, SOCK_STREAM, 0), afd;

	addr6(&dst, FILL_POD_IP6, 80);
	addr6(&src, FILL_LOCAL_IP6, 0);
	if (cfd < 0 || bind(cfd, (struct sockaddr *)&src, sizeof(src)) ||
	    connect(cfd, (struct sockaddr *)&dst, sizeof(dst)) < 0 || (afd = sock_accept_within(lfd)) < 0) {
		report(c->label, CHECK_IN6, "func", "fail", "connect to %s not assigned: %s", fmt6(&dst, a, sizeof(a)),
		       strerror(errno));
		if (cfd >= 0)
			close(cfd);
		return 1;
	}
	memset(&got, 0, sizeof(got));
	if (getsockname(afd, (struct sockaddr *)&got, &len) || !same6(&got, &dst)) {
		report(c->label, CHECK_IN6, "func", "fail", "accepted with local address %s, want %s",
		       fmt6(&got, a, sizeof(a)), fmt6(&dst, b, sizeof(b)));
		close(afd);
		close(cfd);
		return 1;
	}
	report(c->label, CHECK_IN6, "func", "ok", "accepted with local address %s (assigned %lld)",
	       fmt6(&got, a, sizeof(a)), fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_ASSIGNED));
	close(afd);
	close(cfd);
	return 0;
}

int inpod6_checks(const struct func_ctx *c)
{
	int out = listen6("::", AMBPF_PORT_OUTBOUND), in = listen6("::1", AMBPF_PORT_INBOUND), failures = 0;
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
	if (c->has_sk_lookup) {
		failures += check_in6(c, in);
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

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "ambpf.h"
#include "checks.h"
#include "fill.h"
#include "report.h"
#include "sockets.h"

#define SO_ORIGINAL_DST 80

static void report_got(const struct func_ctx *c, const char *name, int ok, const struct sockaddr_in *got,
		       const struct sockaddr_in *want)
{
	char a[64], b[64];

	if (ok && sock_same(got, want))
		report(c->label, name, "func", "ok", "%s", sock_fmt(got, a, sizeof(a)));
	else
		report(c->label, name, "func", "fail", "got %s (%s), want %s", sock_fmt(got, a, sizeof(a)),
		       ok ? "no error" : strerror(errno), sock_fmt(want, b, sizeof(b)));
}

int check_outbound(const struct func_ctx *c, int lfd, const char *listen_ip)
{
	struct sockaddr_in orig, got;
	socklen_t len = sizeof(got);
	char a[64];
	int ok, failures, cfd, afd;

	sock_addr4(&orig, FILL_ORIG_DST_IP, FILL_ORIG_DST_PORT);
	cfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || cfd < 0) {
		report(c->label, "connect lands on 15001", "func", "fail", "test sockets: %s", strerror(errno));
		if (cfd >= 0)
			close(cfd);
		return 1;
	}
	if (connect(cfd, (struct sockaddr *)&orig, sizeof(orig)) < 0 || (afd = sock_accept_within(lfd)) < 0) {
		report(c->label, "connect lands on 15001", "func", "fail", "connect to %s did not reach %s:%d: %s",
		       sock_fmt(&orig, a, sizeof(a)), listen_ip, AMBPF_PORT_OUTBOUND, strerror(errno));
		report(c->label, "getpeername gives the original", "func", "fail", "no connection");
		report(c->label, "SO_ORIGINAL_DST gives the original", "func", "fail", "no connection");
		close(cfd);
		return 3;
	}
	report(c->label, "connect lands on 15001", "func", "ok", "%s -> %s:%d (redirected %lld)",
	       sock_fmt(&orig, a, sizeof(a)), listen_ip, AMBPF_PORT_OUTBOUND,
	       fill_stat(c->maps, c->nmaps, AMBPF_STAT_CONNECT4_REDIRECTED));

	memset(&got, 0, sizeof(got));
	ok = getpeername(cfd, (struct sockaddr *)&got, &len) == 0;
	report_got(c, "getpeername gives the original", ok, &got, &orig);
	failures = !(ok && sock_same(&got, &orig));

	memset(&got, 0, sizeof(got));
	len = sizeof(got);
	ok = getsockopt(afd, SOL_IP, SO_ORIGINAL_DST, &got, &len) == 0;
	report_got(c, "SO_ORIGINAL_DST gives the original", ok, &got, &orig);
	failures += !(ok && sock_same(&got, &orig));
	close(afd);
	close(cfd);
	return failures + check_connect6_mapped(c, lfd) + check_orig_after_close(c, lfd) + check_large_getsockopt(c);
}

/* Dual-stack clients (Java, Go with tcp6 sockets) reach IPv4 peers through v4-mapped addresses on
 * an AF_INET6 socket: connect6 must redirect those like connect4, getpeername6 must give back the
 * mapped original, and ztunnel's accepted (IPv4) socket must answer SO_ORIGINAL_DST. */
int check_connect6_mapped(const struct func_ctx *c, int lfd)
{
	const char *name = "connect6 v4-mapped: lands on 15001, getpeername and SO_ORIGINAL_DST give the original";
	struct sockaddr_in6 orig6, got6;
	struct sockaddr_in orig, got;
	socklen_t len6 = sizeof(got6), len = sizeof(got);
	char a[64], b[INET6_ADDRSTRLEN];
	int cfd = socket(AF_INET6, SOCK_STREAM, 0), afd, ok;

	sock_addr4(&orig, FILL_ORIG_DST_IP, FILL_ORIG_DST_PORT);
	memset(&orig6, 0, sizeof(orig6));
	orig6.sin6_family = AF_INET6;
	orig6.sin6_port = orig.sin_port;
	orig6.sin6_addr.s6_addr[10] = 0xff;
	orig6.sin6_addr.s6_addr[11] = 0xff;
	memcpy(&orig6.sin6_addr.s6_addr[12], &orig.sin_addr, 4);
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&orig6, sizeof(orig6)) < 0 ||
	    (afd = sock_accept_within(lfd)) < 0) {
		report(c->label, name, "func", "fail", "connect to [::ffff:%s]:%d did not reach the 15001 listener: %s",
		       FILL_ORIG_DST_IP, FILL_ORIG_DST_PORT, strerror(errno));
		if (cfd >= 0)
			close(cfd);
		return 1;
	}
	memset(&got6, 0, sizeof(got6));
	ok = getpeername(cfd, (struct sockaddr *)&got6, &len6) == 0 && got6.sin6_family == AF_INET6 &&
	     !memcmp(&got6.sin6_addr, &orig6.sin6_addr, sizeof(got6.sin6_addr)) && got6.sin6_port == orig6.sin6_port;
	if (!ok) {
		inet_ntop(AF_INET6, &got6.sin6_addr, b, sizeof(b));
		report(c->label, name, "func", "fail", "getpeername gave [%s]:%d, want [::ffff:%s]:%d", b,
		       ntohs(got6.sin6_port), FILL_ORIG_DST_IP, FILL_ORIG_DST_PORT);
		close(afd);
		close(cfd);
		return 1;
	}
	memset(&got, 0, sizeof(got));
	ok = getsockopt(afd, SOL_IP, SO_ORIGINAL_DST, &got, &len) == 0 && sock_same(&got, &orig);
	close(afd);
	close(cfd);
	if (!ok) {
		report(c->label, name, "func", "fail", "SO_ORIGINAL_DST gave %s, want %s:%d",
		       sock_fmt(&got, a, sizeof(a)), FILL_ORIG_DST_IP, FILL_ORIG_DST_PORT);
		return 1;
	}
	report(c->label, name, "func", "ok", "[::ffff:%s]:%d", FILL_ORIG_DST_IP, FILL_ORIG_DST_PORT);
	return 0;
}

/* A fire-and-forget client (connect, write, close) is gone before ztunnel accepts: SO_ORIGINAL_DST
 * must still answer (node: the original dst lives until both sockets closed, the state callback on
 * ztunnel's side; inpod: sock_release keeps the client's original for ztunnel's getsockopt). */
int check_orig_after_close(const struct func_ctx *c, int lfd)
{
	const char *name = "SO_ORIGINAL_DST after the client closed";
	struct sockaddr_in orig, got;
	socklen_t len = sizeof(got);
	int cfd = socket(AF_INET, SOCK_STREAM, 0), afd, ok;

	sock_addr4(&orig, FILL_ORIG_DST_IP, FILL_ORIG_DST_PORT);
	if (cfd < 0 || connect(cfd, (struct sockaddr *)&orig, sizeof(orig)) < 0 || write(cfd, "x", 1) != 1) {
		report(c->label, name, "func", "fail", "client: %s", strerror(errno));
		if (cfd >= 0)
			close(cfd);
		return 1;
	}
	close(cfd);
	usleep(200 * 1000); /* FIN, ACK: the orphaned client reaches TCP_CLOSE (TIME_WAIT) meanwhile */
	if ((afd = sock_accept_within(lfd)) < 0) {
		report(c->label, name, "func", "fail", "nothing to accept: %s", strerror(errno));
		return 1;
	}
	memset(&got, 0, sizeof(got));
	ok = getsockopt(afd, SOL_IP, SO_ORIGINAL_DST, &got, &len) == 0;
	close(afd);
	report_got(c, name, ok, &got, &orig);
	return !(ok && sock_same(&got, &orig));
}

/* A getsockopt with a buffer bigger than a page (iptables-legacy's IPT_SO_GET_ENTRIES is one) must
 * get the kernel's own answer with the getsockopt program attached; before Linux 6.5 it fails with
 * EFAULT unless the program sets optlen to 0 (ambpf_sockopt.h). SO_PEERSEC without an LSM label
 * answers ENOPROTOOPT, with one it succeeds: either is the kernel's answer, EFAULT is not. */
int check_large_getsockopt(const struct func_ctx *c)
{
	const char *name = "a 16 KiB getsockopt keeps the kernel's answer";
	static char buf[16384];
	socklen_t len = sizeof(buf);
	int fd = socket(AF_INET, SOCK_STREAM, 0), rc, err;

	if (fd < 0) {
		report(c->label, name, "func", "fail", "socket: %s", strerror(errno));
		return 1;
	}
	rc = getsockopt(fd, SOL_SOCKET, SO_PEERSEC, buf, &len);
	err = errno;
	close(fd);
	if (rc == 0 || err == ENOPROTOOPT) {
		report(c->label, name, "func", "ok", "SO_PEERSEC with optlen %zu: %s", sizeof(buf),
		       rc == 0 ? "answered" : strerror(err));
		return 0;
	}
	report(c->label, name, "func", "fail", "SO_PEERSEC with optlen %zu failed: %s", sizeof(buf), strerror(err));
	return 1;
}

int check_sk_lookup(const struct func_ctx *c, const char *name, int dport, int lfd, bool marked)
{
	long long before = fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_ASSIGNED), after;
	struct sockaddr_in dst, src, got;
	socklen_t len = sizeof(got);
	unsigned int mark = AMBPF_ZTUNNEL_MARK;
	char a[64], b[64];
	int cfd, afd;

	sock_addr4(&dst, FILL_POD_IP, dport);
	/* From a local address other than the destination: a connection between one address and itself
	 * is not inbound (the loop trap), and sk_lookup leaves it alone. */
	sock_addr4(&src, FILL_ZTUNNEL_IP, 0);
	cfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || cfd < 0) {
		report(c->label, name, "func", "fail", "test sockets: %s", strerror(errno));
		if (cfd >= 0)
			close(cfd);
		return 1;
	}
	/* Node topology: ztunnel's mark, so connect4 leaves this socket alone and only sk_lookup decides
	 * where it lands. Inpod: no mark (a marked socket from a foreign address is ztunnel's spoofed leg,
	 * which sk_lookup lets through); connect4 leaves it alone because its destination is the pod's
	 * own IP. */
	if (marked)
		setsockopt(cfd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
	if (bind(cfd, (struct sockaddr *)&src, sizeof(src)) || connect(cfd, (struct sockaddr *)&dst, sizeof(dst)) < 0 ||
	    (afd = sock_accept_within(lfd)) < 0) {
		report(c->label, name, "func", "fail", "connect to %s not assigned: %s", sock_fmt(&dst, a, sizeof(a)),
		       strerror(errno));
		close(cfd);
		return 1;
	}
	after = fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_ASSIGNED);
	memset(&got, 0, sizeof(got));
	if (getsockname(afd, (struct sockaddr *)&got, &len) || !sock_same(&got, &dst) || after <= before) {
		report(c->label, name, "func", "fail",
		       "accepted with local address %s, want %s (assigned %lld -> %lld)", sock_fmt(&got, a, sizeof(a)),
		       sock_fmt(&dst, b, sizeof(b)), before, after);
		close(afd);
		close(cfd);
		return 1;
	}
	report(c->label, name, "func", "ok", "accepted with local address %s (assigned %lld)",
	       sock_fmt(&got, a, sizeof(a)), after);
	close(afd);
	close(cfd);
	return 0;
}

int check_sk_lookup6(const struct func_ctx *c, const char *name, int dport, int lfd, bool marked)
{
	struct sockaddr_in6 dst, src, got;
	socklen_t len = sizeof(got);
	unsigned int mark = AMBPF_ZTUNNEL_MARK;
	char a[80], b[80];
	int cfd = socket(AF_INET6, SOCK_STREAM, 0), afd;

	sock_addr6(&dst, FILL_POD_IP6, dport);
	sock_addr6(&src, FILL_LOCAL_IP6, 0);
	if (cfd >= 0 && marked)
		setsockopt(cfd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
	if (lfd < 0 || cfd < 0 || bind(cfd, (struct sockaddr *)&src, sizeof(src)) ||
	    connect(cfd, (struct sockaddr *)&dst, sizeof(dst)) < 0 || (afd = sock_accept_within(lfd)) < 0) {
		report(c->label, name, "func", "fail", "connect to %s not assigned: %s", sock_fmt6(&dst, a, sizeof(a)),
		       strerror(errno));
		if (cfd >= 0)
			close(cfd);
		return 1;
	}
	memset(&got, 0, sizeof(got));
	if (getsockname(afd, (struct sockaddr *)&got, &len) || !sock_same6(&got, &dst)) {
		report(c->label, name, "func", "fail", "accepted with local address %s, want %s",
		       sock_fmt6(&got, a, sizeof(a)), sock_fmt6(&dst, b, sizeof(b)));
		close(afd);
		close(cfd);
		return 1;
	}
	report(c->label, name, "func", "ok", "accepted with local address %s (assigned %lld)",
	       sock_fmt6(&got, a, sizeof(a)), fill_stat(c->maps, c->nmaps, AMBPF_STAT_SKLOOKUP_ASSIGNED));
	close(afd);
	close(cfd);
	return 0;
}

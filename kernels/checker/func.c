#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <bpf/libbpf.h>
#include "ambpf.h"
#include "cookie.h"
#include "fill.h"
#include "func.h"
#include "report.h"

#define LABEL "functional"
#define MAX_MAPS 64
#define MAX_OBJS 16
#define SO_ORIGINAL_DST 80

struct loaded_set {
	struct bpf_object *objs[MAX_OBJS];
	int nobj;
	struct bpf_map *maps[MAX_MAPS]; /* first of each name: the shared instance */
	int nmaps;
	struct attachment att[MAX_PROGS];
	int natt;
	bool has_sk_lookup;
	bool has_tc;
};

static struct bpf_map *shared(struct loaded_set *s, const char *name)
{
	for (int i = 0; i < s->nmaps; i++)
		if (strcmp(bpf_map__name(s->maps[i]), name) == 0)
			return s->maps[i];
	return NULL;
}

/* Load one object with the maps earlier objects made (the loader shares them through pins). */
static int load_shared(struct loaded_set *s, struct object_info *o)
{
	struct bpf_object *obj = bpf_object__open_file(o->path, NULL);
	struct bpf_program *prog;
	struct bpf_map *map;
	int any = 0, err;

	if (!obj)
		return -errno;
	bpf_object__for_each_program(prog, obj) {
		bool on = false;

		for (int i = 0; i < o->n; i++)
			if (strcmp(o->names[i], bpf_program__name(prog)) == 0)
				on = o->loaded[i];
		bpf_program__set_autoload(prog, on);
		any |= on;
	}
	bpf_object__for_each_map(map, obj) {
		struct bpf_map *prev = shared(s, bpf_map__name(map));

		if (prev && (err = bpf_map__reuse_fd(map, bpf_map__fd(prev)))) {
			bpf_object__close(obj);
			return err;
		}
	}
	if (!any || (err = bpf_object__load(obj))) {
		bpf_object__close(obj);
		return any ? err : 0;
	}
	s->objs[s->nobj++] = obj;
	bpf_object__for_each_map(map, obj)
		if (!shared(s, bpf_map__name(map)) && s->nmaps < MAX_MAPS)
			s->maps[s->nmaps++] = map;
	return 0;
}

static int attach_all(struct loaded_set *s, const struct attach_env *env)
{
	struct attach_probe probe;
	char how[256];
	int failures = 0;

	for (int i = 0; i < s->nobj; i++) {
		struct bpf_program *prog;

		bpf_object__for_each_program(prog, s->objs[i]) {
			if (!bpf_program__autoload(prog) || s->natt >= MAX_PROGS)
				continue;
			if (attach_program(prog, s->objs[i], env, &s->att[s->natt], how, sizeof(how), &probe)) {
				report(LABEL, "all programs attached together", "func", "fail", "%s: %s",
				       bpf_program__name(prog), strerror(errno));
				failures++;
				continue;
			}
			if (bpf_program__type(prog) == BPF_PROG_TYPE_SK_LOOKUP)
				s->has_sk_lookup = true;
			if (bpf_program__type(prog) == BPF_PROG_TYPE_SCHED_CLS)
				s->has_tc = true;
			s->natt++;
		}
	}
	return failures;
}

static void addr(struct sockaddr_in *sin, const char *ip, int port)
{
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_port = htons((unsigned short)port);
	inet_pton(AF_INET, ip, &sin->sin_addr);
}

static const char *fmt_addr(const struct sockaddr_in *sin, char *buf, size_t len)
{
	char ip[INET_ADDRSTRLEN];

	inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
	snprintf(buf, len, "%s:%d", ip, ntohs(sin->sin_port));
	return buf;
}

static int listener(const char *ip, int port)
{
	struct sockaddr_in sin;
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

	addr(&sin, ip, port);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) || listen(fd, 16)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* accept() that gives up after 3 s: a lost redirect must fail the check, not hang the guest. */
static int accept_within(int lfd)
{
	struct pollfd p = { .fd = lfd, .events = POLLIN };

	if (poll(&p, 1, 3000) != 1)
		return -1;
	return accept(lfd, NULL, NULL);
}

static bool same(const struct sockaddr_in *a, const struct sockaddr_in *b)
{
	return a->sin_addr.s_addr == b->sin_addr.s_addr && a->sin_port == b->sin_port;
}

/* A connect from the test cgroup to an address nobody has lands on ztunnel's 15001; the client sees
 * the original peer, ztunnel's SO_ORIGINAL_DST answers it. */
static int check_outbound(struct loaded_set *s)
{
	struct sockaddr_in orig, got;
	socklen_t len = sizeof(got);
	char a[64], b[64];
	int failures = 0, lfd, cfd, afd;

	addr(&orig, FILL_ORIG_DST_IP, FILL_ORIG_DST_PORT);
	lfd = listener(FILL_ZTUNNEL_IP, AMBPF_PORT_OUTBOUND);
	cfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || cfd < 0) {
		report(LABEL, "connect lands on 15001", "func", "fail", "test sockets: %s", strerror(errno));
		return 1;
	}
	if (connect(cfd, (struct sockaddr *)&orig, sizeof(orig)) < 0 || (afd = accept_within(lfd)) < 0) {
		report(LABEL, "connect lands on 15001", "func", "fail", "connect to %s did not reach %s:%d: %s",
		       fmt_addr(&orig, a, sizeof(a)), FILL_ZTUNNEL_IP, AMBPF_PORT_OUTBOUND, strerror(errno));
		report(LABEL, "getpeername gives the original", "func", "fail", "no connection");
		report(LABEL, "SO_ORIGINAL_DST gives the original", "func", "fail", "no connection");
		close(lfd);
		close(cfd);
		return 3;
	}
	report(LABEL, "connect lands on 15001", "func", "ok", "%s -> %s:%d (redirected %lld)",
	       fmt_addr(&orig, a, sizeof(a)), FILL_ZTUNNEL_IP, AMBPF_PORT_OUTBOUND,
	       fill_stat(s->maps, s->nmaps, AMBPF_STAT_CONNECT4_REDIRECTED));

	if (getpeername(cfd, (struct sockaddr *)&got, &len) == 0 && same(&got, &orig))
		report(LABEL, "getpeername gives the original", "func", "ok", "%s", fmt_addr(&got, a, sizeof(a)));
	else {
		report(LABEL, "getpeername gives the original", "func", "fail", "got %s, want %s",
		       fmt_addr(&got, a, sizeof(a)), fmt_addr(&orig, b, sizeof(b)));
		failures++;
	}
	memset(&got, 0, sizeof(got));
	len = sizeof(got);
	if (getsockopt(afd, SOL_IP, SO_ORIGINAL_DST, &got, &len) == 0 && same(&got, &orig))
		report(LABEL, "SO_ORIGINAL_DST gives the original", "func", "ok", "%s", fmt_addr(&got, a, sizeof(a)));
	else {
		report(LABEL, "SO_ORIGINAL_DST gives the original", "func", "fail", "got %s (%s), want %s",
		       fmt_addr(&got, a, sizeof(a)), strerror(errno), fmt_addr(&orig, b, sizeof(b)));
		failures++;
	}
	close(afd);
	close(cfd);
	close(lfd);
	return failures;
}

/* sk_lookup hands a connection for a local address that nobody listens on to ztunnel's 15006
 * listener (from ambpf_zt_listen), keeping the original destination as the local address. */
static int check_sk_lookup(struct loaded_set *s)
{
	const char *name = "sk_lookup assigns to the 15006 listener";
	struct sockaddr_in dst, src, got;
	socklen_t len = sizeof(got);
	unsigned int mark = AMBPF_ZTUNNEL_MARK;
	char a[64], err[256];
	int lfd, cfd, afd;

	addr(&dst, FILL_POD_IP, 80);
	addr(&src, FILL_ZTUNNEL_IP, 0);
	lfd = listener("0.0.0.0", AMBPF_PORT_INBOUND);
	cfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || cfd < 0 || fill_listener(s->maps, s->nmaps, lfd, err, sizeof(err))) {
		report(LABEL, name, "func", "fail", "setup: %s", lfd < 0 || cfd < 0 ? strerror(errno) : err);
		return 1;
	}
	/* ztunnel's mark: connect4 leaves this socket alone, so only sk_lookup decides where it lands. */
	setsockopt(cfd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
	if (bind(cfd, (struct sockaddr *)&src, sizeof(src)) || connect(cfd, (struct sockaddr *)&dst, sizeof(dst)) < 0 ||
	    (afd = accept_within(lfd)) < 0) {
		report(LABEL, name, "func", "fail", "connect to %s not assigned: %s", fmt_addr(&dst, a, sizeof(a)),
		       strerror(errno));
		close(cfd);
		close(lfd);
		return 1;
	}
	if (getsockname(afd, (struct sockaddr *)&got, &len) == 0 && same(&got, &dst))
		report(LABEL, name, "func", "ok", "accepted with local address %s (assigned %lld)",
		       fmt_addr(&got, a, sizeof(a)), fill_stat(s->maps, s->nmaps, AMBPF_STAT_SKLOOKUP_ASSIGNED));
	else
		report(LABEL, name, "func", "fail", "accepted with local address %s", fmt_addr(&got, a, sizeof(a)));
	close(afd);
	close(cfd);
	close(lfd);
	return 0;
}

/* A SYN for an ambient pod leaving its host-side veth is steered (counted and redirected) by the tc
 * program. Where it lands needs ztunnel's netns; the guest checks the program's decision. */
static int check_tc(struct loaded_set *s)
{
	const char *name = "tc steers a SYN for an ambient pod";
	unsigned int mark = AMBPF_ZTUNNEL_MARK;
	long long before = fill_stat(s->maps, s->nmaps, AMBPF_STAT_TC_STEERED), after = before;
	struct sockaddr_in dst;
	int cfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	addr(&dst, FILL_TC_POD_IP, 80);
	/* ztunnel's mark keeps connect4 out of it: the SYN goes to the pod's address as asked. */
	setsockopt(cfd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
	connect(cfd, (struct sockaddr *)&dst, sizeof(dst));
	for (int i = 0; i < 20 && after <= before; i++) {
		usleep(50 * 1000);
		after = fill_stat(s->maps, s->nmaps, AMBPF_STAT_TC_STEERED);
	}
	close(cfd);
	if (after > before) {
		report(LABEL, name, "func", "ok", "steered %lld SYN(s) to %s", after - before, FILL_ZT_HOST_IF);
		return 0;
	}
	report(LABEL, name, "func", "fail", "TC_STEERED stayed at %lld (pass not-ambient %lld, no-flow %lld, error %lld)",
	       after, fill_stat(s->maps, s->nmaps, AMBPF_STAT_TC_PASS_NOT_AMBIENT),
	       fill_stat(s->maps, s->nmaps, AMBPF_STAT_TC_PASS_NO_FLOW), fill_stat(s->maps, s->nmaps, AMBPF_STAT_TC_ERROR));
	return 1;
}

/* The child joins the test cgroup (so the cgroup programs see its sockets, ztunnel stand-in
 * included, as kubepods covers ztunnel's pod), fills the maps and runs the socket checks. */
static int child(struct loaded_set *s, const char *cgroup_path, int cgroup_fd)
{
	char procs[512], err[256];
	__u64 cookie = 0;
	int fd, rc, failures = 0;

	alarm(30);
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", cgroup_path);
	fd = open(procs, O_WRONLY);
	if (fd < 0 || write(fd, "0", 1) != 1) {
		report(LABEL, "setup", "func", "fail", "cannot join %s: %s", cgroup_path, strerror(errno));
		return 1;
	}
	close(fd);
	if ((rc = netns_cookie_of_self(cgroup_fd, &cookie))) {
		report(LABEL, "setup", "func", "fail", "netns cookie: %s", strerror(-rc));
		return 1;
	}
	if (fill_maps(s->maps, s->nmaps, cookie, err, sizeof(err))) {
		report(LABEL, "setup", "func", "fail", "filling maps: %s", err);
		return 1;
	}
	failures += check_outbound(s);
	if (s->has_sk_lookup)
		failures += check_sk_lookup(s);
	if (s->has_tc)
		failures += check_tc(s);
	return failures;
}

int run_functional_checks(struct object_info *objs, int nobj, const char *cgroup_path,
			  const struct attach_env *env)
{
	struct loaded_set *s = calloc(1, sizeof(*s));
	int failures = 0, status = 0, err;
	pid_t pid;

	if (!s)
		return 1;
	for (int i = 0; i < nobj && s->nobj < MAX_OBJS; i++) {
		if (strcmp(objs[i].label, "checker-selftest") == 0)
			continue; /* the fixture is not part of ambpf's datapath */
		libbpf_log_reset();
		if ((err = load_shared(s, &objs[i]))) {
			report(LABEL, "all programs loaded together", "func", "fail", "%s: %s", objs[i].label,
			       strerror(-err));
			report_log_tail(LABEL, "all programs loaded together", libbpf_log_text(), 8);
			failures++;
		}
	}
	if (s->nobj == 0)
		goto out;
	failures += attach_all(s, env);
	pid = fork();
	if (pid == 0)
		_exit(child(s, cgroup_path, env->cgroup_fd) ? 1 : 0);
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		if (pid > 0 && WIFSIGNALED(status))
			report(LABEL, "checks finished", "func", "fail", "checker child killed by signal %d",
			       WTERMSIG(status));
		failures++;
	}
out:
	for (int i = 0; i < s->natt; i++)
		detach_program(&s->att[i]);
	for (int i = 0; i < s->nobj; i++)
		bpf_object__close(s->objs[i]);
	free(s);
	return failures;
}

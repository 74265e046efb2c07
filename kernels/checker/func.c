#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <bpf/libbpf.h>
#include "ambpf.h"
#include "checks.h"
#include "cookie.h"
#include "fill.h"
#include "func.h"
#include "inject.h"
#include "inpod.h"
#include "report.h"
#include "sockets.h"

#define MAX_MAPS	64
#define MAX_OBJS	16
#define SELFTEST_OBJECT "checker-selftest" /* the fixture is not part of ambpf's datapath */

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

/* One topology: which objects it loads together and the checks that prove it. */
struct func_suite {
	const char *label;
	bool (*member)(const char *object_label);
	int (*checks)(const struct func_ctx *c);
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
	bpf_object__for_each_program(prog, obj)
	{
		bool on = false;

		for (int i = 0; i < o->n; i++)
			if (strcmp(o->names[i], bpf_program__name(prog)) == 0)
				on = o->loaded[i];
		bpf_program__set_autoload(prog, on);
		any |= on;
	}
	bpf_object__for_each_map(map, obj)
	{
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
	bpf_object__for_each_map(map, obj) if (!shared(s, bpf_map__name(map)) && s->nmaps < MAX_MAPS)
		s->maps[s->nmaps++] = map;
	return 0;
}

static int attach_all(const char *label, struct loaded_set *s, const struct attach_env *env)
{
	struct attach_probe probe;
	char how[256];
	int failures = 0;

	for (int i = 0; i < s->nobj; i++) {
		struct bpf_program *prog;

		bpf_object__for_each_program(prog, s->objs[i])
		{
			if (!bpf_program__autoload(prog) || s->natt >= MAX_PROGS)
				continue;
			if (attach_program(prog, s->objs[i], env, &s->att[s->natt], how, sizeof(how), &probe)) {
				report(label, "all programs attached together", "func", "fail", "%s: %s",
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

/* A SYN for an ambient pod leaving its host-side veth is steered (counted and redirected) by the tc
 * program. Where it lands needs ztunnel's netns; the guest checks the program's decision. The SYN
 * must come in from outside (a frame injected on the veth's peer and forwarded back out of it): one
 * the checker's own socket made is the node's own traffic, which the program rightly passes. `v6`:
 * the same over IPv6, to the pod's IPv6 address. */
static int check_tc(const struct func_ctx *c, bool v6)
{
	const char *name = v6 ? "tc steers an IPv6 SYN for an ambient pod" : "tc steers a SYN for an ambient pod";
	long long before = fill_stat(c->maps, c->nmaps, AMBPF_STAT_TC_STEERED), after = before;
	int err = v6 ? inject_syn6(FILL_ZT_HOST_IF, FILL_TC_IF, FILL_REMOTE_IP6, FILL_TC_POD_IP6, 80)
		     : inject_syn(FILL_ZT_HOST_IF, FILL_TC_IF, FILL_REMOTE_IP, FILL_TC_POD_IP, 80);

	if (err) {
		report(c->label, name, "func", "fail", "cannot inject a SYN on %s: %s", FILL_ZT_HOST_IF,
		       strerror(-err));
		return 1;
	}
	for (int i = 0; i < 20 && after <= before; i++) {
		usleep(50 * 1000);
		after = fill_stat(c->maps, c->nmaps, AMBPF_STAT_TC_STEERED);
	}
	if (after > before) {
		report(c->label, name, "func", "ok", "steered %lld SYN(s) to %s", after - before, FILL_ZT_HOST_IF);
		return 0;
	}
	report(c->label, name, "func", "fail",
	       "TC_STEERED stayed at %lld (pass not-ambient %lld, pod-flow %lld, local %lld, error %lld)", after,
	       fill_stat(c->maps, c->nmaps, AMBPF_STAT_TC_PASS_NOT_AMBIENT),
	       fill_stat(c->maps, c->nmaps, AMBPF_STAT_TC_PASS_POD_FLOW),
	       fill_stat(c->maps, c->nmaps, AMBPF_STAT_TC_PASS_LOCAL),
	       fill_stat(c->maps, c->nmaps, AMBPF_STAT_TC_ERROR));
	return 1;
}

/* A SYN the node itself sends (a kubelet probe, a hostNetwork pod) goes to the pod: passed, counted as
 * local. ztunnel's mark keeps connect4 out of it, so the SYN goes to the pod's address as asked. */
static int check_tc_local(const struct func_ctx *c)
{
	const char *name = "tc passes the node's own SYN";
	unsigned int mark = AMBPF_ZTUNNEL_MARK;
	long long steered = fill_stat(c->maps, c->nmaps, AMBPF_STAT_TC_STEERED);
	long long before = fill_stat(c->maps, c->nmaps, AMBPF_STAT_TC_PASS_LOCAL), after = before;
	struct sockaddr_in dst;
	int cfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	sock_addr4(&dst, FILL_TC_POD_IP, 80);
	setsockopt(cfd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark));
	connect(cfd, (struct sockaddr *)&dst, sizeof(dst));
	for (int i = 0; i < 20 && after <= before; i++) {
		usleep(50 * 1000);
		after = fill_stat(c->maps, c->nmaps, AMBPF_STAT_TC_PASS_LOCAL);
	}
	close(cfd);
	if (after > before && fill_stat(c->maps, c->nmaps, AMBPF_STAT_TC_STEERED) == steered) {
		report(c->label, name, "func", "ok", "passed %lld local SYN(s)", after - before);
		return 0;
	}
	report(c->label, name, "func", "fail", "TC_PASS_LOCAL %lld -> %lld, TC_STEERED %lld -> %lld", before, after,
	       steered, fill_stat(c->maps, c->nmaps, AMBPF_STAT_TC_STEERED));
	return 1;
}

/* The node topology: ztunnel at FILL_ZTUNNEL_IP in "another" netns, its 15006 listener (bound to a
 * wildcard, as ztunnel's) in ambpf_zt_listen for sk_lookup; then IPv6 inbound with an IPv6 listener
 * in that slot and the pod's IPv6 address in ambpf_pods. */
static int node_checks(const struct func_ctx *c)
{
	char err[256];
	int lfd, failures;

	if (fill_maps(c->maps, c->nmaps, FILL_NODE, c->netns_cookie, err, sizeof(err)) ||
	    fill_node6(c->maps, c->nmaps, err, sizeof(err))) {
		report(c->label, "setup", "func", "fail", "filling maps: %s", err);
		return 1;
	}
	lfd = sock_listen(FILL_ZTUNNEL_IP, AMBPF_PORT_OUTBOUND);
	failures = check_outbound(c, lfd, FILL_ZTUNNEL_IP);
	if (lfd >= 0)
		close(lfd);
	if (c->has_sk_lookup) {
		lfd = sock_listen("0.0.0.0", AMBPF_PORT_INBOUND);
		if (lfd >= 0 && fill_listener(c->maps, c->nmaps, lfd, err, sizeof(err))) {
			report(c->label, "setup", "func", "fail", "ambpf_zt_listen: %s", err);
			failures++;
		} else {
			failures += check_sk_lookup(c, "sk_lookup assigns to the 15006 listener", 80, lfd, true);
		}
		if (lfd >= 0)
			close(lfd);
		lfd = sock_listen6("::", AMBPF_PORT_INBOUND);
		if (lfd < 0 || fill_listener(c->maps, c->nmaps, lfd, err, sizeof(err))) {
			report(c->label, "setup", "func", "fail", "IPv6 listener in ambpf_zt_listen: %s",
			       lfd < 0 ? strerror(errno) : err);
			failures++;
		} else {
			failures += check_sk_lookup6(c, "sk_lookup assigns IPv6 to the 15006 listener", 80, lfd, true);
		}
		if (lfd >= 0)
			close(lfd);
	}
	if (c->has_tc)
		failures += check_tc(c, false) + check_tc(c, true) + check_tc_local(c);
	return failures;
}

static bool node_member(const char *object_label)
{
	return strcmp(object_label, INPOD_OBJECT) != 0;
}

static bool inpod_member(const char *object_label)
{
	return strcmp(object_label, INPOD_OBJECT) == 0;
}

static const struct func_suite suites[] = {
	{"node", node_member, node_checks},
	{"inpod", inpod_member, inpod_checks},
};

/* The child joins the test cgroup (so the cgroup programs see its sockets, ztunnel stand-in
 * included, as kubepods covers ztunnel's pod) and runs the suite's checks. */
static int child(const struct func_suite *suite, struct loaded_set *s, const char *cgroup_path, int cgroup_fd)
{
	struct func_ctx c = {
		.label = suite->label,
		.maps = s->maps,
		.nmaps = s->nmaps,
		.has_sk_lookup = s->has_sk_lookup,
		.has_tc = s->has_tc,
	};
	char procs[512];
	int fd, rc;

	alarm(30);
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", cgroup_path);
	fd = open(procs, O_WRONLY);
	if (fd < 0 || write(fd, "0", 1) != 1) {
		report(suite->label, "setup", "func", "fail", "cannot join %s: %s", cgroup_path, strerror(errno));
		return 1;
	}
	close(fd);
	if ((rc = netns_cookie_of_self(cgroup_fd, &c.netns_cookie))) {
		report(suite->label, "setup", "func", "fail", "netns cookie: %s", strerror(-rc));
		return 1;
	}
	return suite->checks(&c);
}

/* Load, attach, check in a child, detach: nothing of one suite is left when the next one starts. */
static int run_suite(const struct func_suite *suite, struct object_info *objs, int nobj, const char *cgroup_path,
		     const struct attach_env *env)
{
	struct loaded_set *s = calloc(1, sizeof(*s));
	int failures = 0, status = 0, err;
	pid_t pid;

	if (!s)
		return 1;
	for (int i = 0; i < nobj && s->nobj < MAX_OBJS; i++) {
		if (strcmp(objs[i].label, SELFTEST_OBJECT) == 0 || !suite->member(objs[i].label))
			continue;
		libbpf_log_reset();
		if ((err = load_shared(s, &objs[i]))) {
			report(suite->label, "all programs loaded together", "func", "fail", "%s: %s", objs[i].label,
			       strerror(-err));
			report_log_tail(suite->label, "all programs loaded together", libbpf_log_text(), 8);
			failures++;
		}
	}
	if (s->nobj == 0)
		goto out;
	failures += attach_all(suite->label, s, env);
	fflush(stdout); /* the child's exit must not repeat our buffered lines */
	pid = fork();
	if (pid == 0)
		_exit(child(suite, s, cgroup_path, env->cgroup_fd) ? 1 : 0);
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		if (pid > 0 && WIFSIGNALED(status))
			report(suite->label, "checks finished", "func", "fail", "checker child killed by signal %d",
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

int run_functional_checks(struct object_info *objs, int nobj, const char *cgroup_path, const struct attach_env *env)
{
	int failures = 0;

	for (size_t i = 0; i < sizeof(suites) / sizeof(suites[0]); i++)
		failures += run_suite(&suites[i], objs, nobj, cgroup_path, env);
	return failures;
}

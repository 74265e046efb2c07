/* ambpf kernel checker: runs inside a guest (or a throwaway netns on the host), discovers every
 * program in the given BPF objects, loads each one on its own, attaches it the way the loader would
 * on this kernel, then runs the functional checks. Prints RESULT/VLOG lines (report.h).
 *
 * usage: checker --cgroup DIR --iface IFNAME OBJECT.o...
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <bpf/libbpf.h>
#include "attach.h"
#include "func.h"
#include "report.h"

#define LOG_BUF_SIZE (4 << 20)
#define MAX_OBJECTS  16

static char log_buf[LOG_BUF_SIZE];

static void object_label(const char *path, char *out, size_t len)
{
	char copy[512];
	char *base, *dot;

	snprintf(copy, sizeof(copy), "%s", path);
	base = basename(copy);
	dot = strstr(base, ".bpf.o");
	if (!dot)
		dot = strrchr(base, '.');
	if (dot)
		*dot = '\0';
	snprintf(out, len, "%s", base);
}

static void report_failure_log(const char *label, const char *name)
{
	/* The verifier log explains rejections; libbpf's own lines explain failures before it runs. */
	if (log_buf[0])
		report_log_tail(label, name, log_buf, 12);
	else
		report_log_tail(label, name, libbpf_log_text(), 8);
}

/* Load `name` alone (autoload off for the rest) and attach it; true when both worked. */
static bool check_one(const char *path, const char *label, const char *name, const struct attach_env *env)
{
	struct bpf_object *obj = bpf_object__open_file(path, NULL);
	struct bpf_program *prog, *target = NULL;
	struct attachment att;
	struct attach_probe probe;
	char how[256];
	bool ok = false;
	int err;

	if (!obj) {
		report(label, name, "load", "fail", "cannot open object: %s", strerror(errno));
		return false;
	}
	bpf_object__for_each_program(prog, obj)
	{
		bool me = strcmp(bpf_program__name(prog), name) == 0;

		bpf_program__set_autoload(prog, me);
		if (me)
			target = prog;
	}
	if (!target)
		goto out;
	log_buf[0] = '\0';
	libbpf_log_reset();
	bpf_program__set_log_buf(target, log_buf, sizeof(log_buf));
	err = bpf_object__load(obj);
	if (err) {
		report(label, name, "load", "fail", "%s (%s)", strerror(-err),
		       libbpf_bpf_prog_type_str(bpf_program__type(target)));
		report_failure_log(label, name);
		goto out;
	}
	report(label, name, "load", "ok", "%s, %zu insns", libbpf_bpf_prog_type_str(bpf_program__type(target)),
	       bpf_program__insn_cnt(target));
	libbpf_log_reset();
	err = attach_program(target, obj, env, &att, how, sizeof(how), &probe);
	if (probe.name)
		report(label, name, "probe", probe.supported ? "yes" : "no", "%s%s%s", probe.name,
		       probe.supported ? "" : ": ", probe.supported ? "" : strerror(-probe.err));
	if (err) {
		report(label, name, "attach", "fail", "%s", strerror(-err));
		report_log_tail(label, name, libbpf_log_text(), 6);
		goto out;
	}
	report(label, name, "attach", "ok", "%s", how);
	detach_program(&att);
	ok = true;
out:
	bpf_object__close(obj);
	return ok;
}

static int check_object(struct object_info *o, const struct attach_env *env)
{
	struct bpf_object *obj = bpf_object__open_file(o->path, NULL);
	struct bpf_program *prog;
	int failures = 0;

	object_label(o->path, o->label, sizeof(o->label));
	if (!obj) {
		report(o->label, "-", "open", "fail", "libbpf cannot open %s: %s", o->path, strerror(errno));
		report_log_tail(o->label, "-", libbpf_log_text(), 8);
		return 1;
	}
	bpf_object__for_each_program(prog, obj)
	{
		if (o->n < MAX_PROGS)
			o->names[o->n++] = strdup(bpf_program__name(prog));
	}
	bpf_object__close(obj);
	if (o->n == 0)
		report(o->label, "-", "open", "fail", "object has no programs");
	for (int i = 0; i < o->n; i++) {
		o->loaded[i] = check_one(o->path, o->label, o->names[i], env);
		failures += !o->loaded[i];
	}
	return failures;
}

int main(int argc, char **argv)
{
	struct attach_env env = {.cgroup_fd = -1, .netns_fd = -1};
	const char *cgroup = NULL, *iface = NULL;
	struct utsname uts;
	int i, failures = 0;

	for (i = 1; i < argc && strncmp(argv[i], "--", 2) == 0; i += 2) {
		if (i + 1 >= argc)
			break;
		if (strcmp(argv[i], "--cgroup") == 0)
			cgroup = argv[i + 1];
		else if (strcmp(argv[i], "--iface") == 0)
			iface = argv[i + 1];
	}
	if (!cgroup || !iface || i >= argc) {
		fprintf(stderr, "usage: %s --cgroup DIR --iface IFNAME OBJECT.o...\n", argv[0]);
		return 2;
	}
	libbpf_log_capture_install();
	uname(&uts);
	printf("KERNEL\t%s\n", uts.release);
	env.cgroup_fd = open(cgroup, O_RDONLY | O_DIRECTORY);
	env.netns_fd = open("/proc/self/ns/net", O_RDONLY);
	env.ifindex = (int)if_nametoindex(iface);
	if (env.cgroup_fd < 0 || env.netns_fd < 0 || env.ifindex == 0) {
		report("-", "-", "setup", "fail", "cgroup %s, netns or interface %s unusable: %s", cgroup, iface,
		       strerror(errno));
		return 1;
	}
	static struct object_info objs[MAX_OBJECTS];
	int nobj = 0;

	for (; i < argc && nobj < MAX_OBJECTS; i++) {
		objs[nobj].path = argv[i];
		failures += check_object(&objs[nobj++], &env);
	}
	/* Then the datapath as a whole: programs that loaded alone, together, with real sockets. */
	failures += run_functional_checks(objs, nobj, cgroup, &env);
	printf("DONE\t%d\n", failures);
	fflush(stdout);
	return failures ? 1 : 0;
}

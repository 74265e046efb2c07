#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "attach.h"

/* Not in libbpf 1.1's uapi copy: tcx arrived in Linux 6.6. */
#define AMBPF_BPF_TCX_INGRESS 46
#define AMBPF_BPF_TCX_EGRESS  47

/* sk_msg belongs on the splice sockhash; a SOCKMAP (ambpf_zt_listen holds listeners for
 * sk_lookup) only when there is no sockhash. */
static int first_sock_map_fd(struct bpf_object *obj)
{
	struct bpf_map *map;
	int sockmap = -ENOENT;

	bpf_object__for_each_map(map, obj)
	{
		if (bpf_map__type(map) == BPF_MAP_TYPE_SOCKHASH)
			return bpf_map__fd(map);
		if (bpf_map__type(map) == BPF_MAP_TYPE_SOCKMAP && sockmap < 0)
			sockmap = bpf_map__fd(map);
	}
	return sockmap;
}

/* libbpf 1.1 knows only SEC("tc"), with no direction, so the direction the loader uses is named
 * here: by "egress"/"ingress" in the program's name or section, else by this table. */
static const char *const egress_programs[] = {
	"ambpf_tc_pod", /* tc egress on the pod's host-side veth (bpf/ambpf_inbound.bpf.c) */
};

static bool is_egress(const struct bpf_program *prog)
{
	const char *name = bpf_program__name(prog);

	if (strstr(name, "egress") || strstr(bpf_program__section_name(prog), "egress"))
		return true;
	for (size_t i = 0; i < sizeof(egress_programs) / sizeof(egress_programs[0]); i++)
		if (strcmp(name, egress_programs[i]) == 0)
			return true;
	return false;
}

/* The loader prefers tcx (no qdisc to share with a CNI) and falls back to clsact where the kernel
 * refuses the link (before 6.6 it passes the verifier and fails only here, with EINVAL). */
static int attach_tc(struct bpf_program *prog, const struct attach_env *env, struct attachment *out, char *how,
		     size_t how_len, struct attach_probe *probe)
{
	bool egress = is_egress(prog);
	int fd = bpf_link_create(out->prog_fd, env->ifindex, egress ? AMBPF_BPF_TCX_EGRESS : AMBPF_BPF_TCX_INGRESS,
				 NULL);
	int err;

	probe->name = "tcx link";
	probe->supported = fd >= 0;
	probe->err = fd >= 0 ? 0 : -errno;
	if (fd >= 0) {
		out->link_fd = fd;
		snprintf(how, how_len, "tcx link %s", egress ? "egress" : "ingress");
		return 0;
	}
	out->tc_hook.sz = sizeof(out->tc_hook);
	out->tc_hook.ifindex = env->ifindex;
	out->tc_hook.attach_point = egress ? BPF_TC_EGRESS : BPF_TC_INGRESS;
	err = bpf_tc_hook_create(&out->tc_hook);
	if (err && err != -EEXIST)
		return err;
	out->tc_opts.sz = sizeof(out->tc_opts);
	out->tc_opts.prog_fd = out->prog_fd;
	err = bpf_tc_attach(&out->tc_hook, &out->tc_opts);
	if (err)
		return err;
	out->tc_clsact = true;
	snprintf(how, how_len, "clsact %s (no tcx: %s)", egress ? "egress" : "ingress", strerror(-probe->err));
	return 0;
}

/* sk_msg lives on the sockhash: prog_attach everywhere (it stays as long as the map); a bpf_link
 * on the map only from 6.10, which is probed and reported but not required. */
static int attach_sk_msg(struct bpf_object *obj, struct attachment *out, enum bpf_attach_type type, char *how,
			 size_t how_len, struct attach_probe *probe)
{
	int map_fd = first_sock_map_fd(obj);
	int fd, err;

	if (map_fd < 0)
		return map_fd;
	fd = bpf_link_create(out->prog_fd, map_fd, type, NULL);
	probe->name = type == BPF_SK_MSG_VERDICT ? "sk_msg link" : "sk_skb link";
	probe->supported = fd >= 0;
	probe->err = fd >= 0 ? 0 : -errno;
	if (fd >= 0)
		close(fd);
	err = bpf_prog_attach(out->prog_fd, map_fd, type, 0);
	if (err)
		return -errno;
	out->prog_attach_target = map_fd;
	out->prog_attach_type = type;
	snprintf(how, how_len, "prog_attach %s", type == BPF_SK_MSG_VERDICT ? "sk_msg_verdict" : "sk_skb");
	return 0;
}

static int keep_link(struct bpf_link *link, struct attachment *out, const char *what, char *how, size_t how_len)
{
	if (!link)
		return -errno;
	out->link = link;
	snprintf(how, how_len, "%s", what);
	return 0;
}

int attach_program(struct bpf_program *prog, struct bpf_object *obj, const struct attach_env *env,
		   struct attachment *out, char *how, size_t how_len, struct attach_probe *probe)
{
	memset(out, 0, sizeof(*out));
	memset(probe, 0, sizeof(*probe));
	out->link_fd = -1;
	out->prog_attach_target = -1;
	out->prog_fd = bpf_program__fd(prog);
	errno = 0;
	switch (bpf_program__type(prog)) {
	case BPF_PROG_TYPE_CGROUP_SOCK_ADDR:
	case BPF_PROG_TYPE_CGROUP_SOCKOPT:
	case BPF_PROG_TYPE_SOCK_OPS:
	case BPF_PROG_TYPE_CGROUP_SOCK:
	case BPF_PROG_TYPE_CGROUP_SKB:
	case BPF_PROG_TYPE_CGROUP_SYSCTL:
	case BPF_PROG_TYPE_CGROUP_DEVICE:
		return keep_link(bpf_program__attach_cgroup(prog, env->cgroup_fd), out, "cgroup link", how, how_len);
	case BPF_PROG_TYPE_SK_LOOKUP:
		return keep_link(bpf_program__attach_netns(prog, env->netns_fd), out, "netns link", how, how_len);
	case BPF_PROG_TYPE_XDP:
		return keep_link(bpf_program__attach_xdp(prog, env->ifindex), out, "xdp link", how, how_len);
	case BPF_PROG_TYPE_SCHED_CLS:
		return attach_tc(prog, env, out, how, how_len, probe);
	case BPF_PROG_TYPE_SK_MSG:
		return attach_sk_msg(obj, out, BPF_SK_MSG_VERDICT, how, how_len, probe);
	case BPF_PROG_TYPE_SK_SKB:
		return attach_sk_msg(obj, out, bpf_program__expected_attach_type(prog), how, how_len, probe);
	default:
		return keep_link(bpf_program__attach(prog), out, "auto attach", how, how_len);
	}
}

void detach_program(struct attachment *a)
{
	if (a->link)
		bpf_link__destroy(a->link);
	if (a->link_fd >= 0)
		close(a->link_fd);
	if (a->prog_attach_target >= 0)
		bpf_prog_detach2(a->prog_fd, a->prog_attach_target, a->prog_attach_type);
	if (a->tc_clsact) {
		a->tc_opts.prog_fd = 0;
		a->tc_opts.flags = 0;
		a->tc_opts.prog_id = 0;
		bpf_tc_detach(&a->tc_hook, &a->tc_opts);
		/* Removing clsact takes both directions with it; the veth is ours alone. */
		a->tc_hook.attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS;
		bpf_tc_hook_destroy(&a->tc_hook);
	}
	memset(a, 0, sizeof(*a));
	a->link_fd = -1;
	a->prog_attach_target = -1;
}

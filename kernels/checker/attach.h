/* Attach a loaded program the way ambpf's loader would on the running kernel, and undo it. */
#ifndef AMBPF_CHECKER_ATTACH_H
#define AMBPF_CHECKER_ATTACH_H

#include <stdbool.h>
#include <bpf/libbpf.h>

/* Where programs go: a cgroup we made, a veth we made, our own netns. Never the host's root. */
struct attach_env {
	int cgroup_fd;
	int netns_fd;
	int ifindex;
};

struct attachment {
	struct bpf_link *link;	/* libbpf link (cgroup, netns, xdp, tracing) */
	int link_fd;		/* raw bpf_link_create fd (tcx) */
	int prog_attach_target; /* prog_attach target (sockhash) or -1 */
	int prog_attach_type;
	int prog_fd;
	bool tc_clsact; /* attached through a clsact filter */
	struct bpf_tc_hook tc_hook;
	struct bpf_tc_opts tc_opts;
};

/* Feature facts learned while attaching, reported as probe rows (they are not pass/fail). */
struct attach_probe {
	const char *name; /* "tcx link", "sk_msg link", ... or NULL */
	bool supported;
	int err;
};

/* Returns 0 and fills `how` (e.g. "tcx link", "clsact", "prog_attach sockhash") or -errno. */
int attach_program(struct bpf_program *prog, struct bpf_object *obj, const struct attach_env *env,
		   struct attachment *out, char *how, size_t how_len, struct attach_probe *probe);
void detach_program(struct attachment *a);

#endif /* AMBPF_CHECKER_ATTACH_H */

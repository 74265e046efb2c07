/* Functional checks, one suite per datapath topology: the suite's objects loaded together (maps
 * shared by name, as the loader pins them), every program of theirs that loaded on its own attached,
 * the maps filled (fill.c), then real sockets in the test cgroup (checks.c). The node topology's
 * objects and ambpf_inpod never run together: on a node only one of them is active. */
#ifndef AMBPF_CHECKER_FUNC_H
#define AMBPF_CHECKER_FUNC_H

#include <stdbool.h>
#include "attach.h"

#define MAX_PROGS 128

struct object_info {
	const char *path;
	char label[128];
	char *names[MAX_PROGS];
	bool loaded[MAX_PROGS]; /* passed load + attach on its own */
	int n;
};

/* Runs every suite; returns the number of failed checks. */
int run_functional_checks(struct object_info *objs, int nobj, const char *cgroup_path, const struct attach_env *env);

#endif /* AMBPF_CHECKER_FUNC_H */

/* Functional checks: the object's programs loaded together, attached, maps filled (fill.c), real
 * sockets in the test cgroup. */
#ifndef AMBPF_CHECKER_FUNC_H
#define AMBPF_CHECKER_FUNC_H

#include <stdbool.h>
#include "attach.h"

void func_set_cgroup_path(const char *path);

/* Returns the number of failed checks; programs with loaded[i] false are left out (already failed). */
int run_functional_checks(const char *path, const char *label, const char *const *names, const bool *loaded,
			  int n, const struct attach_env *env);

#endif /* AMBPF_CHECKER_FUNC_H */

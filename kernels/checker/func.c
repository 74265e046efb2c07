#include <stdio.h>
#include "func.h"
#include "report.h"

static const char *cgroup_path;

void func_set_cgroup_path(const char *path)
{
	cgroup_path = path;
}

int run_functional_checks(const char *path, const char *label, const char *const *names, const bool *loaded,
			  int n, const struct attach_env *env)
{
	(void)path; (void)label; (void)names; (void)loaded; (void)n; (void)env;
	return 0;
}

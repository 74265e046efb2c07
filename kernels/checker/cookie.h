/* The calling process's netns cookie, on every kernel from 5.10: SO_NETNS_COOKIE only came in 5.14,
 * but a cgroup/connect4 program can read bpf_get_netns_cookie() since 5.7. */
#ifndef AMBPF_CHECKER_COOKIE_H
#define AMBPF_CHECKER_COOKIE_H

#include <linux/types.h>

/* Must be called by a process inside the cgroup `cgroup_fd` names; returns 0 or -errno. */
int netns_cookie_of_self(int cgroup_fd, __u64 *cookie);

#endif /* AMBPF_CHECKER_COOKIE_H */

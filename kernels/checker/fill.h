/* The one place that knows ambpf's map layouts (bpf/include/ambpf.h, included directly so a changed
 * struct changes this code's compilation, not its silent meaning). */
#ifndef AMBPF_CHECKER_FILL_H
#define AMBPF_CHECKER_FILL_H

#include <linux/types.h>
#include <bpf/libbpf.h>

/* The functional checks' addresses (guest/check.sh puts them on lo and the veth). */
#define FILL_ZTUNNEL_IP  "198.18.0.1"  /* on lo: ztunnel's listeners */
#define FILL_POD_IP      "198.18.1.1"  /* on the veth: a local address that is not ztunnel's */
#define FILL_ORIG_DST_IP "198.18.5.5"  /* not assigned anywhere: only a redirect can reach it */
#define FILL_ORIG_DST_PORT 8080
#define FILL_TC_POD_IP   "198.18.1.2"  /* an ambient pod behind the veth (check.sh's neighbour entry) */
#define FILL_ZT_HOST_IF  "akc1"        /* stands for ztunnel's host-side veth: tc steers there */

/* Mark the caller's netns (by cookie) as an ambient pod, publish ztunnel, plain config. */
int fill_maps(struct bpf_map *const *maps, int nmaps, __u64 netns_cookie, char *err, size_t errlen);

/* Put a listener into ambpf_zt_listen's inbound slot (for sk_lookup). */
int fill_listener(struct bpf_map *const *maps, int nmaps, int listen_fd, char *err, size_t errlen);

/* Sum of one per-CPU counter in ambpf_stats; -1 when the map is absent. */
long long fill_stat(struct bpf_map *const *maps, int nmaps, unsigned int index);

#endif /* AMBPF_CHECKER_FILL_H */

/* The one place that knows ambpf's map layouts (bpf/include/ambpf.h, included directly so a changed
 * struct changes this code's compilation, not its silent meaning). */
#ifndef AMBPF_CHECKER_FILL_H
#define AMBPF_CHECKER_FILL_H

#include <linux/types.h>
#include <bpf/libbpf.h>

/* The functional checks' addresses (guest/check.sh puts them on lo and the veth). */
#define FILL_ZTUNNEL_IP	   "198.18.0.1" /* on lo: ztunnel's listeners */
#define FILL_POD_IP	   "198.18.1.1" /* on the veth: a local address that is not ztunnel's */
#define FILL_ORIG_DST_IP   "198.18.5.5" /* not assigned anywhere: only a redirect can reach it */
#define FILL_ORIG_DST_PORT 8080
#define FILL_TC_POD_IP	   "198.18.1.2" /* an ambient pod behind the veth (check.sh's neighbour entry) */
#define FILL_ZT_HOST_IF	   "akc1"	/* stands for ztunnel's host-side veth: tc steers there */
#define FILL_TC_IF	   "akc0"	/* the pod's host-side veth, where the tc program sits */
#define FILL_REMOTE_IP	   "198.18.9.9" /* a client elsewhere: the source of injected SYNs */
#define FILL_INPOD_ZT_IP   "127.0.0.1"	/* inpod: ztunnel's 15006/15008 (reached only through sk_lookup) */
#define FILL_INPOD_OUT_IP \
	"0.0.0.0" /* inpod: ztunnel's 15001, wildcard as ztunnel's [::]: connect4 sends
					 * the pod's connects to <pod IP>:15001 */
/* inpod: the client of ztunnel's spoofed inbound leg (assigned nowhere: ztunnel binds it with
 * IP_TRANSPARENT) and the app's port in the pod (leg.c). */
#define FILL_LEG_CLIENT_IP  "198.18.6.6"
#define FILL_LEG_CLIENT_IP6 "fd00:a3bf:6::6"
#define FILL_APP_PORT	    8181

/* inpod over IPv6 (check.sh puts them on akc0 and lo): the pod's IPv6 address, another local
 * address to connect from, an original destination assigned nowhere. */
#define FILL_POD_IP6	  "fd00:a3bf:1:1::1"
#define FILL_LOCAL_IP6	  "fd00:a3bf::1"
#define FILL_ORIG_DST_IP6 "fd00:a3bf:5::5"
/* node over IPv6 (node6.c): an ambient pod behind akc0 (check.sh's IPv6 neighbour), a client elsewhere. */
#define FILL_TC_POD_IP6	  "fd00:a3bf:1:1::2"
#define FILL_REMOTE_IP6	  "fd00:a3bf:9::9"

/* Which datapath the maps are filled for. */
enum fill_topology {
	FILL_NODE,  /* plain config; the tc pod (FILL_TC_POD_IP) is in ambpf_pods */
	FILL_INPOD, /* AMBPF_CFG_INPOD; the pod itself (FILL_POD_IP) is in ambpf_pods, for sk_lookup */
};

/* Mark the caller's netns (by cookie) as an ambient pod with FILL_POD_IP, publish ztunnel (as
 * FILL_ZTUNNEL_IP in another netns), config for the topology. */
int fill_maps(struct bpf_map *const *maps, int nmaps, enum fill_topology topo, __u64 netns_cookie, char *err,
	      size_t errlen);

/* Put a listener into ambpf_zt_listen's inbound slot (for sk_lookup). */
int fill_listener(struct bpf_map *const *maps, int nmaps, int listen_fd, char *err, size_t errlen);

/* Tag ztunnel's listeners in a pod's netns the way the inpod loader does (src/bpf/datapath-inpod.ts):
 * the 15001 listener gets ambpf_inpod_sk with only the pod's netns cookie (cloned by the kernel to
 * every accepted socket), the 15006/15008 listeners go into ambpf_inpod_listen under {FILL_POD_IP,
 * slot}. */
int fill_inpod_listeners(struct bpf_map *const *maps, int nmaps, __u64 netns_cookie, int outbound_fd, int inbound_fd,
			 int hbone_fd, char *err, size_t errlen);

/* The pod's IPv6 address (FILL_POD_IP6) in ambpf_pods and ambpf_netns.pod_ip6, and ztunnel's IPv6
 * 15006 listener in ambpf_inpod_listen under it (after fill_maps for FILL_INPOD). */
int fill_inpod6(struct bpf_map *const *maps, int nmaps, __u64 netns_cookie, int inbound6_fd, char *err, size_t errlen);

/* The pod's netns with AMBPF_POD_LOCAL_ROUTE (its other flags and addresses kept), and `listen_fd` as
 * ztunnel's 15001 under {FILL_POD_IP, AMBPF_LISTENER_OUTBOUND}, tagged as fill_inpod_listeners tags. */
int fill_inpod_keep(struct bpf_map *const *maps, int nmaps, __u64 netns_cookie, int listen_fd, char *err,
		    size_t errlen);

/* The node topology's IPv6 pod (FILL_TC_POD_IP6) in ambpf_pods, ambient (after fill_maps for FILL_NODE). */
int fill_node6(struct bpf_map *const *maps, int nmaps, char *err, size_t errlen);

/* Sum of one per-CPU counter in ambpf_stats; -1 when the map is absent. */
long long fill_stat(struct bpf_map *const *maps, int nmaps, unsigned int index);

#endif /* AMBPF_CHECKER_FILL_H */

#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "ambpf.h"
#include "fill.h"

static struct bpf_map *find(struct bpf_map *const *maps, int nmaps, const char *name)
{
	for (int i = 0; i < nmaps; i++)
		if (strcmp(bpf_map__name(maps[i]), name) == 0)
			return maps[i];
	return NULL;
}

static void v4mapped(__u32 out[4], const char *dotted)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = htonl(0xffff);
	inet_pton(AF_INET, dotted, &out[3]);
}

static int update(struct bpf_map *const *maps, int nmaps, const char *name, const void *key, const void *value,
		  char *err, size_t errlen)
{
	struct bpf_map *m = find(maps, nmaps, name);

	if (!m) {
		snprintf(err, errlen, "map %s not found in the objects", name);
		return -ENOENT;
	}
	if (bpf_map_update_elem(bpf_map__fd(m), key, value, BPF_ANY)) {
		int e = errno; /* before snprintf, which may change it */

		snprintf(err, errlen, "update of %s failed: %s", name, strerror(e));
		return -e;
	}
	return 0;
}

int fill_maps(struct bpf_map *const *maps, int nmaps, enum fill_topology topo, __u64 netns_cookie, char *err,
	      size_t errlen)
{
	struct ambpf_netns ns = {.flags = AMBPF_POD_AMBIENT};
	struct ambpf_ztunnel zt = {
		.port_out_host = AMBPF_PORT_OUTBOUND,
		.port_in_host = AMBPF_PORT_INBOUND,
		.port_hbone_host = AMBPF_PORT_HBONE,
		.port_dns_host = AMBPF_PORT_DNS,
		.mark = AMBPF_ZTUNNEL_MARK,
		.mark_mask = AMBPF_ZTUNNEL_MARK_MASK,
		.flags = AMBPF_ZT_READY,
	};
	struct ambpf_config cfg = {.flags = topo == FILL_INPOD ? AMBPF_CFG_INPOD : 0};
	struct ambpf_pod pod = {.flags = AMBPF_POD_AMBIENT};
	struct ambpf_ip pod_ip;
	__u32 zero = 0;
	int err_;

	v4mapped(ns.pod_ip, FILL_POD_IP);
	v4mapped(zt.ip, FILL_ZTUNNEL_IP);
	/* ztunnel "lives" in another netns: the client's connects must not look like ztunnel's own. */
	zt.netns_cookie = netns_cookie + 1;
	zt.host_ifindex = if_nametoindex(FILL_ZT_HOST_IF);
	v4mapped(pod_ip.addr, topo == FILL_INPOD ? FILL_POD_IP : FILL_TC_POD_IP);
	if ((err_ = update(maps, nmaps, "ambpf_pods", &pod_ip, &pod, err, errlen)) ||
	    (err_ = update(maps, nmaps, "ambpf_netns", &netns_cookie, &ns, err, errlen)) ||
	    (err_ = update(maps, nmaps, "ambpf_config", &zero, &cfg, err, errlen)) ||
	    (err_ = update(maps, nmaps, "ambpf_ztunnel", &zero, &zt, err, errlen)))
		return err_;
	return 0;
}

int fill_listener(struct bpf_map *const *maps, int nmaps, int listen_fd, char *err, size_t errlen)
{
	__u32 slot = AMBPF_LISTENER_INBOUND;
	__u64 fd = (__u64)listen_fd;

	return update(maps, nmaps, "ambpf_zt_listen", &slot, &fd, err, errlen);
}

int fill_inpod_listeners(struct bpf_map *const *maps, int nmaps, __u64 netns_cookie, int outbound_fd, int inbound_fd,
			 int hbone_fd, char *err, size_t errlen)
{
	struct ambpf_inpod_sk tag = {.netns_cookie = netns_cookie}; /* orig.family 0: not an app socket */
	struct ambpf_inpod_lkey in = {.slot = AMBPF_LISTENER_INBOUND}, hb = {.slot = AMBPF_LISTENER_HBONE};
	__u64 in_fd = (__u64)inbound_fd, hb_fd = (__u64)hbone_fd;
	int err_;

	v4mapped(in.pod_ip, FILL_POD_IP);
	v4mapped(hb.pod_ip, FILL_POD_IP);
	/* SK_STORAGE is keyed by a socket fd from user space. */
	if ((err_ = update(maps, nmaps, "ambpf_inpod_sk", &outbound_fd, &tag, err, errlen)) ||
	    (err_ = update(maps, nmaps, "ambpf_inpod_listen", &in, &in_fd, err, errlen)) ||
	    (err_ = update(maps, nmaps, "ambpf_inpod_listen", &hb, &hb_fd, err, errlen)))
		return err_;
	return 0;
}

int fill_inpod6(struct bpf_map *const *maps, int nmaps, __u64 netns_cookie, int inbound6_fd, char *err, size_t errlen)
{
	struct ambpf_netns ns = {.flags = AMBPF_POD_AMBIENT};
	struct ambpf_pod pod = {.flags = AMBPF_POD_AMBIENT};
	struct ambpf_inpod_lkey in = {.slot = AMBPF_LISTENER_INBOUND};
	struct ambpf_ip pod_ip;
	__u64 in_fd = (__u64)inbound6_fd;
	int err_;

	v4mapped(ns.pod_ip, FILL_POD_IP);
	inet_pton(AF_INET6, FILL_POD_IP6, ns.pod_ip6);
	inet_pton(AF_INET6, FILL_POD_IP6, pod_ip.addr);
	inet_pton(AF_INET6, FILL_POD_IP6, in.pod_ip);
	if ((err_ = update(maps, nmaps, "ambpf_pods", &pod_ip, &pod, err, errlen)) ||
	    (err_ = update(maps, nmaps, "ambpf_netns", &netns_cookie, &ns, err, errlen)) ||
	    (err_ = update(maps, nmaps, "ambpf_inpod_listen", &in, &in_fd, err, errlen)))
		return err_;
	return 0;
}

int fill_inpod_keep(struct bpf_map *const *maps, int nmaps, __u64 netns_cookie, int listen_fd, char *err, size_t errlen)
{
	struct bpf_map *netns = find(maps, nmaps, "ambpf_netns");
	struct ambpf_inpod_sk tag = {.netns_cookie = netns_cookie};
	struct ambpf_inpod_lkey out = {.slot = AMBPF_LISTENER_OUTBOUND};
	struct ambpf_netns ns;
	__u64 fd = (__u64)listen_fd;
	int err_;

	if (!netns || bpf_map_lookup_elem(bpf_map__fd(netns), &netns_cookie, &ns)) {
		snprintf(err, errlen, "the pod's ambpf_netns entry is missing");
		return -ENOENT;
	}
	ns.flags |= AMBPF_POD_LOCAL_ROUTE;
	v4mapped(out.pod_ip, FILL_POD_IP);
	if ((err_ = update(maps, nmaps, "ambpf_inpod_sk", &listen_fd, &tag, err, errlen)) ||
	    (err_ = update(maps, nmaps, "ambpf_inpod_listen", &out, &fd, err, errlen)) ||
	    (err_ = update(maps, nmaps, "ambpf_netns", &netns_cookie, &ns, err, errlen)))
		return err_;
	return 0;
}

int fill_node6(struct bpf_map *const *maps, int nmaps, char *err, size_t errlen)
{
	struct ambpf_pod pod = {.flags = AMBPF_POD_AMBIENT};
	struct ambpf_ip pod_ip;

	inet_pton(AF_INET6, FILL_TC_POD_IP6, pod_ip.addr);
	return update(maps, nmaps, "ambpf_pods", &pod_ip, &pod, err, errlen);
}

long long fill_stat(struct bpf_map *const *maps, int nmaps, unsigned int index)
{
	struct bpf_map *m = find(maps, nmaps, "ambpf_stats");
	int ncpu = libbpf_num_possible_cpus();
	long long sum = 0;
	__u64 *vals;

	if (!m || ncpu <= 0)
		return -1;
	vals = calloc((size_t)ncpu, sizeof(*vals));
	if (!vals)
		return -1;
	if (bpf_map_lookup_elem(bpf_map__fd(m), &index, vals) == 0)
		for (int i = 0; i < ncpu; i++)
			sum += (long long)vals[i];
	free(vals);
	return sum;
}

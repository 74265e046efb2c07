/* The socket checks both topologies share, run by the functional suites (func.c) inside the test
 * cgroup with their objects loaded and attached and their maps filled. */
#ifndef AMBPF_CHECKER_CHECKS_H
#define AMBPF_CHECKER_CHECKS_H

#include <stdbool.h>
#include <linux/types.h>
#include <bpf/libbpf.h>

/* What a suite's checks get: its loaded set's maps, what got attached, who the test process is. */
struct func_ctx {
	const char *label; /* RESULT object column: the suite ("node", "inpod") */
	struct bpf_map *const *maps;
	int nmaps;
	__u64 netns_cookie; /* the test process's netns: the "pod" */
	bool has_sk_lookup; /* an sk_lookup program is attached to this netns */
	bool has_tc;	    /* a tc program is attached to the veth */
};

/* A connect from the test cgroup to FILL_ORIG_DST lands on the 15001 listener `lfd` (bound to
 * listen_ip); the client's getpeername and the accepted socket's SO_ORIGINAL_DST give the original.
 * Reports three checks; returns the number that failed. */
int check_outbound(const struct func_ctx *c, int lfd, const char *listen_ip);

/* An AF_INET6 socket connecting to a v4-mapped FILL_ORIG_DST lands on `lfd` too (connect6), and
 * getpeername6 / SO_ORIGINAL_DST give the original (called by check_outbound). 1 when it failed. */
int check_connect6_mapped(const struct func_ctx *c, int lfd);

/* Connect, write, close, and only then accept on `lfd`: SO_ORIGINAL_DST still gives the original
 * (called by check_outbound). Returns 1 when it failed. */
int check_orig_after_close(const struct func_ctx *c, int lfd);

/* getsockopt(SO_PEERSEC) with a 16 KiB buffer gets the kernel's answer, not EFAULT (called by
 * check_outbound, so every suite with a getsockopt program runs it). Returns 1 when it failed. */
int check_large_getsockopt(const struct func_ctx *c);

/* A connection from another local address to FILL_POD_IP:dport, which nobody listens on, is
 * accepted on `lfd` (by sk_lookup alone) with the original destination as its local address.
 * Reports the check `name`; returns 1 when it failed. */
int check_sk_lookup(const struct func_ctx *c, const char *name, int dport, int lfd, bool marked);

/* The same over IPv6: from FILL_LOCAL_IP6 to [FILL_POD_IP6]:dport, accepted on `lfd` with the original
 * destination as its local address. */
int check_sk_lookup6(const struct func_ctx *c, const char *name, int dport, int lfd, bool marked);

#endif /* AMBPF_CHECKER_CHECKS_H */

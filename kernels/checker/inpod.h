/* The inpod topology's functional checks (bpf/ambpf_inpod.bpf.c): ztunnel's listeners live in the
 * pod's own netns, here the test's netns. */
#ifndef AMBPF_CHECKER_INPOD_H
#define AMBPF_CHECKER_INPOD_H

#include "checks.h"

#define INPOD_OBJECT "ambpf_inpod"

/* Fills the maps for inpod, opens and tags the three listeners, runs the checks; returns failures. */
int inpod_checks(const struct func_ctx *c);

/* The same over native IPv6 (inpod6.c): connect6 to [pod IPv6]:15001, IP6T_SO_ORIGINAL_DST, sk_lookup
 * of IPv6 inbound; returns failures. */
int inpod6_checks(const struct func_ctx *c);

/* ztunnel's spoofed inbound leg of `family` (leg.c): marked 0x1000 at connect4/6, let through to the
 * app's listener by sk_lookup, not to ztunnel's 15006 `inbound_fd`; returns failures. */
int inpod_leg_checks(const struct func_ctx *c, int inbound_fd, int family);

/* A kept destination (keep.c): with AMBPF_POD_LOCAL_ROUTE, a connect keeps its destination and reaches
 * a transparent 15001 over lo (5.17+), or is refused (before); returns failures. Sets the flag: last. */
int inpod_keep_checks(const struct func_ctx *c);

#endif /* AMBPF_CHECKER_INPOD_H */

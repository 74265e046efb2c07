#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "ambpf.h"
#include "dns.h"
#include "fill.h"
#include "inpod.h"
#include "report.h"
#include "sockets.h"

#define CHECK_15006 "sk_lookup assigns to the 15006 listener"
#define CHECK_15008 "sk_lookup assigns dport 15008 to the 15008 listener"

/* 15001 on the wildcard address, as ztunnel's (connect4 sends the pod's connects to its own IP); 15006
 * and 15008 on 127.0.0.1: a connection to the pod's IP can reach them only through sk_lookup, so a
 * missed assignment fails instead of landing there by the ordinary lookup. */
int inpod_checks(const struct func_ctx *c)
{
	int out = sock_listen(FILL_INPOD_OUT_IP, AMBPF_PORT_OUTBOUND);
	int in = sock_listen(FILL_INPOD_ZT_IP, AMBPF_PORT_INBOUND);
	int hb = sock_listen(FILL_INPOD_ZT_IP, AMBPF_PORT_HBONE);
	int failures = 0;
	char err[256];

	if (out < 0 || in < 0 || hb < 0) {
		report(c->label, "setup", "func", "fail", "ztunnel's listeners on %s/%s: %s", FILL_INPOD_OUT_IP,
		       FILL_INPOD_ZT_IP, strerror(errno));
		failures = 1;
		goto out;
	}
	/* Before any connection: the kernel clones the tag only to sockets accepted after it is set. */
	if (fill_maps(c->maps, c->nmaps, FILL_INPOD, c->netns_cookie, err, sizeof(err)) ||
	    fill_inpod_listeners(c->maps, c->nmaps, c->netns_cookie, out, in, hb, err, sizeof(err))) {
		report(c->label, "setup", "func", "fail", "filling maps: %s", err);
		failures = 1;
		goto out;
	}
	failures += check_outbound(c, out, FILL_POD_IP);
	if (c->has_sk_lookup) {
		failures += check_sk_lookup(c, CHECK_15006, 80, in, false);
		failures += check_sk_lookup(c, CHECK_15008, AMBPF_PORT_HBONE, hb, false);
	} else {
		report(c->label, CHECK_15006, "func", "fail",
		       "ambpf_inpod_lookup is not attached (see its load/attach row)");
		report(c->label, CHECK_15008, "func", "fail",
		       "ambpf_inpod_lookup is not attached (see its load/attach row)");
		failures += 2;
	}
	failures += inpod_leg_checks(c, in, AF_INET);
	failures += inpod_dns_checks(c);
	failures += inpod6_checks(c);
	failures += inpod_keep_checks(c);
out:
	if (out >= 0)
		close(out);
	if (in >= 0)
		close(in);
	if (hb >= 0)
		close(hb);
	return failures;
}

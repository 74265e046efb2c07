// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ambpf_skmsg.bpf.c: the same-node splice. Attached to ambpf_sockhash (BPF_SK_MSG_VERDICT); runs on
 * every sendmsg of a pod <-> ztunnel socket that sockops put in the sockhash and hands the data
 * straight to the peer socket's receive queue, skipping TCP/IP and the veth.
 *
 * When to splice. Measured on this machine (docs/kernel-facts.md#measured-costs, iperf3 through a pair): 1.6x at
 * 128 KiB writes, 1.56x at 16 KiB, but 0.47x at 1 KiB: a spliced sendmsg is one message on the peer's
 * queue, so TCP's coalescing of small writes into 64 KiB segments is lost and every write costs a
 * wakeup. The choice cannot be made per write: data passed to TCP may still be in flight when a later
 * write is spliced, and the receiver reads its splice queue first, so switching mid-stream would
 * reorder bytes. So the decision is made once per direction of a connection, on its first write,
 * and then sticks (ambpf_pair.splice_fwd / splice_rev):
 *   - splice when the config enables it and the first write is at least splice_min_bytes
 *     (bulk senders write big buffers from the start; request/response traffic starts small);
 *   - pass to TCP otherwise, and also when the peer is not in the sockhash yet (ztunnel's side is
 *     inserted one ACK later than the client's), so a miss never turns into a switch later.
 * A spliced direction whose peer disappears (peer closed) falls back to SK_PASS: never SK_DROP, which
 * loses data.
 *
 * Measured with this rule (iperf3 -t 2 through connect4 -> ztunnel:15001 between two netns + cgroups,
 * 2 rounds, on a machine shared with other load, so +-50% noise; Gbit/s):
 *                        no splice     splice>=16K    splice always
 *   -l 1K                0.30-1.04     0.35-0.67      0.62-1.08
 *   -l 1K -R             0.60-2.58     0.39-1.25      0.96-1.25
 *   -l 128K              7.9-12.3      5.5-6.6 (*)    18.5-29.8
 *   -l 128K -R           6.1-15.7      8.4-18.6       13.8-15.7
 * (*) not spliced: iperf3's first write on a data connection is its 37-byte cookie, so the rule
 * decides "pass" for the whole test; with -R the server's first write is bulk and it is spliced.
 * The rule never splices a direction that starts with small writes (no loss there by construction);
 * its cost is that bulk streams starting with a small header are not spliced either. Config flag
 * AMBPF_CFG_SPLICE off disables the splice entirely (sockets are then not even put in the sockhash).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "include/ambpf.h"
#include "include/ambpf_maps.h"
#include "include/ambpf_lib.h"

SEC("sk_msg")
int ambpf_skmsg(struct sk_msg_md *msg)
{
	struct ambpf_tuple own = {}, peer = {};
	struct ambpf_config *cfg;
	struct ambpf_pair *pair;
	__u8 *state;
	__u32 size = msg->size;

	CTX_TUPLE(msg, &own);
	tuple_reverse(&peer, &own);

	/* The pair entry is keyed by the client's view: the client finds it under its own tuple,
	 * ztunnel's side under the reversed one. */
	pair = bpf_map_lookup_elem(&ambpf_pair_dst, &own);
	if (pair) {
		state = &pair->splice_fwd;
	} else {
		pair = bpf_map_lookup_elem(&ambpf_pair_dst, &peer);
		if (!pair) {
			stat_inc(AMBPF_STAT_SKMSG_PASSED);
			return SK_PASS;
		}
		state = &pair->splice_rev;
	}

	if (*state == AMBPF_SPLICE_OFF) {
		stat_inc(AMBPF_STAT_SKMSG_PASSED);
		return SK_PASS;
	}
	if (*state == AMBPF_SPLICE_UNDECIDED) {
		cfg = config_get();
		if (!cfg || !(cfg->flags & AMBPF_CFG_SPLICE) || size < cfg->splice_min_bytes) {
			*state = AMBPF_SPLICE_OFF;
			stat_inc(AMBPF_STAT_SKMSG_PASSED);
			return SK_PASS;
		}
	}
	if (bpf_msg_redirect_hash(msg, &ambpf_sockhash, &peer, BPF_F_INGRESS) != SK_PASS) {
		/* Peer not (or no longer) in the sockhash. Undecided: decide OFF for good. Already ON:
		 * the peer closed; TCP delivers nothing more anyway. Either way never SK_DROP. */
		if (*state == AMBPF_SPLICE_UNDECIDED)
			*state = AMBPF_SPLICE_OFF;
		stat_inc(AMBPF_STAT_SKMSG_MISS);
		return SK_PASS;
	}
	*state = AMBPF_SPLICE_ON;
	stat_inc(AMBPF_STAT_SKMSG_SPLICED);
	stat_add(AMBPF_STAT_SKMSG_SPLICED_BYTES, size);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

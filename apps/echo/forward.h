/* SPDX-License-Identifier: MIT */
/*
 * keel-echo --forward: every length-prefixed frame received on a connection is handed,
 * without copying, to the next shard ((id + 1) % shards), which hands it back to the
 * connection's shard, where it is echoed. A test bed for keel_slice_export (docs/net.md,
 * "Forwarding received frames"); the net tests drive the same code.
 */
#ifndef KEEL_ECHO_FORWARD_H
#define KEEL_ECHO_FORWARD_H

#include <keel/keel.h>
#include <stdint.h>

/** Connection callbacks of the forwarding echo (on_open frames the connection). */
extern const struct keel_conn_ops echo_fwd_ops;

/** Counters of one shard (relaxed atomics inside: any thread may read them). */
struct echo_fwd_stats {
	uint64_t frames_in;      /* whole frames received here */
	uint64_t frames_relayed; /* frames of another shard's connections handed back */
	uint64_t frames_out;     /* frames queued on their connection after the round trip */
	uint64_t frames_dropped; /* not echoed: their connection closed or failed (put) */
	uint64_t frames_cut;     /* a frame's start a half-close cut short (not in frames_in:
				  * never whole; counted in errors too) */
	uint64_t frames_waited;  /* met a full queue to the next shard and waited for room */
	uint64_t errors;         /* a hand-off or send failed (the connection is aborted);
				  * not a stop's refusal (-ESHUTDOWN): its frames are dropped */
	uint64_t conns_live;     /* connection slots in use */
	uint64_t away_peak;      /* the most payload bytes one connection had away at once */
	uint64_t away_holds;     /* times a connection's reading paused for its bytes away */
	uint64_t eofs_held;      /* half-closes whose close waited for frames away */
};

/** Shard @shard's counters. Context: any thread. */
void echo_fwd_stats(unsigned shard, struct echo_fwd_stats *out);

/** Free every shard's tables. Context: after the runtime was joined. */
void echo_fwd_fini(void);

#endif

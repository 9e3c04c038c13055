/* SPDX-License-Identifier: MIT */
/*
 * ZCRX (zero-copy receive) set-up state of a shard: whether its interface queue is
 * registered, or why it fell back to the copy path. docs/net.md, "ZCRX".
 */
#ifndef KEEL_ZCRX_H
#define KEEL_ZCRX_H

#include <keel/common.h>
#include <keel/runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** What a shard's ZCRX set-up decided. */
enum keel_zcrx_state {
	KEEL_ZCRX_NONE = 0,     /* --zcrx off, or the shard has no rx queue: nothing tried */
	KEEL_ZCRX_ON = 1,       /* the interface queue is registered on the shard's ring */
	KEEL_ZCRX_FALLBACK = 2, /* --zcrx auto and the set-up failed: the copy path (err why) */
};

/** A shard's ZCRX state (keel_zcrx_stats()). */
struct keel_zcrx_stats {
	enum keel_zcrx_state state;
	int err;             /* FALLBACK: the positive errno of the failure (kernel's or ours) */
	int rxq;             /* the rx queue asked for, -1 none */
	uint32_t zcrx_id;    /* ON: the kernel's id of the interface queue */
	uint64_t area_bytes; /* ON: bytes of receive area registered */
	uint32_t rq_entries; /* ON: refill ring entries */
	/* The receive path (ON). */
	uint64_t zc_bytes;         /* payload bytes received into the area (RECV_ZC); the kernel's
				    * own copies into area buffers, of payload that did not arrive
				    * in the queue's buffers, included: a completion does not say */
	uint64_t zc_frags;         /* RECV_ZC completions with payload: area fragments handed out */
	uint64_t copy_bytes;       /* bytes received through the copy path instead: FALLBACK, every
				    * byte; ON, those of connections that do not use RECV_ZC (Unix,
				    * outbound, conn_fallbacks). Connections only: UDP datagrams,
				    * which RECV_ZC cannot receive, are not counted */
	uint64_t refills;          /* refill entries written (fragments given back to the kernel) */
	uint64_t refill_publishes; /* tail publishes (store-release): at most one per loop pass */
	uint32_t
		refills_pending; /* fragments put while the refill ring was full, not yet written */
	uint32_t held;           /* area slices handed out and not yet put */
	uint64_t refills_lost;   /* fragments that could not be queued (out of memory) */
	uint64_t frames;         /* framer frames made of area slices ... */
	uint64_t frame_frags;    /* ... the fragments they held in all ... */
	uint64_t frame_frags_max; /* ... and the most in one frame (fragments per message) */
	uint64_t conn_fallbacks;  /* connections whose RECV_ZC the kernel refused as not TCP
				   * (EPROTONOSUPPORT), moved to the copy path */
	uint64_t cq_full_rearms;  /* RECV_ZCs ended by a full CQ (ENOSPC) and armed again */
	uint64_t nomem_waits;     /* RECV_ZCs ended for want of a free area buffer (ENOMEM):
				   * armed again once a slice was returned or after 10 ms (or
				   * aborted: nomem_aborts) */
	uint64_t misrouted;       /* connections aborted because their RECV_ZC failed with
				   * EFAULT: their packets arrive in another rx queue (a
				   * steering mistake; no receive of this shard can read them) */
	uint32_t held_pages;      /* area pages with a slice handed out and not yet put (several
				   * small fragments can share one): over three quarters of the
				   * area's pages, held slices are copied out (docs/zcrx.md) */
	uint64_t nomem_aborts;    /* connections aborted (ENOMEM) because their RECV_ZC kept
				   * finding no free area buffer with no slice held, about 1 s:
				   * their packets arrive on a queue without ZCRX and are copied,
				   * and the idle ZCRX queue gives no buffer back (steering) */
	uint64_t frags_refused;   /* RECV_ZC completions refused for an offset outside the area
				   * (an ABI keel does not know; the connection is aborted): in
				   * neither zc_frags nor refills, their buffers are not returned */
};

/**
 * The ZCRX state of shard @sh (set when its network state was created: the first listener,
 * connect or UDP endpoint).
 * Context: @sh's own thread.
 * Returns: 0 and *out; -EINVAL (NULL, or not the calling shard), -ENOENT (the shard has no
 * network state yet).
 */
KEEL_API int keel_zcrx_stats(const struct keel_shard *sh, struct keel_zcrx_stats *out);

/**
 * Can ZCRX work on @iface rx queue @rxq? The same checks and IORING_REGISTER_ZCRX_IFQ a
 * shard makes at start-up with the default --zcrx-area and --zcrx-rq-entries (a larger area
 * is checked at start-up only), on a scratch ring of the calling thread that is closed at
 * once (keel-topo --check --zcrx). On a capable NIC the kernel restarts the queue when an
 * interface queue is bound and again when it goes: a short gap in that queue's traffic.
 * The kernel lets the queue go after the scratch ring's close, from a work queue of its
 * own: a registration of the same queue made just after the probe returns (a runtime
 * started at once) can still get EEXIST for a moment.
 * Returns: 0 (registered and released; @why says so); -errno with the meaning and the fix
 * in @why (at most @len bytes, terminated): the messages of a --zcrx on start-up.
 * Context: any thread but a shard's (the scratch ring is its own).
 */
KEEL_API int keel_zcrx_probe(const char *iface, int rxq, char *why, size_t len);

/** The name of a ZCRX state: "none", "on" or "fallback". */
KEEL_API const char *keel_zcrx_state_name(enum keel_zcrx_state s);

#ifdef __cplusplus
}
#endif

#endif

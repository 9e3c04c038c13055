/* SPDX-License-Identifier: MIT */
/* Private to net/: ZCRX interface-queue set-up on a shard's ring (zcrx.c). */
#ifndef KEEL_NET_ZCRX_H
#define KEEL_NET_ZCRX_H

#include <keel/compat.h>
#include <keel/zcrx.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct net_shard;

/* A shard's interface queue: the area the NIC writes payloads into and the refill ring
 * through which the shard hands consumed buffers back. */
struct net_zcrx {
	enum keel_zcrx_state state;
	int err; /* positive errno of a fallback */
	int rxq;
	char iface[32];
	unsigned shard;
	bool claimed; /* holds (iface, rxq) in the process's claim table */
	void *area;   /* page-aligned, area_len bytes, first touched on the shard's CPU */
	size_t area_len;
	void *region; /* the refill ring's user region */
	size_t region_len;
	uint64_t area_token; /* rq_area_token: area id << 48, or'ed into every refill entry */
	uint32_t id;         /* zcrx_id */
	uint32_t rq_entries, rq_mask;
	uint32_t *rq_head, *rq_tail; /* in the region, at the kernel's offsets */
	struct keel_zcrx_rqe *rqes;
};

/* Set up ZCRX for the calling shard by its runtime's options: nothing when --zcrx off or the
 * shard has no rx queue; else claim (iface, queue), allocate, register. On failure with
 * --zcrx on, log the reason and the fix and return -errno; with auto, log one INFO line
 * and return 0 with the fallback recorded. ns->zcrx is set in every case but an error. */
int keel__zcrx_setup(struct net_shard *ns);
/* Release what keel__zcrx_setup() made (the kernel drops the interface queue with the ring). */
void keel__zcrx_fini(struct net_shard *ns);

/* The message for a set-up failure -@err on @iface queue @rxq: what the errno means there
 * and the fix. Writes at most @len bytes to @buf (always terminated); returns @buf. */
const char *keel__zcrx_reason(int err, const char *iface, int rxq, char *buf, size_t len);

/* Claim (iface, rxq) for @shard in the process-wide table: 0, or -EEXIST with the owner in
 * *owner (one queue, one shard). keel__zcrx_unclaim() gives it back. */
int keel__zcrx_claim(const char *iface, int rxq, unsigned shard, unsigned *owner);
void keel__zcrx_unclaim(const char *iface, int rxq);

/* IORING_REGISTER_ZCRX_IFQ calls made by this process (tests: refusals made before the kernel
 * was asked leave it unchanged). */
extern _Atomic unsigned keel__zcrx_register_calls;

#endif

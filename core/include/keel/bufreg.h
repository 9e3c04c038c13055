/* SPDX-License-Identifier: MIT */
/*
 * Buffers on the shard's ring: each shard's allocator regions are the ring's fixed
 * buffers (a sparse table, slot i = region i), registered lazily the first time a buffer
 * of a region is used for I/O. So any buffer of this shard can be sent with SEND_ZC +
 * IORING_RECVSEND_FIXED_BUF, and its (index, offset) is O(1).
 *
 * When registration is unavailable (the reg_buffers feature off, or RLIMIT_MEMLOCK too low
 * without CAP_IPC_LOCK), the shard runs with unregistered buffers: keel_buf_fixed() says
 * so and keel_prep_send_buf() prepares a plain send.
 */
#ifndef KEEL_BUFREG_H
#define KEEL_BUFREG_H

#include <keel/alloc.h>
#include <keel/buf.h>
#include <keel/common.h>
#include <keel/ring.h>
#include <stdbool.h>
#include <stdint.h>

/**
 * This shard's allocator (regions, buffers, general arena).
 * Returns: the allocator, owned by the shard until it ends.
 * Context: a shard.
 */
KEEL_API struct keel_alloc *keel_shard_alloc(void);

/**
 * The fixed buffer of @s on this shard's ring: *index is the slot, *offset the distance of
 * s->data from the slot's base. The slot is registered on first use (one region, bounded
 * time); later calls are O(1).
 * Returns: 0; -EXDEV for a buffer of another shard (its region is in that shard's table:
 * send it plain); -ENOENT for external memory (keel_buf_wrap); -EOPNOTSUPP when this shard
 * runs with unregistered buffers; -ENOMEM when this region could not be registered
 * (RLIMIT_MEMLOCK; logged once); -ERANGE past the table.
 * Context: a shard, holding @s.
 */
KEEL_API int keel_buf_fixed(const struct keel_slice *s, unsigned *index, uint64_t *offset);

/**
 * Prepare @sqe to send @s on socket @fd: SEND_ZC with the fixed buffer when keel_buf_fixed()
 * succeeds (two CQEs: the result with IORING_CQE_F_MORE, then the notification with
 * IORING_CQE_F_NOTIF, after which the buffer may be put), else a plain send (one CQE).
 * Ownership: @s must stay referenced until the last CQE.
 * Returns: 1 for SEND_ZC fixed, 0 for a plain send.
 * Context: a shard, holding @s.
 */
KEEL_API int keel_prep_send_buf(struct io_uring_sqe *sqe, int fd, const struct keel_slice *s,
				int msg_flags);

/** True when this shard registers its regions with its ring. Context: a shard. */
KEEL_API bool keel_shard_bufs_registered(void);

#endif

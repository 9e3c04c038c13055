/* SPDX-License-Identifier: MIT */
/*
 * Raw ring access: the shard's io_uring, for operations keel has no helper for. This is
 * the one public header that exposes liburing and the kernel's io_uring ABI
 * (keel/compat.h); keel/keel.h does not include it, so an app that does not ask for raw
 * access never sees them. Include it explicitly: #include <keel/ring.h>.
 *
 * An operation is a struct keel_op embedded in the caller's own object (a connection, a
 * request); its address is the SQE's user_data, so completing it allocates nothing. The
 * loop calls op->fn for every CQE of the operation; a CQE without IORING_CQE_F_MORE is
 * the operation's last.
 */
#ifndef KEEL_RING_H
#define KEEL_RING_H

#include <keel/buf.h>
#include <keel/common.h>
#include <keel/compat.h>
#include <keel/op.h>
#include <stdbool.h>
#include <stdint.h>

#include <liburing.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * An SQE on this shard's ring whose completion goes to @op. Prepare it with any
 * io_uring_prep_*() and then call keel_sqe_bind() (the prep helpers clear user_data).
 * The SQE is submitted by the loop at the end of the pass. If the SQ is full it is
 * submitted first, so this never fails while the ring works (and a chain being built
 * would be split: keel_sqe_reserve() first).
 * Do not set IOSQE_CQE_SKIP_SUCCESS: the loop counts operations by their last CQE.
 * Returns: the SQE, or NULL on a ring error (logged).
 * Context: a shard.
 */
KEEL_API struct io_uring_sqe *keel_sqe_get(void);

/**
 * Room for @n SQEs in a row: when the SQ has fewer free, what is queued is submitted now.
 * Call it before building a chain (IOSQE_IO_LINK, a read and its LINK_TIMEOUT): otherwise
 * a keel_sqe_get() in the middle of the chain may find the SQ full and submit the chain's
 * head alone (the kernel runs it without its link: the timeout then fails with -EINVAL,
 * and the read may wait for ever).
 * Returns: 0; -EINVAL for @n 0 or above the SQ's size (--ring-entries); the submit's error;
 * -EBUSY when the kernel left SQEs queued (it stops at one it cannot submit).
 * Context: a shard.
 */
KEEL_API int keel_sqe_reserve(unsigned n);

/** Point @sqe's completion at @op and count @op as in flight. Context: a shard. */
KEEL_API void keel_sqe_bind(struct io_uring_sqe *sqe, struct keel_op *op);

/** This shard's ring, for operations keel has no helper for. keel's network layer takes
 * provided-buffer groups 0, 1 and 2 of it (TCP, UDP, bulk receives): an application's own
 * buffer ring takes another group id. Context: a shard. */
KEEL_API struct io_uring *keel_shard_ring_get(void);

/**
 * The CQE whose completion callback is running: on a CQE32 ring (ZCRX) it is 32 bytes and
 * its second half carries what @res and @flags cannot (the RECV_ZC area offset).
 * Returns: the CQE, valid until the callback returns; NULL outside a completion callback.
 * Context: a shard, inside a struct keel_op's callback.
 */
KEEL_API const struct io_uring_cqe *keel_cqe_current(void);

/**
 * Prepare @sqe to send @s on socket @fd: SEND_ZC with the fixed buffer when keel_buf_fixed()
 * succeeds and the shard uses SEND_ZC (the send_zc feature: its policy and the kernel) (two
 * CQEs: the result with IORING_CQE_F_MORE, then the notification with IORING_CQE_F_NOTIF,
 * after which the buffer may be put), else a plain send (one CQE).
 * Ownership: @s must stay referenced until the last CQE.
 * Returns: 1 for SEND_ZC fixed, 0 for a plain send; with --feature reg_buffers=on,
 * -ENOMEM when @s's region could not be registered (@sqe is left unprepared: the caller
 * decides; no silent plain send).
 * Context: a shard, holding @s.
 */
KEEL_API int keel_prep_send_buf(struct io_uring_sqe *sqe, int fd, const struct keel_slice *s,
				int msg_flags);

#ifdef __cplusplus
}
#endif

#endif

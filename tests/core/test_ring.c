// SPDX-License-Identifier: MIT
/* keel_sqe_reserve: room for a chain of SQEs, so that keel_sqe_get() inside the chain does
 * not submit its head alone. */
#include <errno.h>
#include <keel/ring.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <liburing.h>

#include "helpers.h"

struct chain_test {
	struct keel_op nop, read, tmo;
	int fd[2];
	char buf[8];
	int read_res, tmo_res, nops, einval_zero, einval_big;
	int done;
};

static struct chain_test *C;

static void
chain_nop_cb(struct keel_op *op, int res, uint32_t flags)
{
	(void)op, (void)res, (void)flags;
	C->nops++;
}

static void
chain_read_cb(struct keel_op *op, int res, uint32_t flags)
{
	(void)op, (void)flags;
	C->read_res = res;
	if (++C->done == 2)
		keel_stop(0);
}

static void
chain_tmo_cb(struct keel_op *op, int res, uint32_t flags)
{
	(void)op, (void)flags;
	C->tmo_res = res;
	if (++C->done == 2)
		keel_stop(0);
}

static void
chain_start(void *app)
{
	static struct __kernel_timespec ts = { .tv_nsec = 10 * 1000 * 1000 };
	struct io_uring_sqe *sqe;

	C = app;
	C->einval_zero = keel_sqe_reserve(0);
	C->einval_big = keel_sqe_reserve(1u << 20);
	/* 7 of the SQ's 8 entries taken: a chain of 2 would not fit. */
	for (int i = 0; i < 7; i++) {
		sqe = keel_sqe_get();
		if (!SHARD_CHECK(sqe != NULL))
			return keel_stop(-EIO);
		io_uring_prep_nop(sqe);
		keel_sqe_bind(sqe, &C->nop);
	}
	if (!SHARD_CHECK_EQ(keel_sqe_reserve(2), 0))
		return keel_stop(-EIO);
	SHARD_CHECK(io_uring_sq_space_left(keel_shard_ring_get()) >= 2);
	/* A read of an empty pipe, linked to a 10 ms timeout: the timeout cancels it. */
	sqe = keel_sqe_get();
	io_uring_prep_read(sqe, C->fd[0], C->buf, sizeof(C->buf), 0);
	sqe->flags |= IOSQE_IO_LINK;
	keel_sqe_bind(sqe, &C->read);
	sqe = keel_sqe_get();
	io_uring_prep_link_timeout(sqe, &ts, 0);
	keel_sqe_bind(sqe, &C->tmo);
}

/* With room reserved, the read and its link timeout go to the kernel together: the timeout
 * fires (-ETIME) and cancels the read (-ECANCELED). Split, the read would run alone and
 * wait on the empty pipe, the timeout failing at once with -EINVAL. */
Test(core_ring, a_chain_built_after_a_reserve_stays_whole, .timeout = 30)
{
	struct keel_opts o = test_opts(1);
	struct chain_test t = { .nop.fn = chain_nop_cb,
				.read.fn = chain_read_cb,
				.tmo.fn = chain_tmo_cb };

	o.ring_entries = 8;
	o.cq_entries = 16;
	cr_assert_eq(pipe(t.fd), 0);
	cr_assert_eq(keel_run(&o, chain_start, &t), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(t.einval_zero, -EINVAL);
	cr_assert_eq(t.einval_big, -EINVAL);
	cr_assert_eq(t.nops, 7);
	cr_assert_eq(t.tmo_res, -ETIME, "the link timeout: %d (%s)", t.tmo_res,
		     strerror(-t.tmo_res));
	cr_assert_eq(t.read_res, -ECANCELED, "the read: %d", t.read_res);
	close(t.fd[0]);
	close(t.fd[1]);
}

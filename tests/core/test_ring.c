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

/* The loop's merge (core/loop.c, merge_arrivals): a pass that queued SQEs while arrivals
 * waited as task work runs those first and submits with the next pass, once. Two pipes
 * with reads armed (a pipe is pollable: an empty one's read waits on a poll, whose wake-up
 * queues the task work within the writer's write(), not on a worker thread); a NOP's completion
 * (the kick) writes to pipe A, which queues A's read completion as task work at once, and queues a
 * NOP (n). With the merge, A's completion is reaped before n is submitted; A's callback writes to
 * pipe B, and the pass that follows may not hold n back again: n is submitted, and completes at
 * once, before B's task work runs. The order of callbacks is thus "AnB"; "nAB" without the merge,
 * "ABn" with a merge that holds SQEs back for as long as arrivals come. */
struct merge_test {
	struct keel_op kick, a, b, n;
	int pa[2], pb[2];
	char buf[2][4];
	char order[8];
	unsigned len;
	unsigned flags; /* the ring's setup flags */
};

static struct merge_test *M;

static void
merge_note(char c)
{
	if (M->len < sizeof(M->order) - 1)
		M->order[M->len++] = c;
}

static void
merge_a_cb(struct keel_op *op, int res, uint32_t flags)
{
	(void)op, (void)flags;
	SHARD_CHECK_EQ(res, 1);
	merge_note('A');
	SHARD_CHECK_EQ(write(M->pb[1], "b", 1), 1);
}

static void
merge_b_cb(struct keel_op *op, int res, uint32_t flags)
{
	(void)op, (void)flags;
	SHARD_CHECK_EQ(res, 1);
	merge_note('B');
	keel_stop(0);
}

static void
merge_n_cb(struct keel_op *op, int res, uint32_t flags)
{
	(void)op, (void)res, (void)flags;
	merge_note('n');
}

static void
merge_kick_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct io_uring_sqe *sqe;

	(void)op, (void)res, (void)flags;
	M->flags = keel_shard_ring_get()->flags;
	SHARD_CHECK_EQ(write(M->pa[1], "a", 1), 1);
	sqe = keel_sqe_get();
	if (!SHARD_CHECK(sqe != NULL))
		return keel_stop(-EIO);
	io_uring_prep_nop(sqe);
	keel_sqe_bind(sqe, &M->n);
}

static void
merge_start(void *app)
{
	struct io_uring_sqe *sqe;

	M = app;
	/* The reads find the pipes empty and wait (armed polls); the kick, queued after them,
	 * completes in the same submission, so its callback runs once both are armed. */
	sqe = keel_sqe_get();
	io_uring_prep_read(sqe, M->pa[0], M->buf[0], sizeof(M->buf[0]), 0);
	keel_sqe_bind(sqe, &M->a);
	sqe = keel_sqe_get();
	io_uring_prep_read(sqe, M->pb[0], M->buf[1], sizeof(M->buf[1]), 0);
	keel_sqe_bind(sqe, &M->b);
	sqe = keel_sqe_get();
	io_uring_prep_nop(sqe);
	keel_sqe_bind(sqe, &M->kick);
}

static void
merge_run(unsigned idle_poll_us, enum keel_policy flag, const char *what)
{
	struct keel_opts o = test_opts(1);
	struct merge_test t = {
		.kick.fn = merge_kick_cb, .a.fn = merge_a_cb, .b.fn = merge_b_cb, .n.fn = merge_n_cb
	};
	struct keel_runtime *rt;
	struct keel_shard_stats st;
	int r;

	o.idle_poll_us = idle_poll_us;
	o.features[KEEL_FEAT_TASKRUN_FLAG] = flag;
	cr_assert_eq(pipe(t.pa), 0);
	cr_assert_eq(pipe(t.pb), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, merge_start, &t), 0);
	r = keel_runtime_join(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(keel_runtime_stats(rt, 0, &st), 0);
	keel_runtime_destroy(rt);
	for (int i = 0; i < 2; i++) {
		close(t.pa[i]);
		close(t.pb[i]);
	}
	/* Without DEFER_TASKRUN (COOP_TASKRUN: Linux 5.19-6.0, or defer_taskrun=off), the read's
	 * task work runs as the write returns, so its completion is reaped in the kick's pass
	 * ("ABn" whatever the loop does); without the flag there is nothing to merge on. */
	if (!(t.flags & IORING_SETUP_DEFER_TASKRUN) || !(t.flags & IORING_SETUP_TASKRUN_FLAG))
		cr_skip_test("%s: the ring has no %s (Linux 6.1 and --feature defer_taskrun, "
			     "taskrun_flag): the merge is not testable",
			     what,
			     t.flags & IORING_SETUP_DEFER_TASKRUN ? "IORING_SETUP_TASKRUN_FLAG"
								  : "IORING_SETUP_DEFER_TASKRUN");
	cr_assert_str_eq(t.order, "AnB",
			 "%s: callbacks ran in the order %s (nAB: no merge; ABn: the merge held "
			 "the NOP back twice)",
			 what, t.order);
	/* The kick's pass merged; the stop may add more (its cancels' task work). */
	cr_assert_geq(st.merges, 1, "%s: the merge was not counted in keel_shard_stats.merges",
		      what);
}

Test(core_ring, a_blocking_pass_with_the_flag_merges_the_arrivals_before_it_submits, .timeout = 30)
{
	merge_run(0, KEEL_POLICY_ON, "blocking, taskrun_flag=on");
}

/* The default: a polling shard's ring has the flag (taskrun_flag auto). */
Test(core_ring, a_polling_pass_merges_the_arrivals_before_it_submits, .timeout = 30)
{
	merge_run(1000, KEEL_POLICY_AUTO, "polling 1 ms, taskrun_flag=auto");
}

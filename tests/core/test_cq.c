// SPDX-License-Identifier: MIT
/* The completion queue overflowing: cq_overflows counts the passes that found it. */
#include <errno.h>
#include <keel/ring.h>
#include <stdatomic.h>

#include <criterion/criterion.h>
#include <liburing.h>

#include "helpers.h"

/* core/internal.h: while non-zero, each io_uring_enter of the loop reports -EBADR. */
extern _Atomic unsigned keel__fault_enter_ebadr;

#define NOPS 640 /* forty times the CQ's 16 entries */

static struct keel_op nop_op;
static _Atomic unsigned nops_done, nops_queued;

static void
nop_cb(struct keel_op *op, int res, uint32_t flags)
{
	(void)op, (void)res, (void)flags;
	if (atomic_fetch_add(&nops_done, 1) + 1 == NOPS)
		keel_stop(0);
}

/* NOPs queued at once into a 16-entry CQ: those that do not fit wait in the kernel's
 * overflow list, and pass after pass finds IORING_SQ_CQ_OVERFLOW until all are reaped. */
static void
flood_start(void *app)
{
	(void)app;
	nop_op.fn = nop_cb;
	for (unsigned i = 0; i < NOPS; i++) {
		struct io_uring_sqe *sqe = keel_sqe_get();

		if (!sqe)
			return;
		io_uring_prep_nop(sqe);
		keel_sqe_bind(sqe, &nop_op);
		atomic_fetch_add(&nops_queued, 1);
	}
}

/* Every io_uring_enter reports -EBADR (the kernel dropped completions), as it does while the
 * kernel's overflow list also lost some: a pass that found the overflow flag and then got
 * -EBADR from its enter counted cq_overflows twice, so the count passed the passes'. */
Test(core_cq, an_overflow_is_counted_once_a_pass_when_the_enter_says_ebadr, .timeout = 60)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_shard_stats st;

	o.ring_entries = 16;
	o.cq_entries = 16;
	o.log_level = KEEL_LOG_ERROR; /* the first overflow's warning */
	atomic_store(&keel__fault_enter_ebadr, 1000000);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, flood_start, NULL), 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	atomic_store(&keel__fault_enter_ebadr, 0);
	cr_assert_eq(keel_runtime_stats(rt, 0, &st), 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(atomic_load(&nops_queued), NOPS, "only %u NOPs found an SQE",
		     atomic_load(&nops_queued));
	cr_assert_eq(atomic_load(&nops_done), NOPS);
	cr_assert_gt(st.cq_overflows, 0, "the CQ never overflowed: the path was not tested");
	cr_assert_leq(st.cq_overflows, st.passes,
		      "cq_overflows %llu in %llu passes: a pass was counted more than once",
		      (unsigned long long)st.cq_overflows, (unsigned long long)st.passes);
	cr_assert_eq(st.cq_dropped, 0, "the kernel dropped %llu completions",
		     (unsigned long long)st.cq_dropped);
}

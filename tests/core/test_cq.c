// SPDX-License-Identifier: MIT
/* The completion queue overflowing: cq_overflows counts the passes that found it. */
#include <errno.h>
#include <keel/ring.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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

/* core/internal.h: while it points at an operation, that operation's next CQE is discarded
 * and counted as dropped, as the kernel drops one it has no room nor memory for. */
extern struct keel_op *_Atomic keel__fault_cqe_drop_op;

static struct keel_op dropped_op;
static _Atomic unsigned dropped_ran, drop_lines;
static char drop_line[512];

static void
dropped_cb(struct keel_op *op, int res, uint32_t flags)
{
	(void)op, (void)res, (void)flags;
	atomic_fetch_add(&dropped_ran, 1);
}

static void
drop_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module, (void)arg;
	if (level == KEEL_LOG_ERROR && strstr(msg, "never completed")) {
		snprintf(drop_line, sizeof(drop_line), "%d %s", shard, msg);
		atomic_fetch_add(&drop_lines, 1);
	}
}

/* On shard 1: a NOP whose CQE the fault point drops. */
static void
drop_start(void *app)
{
	struct io_uring_sqe *sqe;

	(void)app;
	if (keel_shard_id(keel_this_shard()) != 1)
		return;
	dropped_op.fn = dropped_cb;
	sqe = keel_sqe_get();
	cr_assert_not_null(sqe);
	io_uring_prep_nop(sqe);
	atomic_store(&keel__fault_cqe_drop_op, &dropped_op);
	keel_sqe_bind(sqe, &dropped_op);
}

/* An operation whose CQE the kernel dropped never completes: its count in flight stayed, and
 * the stop (then the loop's final drain) waited for it for ever, and the join with it. The
 * shard now takes it as lost once nothing completes for a bounded time, ends, and says so
 * with the fix. */
Test(core_cq, a_stop_ends_when_the_kernel_dropped_an_operations_completion, .timeout = 30)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	struct keel_shard_stats st;
	uint64_t deadline;

	atomic_store(&drop_lines, 0);
	keel_log_set_sink(drop_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, drop_start, NULL), 0);
	deadline = test_now_ms() + 10000;
	do {
		cr_assert_eq(keel_runtime_stats(rt, 1, &st), 0);
		if (st.cq_dropped)
			break;
		test_pause();
	} while (test_now_ms() < deadline);
	cr_assert_eq(st.cq_dropped, 1, "the NOP's CQE was not dropped: the path was not tested");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	cr_assert_null(atomic_load(&keel__fault_cqe_drop_op));
	cr_assert_eq(atomic_load(&dropped_ran), 0, "the dropped NOP's callback ran");
	cr_assert_eq(atomic_load(&drop_lines), 1, "%u lines said operations never completed",
		     atomic_load(&drop_lines));
	cr_assert(strncmp(drop_line, "1 shard 1: 1 operations never completed", 39) == 0, "%s",
		  drop_line);
	cr_assert(strstr(drop_line, "raise --cq-entries"), "%s", drop_line);
	cr_assert(strstr(drop_line, "memory"), "%s", drop_line);
}

/* A stop hook's disk request whose CQE the kernel dropped. */
static struct {
	struct keel_file_req w;
	struct keel_file f;
	int pipefd[2];
	_Atomic unsigned ran;
} hk;

static void
hk_write_cb(struct keel_file_req *req, int res, void *arg)
{
	(void)req, (void)res, (void)arg;
	atomic_fetch_add(&hk.ran, 1);
}

static void
hk_hook(void *arg)
{
	(void)arg;
	SHARD_CHECK_EQ(keel_file_write(&hk.w, &hk.f, "x", 1, (uint64_t)-1, hk_write_cb, NULL), 0,
		       "%s", keel_file_last_error());
	atomic_store(&keel__fault_cqe_drop_op, &hk.w.op_);
}

static void
hk_start(void *app)
{
	(void)app;
	hk.f = (struct keel_file){ .fd = hk.pipefd[1] };
	SHARD_CHECK_EQ(keel_shard_on_stop(hk_hook, NULL), 0);
	keel_stop(0);
}

/* The stop hooks' disk requests run to completion: the stop cancels nothing while they
 * drain. One whose CQE the kernel dropped never completes, so the drain never ended and the
 * stop's bound for dropped completions (stop_drops_lost) never began: the join hung for
 * ever. Now the drain ends once nothing has completed for that bound, the request is taken
 * as lost like any other, and the shard's last line says that a stop hook's request was
 * among them. */
Test(core_cq, a_stop_ends_when_the_kernel_dropped_a_stop_hooks_disk_requests_completion,
     .timeout = 20)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_shard_stats st;
	char c;

	memset(&hk, 0, sizeof(hk));
	cr_assert_eq(pipe(hk.pipefd), 0);
	atomic_store(&drop_lines, 0);
	keel_log_set_sink(drop_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, hk_start, NULL), 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(keel_runtime_stats(rt, 0, &st), 0);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_null(atomic_load(&keel__fault_cqe_drop_op),
		       "the hook's write never completed in the kernel: the path was not tested");
	cr_assert_eq(read(hk.pipefd[0], &c, 1), 1, "the hook's write did not reach the pipe");
	cr_assert_eq(atomic_load(&hk.ran), 0, "the dropped write's callback ran");
	cr_assert_eq(st.cq_dropped, 1, "%llu dropped CQEs counted",
		     (unsigned long long)st.cq_dropped);
	cr_assert_eq(atomic_load(&drop_lines), 1, "%u lines said operations never completed",
		     atomic_load(&drop_lines));
	cr_assert(strncmp(drop_line, "0 shard 0: 1 operations never completed", 39) == 0, "%s",
		  drop_line);
	cr_assert(strstr(drop_line, "1 of them a stop hook's disk request"), "%s", drop_line);
	cr_assert(strstr(drop_line, "raise --cq-entries"), "%s", drop_line);
	close(hk.pipefd[0]);
	close(hk.pipefd[1]);
}

/* The line that says the kernel dropped completions, as a pass first sees them. */
static _Atomic unsigned seen_lines;
static char seen_line[768];

static void
seen_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module, (void)arg;
	if (level == KEEL_LOG_ERROR && strstr(msg, "the kernel dropped") &&
	    !strstr(msg, "never completed")) {
		snprintf(seen_line, sizeof(seen_line), "%d %s", shard, msg);
		atomic_fetch_add(&seen_lines, 1);
	}
}

/* A drop the kernel counts without io_uring_enter's -EBADR (an enter that also submitted
 * returns its count instead) was counted in cq_dropped and said by no line until the shard
 * ended, if then. It is said as the pass that finds the count grown sees it, with its cause
 * and what follows from it, while the runtime still runs. */
Test(core_cq, a_drop_without_ebadr_is_said_when_first_seen, .timeout = 30)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	struct keel_shard_stats st;
	bool said;

	atomic_store(&seen_lines, 0);
	atomic_store(&dropped_ran, 0);
	keel_log_set_sink(seen_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, drop_start, NULL), 0);
	for (uint64_t deadline = test_deadline(5000);
	     !(said = atomic_load(&seen_lines) > 0) && !test_expired(deadline);)
		test_pause();
	cr_assert_eq(keel_runtime_stats(rt, 1, &st), 0);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	cr_assert_eq(st.cq_dropped, 1, "the NOP's CQE was not dropped: the path was not tested");
	cr_assert(said, "no line said the dropped completion while the runtime ran");
	cr_assert_eq(atomic_load(&seen_lines), 1, "%u lines; the last: %s",
		     atomic_load(&seen_lines), seen_line);
	cr_assert(strncmp(seen_line, "1 shard 1: the kernel dropped 1 completions", 43) == 0, "%s",
		  seen_line);
	cr_assert(strstr(seen_line, "no memory"), "%s", seen_line);
	cr_assert(strstr(seen_line, "callbacks never run"), "%s", seen_line);
	cr_assert(strstr(seen_line, "raise --cq-entries"), "%s", seen_line);
}

/* core/internal.h: while non-zero, the first CQE of each reap of the loop's final drain is
 * discarded as dropped. */
extern _Atomic unsigned keel__fault_final_cqe_drop;

/* The loop's last pass ends before the check of the kernel's count of dropped CQEs, and its
 * final drain makes none: a drop first seen there (a MSG_RING failure's CQE, keel's own
 * reads' ends) was neither counted in cq_dropped nor said. */
Test(core_cq, a_drop_in_the_final_drain_is_counted_and_said, .timeout = 30)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_shard_stats st;

	atomic_store(&seen_lines, 0);
	keel_log_set_sink(seen_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	atomic_store(&keel__fault_final_cqe_drop, 1);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(keel_runtime_stats(rt, 0, &st), 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(atomic_load(&keel__fault_final_cqe_drop), 0,
		     "no CQE was dropped in the final drain: the path was not tested");
	atomic_store(&keel__fault_cqe_drop_op, NULL);
	cr_assert_eq(st.cq_dropped, 1, "%llu dropped CQEs counted",
		     (unsigned long long)st.cq_dropped);
	cr_assert_eq(atomic_load(&seen_lines), 1, "%u lines said the drop",
		     atomic_load(&seen_lines));
	cr_assert(strncmp(seen_line, "0 shard 0: the kernel dropped 1 completions", 43) == 0, "%s",
		  seen_line);
}

// SPDX-License-Identifier: MIT
/* One time unit: every duration keel takes is in nanoseconds, written with KEEL_US/MS/S. */
#include <errno.h>
#include <time.h>

#include <criterion/criterion.h>

#include "helpers.h"

static uint64_t
mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

Test(core_time, helpers_convert_to_nanoseconds)
{
	cr_assert_eq(KEEL_NS(7), 7);
	cr_assert_eq(KEEL_US(3), 3000);
	cr_assert_eq(KEEL_MS(3), 3000000);
	cr_assert_eq(KEEL_S(3), 3000000000u);
	cr_assert_eq(KEEL_S(5000), 5000000000000u, "no 32-bit overflow");
	cr_assert_eq(KEEL_NS_TO_MS(KEEL_MS(42) + 999999), 42);
}

/* The deadline a start gives is the delay in nanoseconds after the clock read around the
 * start (keel_now_ns's clock): no timing assumption, only clocks read in the test. */
struct tt {
	struct keel_timer *t;
	uint64_t lo, hi, deadline, idle_deadline;
	uint64_t fired_now[2], fired_deadline[2], fired_clock[2];
	int fires;
};

static void
tick(struct keel_timer *t, void *arg)
{
	struct tt *x = arg;

	x->fired_now[x->fires] = keel_now_ns();
	/* Periodic: the next deadline is already set when the callback runs. */
	x->fired_deadline[x->fires] = keel_timer_deadline_ns(t);
	x->fired_clock[x->fires] = mono_ns();
	if (++x->fires == 2) {
		keel_timer_stop(t);
		x->idle_deadline = keel_timer_deadline_ns(t);
		keel_stop(0);
	}
}

static void
tt_start(void *app)
{
	struct tt *x = app;

	if (!SHARD_CHECK_EQ(keel_timer_create(tick, x, &x->t), 0)) {
		keel_stop(-EIO);
		return;
	}
	x->idle_deadline = keel_timer_deadline_ns(x->t);
	x->lo = mono_ns();
	SHARD_CHECK_EQ(keel_timer_start(x->t, KEEL_MS(5), KEEL_MS(3)), 0);
	x->hi = mono_ns();
	x->deadline = keel_timer_deadline_ns(x->t);
	if (!SHARD_CHECK(x->idle_deadline == 0, "a timer not started has a deadline"))
		keel_stop(-EIO);
}

Test(core_time, timer_delay_and_period_are_nanoseconds)
{
	struct keel_opts o = test_opts(1);
	struct tt x = { 0 };

	cr_assert_eq(keel_run(&o, tt_start, &x), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_geq(x.deadline, x.lo + KEEL_MS(5), "deadline %llu, start at %llu",
		      (unsigned long long)x.deadline, (unsigned long long)x.lo);
	/* +1: a start in the pass's own nanosecond is moved one past it. */
	cr_assert_leq(x.deadline, x.hi + KEEL_MS(5) + 1, "deadline %llu, start done at %llu",
		      (unsigned long long)x.deadline, (unsigned long long)x.hi);
	cr_assert_eq(x.fires, 2);
	cr_assert_geq(x.fired_now[0], x.deadline, "fired before its deadline");
	/* The next deadline is one period on, or (after a stall) one period from the clock
	 * read as it fired: at or after the pass's start, at or before the callback's. */
	cr_assert(x.fired_deadline[0] == x.deadline + KEEL_MS(3) ||
			  (x.fired_deadline[0] >= x.fired_now[0] + KEEL_MS(3) &&
			   x.fired_deadline[0] <= x.fired_clock[0] + KEEL_MS(3)),
		  "period: next deadline %llu after %llu (fired at %llu, callback at %llu)",
		  (unsigned long long)x.fired_deadline[0], (unsigned long long)x.deadline,
		  (unsigned long long)x.fired_now[0], (unsigned long long)x.fired_clock[0]);
	cr_assert_geq(x.fired_now[1], x.fired_deadline[0]);
	cr_assert_eq(x.idle_deadline, 0, "a stopped timer has no deadline");
}

Test(core_time, xqueue_wait_timeout_is_nanoseconds)
{
	struct keel_xqueue *q;
	struct keel_xreq *out;
	uint64_t t0, t1;

	cr_assert_eq(keel_xqueue_create(&q), 0);
	t0 = mono_ns();
	cr_assert_eq(keel_xqueue_wait(q, &out, 1, (int64_t)KEEL_MS(20)), 0);
	t1 = mono_ns();
	cr_assert_geq(t1 - t0, KEEL_MS(20), "returned after %llu ns",
		      (unsigned long long)(t1 - t0));
	cr_assert_eq(keel_xqueue_wait(q, &out, 1, 0), 0, "a zero timeout does not wait");
	keel_xqueue_destroy(q);
}

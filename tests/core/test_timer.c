// SPDX-License-Identifier: MIT
#include <errno.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "../../core/internal.h"
#include "helpers.h"

struct timer_test {
	int order[8];
	int n;
	int periodic_fires;
	struct keel_timer *t[4];
	struct keel_timer *periodic, *cancelled, *finish;
	int cancelled_fired;
	uint64_t fired_at[3];
	/* The monotonic clock just before and just after each one-shot start: the deadline the
	 * shard gave timer i lies in [start_lo[i], start_hi[i]] + its delay. */
	uint64_t start_lo[3], start_hi[3];
	int stop_ret, stop_again;
	uint64_t deadline; /* for finish_cb's wait */
};

static void
record(struct keel_timer *t, void *arg)
{
	struct timer_test *tt = arg;
	for (int i = 0; i < 3; i++)
		if (tt->t[i] == t) {
			tt->fired_at[i] = keel_now_ns();
			tt->order[tt->n++] = i;
		}
}

static void
periodic_cb(struct keel_timer *t, void *arg)
{
	struct timer_test *tt = arg;
	if (++tt->periodic_fires == 5)
		keel_timer_stop(t);
}

static void
cancelled_cb(struct keel_timer *t, void *arg)
{
	((struct timer_test *)arg)->cancelled_fired++;
}

static void
finish_cb(struct keel_timer *t, void *arg)
{
	struct timer_test *tt = arg;

	/* Wait for the periodic timer rather than for a fixed time: after a long stall it
	 * skips missed periods (no burst), so on a loaded machine it may need longer; the
	 * deadline is only for a timer that never fires. */
	if (tt && (tt->periodic_fires < 5 || tt->n < 3)) {
		if (!SHARD_CHECK(!test_expired(tt->deadline),
				 "after %u ms: %d of 5 periodic fires, %d of 3 one-shot timers",
				 TEST_WAIT_MS, tt->periodic_fires, tt->n)) {
			keel_stop(-ETIMEDOUT);
			return;
		}
		keel_timer_start(t, KEEL_MS(10), 0);
		return;
	}
	keel_stop(0);
}

static const unsigned delays_ms[3] = { 30, 10, 20 };

static uint64_t
mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void
timer_start(void *app)
{
	struct timer_test *tt = app;

	tt->deadline = test_deadline(TEST_WAIT_MS);
	for (int i = 0; i < 3; i++) {
		if (!SHARD_CHECK_EQ(keel_timer_create(record, tt, &tt->t[i]), 0))
			goto fail;
		tt->start_lo[i] = mono_ns();
		SHARD_CHECK_EQ(keel_timer_start(tt->t[i], KEEL_MS(delays_ms[i]), 0), 0);
		tt->start_hi[i] = mono_ns();
	}
	if (!SHARD_CHECK_EQ(keel_timer_create(periodic_cb, tt, &tt->periodic), 0))
		goto fail;
	keel_timer_start(tt->periodic, KEEL_MS(2), KEEL_MS(2));
	if (!SHARD_CHECK_EQ(keel_timer_create(cancelled_cb, tt, &tt->cancelled), 0))
		goto fail;
	keel_timer_start(tt->cancelled, KEEL_MS(15), 0);
	SHARD_CHECK(keel_timer_pending(tt->cancelled));
	tt->stop_ret = keel_timer_stop(tt->cancelled);
	tt->stop_again = keel_timer_stop(tt->cancelled);
	if (!SHARD_CHECK_EQ(keel_timer_create(finish_cb, tt, &tt->finish), 0))
		goto fail;
	keel_timer_start(tt->finish, KEEL_MS(60), 0);
	return;
fail:
	keel_stop(-EIO);
}

Test(core_timer, fire_in_deadline_order_and_cancel_works)
{
	struct keel_opts o = test_opts(1);
	struct timer_test tt = { 0 };
	int r;

	o.idle_poll_us = 0; /* sleep in the kernel until the next deadline */
	r = keel_run(&o, timer_start, &tt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(tt.n, 3);
	/* Deadline order: with no stall between the three starts that is 1, 2, 0. A machine
	 * that stalls the shard between two starts moves the later start's deadline, so the
	 * check is against the deadlines' bounds, not the nominal order: timer a may fire
	 * before timer b only if a's earliest possible deadline is not after b's latest. */
	for (int k = 0; k + 1 < 3; k++) {
		int a = tt.order[k], b = tt.order[k + 1];
		uint64_t a_min = tt.start_lo[a] + delays_ms[a] * 1000000ULL;
		uint64_t b_max = tt.start_hi[b] + delays_ms[b] * 1000000ULL;
		cr_assert_leq(a_min, b_max, "timer %d (%u ms) fired before timer %d (%u ms)", a,
			      delays_ms[a], b, delays_ms[b]);
	}
	/* Never early (the pass time a callback sees is at or past its deadline); lateness is
	 * not asserted (shared machines are noisy). */
	for (int i = 0; i < 3; i++)
		cr_assert_geq(tt.fired_at[i], tt.start_lo[i] + delays_ms[i] * 1000000ULL,
			      "timer %d fired early", i);
	cr_assert_eq(tt.periodic_fires, 5);
	cr_assert_eq(tt.cancelled_fired, 0);
	cr_assert_eq(tt.stop_ret, 0);
	cr_assert_eq(tt.stop_again, -ENOENT);
}

/* An idle shard with a far timer sleeps in the kernel: few passes, not a busy loop. */
static void
idle_start(void *app)
{
	struct keel_timer *t;
	if (!SHARD_CHECK_EQ(keel_timer_create(finish_cb, NULL, &t), 0)) {
		keel_stop(-EIO);
		return;
	}
	keel_timer_start(t, KEEL_MS(200), 0);
}

Test(core_timer, idle_shard_sleeps_until_the_deadline)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_shard_stats st;
	int r;

	o.idle_poll_us = 0; /* about sleeping: said here too, not only in test_opts() */
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, idle_start, NULL), 0);
	r = keel_runtime_join(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(keel_runtime_stats(rt, 0, &st), 0);
	cr_assert_eq(st.timers_fired, 1);
	cr_assert_lt(st.passes, 50, "an idle shard made %llu passes in 200 ms",
		     (unsigned long long)st.passes);
	cr_assert_eq(st.idle_poll_ns, 0, "no idle polling asked for, %llu ns counted",
		     (unsigned long long)st.idle_poll_ns);
	keel_runtime_destroy(rt);
}

/* The time a shard spends polling with nothing to do is counted (it is CPU the OS sees as
 * busy): more than nothing when polling is on, never more than the run lasted. */
Test(core_timer, idle_polling_time_is_counted)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_shard_stats st;
	struct timespec a, b;
	uint64_t wall;
	int r;

	o.idle_poll_us = 1000; /* about polling */
	clock_gettime(CLOCK_MONOTONIC, &a);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, idle_start, NULL), 0);
	r = keel_runtime_join(rt);
	clock_gettime(CLOCK_MONOTONIC, &b);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	wall = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000ull + (uint64_t)b.tv_nsec -
	       (uint64_t)a.tv_nsec;
	cr_assert_eq(keel_runtime_stats(rt, 0, &st), 0);
	cr_assert_gt(st.idle_poll_ns, 0, "the shard polled but counted no time");
	cr_assert_leq(st.idle_poll_ns, wall, "%llu ns of polling in a run of %llu ns",
		      (unsigned long long)st.idle_poll_ns, (unsigned long long)wall);
	/* Nothing came within 1 ms of polling before the 200 ms timer: the poll slept. */
	cr_assert_geq(st.polls_slept, 1, "a poll that found nothing was not counted");
	keel_runtime_destroy(rt);
}

/* A timer every 100 us under a 1 s polling window: the polls are ended by the timer's
 * work, and counted as polls that found work. */
static unsigned tick_n;

static void
tick_cb(struct keel_timer *t, void *arg)
{
	if (++tick_n == 20) {
		keel_timer_destroy(t);
		keel_stop(0);
	}
}

static void
tick_start(void *app)
{
	struct keel_timer *t;

	tick_n = 0;
	if (!SHARD_CHECK_EQ(keel_timer_create(tick_cb, NULL, &t), 0)) {
		keel_stop(-EIO);
		return;
	}
	keel_timer_start(t, KEEL_US(100), KEEL_US(100));
}

Test(core_timer, idle_polls_that_find_work_are_counted)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_shard_stats st;
	int r;

	o.idle_poll_us = 1000000; /* about polling: a window no tick can miss */
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, tick_start, NULL), 0);
	r = keel_runtime_join(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(keel_runtime_stats(rt, 0, &st), 0);
	cr_assert_eq(st.timers_fired, 20);
	cr_assert_geq(st.polls_found, 1, "polls ended by the timer: %llu",
		      (unsigned long long)st.polls_found);
	keel_runtime_destroy(rt);
}

/* A poll whose window ran out, with work found just before the sleep (mail, a request, a
 * deferred call in the sleep's last look): it polled the whole window for nothing, as one
 * that slept, and was counted nowhere (nor given to the adaptive policy). */
static struct {
	struct keel_runtime *rt;
	uint64_t polls;
	_Atomic int hooked;
} pw;

static void
pw_stop(void *arg)
{
	struct keel_shard_stats st;

	(void)arg;
	keel_runtime_stats(pw.rt, 0, &st);
	pw.polls = st.polls_found + st.polls_slept;
	keel_stop(0);
}

static void
pw_hook(void)
{
	if (!atomic_exchange(&pw.hooked, 1) && keel_defer(pw_stop, NULL) < 0)
		keel_stop(-ENOMEM);
}

Test(core_timer, a_poll_whose_window_ran_out_before_work_came_is_counted)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	int r;

	memset(&pw, 0, sizeof(pw));
	o.idle_poll_us = 2000; /* about polling */
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	pw.rt = rt;
	keel__hook_before_sleep = pw_hook; /* the first sleep: after the first window */
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	r = keel_runtime_join(rt);
	keel__hook_before_sleep = NULL;
	cr_assert_eq(r, 0);
	cr_assert_eq(pw.polls, 1, "%llu polls counted when the deferred call ran, want 1",
		     (unsigned long long)pw.polls);
	keel_runtime_destroy(rt);
}

/* A timer that came due while the pass ran (started by a callback that then worked on):
 * the sleep that followed waited 0 ns, one io_uring_enter counted as a sleep (sleeps:
 * waits that blocked). The next pass runs it instead. */
static struct {
	struct keel_runtime *rt;
	struct keel_timer *t;
	uint64_t sleeps_before, sleeps_at_fire;
} due;

static void
due_fire(struct keel_timer *t, void *arg)
{
	struct keel_shard_stats st;

	(void)arg;
	keel_runtime_stats(due.rt, 0, &st);
	due.sleeps_at_fire = st.sleeps;
	keel_timer_destroy(t);
	keel_stop(0);
}

static void
due_defer(void *arg)
{
	struct keel_shard_stats st;
	uint64_t end;

	(void)arg;
	keel_runtime_stats(due.rt, 0, &st);
	due.sleeps_before = st.sleeps;
	keel_timer_start(due.t, KEEL_US(1), 0);
	/* The clock itself: keel_now_ns() on a shard is the pass's time, which stands. */
	for (end = mono_ns() + KEEL_US(200); mono_ns() < end;)
		;
}

static void
due_start(void *app)
{
	(void)app;
	if (!SHARD_CHECK_EQ(keel_timer_create(due_fire, NULL, &due.t), 0) ||
	    !SHARD_CHECK_EQ(keel_defer(due_defer, NULL), 0))
		keel_stop(-EIO);
}

Test(core_timer, a_timer_due_before_the_sleep_runs_without_one)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	int r;

	memset(&due, 0, sizeof(due));
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	due.rt = rt;
	cr_assert_eq(keel_runtime_start(rt, due_start, NULL), 0);
	r = keel_runtime_join(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(due.sleeps_at_fire, due.sleeps_before,
		     "%llu sleeps between the start of a due timer and its fire",
		     (unsigned long long)(due.sleeps_at_fire - due.sleeps_before));
	keel_runtime_destroy(rt);
}

/* A timer callback that destroys its own timer, and one re-armed with no delay. */
struct rearm_test {
	int zero_delay_fires, destroyed;
	uint64_t pass_of_fire[4];
};

/* The runtime ends once both timers are done, whichever is last. */
static void
self_destroy(struct keel_timer *t, void *arg)
{
	struct rearm_test *r = arg;

	keel_timer_destroy(t);
	if (++r->destroyed == 1 && r->zero_delay_fires == 4)
		keel_stop(0);
}

static void
zero_rearm(struct keel_timer *t, void *arg)
{
	struct rearm_test *r = arg;
	r->pass_of_fire[r->zero_delay_fires] = keel_now_ns();
	if (++r->zero_delay_fires < 4)
		keel_timer_start(t, 0, 0);
	else if (r->destroyed)
		keel_stop(0);
}

static void
rearm_start(void *app)
{
	struct keel_timer *a, *b;
	if (!SHARD_CHECK_EQ(keel_timer_create(self_destroy, app, &a), 0) ||
	    !SHARD_CHECK_EQ(keel_timer_create(zero_rearm, app, &b), 0)) {
		keel_stop(-EIO);
		return;
	}
	keel_timer_start(a, KEEL_US(100), 0);
	keel_timer_start(b, 0, 0);
}

Test(core_timer, zero_delay_rearm_fires_on_next_pass_and_self_destroy_is_safe)
{
	struct keel_opts o = test_opts(1);
	struct rearm_test r = { 0 };
	int rc = keel_run(&o, rearm_start, &r);

	SHARD_CHECKS_PASSED();
	cr_assert_eq(rc, 0);
	cr_assert_eq(r.zero_delay_fires, 4);
	cr_assert_eq(r.destroyed, 1, "the self-destroying timer fired %d times", r.destroyed);
	for (int i = 1; i < 4; i++)
		cr_assert_gt(r.pass_of_fire[i], r.pass_of_fire[i - 1],
			     "re-armed timer fired twice in one pass");
}

/* Durations past the clock's end: a delay of UINT64_MAX never fires (it does not wrap into
 * the past), and a periodic timer with a period of UINT64_MAX fires once, then waits for
 * ever (it does not come back due in the same pass, for ever). Passes are chained with
 * keel_defer, so the test waits for passes, not for time. */
struct far_test {
	struct keel_timer *never, *once;
	int never_fired, once_fired, passes;
	uint64_t once_deadline_after, now_after;
};

static void
far_never(struct keel_timer *t, void *arg)
{
	((struct far_test *)arg)->never_fired++;
}

static void
far_once(struct keel_timer *t, void *arg)
{
	struct far_test *f = arg;

	if (++f->once_fired > 1) {
		keel_timer_stop(t); /* wrapped: it would fire for ever within one pass */
		return;
	}
	f->once_deadline_after = keel_timer_deadline_ns(t);
	f->now_after = keel_now_ns();
}

static void
far_pass(void *arg)
{
	struct far_test *f = arg;

	if (++f->passes < 5 || !f->once_fired) {
		if (f->passes > 100000) {
			keel_stop(-ETIMEDOUT);
			return;
		}
		keel_defer(far_pass, f);
		return;
	}
	keel_stop(0);
}

static void
far_start(void *arg)
{
	struct far_test *f = arg;

	SHARD_CHECK_EQ(keel_timer_create(far_never, f, &f->never), 0);
	SHARD_CHECK_EQ(keel_timer_create(far_once, f, &f->once), 0);
	SHARD_CHECK_EQ(keel_timer_start(f->never, UINT64_MAX, 0), 0);
	SHARD_CHECK(keel_timer_deadline_ns(f->never) > keel_now_ns() + KEEL_S(3600),
		    "a delay of UINT64_MAX gave a deadline within the hour");
	SHARD_CHECK_EQ(keel_timer_start(f->once, 0, UINT64_MAX), 0);
	keel_defer(far_pass, f);
}

Test(core_timer, durations_past_the_end_of_the_clock_do_not_wrap)
{
	struct keel_opts o = test_opts(1);
	struct far_test f = { 0 };
	int rc = keel_run(&o, far_start, &f);

	SHARD_CHECKS_PASSED();
	cr_assert_eq(rc, 0);
	cr_assert_eq(f.never_fired, 0, "the never timer fired");
	cr_assert_eq(f.once_fired, 1, "the periodic timer fired %d times", f.once_fired);
	cr_assert_gt(f.once_deadline_after, f.now_after + KEEL_S(3600));
}

/* A zeroed struct never initialised is not pending (keel_timer_fini accepts one too). */
Test(core_timer, a_zeroed_timer_is_not_pending)
{
	struct keel_timer t = { 0 };

	cr_assert_eq(keel_timer_pending(&t), 0);
	keel_timer_fini(&t);
}

/* ---- timers started while stopping ---- */

/* A timer started while stopping (by deferred work: a stop hook's timers are among those
 * the stop cancels) fires while other work still holds the shard, deferred work here that
 * goes on until it fired, so it can bound a wait; one still pending when the runtime is
 * quiescent does not hold the stop and never fires (60 s: the join would wait for it). */
static struct {
	struct keel_timer *soon, *late;
	int soon_fired, late_fired, waits;
	uint64_t since;
} stp;

static void
stp_fire(struct keel_timer *t, void *arg)
{
	if (t == stp.soon)
		stp.soon_fired++;
	else
		stp.late_fired++;
}

static void
stp_wait(void *arg)
{
	stp.waits++;
	if (stp.soon_fired)
		return;
	/* Bounded, so a timer that never fires fails the test instead of hanging it. */
	if (!SHARD_CHECK(keel_now_ns() - stp.since < KEEL_MS(TEST_WAIT_MS),
			 "the 1 ms timer started while stopping never fired"))
		return;
	SHARD_CHECK_EQ(keel_defer(stp_wait, NULL), 0);
}

static void
stp_arm(void *arg)
{
	stp.since = keel_now_ns();
	SHARD_CHECK_EQ(keel_timer_create(stp_fire, NULL, &stp.soon), 0);
	SHARD_CHECK_EQ(keel_timer_create(stp_fire, NULL, &stp.late), 0);
	SHARD_CHECK_EQ(keel_timer_start(stp.soon, KEEL_MS(1), 0), 0);
	SHARD_CHECK_EQ(keel_timer_start(stp.late, KEEL_S(60), 0), 0);
	SHARD_CHECK_EQ(keel_defer(stp_wait, NULL), 0);
}

static void
stp_hook(void *arg)
{
	SHARD_CHECK_EQ(keel_defer(stp_arm, NULL), 0);
}

static void
stp_start(void *app)
{
	SHARD_CHECK_EQ(keel_shard_on_stop(stp_hook, NULL), 0);
	keel_stop(0);
}

Test(core_timer, a_timer_started_while_stopping_fires_only_while_work_holds_the_shard)
{
	struct keel_opts o = test_opts(1);
	int r;

	memset(&stp, 0, sizeof(stp));
	r = keel_run(&o, stp_start, NULL);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(stp.soon_fired, 1, "the 1 ms timer, with deferred work waiting for it");
	cr_assert_gt(stp.waits, 0);
	cr_assert_eq(stp.late_fired, 0, "the 60 s timer held the stop");
}

/* A shard with nothing left to do while another still works is quiescent, and runs no
 * timer: termination detection takes a quiescent shard to become active only by a
 * message, and a timer callback that sent one (a buffer put home, say) after the others
 * had ended would leave it unrun and the join hanging. Shard 1 starts a 1 ms timer from
 * stop-time deferred work and has nothing more to do; shard 0 works on for 50 ms. */
static struct {
	struct keel_timer *t;
	_Atomic int fired;
	uint64_t until;
} tq;

static void
tq_fire(struct keel_timer *t, void *arg)
{
	atomic_fetch_add(&tq.fired, 1);
}

static void
tq_busy(void *arg)
{
	if (keel_now_ns() < tq.until)
		SHARD_CHECK_EQ(keel_defer(tq_busy, NULL), 0);
}

static void
tq_arm(void *arg)
{
	if (keel_shard_id(keel_this_shard()) == 0) {
		tq.until = keel_now_ns() + KEEL_MS(50);
		SHARD_CHECK_EQ(keel_defer(tq_busy, NULL), 0);
		return;
	}
	SHARD_CHECK_EQ(keel_timer_create(tq_fire, NULL, &tq.t), 0);
	SHARD_CHECK_EQ(keel_timer_start(tq.t, KEEL_MS(1), 0), 0);
}

static void
tq_hook(void *arg)
{
	SHARD_CHECK_EQ(keel_defer(tq_arm, NULL), 0);
}

static void
tq_start(void *app)
{
	SHARD_CHECK_EQ(keel_shard_on_stop(tq_hook, NULL), 0);
	if (keel_shard_id(keel_this_shard()) == 0)
		keel_stop(0);
}

Test(core_timer, a_quiescent_shard_runs_no_timer_while_another_still_works)
{
	struct keel_opts o = test_opts(2);
	int r;

	memset(&tq, 0, sizeof(tq));
	o.idle_poll_us = 0;
	r = keel_run(&o, tq_start, NULL);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(atomic_load(&tq.fired), 0, "shard 1's timer fired while it was quiescent");
}

/* A periodic timer whose first fire comes late in a pass (a callback before it in the same
 * pass stalled 30 ms, three periods): its next deadline must not already lie in the past
 * of the moment it fired, or it fires again at once, a burst the timer skips otherwise. */
struct stall_test {
	struct keel_timer *stall, *periodic;
	uint64_t fire[2], stall_end, next_deadline;
	int fires;
};

static void
stall_cb(struct keel_timer *t, void *arg)
{
	struct stall_test *st = arg;
	uint64_t until = mono_ns() + KEEL_MS(30);

	while (mono_ns() < until)
		;
	st->stall_end = mono_ns();
}

static void
stalled_periodic_cb(struct keel_timer *t, void *arg)
{
	struct stall_test *st = arg;

	st->fire[st->fires++] = mono_ns();
	if (st->fires == 1) /* periodic: the next deadline is set when the callback runs */
		st->next_deadline = keel_timer_deadline_ns(t);
	if (st->fires == 2) {
		keel_timer_stop(t);
		keel_stop(0);
	}
}

/* The stalling one-shot timer due first, the periodic one 1 us later with period @period;
 * the shard held @hold ns before its next pass (both due by then). */
static void
stall_setup(struct stall_test *st, uint64_t period, uint64_t hold)
{
	uint64_t t0;

	if (!SHARD_CHECK_EQ(keel_timer_create(stall_cb, st, &st->stall), 0) ||
	    !SHARD_CHECK_EQ(keel_timer_create(stalled_periodic_cb, st, &st->periodic), 0)) {
		keel_stop(-EIO);
		return;
	}
	keel_timer_start(st->stall, 0, 0);
	keel_timer_start(st->periodic, 1000, period);
	t0 = mono_ns();
	while (mono_ns() < t0 + hold)
		;
}

static void
stall_start(void *app)
{
	stall_setup(app, KEEL_MS(10), 2000); /* both due when the next pass begins */
}

Test(core_timer, a_periodic_timer_after_a_stall_in_its_pass_does_not_fire_twice_at_once)
{
	struct keel_opts o = test_opts(1);
	struct stall_test st = { 0 };
	int rc = keel_run(&o, stall_start, &st);

	SHARD_CHECKS_PASSED();
	cr_assert_eq(rc, 0);
	cr_assert_eq(st.fires, 2);
	/* A period from a clock read after the stall, not from the deadline it missed (20 ms
	 * before the stall ended). From the clocks, not from how soon the second fire came. */
	cr_assert_geq(st.next_deadline, st.stall_end + KEEL_MS(10),
		      "the next deadline is %lld us after the stall's end (the period is 10 ms); "
		      "the second fire came %llu us after the first",
		      (long long)(st.next_deadline - st.stall_end) / 1000,
		      (unsigned long long)((st.fire[1] - st.fire[0]) / 1000));
}

/* The same, with the periodic timer already more than a period behind when its pass
 * begins (the start callback held the shard 3 ms, the period is 1 ms): its next deadline
 * was then taken from the pass's start, not from a clock read, and already lay 29 ms in
 * the past of its fire. */
static void
stall_behind_start(void *app)
{
	stall_setup(app, KEEL_MS(1), KEEL_MS(3)); /* three periods behind when the pass begins */
}

Test(core_timer, a_periodic_timer_behind_by_periods_after_a_stall_does_not_fire_twice_at_once)
{
	struct keel_opts o = test_opts(1);
	struct stall_test st = { 0 };
	int rc = keel_run(&o, stall_behind_start, &st);

	SHARD_CHECKS_PASSED();
	cr_assert_eq(rc, 0);
	cr_assert_eq(st.fires, 2);
	cr_assert_geq(st.next_deadline, st.stall_end + KEEL_MS(1),
		      "the next deadline is %lld us after the stall's end (the period is 1 ms); "
		      "the second fire came %llu us after the first",
		      (long long)(st.next_deadline - st.stall_end) / 1000,
		      (unsigned long long)((st.fire[1] - st.fire[0]) / 1000));
}

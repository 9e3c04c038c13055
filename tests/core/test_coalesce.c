// SPDX-License-Identifier: MIT
/*
 * The wait-coalescing policy's decisions (core/coalesce.c), driven with synthetic epochs:
 * no clock, no ring. A workload is the work a shard finds per epoch with gathering sleeps
 * and without; epoch() plays the loop's part for one epoch of KEEL__CO_EPOCH_NS.
 */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../../core/internal.h"
#include "helpers.h"

#define WIN    KEEL_US(50)
#define PASSES 10 /* passes per epoch */

struct load {
	uint64_t on, off;  /* work found per epoch with and without gathering */
	uint64_t sleeps;   /* sleeps per epoch */
	bool few_gathered; /* gathering cuts the sleeps to 1 per epoch */
};

/* One epoch of @l in the state the policy chose; returns whether it gathered. */
static bool
epoch(struct keel__coalesce *c, uint64_t *now, struct load l)
{
	bool on = keel__coalesce_on(c);
	uint64_t work = on ? l.on : l.off;
	uint64_t sleeps = on && l.few_gathered ? 1 : l.sleeps;

	for (int i = 0; i < PASSES; i++) {
		*now += KEEL__CO_EPOCH_NS / PASSES;
		keel__coalesce_pass(c, *now, work / PASSES);
		for (uint64_t k = 0; k < sleeps / PASSES + (i == 0 && sleeps < PASSES); k++)
			keel__coalesce_slept(c);
	}
	return on;
}

static unsigned
run(struct keel__coalesce *c, uint64_t *now, struct load l, unsigned n)
{
	unsigned on = 0;

	for (unsigned i = 0; i < n; i++)
		on += epoch(c, now, l);
	return on;
}

static const struct load many_peers = { .on = 1000, .off = 1000, .sleeps = 500 };
static const struct load ping_pong = { .on = 300, .off = 1000, .sleeps = 500 };

Test(core_coalesce, gathers_when_that_keeps_the_rate_of_work)
{
	struct keel__coalesce c;
	uint64_t now = 0;

	keel__coalesce_init(&c, WIN, false, now);
	cr_assert_not(keel__coalesce_on(&c), "starts with plain sleeps");
	run(&c, &now, many_peers, KEEL__CO_BACKOFF_MIN + KEEL__CO_TRIAL);
	cr_assert(keel__coalesce_on(&c), "one won trial turns it on");
	/* Steady: after every KEEL__CO_ON_EPOCHS a trial without it, which it keeps winning. */
	unsigned n = 20 * (KEEL__CO_ON_EPOCHS + KEEL__CO_TRIAL);
	unsigned on = run(&c, &now, many_peers, n);
	cr_assert_geq(on, n - 20 * KEEL__CO_TRIAL, "gathered in %u of %u epochs", on, n);
	cr_assert(keel__coalesce_on(&c));
	cr_assert_eq(c.trials_lost, 0);
	cr_assert_geq(c.trials_won, 20);
}

Test(core_coalesce, does_not_gather_where_that_slows_the_work)
{
	struct keel__coalesce c;
	uint64_t now = 0;
	unsigned n = 10000; /* 100 s */

	keel__coalesce_init(&c, WIN, false, now);
	unsigned on = run(&c, &now, ping_pong, n);
	/* Only trial epochs gathered, one each (3x slower is clearly lost after one); the
	 * backoff spaces them out to KEEL__CO_BACKOFF_MAX. */
	cr_assert_eq(on, c.trials, "gathered outside trials (%u epochs, %llu trials)", on,
		     (unsigned long long)c.trials);
	cr_assert_lt(on, n / 200, "gathered in %u of %u epochs", on, n);
	cr_assert_eq(c.trials_won, 0);
	cr_assert_eq(c.backoff, KEEL__CO_BACKOFF_MAX);
	cr_assert_not(keel__coalesce_on(&c));
}

/* Gathering that makes its epochs look idle (fewer, larger completions) loses its trials,
 * with the same backoff as a slower one. */
Test(core_coalesce, a_trial_that_looks_idle_is_lost)
{
	struct keel__coalesce c;
	uint64_t now = 0;
	struct load bulk = { .on = KEEL__CO_MIN_EVENTS / 2, .off = 1000, .sleeps = 500 };
	unsigned n = 10000;
	unsigned on;

	keel__coalesce_init(&c, WIN, false, now);
	on = run(&c, &now, bulk, n);
	cr_assert_eq(on, c.trials);
	cr_assert_eq(c.trials_lost, c.trials);
	cr_assert_lt(on, n / 200, "gathered in %u of %u epochs", on, n);
	cr_assert_eq(c.backoff, KEEL__CO_BACKOFF_MAX);
}

Test(core_coalesce, stops_gathering_when_the_load_turns_latency_bound)
{
	struct keel__coalesce c;
	uint64_t now = 0;

	keel__coalesce_init(&c, WIN, false, now);
	run(&c, &now, many_peers, KEEL__CO_BACKOFF_MIN + KEEL__CO_TRIAL);
	cr_assert(keel__coalesce_on(&c));
	/* The next trial without gathering finds it 3x faster and turns gathering off. */
	run(&c, &now, ping_pong, KEEL__CO_ON_EPOCHS + KEEL__CO_TRIAL);
	cr_assert_not(keel__coalesce_on(&c));
	cr_assert_eq(c.trials_lost, 1);
	/* ... and the load turning back brings it back. */
	run(&c, &now, many_peers, KEEL__CO_BACKOFF_MIN + KEEL__CO_TRIAL);
	cr_assert(keel__coalesce_on(&c));
}

Test(core_coalesce, rates_within_the_tolerance_are_equal)
{
	struct keel__coalesce c;
	uint64_t now = 0;
	/* 1.6 % slower gathering is within 1/20: on. 6 % slower is not: off. */
	struct load near = { .on = 984, .off = 1000, .sleeps = 500 };
	struct load far = { .on = 940, .off = 1000, .sleeps = 500 };

	keel__coalesce_init(&c, WIN, false, now);
	run(&c, &now, near, KEEL__CO_BACKOFF_MIN + KEEL__CO_TRIAL);
	cr_assert(keel__coalesce_on(&c));
	keel__coalesce_init(&c, WIN, false, now);
	cr_assert_eq(run(&c, &now, far, KEEL__CO_BACKOFF_MIN + KEEL__CO_TRIAL), KEEL__CO_TRIAL,
		     "a trial 6 %% slower (not clearly lost) runs its whole length");
	cr_assert_not(keel__coalesce_on(&c));
	cr_assert_eq(c.trials_lost, 1);
}

Test(core_coalesce, idle_or_busy_without_sleeping_decides_nothing)
{
	struct keel__coalesce c;
	uint64_t now = 0;
	struct load idle = { .on = 0, .off = 0, .sleeps = 500 };
	struct load spinning = { .on = 1000, .off = 1000, .sleeps = 0 };

	keel__coalesce_init(&c, WIN, false, now);
	run(&c, &now, many_peers, KEEL__CO_BACKOFF_MIN + KEEL__CO_TRIAL);
	cr_assert(keel__coalesce_on(&c));
	/* An idle epoch ends gathering at once (an idle shard sleeps plainly) ... */
	epoch(&c, &now, idle);
	cr_assert_not(keel__coalesce_on(&c));
	/* ... and no trial starts while it stays idle, or while the shard never sleeps. */
	uint64_t trials = c.trials;
	cr_assert_eq(run(&c, &now, idle, 1000), 0);
	cr_assert_eq(run(&c, &now, spinning, 1000), 0);
	cr_assert_eq(c.trials, trials);
	/* One long pass (a sleep of seconds) is one idle epoch. */
	now += KEEL_MS(5000);
	keel__coalesce_pass(&c, now, 1);
	cr_assert_not(keel__coalesce_on(&c));
	/* A busy epoch stretched by a long sleep is not busy: its rate would be diluted. */
	keel__coalesce_init(&c, WIN, false, now);
	run(&c, &now, many_peers, KEEL__CO_BACKOFF_MIN + KEEL__CO_TRIAL);
	cr_assert(keel__coalesce_on(&c));
	trials = c.trials;
	for (int i = 0; i < PASSES - 1; i++) {
		now += KEEL__CO_EPOCH_NS / PASSES;
		keel__coalesce_pass(&c, now, many_peers.on / PASSES);
		for (uint64_t k = 0; k < many_peers.sleeps / PASSES; k++)
			keel__coalesce_slept(&c);
	}
	now += KEEL_MS(2000);
	keel__coalesce_pass(&c, now, many_peers.on / PASSES);
	cr_assert_not(keel__coalesce_on(&c));
	cr_assert_eq(c.trials, trials);
}

/* After lost trials the next one is KEEL__CO_BACKOFF_MAX busy epochs away (about 5 s). An
 * idle epoch now and then (a lull, one long sleep) must not start that count again: before,
 * each one did, and a load with a lull every 5 s was never tried again, even once
 * gathering would win. The lulls forget the reference only. */
Test(core_coalesce, an_idle_epoch_now_and_then_does_not_put_the_next_trial_off)
{
	struct keel__coalesce c;
	uint64_t now = 0;
	struct load idle = { .on = 0, .off = 0, .sleeps = 500 };
	uint64_t trials;

	keel__coalesce_init(&c, WIN, false, now);
	run(&c, &now, ping_pong, 2000);
	cr_assert_eq(c.backoff, KEEL__CO_BACKOFF_MAX);
	cr_assert_not(keel__coalesce_on(&c));
	trials = c.trials;
	/* Now gathering would win; a lull every 300 busy epochs. */
	for (int i = 0; i < 10; i++) {
		run(&c, &now, many_peers, 300);
		epoch(&c, &now, idle);
	}
	cr_assert_gt(c.trials, trials, "no trial in 3,000 busy epochs with a lull every 300");
	run(&c, &now, many_peers, 2 * KEEL__CO_TRIAL);
	cr_assert_gt(c.trials_won, 0, "the trial was won");
	cr_assert(keel__coalesce_on(&c), "gathering");
}

/* Gathering cuts the sleeps: its own epochs are not asked for KEEL__CO_MIN_SLEEPS. */
Test(core_coalesce, gathering_that_removes_the_sleeps_stays_on)
{
	struct keel__coalesce c;
	uint64_t now = 0;
	struct load saturating = { .on = 1000, .off = 1000, .sleeps = 500, .few_gathered = true };
	unsigned n = 10 * (KEEL__CO_ON_EPOCHS + KEEL__CO_TRIAL);

	keel__coalesce_init(&c, WIN, false, now);
	run(&c, &now, saturating, KEEL__CO_BACKOFF_MIN + KEEL__CO_TRIAL);
	cr_assert(keel__coalesce_on(&c));
	cr_assert_geq(run(&c, &now, saturating, n), n - 10 * KEEL__CO_TRIAL);
	cr_assert_eq(c.trials_lost, 0);
}

Test(core_coalesce, fixed_always_gathers_and_zero_never)
{
	struct keel__coalesce c;
	uint64_t now = 0;

	keel__coalesce_init(&c, WIN, true, now);
	cr_assert_eq(run(&c, &now, ping_pong, 1000), 1000);
	cr_assert_eq(c.trials, 0);
	keel__coalesce_init(&c, 0, false, now);
	cr_assert_eq(run(&c, &now, many_peers, 1000), 0);
	keel__coalesce_init(&c, 0, true, now);
	cr_assert_eq(run(&c, &now, many_peers, 1000), 0);
}

/* The gathering sleep on a real ring (Linux 6.12: IORING_FEAT_MIN_TIMEOUT). */

#define ROUNDS 20

static _Atomic unsigned ran;

static void
count_cb(struct keel_xreq *req)
{
	atomic_fetch_add(&ran, 1);
	keel_xreq_complete(req, 0);
}

static struct keel_runtime *
start_gathering(uint64_t window_us)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;

	if (!(keel_caps_get()->ring_features & IORING_FEAT_MIN_TIMEOUT))
		cr_skip_test("this kernel has no minimum-wait io_uring_enter (Linux 6.12)");
	o.wait_coalesce_us = (unsigned)window_us;
	o.wait_coalesce_fixed = true;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	return rt;
}

static uint64_t
shard_sleeps(struct keel_runtime *rt, uint64_t *coalesced)
{
	struct keel_shard_stats st;

	cr_assert_eq(keel_runtime_stats(rt, 0, &st), 0);
	if (coalesced)
		*coalesced = st.coalesced;
	return st.sleeps;
}

/* One arrival while the shard gathers ends the sleep once the window has passed: the
 * kernel does not hold it until KEEL__CO_GATHER completions came. A sleep that did would
 * end only at its general timeout (1 s without timers), so ROUNDS rounds would take
 * ROUNDS seconds; with a 20 ms window they take about ROUNDS x 20 ms. */
Test(core_coalesce, a_gathering_sleep_ends_after_the_window_with_one_completion, .timeout = 120)
{
	struct keel_runtime *rt = start_gathering(20000);
	struct keel_xreq req[ROUNDS];
	uint64_t t0, elapsed, coalesced;

	atomic_store(&ran, 0);
	t0 = test_now_ms();
	for (unsigned i = 0; i < ROUNDS; i++) {
		uint64_t deadline = test_now_ms() + 30000;

		/* Submit while the shard sleeps: once it announced the sleep that follows the
		 * last round (a gathering one, as that round's wake-up brought a completion),
		 * so a shard preempted before it slept cannot take the request without one. */
		while (!atomic_load(&rt->shards[0].sleeping) && test_now_ms() < deadline)
			test_pause();
		cr_assert(atomic_load(&rt->shards[0].sleeping), "round %u: the shard never slept",
			  i);
		req[i] = (struct keel_xreq){ .fn = count_cb };
		cr_assert_eq(keel_runtime_submit(rt, 0, &req[i]), 0);
		while (atomic_load(&ran) <= i && test_now_ms() < deadline)
			test_pause();
		cr_assert_gt(atomic_load(&ran), i, "round %u not run within 30 s", i);
	}
	elapsed = test_now_ms() - t0;
	shard_sleeps(rt, &coalesced);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	cr_assert_geq(coalesced, ROUNDS / 2, "only %llu sleeps gathered: the path was not used",
		      (unsigned long long)coalesced);
	cr_assert_lt(elapsed, ROUNDS * 1000 / 2,
		     "%u rounds took %llu ms: gathering sleeps waited for their 1 s timeout",
		     ROUNDS, (unsigned long long)elapsed);
	/* And the window was applied: each round's request came during (or after) the
	 * gathering sleep that followed the round before, which lasts 20 ms. */
	cr_assert_geq(elapsed, ROUNDS * 20 / 2, "%u rounds took only %llu ms", ROUNDS,
		      (unsigned long long)elapsed);
}

/* Gathering needs DEFER_TASKRUN: without it, kernels before 6.19 do not wake a waiter past
 * the window for completions posted straight to the CQ. */
Test(core_coalesce, min_wait_is_not_used_without_defer_taskrun)
{
	struct keel_opts o;
	struct keel_feature_decision d[KEEL_FEAT__COUNT];

	if (!(keel_caps_get()->ring_features & IORING_FEAT_MIN_TIMEOUT))
		cr_skip_test("this kernel has no minimum-wait io_uring_enter (Linux 6.12)");
	keel_opts_init(&o);
	o.log_level = KEEL_LOG_ERROR;
	cr_assert_eq(keel_features_decide(&o, d), 0);
	cr_assert(d[KEEL_FEAT_MIN_WAIT].used);
	o.features[KEEL_FEAT_DEFER_TASKRUN] = KEEL_POLICY_OFF;
	cr_assert_eq(keel_features_decide(&o, d), 0);
	cr_assert_not(d[KEEL_FEAT_MIN_WAIT].used);
	cr_assert_not_null(strstr(d[KEEL_FEAT_MIN_WAIT].reason, "defer_taskrun"));
	o.features[KEEL_FEAT_MIN_WAIT] = KEEL_POLICY_ON;
	cr_assert_eq(keel_features_decide(&o, d), -EOPNOTSUPP);
}

/* A gathering sleep lasts at most its window; one that brought nothing is followed by a
 * plain sleep without a timer of its own, so an idle shard sleeps until it is woken: it
 * neither wakes every window nor at a general timeout. Over an idle stretch of 300 ms with
 * a 1 ms window: at most one more sleep, and it is a plain one (a gathering sleep that,
 * past its window, waited on under a general timeout of 1 s, as before 2026-12-01, left
 * every sleep of an idle shard a gathering one and woke it every second). */
Test(core_coalesce, an_idle_gathering_shard_sleeps_until_woken, .timeout = 120)
{
	struct keel_runtime *rt = start_gathering(1000);
	struct keel_shard_stats st;
	uint64_t s0, t0;

	/* Let the shard finish starting and reach its first sleep. */
	uint64_t deadline = test_now_ms() + 30000;
	while (shard_sleeps(rt, NULL) == 0 && test_now_ms() < deadline)
		test_pause();
	s0 = shard_sleeps(rt, NULL);
	t0 = test_now_ms();
	while (test_now_ms() - t0 < 300)
		test_pause();
	cr_assert_eq(keel_runtime_stats(rt, 0, &st), 0);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	cr_assert_gt(st.coalesced, 0, "no sleep gathered: the path was not used");
	cr_assert_leq(st.sleeps - s0, 1, "an idle shard slept %llu more times in 300 ms",
		      (unsigned long long)(st.sleeps - s0));
	cr_assert_gt(
		st.sleeps, st.coalesced,
		"every one of %llu sleeps gathered: the idle shard's last sleep should be plain",
		(unsigned long long)st.sleeps);
}

// SPDX-License-Identifier: MIT
/*
 * The adaptive idle-polling policy's decisions (core/idlepoll.c), driven with synthetic
 * arrival gaps: no clock, no sleeps. The loop polls for keel__idlepoll_window() after
 * running out of work (0: it sleeps at once); sim() plays the loop's part.
 */
#include <criterion/criterion.h>

#include "../../core/internal.h"
#include "helpers.h"

#define WIN KEEL_US(50)

/* The loop's side for one idle wait whose work arrives @gap ns after it began: a poll
 * finds it within the window, or runs out and sleeps; a sleep taken at once reports its
 * wake-up. Returns whether this wait polled. */
static bool
sim(struct keel__idlepoll *p, uint64_t gap)
{
	if (keel__idlepoll_window(p)) {
		keel__idlepoll_polled(p, gap < WIN);
		return true;
	}
	keel__idlepoll_woke(p, gap);
	return false;
}

Test(core_idlepoll, fixed_policy_always_polls_the_window)
{
	struct keel__idlepoll p;

	keel__idlepoll_init(&p, WIN, false);
	for (int i = 0; i < 20; i++) {
		keel__idlepoll_polled(&p, false);
		keel__idlepoll_woke(&p, KEEL_MS(10));
		cr_assert_eq(keel__idlepoll_window(&p), WIN, "after %d slow waits", i + 1);
	}
	keel__idlepoll_init(&p, 0, true); /* no window: adaptive has nothing to adapt */
	cr_assert_eq(keel__idlepoll_window(&p), 0);
	keel__idlepoll_woke(&p, 1);
	cr_assert_eq(keel__idlepoll_window(&p), 0);
}

Test(core_idlepoll, polls_while_arrivals_come_within_the_window)
{
	struct keel__idlepoll p;

	keel__idlepoll_init(&p, WIN, true);
	cr_assert_eq(keel__idlepoll_window(&p), WIN, "starts polling");
	/* Ping-pong faster than the window: every wait polls. */
	for (int i = 0; i < 100; i++)
		cr_assert(sim(&p, KEEL_US(20)), "wait %d slept", i);
	/* Mostly quick with a miss in between (3 of 4 within the window): still polls. */
	for (int i = 0; i < 100; i++)
		cr_assert(sim(&p, i % 4 == 0 ? KEEL_MS(1) : KEEL_US(20)), "wait %d slept", i);
}

Test(core_idlepoll, stops_when_arrivals_are_slower_than_the_window)
{
	struct keel__idlepoll p;
	int polls = 0;

	keel__idlepoll_init(&p, WIN, true);
	/* Every wait longer than the window: it polls until fewer than 4 of the last 8 were
	 * quick (5 slow polls), then sleeps at once for good. */
	for (int i = 0; i < 200; i++)
		polls += sim(&p, KEEL_MS(1));
	cr_assert_eq(polls, KEEL__IDLEPOLL_HIST - KEEL__IDLEPOLL_MIN + 1, "%d polls", polls);
	cr_assert_eq(keel__idlepoll_window(&p), 0);
	/* Exactly the window is not within it. */
	for (int i = 0; i < 20; i++)
		cr_assert_not(sim(&p, WIN), "wait %d polled", i);
}

Test(core_idlepoll, resumes_after_a_wake_up_within_the_window)
{
	struct keel__idlepoll p;
	int polls = 0;

	keel__idlepoll_init(&p, WIN, true);
	for (int i = 0; i < 8; i++)
		sim(&p, KEEL_MS(1));
	cr_assert_eq(keel__idlepoll_window(&p), 0);
	/* A burst begins: the first quick wake-up resumes polling, the rest are polled. */
	cr_assert_not(sim(&p, KEEL_US(10)), "the first of the burst was slept through");
	for (int i = 0; i < 50; i++)
		cr_assert(sim(&p, KEEL_US(10)), "burst wait %d slept", i);
	/* The burst ends: polling stops again after a few slow polls (the burst's history). */
	for (int i = 0; i < 50; i++)
		polls += sim(&p, KEEL_MS(1));
	cr_assert_eq(polls, KEEL__IDLEPOLL_HIST - KEEL__IDLEPOLL_MIN + 1, "%d polls", polls);
	/* A stray quick wake-up among slow ones costs one window of polling each. */
	polls = 0;
	for (int i = 0; i < 60; i++) {
		bool polled = sim(&p, i % 3 == 0 ? KEEL_US(10) : KEEL_MS(1));

		polls += polled;
		cr_assert(!polled || i % 3 == 1, "wait %d polled", i);
	}
	cr_assert_eq(polls, 20, "%d polls", polls);
}

Test(core_idlepoll, option_parses_and_defaults_off)
{
	struct keel_opts o;
	char err[256];
	char *argv[] = { "prog", "--idle-poll-adaptive", NULL };
	int argc = 2;

	keel_opts_init(&o);
	cr_assert_not(o.idle_poll_adaptive);
	cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	cr_assert(o.idle_poll_adaptive);
}

/* A request and its reply: the pass with the request submits the reply's send, whose
 * completion comes back 2 us later (an outcome that is not an arrival), then the next
 * request @gap later. Returns the polls. */
static int
sim_rr(struct keel__idlepoll *p, uint64_t gap)
{
	keel__idlepoll_submitted(p);
	return sim(p, KEEL_US(2)) + sim(p, gap);
}

Test(core_idlepoll, own_completions_are_not_arrivals)
{
	struct keel__idlepoll p;
	int polls = 0;

	/* Requests 200 us apart, each reply's completion 2 us after it: polling stops. */
	keel__idlepoll_init(&p, WIN, true);
	for (int i = 0; i < 100; i++)
		polls += sim_rr(&p, KEEL_US(200));
	cr_assert_eq(keel__idlepoll_window(&p), 0);
	cr_assert_leq(polls, 2 * (KEEL__IDLEPOLL_HIST - KEEL__IDLEPOLL_MIN + 1), "%d polls", polls);
	/* Requests 20 us apart: polling resumes and stays on. */
	sim_rr(&p, KEEL_US(20));
	for (int i = 0; i < 100; i++)
		cr_assert_eq(sim_rr(&p, KEEL_US(20)), 2, "request %d slept", i);
}

/* One request as the loop reports it (keel__idlepoll_pass, in the loop's order): the idle
 * wait before it (a poll that finds it within the window; one that runs out, then a
 * sleep; or a sleep at once), the pass that finds it and queues the reply, and the pass
 * right after, which reaps the reply's send (completed inside the submit). Returns
 * whether the wait polled. */
static bool
loop_rr(struct keel__idlepoll *p, uint64_t gap)
{
	bool polled = keel__idlepoll_window(p) != 0, found = polled && gap < WIN;

	if (polled && !found)
		keel__idlepoll_polled(p, false);
	else if (!polled)
		keel__idlepoll_woke(p, gap);
	keel__idlepoll_pass(p, true, found, true);
	keel__idlepoll_pass(p, true, false, false);
	return polled;
}

Test(core_idlepoll, a_poll_that_finds_the_request_counts_though_its_pass_replies)
{
	struct keel__idlepoll p;

	/* 3 of 4 requests within the window: polling stays on. It stopped after the fifth slow
	 * one when the pass's reply was noted before the poll's outcome, or when the reply's
	 * completion, reaped in the pass after, still marked the next outcome as its own. */
	keel__idlepoll_init(&p, WIN, true);
	for (int i = 0; i < 200; i++)
		cr_assert(loop_rr(&p, i % 4 == 3 ? KEEL_MS(1) : KEEL_US(20)), "request %d slept",
			  i);
	/* Requests slower than the window: it stops, and resumes when they come quicker. */
	for (int i = 0; i < 20; i++)
		loop_rr(&p, KEEL_MS(1));
	cr_assert_eq(keel__idlepoll_window(&p), 0);
	cr_assert_not(loop_rr(&p, KEEL_US(20)));
	for (int i = 0; i < 50; i++)
		cr_assert(loop_rr(&p, KEEL_US(20)), "request %d slept after the resume", i);
}

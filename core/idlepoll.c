// SPDX-License-Identifier: MIT
/*
 * The adaptive idle-polling policy (--idle-poll-adaptive): whether a shard that ran out of
 * work polls its ring for up to the window (--idle-poll-us) or sleeps in the kernel at
 * once. Pure decisions on the outcomes the loop reports, so tests drive it with synthetic
 * timings (tests/core/test_idlepoll.c); core/loop.c feeds it.
 *
 * Each idle wait has an outcome: "quick" when work came within the window (a poll that
 * found work; or, while not polling, a sleep whose wake-up came within the window of the
 * pass that slept), "slow" otherwise (the poll window ran out; a sleep that lasted
 * longer). The last KEEL__IDLEPOLL_HIST outcomes are kept; the shard polls while at least
 * KEEL__IDLEPOLL_MIN of them were quick. It starts polling (as the fixed policy does).
 * While it sleeps at once, one wake-up within the window resumes polling, with a history
 * that one slow poll stops again (the quick outcomes oldest): a stray early wake-up costs
 * one window of polling; arrivals that keep coming within the window keep it polling.
 * The completions of the loop's own submissions (a reply's send) come back within
 * microseconds and say nothing about arrivals: after a pass that submitted, the next
 * quick outcome is not counted (keel__idlepoll_submitted), unless a pass with work came
 * between (it reaped them: a send that completes inside the submit). The loop reports
 * each pass through keel__idlepoll_pass, the wait that ended before the pass's own
 * submissions.
 */
#include "internal.h"

void
keel__idlepoll_init(struct keel__idlepoll *p, uint64_t window_ns, bool adaptive)
{
	p->window_ns = window_ns;
	p->adaptive = adaptive && window_ns;
	p->hist = (1u << KEEL__IDLEPOLL_HIST) - 1; /* all quick: start polling */
	p->own = false;
}

void
keel__idlepoll_submitted(struct keel__idlepoll *p)
{
	p->own = true;
}

static void
record(struct keel__idlepoll *p, bool quick)
{
	p->hist = ((p->hist << 1) | (quick ? 1u : 0u)) & ((1u << KEEL__IDLEPOLL_HIST) - 1);
}

uint64_t
keel__idlepoll_window(const struct keel__idlepoll *p)
{
	if (!p->adaptive)
		return p->window_ns;
	return __builtin_popcount(p->hist) >= KEEL__IDLEPOLL_MIN ? p->window_ns : 0;
}

void
keel__idlepoll_polled(struct keel__idlepoll *p, bool found)
{
	bool own = p->own;

	p->own = false;
	if (p->adaptive && !(found && own))
		record(p, found);
}

uint64_t
keel__idlepoll_pass(struct keel__idlepoll *p, bool work, bool after_poll, bool submitted)
{
	/* The outcome first: the pass that found an arrival also queues its reply, and that
	 * reply's completion is the next wait's to discount, not this one's. */
	if (work && after_poll)
		keel__idlepoll_polled(p, true);
	else if (work)
		p->own = false;
	if (submitted)
		keel__idlepoll_submitted(p);
	return keel__idlepoll_window(p);
}

void
keel__idlepoll_woke(struct keel__idlepoll *p, uint64_t gap_ns)
{
	bool own = p->own;

	p->own = false;
	if (!p->adaptive || (own && gap_ns < p->window_ns))
		return;
	if (gap_ns >= p->window_ns)
		record(p, false);
	else /* resume: KEEL__IDLEPOLL_MIN quick outcomes, the oldest of the history */
		p->hist = ((1u << KEEL__IDLEPOLL_MIN) - 1)
			  << (KEEL__IDLEPOLL_HIST - KEEL__IDLEPOLL_MIN);
}

// SPDX-License-Identifier: MIT
/*
 * Wait coalescing (--wait-coalesce-us): whether a shard's sleep in the kernel returns at the
 * first completion or gathers completions for up to the window first (core/loop.c: the
 * kernel wakes the shard when many completions are ready, or at the window with what
 * came; a gathering sleep that brought nothing is followed by a plain one). Gathering costs latency
 * (up to the window per wake-up) and saves wake-ups: one sleep and one wake-up serve many arrivals
 * instead of one. It pays where many independent peers keep arriving while the shard sleeps; it
 * loses where the peers wait for the shard's answer before they send again (one connection in
 * ping-pong: nothing more comes, so each answer waits the whole window).
 *
 * Which of the two a workload is cannot be seen from one wait, so the policy measures, as
 * adaptive interrupt moderation on NICs does: it counts the work the loop finds (CQEs,
 * messages from other shards and threads) per epoch of KEEL__CO_EPOCH_NS, and now and then runs
 * KEEL__CO_TRIAL epochs in the other state (a trial), compared with the last KEEL__CO_REF epochs of
 * the steady state before it. A trial of coalescing wins when its rate of work is within
 * 1/KEEL__CO_TOL of that reference (the same work done with fewer wake-ups); a trial
 * without it wins when its rate is more than 1/KEEL__CO_TOL above the coalescing
 * reference; a trial clearly lost (beyond twice that) after any of its epochs ends there.
 * A lost trial of coalescing quadruples the wait before the next one (up to
 * KEEL__CO_BACKOFF_MAX epochs, about 5 s), so a latency-bound workload pays about one
 * epoch in that many. Epochs with little work, plain epochs with few sleeps, and epochs stretched
 * past twice their length by a long sleep decide nothing and end coalescing: an idle shard
 * sleeps plainly. Pure decisions on the counts the loop reports, so tests drive
 * it with synthetic epochs (tests/core/test_coalesce.c); core/loop.c feeds it.
 */
#include "coalesce.h"

#include <string.h>

void
keel__coalesce_init(struct keel__coalesce *c, uint64_t window_ns, bool fixed, uint64_t now)
{
	memset(c, 0, sizeof(*c));
	c->window_ns = window_ns;
	c->fixed = fixed && window_ns;
	c->on = c->fixed;
	c->epoch_start = now;
	c->backoff = KEEL__CO_BACKOFF_MIN;
	c->steady_left = KEEL__CO_BACKOFF_MIN;
}

bool
keel__coalesce_on(const struct keel__coalesce *c)
{
	return c->on;
}

void
keel__coalesce_slept(struct keel__coalesce *c)
{
	c->sleeps++;
}

/* @a events in @ad ns against @b events in @bd ns: a * bd vs b * ad, scaled by the
 * tolerance; 128-bit products cannot overflow. */
static bool
rate_at_least(uint64_t a, uint64_t ad, uint64_t b, uint64_t bd, int tol_num)
{
	/* a/ad >= b/bd * (KEEL__CO_TOL + tol_num) / KEEL__CO_TOL */
	unsigned __int128 l = (unsigned __int128)a * bd * KEEL__CO_TOL;
	unsigned __int128 r = (unsigned __int128)b * ad * (unsigned)(KEEL__CO_TOL + tol_num);

	return l >= r;
}

/* Start a steady stretch in state @on, the next trial after @epochs epochs; the reference
 * is rebuilt from the stretch's own epochs. */
static void
steady(struct keel__coalesce *c, bool on, unsigned epochs)
{
	c->on = on;
	c->trial = false;
	c->steady_left = epochs;
	c->ref_n = 0;
	c->ref_i = 0;
}

/* A trial of gathering was lost: plain sleeps, the next trial 4x further away. */
static void
lost(struct keel__coalesce *c)
{
	c->trials_lost++;
	c->backoff *= 4;
	if (c->backoff > KEEL__CO_BACKOFF_MAX)
		c->backoff = KEEL__CO_BACKOFF_MAX;
	steady(c, false, c->backoff);
}

/* A trial epoch ended: decide when the trial is over, or sooner when it is clearly lost
 * (beyond twice the tolerance after any of its epochs: a trial of gathering that slows a
 * latency-bound shard costs one epoch, not KEEL__CO_TRIAL). */
static void
trial_epoch(struct keel__coalesce *c)
{
	uint64_t ref_ev = 0, ref_ns = 0;
	bool over = --c->trial_left == 0;

	for (unsigned i = 0; i < c->ref_n; i++) {
		ref_ev += c->ref_ev[i];
		ref_ns += c->ref_ns[i];
	}
	if (c->on) { /* gathering tried against the plain epochs before it */
		if (!rate_at_least(c->trial_ev, c->trial_ns, ref_ev, ref_ns, -2))
			over = true;
		if (!over)
			return;
		if (rate_at_least(c->trial_ev, c->trial_ns, ref_ev, ref_ns, -1)) {
			c->trials_won++;
			c->backoff = KEEL__CO_BACKOFF_MIN;
			steady(c, true, KEEL__CO_ON_EPOCHS);
			return;
		}
		lost(c);
		return;
	}
	/* plain sleeps tried against the gathering epochs before them */
	if (rate_at_least(c->trial_ev, c->trial_ns, ref_ev, ref_ns, 2))
		over = true;
	if (!over)
		return;
	if (rate_at_least(c->trial_ev, c->trial_ns, ref_ev, ref_ns, 1)) {
		c->trials_lost++; /* plain was clearly faster: gathering lost */
		steady(c, false, c->backoff);
	} else {
		c->trials_won++;
		steady(c, true, KEEL__CO_ON_EPOCHS);
	}
}

static void
epoch_end(struct keel__coalesce *c, uint64_t dur)
{
	/* Busy: enough arrivals, in an epoch not stretched by a long sleep (which would dilute
	 * its rate), and, sleeping plainly, enough sleeps for gathering to save any (gathering
	 * itself cuts the sleeps: not asked of its epochs). */
	bool busy = c->events >= KEEL__CO_MIN_EVENTS && dur <= 2 * KEEL__CO_EPOCH_NS &&
		    (c->on || c->sleeps >= KEEL__CO_MIN_SLEEPS);

	if (!busy) {
		/* Idle or not sleeping: nothing to gather; sleep plainly, forget the reference. A
		 * trial of gathering that made its epoch look idle (fewer, larger completions)
		 * is lost like any other. */
		if (c->trial && c->on) {
			lost(c);
		} else if (!c->trial && !c->on) {
			/* Already sleeping plainly: the reference is forgotten, the count to the
			 * next trial kept (restarting it at every lull put a backed-off trial off
			 * for as long as a lull came every KEEL__CO_BACKOFF_MAX epochs). */
			c->ref_n = 0;
			c->ref_i = 0;
		} else {
			steady(c, false, c->backoff);
		}
		return;
	}
	if (c->trial) {
		c->trial_ev += c->events;
		c->trial_ns += dur;
		trial_epoch(c);
		return;
	}
	/* A steady epoch: one of the last KEEL__CO_REF kept as the reference for the trial,
	 * which starts when the stretch ends. */
	c->ref_ev[c->ref_i] = c->events;
	c->ref_ns[c->ref_i] = dur;
	c->ref_i = (c->ref_i + 1) % KEEL__CO_REF;
	if (c->ref_n < KEEL__CO_REF)
		c->ref_n++;
	if (c->steady_left > 1) {
		c->steady_left--;
		return;
	}
	if (c->ref_n < KEEL__CO_REF)
		return; /* a lull forgot the reference: the trial waits for a whole one */
	c->trial = true;
	c->trial_left = KEEL__CO_TRIAL;
	c->trial_ev = 0;
	c->trial_ns = 0;
	c->trials++;
	c->on = !c->on;
}

bool
keel__coalesce_pass(struct keel__coalesce *c, uint64_t now, uint64_t work)
{
	uint64_t dur;

	if (!c->window_ns || c->fixed)
		return false;
	c->events += work;
	dur = now - c->epoch_start;
	if (dur < KEEL__CO_EPOCH_NS)
		return false;
	epoch_end(c, dur);
	c->epoch_start = now;
	c->events = 0;
	c->sleeps = 0;
	return true;
}

/* SPDX-License-Identifier: MIT */
/*
 * The wait coalescing policy (core/coalesce.c): pure decisions on counts a loop reports, with
 * no dependency on the ring, so that keel-bench's epoll server can sleep under the same
 * policy as keel's shards (tools/keel-bench/epoll.c, --gather-us).
 */
#ifndef KEEL_CORE_COALESCE_H
#define KEEL_CORE_COALESCE_H

#include <stdbool.h>
#include <stdint.h>

/* Wait coalescing (core/coalesce.c, --wait-coalesce-us): whether the next sleep gathers
 * completions for up to window_ns (core/loop.c: enter_gather) or returns at the first. */
#define KEEL__CO_EPOCH_NS    10000000ULL /* 10 ms: the unit of measurement */
#define KEEL__CO_MIN_EVENTS  64          /* an epoch with less work decides nothing */
#define KEEL__CO_MIN_SLEEPS  16          /* ... nor one with fewer sleeps (nothing to save) */
#define KEEL__CO_TOL         20          /* rates within 1/20 of each other are equal */
#define KEEL__CO_ON_EPOCHS   64          /* while coalescing, a trial without it every 64 epochs */
#define KEEL__CO_BACKOFF_MIN 4           /* while not, a trial of it after 4 epochs, */
#define KEEL__CO_BACKOFF_MAX 512         /* x4 by each lost trial up to 512 (about 5 s) */
#define KEEL__CO_GATHER      64          /* completions that end a gathering sleep early */
#define KEEL__CO_REF         4           /* a trial is compared with the last 4 steady epochs */
#define KEEL__CO_TRIAL       4           /* and lasts 4 epochs */
struct keel__coalesce {
	uint64_t window_ns;            /* --wait-coalesce-us in ns; 0: never */
	bool fixed;                    /* --wait-coalesce-fixed: always on, no trials */
	bool on;                       /* the next sleep gathers */
	bool trial;                    /* this epoch tries the state opposite to the steady one */
	uint64_t epoch_start;          /* ns */
	uint64_t events;               /* work found in this epoch */
	uint64_t sleeps;               /* sleeps in this epoch */
	uint64_t ref_ev[KEEL__CO_REF]; /* the work of the last steady epochs (a ring) */
	uint64_t ref_ns[KEEL__CO_REF]; /* ... and their lengths */
	unsigned ref_n;                /* epochs in it, at most KEEL__CO_REF */
	unsigned ref_i;                /* the next slot to write */
	uint64_t trial_ev, trial_ns;   /* the trial's work and length so far */
	unsigned trial_left;           /* trial epochs still to run */
	unsigned steady_left;          /* steady epochs before the next trial */
	unsigned backoff;              /* steady epochs without coalescing between its trials */
	uint64_t trials, trials_won, trials_lost;
};
void keel__coalesce_init(struct keel__coalesce *c, uint64_t window_ns, bool fixed, uint64_t now);
/* Whether the next sleep gathers completions for c->window_ns. */
bool keel__coalesce_on(const struct keel__coalesce *c);
/* A loop pass that began at @now found @work (CQEs, messages, foreign requests: not the
 * timers or deferred calls, which a pass may batch and so count less when gathering).
 * Returns true when it ended an epoch (the trial counts may have changed). */
bool keel__coalesce_pass(struct keel__coalesce *c, uint64_t now, uint64_t work);
/* The shard slept in the kernel. */
void keel__coalesce_slept(struct keel__coalesce *c);

#endif

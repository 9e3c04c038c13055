/* SPDX-License-Identifier: MIT */
/*
 * Per-shard timers, driven by the loop. The kernel wait of an idle shard ends at the
 * nearest deadline. Resolution is the loop's: a timer fires on the first pass at or after
 * its deadline (millisecond accuracy; no busy loop when idle).
 */
#ifndef KEEL_TIMER_H
#define KEEL_TIMER_H

#include <keel/common.h>
#include <keel/time.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_timer;
struct keel_shard;

/** Runs on the timer's shard when it fires. It may re-start, stop or destroy @t. */
typedef void (*keel_timer_fn)(struct keel_timer *t, void *arg);

/**
 * A timer. Either keel allocates it (keel_timer_create / keel_timer_destroy), or the app
 * embeds it in its own struct, without an allocation (keel_timer_init / keel_timer_fini),
 * and finds its struct again in the callback from @t's address (container_of). The fields
 * are private to keel: read nothing, write nothing; the layout may change between releases.
 */
struct keel_timer {
	struct keel_shard *shard_;
	keel_timer_fn fn_;
	void *arg_;
	uint64_t deadline_ns_;
	uint64_t period_ns_;
	int64_t heap_idx_;                        /* -1 when not pending */
	struct keel_timer *all_prev_, *all_next_; /* created timers, freed at shard teardown */
	unsigned flags_;
};

/**
 * Initialise @t, in the caller's memory, as a timer of this shard, not started. On a timer
 * already initialised on this shard and not pending, it makes it anew (no fini needed in
 * between; on a pending one it aborts, as on one from keel_timer_create() and on one another
 * shard of the runtime initialised and did not fini: keel_timer_fini() it there first).
 * Ownership: @t stays the caller's; keel never frees it. It must stay valid, and must not
 * move, until keel_timer_fini() (or until the shard ended: its stop takes every timer
 * pending then off the heap; one started while stopping still fires if the stop lasts
 * that long, and is not pending once the runtime has ended).
 * Returns: 0, -EINVAL when @fn is NULL, or -ENOMEM (every timer has its place in the shard's
 * timer heap from here on, so that starting it cannot fail).
 * Context: a shard; the timer belongs to it.
 */
KEEL_API int keel_timer_init(struct keel_timer *t, keel_timer_fn fn, void *arg);

/**
 * Stop @t (from keel_timer_init()) for good; its memory may then be reused or freed by the
 * caller. Calling keel_timer_init() on it again makes it a new timer. A timer already
 * finalised, or a zeroed struct never initialised, is left alone. A timer whose runtime has
 * ended needs no fini: init it again (a fini from another runtime's shard aborts, as a fini
 * on the wrong shard does, unless that shard sits where the ended one did).
 * Context: the timer's shard (inside its own callback too).
 */
KEEL_API void keel_timer_fini(struct keel_timer *t);

/**
 * Create a timer on this shard, not started.
 * Returns: 0 and *out, or -ENOMEM.
 * Context: a shard; the timer belongs to it. Timers not destroyed are freed when the shard
 * ends.
 */
KEEL_API int keel_timer_create(keel_timer_fn fn, void *arg, struct keel_timer **out);

/**
 * (Re)start @t to fire @delay_ns from now, then every @period_ns (0: once). Nanoseconds,
 * like every duration in keel: write KEEL_MS(250) or KEEL_US(500) (keel/time.h). A deadline
 * or period past the clock's end (UINT64_MAX: never) is held at its end, never wrapped.
 * Returns: 0; it cannot fail (the timer's place in the heap was made with the timer).
 * Context: the timer's shard.
 */
KEEL_API int keel_timer_start(struct keel_timer *t, uint64_t delay_ns, uint64_t period_ns);

/**
 * When @t fires next, on the keel_now_ns() clock (CLOCK_MONOTONIC).
 * Returns: the deadline in nanoseconds, or 0 when @t is not pending.
 * Context: the timer's shard.
 */
KEEL_API uint64_t keel_timer_deadline_ns(const struct keel_timer *t);

/**
 * Cancel @t.
 * Returns: 0 when it was pending, -ENOENT when it was not.
 * Context: the timer's shard.
 */
KEEL_API int keel_timer_stop(struct keel_timer *t);

/** True while @t is started and has not fired (for a periodic timer: until stopped). */
KEEL_API int keel_timer_pending(const struct keel_timer *t);

/** Cancel and free @t (from keel_timer_create()). Context: the timer's shard (inside its own
 * callback too). */
KEEL_API void keel_timer_destroy(struct keel_timer *t);

#ifdef __cplusplus
}
#endif

#endif

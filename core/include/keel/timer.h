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

struct keel_timer;

/** Runs on the timer's shard when it fires. It may re-start, stop or destroy @t. */
typedef void (*keel_timer_fn)(struct keel_timer *t, void *arg);

/**
 * Create a timer on this shard, not started.
 * Returns: 0 and *out, or -ENOMEM.
 * Context: a shard; the timer belongs to it. Timers not destroyed are freed when the shard
 * ends.
 */
KEEL_API int keel_timer_create(keel_timer_fn fn, void *arg, struct keel_timer **out);

/**
 * (Re)start @t to fire @delay_ns from now, then every @period_ns (0: once). Nanoseconds,
 * like every duration in keel: write KEEL_MS(250) or KEEL_US(500) (keel/time.h).
 * Returns: 0, or -ENOMEM when the shard's timer heap could not grow.
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

/** Cancel and free @t. Context: the timer's shard (inside its own callback too). */
KEEL_API void keel_timer_destroy(struct keel_timer *t);

#endif

/* SPDX-License-Identifier: MIT */
/* Internal hooks core shares with the network layer (net/net_internal.h includes this too):
 * test countdowns and the second signal's exit. Not installed. */
#ifndef KEEL_CORE_HOOKS_H
#define KEEL_CORE_HOOKS_H

#include <stdatomic.h>
#include <stdbool.h>

/* Test hooks: take one from the countdown @c; true when it was not yet 0 (inject). */
static inline bool
keel__fault_take(_Atomic unsigned *c)
{
	unsigned n = atomic_load_explicit(c, memory_order_relaxed);

	while (__builtin_expect(n != 0, 0))
		if (atomic_compare_exchange_weak(c, &n, n - 1))
			return true;
	return false;
}

/* A deferred call that cannot fail, for what must not run inside the call that asks for
 * it (on_close after a close): the caller keeps the node in its own state, so queuing it
 * allocates nothing, where keel_defer may fail with -ENOMEM. */
struct keel__later {
	struct keel__later *next;
	void (*fn)(struct keel__later *l);
	bool queued;
};

/* Run @l->fn(@l) on this shard with its deferred calls (the next pass; the loop does not
 * sleep before it). Queued once until it runs: queuing it again meanwhile does nothing.
 * @fn may queue @l again (it then runs on the pass after). Returns: 0, or -ESHUTDOWN
 * once the shard's loop has ended (as keel_defer). Context: a shard. */
int keel__later(struct keel__later *l);

/* signal.c: called before a second signal's _exit, which skips every destroy: the network
 * removes the paths of its Unix listeners there (set by net/listen.c). */
extern void (*_Atomic keel__before_fast_exit)(void);

#endif

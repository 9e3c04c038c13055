/* SPDX-License-Identifier: MIT */
/* Internal hooks core shares with the network layer (net/net_internal.h includes this too):
 * test countdowns, the second signal's exit and the descriptor limit's raise. Not
 * installed. */
#ifndef KEEL_CORE_HOOKS_H
#define KEEL_CORE_HOOKS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/resource.h>

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

/* nofile.c: RLIMIT_NOFILE's soft limit, raised by the network for its direct-descriptor
 * tables, is put back at the last runtime's destroy where it still holds the value keel
 * set. The raise (getrlimit, setrlimit) is made under keel__nofile_lock(), and a raise
 * that took effect is told with keel__nofile_raised(@from, @to), under the lock. */
void keel__nofile_lock(void);
void keel__nofile_unlock(void);
void keel__nofile_raised(rlim_t from, rlim_t to);
/* runtime.c: counted from a runtime's create to its destroy. */
void keel__nofile_runtime_created(void);
void keel__nofile_runtime_destroyed(void);

#endif

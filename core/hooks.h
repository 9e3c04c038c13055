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

/* The stop's hold (loop.c). A stopping shard cancels everything in flight right after its
 * stop hooks, then issues the hooks' disk requests. A hold taken by a stop hook postpones
 * both, so that what its taker still does then (the network's graceful closes under
 * --stop-flush-ms: sends and lingering receives) is not cancelled. The stop goes on once
 * every hold is released, or opts.stop_flush_ms after the stop began: then each hold
 * still taken is released by core and its @expire(@h) runs, from the loop, to end at once
 * what it held (it must not take a hold again). The shard counts as busy while held, so
 * its timers run and the stop waits. */
struct keel__stop_hold {
	struct keel__stop_hold *next;
	void (*expire)(struct keel__stop_hold *h);
	const char *what; /* what holds the stop, for the line a long stop logs */
	bool held;
};

/* Take @h (nothing when taken already). Returns 0; -EINVAL when opts.stop_flush_ms is 0
 * (no bound for it) or outside the stop hooks (begin_stop). Context: a shard's stop hook. */
int keel__stop_hold(struct keel__stop_hold *h, void (*expire)(struct keel__stop_hold *h),
		    const char *what);
/* Release @h (nothing when not taken, or taken back by core at the deadline). Context: the
 * shard that took it. */
void keel__stop_release(struct keel__stop_hold *h);
/* The current shard's opts.stop_flush_ms, and what a message calls that option
 * (--stop-flush-ms, or KEEL_STOP_FLUSH_MS when the environment set it). Context: a shard. */
unsigned keel__stop_flush_ms(void);
const char *keel__stop_flush_opt(void);

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

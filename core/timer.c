// SPDX-License-Identifier: MIT
/* Per-shard timers: a binary min-heap ordered by deadline. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

#include "internal.h"

/* now + d, held at the end of time rather than wrapping into the past. */
static inline uint64_t
add_sat(uint64_t now, uint64_t d)
{
	return d > UINT64_MAX - now ? UINT64_MAX : now + d;
}

static inline bool
before(const struct keel_timer *a, const struct keel_timer *b)
{
	return a->deadline_ns_ < b->deadline_ns_;
}

static void
heap_set(struct keel_shard *s, size_t i, struct keel_timer *t)
{
	s->heap[i] = t;
	t->heap_idx_ = (int64_t)i;
}

static void
sift_up(struct keel_shard *s, size_t i)
{
	struct keel_timer *t = s->heap[i];
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!before(t, s->heap[p]))
			break;
		heap_set(s, i, s->heap[p]);
		i = p;
	}
	heap_set(s, i, t);
}

static void
sift_down(struct keel_shard *s, size_t i)
{
	struct keel_timer *t = s->heap[i];
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= s->heap_n)
			break;
		if (c + 1 < s->heap_n && before(s->heap[c + 1], s->heap[c]))
			c++;
		if (!before(s->heap[c], t))
			break;
		heap_set(s, i, s->heap[c]);
		i = c;
	}
	heap_set(s, i, t);
}

static void
heap_remove(struct keel_shard *s, struct keel_timer *t)
{
	size_t i = (size_t)t->heap_idx_;
	struct keel_timer *last = s->heap[--s->heap_n];

	t->heap_idx_ = -1;
	if (last == t)
		return;
	heap_set(s, i, last);
	if (i > 0 && before(last, s->heap[(i - 1) / 2]))
		sift_up(s, i);
	else
		sift_down(s, i);
}

/* Room for one more live timer: the heap holds at most every live timer, so reserving a
 * slot when a timer is made means starting one never allocates and never fails. */
static int
heap_reserve(struct keel_shard *s)
{
	if (s->timers_live == s->heap_cap) {
		if (KEEL__FAULTS_ALLOC())
			return -ENOMEM;
		size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
		struct keel_timer **h = realloc(s->heap, cap * sizeof(*h));
		if (!h)
			return -ENOMEM;
		s->heap = h;
		s->heap_cap = cap;
	}
	s->timers_live++;
	return 0;
}

static void
heap_push(struct keel_shard *s, struct keel_timer *t)
{
	keel_verify(s->heap_n < s->heap_cap);
	s->heap[s->heap_n] = t;
	t->heap_idx_ = (int64_t)s->heap_n++;
	sift_up(s, (size_t)t->heap_idx_);
}

/* flags_: a timer keel allocated (create/destroy), and one initialised (init/fini), so that
 * the wrong release of either is caught; above them, its shard's tag (timer_gen), so that a
 * timer of an ended runtime's shard is not taken for one of a new shard at its address. */
#define TIMER_ALLOCATED 1u
#define TIMER_LIVE      2u
#define TIMER_GEN_SHIFT 2u

static void
timer_setup(struct keel_shard *s, struct keel_timer *t, keel_timer_fn fn, void *arg, unsigned flags)
{
	*t = (struct keel_timer){ .shard_ = s,
				  .fn_ = fn,
				  .arg_ = arg,
				  .heap_idx_ = -1,
				  .flags_ =
					  flags | TIMER_LIVE | (s->timer_gen << TIMER_GEN_SHIFT) };
}

/* @t is a live timer @s initialised, not one of an ended shard at the same address. */
static bool
live_here(const struct keel_shard *s, const struct keel_timer *t)
{
	return t->shard_ == s && (t->flags_ & TIMER_LIVE) &&
	       t->flags_ >> TIMER_GEN_SHIFT == (s->timer_gen & (UINT_MAX >> TIMER_GEN_SHIFT));
}

/* A created timer about to be freed is not live any more: malloc may give its memory back
 * unchanged (jemalloc does), and keel_timer_init would take it for a live created timer's
 * and abort. Volatile: a plain store before free() is a dead store the compiler drops. */
static void
timer_forget(struct keel_timer *t)
{
	*(volatile unsigned *)&t->flags_ = 0;
}

/* Whether @p is one of @rt's shards (an address compare: a timer's shard_ may be an ended
 * runtime's, freed). */
static bool
shard_of(const struct keel_runtime *rt, const struct keel_shard *p)
{
	uintptr_t a = (uintptr_t)rt->shards, x = (uintptr_t)p;

	return x >= a && x < a + rt->count * sizeof(*rt->shards) &&
	       (x - a) % sizeof(*rt->shards) == 0;
}

int
keel_timer_init(struct keel_timer *t, keel_timer_fn fn, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);

	if (!fn || !t)
		return -EINVAL;
	/* Initialising a timer that is pending (no keel_timer_fini first) would leave the heap
	 * holding it twice: it would fire twice, and once after its fini. */
	keel_verify(!(t->flags_ & TIMER_LIVE) || t->shard_ != s || t->heap_idx_ < 0 ||
		    (uint64_t)t->heap_idx_ >= s->heap_n || s->heap[t->heap_idx_] != t);
	/* Live on another shard of this runtime: that shard's heap holds its place (and the
	 * timer itself while pending); made anew here it was reset under that shard, whose
	 * next heap operation wrote outside its heap. keel_timer_fini it there first. Its
	 * fields are read without that shard's order: what misuse leaves is all this sees. */
	keel_verify(!(t->flags_ & TIMER_LIVE) || t->shard_ == s || !shard_of(s->rt, t->shard_) ||
		    !live_here(t->shard_, t));
	/* A timer from keel_timer_create (destroy it, or start it again): made anew here it
	 * left the shard's list of created timers, and those created before it were never
	 * freed. */
	keel_verify(!(t->flags_ & TIMER_ALLOCATED) || !live_here(s, t));
	/* Initialised here already and not pending (a pooled object reused without a fini):
	 * made anew in the heap place it holds. Reserving another, which no fini would give
	 * back, grew the heap at every reuse. */
	if (!(t->flags_ & TIMER_ALLOCATED) && live_here(s, t)) {
		timer_setup(s, t, fn, arg, 0);
		return 0;
	}
	if (heap_reserve(s) < 0)
		return -ENOMEM;
	timer_setup(s, t, fn, arg, 0);
	return 0;
}

void
keel_timer_fini(struct keel_timer *t)
{
	/* Twice, or on a zeroed struct never initialised: nothing to do (an app's error path
	 * may fini what it did not get to init). */
	if (!t || !(t->flags_ & TIMER_LIVE))
		return;
	keel_verify(!(t->flags_ & TIMER_ALLOCATED)); /* from keel_timer_create: destroy it */
	keel_verify(t->shard_ == keel__cur);
	/* Left live by an ended runtime whose shard sat at this address: its place went with
	 * that shard, none of this one's is to give back. */
	if (!live_here(t->shard_, t)) {
		t->flags_ = 0;
		return;
	}
	if (t->heap_idx_ >= 0)
		heap_remove(t->shard_, t);
	t->shard_->timers_live--;
	t->flags_ = 0;
}

/* Test hook: the next N keel_timer_create calls fail with -ENOMEM. */
_Atomic unsigned keel__fault_timer_nomem;

int
keel_timer_create(keel_timer_fn fn, void *arg, struct keel_timer **out)
{
	struct keel_shard *s = cur_shard(__func__);
	struct keel_timer *t;

	if (!fn)
		return -EINVAL;
	if (keel__fault_take(&keel__fault_timer_nomem))
		return -ENOMEM;
	t = calloc(1, sizeof(*t));
	if (!t || heap_reserve(s) < 0) {
		free(t);
		return -ENOMEM;
	}
	timer_setup(s, t, fn, arg, TIMER_ALLOCATED);
	t->all_next_ = s->timers_all;
	if (s->timers_all)
		s->timers_all->all_prev_ = t;
	s->timers_all = t;
	*out = t;
	return 0;
}

int
keel_timer_start(struct keel_timer *t, uint64_t delay_ns, uint64_t period_ns)
{
	struct keel_shard *s = t->shard_;
	uint64_t now = keel__clock_ns();

	keel_verify(s == keel__cur);
	/* Live here: not one left by an ended runtime whose shard sat at this address (no heap
	 * place is reserved for it here; keel_timer_init it again). */
	keel_verify(live_here(s, t));
	/* Strictly after this pass's start, so a timer re-started from a timer callback with
	 * no delay fires on the next pass, never in a loop within this one. */
	if (now <= s->now_ns)
		now = s->now_ns + 1;
	if (t->heap_idx_ >= 0)
		heap_remove(s, t);
	t->deadline_ns_ = add_sat(now, delay_ns);
	t->period_ns_ = period_ns;
	heap_push(s, t); /* its slot was reserved when the timer was made */
	return 0;
}

int
keel_timer_stop(struct keel_timer *t)
{
	keel_verify(t->shard_ == keel__cur);
	if (t->heap_idx_ < 0)
		return -ENOENT;
	heap_remove(t->shard_, t);
	return 0;
}

uint64_t
keel_timer_deadline_ns(const struct keel_timer *t)
{
	keel_verify(t->shard_ == keel__cur);
	return t->heap_idx_ >= 0 ? t->deadline_ns_ : 0;
}

int
keel_timer_pending(const struct keel_timer *t)
{
	/* A zeroed struct never initialised has heap index 0: not pending. */
	return (t->flags_ & TIMER_LIVE) && t->heap_idx_ >= 0;
}

void
keel_timer_destroy(struct keel_timer *t)
{
	struct keel_shard *s;

	if (!t)
		return;
	s = t->shard_;
	keel_verify(s == keel__cur);
	keel_verify((t->flags_ & (TIMER_LIVE | TIMER_ALLOCATED)) == (TIMER_LIVE | TIMER_ALLOCATED));
	if (t->heap_idx_ >= 0)
		heap_remove(s, t);
	if (t->all_prev_)
		t->all_prev_->all_next_ = t->all_next_;
	else
		s->timers_all = t->all_next_;
	if (t->all_next_)
		t->all_next_->all_prev_ = t->all_prev_;
	s->timers_live--;
	timer_forget(t);
	free(t);
}

unsigned
keel__timers_run(struct keel_shard *s)
{
	uint64_t now = s->now_ns;
	unsigned n = 0;

	while (s->heap_n && s->heap[0]->deadline_ns_ <= now) {
		struct keel_timer *t = s->heap[0];

		heap_remove(s, t);
		if (t->period_ns_) {
			uint64_t at = keel__clock_ns();

			/* Fell behind: skip, do not burst. Behind the clock, not the pass's start:
			 * a callback earlier in this pass may have run long, and a next deadline
			 * in the past of this fire would fire again at once (one clock read per
			 * periodic fire; now <= at, so behind now is behind at too). */
			t->deadline_ns_ = add_sat(t->deadline_ns_, t->period_ns_);
			if (t->deadline_ns_ <= at)
				t->deadline_ns_ = add_sat(at, t->period_ns_);
			heap_push(s, t);
		}
		n++;
		STAT_INC(s, timers_fired);
		t->fn_(t, t->arg_);
	}
	return n;
}

int64_t
keel__timers_next_ns(struct keel_shard *s)
{
	return s->heap_n ? (int64_t)s->heap[0]->deadline_ns_ : -1;
}

void
keel__timers_stop_all(struct keel_shard *s)
{
	for (size_t i = 0; i < s->heap_n; i++)
		s->heap[i]->heap_idx_ = -1;
	s->heap_n = 0;
}

void
keel__timers_fini(struct keel_shard *s)
{
	struct keel_timer *t = s->timers_all;

	/* Timers still in the heap (started once the stop had begun): not pending once the
	 * heap is gone. An embedded one outlives the shard, and its index would be used against
	 * the heap of a new shard at this address. */
	keel__timers_stop_all(s);
	while (t) {
		struct keel_timer *next = t->all_next_;
		timer_forget(t);
		free(t);
		t = next;
	}
	s->timers_all = NULL;
	free(s->heap);
	s->heap = NULL;
	s->heap_n = s->heap_cap = s->timers_live = 0;
}

// SPDX-License-Identifier: MIT
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include <criterion/criterion.h>

#include "../../core/internal.h"
#include "helpers.h"

/* 1,000,000 messages among 4 shards: every shard sends to every shard (itself included)
 * sequence numbers; each receiver checks the per-source sequence. */
#define NSHARDS  4
#define TOTAL    1000000u
#define PER_PAIR (TOTAL / (NSHARDS * NSHARDS))

struct pair_msg {
	unsigned src;
	uint64_t seq;
};

struct shard_state {
	_Alignas(64) uint64_t next_send[NSHARDS];
	uint64_t next_recv[NSHARDS];
	uint64_t received;
	uint64_t out_of_order;
	struct pair_msg *pool; /* PER_PAIR * NSHARDS messages, owned by the sender */
	unsigned shard;
};

struct mail_test {
	struct shard_state st[NSHARDS];
	_Atomic unsigned done_shards;
	_Atomic uint64_t total_received;
};

static struct mail_test *mt;

static void
on_msg(void *arg)
{
	struct pair_msg *m = arg;
	struct shard_state *me = &mt->st[keel_shard_id(keel_this_shard())];

	if (m->seq != me->next_recv[m->src])
		me->out_of_order++;
	me->next_recv[m->src] = m->seq + 1;
	if (++me->received == PER_PAIR * NSHARDS) {
		atomic_fetch_add(&mt->total_received, me->received);
		if (atomic_fetch_add(&mt->done_shards, 1) + 1 == NSHARDS)
			keel_stop(0);
	}
}

static void
pump(void *arg)
{
	struct shard_state *me = arg;
	bool more = false;

	/* A burst per destination per pass: enough to fill queues and exercise overflow. A
	 * destination whose overflow reached its limit (-EAGAIN) gets the rest next time. */
	for (unsigned d = 0; d < NSHARDS; d++) {
		for (unsigned k = 0; k < 3000 && me->next_send[d] < PER_PAIR; k++) {
			struct pair_msg *m = &me->pool[d * PER_PAIR + me->next_send[d]];
			int r;

			m->src = me->shard;
			m->seq = me->next_send[d];
			r = keel_send(d, on_msg, m);
			if (r == -EAGAIN)
				break;
			if (!SHARD_CHECK_EQ(r, 0, "shard %u to %u", me->shard, d)) {
				keel_stop(-EIO);
				return;
			}
			me->next_send[d]++;
		}
		more |= me->next_send[d] < PER_PAIR;
	}
	if (more)
		keel_defer(pump, me);
}

static void
mail_start(void *app)
{
	unsigned id = keel_shard_id(keel_this_shard());
	struct shard_state *me = &mt->st[id];

	me->shard = id;
	keel_defer(pump, me);
}

/* A runtime of few shards finds its mail by reading every inbox; with the scan's limit set
 * below its count it uses the has-mail bitmap (core/internal.h, runtime.mail_scan), as one
 * of more shards does: each test that is about finding mail runs both. */
static void
mail_mode(unsigned shards, bool bitmap, struct keel_runtime *rt)
{
	cr_assert_eq(rt->mail_scan, !bitmap, "the runtime of %u shards %s the bitmap", shards,
		     bitmap ? "does not use" : "uses");
}

/* keel_runtime_create, with the bitmap when @bitmap (the limit is read at creation only, and
 * put back after it). */
static void
create_in_mode(const struct keel_opts *o, bool bitmap, struct keel_runtime **rt)
{
	unsigned saved = keel__mail_scan_max;

	if (bitmap)
		keel__mail_scan_max = 0;
	cr_assert_eq(keel_runtime_create(o, rt), 0);
	keel__mail_scan_max = saved;
	mail_mode(o->shards, bitmap, *rt);
}

static void
million(bool bitmap)
{
	struct keel_opts o = test_opts(NSHARDS);
	struct keel_runtime *rt;
	uint64_t sent = 0, recv = 0, overflow = 0;
	int r;

	o.mailbox_entries = 256; /* small queues: the overflow path must carry order too */
	mt = calloc(1, sizeof(*mt));
	for (unsigned i = 0; i < NSHARDS; i++)
		mt->st[i].pool = calloc(PER_PAIR * NSHARDS, sizeof(struct pair_msg));
	create_in_mode(&o, bitmap, &rt);
	cr_assert_eq(keel_runtime_start(rt, mail_start, NULL), 0);
	r = keel_runtime_join(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	for (unsigned i = 0; i < NSHARDS; i++) {
		struct keel_shard_stats st;
		cr_assert_eq(keel_runtime_stats(rt, i, &st), 0);
		sent += st.msgs_sent;
		recv += st.msgs_recv;
		overflow += st.msgs_overflow;
		cr_expect_eq(mt->st[i].out_of_order, 0, "shard %u saw messages out of order", i);
		cr_expect_eq(mt->st[i].received, PER_PAIR * NSHARDS);
		for (unsigned s = 0; s < NSHARDS; s++)
			cr_expect_eq(mt->st[i].next_recv[s], PER_PAIR, "pair %u->%u incomplete", s,
				     i);
	}
	keel_runtime_destroy(rt);
	cr_assert_eq(atomic_load(&mt->total_received), (uint64_t)PER_PAIR * NSHARDS * NSHARDS);
	cr_assert_eq(sent, (uint64_t)PER_PAIR * NSHARDS * NSHARDS);
	cr_assert_eq(recv, sent, "messages lost or duplicated: sent %llu, run %llu",
		     (unsigned long long)sent, (unsigned long long)recv);
	cr_expect_gt(overflow, 0, "the test meant to exercise the overflow path did not");
	for (unsigned i = 0; i < NSHARDS; i++)
		free(mt->st[i].pool);
	free(mt);
}

Test(core_msg, million_messages_among_four_shards_arrive_once_in_order, .timeout = 120)
{
	million(false);
}

Test(core_msg, million_messages_with_the_has_mail_bitmap_arrive_once_in_order, .timeout = 120)
{
	million(true);
}

/* call: fn runs on the destination, done back on the caller. */
struct call_test {
	_Atomic int fn_shard;
	_Atomic int done_shard;
	_Atomic int done_status;
};

static int
call_fn(void *arg)
{
	struct call_test *c = arg;
	atomic_store(&c->fn_shard, (int)keel_shard_id(keel_this_shard()));
	return -42;
}

static void
call_done(int status, void *arg)
{
	struct call_test *c = arg;
	atomic_store(&c->done_shard, (int)keel_shard_id(keel_this_shard()));
	atomic_store(&c->done_status, status);
	keel_stop(0);
}

static void
call_start(void *app)
{
	if (keel_shard_id(keel_this_shard()) == 1 &&
	    !SHARD_CHECK_EQ(keel_call(2, call_fn, app, call_done, app), 0))
		keel_stop(-EIO);
}

Test(core_msg, call_runs_fn_remotely_and_done_on_caller)
{
	struct keel_opts o = test_opts(3);
	struct call_test c = { -1, -1, 0 };
	int r = keel_run(&o, call_start, &c);

	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(atomic_load(&c.fn_shard), 2);
	cr_assert_eq(atomic_load(&c.done_shard), 1);
	cr_assert_eq(atomic_load(&c.done_status), -42);
}

/* broadcast: every shard once, all_done once on the caller after all ran. */
#define BSHARDS 6
#define BMAX    70 /* past KEEL_MAIL_SCAN_MAX, and two words of the has-mail bitmap */
struct bcast_test {
	unsigned n; /* shards */
	_Atomic unsigned hits[BMAX];
	_Atomic unsigned all_done_calls;
	_Atomic unsigned hits_at_done;
	_Atomic int done_shard;
};

static void
bcast_fn(void *arg)
{
	struct bcast_test *b = arg;
	atomic_fetch_add(&b->hits[keel_shard_id(keel_this_shard())], 1);
}

static void
bcast_done(int status, void *arg)
{
	struct bcast_test *b = arg;
	unsigned sum = 0;
	SHARD_CHECK_EQ(status, 0);
	for (unsigned i = 0; i < b->n; i++)
		sum += atomic_load(&b->hits[i]);
	atomic_store(&b->hits_at_done, sum);
	atomic_store(&b->done_shard, (int)keel_shard_id(keel_this_shard()));
	atomic_fetch_add(&b->all_done_calls, 1);
	keel_stop(0);
}

static void
bcast_start(void *app)
{
	if (keel_shard_id(keel_this_shard()) == 3 &&
	    !SHARD_CHECK_EQ(keel_broadcast(bcast_fn, app, bcast_done, app), 0))
		keel_stop(-EIO);
}

static void
broadcast(unsigned n)
{
	struct keel_opts o = test_opts(n);
	struct bcast_test b = { .n = n };
	struct keel_runtime *rt;
	int r;

	if (n > 64)
		o.mailbox_entries = 16; /* n * n queues: a few MiB, not 160 */
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	/* Past KEEL_MAIL_SCAN_MAX shards the runtime uses the bitmap of itself. */
	mail_mode(n, n > KEEL_MAIL_SCAN_MAX, rt);
	cr_assert_eq(keel_runtime_start(rt, bcast_start, &b), 0);
	r = keel_runtime_join(rt);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	for (unsigned i = 0; i < n; i++)
		cr_assert_eq(atomic_load(&b.hits[i]), 1, "shard %u ran the broadcast %u times", i,
			     atomic_load(&b.hits[i]));
	cr_assert_eq(atomic_load(&b.all_done_calls), 1);
	cr_assert_eq(atomic_load(&b.hits_at_done), n);
	cr_assert_eq(atomic_load(&b.done_shard), 3);
}

Test(core_msg, broadcast_reaches_every_shard_once)
{
	broadcast(BSHARDS);
}

_Static_assert(BMAX > KEEL_MAIL_SCAN_MAX && BMAX > 64, "the bitmap, with a second word");

Test(core_msg, broadcast_among_70_shards_with_the_has_mail_bitmap_reaches_each_once, .timeout = 60)
{
	broadcast(BMAX);
}

/* Messages to a sleeping shard wake it (MSG_RING): with no idle polling, every message in
 * a slow ping-pong lands on a receiver asleep in the kernel. */
struct wake_test {
	unsigned rounds;
	struct keel_timer *t, *watchdog;
};

static int
wake_noop(void *arg)
{
	return 0;
}

static void wake_tick(struct keel_timer *t, void *arg);

static void
wake_back(int status, void *arg)
{
	struct wake_test *w = arg;
	if (++w->rounds == 20)
		keel_stop(0);
	else
		keel_timer_start(w->t, KEEL_MS(2), 0);
}

static void
wake_tick(struct keel_timer *t, void *arg)
{
	if (!SHARD_CHECK_EQ(keel_call(1, wake_noop, NULL, wake_back, arg), 0))
		keel_stop(-EIO);
}

/* The deadline: a reply that never comes (a sleeping shard never woken) ends the test
 * with a message instead of a hang. */
static void
wake_deadline(struct keel_timer *t, void *arg)
{
	struct wake_test *w = arg;
	SHARD_CHECK(false, "%u of 20 rounds in %u ms: the ping-pong stalled (a shard not woken?)",
		    w->rounds, TEST_WAIT_MS);
	keel_stop(-ETIMEDOUT);
}

/* On shard 0: @tick in 2 ms, and @deadline at TEST_WAIT_MS, both with @arg. */
static void
tick_and_deadline(keel_timer_fn tick, keel_timer_fn deadline, void *arg, struct keel_timer **t,
		  struct keel_timer **dl)
{
	if (keel_shard_id(keel_this_shard()) != 0)
		return;
	if (!SHARD_CHECK_EQ(keel_timer_create(tick, arg, t), 0) ||
	    !SHARD_CHECK_EQ(keel_timer_create(deadline, arg, dl), 0)) {
		keel_stop(-EIO);
		return;
	}
	keel_timer_start(*dl, KEEL_MS(TEST_WAIT_MS), 0);
	keel_timer_start(*t, KEEL_MS(2), 0);
}

static void
wake_start(void *app)
{
	struct wake_test *w = app;

	tick_and_deadline(wake_tick, wake_deadline, w, &w->t, &w->watchdog);
}

static void
sleeping_receiver(bool bitmap)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	struct keel_shard_stats st;
	struct wake_test w = { 0 };
	int r;

	o.idle_poll_us = 0; /* about sleeping: said here too, not only in test_opts() */
	create_in_mode(&o, bitmap, &rt);
	cr_assert_eq(keel_runtime_start(rt, wake_start, &w), 0);
	r = keel_runtime_join(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(w.rounds, 20);
	/* Shard 1 has no timer: it sleeps until woken, so finishing 20 rounds is itself the
	 * proof; the counters show it slept and was woken (how often depends on scheduling). */
	cr_assert_eq(keel_runtime_stats(rt, 1, &st), 0);
	cr_assert_geq(st.wakeups, 1, "shard 1 was never woken");
	/* By MSG_RING: the eventfd (the fallback, and foreign requests') would count in
	 * wakeups too, so that alone passed with MSG_RING gone. */
	cr_assert_geq(st.wakeups_ring, 1, "shard 1 was never woken by MSG_RING (%llu wake-ups)",
		      (unsigned long long)st.wakeups);
	cr_assert_geq(st.sleeps, 1);
	keel_runtime_destroy(rt);
}

Test(core_msg, sleeping_receiver_is_woken_by_msg_ring)
{
	sleeping_receiver(false);
}

Test(core_msg, sleeping_receiver_with_the_has_mail_bitmap_is_woken_by_msg_ring)
{
	sleeping_receiver(true);
}

/* A shard that mails itself and then sleeps: its own flush wakes nobody (a shard does not
 * wake itself), so only the look at its inboxes before sleeping finds the message. Without
 * it the shard sleeps with its mail unread until its next timer, here the deadline. */
struct self_test {
	struct keel_timer *t, *deadline;
	_Atomic int ran;
};

static void
self_msg(void *arg)
{
	struct self_test *st = arg;

	atomic_store(&st->ran, 1);
	keel_stop(0);
}

static void
self_tick(struct keel_timer *t, void *arg)
{
	if (!SHARD_CHECK_EQ(keel_send(0, self_msg, arg), 0))
		keel_stop(-EIO);
}

static void
self_deadline(struct keel_timer *t, void *arg)
{
	SHARD_CHECK(false,
		    "shard 0's message to itself did not run in %u ms: it slept with "
		    "its mail unread",
		    TEST_WAIT_MS);
	keel_stop(-ETIMEDOUT);
}

static void
self_start(void *app)
{
	struct self_test *st = app;

	tick_and_deadline(self_tick, self_deadline, st, &st->t, &st->deadline);
}

static void
self_mail(bool bitmap)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	struct self_test st = { 0 };
	int r;

	o.idle_poll_us = 0;
	o.wait_coalesce_us = 0;
	create_in_mode(&o, bitmap, &rt);
	cr_assert_eq(keel_runtime_start(rt, self_start, &st), 0);
	r = keel_runtime_join(rt);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert(atomic_load(&st.ran));
}

Test(core_msg, mail_a_shard_sent_itself_before_sleeping_runs_at_once, .timeout = 60)
{
	self_mail(false);
}

Test(core_msg, mail_a_shard_sent_itself_before_sleeping_runs_at_once_with_the_bitmap, .timeout = 60)
{
	self_mail(true);
}

/* Mail published to a shard after its last drain and before it announces its sleep: the
 * sender sees it awake and wakes nobody, so only the receiver's look after announcing finds
 * the mail. keel__hook_before_sleep holds shard 1 in that gap until shard 0 has published
 * (a pass of shard 0 after the one that sent: its flush is done). Without the look, shard 1
 * sleeps with its mail unread (it has no timer) until shard 0's deadline. */
static struct gap_test {
	struct keel_timer *t, *deadline;
	_Atomic int in_gap, sent, published, ran, held;
} * gt;

static void
gap_hook(void)
{
	struct timespec ms = { 0, 1000000 };

	if (keel_shard_id(keel_this_shard()) != 1 || atomic_exchange(&gt->held, 1))
		return;
	atomic_store(&gt->in_gap, 1);
	for (unsigned i = 0; i < TEST_WAIT_MS && !atomic_load(&gt->published); i++)
		nanosleep(&ms, NULL);
}

static void
gap_msg(void *arg)
{
	atomic_store(&gt->ran, 1);
	keel_stop(0);
}

static void
gap_tick(struct keel_timer *t, void *arg)
{
	if (atomic_load(&gt->sent)) {
		atomic_store(&gt->published, 1); /* this pass is after the sending one's flush */
		return;
	}
	if (atomic_load(&gt->in_gap)) {
		if (!SHARD_CHECK_EQ(keel_send(1, gap_msg, NULL), 0)) {
			keel_stop(-EIO);
			return;
		}
		atomic_store(&gt->sent, 1);
	}
	keel_timer_start(t, KEEL_MS(1), 0);
}

static void
gap_deadline(struct keel_timer *t, void *arg)
{
	SHARD_CHECK(false,
		    "shard 1 did not run mail published before it announced its sleep, in %u "
		    "ms (in the gap: %d, sent: %d): it slept with the mail unread",
		    TEST_WAIT_MS, atomic_load(&gt->in_gap), atomic_load(&gt->sent));
	keel_stop(-ETIMEDOUT);
}

static void
gap_start(void *app)
{
	tick_and_deadline(gap_tick, gap_deadline, app, &gt->t, &gt->deadline);
}

static void
gap_mail(bool bitmap)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	int r;

	o.idle_poll_us = 0;
	o.wait_coalesce_us = 0;
	gt = calloc(1, sizeof(*gt));
	keel__hook_before_sleep = gap_hook;
	create_in_mode(&o, bitmap, &rt);
	cr_assert_eq(keel_runtime_start(rt, gap_start, gt), 0);
	r = keel_runtime_join(rt);
	keel_runtime_destroy(rt);
	keel__hook_before_sleep = NULL;
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert(atomic_load(&gt->ran));
	free(gt);
}

Test(core_msg, mail_published_before_the_receiver_announces_its_sleep_runs, .timeout = 60)
{
	gap_mail(false);
}

Test(core_msg, mail_published_before_the_receiver_announces_its_sleep_runs_with_the_bitmap,
     .timeout = 60)
{
	gap_mail(true);
}

static void
bad_dst_start(void *app)
{
	int *r = app;
	r[0] = keel_send(5, bcast_fn, NULL);
	r[1] = keel_call(5, wake_noop, NULL, wake_back, NULL);
	keel_stop(0);
}

Test(core_msg, send_to_missing_shard_is_einval)
{
	struct keel_opts o = test_opts(2);
	int r[2] = { 0, 0 };

	o.shards = 1;
	cr_assert_eq(keel_run(&o, bad_dst_start, r), 0);
	cr_assert_eq(r[0], -EINVAL);
	cr_assert_eq(r[1], -EINVAL);
}

// SPDX-License-Identifier: MIT
/*
 * Bounded cross-shard queues: once a destination's queue is full and --mailbox-overflow
 * messages wait on the sender, keel_send and the calls are refused with -EAGAIN; keel's own
 * traffic (a buffer's trip home, call replies) still goes; keel_msg_wait_room tells the
 * sender when it may send again. The receiver is held inside a message handler (not slept
 * on), so the queue fills exactly.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define ENTRIES  16u
#define OVERFLOW 4u
/* The hold occupies one slot until its handler returns: the rest of the queue, then the
 * overflow allowance. */
#define FITS (ENTRIES - 1 + OVERFLOW)

struct lim {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool released;
	_Atomic int held, filled, hold_timed_out;
	struct keel_slice slice; /* shard 1's buffer, moved to shard 0 */
	struct keel_xreq req;

	/* shard 0 */
	unsigned next_seq;
	_Atomic int fill_ok, fill_err, call_err, value_err, bcast_err, wait_ret;
	_Atomic int room_status, room_runs, room_after_release, room_send;
	_Atomic int late_wait_ret;
	_Atomic int late_status, late_runs;

	/* shard 1 */
	unsigned received, out_of_order;
	_Atomic uint64_t live_at_hold, live_at_end;
	_Atomic unsigned received_total;
};

static struct lim L;

static void
seq_recv(void *arg)
{
	unsigned seq = (unsigned)(uintptr_t)arg;
	struct keel_alloc_stats st;

	if (seq != L.received)
		L.out_of_order++;
	L.received = seq + 1;
	atomic_store(&L.received_total, L.received);
	if (L.received == FITS + 1) {
		/* The buffer's trip home was queued before this message: it ran. */
		keel_alloc_stats(keel_shard_alloc(), &st);
		atomic_store(&L.live_at_end, st.buffers_live);
		keel_stop(0);
	}
}

static void
hold(void *arg)
{
	struct keel_alloc_stats st;
	struct timespec dl;
	int r = 0;

	keel_alloc_stats(keel_shard_alloc(), &st);
	atomic_store(&L.live_at_hold, st.buffers_live);
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += TEST_WAIT_MS / 1000;
	pthread_mutex_lock(&L.lock);
	atomic_store(&L.held, 1);
	while (!L.released && r == 0)
		r = pthread_cond_timedwait(&L.cond, &L.lock, &dl);
	pthread_mutex_unlock(&L.lock);
	if (r)
		atomic_store(&L.hold_timed_out, 1);
}

static int
noop_call(void *arg)
{
	return 0;
}

static void
noop_done(int status, void *arg)
{
}

static int
noop_value(void *arg, uint64_t *v)
{
	return 0;
}

static void
noop_value_done(int status, uint64_t v, void *arg)
{
}

static void
noop_fn(void *arg)
{
}

static void
late_room(int status, void *arg)
{
	atomic_fetch_add(&L.late_runs, 1);
	atomic_store(&L.late_status, status);
}

static void
room(int status, void *arg)
{
	atomic_fetch_add(&L.room_runs, 1);
	atomic_store(&L.room_status, status);
	pthread_mutex_lock(&L.lock);
	atomic_store(&L.room_after_release, L.released);
	pthread_mutex_unlock(&L.lock);
	atomic_store(&L.room_send, keel_send(1, seq_recv, (void *)(uintptr_t)L.next_seq++));
	/* Registered while running: it must run on a later pass, and at the stop with
	 * -ESHUTDOWN if no room came first; either way exactly once. */
	atomic_store(&L.late_wait_ret, keel_msg_wait_room(1, late_room, NULL));
}

/* On shard 0, once shard 1 is held. */
static void
fill(struct keel_xreq *req)
{
	int r, n = 0;

	while ((r = keel_send(1, seq_recv, (void *)(uintptr_t)L.next_seq)) == 0) {
		L.next_seq++;
		if (++n > 1000)
			break;
	}
	atomic_store(&L.fill_ok, n);
	atomic_store(&L.fill_err, r);
	atomic_store(&L.call_err, keel_call(1, noop_call, NULL, noop_done, NULL));
	atomic_store(&L.value_err, keel_call_value(1, noop_value, NULL, noop_value_done, NULL));
	atomic_store(&L.bcast_err, keel_broadcast(noop_fn, NULL, NULL, NULL));
	/* The last put of shard 1's buffer: its trip home must not be refused. */
	keel_slice_put(&L.slice);
	atomic_store(&L.wait_ret, keel_msg_wait_room(1, room, NULL));
	keel_xreq_complete(req, 0);
	atomic_store(&L.filled, 1);
}

static void
got_slice(void *arg)
{
	if (!SHARD_CHECK_EQ(keel_send(1, hold, NULL), 0))
		keel_stop(-EIO);
}

static void
lim_start(void *app)
{
	if (keel_shard_id(keel_this_shard()) != 1)
		return;
	if (!SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), 100, &L.slice), 0)) {
		keel_stop(-EIO);
		return;
	}
	keel_slice_move(&L.slice, 0);
	if (!SHARD_CHECK_EQ(keel_send(0, got_slice, NULL), 0))
		keel_stop(-EIO);
}

Test(core_msg_limit, full_queue_refuses_with_eagain_then_room_callback_runs)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	struct keel_shard_stats st;
	int r;

	memset(&L, 0, sizeof(L));
	pthread_mutex_init(&L.lock, NULL);
	pthread_cond_init(&L.cond, NULL);
	L.fill_err = L.wait_ret = L.room_send = L.late_wait_ret = 1;
	o.mailbox_entries = ENTRIES;
	o.mailbox_overflow = OVERFLOW;
	o.memory = 16ull << 20;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, lim_start, NULL), 0);
	WAIT_FOR(atomic_load(&L.held), "shard 1 in the hold");
	L.req.fn = fill;
	cr_assert_eq(keel_runtime_submit(rt, 0, &L.req), 0);
	WAIT_FOR(atomic_load(&L.filled), "shard 0 filling the queue");
	/* Shard 1 is still held: no room can have come. */
	cr_expect_eq(atomic_load(&L.room_runs), 0, "room callback ran while the queue was full");
	pthread_mutex_lock(&L.lock);
	L.released = true;
	pthread_cond_signal(&L.cond);
	pthread_mutex_unlock(&L.lock);
	r = keel_runtime_join(rt);
	cr_assert_eq(keel_runtime_stats(rt, 0, &st), 0);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&L.hold_timed_out), 0, "the hold timed out");
	cr_assert_eq(r, 0);
	cr_assert_eq(atomic_load(&L.fill_ok), (int)FITS, "sends accepted: %d",
		     atomic_load(&L.fill_ok));
	cr_assert_eq(atomic_load(&L.fill_err), -EAGAIN);
	cr_assert_eq(atomic_load(&L.call_err), -EAGAIN);
	cr_assert_eq(atomic_load(&L.value_err), -EAGAIN);
	cr_assert_eq(atomic_load(&L.bcast_err), -EAGAIN);
	/* keel_send, keel_call, keel_call_value, keel_broadcast: one refusal each. */
	cr_assert_eq(st.msgs_refused, 4, "msgs_refused %llu", (unsigned long long)st.msgs_refused);
	cr_assert_eq(atomic_load(&L.wait_ret), 0);
	cr_assert_eq(atomic_load(&L.room_runs), 1);
	cr_assert_eq(atomic_load(&L.room_status), 0);
	cr_assert_eq(atomic_load(&L.room_after_release), 1);
	cr_assert_eq(atomic_load(&L.room_send), 0, "a send after the room callback: %d",
		     atomic_load(&L.room_send));
	cr_assert_eq(atomic_load(&L.received_total), FITS + 1);
	cr_assert_eq(L.out_of_order, 0);
	cr_assert_eq(atomic_load(&L.live_at_hold), 1, "shard 1's buffer was live at the hold");
	cr_assert_eq(atomic_load(&L.live_at_end), 0, "the buffer's trip home was lost");
	cr_assert_eq(atomic_load(&L.late_wait_ret), 0);
	cr_assert_eq(atomic_load(&L.late_runs), 1, "a room waiter ran %d times",
		     atomic_load(&L.late_runs));
	pthread_mutex_destroy(&L.lock);
	pthread_cond_destroy(&L.cond);
}

/* Bad input and the defaults. */
static void
wait_bad_start(void *app)
{
	int *r = app;

	r[0] = keel_msg_wait_room(7, late_room, NULL);
	r[1] = keel_msg_wait_room(0, NULL, NULL);
	keel_stop(0);
}

Test(core_msg_limit, wait_room_bad_arguments_are_einval)
{
	struct keel_opts o = test_opts(1);
	int r[2] = { 1, 1 };

	cr_assert_eq(keel_run(&o, wait_bad_start, r), 0);
	cr_assert_eq(r[0], -EINVAL);
	cr_assert_eq(r[1], -EINVAL);
}

Test(core_msg_limit, overflow_limit_option_parses_and_defaults)
{
	struct keel_opts o;
	char err[256] = "";
	char *argv[] = { "prog", "--mailbox-overflow", "0", NULL };
	int argc = 3;

	keel_opts_init(&o);
	cr_assert_eq(o.mailbox_overflow, KEEL_MAILBOX_OVERFLOW_DEFAULT);
	cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(o.mailbox_overflow, 0);
	cr_assert_eq(argc, 1);
}

/* A waiter whose shard stops before room comes gets -ESHUTDOWN (the target is still held
 * when it runs), and a wait asked for while stopping is refused. */
static void
shut_room(int status, void *arg)
{
	atomic_store(&L.room_status, status);
	atomic_store(&L.late_wait_ret, keel_msg_wait_room(1, late_room, NULL));
	atomic_fetch_add(&L.room_runs, 1);
}

static void
fill_then_stop(struct keel_xreq *req)
{
	int r, n = 0;

	while ((r = keel_send(1, seq_recv, (void *)(uintptr_t)L.next_seq)) == 0 && n < 1000) {
		L.next_seq++;
		n++;
	}
	atomic_store(&L.fill_ok, n);
	atomic_store(&L.fill_err, r);
	atomic_store(&L.wait_ret, keel_msg_wait_room(1, shut_room, NULL));
	keel_stop(0);
	keel_xreq_complete(req, 0);
}

static void
shut_start(void *app)
{
	if (keel_shard_id(keel_this_shard()) == 0 && !SHARD_CHECK_EQ(keel_send(1, hold, NULL), 0))
		keel_stop(-EIO);
}

Test(core_msg_limit, waiter_gets_eshutdown_when_its_shard_stops_first)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	int r;

	memset(&L, 0, sizeof(L));
	pthread_mutex_init(&L.lock, NULL);
	pthread_cond_init(&L.cond, NULL);
	L.fill_err = L.wait_ret = L.late_wait_ret = 1;
	o.mailbox_entries = ENTRIES;
	o.mailbox_overflow = OVERFLOW;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, shut_start, NULL), 0);
	WAIT_FOR(atomic_load(&L.held), "shard 1 in the hold");
	L.req.fn = fill_then_stop;
	cr_assert_eq(keel_runtime_submit(rt, 0, &L.req), 0);
	/* Shard 1 stays held until the waiter ran: no room can have come first. */
	WAIT_FOR(atomic_load(&L.room_runs) == 1, "the room waiter at the stop");
	pthread_mutex_lock(&L.lock);
	L.released = true;
	pthread_cond_signal(&L.cond);
	pthread_mutex_unlock(&L.lock);
	r = keel_runtime_join(rt);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&L.hold_timed_out), 0, "the hold timed out");
	cr_assert_eq(r, 0);
	cr_assert_eq(atomic_load(&L.fill_ok), (int)FITS);
	cr_assert_eq(atomic_load(&L.fill_err), -EAGAIN);
	cr_assert_eq(atomic_load(&L.wait_ret), 0);
	cr_assert_eq(atomic_load(&L.room_status), -ESHUTDOWN);
	cr_assert_eq(atomic_load(&L.late_wait_ret), -ESHUTDOWN);
	cr_assert_eq(atomic_load(&L.room_runs), 1);
	cr_assert_eq(atomic_load(&L.late_runs), 0);
	/* Everything accepted before the stop was still delivered, in order. */
	cr_assert_eq(atomic_load(&L.received_total), FITS);
	cr_assert_eq(L.out_of_order, 0);
	pthread_mutex_destroy(&L.lock);
	pthread_cond_destroy(&L.cond);
}

/* ---- broadcasts alone meet the limit ---- */

static _Atomic int bc_done;

static void
bc_all_done(int status, void *arg)
{
	SHARD_CHECK_EQ(status, 0);
	if (atomic_fetch_add(&bc_done, 1) + 1 == atomic_load(&L.fill_ok))
		keel_stop(0);
}

/* On shard 0, once shard 1 is held: broadcast until refused. */
static void
bcast_fill(struct keel_xreq *req)
{
	int r = 0, n = 0;

	while (n < 1000 && (r = keel_broadcast(noop_fn, NULL, bc_all_done, NULL)) == 0)
		n++;
	atomic_store(&L.fill_ok, n);
	atomic_store(&L.fill_err, r);
	keel_xreq_complete(req, 0);
	atomic_store(&L.filled, 1);
}

/* A broadcast's parts are never refused once it is accepted, but they count toward the
 * overflow allowance: a shard that only broadcasts to a held shard is refused after as many
 * as keel_send would be. They did not count, so 1,000 of 1,000 were accepted (and the
 * queues grew without a bound). */
Test(core_msg_limit, broadcasts_alone_meet_the_limit)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	int r;

	memset(&L, 0, sizeof(L));
	atomic_store(&bc_done, 0);
	pthread_mutex_init(&L.lock, NULL);
	pthread_cond_init(&L.cond, NULL);
	L.fill_err = 1;
	o.mailbox_entries = ENTRIES;
	o.mailbox_overflow = OVERFLOW;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, shut_start, NULL), 0);
	WAIT_FOR(atomic_load(&L.held), "shard 1 in the hold");
	L.req.fn = bcast_fill;
	cr_assert_eq(keel_runtime_submit(rt, 0, &L.req), 0);
	WAIT_FOR(atomic_load(&L.filled), "shard 0 broadcasting");
	pthread_mutex_lock(&L.lock);
	L.released = true;
	pthread_cond_signal(&L.cond);
	pthread_mutex_unlock(&L.lock);
	r = keel_runtime_join(rt);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&L.hold_timed_out), 0, "the hold timed out");
	cr_assert_eq(r, 0);
	/* Shard 1's queue, less the hold's slot, then the allowance (shard 0's own queue holds
	 * one more). */
	cr_assert_eq(atomic_load(&L.fill_ok), (int)FITS, "broadcasts accepted: %d",
		     atomic_load(&L.fill_ok));
	cr_assert_eq(atomic_load(&L.fill_err), -EAGAIN);
	cr_assert_eq(atomic_load(&bc_done), (int)FITS, "broadcasts done: %d",
		     atomic_load(&bc_done));
	pthread_mutex_destroy(&L.lock);
	pthread_cond_destroy(&L.cond);
}

/* ---- keel's own traffic does not use the app's overflow allowance ---- */

#define TRIPS (ENTRIES + OVERFLOW + 4)

struct trips {
	struct keel_slice s[TRIPS];
	_Atomic int send_ret, app_ran;
};

static void
trips_app_msg(void *arg)
{
	struct trips *t = arg;

	atomic_store(&t->app_ran, 1);
	keel_stop(0);
}

/* On shard 1: every buffer's last put sends it home to shard 0 (keel's own messages: the
 * queue, then more than the overflow allowance); then the app's own message to shard 0. */
static void
trips_put(void *arg)
{
	struct trips *t = arg;
	int r;

	for (unsigned i = 0; i < TRIPS; i++)
		keel_slice_put(&t->s[i]);
	r = keel_send(0, trips_app_msg, t);
	atomic_store(&t->send_ret, r);
	if (r < 0)
		keel_stop(0); /* the test's assertion says so */
}

static void
trips_start(void *app)
{
	struct trips *t = app;

	if (keel_shard_id(keel_this_shard()) != 0)
		return;
	for (unsigned i = 0; i < TRIPS; i++) {
		if (!SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), 64, &t->s[i]), 0)) {
			keel_stop(-ENOMEM);
			return;
		}
		keel_slice_move(&t->s[i], 1);
	}
	SHARD_CHECK_EQ(keel_send(1, trips_put, t), 0);
}

/* Before, every node of the overflow list counted towards mailbox_overflow, so buffers going
 * home filled the app's allowance and its next keel_send was refused (-EAGAIN) for traffic it
 * never sent. */
Test(core_msg_limit, buffers_going_home_do_not_use_the_apps_overflow_allowance)
{
	struct keel_opts o = test_opts(2);
	struct trips *t = calloc(1, sizeof(*t));

	cr_assert_not_null(t);
	atomic_store(&t->send_ret, 1);
	o.mailbox_entries = ENTRIES;
	o.mailbox_overflow = OVERFLOW;
	cr_assert_eq(keel_run(&o, trips_start, t), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&t->send_ret), 0, "the app's send after %u trips home: %d", TRIPS,
		     atomic_load(&t->send_ret));
	cr_assert_eq(atomic_load(&t->app_ran), 1);
	free(t);
}

// SPDX-License-Identifier: MIT
/* Waking a sleeping shard: a MSG_RING wake-up that fails must not leave mail unread; a
 * wake-up that submits costs one io_uring_enter. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>

#include <criterion/criterion.h>

#include "../../core/internal.h"
#include "helpers.h"

/* core/internal.h: while non-zero, each MSG_RING wake-up targets an invalid fd. */
extern _Atomic unsigned keel__fault_msgring_fail;
/* ... while non-zero, each MSG_RING failure CQE is dropped, as the kernel drops a CQE it
 * has no room nor memory for. */
extern _Atomic unsigned keel__fault_msgring_cqe_drop;

#define ROUNDS 200

struct wake_test {
	_Atomic unsigned delivered;
	_Atomic int send_err;
	struct keel_xreq req[ROUNDS];
};

static void
mail_cb(void *arg)
{
	struct wake_test *w = arg;

	atomic_fetch_add(&w->delivered, 1);
}

/* On shard 0: mail shard 1 (which has no timer, so only a wake-up ends its sleep). */
static void
send_from_0(struct keel_xreq *req)
{
	struct wake_test *w = req->arg;
	int r = keel_send(1, mail_cb, w);

	if (r < 0)
		atomic_store(&w->send_err, r);
	keel_xreq_complete(req, r);
}

/* Round after round, shard 0 mails the sleeping shard 1 with the next MSG_RING wake-up
 * forced to fail, until a round actually used (and failed) a wake-up. That round's
 * message must still be run: the sender falls back to shard 1's eventfd. With @drop, the
 * failure's CQE is dropped as well (the kernel's, when the sender's CQ is full and memory
 * short), so no fallback runs: the sender sees its ring's count of dropped CQEs grow and
 * wakes every other shard through its eventfd. */
static void
failed_wakeup_rounds(bool drop)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	struct wake_test *w = calloc(1, sizeof(*w));
	struct keel_shard_stats st0, st1;
	unsigned rounds = 0;
	bool injected = false, lost = false;
	/* shard 1's sleeps when the last round's mail was sent: it sleeps again once it has
	 * run it (the count read at the top of a round instead found a shard asleep since
	 * before the read, and waited the whole 10 s for a sleep that could not come) */
	uint64_t slept = 0;

	cr_assert_not_null(w);
	o.idle_poll_us = 0; /* sleep as soon as idle: the path under test */
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	while (rounds < ROUNDS && !injected) {
		uint64_t deadline;

		/* Let shard 1 reach its sleep: without a sleeper no wake-up is sent. */
		deadline = test_now_ms() + 10000;
		for (;;) {
			cr_assert_eq(keel_runtime_stats(rt, 1, &st1), 0);
			if (st1.sleeps > slept || test_now_ms() > deadline)
				break;
			test_pause();
		}
		slept = st1.sleeps;
		atomic_store(&keel__fault_msgring_fail, 1);
		atomic_store(&keel__fault_msgring_cqe_drop, drop);
		w->req[rounds] = (struct keel_xreq){ .fn = send_from_0, .arg = w };
		cr_assert_eq(keel_runtime_submit(rt, 0, &w->req[rounds]), 0);
		rounds++;
		deadline = test_now_ms() + 10000;
		while (atomic_load(&w->delivered) < rounds && test_now_ms() < deadline)
			test_pause();
		injected = atomic_load(&keel__fault_msgring_fail) == 0;
		if (atomic_load(&w->delivered) < rounds) {
			lost = true;
			break;
		}
	}
	atomic_store(&keel__fault_msgring_fail, 0);
	if (drop)
		injected = injected && atomic_load(&keel__fault_msgring_cqe_drop) == 0;
	atomic_store(&keel__fault_msgring_cqe_drop, 0);
	/* Before stopping: a shard that lost its wake-up would not see the stop either. */
	cr_assert(!lost,
		  "round %u: shard 1 slept for 10 s with mail waiting after a failed MSG_RING "
		  "wake-up (%u of %u messages run)",
		  rounds, atomic_load(&w->delivered), rounds);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	cr_assert_eq(keel_runtime_stats(rt, 0, &st0), 0);
	cr_assert_eq(keel_runtime_stats(rt, 1, &st1), 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(atomic_load(&w->send_err), 0);
	cr_assert(injected, "no round in %u used a MSG_RING wake-up: the path was not tested",
		  rounds);
	cr_assert_eq(atomic_load(&w->delivered), rounds);
	cr_assert_eq(st0.wake_fallbacks, !drop, "shard 0 counted %llu eventfd fallbacks, want %d",
		     (unsigned long long)st0.wake_fallbacks, !drop);
	cr_assert_eq(st1.wake_fallbacks, 0);
	cr_assert_eq(st0.cq_dropped, drop, "shard 0 counted %llu dropped CQEs, want %d",
		     (unsigned long long)st0.cq_dropped, drop);
	free(w);
}

Test(core_wakeup, failed_msg_ring_wakeup_falls_back_to_eventfd, .timeout = 120)
{
	failed_wakeup_rounds(false);
}

Test(core_wakeup, a_failed_msg_ring_wakeup_whose_cqe_was_dropped_still_wakes, .timeout = 120)
{
	failed_wakeup_rounds(true);
}

static _Atomic unsigned ring_cq, ring_sq;

static void
record_ring(void *app)
{
	atomic_store(&ring_cq, keel_shard_ring_get()->cq.ring_entries);
	atomic_store(&ring_sq, keel_shard_ring_get()->sq.ring_entries);
	keel_stop(0);
}

/* --cq-entries sizes the CQ, not 4x the SQ; the kernel rounds up to a power of two. */
Test(core_wakeup, ring_cq_is_sized_by_cq_entries)
{
	struct keel_opts o = test_opts(1);

	o.idle_poll_us = 0;
	o.ring_entries = 64;
	o.cq_entries = 3000;
	cr_assert_eq(keel_run(&o, record_ring, NULL), 0);
	cr_assert_eq(atomic_load(&ring_sq), 64);
	cr_assert_eq(atomic_load(&ring_cq), 4096);
	o.cq_entries = KEEL_CQ_ENTRIES_DEFAULT;
	cr_assert_eq(keel_run(&o, record_ring, NULL), 0);
	cr_assert_eq(atomic_load(&ring_cq), KEEL_CQ_ENTRIES_DEFAULT);
}

/* A shard woken by its timer queues one SQE and goes back to sleep: the sleep submits it,
 * so each wake-up costs one io_uring_enter, not a submit followed by a wait. The SQE is a
 * NOP that posts nothing (IOSQE_CQE_SKIP_SUCCESS, no user data), so nothing but the
 * next timer ends the sleep. */
#define ENTER_ROUNDS 40
/* Long enough that a shard preempted after its timer callback (a loaded CI machine) still
 * finds the next tick not due when it sleeps: a due timer is a pass's work, not a sleep's. */
#define ENTER_TICK KEEL_MS(5)

struct enter_test {
	struct keel_runtime *rt;
	struct keel_timer *t;
	unsigned fired;
	struct keel_shard_stats first, last;
	_Atomic int err;
};

static void
enter_tick(struct keel_timer *t, void *arg)
{
	struct enter_test *e = arg;
	struct io_uring_sqe *sqe;
	int r;

	if (e->fired == 0)
		keel_runtime_stats(e->rt, 0, &e->first);
	if (e->fired++ == ENTER_ROUNDS) {
		keel_runtime_stats(e->rt, 0, &e->last);
		keel_timer_destroy(t);
		keel_stop(0);
		return;
	}
	sqe = keel_sqe_get();
	if (!sqe) {
		atomic_store(&e->err, -EBUSY);
		keel_stop(-EBUSY);
		return;
	}
	io_uring_prep_nop(sqe);
	io_uring_sqe_set_data(sqe, NULL);
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	r = keel_timer_start(t, ENTER_TICK, 0);
	if (r < 0) {
		atomic_store(&e->err, r);
		keel_stop(r);
	}
}

static void
enter_start(void *app)
{
	struct enter_test *e = app;
	int r = keel_timer_create(enter_tick, e, &e->t);

	if (r == 0)
		r = keel_timer_start(e->t, ENTER_TICK, 0);
	if (r < 0) {
		atomic_store(&e->err, r);
		keel_stop(r);
	}
}

Test(core_wakeup, a_wakeup_that_submits_costs_one_enter, .timeout = 60)
{
	struct keel_opts o = test_opts(1);
	struct enter_test e = { 0 };
	uint64_t enters, sleeps;

	o.idle_poll_us = 0; /* sleep as soon as idle: the path under test */
	cr_assert_eq(keel_runtime_create(&o, &e.rt), 0);
	cr_assert_eq(keel_runtime_start(e.rt, enter_start, &e), 0);
	cr_assert_eq(keel_runtime_join(e.rt), 0);
	keel_runtime_destroy(e.rt);
	cr_assert_eq(atomic_load(&e.err), 0);
	cr_assert_eq(e.fired, ENTER_ROUNDS + 1);
	enters = e.last.enters - e.first.enters;
	sleeps = e.last.sleeps - e.first.sleeps;
	/* One enter per wake-up: each is a sleep. A sleep that ends early (a signal) adds a
	 * sleep and its enter, never an enter alone; the old loop entered twice per round. */
	cr_assert_eq(enters, sleeps,
		     "%u timer wake-ups that each queued one SQE cost %llu io_uring_enter calls "
		     "for %llu sleeps: the submit was not folded into the sleep",
		     ENTER_ROUNDS, (unsigned long long)enters, (unsigned long long)sleeps);
	cr_assert_geq(sleeps, ENTER_ROUNDS);
	cr_assert_lt(enters, 2 * ENTER_ROUNDS, "%llu enters for %u wake-ups",
		     (unsigned long long)enters, ENTER_ROUNDS);
}

/* core/internal.h: while non-zero, each arming of keel's own read finds no SQE. */
extern _Atomic unsigned keel__fault_internal_nosqe;

static void
xreq_done(struct keel_xreq *req)
{
	keel_xreq_complete(req, 0);
}

/* Wait (from the test thread) until shard @i of @rt has begun more than @after sleeps;
 * returns the count. */
static uint64_t
wait_sleeps(struct keel_runtime *rt, unsigned i, uint64_t after)
{
	struct keel_shard_stats now;

	WAIT_FOR((keel_runtime_stats(rt, i, &now), now.sleeps > after), "shard %u to sleep", i);
	return now.sleeps;
}

/* Whether shard @i of @rt has its eventfd read armed and no internal read waiting to be
 * armed again: then it sleeps until woken (internal_retry caps each sleep at 1 ms). The
 * shard writes both fields; the relaxed loads only keep the compiler from caching them. */
static bool
eventfd_read_armed(struct keel_runtime *rt, unsigned i)
{
	struct keel_shard *s = &rt->shards[i];

	return __atomic_load_n(&s->xefd_op.armed, __ATOMIC_RELAXED) &&
	       !__atomic_load_n(&s->internal_retry, __ATOMIC_RELAXED);
}

/* A foreign thread wakes a sleeping shard through the shard's eventfd, which the shard
 * reads through its ring. When re-arming that read finds no SQE, the shard arms it again
 * later. With @fails 2 the retry at the end of that pass fails too. While the read waits
 * to be armed each sleep is capped at 1 ms, so a request would be found without any
 * wake-up: the test waits until the read is armed and the shard sleeps unbounded, then
 * asserts the second request came through a wake-up (the shard's wakeups stat). */
static void
eventfd_rearm_case(unsigned fails)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_xqueue *q;
	struct keel_xreq a = { .fn = xreq_done }, b = { .fn = xreq_done }, *got;
	struct keel_shard_stats st;
	uint64_t slept, woken;

	o.idle_poll_us = 0;
	cr_assert_eq(keel_xqueue_create(&q), 0);
	a.queue = b.queue = q;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	/* Asleep (its sleeps count rose from 0); a's wake-up ends that sleep, and re-arming
	 * the read after it finds no SQE. */
	wait_sleeps(rt, 0, 0);
	atomic_store(&keel__fault_internal_nosqe, fails);
	cr_assert_eq(keel_runtime_submit(rt, 0, &a), 0);
	cr_assert_eq(keel_xqueue_wait(q, &got, 1, KEEL_S(30)), 1, "the first request was not run");
	/* The faults are used up by the re-arm and its retries, a millisecond apart at most. */
	WAIT_FOR(atomic_load(&keel__fault_internal_nosqe) == 0, "the faults to be used");
	WAIT_FOR(eventfd_read_armed(rt, 0),
		 "shard 0 to arm its eventfd read again after %u failure(s)", fails);
	/* The shard's sleep from now on is unbounded: only the eventfd's wake-up ends it. Once
	 * it is asleep, b's submit wakes it through the eventfd. */
	WAIT_FOR(atomic_load(&rt->shards[0].sleeping), "shard 0 to sleep");
	cr_assert_eq(keel_runtime_stats(rt, 0, &st), 0);
	woken = st.wakeups;
	slept = st.sleeps;
	cr_assert_eq(keel_runtime_submit(rt, 0, &b), 0);
	cr_assert_eq(keel_xqueue_wait(q, &got, 1, KEEL_S(30)), 1,
		     "a request to the sleeping shard was not run in 30 s");
	WAIT_FOR((keel_runtime_stats(rt, 0, &st), st.wakeups > woken),
		 "the request to shard 0 (asleep: %llu sleeps) to come through its eventfd",
		 (unsigned long long)slept);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_xqueue_destroy(q);
}

Test(core_wakeup, an_eventfd_read_that_found_no_sqe_is_armed_again)
{
	eventfd_rearm_case(1);
}

Test(core_wakeup, an_eventfd_read_whose_retry_found_no_sqe_is_armed_again)
{
	eventfd_rearm_case(2);
}

static _Atomic unsigned xefd_lines;
static char xefd_first[1024], xefd_last[1024];

static void
xefd_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module, (void)arg;
	if (level != KEEL_LOG_ERROR || !strstr(msg, "eventfd read failed"))
		return;
	snprintf(atomic_load(&xefd_lines) ? xefd_last : xefd_first, sizeof(xefd_first), "%d %s",
		 shard, msg);
	atomic_fetch_add(&xefd_lines, 1);
}

/* Runs @n requests on the sleeping shard 0 of @rt one after another, each submitted once
 * the shard has counted a sleep after the last ran: past the look for work that would find
 * it, so each submit wakes it through its eventfd (whose read completes). @slept: the
 * shard's sleeps when the first is submitted (it sleeps then); returns the count after. */
static uint64_t
requests_to_sleeper(struct keel_runtime *rt, struct keel_xqueue *q, struct keel_xreq *reqs,
		    unsigned n, uint64_t slept)
{
	struct keel_xreq *got;

	for (unsigned i = 0; i < n; i++) {
		reqs[i] = (struct keel_xreq){ .fn = xreq_done, .queue = q };
		cr_assert_eq(keel_runtime_submit(rt, 0, &reqs[i]), 0);
		cr_assert_eq(keel_xqueue_wait(q, &got, 1, KEEL_S(30)), 1, "request %u not run", i);
		slept = wait_sleeps(rt, 0, slept);
	}
	return slept;
}

static uint64_t
wakeups_of(struct keel_runtime *rt, unsigned i)
{
	struct keel_shard_stats st;

	cr_assert_eq(keel_runtime_stats(rt, i, &st), 0);
	return st.wakeups;
}

/* A failed read of the shard's eventfd was logged without the shard's id nor what follows,
 * at every failure, and armed again at once (an error that persists: a busy loop flooding
 * the log). Two failures now give one line naming the shard; the read stays armed. */
Test(core_wakeup, a_failed_eventfd_read_is_said_once_naming_the_shard, .timeout = 120)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_xqueue *q;
	struct keel_xreq reqs[3];
	uint64_t slept, woken;

	o.idle_poll_us = 0;
	atomic_store(&xefd_lines, 0);
	keel_log_set_sink(xefd_sink, NULL);
	cr_assert_eq(keel_xqueue_create(&q), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	slept = wait_sleeps(rt, 0, 0);
	atomic_store(&keel__fault_xefd_read_err, 2);
	slept = requests_to_sleeper(rt, q, reqs, 2, slept);
	cr_assert_eq(atomic_load(&keel__fault_xefd_read_err), 0, "the two reads did not fail");
	/* Still armed: the next request wakes the shard through it. */
	woken = wakeups_of(rt, 0);
	requests_to_sleeper(rt, q, reqs + 2, 1, slept);
	WAIT_FOR(wakeups_of(rt, 0) > woken, "the third request to come through the eventfd");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	keel_xqueue_destroy(q);
	cr_assert_eq(atomic_load(&xefd_lines), 1, "%u lines for 2 failed reads: %s | %s",
		     atomic_load(&xefd_lines), xefd_first, xefd_last);
	cr_assert(strncmp(xefd_first, "0 shard 0: eventfd read failed: Input/output error", 50) ==
			  0,
		  "%s", xefd_first);
	cr_assert(strstr(xefd_first, "armed again"), "%s", xefd_first);
	cr_assert(strstr(xefd_first, "once per 10 s"), "%s", xefd_first);
}

/* An error that persists: after KEEL__XEFD_FAILS_MAX failed reads in a row the read is no
 * longer armed, a second line says what the shard loses, and its sleeps are capped so host
 * threads' requests and the stop still reach it. */
Test(core_wakeup, an_eventfd_read_that_keeps_failing_is_given_up, .timeout = 120)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_xqueue *q;
	struct keel_xreq reqs[KEEL__XEFD_FAILS_MAX + 1];
	uint64_t slept;

	o.idle_poll_us = 0;
	atomic_store(&xefd_lines, 0);
	keel_log_set_sink(xefd_sink, NULL);
	cr_assert_eq(keel_xqueue_create(&q), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	slept = wait_sleeps(rt, 0, 0);
	atomic_store(&keel__fault_xefd_read_err, KEEL__XEFD_FAILS_MAX);
	slept = requests_to_sleeper(rt, q, reqs, KEEL__XEFD_FAILS_MAX, slept);
	cr_assert_eq(atomic_load(&keel__fault_xefd_read_err), 0, "the reads did not all fail");
	WAIT_FOR(atomic_load(&xefd_lines) == 2, "the line that gives the read up");
	cr_assert(!__atomic_load_n(&rt->shards[0].xefd_op.armed, __ATOMIC_RELAXED),
		  "the eventfd read is still armed");
	/* A request and the stop from this thread still reach the shard (its capped sleeps). */
	requests_to_sleeper(rt, q, reqs + KEEL__XEFD_FAILS_MAX, 1, slept);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	keel_xqueue_destroy(q);
	cr_assert_eq(atomic_load(&xefd_lines), 2, "%s | %s", xefd_first, xefd_last);
	cr_assert(strncmp(xefd_last, "0 shard 0: its eventfd read failed 8 times in a row", 51) ==
			  0,
		  "%s", xefd_last);
	cr_assert(strstr(xefd_last, "cannot wake this shard"), "%s", xefd_last);
	cr_assert(strstr(xefd_last, "at most 1 ms"), "%s", xefd_last);
}

static _Atomic unsigned lost_lines;
static char lost_line[1024];

static void
lost_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module, (void)arg, (void)shard;
	if (level == KEEL_LOG_ERROR && strstr(msg, "through its eventfd") &&
	    atomic_fetch_add(&lost_lines, 1) == 0)
		snprintf(lost_line, sizeof(lost_line), "%s", msg);
}

/* A host thread's wake-up through the eventfd that fails (here EBADF: the test hides the
 * shard's eventfd, as a submit racing keel_runtime_destroy meets it closed) cleared the
 * shard's `sleeping` first, so no later submit wakes it: the line said only "failed". It
 * now says the wake-up is lost, what follows and, for EBADF, the misuse behind it. The
 * shard sleeps on until the test writes its eventfd itself. */
Test(core_wakeup, a_failed_eventfd_wakeup_is_said_lost, .timeout = 120)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_xqueue *q;
	struct keel_xreq a = { .fn = xreq_done }, *got;
	int fd;

	o.idle_poll_us = 0;
	atomic_store(&lost_lines, 0);
	keel_log_set_sink(lost_sink, NULL);
	cr_assert_eq(keel_xqueue_create(&q), 0);
	a.queue = q;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	wait_sleeps(rt, 0, 0);
	/* Asleep in its ring with the read armed (the ring holds the file): the shard reads
	 * xefd only when that read completes, which nothing makes it do meanwhile. */
	fd = rt->shards[0].xefd;
	rt->shards[0].xefd = -1;
	cr_assert_eq(keel_runtime_submit(rt, 0, &a), 0);
	rt->shards[0].xefd = fd;
	cr_assert_eq(atomic_load(&lost_lines), 1);
	cr_assert_eq(keel_xqueue_pop(q, &got, 1), 0, "the request ran without a wake-up");
	cr_assert_eq(eventfd_write(fd, 1), 0);
	cr_assert_eq(keel_xqueue_wait(q, &got, 1, KEEL_S(30)), 1, "the request was not run");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	keel_xqueue_destroy(q);
	cr_assert(strncmp(lost_line,
			  "waking shard 0 through its eventfd failed: Bad file descriptor",
			  62) == 0,
		  "%s", lost_line);
	cr_assert(strstr(lost_line, "that wake-up is lost"), "%s", lost_line);
	cr_assert(strstr(lost_line, "until something else wakes it"), "%s", lost_line);
	cr_assert(strstr(lost_line, "racing keel_runtime_destroy"), "%s", lost_line);
}

// SPDX-License-Identifier: MIT
/* A foreign request that keel_runtime_submit accepted as the runtime began to stop runs on
 * its shard. White-box: the test holds the shard's request lock itself, as a submitter
 * does between its stopping check and its enqueue, across the whole stop. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../core/internal.h"
#include "helpers.h"

struct late_req {
	struct keel_xreq req;
	_Atomic int ran;       /* 1: fn ran on shard 0 */
	_Atomic int delivered; /* 1: the message it sent was run on shard 1 */
	_Atomic int status;    /* as completed (-1 until then) */
};

static void
late_mail(void *arg)
{
	struct late_req *l = arg;

	atomic_store(&l->delivered, 1);
}

static void
late_fn(struct keel_xreq *req)
{
	struct late_req *l = (struct late_req *)req;

	atomic_store(&l->ran, 1);
	/* keel's own message to the other shard, allowed while stopping, as a buffer the
	 * handler puts goes home: it must be run. */
	keel_xreq_complete(req, keel__send_internal(1, late_mail, l));
}

static void
late_done(struct keel_xreq *req)
{
	struct late_req *l = (struct late_req *)req;

	atomic_store(&l->status, req->status);
}

/* Without the close under the lock, shard 0 counted itself quiescent with the lock held
 * and shard 1 ended; the request queued after was cancelled when shard 0 ended too, or ran
 * and sent a message no shard would run, and the join never returned. */
Test(core_foreign_stop, a_request_queued_as_the_stop_begins_runs_on_its_shard, .timeout = 60)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	struct late_req l = { .req = { .fn = late_fn, .done = late_done }, .status = -1 };
	struct keel_shard *s0;
	struct timespec ts = { 0, 10 * 1000 * 1000 };

	o.idle_poll_us = 0;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	s0 = &rt->shards[0];
	pthread_mutex_lock(&s0->xlock); /* a submitter past its check */
	keel_runtime_stop(rt, 0);
	/* Give the shards a second to end, as they did without the fix; with it shard 0
	 * waits for the lock, and shard 1 for shard 0. */
	for (int i = 0; i < 100 && rt->shards[1].phase != PHASE_DONE; i++)
		nanosleep(&ts, NULL);
	/* The submitter's enqueue, as keel_runtime_submit makes it. */
	l.req.next_ = NULL;
	l.req.rsh_ = NULL;
	s0->xhead = s0->xtail = &l.req;
	atomic_store(&s0->xpending, 1);
	if (atomic_load(&s0->sleeping) && atomic_exchange(&s0->sleeping, 0))
		keel__shard_wake(s0, NULL);
	pthread_mutex_unlock(&s0->xlock);
	cr_assert_eq(keel_runtime_join(rt), 0);
	cr_assert_eq(atomic_load(&l.ran), 1, "the request was not run (status %d)",
		     atomic_load(&l.status));
	cr_assert_eq(atomic_load(&l.status), 0, "its send: %d", atomic_load(&l.status));
	cr_assert_eq(atomic_load(&l.delivered), 1, "its message was not run");
	keel_runtime_destroy(rt);
}

/* keel_runtime_stop on a shard's thread takes no SQE of that shard: a signal handler may run
 * it there in the middle of the shard's own io_uring_get_sqe, and both would take the same
 * slot (one of them lost: a wake-up, so a shard slept for ever, or the shard's own
 * operation, so it never became quiescent). Shard 0 calls it while shard 1 sleeps; its SQ
 * holds as many unsubmitted entries after as before, and shard 1 still wakes. */
static struct {
	struct keel_runtime *rt;
	_Atomic int sq_added, shard1_slept;
} st1;

static void
stop_from_shard0(void *arg)
{
	struct keel_shard *s1 = &st1.rt->shards[1];
	struct timespec ts = { 0, 1000 * 1000 };
	unsigned before;

	(void)arg;
	/* Shard 1 has nothing to do: it announces its sleep soon (a deadline, not a pace). */
	for (int i = 0; i < 30000 && !atomic_load(&s1->sleeping); i++)
		nanosleep(&ts, NULL);
	atomic_store(&st1.shard1_slept, atomic_load(&s1->sleeping));
	before = io_uring_sq_ready(keel_shard_ring_get());
	keel_runtime_stop(st1.rt, 0);
	atomic_store(&st1.sq_added, (int)(io_uring_sq_ready(keel_shard_ring_get()) - before));
}

static void
stop_start(void *app)
{
	(void)app;
	if (keel_shard_id(keel_this_shard()) == 0)
		keel_defer(stop_from_shard0, NULL);
}

Test(core_foreign_stop, a_stop_on_a_shards_thread_takes_none_of_its_sqes, .timeout = 60)
{
	struct keel_opts o = test_opts(2);

	memset(&st1, 0, sizeof(st1));
	o.idle_poll_us = 0;
	o.signals = false;
	cr_assert_eq(keel_runtime_create(&o, &st1.rt), 0);
	cr_assert_eq(keel_runtime_start(st1.rt, stop_start, NULL), 0);
	cr_assert_eq(keel_runtime_join(st1.rt), 0);
	cr_assert_eq(atomic_load(&st1.shard1_slept), 1, "shard 1 never slept (test premise)");
	cr_assert_eq(atomic_load(&st1.sq_added), 0,
		     "keel_runtime_stop queued %d SQE(s) on the calling shard's ring",
		     atomic_load(&st1.sq_added));
	keel_runtime_destroy(st1.rt);
}

/* A request whose fn waits for a timer, which does not run once the stop began: its shard
 * ends without completing it. Its owner waited for ever on its queue; it is completed with
 * -ECANCELED at the shard's end, and the requests completed at once around it are not
 * touched again. */
static struct {
	_Atomic int ran, done_calls, deferred_ran;
	int defer_r[3]; /* keel_defer's return in each request's done, by its status */
	struct keel_timer *t;
} xt;

static void
xt_deferred(void *arg)
{
	(void)arg;
	atomic_fetch_add(&xt.deferred_ran, 1);
}

static void
xt_fire(struct keel_timer *t, void *arg)
{
	(void)t;
	keel_xreq_complete(arg, 0);
}

static void
xt_fn(struct keel_xreq *req)
{
	if (req->arg) { /* waits for an hour: the stop comes first */
		SHARD_CHECK_EQ(keel_timer_create(xt_fire, req, &xt.t), 0);
		SHARD_CHECK_EQ(keel_timer_start(xt.t, KEEL_MS(3600 * 1000), 0), 0);
	} else {
		keel_xreq_complete(req, 7);
	}
	atomic_fetch_add(&xt.ran, 1);
}

/* Runs on the shard: in xt_fn for those completed at once, at the shard's end for the
 * one cancelled. Its keel_defer is accepted only where a pass is left to run it. */
static void
xt_done(struct keel_xreq *req)
{
	int n = atomic_fetch_add(&xt.done_calls, 1);

	if (n < 3)
		xt.defer_r[n] = keel_defer(xt_deferred, req);
}

Test(core_foreign_stop, a_request_that_waits_for_a_timer_is_cancelled_when_its_shard_ends,
     .timeout = 60)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_xqueue *q;
	struct keel_xreq r[3], *out[4];
	struct timespec ts = { 0, 1000 * 1000 };
	int n, got = 0;

	o.idle_poll_us = 0;
	cr_assert_eq(keel_xqueue_create(&q), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	for (int i = 0; i < 3; i++) {
		r[i] = (struct keel_xreq){ .fn = xt_fn, .done = xt_done, .queue = q };
		r[i].arg = i == 1 ? &xt : NULL;
		cr_assert_eq(keel_runtime_submit(rt, 0, &r[i]), 0);
	}
	for (int i = 0; i < 30000 && atomic_load(&xt.ran) < 3; i++)
		nanosleep(&ts, NULL);
	cr_assert_eq(atomic_load(&xt.ran), 3);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	SHARD_CHECKS_PASSED(); /* the timer the request waits on was made and started */
	/* Everything completed is queued by the time the join returns. */
	while ((n = keel_xqueue_wait(q, out + got, 4 - (unsigned)got, 0)) > 0)
		got += n;
	cr_assert_eq(got, 3,
		     "%d of the 3 requests completed (the one waiting for its timer "
		     "was never completed)",
		     got);
	cr_assert_eq(atomic_load(&xt.done_calls), 3);
	cr_assert_eq(r[0].status, 7);
	cr_assert_eq(r[1].status, -ECANCELED);
	cr_assert_eq(r[2].status, 7);
	/* The cancelled one's done ran last, after the loop: its deferred work was accepted
	 * and never run (keel_defer said 0) before. */
	cr_assert_eq(xt.defer_r[0], 0);
	cr_assert_eq(xt.defer_r[1], 0);
	cr_assert_eq(xt.defer_r[2], -ESHUTDOWN, "keel_defer after the loop's end gave %d",
		     xt.defer_r[2]);
	cr_assert_eq(atomic_load(&xt.deferred_ran), 2);
	cr_assert_eq(keel_xqueue_wait(q, out, 0, KEEL_MS(1)), -EINVAL,
		     "a wait that can take nothing never ended");
	cr_assert_eq(keel_xqueue_pop(q, out, 0), 0u);
	keel_runtime_destroy(rt);
	keel_xqueue_destroy(q);
}

/* A request handed on by its own fn (keel_runtime_submit again, before it completed): it
 * leaves the list of requests that ran on the shard it ran on, and is listed again where it
 * runs next. Listed twice, it looped on itself, stayed listed after it completed and the
 * shard's end spun for ever over it, running its done again and again. */
static _Atomic int hop_runs, hop_dones;

static void
hop_fn(struct keel_xreq *req)
{
	struct keel_runtime *rt = req->arg;
	int n = atomic_fetch_add(&hop_runs, 1);

	/* Shard 0, then shard 1, then shard 1 again, then completed there. */
	if (n < 2)
		SHARD_CHECK_EQ(keel_runtime_submit(rt, 1, req), 0);
	else
		keel_xreq_complete(req, n);
}

static void
hop_done(struct keel_xreq *req)
{
	(void)req;
	atomic_fetch_add(&hop_dones, 1);
}

Test(core_foreign_stop, a_request_its_fn_hands_on_completes_once, .timeout = 60)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	struct keel_xqueue *q;
	struct keel_xreq req, waiter, *out[2];
	struct timespec ts = { 0, 1000 * 1000 };

	o.idle_poll_us = 0;
	cr_assert_eq(keel_xqueue_create(&q), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	/* Another request left running on shard 0 (waits for a timer the stop drops): the
	 * hand-on must not cut it off the list. */
	waiter = (struct keel_xreq){ .fn = xt_fn, .done = xt_done, .queue = q, .arg = &xt };
	cr_assert_eq(keel_runtime_submit(rt, 0, &waiter), 0);
	req = (struct keel_xreq){ .fn = hop_fn, .done = hop_done, .queue = q, .arg = rt };
	cr_assert_eq(keel_runtime_submit(rt, 0, &req), 0);
	cr_assert_eq(keel_xqueue_wait(q, out, 1, KEEL_S(30)), 1);
	cr_assert_eq(out[0], &req);
	cr_assert_eq(req.status, 2);
	for (int i = 0; i < 30000 && atomic_load(&xt.ran) < 1; i++)
		nanosleep(&ts, NULL);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	SHARD_CHECKS_PASSED(); /* the waiter's timer was made and started, the hand-ons taken */
	cr_assert_eq(keel_xqueue_wait(q, out, 2, 0), 1, "the waiting request was not cancelled");
	cr_assert_eq(out[0], &waiter);
	cr_assert_eq(waiter.status, -ECANCELED);
	cr_assert_eq(atomic_load(&hop_runs), 3);
	cr_assert_eq(atomic_load(&hop_dones), 1);
	keel_runtime_destroy(rt);
	keel_xqueue_destroy(q);
}

/* The same request holding a file: its done, run at the shard's end with -ECANCELED,
 * closes it. keel_file_close refused that (-ESHUTDOWN: the loop had ended) and the
 * descriptor stayed open, where a close is taken whenever the stop has begun so that no
 * descriptor is stranded (docs/file.md). It goes through the ring the shard still reaps. */
static struct {
	int pipefd[2];
	struct keel_file f;
	struct keel_file_req cl;
	struct keel_timer *t;
	int close_r, closed_res, closed_calls, cancelled;
	_Atomic int ran;
} xc;

static void
xc_closed(struct keel_file_req *req, int res, void *arg)
{
	(void)req, (void)arg;
	xc.closed_res = res;
	xc.closed_calls++;
}

static void
xc_fn(struct keel_xreq *req)
{
	SHARD_CHECK_EQ(keel_file_from_fd(xc.pipefd[0], &xc.f), 0);
	SHARD_CHECK_EQ(keel_timer_create(xt_fire, req, &xc.t), 0);
	SHARD_CHECK_EQ(keel_timer_start(xc.t, KEEL_MS(3600 * 1000), 0), 0);
	atomic_store(&xc.ran, 1);
}

static void
xc_done(struct keel_xreq *req)
{
	xc.cancelled = req->status == -ECANCELED;
	if (atomic_load(&xc.ran)) /* else no file was made: the test fails on ran */
		xc.close_r = keel_file_close(&xc.cl, &xc.f, xc_closed, NULL);
}

Test(core_foreign_stop, a_cancelled_requests_done_closes_its_file_at_the_shards_end, .timeout = 60)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_xqueue *q;
	struct keel_xreq r = { .fn = xc_fn, .done = xc_done };
	struct keel_xreq *out;

	memset(&xc, 0, sizeof(xc));
	cr_assert_eq(pipe(xc.pipefd), 0);
	o.idle_poll_us = 0;
	cr_assert_eq(keel_xqueue_create(&q), 0);
	r.queue = q;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	cr_assert_eq(keel_runtime_submit(rt, 0, &r), 0);
	for (int i = 0; i < 30000 && !atomic_load(&xc.ran); i++)
		nanosleep(&(struct timespec){ 0, 1000 * 1000 }, NULL);
	cr_assert(atomic_load(&xc.ran), "the request did not run");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(keel_xqueue_wait(q, &out, 1, 0), 1);
	cr_assert(xc.cancelled, "the request ended with %d", r.status);
	cr_assert_eq(xc.close_r, 0, "keel_file_close at the shard's end: %d", xc.close_r);
	cr_assert_eq(xc.closed_calls, 1);
	cr_assert_eq(xc.closed_res, 0);
	cr_assert_eq(fcntl(xc.pipefd[0], F_GETFD), -1, "the pipe's descriptor is still open");
	close(xc.pipefd[1]);
	keel_runtime_destroy(rt);
	keel_xqueue_destroy(q);
}

/* A shard holding many requests that ran and are not completed (disk requests of a host in
 * flight) that submits others (a buffer of another runtime going home makes one at every
 * last put): each submit walked the whole list to see whether the request was one handed
 * on, O(requests held) per submit. A request is on the list only with rsh_ naming the
 * shard, so only those are looked for. */
#define HELD 64
#define SUBS 32
static struct {
	struct keel_xreq held[HELD], drv, sub[SUBS], fin;
	_Atomic int ran, subs_done, walks;
} hw;

static void
hw_hold(struct keel_xreq *req)
{
	atomic_fetch_add(&hw.ran, 1);
}

static void
hw_sub(struct keel_xreq *req)
{
	atomic_fetch_add(&hw.subs_done, 1);
	keel_xreq_complete(req, 0);
}

static void
hw_drive(struct keel_xreq *req)
{
	unsigned before = atomic_load(&keel__foreign_walks);

	for (int i = 0; i < SUBS; i++) {
		hw.sub[i] = (struct keel_xreq){ .fn = hw_sub };
		if (keel_runtime_submit(keel_shard_runtime(keel_this_shard()), 0, &hw.sub[i]) < 0)
			break;
	}
	atomic_store(&hw.walks, (int)(atomic_load(&keel__foreign_walks) - before));
	keel_xreq_complete(req, 0);
}

static void
hw_finish(struct keel_xreq *req)
{
	for (int i = 0; i < HELD; i++)
		keel_xreq_complete(&hw.held[i], 0);
	keel_xreq_complete(req, 0);
}

Test(core_foreign_stop, a_shard_holding_requests_submits_without_walking_them, .timeout = 60)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct timespec ts = { 0, 1000 * 1000 };

	o.idle_poll_us = 0;
	memset(&hw, 0, sizeof(hw));
	atomic_store(&hw.walks, -1);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	for (int i = 0; i < HELD; i++) {
		hw.held[i] = (struct keel_xreq){ .fn = hw_hold };
		cr_assert_eq(keel_runtime_submit(rt, 0, &hw.held[i]), 0);
	}
	hw.drv = (struct keel_xreq){ .fn = hw_drive };
	cr_assert_eq(keel_runtime_submit(rt, 0, &hw.drv), 0);
	for (int i = 0; i < 30000 && atomic_load(&hw.subs_done) < SUBS; i++)
		nanosleep(&ts, NULL);
	cr_assert_eq(atomic_load(&hw.ran), HELD);
	cr_assert_eq(atomic_load(&hw.subs_done), SUBS);
	cr_assert_eq(atomic_load(&hw.walks), 0,
		     "%d of %d submits walked the list of %d requests held", atomic_load(&hw.walks),
		     SUBS, HELD);
	hw.fin = (struct keel_xreq){ .fn = hw_finish };
	cr_assert_eq(keel_runtime_submit(rt, 0, &hw.fin), 0);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
}

/* ---- a host thread with a deferred cancel pending ---- */

/* keel_runtime_submit wakes a sleeping shard with write() on its eventfd under the shard's
 * request lock, and keel_runtime_stop with write() while it is counted in stop_calls:
 * write() is a cancellation point, so a host thread whose deferred cancel was pending (or
 * came then) was cancelled there, the lock left held (the shard blocked in it for ever) or
 * the count up (join spun for ever), and the shard never woken. The thread below makes the
 * cancel pending first (cancel disabled, pthread_cancel of itself, enabled again: it acts
 * at the next cancellation point), so the call certainly meets it. */
struct cancel_call {
	struct keel_runtime *rt;
	struct keel_xreq *req; /* NULL: keel_runtime_stop */
	_Atomic int returned;  /* 1: the call returned (the cancel acted after it) */
	_Atomic int rc;
};

/* The call, in a frame of its own that returns before the cancel acts: under ASan the
 * cancel's unwinding leaves the redzones of an instrumented frame with locals (the
 * temporaries of atomic_store among them) poisoned, and the thread's exit then trips on
 * them (google/sanitizers#1399). */
static __attribute__((noinline)) void
cancel_call_do(struct cancel_call *c)
{
	if (c->req)
		atomic_store(&c->rc, keel_runtime_submit(c->rt, 0, c->req));
	else
		keel_runtime_stop(c->rt, 0);
	atomic_store(&c->returned, 1);
}

static void *
cancel_call_thread(void *arg)
{
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL); /* glibc takes a NULL old state */
	pthread_cancel(pthread_self());
	pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
	cancel_call_do(arg);
	pthread_testcancel(); /* the cancel still acts, here */
	return NULL;
}

/* Shard 0 of @rt asleep in the kernel: the call then writes its eventfd. */
static void
wait_asleep(struct keel_runtime *rt)
{
	for (int i = 0; i < 3000 && !atomic_load(&rt->shards[0].sleeping); i++) {
		struct timespec ts = { 0, 1000 * 1000 };

		nanosleep(&ts, NULL);
	}
	cr_assert(atomic_load(&rt->shards[0].sleeping), "shard 0 never slept");
}

static void
cancel_call_run(struct cancel_call *c)
{
	pthread_t t;
	void *res;

	wait_asleep(c->rt);
	cr_assert_eq(pthread_create(&t, NULL, cancel_call_thread, c), 0);
	cr_assert_eq(pthread_join(t, &res), 0);
	cr_assert_eq(res, PTHREAD_CANCELED, "the pending cancel never acted");
	cr_assert(atomic_load(&c->returned), "the thread was cancelled inside keel_runtime_%s",
		  c->req ? "submit (its shard's request lock left held)"
			 : "stop (stop_calls left up: join would spin)");
}

static _Atomic int cancel_req_ran;

static void
cancel_req_fn(struct keel_xreq *req)
{
	atomic_store(&cancel_req_ran, 1);
	keel_xreq_complete(req, 0);
}

Test(core_foreign_stop, a_submit_from_a_thread_with_a_pending_cancel_leaves_no_lock_held,
     .timeout = 60)
{
	struct keel_opts o = test_opts(1);
	struct keel_xreq req = { .fn = cancel_req_fn };
	struct cancel_call c = { .req = &req, .rc = 1 };

	cr_assert_eq(keel_runtime_create(&o, &c.rt), 0);
	cr_assert_eq(keel_runtime_start(c.rt, NULL, NULL), 0);
	cancel_call_run(&c);
	cr_assert_eq(atomic_load(&c.rc), 0);
	/* The shard was woken: the request runs without another wake-up. */
	for (int i = 0; i < 10000 && !atomic_load(&cancel_req_ran); i++) {
		struct timespec ts = { 0, 1000 * 1000 };

		nanosleep(&ts, NULL);
	}
	cr_assert(atomic_load(&cancel_req_ran), "the request was not run: its shard not woken");
	cr_assert_eq(pthread_mutex_trylock(&c.rt->shards[0].xlock), 0);
	pthread_mutex_unlock(&c.rt->shards[0].xlock);
	keel_runtime_stop(c.rt, 0);
	cr_assert_eq(keel_runtime_join(c.rt), 0);
	keel_runtime_destroy(c.rt);
}

Test(core_foreign_stop, a_stop_from_a_thread_with_a_pending_cancel_wakes_the_shards_and_returns,
     .timeout = 60)
{
	struct keel_opts o = test_opts(1);
	struct cancel_call c = { 0 };

	cr_assert_eq(keel_runtime_create(&o, &c.rt), 0);
	cr_assert_eq(keel_runtime_start(c.rt, NULL, NULL), 0);
	cancel_call_run(&c);
	cr_assert_eq(atomic_load(&c.rt->stop_calls), 0);
	cr_assert_eq(keel_runtime_join(c.rt), 0); /* woken: it ends */
	keel_runtime_destroy(c.rt);
}

/* keel_runtime_submit from a shard's callback to a sleeping shard of the same runtime: the
 * wake-up went as a MSG_RING prepared in the caller's own ring, which reaches the kernel at
 * the caller's next io_uring_enter, but it took the target's sleeping flag at once, so a
 * host thread's request to the target after it found the shard "awake" and woke nothing:
 * both waited for the caller's callback to return (here held until the host's request ran,
 * or 20 s). The wake-up now goes through the target's eventfd, at once. */
static struct {
	struct keel_runtime *rt;
	struct keel_xreq r1;
	_Atomic int r1_sent, release;
} sw;

static void
sw_complete(struct keel_xreq *req)
{
	keel_xreq_complete(req, 0);
}

static void
sw_hold(struct keel_xreq *req)
{
	struct timespec ts = { 0, 1000 * 1000 };

	/* Shard 1 asleep: the submit below is what wakes it. */
	for (int i = 0; i < 20000 && !atomic_load(&sw.rt->shards[1].sleeping); i++)
		nanosleep(&ts, NULL);
	sw.r1 = (struct keel_xreq){ .fn = sw_complete };
	SHARD_CHECK_EQ(keel_runtime_submit(sw.rt, 1, &sw.r1), 0);
	atomic_store(&sw.r1_sent, 1);
	for (int i = 0; i < 20000 && !atomic_load(&sw.release); i++)
		nanosleep(&ts, NULL);
	keel_xreq_complete(req, 0);
}

Test(core_foreign_stop, a_submit_from_a_shard_wakes_its_target_at_once, .timeout = 90)
{
	struct keel_opts o = test_opts(2);
	struct keel_xreq r0 = { .fn = sw_hold }, r2 = { .fn = sw_complete }, *out;
	struct keel_xqueue *q;
	struct timespec ts = { 0, 1000 * 1000 };
	int got;

	o.idle_poll_us = 0;
	o.wait_coalesce_us = 0;
	cr_assert_eq(keel_xqueue_create(&q), 0);
	cr_assert_eq(keel_runtime_create(&o, &sw.rt), 0);
	cr_assert_eq(keel_runtime_start(sw.rt, NULL, NULL), 0);
	cr_assert_eq(keel_runtime_submit(sw.rt, 0, &r0), 0);
	for (int i = 0; i < 30000 && !atomic_load(&sw.r1_sent); i++)
		nanosleep(&ts, NULL);
	cr_assert(atomic_load(&sw.r1_sent), "shard 0's request never ran");
	r2.queue = q;
	cr_assert_eq(keel_runtime_submit(sw.rt, 1, &r2), 0);
	got = keel_xqueue_wait(q, &out, 1, KEEL_S(10));
	atomic_store(&sw.release, 1);
	cr_assert_eq(got, 1,
		     "the host's request to shard 1 did not run while shard 0's callback held "
		     "the wake-up it had taken");
	keel_runtime_stop(sw.rt, 0);
	cr_assert_eq(keel_runtime_join(sw.rt), 0);
	SHARD_CHECKS_PASSED();
	keel_runtime_destroy(sw.rt);
	keel_xqueue_destroy(q);
}

/* A host thread inside keel_runtime_submit, before it takes the shard's lock, while the
 * thread that started the runtime stops, joins and destroys it: the join waits for the
 * submit to return (-ESHUTDOWN: the stop had begun) before the destroy frees the lock and
 * the shard. Uncounted, the join returned under it, and the submit then locked a destroyed
 * mutex in freed memory and read its shard there (ASan: heap-use-after-free). The submit is
 * held there (core/internal.h, keel__hook_submit) until the join finds it in progress
 * (keel__hook_join_calls), or the destroy has returned. */
#ifdef KEEL_FAULTS
static struct {
	struct keel_runtime *rt;
	sem_t held, release;
	_Atomic int join_found;
	_Atomic int ran;
} ws;
static _Thread_local bool ws_mine; /* the test's submitting thread */

static void
ws_hold(struct keel_runtime *rt, unsigned shard)
{
	(void)rt, (void)shard;
	if (!ws_mine)
		return;
	ws_mine = false;
	sem_post(&ws.held);
	test_sem_wait(&ws.release);
}

static void
ws_found(struct keel_runtime *rt)
{
	(void)rt;
	atomic_fetch_add(&ws.join_found, 1);
	sem_post(&ws.release);
}

static void
ws_fn(struct keel_xreq *req)
{
	atomic_store(&ws.ran, 1);
	keel_xreq_complete(req, 0);
}

static void *
ws_submitter(void *arg)
{
	static struct keel_xreq req = { .fn = ws_fn };

	(void)arg;
	ws_mine = true;
	return (void *)(intptr_t)keel_runtime_submit(ws.rt, 0, &req);
}

Test(core_foreign_stop, a_join_waits_for_a_submit_under_way_on_another_thread, .timeout = 60)
{
	struct keel_opts o = test_opts(1);
	pthread_t th;
	void *r;

	sem_init(&ws.held, 0, 0);
	sem_init(&ws.release, 0, 0);
	cr_assert_eq(keel_runtime_create(&o, &ws.rt), 0);
	cr_assert_eq(keel_runtime_start(ws.rt, NULL, NULL), 0);
	keel__hook_submit = ws_hold;
	keel__hook_join_calls = ws_found;
	cr_assert_eq(pthread_create(&th, NULL, ws_submitter, NULL), 0);
	cr_assert(test_sem_wait(&ws.held), "the submit never reached the shard's lock");
	keel_runtime_stop(ws.rt, 0);
	cr_assert_eq(keel_runtime_join(ws.rt), 0);
	keel_runtime_destroy(ws.rt);
	sem_post(&ws.release); /* uncounted: the submit goes on in freed memory */
	cr_assert_eq(pthread_join(th, &r), 0);
	keel__hook_submit = NULL;
	keel__hook_join_calls = NULL;
	cr_assert_eq((intptr_t)r, -ESHUTDOWN, "the submit returned %d: want -ESHUTDOWN",
		     (int)(intptr_t)r);
	cr_assert_eq(atomic_load(&ws.join_found), 1, "the join found the submit %d times",
		     atomic_load(&ws.join_found));
	cr_assert_eq(atomic_load(&ws.ran), 0, "a refused request ran");
}
#else
Test(core_foreign_stop, a_join_waits_for_a_submit_under_way_on_another_thread)
{
	cr_skip_test("needs fault injection's pause points: a -DKEEL_FAULTS=ON build (build-asan)");
}
#endif

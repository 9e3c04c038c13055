// SPDX-License-Identifier: MIT
/* Foreign-thread requests (keel_runtime_submit, keel_xqueue_*) and the shard's wake-up
 * eventfd, which foreign threads write to wake a sleeping shard. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"

struct keel_xqueue {
	pthread_mutex_t lock;
	struct keel_xreq *head, *tail;
	int efd;
};

/* The list of requests that ran on @s (keel__foreign_drain), not yet completed. */
static void
run_link(struct keel_shard *s, struct keel_xreq *r)
{
	r->rsh_ = s;
	r->rprev_ = NULL;
	r->rnext_ = s->xrun;
	if (s->xrun)
		s->xrun->rprev_ = r;
	s->xrun = r;
}

static void
run_unlink(struct keel_shard *s, struct keel_xreq *r)
{
	if (r->rprev_)
		r->rprev_->rnext_ = r->rnext_;
	else
		s->xrun = r->rnext_;
	if (r->rnext_)
		r->rnext_->rprev_ = r->rprev_;
	r->rsh_ = NULL;
}

/* Whether @r is on @s's list. A request's private fields are not set before its first
 * submit, so its rsh_ is not trusted alone: a request on the list has rsh_ @s, and only
 * such a one is looked for on it (a shard holding many requests that ran, and submitting
 * others, walked them all at every submit; a buffer of another runtime going home submits
 * one at every last put). */
_Atomic unsigned keel__foreign_walks;

static bool
run_listed(const struct keel_shard *s, const struct keel_xreq *r)
{
	atomic_fetch_add_explicit(&keel__foreign_walks, 1, memory_order_relaxed);
	for (const struct keel_xreq *l = s->xrun; l; l = l->rnext_)
		if (l == r)
			return true;
	return false;
}

/* keel_runtime_submit's work, counted in @s->xcalls. */
static int
submit_counted(struct keel_runtime *rt, struct keel_shard *s, struct keel_xreq *req)
{
	struct keel_shard *own = NULL;

	/* Handed on by the fn it ran in (not completed): off this shard's list first, as the
	 * shard it goes to lists it when it runs there. */
	if (keel__cur && req->rsh_ == keel__cur && run_listed(keel__cur, req)) {
		own = keel__cur;
		run_unlink(own, req);
	}
#ifdef KEEL_FAULTS
	if (keel__hook_submit)
		keel__hook_submit(rt, s->id);
#endif
	pthread_mutex_lock(&s->xlock);
	if (s->xclosed || !atomic_load(&rt->accepting) || atomic_load(&rt->stopping)) {
		pthread_mutex_unlock(&s->xlock);
		if (own) /* still this shard's to complete */
			run_link(own, req);
		return -ESHUTDOWN;
	}
	req->next_ = NULL;
	req->rsh_ = NULL;
	if (s->xtail)
		s->xtail->next_ = req;
	else
		s->xhead = req;
	s->xtail = req;
	atomic_store(&s->xpending, 1);
	/* Woken under the lock: the shard takes it to run the request, so once it is released
	 * the request may complete and its owner stop and destroy the runtime; nothing of the
	 * shard may be touched after. Through its eventfd, at once, also from a shard of its
	 * runtime: a MSG_RING would wait in the caller's ring for its next io_uring_enter (the
	 * end of its pass, or of a long callback), and the flag taken here tells every other
	 * waker meanwhile that the shard is awake. */
	if (atomic_load(&s->sleeping) && atomic_exchange(&s->sleeping, 0))
		keel__shard_wake(s, NULL);
	pthread_mutex_unlock(&s->xlock);
	return 0;
}

int
keel_runtime_submit(struct keel_runtime *rt, unsigned shard, struct keel_xreq *req)
{
	struct keel_shard *s;
	int r;

	if (!rt || shard >= rt->count || !req || !req->fn)
		return -EINVAL;
	s = &rt->shards[shard];
	/* Counted before the shard's lock and list are touched, until the last touch of @s
	 * (its wake-up included): keel_runtime_join waits for no call to be left in progress,
	 * as for keel_runtime_stop's, so a destroy after it cannot free the lock under a host
	 * thread still in here (one that submits until it gets -ESHUTDOWN). Per shard, so
	 * that threads submitting to different shards share no line for it. */
	atomic_fetch_add(&s->xcalls, 1);
	r = submit_counted(rt, s, req);
	atomic_fetch_sub(&s->xcalls, 1);
	return r;
}

unsigned
keel__foreign_drain(struct keel_shard *s)
{
	struct keel_xreq *r;
	unsigned n = 0;

	if (!atomic_load_explicit(&s->xpending, memory_order_relaxed))
		return 0;
	/* Active again before the requests run (termination detection: loop.c, wave), so a
	 * flag from an earlier pass does not stand while they run. None can come after this
	 * shard found itself quiescent: stop_progress closes the list then (xclosed). */
	if (s->phase != PHASE_RUN) /* before stopping the flag is 0 anyway */
		atomic_store_explicit(&s->quiescent, 0, memory_order_relaxed);
	pthread_mutex_lock(&s->xlock);
	r = s->xhead;
	s->xhead = s->xtail = NULL;
	atomic_store(&s->xpending, 0);
	pthread_mutex_unlock(&s->xlock);
	while (r) {
		struct keel_xreq *next = r->next_;
		/* On the list of requests that ran until keel_xreq_complete (at once, or later
		 * from a callback). */
		run_link(s, r);
		r->fn(r);
		r = next;
		n++;
	}
	STAT_ADD(s, foreign, n);
	return n;
}

/* At the shard's end. stop_progress closed the list when the shard found itself quiescent,
 * with nothing in it, so nothing should be left; any request that is is completed with
 * -ECANCELED rather than left to its owner's wait. */
void
keel__foreign_close(struct keel_shard *s)
{
	struct keel_xreq *r;

	pthread_mutex_lock(&s->xlock);
	s->xclosed = true;
	r = s->xhead;
	s->xhead = s->xtail = NULL;
	atomic_store(&s->xpending, 0);
	pthread_mutex_unlock(&s->xlock);
	while (r) {
		struct keel_xreq *next = r->next_;
		keel_xreq_complete(r, -ECANCELED);
		r = next;
	}
	/* Requests that ran and wait for something that will not come now (a timer: none
	 * runs once the stop began): their owners would wait for ever. */
	if (s->xrun) {
		unsigned n = 0;

		for (r = s->xrun; r; r = r->rnext_)
			n++;
		keel_log(
			KEEL_LOG_ERROR, "core",
			"shard %u: %u foreign request%s (keel_runtime_submit) ran but %s not "
			"completed when the shard ended: completed now with -ECANCELED; complete "
			"them before the stop ends (the timers pending when it begins are dropped: "
			"use a keel_shard_on_stop hook)",
			s->id, n, n == 1 ? "" : "s", n == 1 ? "was" : "were");
		while (s->xrun)
			keel_xreq_complete(s->xrun, -ECANCELED);
	}
}

void
keel_xreq_complete(struct keel_xreq *req, int status)
{
	struct keel_xqueue *q = req->queue;
	uint64_t one = 1;
	struct keel_shard *s = req->rsh_;

	if (s) { /* off its shard's list of requests that ran */
		/* That list is the shard's own: completed elsewhere, two threads would write it. */
		keel_verify(s == keel__cur);
		run_unlink(s, req);
	}
	req->status = status;
	if (req->done)
		req->done(req);
	if (!q)
		return;
	/* The eventfd is written under the lock: once the owner can pop this request it may
	 * destroy the queue, so nothing here may touch @q after the unlock. */
	pthread_mutex_lock(&q->lock);
	req->next_ = NULL;
	if (q->tail)
		q->tail->next_ = req;
	else
		q->head = req;
	q->tail = req;
	if (write(q->efd, &one, sizeof(one)) != sizeof(one))
		keel_log(KEEL_LOG_ERROR, "core", "xqueue eventfd write failed: %s",
			 strerror(errno));
	pthread_mutex_unlock(&q->lock);
}

int
keel_xqueue_create(struct keel_xqueue **out)
{
	struct keel_xqueue *q = calloc(1, sizeof(*q));
	if (!q)
		return -ENOMEM;
	q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (q->efd < 0) {
		int e = errno;
		free(q);
		return -e;
	}
	pthread_mutex_init(&q->lock, NULL);
	*out = q;
	return 0;
}

int
keel_xqueue_fd(const struct keel_xqueue *q)
{
	return q->efd;
}

unsigned
keel_xqueue_pop(struct keel_xqueue *q, struct keel_xreq **out, unsigned max)
{
	uint64_t v;
	unsigned n = 0;
	bool more;

	if (!max || !out)
		return 0; /* the eventfd's count is left for a pop that can take something */
	if (read(q->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		keel_log(KEEL_LOG_ERROR, "core", "xqueue eventfd read failed: %s", strerror(errno));
	pthread_mutex_lock(&q->lock);
	while (n < max && q->head) {
		out[n++] = q->head;
		q->head = q->head->next_;
	}
	if (!q->head)
		q->tail = NULL;
	more = q->head != NULL;
	pthread_mutex_unlock(&q->lock);
	if (more) {
		/* More than max waiting: stay readable. */
		v = 1;
		if (write(q->efd, &v, sizeof(v)) != sizeof(v))
			keel_log(KEEL_LOG_ERROR, "core", "xqueue eventfd write failed: %s",
				 strerror(errno));
	}
	return n;
}

int
keel_xqueue_wait(struct keel_xqueue *q, struct keel_xreq **out, unsigned max, int64_t timeout_ns)
{
	struct pollfd pfd = { .fd = q->efd, .events = POLLIN };
	uint64_t deadline = timeout_ns >= 0 ? keel__clock_ns() + (uint64_t)timeout_ns : 0;

	if (!max || !out)
		return -EINVAL;
	for (;;) {
		unsigned n = keel_xqueue_pop(q, out, max);
		int wait_ms = -1, r;

		if (n)
			return (int)n;
		/* The eventfd can be readable for a completion an earlier pop already took:
		 * wait again until something is really there. */
		if (timeout_ns >= 0) {
			uint64_t now = keel__clock_ns(), ms;
			if (now >= deadline)
				return 0;
			ms = KEEL_NS_TO_MS(deadline - now + 999999);
			wait_ms = ms > INT32_MAX ? INT32_MAX : (int)ms;
		}
		r = poll(&pfd, 1, wait_ms);
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

void
keel_xqueue_destroy(struct keel_xqueue *q)
{
	if (!q)
		return;
	/* Wait out a completer still inside its critical section (keel_xreq_complete). */
	pthread_mutex_lock(&q->lock);
	pthread_mutex_unlock(&q->lock);
	close(q->efd);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

_Atomic unsigned keel__fault_xefd_read_err;

/* A failed read of the shard's eventfd: said at most once per 10 s, and armed again; after
 * KEEL__XEFD_FAILS_MAX in a row (an error that persists would make every pass re-arm a read
 * that fails at once) the read is given up and each sleep capped instead. */
static void
xefd_failed(struct keel_shard *s, int res)
{
	uint64_t now = keel__clock_ns();
	const char *err = res < 0 ? strerror(-res) : "it read nothing";
	const char *hint = res == -EBADF ? " (EBADF: the host closed a descriptor keel owns)"
					 : " (a kernel or keel fault: report it)";

	if (++s->xefd_fails >= KEEL__XEFD_FAILS_MAX) {
		s->xefd_lost = true;
		keel_log(KEEL_LOG_ERROR, "core",
			 "shard %u: its eventfd read failed %u times in a row (the last: %s)%s; "
			 "it is no longer read, so host threads' keel_runtime_submit and "
			 "keel_runtime_stop cannot wake this shard: it now sleeps at most 1 ms at "
			 "a time to find them (a busy wait: restart the process)",
			 s->id, s->xefd_fails, err, hint);
		return;
	}
	if (s->xefd_fail_log_ns && now - s->xefd_fail_log_ns < 10000000000ULL)
		return;
	s->xefd_fail_log_ns = now;
	keel_log(KEEL_LOG_ERROR, "core",
		 "shard %u: eventfd read failed: %s%s; armed again (what it announced runs at the "
		 "next pass). After %u failures in a row the shard stops reading it and polls "
		 "for host threads' requests and stops every 1 ms instead (logged at most once "
		 "per 10 s)",
		 s->id, err, hint, KEEL__XEFD_FAILS_MAX);
}

static void
xefd_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct internal_op *iop = keel__internal_done(op);
	struct keel_shard *s = iop->shard;

	if (res != -ECANCELED && keel__fault_take(&keel__fault_xefd_read_err))
		res = -EIO;
	if (res > 0) {
		STAT_INC(s, wakeups);
		s->xefd_fails = 0;
	} else if (res != -ECANCELED) {
		xefd_failed(s, res);
		if (s->xefd_lost)
			return;
	}
	if (s->phase != PHASE_DONE)
		keel__internal_read(s, iop, s->xefd, &s->xefd_buf, sizeof(s->xefd_buf));
}

/* The shard's own eventfd: foreign threads write it to wake a sleeping shard. */
void
keel__foreign_arm(struct keel_shard *s)
{
	s->xefd_op.op.fn = xefd_cb;
	s->xefd_op.shard = s;
	keel__internal_read(s, &s->xefd_op, s->xefd, &s->xefd_buf, sizeof(s->xefd_buf));
}

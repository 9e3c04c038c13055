// SPDX-License-Identifier: MIT
/*
 * The shard loop: reap, drain mail, run timers and deferred work, flush mail, submit, and
 * sleep in the kernel when there is nothing to do. See docs/architecture.md.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

_Thread_local struct keel_shard *keel__cur __attribute__((tls_model("initial-exec")));
/* The CQE being dispatched (keel_cqe_current). */
static _Thread_local const struct io_uring_cqe *cqe_cur __attribute__((tls_model("initial-exec")));

const struct io_uring_cqe *
keel_cqe_current(void)
{
	return cqe_cur;
}

#define NS_PER_MS 1000000ULL
#define NS_PER_S  1000000000ULL
/* While draining at stop, while messages wait in an overflow list, or while the app waits
 * for room in a queue (keel_msg_wait_room), sleep at most this long: progress then depends
 * on other shards, which do not wake us. */
#define BOUNDED_SLEEP_NS (1 * NS_PER_MS)

uint64_t
keel__clock_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static void
wake_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_shard *s = keel__cur;
	STAT_INC(s, wakeups);
	STAT_INC(s, wakeups_ring);
}

/* Only failures arrive here (IOSQE_CQE_SKIP_SUCCESS). The sender cleared the target's
 * `sleeping` flag when it chose to wake it, so no later sender will: the target may sleep
 * with mail waiting. Wake it through its eventfd instead, whose read is always armed on the
 * target's ring (runtime.c): the write completes that read and ends the target's wait, and
 * if the target is awake already, or its read is being re-armed, the eventfd's count stays
 * non-zero and the re-armed read completes at once. The failure CQE is on our own ring:
 * it ends our next sleep at once if that sleep is plain, and at its window
 * (--wait-coalesce-us) if it gathers, where one CQE does not reach the count. No wake-up
 * is lost; one is late by that window at most. The failure CQE itself may be dropped
 * (the kernel's, with our CQ full and no memory to hold it): then cq_drops_grew wakes the
 * target. */
_Atomic unsigned keel__fault_msgring_cqe_drop;

/* Waking @t through its eventfd failed with errno @e (@after: what failed before, or ""):
 * whoever sent it had cleared @t's `sleeping`, so no later sender wakes it. */
static __attribute__((cold, noinline)) void
wake_lost_log(const struct keel_shard *t, int e, const char *after)
{
	keel_log(KEEL_LOG_ERROR, "core",
		 "waking shard %u through its eventfd%s failed: %s; that wake-up is lost (a later "
		 "sender takes the shard as already woken): it may sleep with messages or "
		 "requests unrun, or miss the stop, until something else wakes it (a timer, "
		 "I/O)%s",
		 t->id, after, strerror(e),
		 e == EBADF ? ". EBADF: its eventfd is closed: a keel_runtime_submit or "
			      "keel_runtime_stop racing keel_runtime_destroy (call neither once "
			      "the destroy may have begun), or the host closed a descriptor keel "
			      "owns"
			    : "");
}

static void
msgring_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_shard *s = keel__cur;
	struct keel_shard *t = &s->rt->shards[op - s->msgring_ops];
	uint64_t one = 1, now = keel__clock_ns();

	if (keel__fault_take(&keel__fault_msgring_cqe_drop)) { /* as if the kernel dropped it */
		s->cq_drops_faked++;
		return;
	}
	STAT_INC(s, wake_fallbacks);
	if (!s->wake_fail_logged_ns || now - s->wake_fail_logged_ns >= 10 * NS_PER_S) {
		s->wake_fail_logged_ns = now;
		keel_log(KEEL_LOG_WARN, "core",
			 "shard %u: MSG_RING wake-up of shard %u failed (%s); woke it through its "
			 "eventfd (counted in the stats as wake_fallbacks; logged once per 10 s)",
			 s->id, t->id, strerror(-res));
	}
	if (write(t->xefd, &one, sizeof(one)) != sizeof(one))
		wake_lost_log(t, errno, " (after its MSG_RING wake-up failed)");
}

/* Not counted in flight: wake-ups received, and our MSG_RING failures. */
static inline bool
uncounted_op(const struct keel_shard *s, const struct keel_op *op)
{
	return op == &s->wake_op ||
	       (uintptr_t)op - (uintptr_t)s->msgring_ops < s->rt->count * sizeof(*op);
}

static void
cancel_cb(struct keel_op *op, int res, uint32_t flags)
{
	keel__internal_done(op);
}

int
keel__shard_ring_init(struct keel_shard *s)
{
	struct keel_runtime *rt = s->rt;
	const struct keel_caps *caps = keel_caps_get();
	struct io_uring_params p;
	unsigned flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
	int r;

	if (rt->features[KEEL_FEAT_SINGLE_ISSUER].used)
		flags |= IORING_SETUP_SINGLE_ISSUER;
	/* IORING_SQ_TASKRUN tells a pass that does not sleep whether arrivals wait, without a
	 * system call. A polling shard makes such passes all the time; a blocking one only
	 * when its sleep is skipped (mail, deferred calls, draining), and without the flag
	 * those passes enter the kernel when the CQ is empty (need_enter). Raising it costs
	 * whoever wakes the ring (the sender's CPU on loopback, the softirq's elsewhere) an
	 * atomic write to a cache line the shard clears at every run of task work: so by
	 * default (feature taskrun_flag, auto) the ring asks for it only when the shard may
	 * poll. */
	if (rt->features[KEEL_FEAT_DEFER_TASKRUN].used)
		flags |= IORING_SETUP_DEFER_TASKRUN;
	else if (caps->coop_taskrun)
		flags |= IORING_SETUP_COOP_TASKRUN;
	if ((flags & (IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN)) &&
	    rt->features[KEEL_FEAT_TASKRUN_FLAG].used) /* auto: polling shards only */
		flags |= IORING_SETUP_TASKRUN_FLAG;

	/* ZCRX completions are 32 bytes (the second half holds the area offset), and the kernel
	 * registers an interface queue only on a DEFER_TASKRUN ring: ask for CQE32 only on the
	 * shards that will try (liburing's CQ walk follows the CQE size). */
	if (rt->opts.zcrx != KEEL_POLICY_OFF && s->rxq >= 0 &&
	    rt->features[KEEL_FEAT_DEFER_TASKRUN].used)
		flags |= IORING_SETUP_CQE32;
	memset(&p, 0, sizeof(p));
	p.flags = flags;
	/* Sized for connections, not for the SQ: every multishot receive of every connection
	 * may complete in one pass (docs/architecture.md, "The ring"). */
	p.cq_entries = rt->opts.cq_entries;
	r = io_uring_queue_init_params(rt->opts.ring_entries, &s->ring, &p);
	if (r < 0) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "io_uring_setup(%u SQ entries, %u CQ entries, flags 0x%x) failed: %s%s",
			 rt->opts.ring_entries, rt->opts.cq_entries, flags, strerror(-r),
			 /* Ring memory is the memory cgroup's since Linux 5.12, not
			  * RLIMIT_MEMLOCK's (keel needs 5.19): ulimit -l was no fix. */
			 r == -ENOMEM ? "; lower --ring-entries and --cq-entries, or "
					"give the memory cgroup more room"
			 : r == -EMFILE || r == -ENFILE ? KEEL__NOFILE_HINT
							: "");
		return r;
	}
	if (!(p.features & IORING_FEAT_NODROP))
		keel_log(KEEL_LOG_WARN, "core",
			 "this kernel lacks IORING_FEAT_NODROP (5.5): completions beyond the CQ "
			 "(%s %u) are dropped, not held; raise it",
			 keel__opt_name(&rt->opts, "--cq-entries"), p.cq_entries);
	s->ring_fd = s->ring.ring_fd;
	s->ring_flags = s->ring.flags;
	s->taskrun_flag = flags & IORING_SETUP_TASKRUN_FLAG;
	if (rt->features[KEEL_FEAT_REG_RING_FD].used) {
		r = io_uring_register_ring_fd(&s->ring);
		s->ring_fd_registered = r == 1;
		if (r != 1) {
			keel_log(rt->features[KEEL_FEAT_REG_RING_FD].policy == KEEL_POLICY_ON
					 ? KEEL_LOG_ERROR
					 : KEEL_LOG_INFO,
				 "core", "registering the ring fd failed (%s)",
				 strerror(r < 0 ? -r : EIO));
			if (rt->features[KEEL_FEAT_REG_RING_FD].policy == KEEL_POLICY_ON) {
				io_uring_queue_exit(&s->ring);
				return r < 0 ? r : -EIO;
			}
		}
	}
	s->msgring_ops = calloc(rt->count, sizeof(*s->msgring_ops));
	if (!s->msgring_ops) {
		io_uring_queue_exit(&s->ring);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < rt->count; i++)
		s->msgring_ops[i].fn = msgring_cb;
	s->wake_op.fn = wake_cb;
	s->cancel_op.op.fn = cancel_cb;
	s->cancel_op.shard = s;
	s->stall_ns = (uint64_t)rt->opts.stall_ms * NS_PER_MS;
	/* Gathering needs DEFER_TASKRUN (keel_features_decide): without it, kernels before the
	 * fix "io_uring: fix min_wait wakeups for SQPOLL" (6.19, backported to stable) do not
	 * wake a waiter past the window for completions posted straight to the CQ. keel never
	 * sets up SQPOLL, which enter_gather() does not handle (no SQ_WAKEUP). A CQ smaller
	 * than twice KEEL__CO_GATHER would fill before a gathering sleep ends early. */
	s->min_wait = rt->features[KEEL_FEAT_MIN_WAIT].used && rt->opts.wait_coalesce_us;
	s->gather_nr = KEEL__CO_GATHER < s->ring.cq.ring_entries / 2 ? KEEL__CO_GATHER
								     : s->ring.cq.ring_entries / 2;
	return 0;
}

void
keel__shard_ring_fini(struct keel_shard *s)
{
	io_uring_queue_exit(&s->ring);
	free(s->msgring_ops);
	s->msgring_ops = NULL;
	free(s->files.slots); /* the table went with the ring */
	s->files.slots = NULL;
	s->files.slot_words = 0;
	free(s->files.pend); /* empty: every close was issued or completed */
	s->files.pend = NULL;
	s->files.pend_nb = 0;
}

const char *
keel__ring_err_hint(int r)
{
	switch (-r) {
	case EBUSY:
		return " (completions not yet reaped fill the completion queue: raise "
		       "--cq-entries)";
	case EAGAIN:
	case ENOMEM:
		return " (the kernel could not allocate the requests: memory is short)";
	case EINVAL:
	case EOPNOTSUPP:
		return " (the kernel refused a flag or operation keel asked for: a kernel without "
		       "a feature forced on with --feature NAME=on; set it to auto, or run a newer "
		       "kernel)";
	case EEXIST:
	case EOWNERDEAD:
		return " (the ring is single-issuer and was entered by a thread other than its "
		       "shard's, or that thread is gone: only the shard's own thread may use its "
		       "ring, keel_shard_ring_get's included)";
	case EBADF:
	case EBADFD:
		return " (the ring's descriptor is closed or no longer an io_uring: the host closed "
		       "a descriptor keel owns)";
	default:
		return " (unexpected: the shard goes on and tries again at its next pass; report "
		       "it)";
	}
}

#ifdef KEEL_FAULTS
_Atomic unsigned keel__fault_submit_fail;
#endif

int
keel__submit_said(struct keel_shard *s)
{
	int r;

#ifdef KEEL_FAULTS
	if (keel__fault_take(&keel__fault_submit_fail))
		r = -ENOMEM;
	else
#endif
		r = io_uring_submit(&s->ring);

	STAT_INC(s, enters);
	if (r < 0)
		keel_log(KEEL_LOG_ERROR, "core", "shard %u: submitting to the ring failed: %s%s",
			 s->id, strerror(-r), keel__ring_err_hint(r));
	return r;
}

struct io_uring_sqe *
keel__sqe_internal(struct keel_shard *s)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);

	if (__builtin_expect(sqe != NULL, 1))
		return sqe;
	/* SQ full: submit what is queued (no GETEVENTS needed for submission). */
	keel__submit_said(s);
	return io_uring_get_sqe(&s->ring);
}

void
keel__internal_arm(struct keel_shard *s, struct internal_op *iop, struct io_uring_sqe *sqe)
{
	io_uring_sqe_set_data(sqe, &iop->op);
	iop->armed = true;
	s->inflight++;
	s->internal_inflight++;
}

struct internal_op *
keel__internal_done(struct keel_op *op)
{
	struct internal_op *iop = (struct internal_op *)op;

	iop->armed = false;
	iop->shard->internal_inflight--;
	return iop;
}

_Atomic unsigned keel__fault_internal_nosqe;
_Atomic unsigned keel__fault_cancel_nosqe;
void (*keel__hook_before_sleep)(void);

/* A read that finds no SQE (the ring's submit failed: logged there) is armed again at the
 * end of the pass, and of every pass until it is: without it a foreign thread's wake-up
 * (eventfd) or a signal (signalfd) would never reach this shard again. */
void
keel__internal_read(struct keel_shard *s, struct internal_op *iop, int fd, void *buf, unsigned len)
{
	struct io_uring_sqe *sqe =
		keel__fault_take(&keel__fault_internal_nosqe) ? NULL : keel__sqe_internal(s);

	iop->fd = fd;
	iop->buf = buf;
	iop->len = len;
	if (!sqe) {
		if (!iop->retry)
			keel_log(KEEL_LOG_WARN, "core",
				 "shard %u: no SQE to arm keel's own %s of fd %d; retrying every "
				 "pass",
				 s->id, iop->poll ? "poll" : "read", fd);
		iop->retry = true;
		s->internal_retry = true;
		return;
	}
	iop->retry = false;
	if (iop->poll)
		io_uring_prep_poll_add(sqe, fd, POLLIN);
	else
		io_uring_prep_read(sqe, fd, buf, len, 0);
	keel__internal_arm(s, iop, sqe);
}

static void submit_cancel_all(struct keel_shard *s);

void
keel__internal_retry(struct keel_shard *s)
{
	struct internal_op *ops[] = { &s->xefd_op, &s->sig_op };

	s->internal_retry = false;
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (ops[i]->retry && !ops[i]->armed)
			keel__internal_read(s, ops[i], ops[i]->fd, ops[i]->buf, ops[i]->len);
	if (s->cancel_retry)
		submit_cancel_all(s);
	if (s->files.nosqe && !s->cancel_retry)
		keel__file_retry(s);
}

#ifdef KEEL_FAULTS
/* While non-zero, each keel_sqe_get finds no SQE (as when the ring's submit fails). */
_Atomic unsigned keel__fault_sqe_none;

bool
keel__fault_sqe_take(void)
{
	return keel__fault_take(&keel__fault_sqe_none);
}
#endif

struct io_uring_sqe *
keel_sqe_get(void)
{
#ifdef KEEL_FAULTS
	if (keel__fault_take(&keel__fault_sqe_none))
		return NULL;
#endif
	return keel__sqe_internal(cur_shard(__func__));
}

int
keel_sqe_reserve(unsigned n)
{
	struct keel_shard *s = cur_shard(__func__);
	int r;

	if (!n || n > s->ring.sq.ring_entries)
		return -EINVAL;
	if (io_uring_sq_space_left(&s->ring) >= n)
		return 0;
	r = keel__submit_said(s);
	if (r < 0)
		return r;
	/* Without IORING_SETUP_SUBMIT_ALL the kernel stops at the first SQE it cannot submit
	 * and leaves the rest queued: there may still be no room. */
	return io_uring_sq_space_left(&s->ring) >= n ? 0 : -EBUSY;
}

void
keel_sqe_bind(struct io_uring_sqe *sqe, struct keel_op *op)
{
	struct keel_shard *s = cur_shard(__func__);
	io_uring_sqe_set_data(sqe, op);
	KEEL__FAULTS_SQE(sqe);
	s->inflight++;
	s->binds++;
}

struct io_uring *
keel_shard_ring_get(void)
{
	return &cur_shard(__func__)->ring;
}

uint64_t
keel_now_ns(void)
{
	return cur_shard(__func__)->now_ns;
}

_Atomic unsigned keel__fault_msgring_fail;

/* The target ring fd of a MSG_RING wake-up: -1 while a test injects failures. */
static int
msgring_fd(const struct keel_shard *t)
{
	return keel__fault_take(&keel__fault_msgring_fail) ? -1 : t->ring_fd;
}

void
keel__shard_wake(struct keel_shard *t, struct keel_shard *from)
{
	if (from && from->rt == t->rt && from->phase != PHASE_DONE) {
		struct io_uring_sqe *sqe = keel__sqe_internal(from);
		if (sqe) {
			io_uring_prep_msg_ring(sqe, msgring_fd(t), 0,
					       (uint64_t)(uintptr_t)&t->wake_op, 0);
			io_uring_sqe_set_data(sqe, &from->msgring_ops[t->id]);
			sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
			KEEL__FAULTS_SQE(sqe);
			return;
		}
	}
	/* Not a shard of this runtime: the target's eventfd, read through its ring. A host
	 * thread gets here inside keel_runtime_submit, holding the target's xlock, and inside
	 * keel_runtime_stop, counted in stop_calls: write() is a cancellation point, and a
	 * deferred cancel acted on there left the lock held (the shard blocked in it for ever)
	 * or the count up (join spun for ever), the shard not woken. The raw system call is
	 * none (glibc's and musl's syscall() do not act on cancels), costs nothing more and
	 * stays async-signal-safe (keel_runtime_stop may run in a handler); a pending cancel
	 * acts at the caller's next cancellation point, after the call. The error line, which
	 * is one (stdio, a sink), is written with cancellation off. */
	uint64_t one = 1;

	if (syscall(SYS_write, t->xefd, &one, sizeof(one)) != (long)sizeof(one)) {
		int e = errno, cs;

		pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cs);
		wake_lost_log(t, e, "");
		pthread_setcancelstate(cs, NULL);
	}
}

/* While it points at an operation, that operation's next CQE is discarded in reap and
 * counted as dropped, as the kernel drops a CQE it has no room nor memory for (tests). */
struct keel_op *_Atomic keel__fault_cqe_drop_op;

/* Dispatch every CQE already in the CQ: no system call. */
static unsigned
reap(struct keel_shard *s)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0, wakes = 0;

	io_uring_for_each_cqe(&s->ring, head, cqe)
	{
		struct keel_op *op = io_uring_cqe_get_data(cqe);
		n++;
		if (__builtin_expect(op == NULL, 0))
			continue;
		if (__builtin_expect(op == atomic_load_explicit(&keel__fault_cqe_drop_op,
								memory_order_relaxed),
				     0)) {
			atomic_store(&keel__fault_cqe_drop_op, NULL);
			s->cq_drops_faked++;
			continue;
		}
		/* Wake-ups (MSG_RING, the eventfd) come with the mail or request they announce,
		 * which is counted as it is run: not arrivals of their own. */
		wakes += op == &s->wake_op || op == &s->xefd_op.op;
		if (!(cqe->flags & IORING_CQE_F_MORE) && !uncounted_op(s, op))
			s->inflight--;
		cqe_cur = cqe;
		op->fn(op, cqe->res, cqe->flags);
	}
	cqe_cur = NULL; /* once: nothing runs between two completions' callbacks */
	if (n) {
		io_uring_cq_advance(&s->ring, n);
		STAT_ADD(s, cqes, n);
	}
	s->reaped_wakes = wakes;
	return n;
}

/* The first overflow of a shard's CQ, logged once naming the option (the stats count every
 * pass that finds one: a CQ too small for the load overflows again and again). */
static __attribute__((noinline, cold)) void
cq_overflow_log(struct keel_shard *s)
{
	s->cq_ovf_logged = true;
	keel_log(KEEL_LOG_WARN, "core",
		 "shard %u: the completion queue (%u entries) overflowed: nothing is lost (the "
		 "kernel holds the excess) but multishot receives end and are re-armed, at a "
		 "cost; raise %s (logged once; cq_overflows in the stats counts each)",
		 s->id, s->ring.cq.ring_entries, keel__opt_name(&s->rt->opts, "--cq-entries"));
}

/* The CQEs the kernel dropped on this ring: its own count (the tests' drops added). */
static inline uint32_t
cq_drops(const struct keel_shard *s)
{
	return IO_URING_READ_ONCE(*s->ring.cq.koverflow) + s->cq_drops_faked;
}

/* The CQ overflowed: the kernel holds the completions that did not fit (IORING_FEAT_NODROP)
 * and moves them into the CQ at the next io_uring_enter with GETEVENTS, which the caller
 * makes. Multishot operations whose CQE did not fit end (a final CQE without F_MORE, data
 * included) and their owners re-arm them. Completions the kernel could not even hold are
 * counted in koverflow. */
static void
cq_overflowed(struct keel_shard *s)
{
	/* Once a pass: a pass that finds the flag enters the kernel, whose -EBADR for the same
	 * overflow counted it a second time. */
	uint64_t pass = atomic_load_explicit(&s->stats.passes, memory_order_relaxed);

	if (s->cq_ovf_pass != pass) {
		s->cq_ovf_pass = pass;
		STAT_INC(s, cq_overflows);
	}
	atomic_store_explicit(&s->stats.cq_dropped, cq_drops(s), memory_order_relaxed);
	if (__builtin_expect(!s->cq_ovf_logged, 0))
		cq_overflow_log(s);
}

/* Completions the kernel dropped, said as they are first seen, whether io_uring_enter
 * reported -EBADR or the pass found the ring's count grown (an enter that also submitted
 * returns its count instead, and the kernel's flag may have been cleared by then): the
 * operations they ended do not complete here, and the stop gives up on them (stop_drops_lost)
 * with an ERROR that counts them. At most one line per DROPS_SAY_NS per shard: memory short
 * enough to drop one often drops many; cq_dropped in the stats counts each. */
#define DROPS_SAY_NS (10 * NS_PER_S)
static __attribute__((noinline, cold)) void
cq_drops_log(struct keel_shard *s, uint64_t dropped)
{
	uint64_t now = keel__clock_ns();
	char since[64] = "";

	if (dropped == s->cq_dropped_logged ||
	    (s->drops_said_ns && now - s->drops_said_ns < DROPS_SAY_NS))
		return;
	if (s->cq_dropped_logged)
		snprintf(since, sizeof(since), " (%llu since the last such line)",
			 (unsigned long long)(dropped - s->cq_dropped_logged));
	s->drops_said_ns = now;
	s->cq_dropped_logged = dropped;
	keel_log(KEEL_LOG_ERROR, "core",
		 "shard %u: the kernel dropped %llu completions%s: the CQ of %u entries was "
		 "full and the kernel had no memory to hold more; their operations end unseen, "
		 "their callbacks never run, and the stop gives them up after 1 s, leaking what "
		 "they could write: raise %s, and give the process more memory (logged at most "
		 "once per 10 s; cq_dropped in the stats counts them)",
		 s->id, (unsigned long long)dropped, since, s->ring.cq.ring_entries,
		 keel__opt_name(&s->rt->opts, "--cq-entries"));
}

/* The ring's dropped-CQE count grew to @drops: seen, counted in the stats and said. */
static void
cq_drops_note(struct keel_shard *s, uint32_t drops)
{
	s->cq_drops_seen = drops;
	atomic_store_explicit(&s->stats.cq_dropped, drops, memory_order_relaxed);
	cq_drops_log(s, drops);
}

/* The kernel dropped CQEs on this ring (no room in the CQ, no memory to hold them). One may
 * have been the failure of a MSG_RING wake-up (msgring_cb): its sender had cleared the
 * target's `sleeping` flag, so no other sender wakes it, and the target could sleep with
 * mail for ever. Which target is not known: every other shard of the runtime is woken
 * through its eventfd, which costs a woken shard one pass and each of the rest a read of
 * its eventfd, on a path that is rare (memory is short). */
static __attribute__((noinline, cold)) void
cq_drops_grew(struct keel_shard *s, uint32_t drops)
{
	struct keel_runtime *rt = s->rt;

	cq_drops_note(s, drops);
	for (unsigned i = 0; i < rt->count; i++)
		if (&rt->shards[i] != s)
			keel__shard_wake(&rt->shards[i], NULL);
}

/* Enter the kernel only when it has something for us: SQEs to submit, task work pending
 * (IORING_SQ_TASKRUN, which DEFER_TASKRUN only runs inside io_uring_enter), or an
 * overflowed CQ. */
static bool
need_enter(struct keel_shard *s)
{
	unsigned sqf = IO_URING_READ_ONCE(*s->ring.sq.kflags);
	uint32_t drops = cq_drops(s); /* beside the flags in the rings' header */

	if (__builtin_expect(drops != s->cq_drops_seen, 0))
		cq_drops_grew(s, drops);
	if (__builtin_expect(sqf & IORING_SQ_CQ_OVERFLOW, 0)) {
		cq_overflowed(s);
		return true;
	}
	if (io_uring_sq_ready(&s->ring))
		return true;
	if (sqf & IORING_SQ_TASKRUN)
		return true;
	return !s->taskrun_flag && s->inflight > 0 && io_uring_cq_ready(&s->ring) == 0;
}

/* io_uring_enter's errors: -EBADR says the kernel dropped completions. The kernel clears
 * its flag when a wait returns it, but an enter that also submitted returns the count
 * instead and leaves the flag for a later wait: so the error is logged when the count of
 * dropped ones (the ring's overflow counter) has grown, once per growth. */
static void
enter_error(struct keel_shard *s, int r, const char *what)
{
	if (r == -EBADR) {
		cq_overflowed(s);
		cq_drops_log(s, atomic_load_explicit(&s->stats.cq_dropped, memory_order_relaxed));
		return;
	}
	keel_log(KEEL_LOG_ERROR, "core", "shard %u: %s failed: %s%s", s->id, what, strerror(-r),
		 keel__ring_err_hint(r));
}

_Atomic unsigned keel__fault_enter_ebadr;

/* An io_uring_enter's result @r, or -EBADR while a test injects it. */
static inline int
entered(int r)
{
	return keel__fault_take(&keel__fault_enter_ebadr) ? -EBADR : r;
}

static void
enter(struct keel_shard *s)
{
	int r = entered(io_uring_submit_and_get_events(&s->ring));
	STAT_INC(s, enters);
	if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
		enter_error(s, r, "io_uring_enter");
}

/* Before a pass's SQEs go to the kernel: when arrivals already wait as task work
 * (IORING_SQ_TASKRUN, on a ring with the flag), run them now (GETEVENTS, nothing submitted)
 * and let the caller pass again, so their replies join this pass's in one submission. The
 * replies this holds back wait one pass: the caller merges at most once between
 * submissions. (Since Linux 6.13 one GETEVENTS runs a bounded number of task-work items:
 * the rest wait for the next enter.) Returns true when it ran them (the caller passes
 * again). */
static bool
merge_arrivals(struct keel_shard *s)
{
	int r;

	if (!s->taskrun_flag || !io_uring_sq_ready(&s->ring) ||
	    !(IO_URING_READ_ONCE(*s->ring.sq.kflags) & IORING_SQ_TASKRUN))
		return false;
	r = entered(io_uring_get_events(&s->ring));
	STAT_INC(s, enters);
	STAT_INC(s, merges);
	if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
		enter_error(s, r, "io_uring_enter (GETEVENTS)");
	return true;
}

/* The end of a loop pass at @t1, for the stall check: the start of the next pass, or the
 * clock read before a sleep. One clock read thus serves two purposes, and a pass that does
 * not sleep costs one read. */
static void
pass_end(struct keel_shard *s, uint64_t t0, uint64_t t1)
{
	uint64_t d = t1 - t0;

	if (d > atomic_load_explicit(&s->stats.max_pass_ns, memory_order_relaxed))
		atomic_store_explicit(&s->stats.max_pass_ns, d, memory_order_relaxed);
	if (__builtin_expect(d <= s->stall_ns, 1))
		return;
	STAT_INC(s, stalls);
	/* Rate-limited: one line a second per shard, with the count of those not logged. */
	if (s->last_stall_log_ns && t1 - s->last_stall_log_ns < NS_PER_S) {
		s->stalls_unlogged++;
		return;
	}
	keel_log(KEEL_LOG_WARN, "core",
		 "stall: loop pass took %.1f ms (> %s %u); a callback blocked shard %u "
		 "(%llu more stalls not logged)",
		 (double)d / NS_PER_MS, keel__opt_name(&s->rt->opts, "--stall-ms"),
		 s->rt->opts.stall_ms, s->id, (unsigned long long)s->stalls_unlogged);
	s->last_stall_log_ns = t1;
	s->stalls_unlogged = 0;
}

/* The argument of an IORING_ENTER_EXT_ARG wait (liburing 2.3 names min_wait_usec "pad";
 * keel leaves it 0). */
struct getevents_arg {
	uint64_t sigmask;
	uint32_t sigmask_sz;
	uint32_t min_wait_usec; /* Linux 6.12 (IORING_FEAT_MIN_TIMEOUT) */
	uint64_t ts;
};

/* Submit what the pass queued and sleep until s->gather_nr completions are ready or @ts (the
 * window) has passed: one io_uring_enter, with the ring's registered fd when there is one.
 * The SQ tail is published as liburing publishes it. */
static int
enter_gather(struct keel_shard *s, struct __kernel_timespec *ts)
{
	struct io_uring_sq *sq = &s->ring.sq;
	struct getevents_arg arg = {
		.sigmask_sz = 8,
		.ts = (uint64_t)(uintptr_t)ts,
	};
	unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
	unsigned tail = sq->sqe_tail;
	int fd = s->ring.ring_fd;

	if (sq->sqe_head != tail) {
		sq->sqe_head = tail;
		io_uring_smp_store_release(sq->ktail, tail);
	}
	if (s->ring_fd_registered) {
		fd = s->ring.enter_ring_fd;
		flags |= IORING_ENTER_REGISTERED_RING;
	}
	s->gather_sub = tail - IO_URING_READ_ONCE(*sq->khead);
	s->gather_check = true;
	return io_uring_enter2((unsigned)fd, s->gather_sub, s->gather_nr, flags, (sigset_t *)&arg,
			       sizeof(arg));
}

/* A shard that found itself quiescent while stopping runs no timer until something makes
 * it active again (a message, a foreign request: both clear the flag). Termination
 * detection (wave) takes a quiescent shard to become active only by a message; a timer
 * callback that sent one (a buffer put back to its home shard) after the others had
 * ended would leave it unrun and this shard waiting for it for ever. Its timers bound
 * waits for work it no longer has. */
static bool
timers_held(struct keel_shard *s)
{
	return s->phase != PHASE_RUN && atomic_load_explicit(&s->quiescent, memory_order_relaxed);
}

/* Sleep in the kernel until a completion, a wake-up or the next timer. The same
 * io_uring_enter submits what the pass queued (SUBMIT + GETEVENTS, the timeout through
 * EXT_ARG): a woken shard that answers and goes back to sleep enters the kernel once.
 * GETEVENTS also runs the task work DEFER_TASKRUN holds back, so completions of what was
 * just submitted end the wait at once. Returns false without entering when there is work
 * for another pass (a timer already due among it): then the pass that began at @t0 stays
 * open and the caller enters if it must. On true the pass was closed (pass_end) before the
 * sleep. */
static bool
sleep_in_kernel(struct keel_shard *s, uint64_t t0, struct keel__coalesce *co)
{
	struct keel_runtime *rt = s->rt;
	struct __kernel_timespec ts, *tsp = NULL;
	struct io_uring_cqe *cqe;
	int64_t next;
	uint64_t now, d = UINT64_MAX;
	int r;

	if (__builtin_expect(keel__hook_before_sleep != NULL, 0))
		keel__hook_before_sleep();
	/* Announce the sleep, then look again: a sender that published to us (and, past
	 * keel__mail_scan_max shards, set our mail bit) before seeing `sleeping` is seen here;
	 * one that publishes after will wake us. */
	atomic_store(&s->sleeping, 1);
	/* Completions already in the CQ or held in the kernel's overflow list are work: the
	 * wait would return at once (the kernel flushes the overflow list before it sleeps),
	 * but say so here rather than rely on it. Deferred callbacks run on the next pass. */
	if (keel__mail_pending(s) || atomic_load(&s->xpending) || io_uring_cq_ready(&s->ring) ||
	    s->defer_next.n || s->later_head ||
	    (IO_URING_READ_ONCE(*s->ring.sq.kflags) & IORING_SQ_CQ_OVERFLOW) ||
	    (atomic_load(&rt->stopping) && s->phase == PHASE_RUN)) {
		atomic_store(&s->sleeping, 0);
		return false;
	}
	now = keel__clock_ns();
	next = timers_held(s) ? -1 : keel__timers_next_ns(s);
	if (next >= 0) {
		/* A timer came due while the pass ran: the next pass runs it, where a wait of
		 * 0 ns would cost an io_uring_enter counted as a sleep. */
		if ((uint64_t)next <= now) {
			atomic_store(&s->sleeping, 0);
			return false;
		}
		d = (uint64_t)next - now;
	}
	/* What this shard sends after the sleep is sporadic: its receivers have read their
	 * tails' lines since (msg.c, mark_dirty). */
	s->flush_seq++;
	pass_end(s, t0, now);
	/* Bounded: work waits for room or a retry (an internal read that found no SQE would
	 * otherwise leave a sleep no foreign wake-up or signal can end), or the stop; or the
	 * eventfd read was given up after repeated failures (foreign.c, xefd_cb). */
	if ((s->ovf_pending || s->room_waiters || s->internal_retry || s->xefd_lost ||
	     s->phase != PHASE_RUN) &&
	    d > BOUNDED_SLEEP_NS)
		d = BOUNDED_SLEEP_NS;
	if (d != UINT64_MAX) {
		ts.tv_sec = (long long)(d / NS_PER_S);
		ts.tv_nsec = (long long)(d % NS_PER_S);
		tsp = &ts;
	}
	STAT_INC(s, sleeps);
	STAT_INC(s, enters);
	keel__coalesce_slept(co);
	if (keel__coalesce_on(co) && s->phase == PHASE_RUN && d > co->window_ns &&
	    !s->gather_skip) {
		/* Gather: the kernel wakes us early only with s->gather_nr completions, else at
		 * the window, with what came. A sleep that then brings no more completions than
		 * it submitted (the pass's own sends: nothing arrived) is followed by a plain one
		 * (the loop sets gather_skip), which needs no timer of its own: the window's
		 * timer is armed once and expires, none is re-armed or cancelled when the
		 * arrival comes, and an idle shard sleeps until woken. */
		ts.tv_sec = 0;
		ts.tv_nsec = (long long)co->window_ns;
		STAT_INC(s, coalesced);
		r = enter_gather(s, &ts);
	} else {
		r = io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1, tsp, NULL);
	}
	s->gather_skip = false;
	r = entered(r);
	if (r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY)
		enter_error(s, r, "io_uring wait");
	atomic_store(&s->sleeping, 0);
	return true;
}

static void
submit_cancel_all(struct keel_shard *s)
{
	struct io_uring_sqe *sqe;

	if (s->cancel_op.armed)
		return;
	sqe = s->phase == PHASE_DONE && keel__fault_take(&keel__fault_cancel_nosqe)
		      ? NULL
		      : keel__sqe_internal(s);
	if (!sqe) {
		/* The ring's submit failed (logged): the next pass tries again, before the disk
		 * requests a stop hook made are issued (they must go in after the cancel). */
		s->cancel_retry = true;
		s->internal_retry = true;
		return;
	}
	s->cancel_retry = false;
	io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
	keel__internal_arm(s, &s->cancel_op, sqe);
	s->cancel_mark = s->binds;
}

/* After the stop hooks (and the holds they took): everything in flight is cancelled, and
 * the hooks' disk requests go in after the cancel. */
static void
stop_cancel(struct keel_shard *s)
{
	if (s->inflight > s->internal_inflight)
		submit_cancel_all(s);
	/* A hook's disk requests are its last writes and syncs: they go into the ring after
	 * the cancel, and stop_progress cancels nothing more while they run (files.ndrain). */
	s->drain_ns = keel__clock_ns();
	keel__file_stop_hooks(s, false);
}

static void
begin_stop(struct keel_shard *s)
{
	s->stop_begun = true;
	keel__file_stop_hooks(s, true);
	/* Hooks run while the shard still accepts sends, so they can tell other shards; one
	 * a hook registers runs after it (from here on keel_shard_on_stop defers them). */
	while (s->stop_hooks.n) {
		struct defer_vec hooks = s->stop_hooks;

		memset(&s->stop_hooks, 0, sizeof(s->stop_hooks));
		for (size_t i = 0; i < hooks.n; i++)
			hooks.v[i].fn(hooks.v[i].arg);
		keel__defer_fini(&hooks);
	}
	s->phase = PHASE_STOP;
	s->stop_ns = keel__clock_ns(); /* after the hooks: the drain's time is its own */
	keel__timers_stop_all(s);
	/* A hook took a hold (the network's flush): the cancel waits for it (hold_check). */
	if (s->holds) {
		s->stop_held = true;
		/* The hooks have run: only their requests (queued till the cancel) and those
		 * requests' chains drain, not a request a callback makes while held. */
		keel__file_stop_hooks(s, false);
		return;
	}
	stop_cancel(s);
}

/* The stop's holds released, or past opts.stop_flush_ms: each one still taken is released
 * here and told so (its expire ends what it held), then the stop goes on (stop_cancel). */
static void
hold_check(struct keel_shard *s)
{
	uint64_t waited = s->now_ns > s->stop_ns ? s->now_ns - s->stop_ns : 0;

	if (s->holds && waited < (uint64_t)s->rt->opts.stop_flush_ms * NS_PER_MS)
		return;
	while (s->holds) {
		struct keel__stop_hold *h = s->holds;

		s->holds = h->next;
		h->next = NULL;
		h->held = false;
		h->expire(h);
	}
	s->stop_held = false;
	stop_cancel(s);
}

int
keel__stop_hold(struct keel__stop_hold *h, void (*expire)(struct keel__stop_hold *h),
		const char *what)
{
	struct keel_shard *s = cur_shard(__func__);

	/* Only from the stop hooks: the cancel they precede is the one it postpones. */
	if (!s->rt->opts.stop_flush_ms || !s->stop_begun || s->phase != PHASE_RUN || !expire)
		return -EINVAL;
	if (h->held)
		return 0;
	h->expire = expire;
	h->what = what;
	h->held = true;
	h->next = s->holds;
	s->holds = h;
	return 0;
}

void
keel__stop_release(struct keel__stop_hold *h)
{
	struct keel_shard *s = cur_shard(__func__);
	struct keel__stop_hold **p = &s->holds;

	if (!h->held)
		return;
	while (*p != h)
		p = &(*p)->next;
	*p = h->next;
	h->next = NULL;
	h->held = false;
}

unsigned
keel__stop_flush_ms(void)
{
	return cur_shard(__func__)->rt->opts.stop_flush_ms;
}

const char *
keel__stop_flush_opt(void)
{
	return keel__opt_name(&cur_shard(__func__)->rt->opts, "--stop-flush-ms");
}

/* Termination of the whole runtime: every shard quiescent (no user operation in flight, no
 * mail waiting to go out, no deferred work) and every message sent has been run. Counters
 * are read twice; both waves must agree, so a message in flight between reads is seen. */
static bool
wave(struct keel_runtime *rt, uint64_t *sent, uint64_t *recv)
{
	*sent = *recv = 0;
	for (unsigned i = 0; i < rt->count; i++) {
		if (!atomic_load(&rt->shards[i].quiescent))
			return false;
		*recv += atomic_load_explicit(&rt->shards[i].stats.msgs_recv, memory_order_acquire);
	}
	for (unsigned i = 0; i < rt->count; i++)
		*sent += atomic_load_explicit(&rt->shards[i].stats.msgs_sent, memory_order_acquire);
	return true;
}

/* The disk requests of the stop hooks (file.c) still running: past --stop-drain-ms they
 * are cancelled, and the wait is logged every 10 s, also after that (the kernel cannot
 * cancel a request that runs on an io-wq worker blocked in a hung device). */
#define DRAIN_SAY_NS (10 * NS_PER_S)
static void
drain_check(struct keel_shard *s)
{
	unsigned ms = s->rt->opts.stop_drain_ms;
	uint64_t waited = s->now_ns > s->drain_ns ? s->now_ns - s->drain_ns : 0;

	if (ms && !s->files.drain_over && waited >= (uint64_t)ms * NS_PER_MS) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "shard %u: %u disk requests of the stop hooks still running after "
			 "%s %u: cancelling them (their callbacks get -ECANCELED "
			 "where the kernel can cancel them)",
			 s->id, s->files.ndrain, keel__opt_name(&s->rt->opts, "--stop-drain-ms"),
			 ms);
		keel__file_drain_expire(s);
		return;
	}
	if (waited < s->files.drain_said_ns + DRAIN_SAY_NS)
		return;
	s->files.drain_said_ns = waited;
	if (s->files.drain_over)
		keel_log(KEEL_LOG_WARN, "core",
			 "shard %u: the stop has waited %llu s for %u disk requests of the stop "
			 "hooks, cancelled at %s %u but not ended: a request running "
			 "on a worker blocked in a hung device or network file system cannot be "
			 "cancelled",
			 s->id, (unsigned long long)(waited / NS_PER_S), s->files.ndrain,
			 keel__opt_name(&s->rt->opts, "--stop-drain-ms"), ms);
	else
		keel_log(KEEL_LOG_WARN, "core",
			 "shard %u: the stop has waited %llu s for %u disk requests of the stop "
			 "hooks (a write or sync that does not end: a hung device or network file "
			 "system?)%s",
			 s->id, (unsigned long long)(waited / NS_PER_S), s->files.ndrain,
			 ms ? "" : "; --stop-drain-ms N cancels them after N ms");
}

/* A stop that never ends slept in bounded steps for ever without a word, and the join with
 * it (a callback that defers itself again, an operation no cancel ends, mail that never
 * leaves an overflow list). Every keel__stop_say_ns into the stop each shard says what holds
 * it (the disk requests of the stop hooks alone: drain_check says so), and a quiescent shard
 * which shards it waits for. */
uint64_t keel__stop_say_ns = 10 * NS_PER_S;

static bool
stop_say_due(struct keel_shard *s, uint64_t *waited)
{
	*waited = s->now_ns > s->stop_ns ? s->now_ns - s->stop_ns : 0;
	if (!keel__stop_say_ns || *waited < s->stop_said_ns + keel__stop_say_ns)
		return false;
	s->stop_said_ns = *waited;
	return true;
}

#define SAY(...)                                                                                \
	do {                                                                                    \
		if (n < sizeof(held))                                                           \
			n += (size_t)snprintf(held + n, sizeof(held) - n, "%s", n ? ", " : ""); \
		if (n < sizeof(held))                                                           \
			n += (size_t)snprintf(held + n, sizeof(held) - n, __VA_ARGS__);         \
	} while (0)

static void
stop_say_held(struct keel_shard *s)
{
	uint64_t user = s->inflight > s->internal_inflight + s->lost
				? s->inflight - s->internal_inflight - s->lost
				: 0,
		 waited;
	char held[512];
	size_t n = 0;

	if (!stop_say_due(s, &waited))
		return;
	if (s->stop_held)
		for (const struct keel__stop_hold *h = s->holds; h; h = h->next)
			SAY("a stop hold: %s (until %s %u from the stop's start)", h->what,
			    keel__opt_name(&s->rt->opts, "--stop-flush-ms"),
			    s->rt->opts.stop_flush_ms);
	if (user > s->files.ndrain)
		SAY("%llu user operations in flight (%s)",
		    (unsigned long long)(user - s->files.ndrain),
		    s->stop_held ? "not cancelled while the stop is held" : "no cancel ended them");
	if (s->defer_next.n || s->later_head)
		SAY("%zu deferred callbacks pending (one that defers itself again never ends)",
		    s->defer_next.n + (s->later_head != NULL));
	if (s->ovf_pending)
		SAY("%llu messages in overflow lists (their receivers' queues stay full)",
		    (unsigned long long)s->ovf_pending);
	if (s->ndirty)
		SAY("mail to %u shards not yet sent", s->ndirty);
	if (atomic_load(&s->xpending))
		SAY("foreign requests pending");
	if (s->files.head)
		SAY("disk requests waiting for a slot or an SQE");
	if (s->files.cwait)
		SAY("disk requests waiting to be cancelled after those in the ring");
	if (s->cancel_retry)
		SAY("the stop's cancel waiting for an SQE (retried every pass)");
	if (!n) /* the stop hooks' disk requests alone: drain_check's line */
		return;
	keel_log(KEEL_LOG_WARN, "core", "shard %u: the stop has waited %.1f s, held by %s", s->id,
		 (double)waited / NS_PER_S, held);
}

static void
stop_say_waiting(struct keel_shard *s)
{
	struct keel_runtime *rt = s->rt;
	uint64_t waited, sent, recv;
	char held[512];
	size_t n = 0;

	if (!stop_say_due(s, &waited))
		return;
	for (unsigned i = 0; i < rt->count; i++)
		if (!atomic_load(&rt->shards[i].quiescent))
			SAY("%u", i);
	if (n)
		keel_log(
			KEEL_LOG_WARN, "core",
			"shard %u: quiescent, the stop has waited %.1f s for shard%s %s (each says "
			"what holds it)",
			s->id, (double)waited / NS_PER_S, strchr(held, ',') ? "s" : "", held);
	else if (wave(rt, &sent, &recv))
		keel_log(
			KEEL_LOG_WARN, "core",
			"shard %u: quiescent, the stop has waited %.1f s for messages sent and not "
			"yet run (%llu sent, %llu run)",
			s->id, (double)waited / NS_PER_S, (unsigned long long)sent,
			(unsigned long long)recv);
}
#undef SAY

/* How long a stop, and the loop's final drain, wait for operations that may be the ones
 * whose completions the kernel dropped, once nothing else completes. */
#define DROP_WAIT_NS NS_PER_S

/* A dropped CQE (cq_drops) belonged to an operation that the kernel finished and that will
 * never complete here: its count in s->inflight never goes, and the stop waited for it for
 * ever (the join with it). Which operations they were is not known. Once the kernel has
 * dropped CQEs, the user operations still in flight are no more than the drops, a cancel
 * made after the last of them was bound has ended, and none has completed for DROP_WAIT_NS,
 * they are taken as lost: the shard counts itself quiescent without them. Without drops
 * nothing changes: an operation no cancel ends is waited for, and said (stop_say_held).
 *
 * The stop hooks' disk requests are not cancelled while they drain (file.c): one whose CQE
 * was dropped kept the drain, and so the stop, going for ever, no cancel made after it. So
 * once nothing has completed nor been bound for DROP_WAIT_NS with them in flight, their
 * drain ends as --stop-drain-ms ends it (they are cancelled), and the bound above follows. */
static void
stop_drops_lost(struct keel_shard *s)
{
	uint32_t drops = cq_drops(s);
	uint64_t user;

	/* Held, nothing is cancelled yet, and the hold's deadline bounds the wait. */
	if (!drops || s->stop_held || s->inflight <= s->internal_inflight + s->lost)
		return;
	user = s->inflight - s->internal_inflight - s->lost;
	if (user > drops - s->lost || s->cancel_op.armed || s->cancel_retry ||
	    s->inflight != s->drop_inflight || s->binds != s->drop_binds) {
		s->drop_inflight = s->inflight;
		s->drop_binds = s->binds;
		s->drop_since_ns = s->now_ns;
		return;
	}
	if (s->now_ns - s->drop_since_ns < DROP_WAIT_NS)
		return;
	if (s->binds != s->cancel_mark) {
		/* Bound after the stop's cancel, and none made since (stop_progress makes one
		 * for any other): the stop hooks' requests, draining. */
		if (s->files.ndrain && !s->files.drain_over) {
			keel_log(KEEL_LOG_WARN, "core",
				 "shard %u: the kernel dropped %u completions and the %u disk "
				 "requests of the stop hooks have not completed for %.1f s: "
				 "cancelling them (those whose completions were dropped end "
				 "without their callbacks)",
				 s->id, drops, s->files.ndrain, (double)DROP_WAIT_NS / NS_PER_S);
			keel__file_drain_expire(s);
			submit_cancel_all(s);
		}
		s->drop_since_ns = s->now_ns;
		return;
	}
	s->lost += user;
	keel_log(KEEL_LOG_WARN, "core",
		 "shard %u: the stop takes %llu operations as lost: the kernel dropped %u "
		 "completions and nothing has completed for %.1f s",
		 s->id, (unsigned long long)user, drops, (double)DROP_WAIT_NS / NS_PER_S);
}

static bool
stop_progress(struct keel_shard *s)
{
	uint64_t s1, r1, s2, r2;
	bool q;

	if (s->stop_held)
		hold_check(s);
	/* A disk request waiting in the FIFO for an SQE (file.c, wait_for_sqe) is work too:
	 * nothing in the ring may be left to bring it in. A held stop is work: what holds it
	 * runs yet. */
	q = !s->stop_held && s->inflight <= s->internal_inflight + s->lost && !s->ovf_pending &&
	    !s->ndirty && !s->defer_next.n && !s->later_head && !atomic_load(&s->xpending) &&
	    !s->files.head && !s->files.cwait && !s->cancel_retry;

	/* Foreign requests close under their lock as the shard first finds itself quiescent:
	 * a keel_runtime_submit that passed its stopping check just before the stop, and
	 * holds the lock still, has then either queued its request (xpending: not quiescent,
	 * it runs) or will find the shard closed (-ESHUTDOWN). Without this it could queue
	 * after another shard's wave counted this one quiescent and had ended, and the
	 * request would run (a message it sends never delivered: the join hangs) or be
	 * cancelled. */
	if (q && !s->xclosed) {
		pthread_mutex_lock(&s->xlock);
		q = !atomic_load(&s->xpending);
		s->xclosed = q;
		pthread_mutex_unlock(&s->xlock);
	}
	atomic_store(&s->quiescent, q);
	if (!q) {
		/* Operations started after the last cancel (by stop hooks or callbacks). One
		 * that no cancel can end (a disk read running in io-wq) is waited for in
		 * bounded sleeps, not cancelled again every pass. */
		if (s->files.ndrain && !s->stop_held)
			drain_check(s);
		stop_say_held(s);
		if (!s->stop_held && s->inflight > s->internal_inflight && !s->cancel_op.armed &&
		    s->binds != s->cancel_mark && (!s->files.ndrain || s->files.drain_over))
			submit_cancel_all(s);
		stop_drops_lost(s);
		return false;
	}
	if (wave(s->rt, &s1, &r1) && wave(s->rt, &s2, &r2) && s1 == r1 && s2 == r2 && s1 == s2)
		return true;
	stop_say_waiting(s);
	return false;
}

/* The operations that never completed because the kernel dropped their CQEs: said once, as
 * the shard ends without them. */
static __attribute__((noinline, cold)) void
drops_unmatched_log(struct keel_shard *s)
{
	char hooks[96] = "";

	/* A stop hook's request that never completed never ran its callback: the host's last
	 * write or sync, whose result it never learnt. */
	if (s->files.ndrain)
		snprintf(hooks, sizeof(hooks),
			 " (%u of them a stop hook's disk request, its callback never run)",
			 s->files.ndrain);
	keel_log(KEEL_LOG_ERROR, "core",
		 "shard %u: %llu operations never completed%s: the kernel dropped %u "
		 "completions, theirs among them (the CQ of %u entries was full and memory was "
		 "short to hold more), and keel cannot tell which; the shard ends without them "
		 "and leaves its buffers allocated, not freed under the kernel: raise %s, and "
		 "give the process more memory",
		 s->id, (unsigned long long)s->inflight, hooks, cq_drops(s),
		 s->ring.cq.ring_entries, keel__opt_name(&s->rt->opts, "--cq-entries"));
}

/* Drops first seen in the loop's last pass (it breaks before need_enter) or in its final
 * drain: counted and said, as in any pass. The other shards are not woken (cq_drops_grew):
 * every one was quiescent, so stopping, and a stopping shard's sleeps are bounded
 * (BOUNDED_SLEEP_NS), and every message sent had run, so none waits for a wake-up. */
static void
drops_settle(struct keel_shard *s)
{
	uint32_t drops = cq_drops(s);

	if (drops != s->cq_drops_seen)
		cq_drops_note(s, drops);
}

/* The runtime is quiescent: cancel keel's own operations and reap until none is left, so no
 * CQE stays unreaped. Once the kernel has dropped CQEs, an operation whose CQE was dropped
 * never completes: then the wait is bounded (DROP_WAIT_NS once nothing completes, or as soon
 * as only the operations the stop took as lost are left), cancels are made once per
 * 10 ms rather than once per completion, and the shard ends with the rest counted in
 * ops_unmatched. Without drops the drain waits as long as it takes. */
_Atomic unsigned keel__fault_final_cqe_drop;

static void
final_drain(struct keel_shard *s)
{
	uint64_t since = keel__clock_ns(), seen = s->inflight, next_cancel = 0;

	keel__file_settle(s); /* a close keel__foreign_close's dones made */
	while (s->inflight) {
		struct __kernel_timespec ts = { .tv_sec = 0, .tv_nsec = BOUNDED_SLEEP_NS };
		struct io_uring_cqe *cqe;
		bool drops = cq_drops(s) != 0;
		uint64_t now = drops ? keel__clock_ns() : 0;

		if (drops) {
			uint64_t left = s->inflight - s->cancel_op.armed; /* not the cancel's own */

			if (left != seen) {
				seen = left;
				since = now;
			}
			if ((s->inflight <= s->lost && !s->internal_inflight) ||
			    now - since >= DROP_WAIT_NS)
				break;
		}
		if (!s->cancel_op.armed && (!drops || now >= next_cancel)) {
			submit_cancel_all(s);
			next_cancel = now + 10 * NS_PER_MS;
		}
		/* A cancel that found no SQE (the submit failed, logged) ends none of the reads
		 * left (the eventfd's, the signalfd's), which may never complete on their
		 * own: the wait is bounded and the cancel tried again, as in the loop. So is
		 * the wait once CQEs were dropped: the cancel's own may have been one. */
		io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1,
						 s->cancel_op.armed && !drops ? NULL : &ts, NULL);
		STAT_INC(s, enters);
		if (__builtin_expect(
			    atomic_load_explicit(&keel__fault_final_cqe_drop, memory_order_relaxed),
			    0) &&
		    io_uring_peek_cqe(&s->ring, &cqe) == 0 && io_uring_cqe_get_data(cqe) &&
		    keel__fault_take(&keel__fault_final_cqe_drop))
			atomic_store(&keel__fault_cqe_drop_op, io_uring_cqe_get_data(cqe));
		reap(s);
		keel__file_settle(s); /* ... or the callbacks just reaped */
	}
	drops_settle(s);
	s->ops_unmatched = s->inflight;
	if (s->inflight)
		drops_unmatched_log(s);
}

void
keel__shard_loop(struct keel_shard *s)
{
	struct keel_runtime *rt = s->rt;
	uint64_t idle_since = 0, t0 = 0, slept_at = 0;
	struct keel__idlepoll ip;
	struct keel__coalesce co;
	bool open = false;   /* the pass that began at t0 is not yet stall-checked */
	bool polled = false; /* the pass that began at t0 found nothing and polled on */
	bool merged = false; /* the last pass held its SQEs back (merge_arrivals) */

	keel__idlepoll_init(&ip, (uint64_t)rt->opts.idle_poll_us * 1000,
			    rt->opts.idle_poll_adaptive);
	keel__coalesce_init(&co, s->min_wait ? (uint64_t)rt->opts.wait_coalesce_us * 1000 : 0,
			    rt->opts.wait_coalesce_fixed, keel__clock_ns());

	for (;;) {
		uint64_t now = keel__clock_ns();
		uint64_t idle_poll_ns;
		unsigned work, arrivals;
		bool must_enter, may_merge = !merged;

		/* The previous pass did not sleep: it ended where this one begins. */
		if (open)
			pass_end(s, t0, now);
		if (polled)
			STAT_ADD(s, idle_poll_ns, now - t0);
		polled = false;
		merged = false;
		if (slept_at) { /* adaptive: a sleep taken at once ended */
			keel__idlepoll_woke(&ip, now - slept_at);
			slept_at = 0;
		}
		t0 = now;
		open = true;
		s->now_ns = t0;
		STAT_INC(s, passes);
		work = reap(s);
		if (s->gather_check) { /* the gathering sleep before this pass */
			s->gather_check = false;
			s->gather_skip = work <= s->gather_sub;
		}
		work += keel__mail_drain(s);
		work += keel__foreign_drain(s);
		arrivals = work - s->reaped_wakes;
		if (!timers_held(s))
			work += keel__timers_run(s);
		work += keel__defer_run(s);
		if (s->phase == PHASE_RUN && atomic_load(&rt->stopping)) {
			begin_stop(s);
			work++;
		}
		/* Before the flush: the retry may complete disk requests (file.c's pump), whose
		 * callbacks may send mail; after it, that mail waited in the outbox while the
		 * shard slept. */
		if (__builtin_expect(s->internal_retry, 0))
			keel__internal_retry(s);
		keel__mail_flush(s);
		if (co.window_ns && keel__coalesce_pass(&co, t0, arrivals)) {
			atomic_store_explicit(&s->stats.coalesce_trials, co.trials,
					      memory_order_relaxed);
			atomic_store_explicit(&s->stats.coalesce_won, co.trials_won,
					      memory_order_relaxed);
		}
		if (s->phase == PHASE_STOP && stop_progress(s)) {
			/* The loop's last pass is checked like any other: a callback that
			 * blocked after the stop had begun is a stall too. */
			pass_end(s, t0, keel__clock_ns());
			break;
		}
		must_enter = need_enter(s);
		/* Only SQEs this pass queued are the loop's own: need_enter is also true for
		 * arrivals (IORING_SQ_TASKRUN) and for operations in flight. */
		idle_poll_ns = keel__idlepoll_pass(&ip, work, idle_since,
						   ip.adaptive && io_uring_sq_ready(&s->ring));
		if (work) {
			if (idle_since) /* an idle poll ended by work, within its window */
				STAT_INC(s, polls_found);
			idle_since = 0;
			/* Arrivals came while this pass ran: their replies go with this pass's. */
			if (must_enter && may_merge && merge_arrivals(s)) {
				merged = true;
				continue;
			}
			/* After work, sleep at once if nothing is left for another pass (checked in
			 * sleep_in_kernel): the sleep submits what this pass queued, so a wake-up
			 * costs one io_uring_enter. With idle polling on, while draining, or while
			 * mail waits in an overflow list, pass again instead. */
			if (idle_poll_ns || s->phase != PHASE_RUN || s->ovf_pending) {
				if (must_enter)
					enter(s);
				continue;
			}
		} else if (idle_poll_ns && (!idle_since || t0 - idle_since < idle_poll_ns)) {
			if (!idle_since)
				idle_since = t0;
			if (must_enter)
				enter(s);
			polled = true;
			continue;
		}
		if (sleep_in_kernel(s, t0, &co)) {
			open = false;
			if (idle_since) { /* polled the whole window for nothing */
				STAT_INC(s, polls_slept);
				keel__idlepoll_polled(&ip, false);
			} else if (ip.adaptive) {
				slept_at = t0;
			}
		} else {
			/* Work came after the window ran out, before the sleep: the poll found
			 * nothing in its window, as one that slept. */
			if (idle_since) {
				STAT_INC(s, polls_slept);
				keel__idlepoll_polled(&ip, false);
			}
			if (must_enter)
				enter(s);
		}
		idle_since = 0;
	}

	/* The runtime is quiescent: cancel keel's own operations and reap until none is left,
	 * so no CQE stays unreaped. */
	s->phase = PHASE_DONE;
	keel__foreign_close(s);
	final_drain(s);
	reap(s); /* uncounted CQEs (MSG_RING wake-ups) that arrived with the last ones */
	drops_settle(s);
}

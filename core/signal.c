// SPDX-License-Identifier: MIT
/* Signals: SIGINT/SIGTERM. Every shard polls a signalfd of its own through its ring and,
 * when it is readable, reads it itself, without blocking: a signal sent to the process is
 * taken by a shard that runs (one whose callback blocks reads nothing), one aimed at a
 * shard's thread by that shard. Not a read through the ring: before Linux 6.10 such a read
 * of a blocking signalfd runs in an io-wq worker, which would take a signal for a shard
 * whose callback blocks and leave it unreaped there. The first signal stops the runtime
 * (every runtime of the process that reads them), the second exits at once, whichever
 * shards take them. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static pthread_mutex_t sig_lock = PTHREAD_MUTEX_INITIALIZER;
static struct keel_runtime *sig_rts; /* under sig_lock */
static unsigned sig_seen;            /* under sig_lock: since the list was last empty */

void
keel__signal_list(struct keel_runtime *rt)
{
	pthread_mutex_lock(&sig_lock);
	if (!sig_rts)
		sig_seen = 0;
	else if (sig_seen) /* a signal stopped the others: this one stops too, not later */
		keel_runtime_stop(rt, 0);
	rt->sig_next = sig_rts;
	sig_rts = rt;
	rt->sig_listed = true;
	pthread_mutex_unlock(&sig_lock);
}

/* Before join waits for the stops in progress: none can begin from the list after this. */
void
keel__signal_unlist(struct keel_runtime *rt)
{
	struct keel_runtime **p = &sig_rts;

	pthread_mutex_lock(&sig_lock);
	while (rt->sig_listed && *p != rt) /* listed: found before the end */
		p = &(*p)->sig_next;
	if (rt->sig_listed) {
		*p = rt->sig_next;
		rt->sig_listed = false;
	}
	pthread_mutex_unlock(&sig_lock);
}

void (*_Atomic keel__before_fast_exit)(void);

/* A SIGINT/SIGTERM taken: the count of them since the list was last empty (the first stops
 * every listed runtime). */
static unsigned
signal_taken(void)
{
	unsigned n;

	pthread_mutex_lock(&sig_lock);
	n = ++sig_seen;
	if (n == 1) /* keel_runtime_stop takes no lock: atomics and eventfd writes */
		for (struct keel_runtime *rt = sig_rts; rt; rt = rt->sig_next)
			keel_runtime_stop(rt, 0);
	pthread_mutex_unlock(&sig_lock);
	return n;
}

void
keel__signal_got(int sig, bool late)
{
	const char *name = sigabbrev_np(sig) ? sigabbrev_np(sig) : "signal";

	if (signal_taken() == 1) {
		if (late)
			keel_log(KEEL_LOG_INFO, "core", "%s received as the runtime stopped", name);
		else
			keel_log(KEEL_LOG_INFO, "core",
				 "%s received: stopping all shards (send it again to exit at once, "
				 "without the rest of the stop)",
				 name);
		return;
	}
	keel_log(KEEL_LOG_WARN, "core",
		 "second signal: exiting now, without the rest of the stop (what the shards "
		 "had still to write or send is lost)");
	if (keel__before_fast_exit)
		keel__before_fast_exit();
	_exit(128 + sig);
}

static void
sig_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct internal_op *iop = keel__internal_done(op);
	struct keel_shard *s = iop->shard;
	const char *what = "poll";

	if (res > 0) {
		ssize_t n;

		/* -EAGAIN: another shard took it first. */
		while ((n = read(s->sigfd, &s->sigbuf, sizeof(s->sigbuf))) ==
		       (ssize_t)sizeof(s->sigbuf))
			keel__signal_got((int)s->sigbuf.ssi_signo, false);
		res = n < 0 && errno != EAGAIN && errno != EINTR ? -errno : 0;
		what = "read";
	}
	if (res < 0 && res != -ECANCELED && res != -EINTR) {
		keel_log(
			KEEL_LOG_ERROR, "core",
			"shard %u: signalfd %s failed: %s; this shard no longer reads SIGINT/SIGTERM "
			"(the others do; with none left, stop the process with SIGKILL)",
			s->id, what, strerror(-res));
		return;
	}
	if (s->phase != PHASE_DONE)
		keel__internal_read(s, iop, s->sigfd, NULL, 0);
}

void
keel__signal_arm(struct keel_shard *s)
{
	s->sig_op.op.fn = sig_cb;
	s->sig_op.shard = s;
	s->sig_op.poll = true;
	keel__internal_read(s, &s->sig_op, s->sigfd, NULL, 0);
}

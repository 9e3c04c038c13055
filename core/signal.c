// SPDX-License-Identifier: MIT
/* Signals: SIGINT/SIGTERM read through every shard's ring (a signalfd each; a signal sent to
 * the process is read by one of them, one aimed at a shard's thread by that shard); the
 * first stops the runtime (every runtime of the process that reads them), the second exits
 * at once, whichever shards read them. */
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

unsigned
keel__signal_taken(void)
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

static void
sig_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct internal_op *iop = keel__internal_done(op);
	struct keel_shard *s = iop->shard;

	if (res == (int)sizeof(s->sigbuf)) {
		int sig = (int)s->sigbuf.ssi_signo;
		if (keel__signal_taken() == 1) {
			keel_log(KEEL_LOG_INFO, "core",
				 "%s received: stopping all shards (send it again to exit at once)",
				 sigabbrev_np(sig) ? sigabbrev_np(sig) : "signal");
		} else {
			keel_log(KEEL_LOG_WARN, "core", "second signal: exiting now");
			_exit(128 + sig);
		}
	} else if (res != -ECANCELED && res != -EINTR && res != -EAGAIN) {
		/* -EINTR: before Linux 6.10 this read of a blocking signalfd runs in io-wq,
		 * and the cancel at stop interrupts it; reading on keeps the second signal's
		 * "exit at once" working while the stop is stuck. */
		keel_log(KEEL_LOG_ERROR, "core",
			 "signalfd read failed: %s; SIGINT/SIGTERM are no longer read (stop the "
			 "process with SIGKILL)",
			 strerror(-res));
		return;
	}
	if (s->phase != PHASE_DONE)
		keel__internal_read(s, iop, s->sigfd, &s->sigbuf, sizeof(s->sigbuf));
}

void
keel__signal_arm(struct keel_shard *s)
{
	s->sig_op.op.fn = sig_cb;
	s->sig_op.shard = s;
	keel__internal_read(s, &s->sig_op, s->sigfd, &s->sigbuf, sizeof(s->sigbuf));
}

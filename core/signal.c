// SPDX-License-Identifier: MIT
/* Signals: SIGINT/SIGTERM read through shard 0's ring (a signalfd); the first stops the
 * runtime, the second exits at once. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static void
sig_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct internal_op *iop = keel__internal_done(op);
	struct keel_shard *s = iop->shard;

	if (res == (int)sizeof(s->sigbuf)) {
		int sig = (int)s->sigbuf.ssi_signo;
		if (++s->signals_seen == 1) {
			keel_log(KEEL_LOG_INFO, "core",
				 "%s received: stopping all shards (send it again to exit at once)",
				 sigabbrev_np(sig) ? sigabbrev_np(sig) : "signal");
			keel_runtime_stop(s->rt, 0);
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

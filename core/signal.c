// SPDX-License-Identifier: MIT
/* Signals: SIGINT/SIGTERM read by a thread of the runtime's own (keel-signals), from a
 * signalfd, for the runtime's life (start to join); the first stops the runtime (every
 * runtime of the process that reads them), the second exits at once. A thread rather than
 * shard 0's ring: a callback that blocks or deadlocks on shard 0 kept both from being read,
 * so neither the stop of the other shards nor the exit came (a review's runs). */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
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

void
keel__signal_got(int sig, bool late)
{
	const char *name = sigabbrev_np(sig) ? sigabbrev_np(sig) : "signal";

	if (keel__signal_taken() == 1) {
		if (late)
			keel_log(KEEL_LOG_INFO, "core", "%s received as the runtime stopped", name);
		else
			keel_log(KEEL_LOG_INFO, "core",
				 "%s received: stopping all shards (send it again to exit at once)",
				 name);
		return;
	}
	keel_log(KEEL_LOG_WARN, "core", "second signal: exiting now");
	_exit(128 + sig);
}

/* The reader: waits on the signalfd and on the end eventfd join writes. The signalfd is
 * non-blocking: with several runtimes reading signals, each reader is woken by a
 * process-directed signal and one of them takes it; the others read EAGAIN and wait on. */
static void *
reader_main(void *arg)
{
	struct keel_runtime *rt = arg;
	struct pollfd p[2] = { { .fd = rt->sigfd, .events = POLLIN },
			       { .fd = rt->sig_endfd, .events = POLLIN } };

	for (;;) {
		struct signalfd_siginfo si;
		ssize_t n;

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR) /* a handler of the host's ran on this thread */
				continue;
			break;
		}
		if (p[1].revents) /* join: signals from now on are taken there (runtime.c) */
			return NULL;
		if (!p[0].revents)
			continue;
		n = read(rt->sigfd, &si, sizeof(si));
		if (n == (ssize_t)sizeof(si))
			keel__signal_got((int)si.ssi_signo, false);
		else if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		else
			break;
	}
	keel_log(KEEL_LOG_ERROR, "core",
		 "reading the signalfd failed: %s; SIGINT/SIGTERM are no longer read (stop the "
		 "process with SIGKILL)",
		 strerror(errno));
	return NULL;
}

int
keel__signal_start(struct keel_runtime *rt, const sigset_t *set)
{
	int r;

	rt->sigfd = signalfd(-1, set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (rt->sigfd < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, "core", "signalfd failed: %s", strerror(-r));
		return r;
	}
	rt->sig_endfd = eventfd(0, EFD_CLOEXEC);
	if (rt->sig_endfd < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, "core", "eventfd failed: %s", strerror(-r));
		goto err_sigfd;
	}
	/* The caller blocked SIGINT and SIGTERM: the reader inherits that mask, as the shards
	 * do, so the signals stay pending for the signalfd. */
	r = -pthread_create(&rt->sig_thread, NULL, reader_main, rt);
	if (r < 0) {
		keel_log(KEEL_LOG_ERROR, "core", "creating the signal thread failed: %s",
			 strerror(-r));
		goto err_endfd;
	}
	pthread_setname_np(rt->sig_thread, "keel-signals");
	rt->sig_thread_on = true;
	return 0;
err_endfd:
	close(rt->sig_endfd);
	rt->sig_endfd = -1;
err_sigfd:
	close(rt->sigfd);
	rt->sigfd = -1;
	return r;
}

void
keel__signal_end(struct keel_runtime *rt)
{
	uint64_t one = 1;

	if (!rt->sig_thread_on)
		return;
	rt->sig_thread_on = false;
	/* An eventfd counter this far from its maximum always takes the write. */
	if (write(rt->sig_endfd, &one, sizeof(one)) != (ssize_t)sizeof(one))
		keel_log(KEEL_LOG_ERROR, "core", "waking the signal thread failed: %s",
			 strerror(errno));
	pthread_join(rt->sig_thread, NULL);
	close(rt->sig_endfd);
	close(rt->sigfd);
	rt->sig_endfd = rt->sigfd = -1;
}

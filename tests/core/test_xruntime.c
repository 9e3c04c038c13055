// SPDX-License-Identifier: MIT
/* A buffer handed from a shard of one runtime to a shard of another: its last put there
 * must send it home to its own runtime's shard, not to the shard of that index in the
 * runtime it was put in (where it would be freed on a thread that does not own it). */
#include <errno.h>
#include <keel/alloc_runtime.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

struct xrt {
	struct keel_slice s;
	uint64_t live; /* the home allocator's buffers_live */
	_Atomic int done;
};

static void
alloc_fn(struct keel_xreq *req)
{
	struct xrt *x = req->arg;

	keel_xreq_complete(req, keel_buf_alloc(keel_shard_alloc(), 100, &x->s));
}

static void
put_fn(struct keel_xreq *req)
{
	struct xrt *x = req->arg;

	keel_slice_put(&x->s);
	keel_xreq_complete(req, 0);
}

static void
live_fn(struct keel_xreq *req)
{
	struct xrt *x = req->arg;
	struct keel_alloc_stats st;

	keel_alloc_stats(keel_shard_alloc(), &st);
	x->live = st.buffers_live;
	keel_xreq_complete(req, 0);
}

/* Run @fn on shard @shard of @rt and wait for it; its status. */
static int
run_on(struct keel_runtime *rt, unsigned shard, void (*fn)(struct keel_xreq *), struct xrt *x)
{
	struct keel_xqueue *q;
	struct keel_xreq req = { .fn = fn, .arg = x }, *done;

	cr_assert_eq(keel_xqueue_create(&q), 0);
	req.queue = q;
	cr_assert_eq(keel_runtime_submit(rt, shard, &req), 0);
	cr_assert_eq(keel_xqueue_wait(q, &done, 1, KEEL_MS(TEST_WAIT_MS)), 1);
	keel_xqueue_destroy(q);
	return req.status;
}

Test(core_xruntime, a_buffer_put_in_another_runtime_goes_home_to_its_own)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *a, *b;
	struct xrt x = { 0 };
	uint64_t before;

	o.idle_poll_us = 0;
	cr_assert_eq(keel_runtime_create(&o, &a), 0);
	cr_assert_eq(keel_runtime_create(&o, &b), 0);
	cr_assert_eq(keel_runtime_start(a, NULL, NULL), 0);
	cr_assert_eq(keel_runtime_start(b, NULL, NULL), 0);
	run_on(a, 1, live_fn, &x);
	before = x.live;
	cr_assert_eq(run_on(a, 1, alloc_fn, &x), 0);
	/* Put on b's shard 0: shard 1 of a is its home, shard 1 of b is not. */
	run_on(b, 0, put_fn, &x);
	for (uint64_t dl = test_deadline(TEST_WAIT_MS);; test_pause()) {
		run_on(a, 1, live_fn, &x);
		if (x.live == before)
			break;
		cr_assert(!test_expired(dl), "the buffer never went home (%llu live, %llu before)",
			  (unsigned long long)x.live, (unsigned long long)before);
	}
	keel_runtime_stop(a, 0);
	keel_runtime_stop(b, 0);
	cr_assert_eq(keel_runtime_join(a), 0);
	cr_assert_eq(keel_runtime_join(b), 0);
	keel_runtime_destroy(a);
	keel_runtime_destroy(b);
}

static char host_log[1024];
static pthread_t host_thread;

/* Keeps the abort's line off the test's output, and checks it: a line said on the test's
 * thread (the put's) must be keel's refusal, or the test fails there, before the abort (as
 * the alloc tests' log hook does). Lines of the shards' threads are only kept. */
static void
host_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	size_t n = strlen(host_log);

	snprintf(host_log + n, sizeof(host_log) - n, "%s; ", msg);
	if (pthread_equal(pthread_self(), host_thread))
		cr_assert(level == KEEL_LOG_ERROR && strcmp(module, "core") == 0 &&
				  strstr(msg, "last put of a buffer of shard 0 on a thread that is "
					      "not a shard (an allocator bound to it makes no "
					      "shard)"),
			  "the abort's line: %s: '%s' (all: %s)", module, msg, host_log);
}

/* A host thread that bound an allocator of its own is still no shard: its put changed a
 * count that is not atomic off the buffer's shard, as a thread with no allocator does, and
 * gets the same abort (it used to reach the runtime's hook, which refused it as no shard:
 * the buffer leaked with a log line and the misuse went on). */
Test(core_xruntime, a_last_put_on_a_host_thread_with_its_own_allocator_aborts, .signal = SIGABRT)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_alloc_config c;
	struct keel_alloc *mine;
	struct xrt x = { 0 };

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	cr_assert_eq(run_on(rt, 0, alloc_fn, &x), 0);
	keel_slice_move(&x.s, 1); /* every reference to the host thread */
	memset(&c, 0, sizeof(c));
	c.shard = 1;
	c.memory = 8ULL << 20;
	c.region_size = 4ULL << 20;
	c.cpu = -1; /* no send_home hook: the host's own, single-threaded allocator */
	cr_assert_eq(keel_alloc_create(&c, &mine), 0);
	keel_alloc_bind_thread(mine);
	host_thread = pthread_self();
	keel_log_set_sink(host_sink, NULL);
	keel_slice_put(&x.s); /* aborts */
	keel_log_set_sink(NULL, NULL);
	keel_alloc_bind_thread(NULL);
	keel_alloc_destroy(mine);
	keel_runtime_stop(rt, 0);
	keel_runtime_join(rt);
	keel_runtime_destroy(rt);
	cr_assert_fail("the last put on a host thread returned; log: %s", host_log);
}

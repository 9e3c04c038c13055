// SPDX-License-Identifier: MIT
/* A buffer handed from a shard of one runtime to a shard of another: its last put there
 * must send it home to its own runtime's shard, not to the shard of that index in the
 * runtime it was put in (where it would be freed on a thread that does not own it). */
#include <errno.h>
#include <stdatomic.h>

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

// SPDX-License-Identifier: MIT
/*
 * The allocator across threads without a runtime: counters updated by several threads,
 * stale-slice puts, puts on threads that are not shards.
 */
#include <errno.h>
#include <keel/alloc_runtime.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define MiB (1ULL << 20)

/* ---- remote returns counted at home, not by the threads that put ---- */

/* Two threads put the last references of the home's buffers at once; their send_home hook
 * only collects them. remote_returns is still 0 then (the putting threads do not count),
 * and is exactly the number released once the home releases them: only the home's thread
 * writes it (keel_buf_release). */

#define RR_THREADS 2
#define RR_PER     200000

struct rr_thread {
	pthread_t t;
	struct keel_alloc *mine; /* the thread's own allocator: puts of the home's are remote */
	struct keel_slice *s;
	struct keel_buf **back; /* what the send_home hook got, released on the home thread */
	unsigned nback;
};

static _Thread_local struct rr_thread *rr_self;

static int
rr_send_home(struct keel_alloc *home, struct keel_buf *b, void *ctx)
{
	rr_self->back[rr_self->nback++] = b;
	return 0;
}

static void *
rr_run(void *p)
{
	struct rr_thread *t = p;

	rr_self = t;
	keel_alloc_bind_thread(t->mine);
	for (unsigned i = 0; i < RR_PER; i++)
		keel_slice_put(&t->s[i]);
	keel_alloc_bind_thread(NULL);
	return NULL;
}

Test(alloc_shared, remote_returns_are_counted_at_home_as_each_buffer_is_released)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 64 * MiB, 4 * MiB);
	struct keel_alloc *home;
	struct rr_thread th[RR_THREADS];
	struct keel_alloc_stats st;

	c.send_home = rr_send_home;
	cr_assert_eq(keel_alloc_create(&c, &home), 0);
	keel_alloc_bind_thread(home);
	for (unsigned k = 0; k < RR_THREADS; k++) {
		struct keel_alloc_config o = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 4 * MiB, 0);
		o.shard = k + 1;
		cr_assert_eq(keel_alloc_create(&o, &th[k].mine), 0);
		th[k].s = calloc(RR_PER, sizeof(*th[k].s));
		th[k].back = calloc(RR_PER, sizeof(*th[k].back));
		th[k].nback = 0;
		for (unsigned i = 0; i < RR_PER; i++) {
			cr_assert_eq(keel_buf_alloc(home, 64, &th[k].s[i]), 0);
			keel_slice_move(&th[k].s[i], k + 1);
		}
	}
	for (unsigned k = 0; k < RR_THREADS; k++)
		pthread_create(&th[k].t, NULL, rr_run, &th[k]);
	for (unsigned k = 0; k < RR_THREADS; k++)
		pthread_join(th[k].t, NULL);
	/* Counted at home, as each comes back (keel_buf_release), not by the putting thread:
	 * once a buffer is handed over its home may be gone. */
	keel_alloc_stats(home, &st);
	cr_assert_eq(st.remote_returns, 0, "counted before any came back: %llu",
		     (unsigned long long)st.remote_returns);
	for (unsigned k = 0; k < RR_THREADS; k++) {
		cr_assert_eq(th[k].nback, RR_PER);
		for (unsigned i = 0; i < th[k].nback; i++)
			keel_buf_release(th[k].back[i]);
		keel_alloc_destroy(th[k].mine);
		free(th[k].s);
		free(th[k].back);
	}
	keel_alloc_stats(home, &st);
	cr_assert_eq(st.remote_returns, (uint64_t)RR_THREADS * RR_PER, "remote_returns %llu of %u",
		     (unsigned long long)st.remote_returns, RR_THREADS * RR_PER);
	cr_assert_eq(st.buffers_live, 0);
	keel_alloc_destroy(home);
}

/* ---- a last put on a thread that is not a shard ---- */

static int
never_home(struct keel_alloc *home, struct keel_buf *b, void *ctx)
{
	return 0;
}

static void
quiet(int level, const char *msg, void *arg)
{
}

/* Refcounts are not atomic: holding a buffer off the shards is misuse, and a silent leak
 * (the old -EPERM path) hid it. */
Test(alloc_shared, last_put_on_a_thread_that_is_no_shard_aborts, .signal = SIGABRT)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 8 * MiB, 4 * MiB);
	struct keel_alloc *a;
	struct keel_slice s;

	c.send_home = never_home;
	cr_assert_eq(keel_alloc_create(&c, &a), 0);
	keel_alloc_bind_thread(a);
	cr_assert_eq(keel_buf_alloc(a, 100, &s), 0);
	keel_alloc_bind_thread(NULL); /* now a thread that is no shard */
	keel_alloc_log_set(quiet, NULL);
	keel_slice_put(&s);
	keel_alloc_log_set(NULL, NULL);
	cr_assert_fail("the put returned");
}

/* ---- a trip home that cannot be sent ---- */

static int
home_refuses(struct keel_alloc *home, struct keel_buf *b, void *ctx)
{
	return -ESHUTDOWN;
}

static struct logcap cap = { .lock = PTHREAD_MUTEX_INITIALIZER };

Test(alloc_shared, failed_trip_home_is_not_counted_and_logs_rate_limited)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 8 * MiB, 4 * MiB);
	struct keel_alloc_config o = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 4 * MiB, 0);
	struct keel_alloc *home, *other;
	struct keel_slice s[100];
	struct keel_alloc_stats st;

	c.send_home = home_refuses;
	o.shard = 1;
	cr_assert_eq(keel_alloc_create(&c, &home), 0);
	cr_assert_eq(keel_alloc_create(&o, &other), 0);
	keel_alloc_bind_thread(home);
	for (int i = 0; i < 100; i++)
		cr_assert_eq(keel_buf_alloc(home, 64, &s[i]), 0);
	keel_alloc_bind_thread(other); /* now "shard 1" */
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	for (int i = 0; i < 100; i++)
		keel_slice_put(&s[i]);
	keel_alloc_log_set(NULL, NULL);
	keel_alloc_stats(home, &st);
	cr_assert_eq(st.remote_returns, 0, "a trip that was not sent is not a return");
	cr_assert_eq(st.buffers_live, 100, "the buffers are leaked, and counted live");
	/* Rate-limited: lines at the 1st, 2nd, 4th ... 64th failure, not 100. */
	cr_assert_leq(logcap_count(&cap, "could not be sent home"), 8, "%s", cap.text);
	cr_assert_geq(logcap_count(&cap, "could not be sent home"), 1);
	keel_alloc_bind_thread(NULL);
	keel_alloc_log_set(quiet, NULL);
	keel_alloc_destroy(other);
	keel_alloc_destroy(home); /* reports the leak */
	keel_alloc_log_set(NULL, NULL);
}

/* The count in the line is the putting shard's: shard 2's first failure is its first, not
 * the process's second (one static counted every shard's, and every runtime's). */
static struct logcap cap2 = { .lock = PTHREAD_MUTEX_INITIALIZER };

Test(alloc_shared, failed_trips_home_are_counted_per_putting_shard)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 8 * MiB, 4 * MiB);
	struct keel_alloc *home, *other[2];
	struct keel_slice s[2];

	c.send_home = home_refuses;
	cr_assert_eq(keel_alloc_create(&c, &home), 0);
	for (int i = 0; i < 2; i++) {
		struct keel_alloc_config o = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 4 * MiB, 0);
		o.shard = (unsigned)i + 1;
		cr_assert_eq(keel_alloc_create(&o, &other[i]), 0);
	}
	keel_alloc_bind_thread(home);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(keel_buf_alloc(home, 64, &s[i]), 0);
	keel_alloc_log_set(logcap_alloc_hook, &cap2);
	for (int i = 0; i < 2; i++) {
		keel_alloc_bind_thread(other[i]); /* "shard 1", then "shard 2" */
		keel_slice_put(&s[i]);
	}
	keel_alloc_log_set(NULL, NULL);
	cr_assert_eq(logcap_count(&cap2, "could not be sent home"), 2, "%s", cap2.text);
	cr_assert_eq(logcap_count(&cap2, "leaked (1 so far"), 2, "each shard's first: %s",
		     cap2.text);
	keel_alloc_bind_thread(NULL);
	keel_alloc_log_set(quiet, NULL);
	for (int i = 0; i < 2; i++)
		keel_alloc_destroy(other[i]);
	keel_alloc_destroy(home);
	keel_alloc_log_set(NULL, NULL);
}

/* ---- a home that ends as soon as its buffer is back ---- */

/* Another runtime's shard may put the last reference of a buffer, and its owner may stop
 * and destroy that runtime as soon as the buffer is home (docs/architecture.md: the host
 * may join once the slice is put). The put counted the return on the home allocator after
 * the hook had handed the buffer over: by then the home could be gone (ASan: a
 * heap-use-after-free in last_put). Here the hook itself releases the buffer at home and
 * destroys the home, as that owner would. The return is now counted at home. */
static struct keel_alloc *eh_mine;

static int
eh_send_home(struct keel_alloc *home, struct keel_buf *b, void *ctx)
{
	(void)ctx;
	keel_alloc_bind_thread(home); /* the home's thread, played by this one */
	keel_buf_release(b);
	keel_alloc_destroy(home);
	keel_alloc_bind_thread(eh_mine);
	return 0;
}

Test(alloc_shared, a_put_leaves_the_home_alone_once_the_buffer_is_sent)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 4 * MiB, 0);
	struct keel_alloc_config o = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 4 * MiB, 0);
	struct keel_alloc *home;
	struct keel_slice s;

	c.send_home = eh_send_home;
	cr_assert_eq(keel_alloc_create(&c, &home), 0);
	o.shard = 1;
	cr_assert_eq(keel_alloc_create(&o, &eh_mine), 0);
	keel_alloc_bind_thread(home);
	cr_assert_eq(keel_buf_alloc(home, 64, &s), 0);
	keel_slice_move(&s, 1);
	keel_alloc_bind_thread(eh_mine);
	keel_slice_put(&s); /* the hook destroys the home */
	keel_alloc_bind_thread(NULL);
	keel_alloc_destroy(eh_mine);
}

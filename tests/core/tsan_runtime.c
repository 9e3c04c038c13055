// SPDX-License-Identifier: MIT
/*
 * Cross-thread paths of the runtime, as a plain program so ThreadSanitizer can watch it
 * (Criterion's runner is not instrumented and forks): foreign threads submitting requests
 * with eventfd queues and callbacks, shards calling and broadcasting to each other while
 * sleeping and waking, a host thread reading stats and a shard's allocator regions while the
 * shard adds regions (keel_alloc_region: any thread), a host-initiated stop joined by two
 * threads at once, and a runtime destroyed while another thread is inside its join.
 * Exits 0 when every check held, 1 otherwise.
 */
#include <errno.h>
#include <keel/alloc.h>
#include <keel/bufreg.h>
#include <keel/keel.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../../core/internal.h" /* rt->join: a join is under way */

#define SHARDS  3
#define THREADS 3
#define REQS    3000
#define PINGS   2000
/* Every wait ends: far above what the run needs under ThreadSanitizer on two cores. */
#define WAIT_MS 120000

static int failures;
#define CHECK(c)                                                                                 \
	do {                                                                                     \
		if (!(c)) {                                                                      \
			fprintf(stderr, "tsan_runtime: check failed at line %d: %s\n", __LINE__, \
				#c);                                                             \
			__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);                      \
		}                                                                                \
	} while (0)

static uint64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct shard_app {
	unsigned pongs;
	unsigned bcast_done;
	int payload[SHARDS]; /* written by the sender, read by the receiver: ownership moves */
};
static struct shard_app apps[SHARDS];
static _Atomic unsigned shards_finished;

static int
pong(void *arg)
{
	int *p = arg;
	return *p + 1;
}

/* keel_call_value: the value is written on the remote shard into a record the caller
 * reads after the reply. */
static int
pong_value(void *arg, uint64_t *value)
{
	int *p = arg;
	*value = (uint64_t)*p + 1000;
	return 0;
}

static void ping(unsigned me);

/* Shard 0's allocator, read by the host (keel_alloc_region) while shard 0 takes a region
 * every PINGS / HELD pongs: buffers of a region's size, held until its pings are done. */
#define HELD 8
static _Atomic(struct keel_alloc *) alloc0;
static struct keel_slice held[HELD];
/* Shard 0's only, but atomic: an optimised build may load it (or apps[0]) ahead of the
 * test of the shard, on another shard, and ThreadSanitizer sees that load. */
static _Atomic unsigned nheld;

/* Shard 0, after @pongs pongs. */
static void
hold_more(unsigned pongs)
{
	struct keel_alloc *a = keel_shard_alloc();
	unsigned n = atomic_load_explicit(&nheld, memory_order_relaxed);

	if (!a || pongs % (PINGS / HELD) || n == HELD)
		return;
	if (keel_buf_alloc(a, 1u << 20, &held[n]) == 0)
		atomic_store_explicit(&nheld, n + 1, memory_order_relaxed);
}

static void
pings_done(unsigned me)
{
	if (me == 0)
		for (unsigned n = atomic_load(&nheld); n; n--)
			keel_slice_put(&held[n - 1]);
	atomic_fetch_add(&shards_finished, 1);
}

static void
ponged(int status, void *arg)
{
	unsigned me = keel_shard_id(keel_this_shard());
	CHECK(status == (int)apps[me].pongs + 1);
	if (me == 0)
		hold_more(apps[me].pongs);
	if (++apps[me].pongs < PINGS)
		ping(me);
	else
		pings_done(me);
}

static void
ponged_value(int status, uint64_t value, void *arg)
{
	unsigned me = keel_shard_id(keel_this_shard());
	CHECK(status == 0);
	CHECK(value == (uint64_t)apps[me].pongs + 1000);
	if (me == 0)
		hold_more(apps[me].pongs);
	if (++apps[me].pongs < PINGS)
		ping(me);
	else
		pings_done(me);
}

static void
ping(unsigned me)
{
	unsigned dst = (me + 1) % SHARDS;
	apps[me].payload[dst] = (int)apps[me].pongs;
	if (apps[me].pongs % 2)
		CHECK(keel_call_value(dst, pong_value, &apps[me].payload[dst], ponged_value,
				      NULL) == 0);
	else
		CHECK(keel_call(dst, pong, &apps[me].payload[dst], ponged, NULL) == 0);
}

static void
bcast_fn(void *arg)
{
}

static void
bcast_all(int status, void *arg)
{
	apps[keel_shard_id(keel_this_shard())].bcast_done++;
}

static void
on_start(void *app)
{
	unsigned me = keel_shard_id(keel_this_shard());
	if (me == 0)
		atomic_store(&alloc0, keel_shard_alloc());
	ping(me);
	CHECK(keel_broadcast(bcast_fn, NULL, bcast_all, NULL) == 0);
}

static void
work(struct keel_xreq *req)
{
	keel_xreq_complete(req, (int)keel_shard_id(keel_this_shard()) + 100);
}

static void
done_cb(struct keel_xreq *req)
{
	atomic_fetch_add((_Atomic unsigned *)req->arg, 1);
}

struct thr {
	struct keel_runtime *rt;
	_Atomic unsigned *cb;
};

static void *
foreign(void *p)
{
	struct thr *t = p;
	struct keel_xqueue *q;
	struct keel_xreq *reqs = calloc(REQS, sizeof(*reqs)), *out[32];
	unsigned got = 0;

	CHECK(keel_xqueue_create(&q) == 0);
	for (unsigned i = 0; i < REQS; i++) {
		reqs[i].fn = work;
		reqs[i].queue = q;
		reqs[i].done = (i & 1) ? done_cb : NULL;
		reqs[i].arg = t->cb;
		CHECK(keel_runtime_submit(t->rt, i % SHARDS, &reqs[i]) == 0);
	}
	while (got < REQS) {
		int n = keel_xqueue_wait(q, out, 32, KEEL_MS(WAIT_MS));
		if (n <= 0) {
			fprintf(stderr, "tsan_runtime: %u of %u completions, then none in %d ms\n",
				got, REQS, WAIT_MS);
			CHECK(n > 0);
			break;
		}
		for (int k = 0; k < n; k++)
			CHECK(out[k]->status == (int)((out[k] - reqs) % SHARDS) + 100);
		got += (unsigned)n;
	}
	keel_xqueue_destroy(q);
	free(reqs);
	return NULL;
}

/* A host thread that submits while the runtime is being started: refused (-ESHUTDOWN)
 * until the start, then accepted and run. Its reads of the runtime's state race with the
 * start's writes unless those are atomic. */
static void
early_fn(struct keel_xreq *req)
{
	keel_xreq_complete(req, 7);
}

static void *
early(void *arg)
{
	struct keel_runtime *rt = arg;
	struct keel_xqueue *q;
	struct keel_xreq req = { .fn = early_fn }, *out;
	uint64_t deadline = now_ms() + WAIT_MS;
	int r;

	CHECK(keel_xqueue_create(&q) == 0);
	req.queue = q;
	while ((r = keel_runtime_submit(rt, 0, &req)) == -ESHUTDOWN && now_ms() < deadline)
		;
	CHECK(r == 0);
	if (r == 0) {
		CHECK(keel_xqueue_wait(q, &out, 1, KEEL_MS(WAIT_MS)) == 1);
		CHECK(req.status == 7);
	}
	keel_xqueue_destroy(q);
	return NULL;
}

/* A second host thread that joins as main does: one of the two joins the shards, the other
 * is refused (-EALREADY) while that join is under way, or gets the status after it. */
static void *
joiner(void *rt)
{
	return (void *)(intptr_t)keel_runtime_join(rt);
}

/* A destroy while another thread joins: it stops the runtime, waits for that join to return
 * and only then frees it (the join's last touch of the runtime and the free are ordered by
 * the runtime's lock). The join is seen claimed before the destroy. */
static void
destroy_while_joined(void)
{
	struct keel_opts o;
	struct keel_runtime *rt;
	pthread_t th;
	void *joined;

	keel_opts_init(&o);
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	CHECK(keel_runtime_create(&o, &rt) == 0);
	CHECK(keel_runtime_start(rt, NULL, NULL) == 0);
	pthread_create(&th, NULL, joiner, rt);
	while (atomic_load(&rt->join) != JOIN_BUSY)
		sched_yield();
	keel_runtime_destroy(rt);
	pthread_join(th, &joined);
	CHECK((intptr_t)joined == 0);
}

int
main(void)
{
	struct keel_opts o;
	struct keel_runtime *rt;
	pthread_t th[THREADS], early_th, join_th;
	void *joined;
	int r;
	struct thr t;
	_Atomic unsigned cb = 0;
	struct keel_shard_stats st;
	uint64_t deadline;

	keel_opts_init(&o);
	o.shards = SHARDS;
	o.signals = false;
	o.idle_poll_us = 0; /* every message and request lands on a sleeping shard */
	o.log_level = KEEL_LOG_WARN;
	CHECK(keel_runtime_create(&o, &rt) == 0);
	pthread_create(&early_th, NULL, early, rt);
	CHECK(keel_runtime_start(rt, on_start, NULL) == 0);
	pthread_join(early_th, NULL);
	t = (struct thr){ rt, &cb };
	for (int i = 0; i < THREADS; i++)
		pthread_create(&th[i], NULL, foreign, &t);
	deadline = now_ms() + WAIT_MS;
	while (atomic_load(&shards_finished) < SHARDS) {
		if (now_ms() > deadline) {
			fprintf(stderr,
				"tsan_runtime: %u of %u shards finished their pings in %d ms\n",
				atomic_load(&shards_finished), SHARDS, WAIT_MS);
			CHECK(atomic_load(&shards_finished) == SHARDS);
			break;
		}
		for (unsigned s = 0; s < SHARDS; s++)
			CHECK(keel_runtime_stats(rt, s, &st) == 0); /* racing readers */
		if (atomic_load(&alloc0)) { /* ... and of the regions shard 0 adds */
			struct keel_alloc *a = atomic_load(&alloc0);

			for (unsigned i = 0; i < keel_alloc_region_max(a); i++) {
				void *base;
				uint64_t len;

				if (keel_alloc_region(a, i, &base, &len) == 0)
					CHECK(base && len);
			}
		}
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	keel_runtime_stop(rt, 0);
	pthread_create(&join_th, NULL, joiner, rt);
	r = keel_runtime_join(rt);
	pthread_join(join_th, &joined);
	CHECK(r == 0 || r == -EALREADY);
	CHECK((intptr_t)joined == 0 || (intptr_t)joined == -EALREADY);
	CHECK(r == 0 || (intptr_t)joined == 0);
	CHECK(keel_runtime_join(rt) == 0); /* after the join: the status */
	for (unsigned s = 0; s < SHARDS; s++) {
		CHECK(apps[s].pongs == PINGS);
		CHECK(apps[s].bcast_done == 1);
	}
	CHECK(atomic_load(&cb) == THREADS * REQS / 2);
	keel_runtime_destroy(rt);
	destroy_while_joined();
	printf("tsan_runtime: %d passed, %d failed\n", failures ? 0 : 1, failures ? 1 : 0);
	return failures ? 1 : 0;
}

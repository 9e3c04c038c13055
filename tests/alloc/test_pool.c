// SPDX-License-Identifier: MIT
/*
 * The pool under the slab: memory freed by one size class serves any other; pre-faulting
 * stays off the request path when a grow hook is given; a pre-fault failure is recorded.
 */
#include <errno.h>
#include <keel/alloc_runtime.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <criterion/criterion.h>

#include "../../alloc/alloc_internal.h"
#include "helpers.h"

#define MiB (1ULL << 20)

static struct logcap cap = { .lock = PTHREAD_MUTEX_INITIALIZER };

static struct keel_alloc *
make_cfg(struct keel_alloc_config *c)
{
	struct keel_alloc *a = NULL;
	int r = keel_alloc_create(c, &a);

	cr_assert_eq(r, 0, "keel_alloc_create: %s", strerror(-r));
	keel_alloc_bind_thread(a);
	return a;
}

/* The reviewer's scenario: fill the cap with 64 B buffers, free them all, then 2 KiB. */
Test(alloc_pool, memory_freed_by_one_class_serves_another)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 8 * MiB, 4 * MiB);
	struct keel_alloc *a = make_cfg(&c);
	unsigned max = (unsigned)(8 * MiB / 64);
	struct keel_slice *s = calloc(max + 1, sizeof(*s));
	struct keel_alloc_stats st;
	unsigned n = 0;
	int r = 0;

	while (n <= max && (r = keel_buf_alloc(a, 64, &s[n])) == 0)
		n++;
	cr_assert_eq(r, -ENOMEM);
	cr_assert_eq(n, max, "64 B buffers fill the whole cap: %u of %u", n, max);
	while (n)
		keel_slice_put(&s[--n]);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.bytes_in_use, 0);
	r = keel_buf_alloc(a, 2048, &s[0]);
	cr_assert_eq(r, 0, "2 KiB with nothing in use: %s", strerror(-r));
	keel_slice_put(&s[0]);

	/* And the whole cap again, in 2 KiB buffers, then in region-sized ones. */
	while (n <= max && (r = keel_buf_alloc(a, 2048, &s[n])) == 0)
		n++;
	cr_assert_eq(n, 8 * MiB / 2048, "2 KiB buffers after 64 B ones: %u", n);
	while (n)
		keel_slice_put(&s[--n]);
	for (n = 0; n < 2; n++)
		cr_assert_eq(keel_buf_alloc(a, 4 * MiB, &s[n]), 0, "region-sized buffer %u", n);
	cr_assert_eq(keel_buf_alloc(a, 64, &s[n]), -ENOMEM);
	while (n)
		keel_slice_put(&s[--n]);
	free(s);
	keel_alloc_destroy(a);
}

/* Mixed sizes churned: failure only when live bytes plus partially used chunks (one 64 KiB
 * chunk per small class at most, here) reach the cap. */
Test(alloc_pool, enomem_only_when_live_bytes_reach_the_cap)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 16 * MiB, 2 * MiB);
	struct keel_alloc *a = make_cfg(&c);
	static const size_t sizes[] = { 64, 256, 1024, 4096, 16384, 65536, 262144, 1 << 20 };
	/* One more than the most that fit (16 MiB of 64 B buffers): the refused call's slice,
	 * which a refusal empties, is written too. */
	struct keel_slice *s = calloc((1 << 18) + 1, sizeof(*s));
	struct keel_alloc_stats st;

	for (unsigned round = 0; round < 8; round++) {
		size_t sz = sizes[round];
		unsigned n = 0;
		int r;

		while ((r = keel_buf_alloc(a, sz, &s[n])) == 0)
			n++;
		cr_assert_eq(r, -ENOMEM);
		keel_alloc_stats(a, &st);
		cr_assert_geq(st.bytes_in_use + 64 * 1024, 16 * MiB,
			      "%zu B buffers: -ENOMEM at %llu bytes in use", sz,
			      (unsigned long long)st.bytes_in_use);
		/* Free every other one, then all: the pool merges back to whole regions. */
		for (unsigned i = 0; i < n; i += 2)
			keel_slice_put(&s[i]);
		for (unsigned i = 1; i < n; i += 2)
			keel_slice_put(&s[i]);
	}
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.bytes_in_use, 0);
	free(s);
	keel_alloc_destroy(a);
}

static int grow_calls;

static int
grow_count(struct keel_alloc *a, void *ctx)
{
	grow_calls++; /* the runtime would defer keel_alloc_grow; the test calls it itself */
	return 0;
}

Test(alloc_pool, allocation_burst_in_one_callback_never_prefaults_inline)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 64 * MiB, 4 * MiB);
	struct keel_alloc *a;
	struct keel_alloc_stats st0, st;
	struct keel_slice s[9];
	int r, steps = 0;

	c.grow = grow_count;
	grow_calls = 0;
	a = make_cfg(&c);
	keel_alloc_stats(a, &st0);
	cr_assert_eq(st0.regions, 1, "region 0 pre-faulted at create");
	/* One "request": 9 MiB, more than the pre-faulted region. */
	for (int i = 0; i < 9; i++)
		cr_assert_eq(keel_buf_alloc(a, MiB, &s[i]), 0);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.inline_prefaults, 0, "pre-faulted inside the request");
	cr_assert_eq(st.regions, 1, "no region pre-faulted inside the request");
	cr_assert_eq(st.prefault_ns, st0.prefault_ns, "pre-fault time spent inside the request");
	cr_assert_eq(st.regions_unprefaulted, 2, "regions 1 and 2 used before their pre-fault");
	cr_assert_eq(grow_calls, 1, "the hook was asked once");
	/* The deferred callbacks: one region per call until the low-water mark is met. */
	while ((r = keel_alloc_grow(a)) == 1)
		steps++;
	cr_assert_eq(r, 0);
	keel_alloc_stats(a, &st);
	cr_assert_eq(steps, 4, "regions 1-4: 3 in use + 2 spare ahead (got %d)", steps);
	cr_assert_eq(st.regions, 5);
	cr_assert_eq(st.inline_prefaults, 0);
	for (int i = 0; i < 9; i++)
		keel_slice_put(&s[i]);
	keel_alloc_destroy(a);
}

Test(alloc_pool, without_a_grow_hook_prefaults_are_inline_and_counted)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 16 * MiB, 4 * MiB);
	struct keel_alloc *a = make_cfg(&c);
	struct keel_alloc_stats st;
	struct keel_slice s[5];

	for (int i = 0; i < 5; i++)
		cr_assert_eq(keel_buf_alloc(a, 2 * MiB, &s[i]), 0);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.regions, 3);
	cr_assert_eq(st.inline_prefaults, 2);
	cr_assert_eq(st.regions_unprefaulted, 0);
	for (int i = 0; i < 5; i++)
		keel_slice_put(&s[i]);
	keel_alloc_destroy(a);
}

/* A pre-fault that fails (here: the region made read-only) is logged once and not retried;
 * allocation goes on with regions faulted on first touch. */
Test(alloc_pool, prefault_failure_is_logged_once_and_not_retried)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 32 * MiB, 4 * MiB);
	struct keel_alloc *a;
	struct keel_alloc_stats st;
	struct keel_slice s[3];
	void *base;
	uint64_t len;

	c.grow = grow_count;
	a = make_cfg(&c);
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	cr_assert_eq(keel_alloc_region(a, 0, &base, &len), 0);
	cr_assert_eq(mprotect((uint8_t *)base + len, len, PROT_READ), 0);
	cr_assert_lt(keel_alloc_grow(a), 0, "pre-faulting a read-only region fails");
	cr_assert_eq(mprotect((uint8_t *)base + len, len, PROT_READ | PROT_WRITE), 0);
	for (int i = 0; i < 5; i++)
		cr_assert_eq(keel_alloc_grow(a), 0, "not retried");
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(keel_buf_alloc(a, 4 * MiB, &s[i]), 0);
		memset(s[i].data, 1, s[i].len);
	}
	keel_alloc_log_set(NULL, NULL);
	cr_assert_eq(logcap_count(&cap, "pre-faulting buffer region"), 1, "log: %s", cap.text);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.regions, 1);
	cr_assert_eq(st.inline_prefaults, 0);
	for (int i = 0; i < 3; i++)
		keel_slice_put(&s[i]);
	keel_alloc_destroy(a);
}

/* Every size up to keel_alloc_buf_max is served, for both backends; the capacity is the size
 * class really handed out, and bytes_in_use counts it. */
static void
largest_buffers(enum keel_alloc_backend be, uint64_t want_max)
{
	struct keel_alloc_config c = test_alloc_config(be, 64 * MiB, 4 * MiB);
	struct keel_alloc *a = make_cfg(&c);
	uint64_t max = keel_alloc_buf_max(a);
	size_t sizes[] = { (size_t)max, (size_t)max - 1, 3 * MiB, 2 * MiB + 1, 2 * MiB, 100000 };
	struct keel_alloc_stats st;
	struct keel_slice s;

	cr_assert_eq(max, want_max);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		int r = keel_buf_alloc(a, sizes[i], &s);
		cr_assert_eq(r, 0, "%s: %zu bytes: %s", keel_alloc_backend_name(be), sizes[i],
			     strerror(-r));
		cr_assert_geq(keel_buf_cap(s.buf), sizes[i]);
		keel_alloc_stats(a, &st);
		cr_assert_eq(st.bytes_in_use, keel_buf_cap(s.buf), "bytes_in_use is the capacity");
		memset(s.data, 7, keel_buf_cap(s.buf)); /* all of it is ours (ASan checks) */
		keel_slice_put(&s);
	}
	cr_assert_eq(keel_buf_alloc(a, max + 1, &s), -E2BIG);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.bytes_in_use, 0);
	cr_assert_eq(st.alloc_failures, 0);
	keel_alloc_destroy(a);
}

Test(alloc_pool, slab_serves_region_sized_buffers)
{
	largest_buffers(KEEL_ALLOC_BACKEND_SLAB, 4 * MiB);
}

Test(alloc_pool, jemalloc_serves_up_to_its_documented_maximum)
{
	largest_buffers(KEEL_ALLOC_BACKEND_JEMALLOC, 3584 * 1024);
}

/* A backend value outside the enum is refused: it took the jemalloc path (a NULL call
 * without keel_jemalloc_enable(), memory outside the regions with it). */
Test(alloc_pool, a_backend_outside_the_enum_is_refused)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 8 * MiB, 4 * MiB);
	struct keel_alloc *a = NULL;

	c.backend = (enum keel_alloc_backend)3;
	cr_assert_eq(keel_alloc_create(&c, &a), -EINVAL);
	cr_assert_null(a);
}

/* A cap that is not a whole number of regions is rounded down, and says so: --memory 7M
 * served 4 MiB without a word. */
Test(alloc_pool, a_cap_rounded_down_to_whole_regions_is_logged)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 7 * MiB, 4 * MiB);
	struct keel_alloc *a;

	keel_alloc_log_set(logcap_alloc_hook, &cap);
	a = make_cfg(&c);
	keel_alloc_log_set(NULL, NULL);
	cr_assert_eq(logcap_count(&cap, "7168 KiB of buffer memory is rounded down to 4096 KiB"), 1,
		     "log: %s", cap.text);
	keel_alloc_destroy(a);
	c.memory = 8 * MiB;
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	a = make_cfg(&c);
	keel_alloc_log_set(NULL, NULL);
	cr_assert_eq(logcap_count(&cap, "rounded down"), 1, "a whole cap logged too: %s", cap.text);
	keel_alloc_destroy(a);
}

/* Without a grow hook, the allocation that adds a region pre-faults it; when that fails the
 * region is used as it is (its pages fault in on first touch), as every later one then is:
 * the request that hit the failure got -ENOMEM while the next one, on the same region,
 * was served. */
static int (*real_prefault)(void *p, uint64_t len);
static int prefaults_seen;

static int
prefault_fails_second(void *p, uint64_t len)
{
	if (++prefaults_seen == 2)
		return -EFAULT;
	return real_prefault(p, len);
}

Test(alloc_pool, a_failed_inline_prefault_does_not_fail_the_request)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 16 * MiB, 4 * MiB);
	struct keel_alloc *a;
	struct keel_alloc_stats st;
	struct keel_slice s[2];
	int r;

	real_prefault = keel__region_prefault_fn;
	prefaults_seen = 0;
	keel__region_prefault_fn = prefault_fails_second;
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	a = make_cfg(&c); /* region 0 pre-faulted at create */
	cr_assert_eq(keel_buf_alloc(a, 4 * MiB, &s[0]), 0);
	r = keel_buf_alloc(a, 4 * MiB, &s[1]); /* region 1: its pre-fault fails */
	keel__region_prefault_fn = real_prefault;
	keel_alloc_log_set(NULL, NULL);
	cr_assert_eq(r, 0, "the request that added the region: %s", strerror(-r));
	memset(s[1].data, 1, s[1].len);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.regions_unprefaulted, 1);
	cr_assert_eq(logcap_count(&cap, "pre-faulting buffer region"), 1, "log: %s", cap.text);
	keel_slice_put(&s[0]);
	keel_slice_put(&s[1]);
	keel_alloc_destroy(a);
}

/* Region 0's pre-fault fails at create: keel_alloc_create fails (the shard does not start),
 * and the log says so. It said the shard went on with regions used without pre-faulting,
 * which an operator under a memory cgroup limit would read as a degraded start. */
static int
prefault_fails_first(void *p, uint64_t len)
{
	(void)p, (void)len;
	return -ENOMEM;
}

Test(alloc_pool, a_failed_prefault_at_create_says_the_allocator_is_not_made)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 16 * MiB, 4 * MiB);
	struct keel_alloc *a = NULL;
	int r;

	real_prefault = keel__region_prefault_fn;
	keel__region_prefault_fn = prefault_fails_first;
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	r = keel_alloc_create(&c, &a);
	keel__region_prefault_fn = real_prefault;
	keel_alloc_log_set(NULL, NULL);
	cr_assert_eq(r, -ENOMEM);
	cr_assert_eq(logcap_count(&cap, "used without pre-faulting"), 0, "log: %s", cap.text);
	cr_assert_eq(logcap_count(&cap, "not created"), 1, "log: %s", cap.text);
}

/* jemalloc's entry points with one mallctl key refused, as a jemalloc without it would
 * (refused_err: ENOENT, or another error). */
static const char *refused_key;
static int refused_err = ENOENT;
static unsigned refused_skip; /* calls with the key let through before the refusal */

static int
refusing_mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen)
{
	if (refused_key && strstr(name, refused_key) && refused_skip-- == 0) {
		refused_skip = 0;
		return refused_err;
	}
	return mallctl(name, oldp, oldlenp, newp, newlen);
}

static const struct keel__je refusing_je = {
	.mallocx_fn = mallocx,
	.rallocx_fn = rallocx,
	.dallocx_fn = dallocx,
	.sdallocx_fn = sdallocx,
	.sallocx_fn = sallocx,
	.mallctl_fn = refusing_mallctl,
};

/* The registered arena's settings are checked: a jemalloc that refuses one (older than 5.1
 * has no retain_grow_limit) fails the create with a line that names it, where the arena
 * went on without it (no grow limit: 34 buffers of 1 MiB in a 64 MiB cap, against 45). */
Test(alloc_pool, a_registered_arena_setting_jemalloc_refuses_fails_the_create)
{
	const char *keys[] = { "dirty_decay_ms", "muzzy_decay_ms", "retain_grow_limit" };
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_JEMALLOC, 64 * MiB, 4 * MiB);
	struct keel_alloc *a = NULL;
	char line[512];
	int r;

	keel__alloc_set_jemalloc(&refusing_je);
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		refused_key = keys[i];
		r = keel_alloc_create(&c, &a);
		cr_assert_eq(r, -ENOENT, "%s refused: create gave %d", keys[i], r);
		logcap_line(&cap, keys[i], line, sizeof(line));
		cr_assert(strstr(line, "jemalloc refused arena.") && strstr(line, "5.1") &&
				  strstr(line, "KEEL_ALLOC_BACKEND_SLAB"),
			  "%s: log: %s", keys[i], cap.text);
	}
	refused_key = NULL; /* the same entry points refusing nothing: created */
	r = keel_alloc_create(&c, &a);
	cr_assert_eq(r, 0, "%s", strerror(-r));
	keel_alloc_destroy(a);
	keel_alloc_log_set(NULL, NULL);
}

/* The registered arena comes from experimental.arenas_create_ext (metadata out of the
 * registered regions); only a jemalloc without that call (ENOENT) falls back to
 * arenas.create. Any other refusal (EAGAIN: no arena left) fell back too, silently. */
Test(alloc_pool, only_a_jemalloc_without_arenas_create_ext_falls_back)
{
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_JEMALLOC, 64 * MiB, 4 * MiB);
	struct keel_alloc *a = NULL;
	char line[512];
	int r;

	keel__alloc_set_jemalloc(&refusing_je);
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	refused_key = "arenas_create_ext";
	refused_err = ENOENT; /* an older jemalloc: the fallback */
	r = keel_alloc_create(&c, &a);
	cr_assert_eq(r, 0, "%s", strerror(-r));
	keel_alloc_destroy(a);
	refused_err = EAGAIN;
	r = keel_alloc_create(&c, &a);
	cr_assert_eq(r, -EAGAIN, "create gave %d", r);
	logcap_line(&cap, "registered arena", line, sizeof(line));
	cr_assert(strstr(line, "no arena left"), "log: %s", cap.text);
	refused_key = NULL;
	refused_err = ENOENT;
	keel_alloc_log_set(NULL, NULL);
}

/* jemalloc out of arenas (about 4,000 alive) or unable to make a thread cache: the general
 * arena's refusal, and either thread cache's, failed the create with nothing said but the
 * caller's own line (bufreg's "--memory", in a runtime). Each now names what was refused. */
Test(alloc_pool, a_general_arena_or_thread_cache_jemalloc_refuses_is_named)
{
	static const struct {
		const char *key, *said, *why;
		int err;
		unsigned skip; /* calls to let through first */
	} cases[] = {
		{ "arenas.create", "the shard's general arena", "no arena left", EAGAIN, 0 },
		{ "tcache.create", "the general arena's thread cache", "no thread cache left",
		  EFAULT, 0 },
		{ "tcache.create", "the registered arena's thread cache", "no thread cache left",
		  EFAULT, 1 },
	};
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_JEMALLOC, 64 * MiB, 4 * MiB);
	struct keel_alloc *a = NULL;
	char line[512];
	int r;

	keel__alloc_set_jemalloc(&refusing_je);
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		refused_key = cases[i].key;
		refused_err = cases[i].err;
		refused_skip = cases[i].skip;
		r = keel_alloc_create(&c, &a);
		cr_assert_eq(r, -cases[i].err, "%s refused: create gave %d", cases[i].key, r);
		logcap_line(&cap, cases[i].said, line, sizeof(line));
		cr_assert(strstr(line, "jemalloc could not create") && strstr(line, cases[i].why),
			  "%s: log: %s", cases[i].said, cap.text);
	}
	refused_key = NULL;
	refused_err = ENOENT;
	keel_alloc_log_set(NULL, NULL);
}

// SPDX-License-Identifier: MIT
/* Buffers and the allocator without a runtime: refcounts, pools, the cap, regions. */
#include <errno.h>
#include <keel/alloc_runtime.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define MiB (1ULL << 20)

static struct keel_alloc *
make(enum keel_alloc_backend be, uint64_t mem, uint64_t region)
{
	struct keel_alloc_config c = test_alloc_config(be, mem, region);
	struct keel_alloc *a = NULL;
	int r = keel_alloc_create(&c, &a);

	cr_assert_eq(r, 0, "keel_alloc_create: %s", strerror(-r));
	keel_alloc_bind_thread(a);
	return a;
}

static void
refcount_rules(enum keel_alloc_backend be)
{
	struct keel_alloc *a = make(be, 16 * MiB, 4 * MiB);
	struct keel_slice s, g, sub, subsub, bad;
	struct keel_alloc_stats st;

	cr_assert_eq(keel_buf_alloc(a, 2000, &s), 0);
	cr_assert_eq(keel_slice_refs(&s), 1);
	cr_assert_eq(s.len, 2000);
	cr_assert_geq(keel_buf_cap(s.buf), 2000);
	memset(s.data, 0xab, s.len);

	keel_slice_get(&s, &g); /* +1 */
	cr_assert_eq(keel_slice_refs(&s), 2);
	cr_assert_eq(g.data, s.data);
	cr_assert_eq(g.buf, s.buf);

	cr_assert_eq(keel_slice_sub(&s, 100, 500, &sub), 0); /* +1 */
	cr_assert_eq(sub.data, s.data + 100);
	cr_assert_eq(sub.len, 500);
	cr_assert_eq(keel_slice_sub(&sub, 50, 10, &subsub), 0); /* slice of a slice: same buf */
	cr_assert_eq(subsub.buf, s.buf);
	cr_assert_eq(subsub.data, s.data + 150);
	cr_assert_eq(keel_slice_refs(&s), 4);
	cr_assert_eq(keel_slice_sub(&sub, 400, 101, &bad), -ERANGE, "range past the slice");
	cr_assert_null(bad.buf, "a refused sub leaves an empty slice");
	cr_assert_eq(keel_slice_refs(&s), 4, "a refused sub took no reference");

	keel_slice_put(&g);
	keel_slice_put(&sub);
	keel_slice_put(&s);
	cr_assert_eq(keel_slice_refs(&subsub), 1);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.buffers_live, 1, "the buffer lives while a slice holds it");
	cr_assert_eq(subsub.data[0], 0xab);
	keel_slice_put(&subsub);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.buffers_live, 0);
	cr_assert_eq(st.bytes_in_use, 0);
	cr_assert_geq(st.bytes_peak, 2000);
	keel_alloc_destroy(a);
}

Test(alloc_buf, refcount_get_put_and_slice_of_slice_slab)
{
	refcount_rules(KEEL_ALLOC_BACKEND_SLAB);
}

Test(alloc_buf, refcount_get_put_and_slice_of_slice_jemalloc)
{
	refcount_rules(KEEL_ALLOC_BACKEND_JEMALLOC);
}

static void
last_put_returns_to_pool(enum keel_alloc_backend be)
{
	struct keel_alloc *a = make(be, 16 * MiB, 4 * MiB);
	static const size_t sizes[] = { 64, 2048, 16384, 65536, 1 << 20 };

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct keel_slice s, t;
		struct keel_alloc_stats st;
		uint8_t *first;

		cr_assert_eq(keel_buf_alloc(a, sizes[i], &s), 0);
		first = s.data;
		keel_slice_put(&s);
		keel_alloc_stats(a, &st);
		cr_assert_eq(st.bytes_in_use, 0);
		/* The memory went back to the pool: the next buffer of the class reuses it. */
		cr_assert_eq(keel_buf_alloc(a, sizes[i], &t), 0);
		/* The slab's free lists are LIFO; jemalloc may pick another free extent. */
		if (be == KEEL_ALLOC_BACKEND_SLAB)
			cr_assert_eq(t.data, first, "size %zu: memory not reused from the pool",
				     sizes[i]);
		keel_slice_put(&t);
		/* 64 times the cap's worth of cycles: only reuse keeps this from -ENOMEM. */
		for (unsigned k = 0; k < 64 * (16 << 20) / sizes[i] && k < 20000; k++) {
			cr_assert_eq(keel_buf_alloc(a, sizes[i], &t), 0, "size %zu, cycle %u",
				     sizes[i], k);
			keel_slice_put(&t);
		}
	}
	keel_alloc_destroy(a);
}

Test(alloc_buf, last_put_returns_chunk_to_pool_slab)
{
	last_put_returns_to_pool(KEEL_ALLOC_BACKEND_SLAB);
}

Test(alloc_buf, last_put_returns_chunk_to_pool_jemalloc)
{
	last_put_returns_to_pool(KEEL_ALLOC_BACKEND_JEMALLOC);
}

struct ext_state {
	int released;
	void *data;
	uint32_t cap;
};

static void
ext_release(void *data, uint32_t cap, void *arg)
{
	struct ext_state *e = arg;
	e->released++;
	e->data = data;
	e->cap = cap;
}

Test(alloc_buf, external_buffer_last_put_returns_to_its_owner)
{
	struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_DEFAULT, 8 * MiB, 4 * MiB);
	struct ext_state e = { 0 };
	static uint8_t ring_buf[4096]; /* stands in for a provided-buffer ring's buffer */
	struct keel_slice s, sub;

	struct keel_alloc_stats st;

	cr_assert_eq(keel_buf_wrap(a, ring_buf, sizeof(ring_buf), ext_release, &e, &s), 0);
	cr_assert(keel_buf_is_external(s.buf));
	/* Not registered memory: counted apart from the region buffers. */
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.bytes_in_use, 0);
	cr_assert_eq(st.bytes_peak, 0);
	cr_assert_eq(st.buffers_live, 0);
	cr_assert_eq(st.ext_bytes_in_use, sizeof(ring_buf));
	cr_assert_eq(st.ext_buffers_live, 1);
	cr_assert_eq(keel_slice_sub(&s, 10, 20, &sub), 0);
	keel_slice_put(&s);
	cr_assert_eq(e.released, 0, "released while a slice still refers to it");
	keel_slice_put(&sub);
	cr_assert_eq(e.released, 1);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.ext_bytes_in_use, 0);
	cr_assert_eq(st.ext_buffers_live, 0);
	cr_assert_eq(e.data, ring_buf);
	cr_assert_eq(e.cap, sizeof(ring_buf));
	keel_alloc_destroy(a);
}

static void
cap_returns_enomem(enum keel_alloc_backend be)
{
	struct keel_alloc *a = make(be, 8 * MiB, 4 * MiB);
	struct keel_slice s[16];
	struct keel_alloc_stats st;
	unsigned n = 0;
	int r = 0;

	while (n < 16 && (r = keel_buf_alloc(a, 1 << 20, &s[n])) == 0)
		n++;
	cr_assert_eq(r, -ENOMEM, "allocation past --memory: got %d after %u buffers", r, n);
	cr_assert(n >= 4 && n <= 8, "%u buffers of 1 MiB in 8 MiB", n);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.alloc_failures, 1);
	cr_assert_eq(st.regions, 2);
	/* The caller decides: free one and the next allocation succeeds. */
	keel_slice_put(&s[--n]);
	cr_assert_eq(keel_buf_alloc(a, 1 << 20, &s[n]), 0);
	n++;
	while (n)
		keel_slice_put(&s[--n]);
	keel_alloc_destroy(a);
}

Test(alloc_buf, memory_cap_returns_enomem_slab)
{
	cap_returns_enomem(KEEL_ALLOC_BACKEND_SLAB);
}

Test(alloc_buf, memory_cap_returns_enomem_jemalloc)
{
	cap_returns_enomem(KEEL_ALLOC_BACKEND_JEMALLOC);
}

/* The jemalloc backend's extents take blocks of the pool rounded up to a power of two;
 * the chunks past the extent go back to the pool (keel__pool_alloc_trim). Without that,
 * 16 MiB held 180 buffers of 64 KiB, 111 of 100,000 B and 594 of 16 KiB (jemalloc asks
 * for extents of 2.5, 3 and 3.5 MiB as it grows, a page over the size for large ones);
 * with it, 204, 135 and 642 on Debian 12's jemalloc 5.3. The rest of the gap to the cap
 * is jemalloc's own (docs/memory.md). */
Test(alloc_buf, jemalloc_backend_gives_back_the_tails_of_its_blocks)
{
	static const struct {
		uint32_t size;
		unsigned want;
	} cases[] = { { 65536, 200 }, { 100000, 130 }, { 16384, 620 } };

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_JEMALLOC, 16 * MiB, 4 * MiB);
		unsigned cap = 16 * 1024 * 1024 / cases[i].size, n = 0;
		struct keel_slice *s = calloc(cap + 1, sizeof(*s));
		struct keel_alloc_stats st;
		int r = 0;

		cr_assert_not_null(s);
		while (n <= cap && (r = keel_buf_alloc(a, cases[i].size, &s[n])) == 0)
			n++;
		cr_assert_eq(r, -ENOMEM, "size %u: %d after %u buffers", cases[i].size, r, n);
		cr_log_info("%u buffers of %u bytes in 16 MiB (%u fit)", n, cases[i].size, cap);
		cr_assert_geq(n, cases[i].want, "%u buffers of %u bytes in 16 MiB, want %u or more",
			      n, cases[i].size, cases[i].want);
		keel_alloc_stats(a, &st);
		while (n)
			keel_slice_put(&s[--n]);
		free(s);
		keel_alloc_destroy(a);
	}
}

Test(alloc_buf, bad_sizes_are_refused)
{
	struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_DEFAULT, 8 * MiB, 4 * MiB);
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 8 * MiB, 3 * MiB);
	struct keel_alloc *b;
	struct keel_slice s;

	cr_assert_eq(keel_buf_alloc(a, 0, &s), -EINVAL);
	cr_assert_eq(keel_buf_alloc(a, 4 * MiB + 1, &s), -E2BIG);
	cr_assert_eq(keel_alloc_create(&c, &b), -EINVAL, "region size not a power of two");
	c.region_size = 2048 * MiB; /* io_uring registers no fixed buffer over 1 GiB */
	c.memory = 4096 * MiB;
	cr_assert_eq(keel_alloc_create(&c, &b), -EINVAL, "a region of 2 GiB");
	c.region_size = 4 * MiB;
	c.memory = 1 * MiB;
	cr_assert_eq(keel_alloc_create(&c, &b), -EINVAL, "cap below one huge page");
	keel_alloc_destroy(a);
}

/* Every refusal of a call that makes a slice leaves *out an empty slice, as
 * keel_slice_export's do: a caller that ignores the return and puts or sends it must not
 * act on whatever the memory held before (a garbage buffer pointer). */
static void
assert_empty(const struct keel_slice *s, const char *call)
{
	cr_assert_null(s->buf, "a refused %s left *out as it was: buf %p", call, (void *)s->buf);
	cr_assert_null(s->data, "a refused %s: data %p", call, (void *)s->data);
	cr_assert_eq(s->len, 0, "a refused %s: len %u", call, s->len);
}

Test(alloc_buf, a_refused_alloc_wrap_or_sub_leaves_an_empty_slice)
{
	struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_DEFAULT, 8 * MiB, 4 * MiB);
	static uint8_t ext[64];
	struct ext_state e = { 0 };
	struct keel_slice s[16], out;
	unsigned n = 0;
	int r;

	memset(&out, 0xa5, sizeof(out));
	cr_assert_eq(keel_buf_alloc(a, 0, &out), -EINVAL);
	assert_empty(&out, "keel_buf_alloc (-EINVAL)");
	memset(&out, 0xa5, sizeof(out));
	cr_assert_eq(keel_buf_alloc(a, 4 * MiB + 1, &out), -E2BIG);
	assert_empty(&out, "keel_buf_alloc (-E2BIG)");
	/* The cap: 1 MiB buffers until --memory (8 MiB) is reached. */
	while (n < 16 && (r = keel_buf_alloc(a, 1 << 20, &s[n])) == 0)
		n++;
	cr_assert_eq(r, -ENOMEM, "no -ENOMEM after %u buffers of 1 MiB", n);
	memset(&out, 0xa5, sizeof(out));
	cr_assert_eq(keel_buf_alloc(a, 1 << 20, &out), -ENOMEM);
	assert_empty(&out, "keel_buf_alloc (-ENOMEM)");
	memset(&out, 0xa5, sizeof(out));
	cr_assert_eq(keel_buf_wrap(a, ext, 0, ext_release, &e, &out), -EINVAL);
	assert_empty(&out, "keel_buf_wrap (-EINVAL)");
	memset(&out, 0xa5, sizeof(out));
	cr_assert_eq(keel_slice_sub(&s[0], 10, s[0].len, &out), -ERANGE);
	assert_empty(&out, "keel_slice_sub (-ERANGE)");
	cr_assert_eq(keel_slice_refs(&s[0]), 1, "a refused sub took a reference");
	while (n)
		keel_slice_put(&s[--n]);
	keel_alloc_destroy(a);
}

/* Every buffer lies inside one region, and locate() gives its region and offset. */
static void
buffers_never_straddle_regions(enum keel_alloc_backend be)
{
	struct keel_alloc *a = make(be, 16 * MiB, 2 * MiB);
	static const size_t sizes[] = { 3000, 70000, 300000, 1 << 20, 100 };
	struct keel_slice *v = calloc(4096, sizeof(*v));
	unsigned n = 0, regions_seen = 0;
	bool seen[8] = { 0 };

	for (unsigned i = 0; n < 4096; i++) {
		unsigned r0, r1;
		uint64_t o0, o1;
		void *base;
		uint64_t len;

		if (keel_buf_alloc(a, sizes[i % 5], &v[n]) != 0)
			break;
		cr_assert_eq(keel_alloc_locate(a, v[n].data, &r0, &o0), 0);
		cr_assert_eq(keel_alloc_locate(a, v[n].data + v[n].len - 1, &r1, &o1), 0);
		cr_assert_eq(r0, r1, "a buffer crosses from region %u to %u", r0, r1);
		cr_assert_eq(keel_alloc_region(a, r0, &base, &len), 0);
		cr_assert_eq((uint8_t *)base + o0, v[n].data);
		cr_assert_leq(o0 + v[n].len, len);
		if (!seen[r0])
			regions_seen++;
		seen[r0] = true;
		n++;
	}
	cr_assert_eq(regions_seen, 8, "filled %u of 8 regions", regions_seen);
	while (n)
		keel_slice_put(&v[--n]);
	free(v);
	keel_alloc_destroy(a);
}

Test(alloc_buf, buffers_never_straddle_regions_slab)
{
	buffers_never_straddle_regions(KEEL_ALLOC_BACKEND_SLAB);
}

Test(alloc_buf, buffers_never_straddle_regions_jemalloc)
{
	buffers_never_straddle_regions(KEEL_ALLOC_BACKEND_JEMALLOC);
}

/* Buffers of 4 KiB and more start on a page boundary with either backend (docs/file.md:
 * O_DIRECT needs it). The jemalloc backend's were at offsets such as 1024, 2688 and 3840
 * of their page (a large allocation starts at a random cache line). */
static void
page_aligned_from_4k(enum keel_alloc_backend be)
{
	static const uint32_t sizes[] = { 4096, 5000, 6144, 16384, 65536, 1u << 20 };
	struct keel_alloc *a = make(be, 16 * MiB, 4 * MiB);

	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct keel_slice s[3];

		for (unsigned k = 0; k < 3; k++) {
			cr_assert_eq(keel_buf_alloc(a, sizes[i], &s[k]), 0);
			cr_assert_eq((uintptr_t)s[k].data % 4096, 0, "%u bytes at %p", sizes[i],
				     s[k].data);
		}
		for (unsigned k = 0; k < 3; k++)
			keel_slice_put(&s[k]);
	}
	keel_alloc_destroy(a);
}

Test(alloc_buf, buffers_from_4k_are_page_aligned_slab)
{
	page_aligned_from_4k(KEEL_ALLOC_BACKEND_SLAB);
}

Test(alloc_buf, buffers_from_4k_are_page_aligned_jemalloc)
{
	page_aligned_from_4k(KEEL_ALLOC_BACKEND_JEMALLOC);
}

Test(alloc_buf, general_arena_is_not_registered_memory)
{
	struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_JEMALLOC, 8 * MiB, 4 * MiB);
	unsigned idx;
	uint64_t off;
	char *p = keel_alloc_malloc(a, 1000);

	cr_assert_not_null(p);
	memset(p, 1, 1000);
	cr_assert_eq(keel_alloc_locate(a, p, &idx, &off), -ENOENT);
	keel_alloc_free(a, p);
	keel_alloc_destroy(a);
}

Test(alloc_buf, stats_count_regions_in_use_and_peak)
{
	struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_SLAB, 16 * MiB, 4 * MiB);
	struct keel_alloc_stats st;
	struct keel_slice s[3];

	keel_alloc_stats(a, &st);
	cr_assert_eq(st.regions, 1, "one region is mapped and pre-faulted at create");
	cr_assert_eq(st.regions_max, 4);
	cr_assert_eq(st.bytes_mapped, 4 * MiB);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(keel_buf_alloc(a, 4096, &s[i]), 0);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.bytes_in_use, 3 * 4096);
	cr_assert_eq(st.buffers_live, 3);
	keel_slice_put(&s[0]);
	keel_slice_put(&s[1]);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.bytes_in_use, 4096);
	cr_assert_eq(st.bytes_peak, 3 * 4096);
	keel_slice_put(&s[2]);
	keel_alloc_destroy(a);
}

#ifndef KEEL_BUF_TRACE
static void
quiet(int level, const char *msg, void *arg)
{
}

/* Without KEEL_BUF_TRACE a put after the last one is memory corruption: keel_verify aborts.
 * It is the generation check that stops it (the last put moved the header's generation
 * on); the refs > 0 check behind it is reached only by a put while a remote last put is on
 * its way home (alloc_export::a_put_while_the_last_one_travels_home_aborts). */
Test(alloc_buf, refcount_underflow_aborts, .signal = SIGABRT)
{
	struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_SLAB, 8 * MiB, 4 * MiB);
	struct keel_slice s, g;

	keel_alloc_log_set(quiet, NULL);
	cr_assert_eq(keel_buf_alloc(a, 100, &s), 0);
	keel_slice_get(&s, &g);
	keel_slice_put(&g);
	keel_slice_put(&s);
	keel_slice_put(&s); /* double put */
}
#else
Test(alloc_buf, refcount_underflow_aborts)
{
	cr_skip_test("built with KEEL_BUF_TRACE: a double put is reported, not aborted "
		     "(test_alloc_trace covers it)");
}
#endif

#ifndef KEEL_BUF_TRACE
/* The header of a freed buffer is reused by the next allocation: a second put through the
 * first slice must not drop the new buffer's reference (the slice's generation differs). */
Test(alloc_buf, double_put_after_header_reuse_aborts, .signal = SIGABRT)
{
	struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_SLAB, 8 * MiB, 4 * MiB);
	struct keel_slice s, stale, n;

	keel_alloc_log_set(quiet, NULL);
	cr_assert_eq(keel_buf_alloc(a, 100, &s), 0);
	stale = s;
	keel_slice_put(&s);
	cr_assert_eq(keel_buf_alloc(a, 100, &n), 0);
	cr_assert_eq(n.buf, stale.buf, "the header is reused (test premise)");
	keel_slice_put(&stale); /* aborts; without the check it freed n's buffer */
	keel_alloc_log_set(NULL, NULL);
	cr_assert_fail("a put through a stale slice returned (new buffer refs %u)",
		       keel_slice_refs(&n));
}
#endif

#ifndef KEEL_BUF_TRACE
/* The empty slice a refused call leaves, used anyway: its put aborted with a line, but a
 * sub, get or refs read the missing buffer (a bare SIGSEGV). Now each says so and aborts.
 * (With KEEL_BUF_TRACE it is reported and nothing done: test_alloc_trace.) */
static void
says_empty(int level, const char *msg, void *arg)
{
	(void)level, (void)arg;
	cr_assert(strstr(msg, "keel_slice_sub of an empty slice") &&
			  strstr(msg, "check the call's return"),
		  "the abort's line: '%s'", msg);
}

Test(alloc_buf, a_sub_of_an_empty_slice_aborts_saying_so, .signal = SIGABRT)
{
	struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_SLAB, 8 * MiB, 4 * MiB);
	struct keel_slice s, sub;

	cr_assert_eq(keel_buf_alloc(a, 0, &s), -EINVAL, "refused: s is left empty");
	keel_alloc_log_set(says_empty, NULL);
	keel_slice_sub(&s, 0, 0, &sub);
	keel_alloc_log_set(NULL, NULL);
	cr_assert_fail("a sub of an empty slice returned");
}
#endif

Test(alloc_buf, stats_call_returns_0_or_einval)
{
	struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_DEFAULT, 8 * MiB, 4 * MiB);
	struct keel_alloc_stats st;

	cr_assert_eq(keel_alloc_stats(a, &st), 0);
	cr_assert_eq(st.regions_max, 2);
	cr_assert_eq(keel_alloc_stats(NULL, &st), -EINVAL);
	cr_assert_eq(keel_alloc_stats(a, NULL), -EINVAL);
	keel_alloc_destroy(a);
}

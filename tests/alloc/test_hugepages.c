// SPDX-License-Identifier: MIT
/*
 * Huge pages that cannot be had when a region is first used. With --hugepages the pages are
 * reserved from the whole pool at start, but a region bound to one NUMA node takes them from
 * that node's share when faulted in; a node short of them while the pool has enough makes
 * that first touch a SIGBUS. A pre-fault (MADV_POPULATE_WRITE) fails cleanly instead, so a
 * region is never handed out before its pre-fault, and after a failed one allocations fail.
 * This machine has one node, so the failing pre-fault is a stand-in (keel__region_prefault_fn,
 * failing as that node would). Needs root to reserve 8 pages of 2 MiB (put back after); run
 * alone (ctest RUN_SERIAL): other tests count the free pages.
 */
#include <errno.h>
#include <keel/keel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../alloc/alloc_internal.h"
#include "helpers.h"

#define MiB  (1ULL << 20)
#define NR   "/proc/sys/vm/nr_hugepages"
#define FREE "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages"

static struct logcap cap = { PTHREAD_MUTEX_INITIALIZER, "", 0 };
static long nr_before = -1;
static int (*real_prefault)(void *p, uint64_t len);
static int prefaults;
static bool fail_after_first;

static bool
write_long(const char *path, long v)
{
	FILE *f = fopen(path, "w");
	bool ok;

	if (!f)
		return false;
	ok = fprintf(f, "%ld\n", v) > 0;
	return fclose(f) == 0 && ok;
}

static void
put_back(void)
{
	if (nr_before >= 0)
		write_long(NR, nr_before);
	nr_before = -1;
}

/* 8 more pages of 2 MiB in the pool, or skip. */
static void
reserve(void)
{
	long nr = read_long(NR);

	if (geteuid() != 0 || nr < 0 || read_long(FREE) < 0)
		cr_skip_test("needs root and 2 MiB huge pages to reserve 8 of them");
	nr_before = nr;
	if (!write_long(NR, nr + 8) || read_long(FREE) < 8) {
		put_back();
		cr_skip_test("could not reserve 8 huge pages of 2 MiB (memory too fragmented?)");
	}
}

static int
counting_prefault(void *p, uint64_t len)
{
	if (fail_after_first && prefaults++ > 0)
		return -ENOMEM; /* as MADV_POPULATE_WRITE says when the node has no page left */
	return real_prefault(p, len);
}

/* A grow hook that never gets to run (the runtime's would on a later loop pass). */
static int
grow_later(struct keel_alloc *a, void *ctx)
{
	(void)a;
	(void)ctx;
	return 0;
}

/* An allocator of 4 regions of 4 MiB on huge pages, with a grow hook that has not run. */
static struct keel_alloc *
huge_alloc(bool fail)
{
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 16 * MiB, 4 * MiB);
	struct keel_alloc *a = NULL;

	c.hugepages = true;
	c.grow = grow_later;
	prefaults = 0;
	fail_after_first = fail;
	real_prefault = keel__region_prefault_fn;
	keel__region_prefault_fn = counting_prefault;
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	cr_assert_eq(keel_alloc_create(&c, &a), 0);
	return a;
}

static void
huge_free(struct keel_alloc *a, bool last)
{
	keel_alloc_destroy(a);
	keel_alloc_log_set(NULL, NULL);
	keel__region_prefault_fn = real_prefault;
	if (last)
		put_back();
}

/* Allocate 64 KiB buffers until one fails or @n are held; returns how many were had. */
static int
fill(struct keel_alloc *a, struct keel_slice *s, int n)
{
	int i = 0;

	while (i < n && keel_buf_alloc(a, 64 * 1024, &s[i]) == 0)
		i++;
	return i;
}

/* Both cases in one test: they share the pool's reservation, which two tests running at
 * once (criterion's default) would change under each other.
 * - The grow hook has not pre-faulted region 1 yet when region 0 is full: the allocation
 *   pre-faults it itself (inline_prefaults), never hands it out unfaulted.
 * - Region 1's pre-fault fails (the node is short of huge pages): allocations beyond
 *   region 0 fail, with a line naming nr_hugepages, rather than touch pages that are not
 *   there (a SIGBUS on such a node). */
Test(alloc_hugepages, a_region_is_prefaulted_before_use_and_a_failed_prefault_fails_allocations,
     .fini = put_back)
{
	static struct keel_slice s[128];
	struct keel_alloc_stats st;
	struct keel_alloc *a;
	int got;

	reserve();
	a = huge_alloc(false);
	got = fill(a, s, 100); /* 64 in region 0, the rest in region 1 */
	cr_assert_eq(got, 100);
	cr_assert_eq(keel_alloc_stats(a, &st), 0);
	cr_assert_eq(st.regions_unprefaulted, 0, "a huge-page region was used unfaulted");
	cr_assert_geq(st.inline_prefaults, 1);
	for (int i = 0; i < got; i++)
		keel_slice_put(&s[i]);
	huge_free(a, false);

	a = huge_alloc(true);
	got = fill(a, s, 100);
	cr_assert_lt(got, 100, "allocations went on past the failed pre-fault");
	cr_assert_geq(got, 1);
	cr_assert_eq(keel_alloc_stats(a, &st), 0);
	cr_assert_eq(st.regions_unprefaulted, 0, "a huge-page region was used unfaulted");
	cr_assert(logcap_has(&cap, "nr_hugepages"), "log: %s", cap.text);
	for (int i = 0; i < got; i++)
		keel_slice_put(&s[i]);
	huge_free(a, true);
}

// SPDX-License-Identifier: MIT
/*
 * What the pre-fault learns of MADV_POPULATE_WRITE from its own answers (alloc/region.c,
 * prefault()): only EINVAL on the first pre-fault says the kernel lacks the advice, and is
 * kept; any other failure (ENOMEM from a memory cgroup at its limit that moment) fails that
 * region alone and is not remembered; once the advice worked, a later EINVAL is a failure,
 * not a switch to touching pages.
 *
 * This binary defines madvise() itself (keel's static libraries bind to it), counting the
 * MADV_POPULATE_WRITE calls and failing the next one with a chosen errno when asked;
 * every call goes on to the kernel otherwise. Its own binary, so that no other test's
 * madvise passes through it. Each test runs in a fresh process (Criterion forks), so the
 * process-wide "what the kernel has" starts unknown in each.
 */
#include <errno.h>
#include <keel/alloc.h>
#include <keel/alloc_runtime.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../helpers.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

#define MiB (1ULL << 20)

static _Atomic int populate_calls; /* MADV_POPULATE_WRITE calls seen */
static _Atomic int populate_fail;  /* non-zero: the next one fails with this errno */

int
madvise(void *addr, size_t len, int advice)
{
	if (advice == MADV_POPULATE_WRITE) {
		int e = atomic_exchange(&populate_fail, 0);

		atomic_fetch_add(&populate_calls, 1);
		if (e) {
			errno = e;
			return -1;
		}
	}
	return (int)syscall(SYS_madvise, addr, len, advice);
}

static struct logcap cap = { .lock = PTHREAD_MUTEX_INITIALIZER };

/* The tests say what keel does with the kernel's answers: they need a kernel that gives
 * the real one (5.14 or later), asked directly here, past the counter. */
static void
need_populate(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	void *p =
		mmap(NULL, (size_t)pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	long r;

	cr_assert_neq(p, MAP_FAILED);
	r = syscall(SYS_madvise, p, (size_t)pg, MADV_POPULATE_WRITE);
	munmap(p, (size_t)pg);
	if (r < 0 && errno == EINVAL)
		cr_skip_test("the kernel lacks MADV_POPULATE_WRITE (Linux 5.14)");
	cr_assert_eq(r, 0, "MADV_POPULATE_WRITE on a page of our own: %s", strerror(errno));
}

/* A standalone allocator of four 4 MiB regions; create pre-faults region 0. */
static int
make(struct keel_alloc **out)
{
	struct keel_alloc_config c = test_alloc_config(KEEL_ALLOC_BACKEND_SLAB, 16 * MiB, 4 * MiB);

	*out = NULL;
	return keel_alloc_create(&c, out);
}

/* ENOMEM on the first pre-fault fails that allocator's create; the next create asks the
 * kernel again (and is made). When any failure was kept as "the kernel lacks it", the next
 * create touched its pages without a system call, and every later pre-fault did: on huge
 * pages a shortage then comes as a SIGBUS instead of a clean failure. */
Test(alloc_populate, a_failure_other_than_einval_is_not_taken_for_a_kernel_without_it)
{
	struct keel_alloc *a;
	int r;

	need_populate();
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	atomic_store(&populate_fail, ENOMEM);
	r = make(&a);
	cr_assert_eq(r, -ENOMEM, "create with its pre-fault refused: %s", strerror(-r));
	cr_assert_eq(atomic_load(&populate_calls), 1);
	cr_assert(logcap_has(&cap, "not created"), "log: %s", cap.text);

	r = make(&a);
	cr_assert_eq(r, 0, "the second create: %s", strerror(-r));
	cr_assert_eq(atomic_load(&populate_calls), 2,
		     "the second create's pre-fault did not ask the kernel (%d calls): one "
		     "ENOMEM was kept as a kernel without MADV_POPULATE_WRITE",
		     atomic_load(&populate_calls));
	keel_alloc_destroy(a);
	keel_alloc_log_set(NULL, NULL);
}

/* The advice worked at create; region 1's pre-fault (inside an allocation: no grow hook)
 * then gets EINVAL. That is a failure of the region (logged, the region used as it is),
 * not news that the kernel lacks the advice: a later allocator still asks for it. */
Test(alloc_populate, einval_once_the_advice_worked_is_a_failure_not_a_switch_to_touching)
{
	struct keel_alloc *a, *b;
	struct keel_alloc_stats st;
	struct keel_slice s[2];
	int r;

	need_populate();
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	r = make(&a);
	cr_assert_eq(r, 0, "create: %s", strerror(-r));
	keel_alloc_bind_thread(a);
	cr_assert_eq(atomic_load(&populate_calls), 1);
	cr_assert_eq(keel_buf_alloc(a, 4 * MiB, &s[0]), 0); /* region 0 */
	atomic_store(&populate_fail, EINVAL);
	r = keel_buf_alloc(a, 4 * MiB, &s[1]); /* region 1, pre-faulted here */
	cr_assert_eq(r, 0, "the request that added the region: %s", strerror(-r));
	cr_assert_eq(atomic_load(&populate_calls), 2);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.regions_unprefaulted, 1,
		     "region 1's EINVAL was not a failure (%llu regions unprefaulted)",
		     (unsigned long long)st.regions_unprefaulted);
	cr_assert(logcap_has(&cap, "pre-faulting buffer region 1 failed (Invalid argument)"),
		  "log: %s", cap.text);
	memset(s[1].data, 1, s[1].len);

	r = make(&b);
	cr_assert_eq(r, 0, "a second allocator: %s", strerror(-r));
	cr_assert_eq(atomic_load(&populate_calls), 3,
		     "the second allocator's pre-fault did not ask the kernel (%d calls)",
		     atomic_load(&populate_calls));
	keel_alloc_destroy(b);
	keel_alloc_log_set(NULL, NULL);
	keel_slice_put(&s[0]);
	keel_slice_put(&s[1]);
	keel_alloc_destroy(a);
}

/* EINVAL on the first pre-fault: the kernel lacks the advice. The region's pages are
 * touched instead (create succeeds), and that answer is kept: no later pre-fault, of this
 * allocator or another, asks again. */
Test(alloc_populate, einval_on_the_first_prefault_touches_pages_and_is_kept)
{
	struct keel_alloc *a, *b;
	struct keel_alloc_stats st;
	struct keel_slice s[2];
	int r;

	need_populate();
	atomic_store(&populate_fail, EINVAL);
	r = make(&a);
	cr_assert_eq(r, 0, "create on a kernel without the advice: %s", strerror(-r));
	keel_alloc_bind_thread(a);
	cr_assert_eq(atomic_load(&populate_calls), 1);
	cr_assert_eq(keel_buf_alloc(a, 4 * MiB, &s[0]), 0);
	cr_assert_eq(keel_buf_alloc(a, 4 * MiB, &s[1]), 0); /* region 1, pre-faulted here */
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.inline_prefaults, 1);
	cr_assert_eq(st.regions_unprefaulted, 0, "touching the pages cannot fail");
	r = make(&b);
	cr_assert_eq(r, 0, "a second allocator: %s", strerror(-r));
	cr_assert_eq(atomic_load(&populate_calls), 1,
		     "%d MADV_POPULATE_WRITE calls after the kernel said it lacks it",
		     atomic_load(&populate_calls));
	keel_alloc_destroy(b);
	keel_slice_put(&s[0]);
	keel_slice_put(&s[1]);
	keel_alloc_destroy(a);
}

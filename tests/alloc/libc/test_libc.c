// SPDX-License-Identifier: MIT
/*
 * The default for embedders: a program linked with keel (core and alloc, not
 * keel_jemalloc) keeps the C library's malloc, and keel's general allocations come from
 * it. This binary does not link keel_jemalloc.
 */
#include <dlfcn.h>
#include <errno.h>
#include <keel/alloc.h>
#include <keel/keel.h>
#include <link.h>
#include <malloc.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../helpers.h"

static int
find_jemalloc(struct dl_phdr_info *info, size_t size, void *arg)
{
	if (info->dlpi_name && strstr(info->dlpi_name, "jemalloc")) {
		snprintf(arg, 256, "%s", info->dlpi_name);
		return 1;
	}
	return 0;
}

static struct keel_alloc *
make(enum keel_alloc_backend be, int *err)
{
	struct keel_alloc_config c = { .memory = 8ULL << 20, .backend = be };
	struct keel_alloc *a = NULL;

	*err = keel_alloc_create(&c, &a);
	return a;
}

Test(alloc_libc, linking_keel_leaves_malloc_to_the_c_library)
{
	char loaded[256] = "";
	Dl_info di;
	void *m = dlsym(RTLD_DEFAULT, "malloc");
	int r;
	/* Use the allocator (general allocation included), so its code is linked in. */
	struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_DEFAULT, &r);

	cr_assert_eq(r, 0, "keel_alloc_create: %s", strerror(-r));
	keel_alloc_free(a, keel_alloc_malloc(a, 64));
	keel_alloc_destroy(a);

	cr_assert(m, "malloc not found: %s", dlerror());
	cr_assert(dladdr(m, &di) && di.dli_fname, "dladdr(malloc) failed");
	/* glibc's libc.so.6, or a sanitizer's runtime in the sanitized builds. */
	cr_assert(!strstr(di.dli_fname, "jemalloc"), "malloc resolves to %s", di.dli_fname);
	dl_iterate_phdr(find_jemalloc, loaded);
	cr_assert_str_empty(loaded, "%s is loaded into a program that did not opt in", loaded);
}

Test(alloc_libc, general_allocation_comes_from_malloc)
{
	int r;
	struct keel_alloc *a = make(KEEL_ALLOC_BACKEND_DEFAULT, &r);
	char *p, *q;

	cr_assert_eq(r, 0, "keel_alloc_create: %s", strerror(-r));
	cr_assert_eq(keel_alloc_arena(a), KEEL_ALLOC_NO_ARENA);
	p = keel_alloc_malloc(a, 1000);
	cr_assert(p);
	memset(p, 0x5a, 1000);
	/* malloc's own bookkeeping knows the pointer: it is malloc's memory. */
	cr_assert_geq(malloc_usable_size(p), 1000);
	q = keel_alloc_realloc(a, p, 100000);
	cr_assert(q);
	cr_assert_eq(q[999], 0x5a);
	cr_assert_geq(malloc_usable_size(q), 100000);
	keel_alloc_free(a, q);
	keel_alloc_free(a, NULL);
	keel_alloc_destroy(a);
}

static struct logcap cap = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void
cap_log(int level, const char *msg, void *arg)
{
	logcap_add(&cap, msg);
}

Test(alloc_libc, jemalloc_backend_without_opting_in_is_refused_with_the_fix)
{
	int r;
	struct keel_alloc *a;

	keel_alloc_log_set(cap_log, NULL);
	a = make(KEEL_ALLOC_BACKEND_JEMALLOC, &r);
	keel_alloc_log_set(NULL, NULL);
	cr_assert_eq(r, -ENOTSUP, "got %d", r);
	cr_assert_null(a);
	cr_assert(logcap_has(&cap, "keel_jemalloc_enable()"), "log: %s", cap.text);
}

// SPDX-License-Identifier: MIT
/*
 * A host program against the installed keel: prints which object malloc resolves to and
 * whether keel's allocator got a jemalloc arena. Built twice by install_test.sh: with
 * `pkg-config keel` (the default: malloc stays the C library's, no arena) and, with
 * -DOPT_IN, with `pkg-config keel-jemalloc` and keel_jemalloc_enable().
 */
#include <dlfcn.h>
#include <keel/keel.h>
#include <stdio.h>
#ifdef OPT_IN
#include <keel/jemalloc.h>
#endif

int
main(void)
{
	struct keel_alloc_config c = { .memory = 8ULL << 20 };
	struct keel_alloc *a;
	Dl_info di;
	void *m;
	int r;

#ifdef OPT_IN
	keel_jemalloc_enable();
#endif
	r = keel_alloc_create(&c, &a);
	if (r < 0) {
		fprintf(stderr, "keel_alloc_create: %d\n", r);
		return 1;
	}
	keel_alloc_free(a, keel_alloc_malloc(a, 100));
	if (keel_alloc_arena(a) == KEEL_ALLOC_NO_ARENA)
		printf("arena: none\n");
	else
		printf("arena: %u\n", keel_alloc_arena(a));
	keel_alloc_destroy(a);
	m = dlsym(RTLD_DEFAULT, "malloc");
	if (!m || !dladdr(m, &di) || !di.dli_fname) {
		fprintf(stderr, "malloc not resolved\n");
		return 1;
	}
	printf("malloc: %s\n", di.dli_fname);
	return 0;
}

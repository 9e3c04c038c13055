// SPDX-License-Identifier: MIT
/* test_alloc opts in to jemalloc before any test runs (Criterion forks each test from the
 * process that ran this), as keel's own programs do. */
#include <keel/jemalloc.h>

static void __attribute__((constructor)) jemalloc_on(void)
{
	keel_jemalloc_enable();
}

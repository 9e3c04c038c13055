/* SPDX-License-Identifier: MIT */
/* Temporary directories of the tests that run keel-kv with --dir. */
#ifndef KEEL_TEST_TMPDIR_H
#define KEEL_TEST_TMPDIR_H

#include <stdio.h>
#include <stdlib.h>

#include <criterion/criterion.h>

/* Remove @d and everything in it, or fail the test. */
static inline void __attribute__((unused)) rm_dir(const char *d)
{
	char cmd[512];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d);
	cr_assert_eq(system(cmd), 0);
}

#endif

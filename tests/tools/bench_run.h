/* SPDX-License-Identifier: MIT */
/* Shared by the keel-bench suites of test_tools. */
#ifndef KEEL_TESTS_BENCH_RUN_H
#define KEEL_TESTS_BENCH_RUN_H

/*
 * Run "keel-bench ARGS" (stderr into stdout), wait for it and return its exit status; its
 * output, NUL-terminated, in *out (free it). Fails the test when it does not exit normally.
 */
int bench_once(const char *args, char **out);

#endif

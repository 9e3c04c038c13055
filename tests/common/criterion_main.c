// SPDX-License-Identifier: MIT
/*
 * The main of every Criterion suite: Criterion's own (libcriterion's main does the same three
 * calls), but for LeakSanitizer in the runner.
 *
 * The runner (this process) only starts and watches the workers: each test runs in a worker
 * process of its own, exec'ed afresh ("boxfort-worker"), which checks its own leaks at exit
 * and fails its test with them (checked: a test that leaks 77 bytes fails the suite with this
 * main). Criterion's runner itself loses one 48-byte allocation of its timeout watchdog now
 * and then when two workers run at once on a loaded machine (the test_core suite under ASan,
 * -j2, beside two busy loops: 3 of 4 runs, every test passed, then LeakSanitizer aborted the
 * runner at exit on "calloc <- libcriterion.so.3 <- criterion_run_all_tests <- main"). No
 * keel code runs here, so leak detection is off for the runner's thread; the workers' is not
 * touched.
 */
#include <stdio.h>

#include <criterion/criterion.h>
#include <criterion/hooks.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer) /* clang before 13 defines no __SANITIZE_ADDRESS__ */
#define KEEL_TEST_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define KEEL_TEST_ASAN 1
#endif
#ifdef KEEL_TEST_ASAN
#include <sanitizer/lsan_interface.h>
#endif

/* A test that skipped itself (cr_skip_test: root, a kernel feature, a KEEL_FAULTS build) says
 * so on stderr with its reason, at every verbosity: CTest keeps a passing entry's output
 * only in Testing/Temporary/LastTest.log, where tools/test.sh counts these lines, so a test
 * that did not run is never taken for one that passed. Tests left out by --filter are not
 * said (Criterion marks them disabled). */
ReportHook(POST_TEST)(struct criterion_test_stats *st)
{
	if (st->test_status != CR_STATUS_SKIPPED || (st->test->data && st->test->data->disabled))
		return;
	fprintf(stderr, "[SKIPPED] %s::%s: %s\n", st->test->category, st->test->name,
		st->message ? st->message : "(no reason given)");
}

/* Default visibility (the tree builds with hidden) and exported from the executable
 * (tests/CMakeLists.txt): libcriterion's own reference to main, which BoxFort patches in each
 * worker to enter the test instead, must find this one, not libcriterion's. */
__attribute__((visibility("default"))) int
main(int argc, char *argv[])
{
	struct criterion_test_set *tests = criterion_initialize();
	int result = 0;

#ifdef KEEL_TEST_ASAN
	__lsan_disable();
#endif
	if (criterion_handle_args(argc, argv, true))
		result = !criterion_run_all_tests(tests);
	criterion_finalize(tests);
	return result;
}

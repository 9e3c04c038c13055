/* SPDX-License-Identifier: MIT */
/*
 * Checks for code that runs off the test thread: shard callbacks (on_start, messages,
 * timers, completions, connection callbacks) and helper threads.
 *
 * Criterion's cr_assert ends a test by longjmp'ing to the test thread's frame; called on a
 * shard thread it jumps across threads onto another thread's stack (undefined behaviour:
 * under ASan a false cr_assert in a shard callback is a stack-buffer-overflow crash, not a
 * failure). SHARD_CHECK records the failure instead: a count, and the first message with
 * its file:line (each one is also printed to stderr at once). The code carries on (or
 * bails out itself: SHARD_CHECK is an expression that is false when the check failed),
 * and the test thread calls SHARD_CHECKS_PASSED() once the shards ended, before it looks
 * at the runtime's status (a failed check usually stops the runtime with an error):
 *
 *	if (!SHARD_CHECK_EQ(keel_timer_create(fn, arg, &t), 0)) {
 *		keel_stop(-EIO);
 *		return;
 *	}
 *	...
 *	int r = keel_run(&o, start, &st);
 *	SHARD_CHECKS_PASSED();
 *	cr_assert_eq(r, 0);
 *
 * The record is per test file (a static in each translation unit): Criterion runs every
 * test in a process of its own, so one test's failures never reach another.
 */
#ifndef KEEL_TEST_SHARD_CHECK_H
#define KEEL_TEST_SHARD_CHECK_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>

#include <criterion/criterion.h>

struct shard_check_record {
	pthread_mutex_t lock;
	unsigned failures;
	char first[512];
};

static struct shard_check_record shard_check_rec
	__attribute__((unused)) = { PTHREAD_MUTEX_INITIALIZER, 0, "" };

/* Record a failed check: @what is the checked expression (and values), @fmt the caller's
 * message (starting with a space, or just " "). Returns false, for SHARD_CHECK. */
static inline bool __attribute__((format(printf, 4, 5), unused))
shard_check_fail(const char *file, int line, const char *what, const char *fmt, ...)
{
	char msg[384];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s:%d: check failed off the test thread: %s%s\n", file, line, what, msg);
	pthread_mutex_lock(&shard_check_rec.lock);
	if (shard_check_rec.failures++ == 0)
		snprintf(shard_check_rec.first, sizeof(shard_check_rec.first), "%s:%d: %s%s", file,
			 line, what, msg);
	pthread_mutex_unlock(&shard_check_rec.lock);
	return false;
}

/* The same for a failed SHARD_CHECK_EQ: @expr with both values, then the message. */
static inline bool __attribute__((format(printf, 6, 7), unused))
shard_check_fail_eq(const char *file, int line, const char *expr, long long a, long long b,
		    const char *fmt, ...)
{
	char what[256], msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(what, sizeof(what), "%s (%lld, want %lld)", expr, a, b);
	return shard_check_fail(file, line, what, "%s", msg);
}

/* True when @cond holds; otherwise records the failure and is false. An optional message
 * follows: SHARD_CHECK(n > 0, "shard %u got nothing", id) (the format a string literal). */
#define SHARD_CHECK(cond, ...)                                                        \
	({                                                                            \
		bool ok_ = (cond);                                                    \
		if (!ok_)                                                             \
			shard_check_fail(__FILE__, __LINE__, #cond, " " __VA_ARGS__); \
		ok_;                                                                  \
	})

/* Record a failure outright: SHARD_FAIL("write of buffer %u: %d", i, res). */
#define SHARD_FAIL(...) ((void)shard_check_fail(__FILE__, __LINE__, "", __VA_ARGS__))

/* SHARD_CHECK(a == b) that also records both values (as long long); each is evaluated
 * once. */
#define SHARD_CHECK_EQ(a, b, ...)                                                     \
	({                                                                            \
		long long a_ = (long long)(a), b_ = (long long)(b);                   \
		if (a_ != b_)                                                         \
			shard_check_fail_eq(__FILE__, __LINE__, #a " == " #b, a_, b_, \
					    " " __VA_ARGS__);                         \
		a_ == b_;                                                             \
	})

/* On the test thread, after the shards ended: fail the test if any check failed. */
#define SHARD_CHECKS_PASSED()                                                                    \
	do {                                                                                     \
		pthread_mutex_lock(&shard_check_rec.lock);                                       \
		unsigned n_ = shard_check_rec.failures;                                          \
		pthread_mutex_unlock(&shard_check_rec.lock);                                     \
		cr_assert_eq(n_, 0, "%u check(s) failed off the test thread; the first: %s", n_, \
			     shard_check_rec.first);                                             \
	} while (0)

#endif

/* SPDX-License-Identifier: MIT */
/*
 * Waits with a deadline, for the test thread. Every wait in the suites ends: when what it
 * waits for does not happen within TEST_WAIT_MS, the test fails with a message that names
 * what it waited for, long before Criterion's --timeout would kill it without one.
 *
 * TEST_WAIT_MS is far above what any wait needs on a loaded two-core machine under the
 * sanitizer, so only a real hang reaches it: tests never depend on timing.
 */
#ifndef KEEL_TEST_WAIT_H
#define KEEL_TEST_WAIT_H

#include <errno.h>
#include <poll.h>
#include <semaphore.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#ifndef TEST_WAIT_MS /* -DTEST_WAIT_MS=2000 shows a timeout quickly */
#define TEST_WAIT_MS 30000
#endif

static inline uint64_t __attribute__((unused)) test_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A deadline @ms from now, for waits that loop themselves (shard callbacks included). */
static inline uint64_t __attribute__((unused)) test_deadline(unsigned ms)
{
	return test_now_ms() + ms;
}

/* Waits for @sem to be posted, up to TEST_WAIT_MS (EINTR goes on waiting): false when it
 * was not by then, for the caller to fail with what it waited for. */
static inline bool __attribute__((unused)) test_sem_wait(sem_t *sem)
{
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += TEST_WAIT_MS / 1000;
	while (sem_timedwait(sem, &dl) != 0)
		if (errno != EINTR)
			return false;
	return true;
}

static inline bool __attribute__((unused)) test_expired(uint64_t deadline)
{
	return test_now_ms() >= deadline;
}

/* Sleep a little between looks: 1 ms keeps a waiting test thread off the CPUs the shards
 * need (these machines have two). */
static inline void __attribute__((unused)) test_pause(void)
{
	struct timespec ts = { 0, 1000000 };
	nanosleep(&ts, NULL);
}

/*
 * Wait until @cond holds, looking every millisecond, for at most @ms; then fail the test
 * naming the condition and the optional message (a format string literal and arguments):
 *	WAIT_UNTIL(atomic_load(&closes) == 1, TEST_WAIT_MS, "on_close of connection %d", i);
 */
#define WAIT_UNTIL(cond, ms, ...) WAIT_UNTIL_(cond, #cond, ms, __VA_ARGS__)

/* WAIT_UNTIL with the suite's deadline. */
#define WAIT_FOR(cond, ...) WAIT_UNTIL_(cond, #cond, TEST_WAIT_MS, __VA_ARGS__)

/* (The condition is stringified by the macro the test calls, before its macros expand.) */
#define WAIT_UNTIL_(cond, text, ms, ...)                                                   \
	do {                                                                               \
		uint64_t wait_dl_ = test_deadline(ms);                                     \
		while (!(cond)) {                                                          \
			if (test_expired(wait_dl_)) {                                      \
				char wait_what_[256];                                      \
				snprintf(wait_what_, sizeof(wait_what_), " " __VA_ARGS__); \
				cr_assert_fail("timed out after %u ms waiting for (%s)%s", \
					       (unsigned)(ms), text, wait_what_);          \
			}                                                                  \
			test_pause();                                                      \
		}                                                                          \
	} while (0)

/* poll() a descriptor for @events, riding out signals, for at most @ms; when nothing came,
 * kill @child (if not 0: a forked child that would outlive the failed test) and fail the
 * test naming @what. Returns the revents. */
#define wait_fd(fd, events, ms, child, what) \
	wait_fd_(fd, events, ms, child, what, __FILE__, __LINE__)
static inline short __attribute__((unused)) wait_fd_(int fd, short events, unsigned ms, pid_t child,
						     const char *what, const char *file, int line)
{
	struct pollfd pf = { .fd = fd, .events = events };
	uint64_t dl = test_deadline(ms);
	int r;

	for (;;) {
		uint64_t now = test_now_ms();
		r = poll(&pf, 1, now >= dl ? 0 : (int)(dl - now));
		if (r < 0 && errno == EINTR)
			continue;
		break;
	}
	if (r <= 0 && child > 0) {
		int e = errno;
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		errno = e;
	}
	cr_assert_gt(r, 0, "%s:%d: waiting for %s: %s after %u ms", file, line, what,
		     r < 0 ? strerror(errno) : "nothing", ms);
	return pf.revents;
}

/*
 * Wait for child @pid to exit, for at most @ms; on the deadline kill it (SIGKILL, then
 * reap) and fail the test naming @what. Returns the wait status.
 */
#define wait_child(pid, ms, what) wait_child_(pid, ms, what, __FILE__, __LINE__)
static inline int __attribute__((unused))
wait_child_(pid_t pid, unsigned ms, const char *what, const char *file, int line)
{
	uint64_t dl = test_deadline(ms);
	int status = 0;
	pid_t r;

	while ((r = waitpid(pid, &status, WNOHANG)) == 0 || (r < 0 && errno == EINTR)) {
		if (test_expired(dl)) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			cr_assert_fail("%s:%d: waiting for %s: child %d still running after %u "
				       "ms (killed)",
				       file, line, what, (int)pid, ms);
		}
		test_pause();
	}
	cr_assert_eq(r, pid, "%s:%d: waiting for %s: waitpid: %s", file, line, what,
		     strerror(errno));
	return status;
}

/*
 * Run @fn() in a forked child, for a case that changes the process (its limits, signal
 * handlers, descriptors): @fn returns 0, or the number of the step that failed (after
 * saying why on stderr). Fails the test naming that step, or a child that died or hung.
 */
#define run_in_child(fn) run_in_child_(fn, #fn, __FILE__, __LINE__)
static inline void __attribute__((unused))
run_in_child_(int (*fn)(void), const char *what, const char *file, int line)
{
	pid_t pid = fork();
	int st;

	cr_assert_geq(pid, 0, "%s:%d: fork: %s", file, line, strerror(errno));
	if (pid == 0)
		_exit(fn());
	st = wait_child_(pid, TEST_WAIT_MS, what, file, line);
	cr_assert(WIFEXITED(st), "%s:%d: %s died: status %#x", file, line, what, st);
	cr_assert_eq(WEXITSTATUS(st), 0, "%s:%d: %s failed at step %d (see its stderr)", file, line,
		     what, WEXITSTATUS(st));
}

/*
 * Read what child @pid writes to @fd until EOF (at most @len - 1 bytes kept, NUL
 * terminated), then wait for it to exit, all within @ms; on the deadline kill it and fail
 * the test naming @what and showing the output so far. Returns the wait status.
 */
#define wait_child_output(pid, fd, out, len, ms, what) \
	wait_child_output_(pid, fd, out, len, ms, what, __FILE__, __LINE__)
static inline int __attribute__((unused))
wait_child_output_(pid_t pid, int fd, char *out, size_t len, unsigned ms, const char *what,
		   const char *file, int line)
{
	uint64_t dl = test_deadline(ms);
	size_t got = 0;

	out[0] = 0;
	for (;;) {
		uint64_t now = test_now_ms();
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		char drop[256];
		ssize_t n;
		int r = poll(&pf, 1, now >= dl ? 0 : (int)(dl - now));

		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			cr_assert_fail("%s:%d: waiting for %s: child %d not done after %u ms "
				       "(killed); output: %s",
				       file, line, what, (int)pid, ms, out);
		}
		cr_assert_gt(r, 0, "%s:%d: waiting for %s: poll: %s", file, line, what,
			     strerror(errno));
		/* Past @len, keep reading (and dropping) so the child never blocks on us. */
		if (got + 1 < len)
			n = read(fd, out + got, len - 1 - got);
		else
			n = read(fd, drop, sizeof(drop));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (got + 1 < len) {
			got += (size_t)n;
			out[got] = 0;
		}
	}
	{
		uint64_t now = test_now_ms();
		return wait_child_(pid, now >= dl ? 1 : (unsigned)(dl - now), what, file, line);
	}
}

/*
 * Run @fn(@arg) in a child whose stderr goes to @out (as wait_child_output keeps it), for a
 * run that is to abort with keel's own line; the child exits 0 if @fn returns. Returns the
 * wait status (within TEST_WAIT_MS, else the test fails naming @what).
 */
#define run_child_stderr(fn, arg, out, len, what) \
	run_child_stderr_(fn, arg, out, len, what, __FILE__, __LINE__)
static inline int __attribute__((unused))
run_child_stderr_(void (*fn)(void *), void *arg, char *out, size_t len, const char *what,
		  const char *file, int line)
{
	int pfd[2], st;
	pid_t pid;

	cr_assert_eq(pipe(pfd), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		dup2(pfd[1], 2);
		close(pfd[0]);
		fn(arg);
		_exit(0);
	}
	close(pfd[1]);
	st = wait_child_output_(pid, pfd[0], out, len, TEST_WAIT_MS, what, file, line);
	close(pfd[0]);
	return st;
}

#endif

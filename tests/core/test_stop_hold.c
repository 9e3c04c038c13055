// SPDX-License-Identifier: MIT
/* The stop's hold (core/hooks.h, keel__stop_hold): a stop hook that takes one keeps the
 * stop's cancel of everything in flight off until it is released (a read of a pipe then
 * completes with its bytes, not -ECANCELED), the 10 s line names it, and past
 * opts.stop_flush_ms core takes it back, calls its expire, and cancels. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../core/hooks.h"
#include "helpers.h"

extern uint64_t keel__stop_say_ns;

static struct {
	struct keel_op op;
	int fd[2];
	char buf[16];
	_Atomic int res, done, hooked, expired, said;
	int hold_r;
	struct keel__stop_hold hold;
	char line[512];
} sh;

static void
sh_read_done(struct keel_op *op, int res, uint32_t flags)
{
	(void)op;
	(void)flags;
	atomic_store(&sh.res, res);
	atomic_store(&sh.done, 1);
	keel__stop_release(&sh.hold); /* nothing once core took it back */
}

static void
sh_expire(struct keel__stop_hold *h)
{
	(void)h;
	atomic_fetch_add(&sh.expired, 1);
}

static void
sh_hook(void *arg)
{
	(void)arg;
	sh.hold_r = keel__stop_hold(&sh.hold, sh_expire, "the test's pipe read");
	atomic_store(&sh.hooked, 1);
}

static void
sh_start(void *arg)
{
	struct io_uring_sqe *sqe = keel_sqe_get();

	(void)arg;
	if (!SHARD_CHECK(sqe != NULL, "keel_sqe_get()")) {
		keel_stop(-EIO);
		return;
	}
	io_uring_prep_read(sqe, sh.fd[0], sh.buf, sizeof(sh.buf), 0);
	sh.op.fn = sh_read_done;
	keel_sqe_bind(sqe, &sh.op);
	SHARD_CHECK_EQ(keel_shard_on_stop(sh_hook, NULL), 0);
	/* Outside the stop hooks a hold is refused: it could postpone no cancel. */
	SHARD_CHECK_EQ(keel__stop_hold(&sh.hold, sh_expire, "early"), -EINVAL);
}

static void
sh_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module;
	(void)shard;
	(void)arg;
	if (level == KEEL_LOG_WARN && strstr(msg, "a stop hold: the test's pipe read") &&
	    !atomic_load(&sh.said)) {
		snprintf(sh.line, sizeof(sh.line), "%s", msg);
		atomic_store(&sh.said, 1);
	}
}

static struct keel_runtime *
sh_run(unsigned flush_ms)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;

	memset(&sh, 0, sizeof(sh));
	cr_assert_eq(pipe(sh.fd), 0);
	o.stop_flush_ms = flush_ms;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, sh_start, NULL), 0);
	keel_runtime_stop(rt, 0);
	WAIT_FOR(atomic_load(&sh.hooked), "the stop hook");
	return rt;
}

/* Held (a bound of 60 s, a hang guard), the read is not cancelled: the stop says what holds
 * it, the bytes written after that complete it, its callback releases the hold, and the
 * stop ends. */
Test(core_stop_hold, a_held_stop_cancels_nothing_until_released_and_says_so, .timeout = 120)
{
	uint64_t was = keel__stop_say_ns;
	struct keel_runtime *rt;

	keel__stop_say_ns = 50 * 1000000ull;
	keel_log_set_sink(sh_sink, NULL);
	rt = sh_run(60000);
	cr_assert_eq(sh.hold_r, 0);
	WAIT_FOR(atomic_load(&sh.said), "the stop's line naming the hold");
	cr_assert_eq(atomic_load(&sh.done), 0, "the read ended while held: %d",
		     atomic_load(&sh.res));
	cr_assert_eq(write(sh.fd[1], "flush", 5), 5);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_log_set_sink(NULL, NULL);
	keel__stop_say_ns = was;
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&sh.res), 5, "the read: %d", atomic_load(&sh.res));
	cr_assert_eq(atomic_load(&sh.expired), 0);
	cr_assert_not_null(strstr(sh.line, "--stop-flush-ms 60000"), "%s", sh.line);
	cr_assert_not_null(strstr(sh.line, "not cancelled while the stop is held"), "%s", sh.line);
	close(sh.fd[0]);
	close(sh.fd[1]);
}

/* A hold never released: past --stop-flush-ms core takes it back, its expire runs once, and
 * the stop goes on with its cancel (the read ends with -ECANCELED). */
Test(core_stop_hold, a_hold_never_released_expires_and_the_stop_cancels, .timeout = 120)
{
	struct keel_runtime *rt = sh_run(20);

	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(sh.hold_r, 0);
	cr_assert_eq(atomic_load(&sh.expired), 1);
	cr_assert_eq(atomic_load(&sh.res), -ECANCELED, "the read: %d", atomic_load(&sh.res));
	close(sh.fd[0]);
	close(sh.fd[1]);
}

/* Without --stop-flush-ms a hook's hold is refused and the stop cancels at once. */
Test(core_stop_hold, without_stop_flush_ms_a_hold_is_refused)
{
	struct keel_runtime *rt = sh_run(0);

	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(sh.hold_r, -EINVAL);
	cr_assert_eq(atomic_load(&sh.res), -ECANCELED);
}

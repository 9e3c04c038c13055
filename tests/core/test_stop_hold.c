// SPDX-License-Identifier: MIT
/* The stop's hold (core/hooks.h, keel__stop_hold): a stop hook that takes one keeps the
 * stop's cancel of everything in flight off until it is released (a read of a pipe then
 * completes with its bytes, not -ECANCELED), the 10 s line names it, and past
 * opts.stop_flush_ms core takes it back, calls its expire, and cancels. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../core/hooks.h"
#include "helpers.h"
#include "keel/file.h"

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

/* Only the hooks' requests and their chains drain, held or not: a chain of disk reads the
 * shard was running when the stop began (each callback makes the next read) completes its
 * read while the stop is held, and its next read is refused, while the hook's write goes in
 * after the cancel and completes. Before, every request made while held was taken as one of
 * the hooks' (they were "running" until the cancel), so the chain joined the drain and kept
 * the stop going for ever (the chain ends itself here at CH_CAP reads). */
#define CH_CAP 1000

static struct {
	struct keel_file_req rd, w;
	struct keel_file f;
	struct keel__stop_hold hold;
	char buf[1];
	bool stopping;
	int after, refused_r, w_res, hold_r;
} ch;

static void
ch_read_cb(struct keel_file_req *req, int res, void *arg)
{
	int r;

	(void)req;
	(void)res;
	(void)arg;
	if (ch.stopping && ++ch.after > CH_CAP)
		return;
	r = keel_file_read(&ch.rd, &ch.f, ch.buf, 1, 0, ch_read_cb, NULL);
	if (r < 0)
		ch.refused_r = r;
}

static void
ch_write_cb(struct keel_file_req *req, int res, void *arg)
{
	(void)req;
	(void)arg;
	ch.w_res = res;
}

static void
ch_hook(void *arg)
{
	(void)arg;
	ch.stopping = true;
	/* Never released: it expires at --stop-flush-ms, after the chain's read completed. */
	ch.hold_r = keel__stop_hold(&ch.hold, sh_expire, "the chain test");
	SHARD_CHECK_EQ(keel_file_write(&ch.w, &ch.f, "h", 1, 0, ch_write_cb, NULL), 0);
}

static void
ch_start(void *arg)
{
	(void)arg;
	SHARD_CHECK_EQ(keel_shard_on_stop(ch_hook, NULL), 0);
	SHARD_CHECK_EQ(keel_file_read(&ch.rd, &ch.f, ch.buf, 1, 0, ch_read_cb, NULL), 0);
	keel_stop(0);
}

Test(core_stop_hold, a_chain_running_at_a_held_stop_does_not_join_the_hooks_drain, .timeout = 120)
{
	struct keel_opts o = test_opts(1);
	char path[] = "/tmp/keel-stop-hold-XXXXXX";
	int fd = mkstemp(path);

	cr_assert_geq(fd, 0);
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(write(fd, "x", 1), 1);
	cr_assert_eq(keel_file_from_fd(fd, &ch.f), 0);
	memset(&sh, 0, sizeof(sh));
	o.stop_flush_ms = 50;
	cr_assert_eq(keel_run(&o, ch_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(ch.hold_r, 0);
	cr_assert_eq(atomic_load(&sh.expired), 1);
	cr_assert_leq(ch.after, 1, "%d reads of the chain ran after the stop began", ch.after);
	cr_assert_eq(ch.refused_r, -ESHUTDOWN, "the chain's next read: %d", ch.refused_r);
	cr_assert_eq(ch.w_res, 1, "the hook's write: %d", ch.w_res);
	close(fd);
}

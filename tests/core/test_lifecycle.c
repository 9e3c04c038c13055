// SPDX-License-Identifier: MIT
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

/* ---- signals ---- */

struct busy {
	_Atomic uint64_t msgs;
	_Atomic int hooks;
	_Atomic int signalled;
	_Atomic int refused;
};
static struct busy *busy_g;

static void busy_bounce(void *arg);

static void
busy_bounce(void *arg)
{
	struct keel_shard *sh = keel_this_shard();
	unsigned n = keel_shard_count(sh);
	/* The count from this shard's own increment: shards count at once, so a load after
	 * the send might never see exactly 10,000. */
	uint64_t seen = atomic_fetch_add(&busy_g->msgs, 1) + 1;

	/* Keep the runtime busy: every message begets one to the next shard, until the
	 * runtime refuses new ones because it is stopping. */
	if (keel_send((keel_shard_id(sh) + 1) % n, busy_bounce, arg) == -ESHUTDOWN)
		atomic_fetch_add(&busy_g->refused, 1);
	if (seen >= 10000 && !atomic_exchange(&busy_g->signalled, 1))
		kill(getpid(), SIGTERM);
}

static void
on_stop_hook(void *arg)
{
	atomic_fetch_add(&busy_g->hooks, 1);
}

static void
busy_start(void *app)
{
	keel_shard_on_stop(on_stop_hook, NULL);
	for (int i = 0; i < 8; i++)
		keel_send(keel_shard_id(keel_this_shard()), busy_bounce, NULL);
}

Test(core_lifecycle, sigterm_stops_a_busy_runtime_cleanly, .timeout = 60)
{
	struct keel_opts o = test_opts(3);
	struct busy b = { 0 };

	busy_g = &b;
	o.signals = true;
	cr_assert_eq(keel_run(&o, busy_start, NULL), 0);
	cr_assert_geq(atomic_load(&b.msgs), 10000);
	cr_assert_eq(atomic_load(&b.hooks), 3, "stop hooks ran %d times", atomic_load(&b.hooks));
	/* Exactly the 24 bouncing chains ended, each with one refused send. */
	cr_assert_eq(atomic_load(&b.refused), 24);
}

/* A second signal exits at once, even when the runtime cannot finish stopping. Runs in a
 * forked child: it ends the process. */
static int sig_pipe[2];

static void
never_quiescent(void *arg)
{
	keel_defer(never_quiescent, arg); /* deferred work pending forever */
}

static void
hook_report_stopping(void *arg)
{
	keel_defer(never_quiescent, NULL);
	if (write(sig_pipe[1], "s", 1) != 1)
		_exit(99);
}

static void
sig_child_start(void *app)
{
	if (keel_shard_id(keel_this_shard()) == 0) {
		keel_shard_on_stop(hook_report_stopping, NULL);
		if (write(sig_pipe[1], "r", 1) != 1)
			_exit(99);
	}
}

/* A pipe into @fds and a forked child that runs @shards shards with signals on, @start on
 * each; the child exits 0 when keel_run returns 0, else 1. */
static pid_t
fork_signal_child(int fds[2], keel_shard_fn start, unsigned shards)
{
	pid_t pid;

	cr_assert_eq(pipe(fds), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct keel_opts o = test_opts(shards);
		o.signals = true;
		keel_log_set_level(KEEL_LOG_ERROR);
		_exit(keel_run(&o, start, NULL) == 0 ? 0 : 1);
	}
	return pid;
}

/* Sends @pid a SIGINT, its second signal: it must exit with 128 + SIGINT within @ms. Closes
 * @fds, fork_signal_child's pipe. */
static void
second_sigint_exits(pid_t pid, int fds[2], int ms, const char *what)
{
	int status;

	kill(pid, SIGINT);
	status = wait_child(pid, ms, what);
	cr_assert(WIFEXITED(status), "child did not exit: status 0x%x", status);
	cr_assert_eq(WEXITSTATUS(status), 128 + SIGINT);
	close(fds[0]);
	close(fds[1]);
}

/* A child of @shards shards running @start, which writes r to sig_pipe once started and s
 * from its stop hook: @first must begin the stop, and a SIGINT after it end the child at
 * once (@what: that exit, for the message). */
static void
stop_then_exit(keel_shard_fn start, unsigned shards, int first, const char *what)
{
	pid_t pid = fork_signal_child(sig_pipe, start, shards);
	char c;

	wait_fd(sig_pipe[0], POLLIN, TEST_WAIT_MS, pid, "the child's runtime to start");
	cr_assert_eq(read(sig_pipe[0], &c, 1), 1);
	cr_assert_eq(c, 'r');
	kill(pid, first);
	wait_fd(sig_pipe[0], POLLIN, TEST_WAIT_MS, pid, "the stop hook after the first signal");
	cr_assert_eq(read(sig_pipe[0], &c, 1), 1);
	cr_assert_eq(c, 's', "the first signal did not begin the stop");
	second_sigint_exits(pid, sig_pipe, TEST_WAIT_MS, what);
}

Test(core_lifecycle, second_signal_forces_exit, .timeout = 60)
{
	stop_then_exit(sig_child_start, 2, SIGTERM, "exit on the second signal");
}

/* core/internal.h: while non-zero, each arming of keel's own read or poll finds no SQE. */
extern _Atomic unsigned keel__fault_internal_nosqe;

/* A shard whose signal poll finds no SQE when the first signal re-arms it arms it again
 * later: the second signal still exits at once. One shard, so no other shard's poll can
 * read it instead. The child says r (started), s (stopping; the failed re-arm happened). */
static void
rearm_stopping(void *arg)
{
	char c = 's';

	(void)arg;
	keel_defer(never_quiescent, NULL);
	/* The fault must be used by now. With one shard nothing wakes the eventfd read, so
	 * the only arm since the start is the poll's, which the signal's completion re-armed
	 * before the stop hooks ran. */
	if (atomic_load(&keel__fault_internal_nosqe) != 0 || write(sig_pipe[1], &c, 1) != 1)
		_exit(99);
}

static void
rearm_start(void *app)
{
	char c = 'r';

	(void)app;
	keel_shard_on_stop(rearm_stopping, NULL);
	atomic_store(&keel__fault_internal_nosqe, 1); /* the next arming of a read of keel's */
	if (write(sig_pipe[1], &c, 1) != 1)
		_exit(99);
}

Test(core_lifecycle, a_signal_poll_rearmed_without_an_sqe_still_takes_the_second_signal,
     .timeout = 60)
{
	stop_then_exit(rearm_start, 1, SIGINT,
		       "the exit on the second signal, its poll re-armed late");
}

/* Two runtimes with signals on in one process: one SIGTERM stops both. Each runtime's shards
 * read the signals through signalfds of their own, and a process-directed signal is read by
 * one shard only: the other runtime ran on, and its join never returned. */
static void
two_rt_start(void *app)
{
	if (write(sig_pipe[1], app, 1) != 1)
		_exit(99);
}

static int
two_rt_child(void)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *a, *b;

	o.signals = true;
	keel_log_set_level(KEEL_LOG_ERROR);
	if (keel_runtime_create(&o, &a) < 0 || keel_runtime_create(&o, &b) < 0)
		return 10;
	if (keel_runtime_start(a, two_rt_start, "a") < 0 ||
	    keel_runtime_start(b, two_rt_start, "b") < 0)
		return 11;
	if (keel_runtime_join(b) != 0 || keel_runtime_join(a) != 0)
		return 12;
	keel_runtime_destroy(b);
	keel_runtime_destroy(a);
	return 0;
}

/* Run @child in a child process until both its runtimes started, send it @sig (0: none),
 * and check it exits with 0 (else the step it failed at, or the signal that ended it). */
static void
two_rt_run(int (*child)(void), int sig, const char *what)
{
	pid_t pid;
	char c[2];
	int status;

	cr_assert_eq(pipe(sig_pipe), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(child());
	for (int i = 0; i < 2; i++) {
		wait_fd(sig_pipe[0], POLLIN, TEST_WAIT_MS, pid, "both runtimes to start");
		cr_assert_eq(read(sig_pipe[0], &c[i], 1), 1);
	}
	if (sig)
		kill(pid, sig);
	status = wait_child(pid, TEST_WAIT_MS, what);
	cr_assert(WIFEXITED(status), "child did not exit: status 0x%x (signal %d)", status,
		  WIFSIGNALED(status) ? WTERMSIG(status) : 0);
	cr_assert_eq(WEXITSTATUS(status), 0, "the child failed at step %d", WEXITSTATUS(status));
	close(sig_pipe[0]);
	close(sig_pipe[1]);
}

Test(core_lifecycle, one_signal_stops_every_runtime_that_reads_signals, .timeout = 60)
{
	two_rt_run(two_rt_child, SIGTERM, "both runtimes to stop on one SIGTERM");
}

/* Two runtimes with signals started on one thread, joined in the order they started: the
 * join of the first leaves SIGINT and SIGTERM blocked while the second runs (its shard 0
 * reads them: a SIGTERM then stops it), and the join of the second gives the thread back
 * the mask it had before the first. Each restored the mask its own start found: the first
 * join unblocked them under the second runtime (the SIGTERM killed the process), and the
 * second restored them blocked, for good (a review's runs). */
static bool
sigterm_blocked(void)
{
	sigset_t now;

	pthread_sigmask(SIG_SETMASK, NULL, &now);
	return sigismember(&now, SIGTERM) == 1 && sigismember(&now, SIGINT) == 1;
}

static int
in_order_child(void)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *a, *b;

	o.signals = true;
	keel_log_set_level(KEEL_LOG_ERROR);
	if (sigterm_blocked())
		return 10;
	if (keel_runtime_create(&o, &a) < 0 || keel_runtime_create(&o, &b) < 0)
		return 11;
	if (keel_runtime_start(a, two_rt_start, "a") < 0 ||
	    keel_runtime_start(b, two_rt_start, "b") < 0)
		return 12;
	keel_runtime_stop(a, 0);
	if (keel_runtime_join(a) != 0)
		return 13;
	if (!sigterm_blocked())
		return 14;       /* unblocked while b runs */
	kill(getpid(), SIGTERM); /* b's to take */
	if (keel_runtime_join(b) != 0)
		return 15;
	if (sigterm_blocked())
		return 16; /* the mask from before the first start was not given back */
	keel_runtime_destroy(b);
	keel_runtime_destroy(a);
	return 0;
}

Test(core_lifecycle, runtimes_joined_in_the_order_they_started_keep_the_signals_right,
     .timeout = 60)
{
	two_rt_run(in_order_child, 0, "the child to join both runtimes");
}

/* keel_runtime_destroy without a join, on another thread than the one that started the
 * runtime (signals on): that thread cannot give the starting thread its mask back, so it
 * says so, naming the fix; and the starting thread's next runtime, joined where it started,
 * gives back the mask it had before the first. The starting thread's count of its starts
 * kept the first, so its later joins never unblocked SIGINT and SIGTERM, and nothing was
 * said. */
static _Atomic int wrong_thread_lines;

static void
wrong_thread_sink(enum keel_log_level level, const char *module, int shard, const char *msg,
		  void *arg)
{
	if (level == KEEL_LOG_ERROR && strstr(msg, "another thread than the one that started") &&
	    strstr(msg,
		   "call keel_runtime_join on the starting thread before keel_runtime_destroy"))
		atomic_fetch_add(&wrong_thread_lines, 1);
}

static void *
destroy_elsewhere(void *rt)
{
	keel_runtime_destroy(rt);
	return NULL;
}

Test(core_lifecycle, a_destroy_on_another_thread_says_so_and_the_mask_comes_back_later)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *a, *b;
	pthread_t t;

	o.signals = true;
	cr_assert(!sigterm_blocked(), "the test thread blocks SIGTERM already");
	keel_log_set_sink(wrong_thread_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &a), 0);
	cr_assert_eq(keel_runtime_start(a, NULL, NULL), 0);
	cr_assert_eq(pthread_create(&t, NULL, destroy_elsewhere, a), 0);
	cr_assert_eq(pthread_join(t, NULL), 0);
	cr_assert_eq(atomic_load(&wrong_thread_lines), 1,
		     "%d ERROR lines naming the fix for the destroy on another thread, want 1",
		     atomic_load(&wrong_thread_lines));
	cr_assert(sigterm_blocked(), "another thread cannot unblock this one's signals");
	cr_assert_eq(keel_runtime_create(&o, &b), 0);
	cr_assert_eq(keel_runtime_start(b, NULL, NULL), 0);
	keel_runtime_stop(b, 0);
	cr_assert_eq(keel_runtime_join(b), 0);
	keel_runtime_destroy(b);
	keel_log_set_sink(NULL, NULL);
	cr_assert(!sigterm_blocked(), "SIGINT and SIGTERM still blocked on the starting thread "
				      "after it joined a runtime it started");
	cr_assert_eq(atomic_load(&wrong_thread_lines), 1);
}

/* With every thread-specific key of the process taken, the signal mask's record gets none:
 * the start is refused (-EAGAIN), naming the way out. pthread_key_create's failure went
 * unseen, and the record was set on key 0, another's (here the test's own first key), so
 * the start went on and that key's destructor would have got keel's record. */
static _Atomic int no_key_lines;

static void
no_key_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	if (level == KEEL_LOG_ERROR && strstr(msg, "no thread-specific key") &&
	    strstr(msg, "keel_opts.signals false"))
		atomic_fetch_add(&no_key_lines, 1);
}

Test(core_lifecycle, a_start_with_no_thread_key_left_is_refused_naming_why)
{
	static pthread_key_t keys[PTHREAD_KEYS_MAX];
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	unsigned n = 0;
	int r;

	o.signals = true;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_log_set_sink(no_key_sink, NULL);
	while (n < PTHREAD_KEYS_MAX && pthread_key_create(&keys[n], NULL) == 0)
		n++;
	r = keel_runtime_start(rt, NULL, NULL);
	for (unsigned k = 0; k < n; k++)
		pthread_key_delete(keys[k]);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(r, -EAGAIN, "keel_runtime_start: %d (%s) with no thread-specific key left", r,
		     strerror(-r));
	cr_assert_eq(atomic_load(&no_key_lines), 1, "%d ERROR lines naming the fix",
		     atomic_load(&no_key_lines));
	cr_assert(!sigterm_blocked(), "a refused start left SIGTERM blocked");
	keel_runtime_destroy(rt);
}

/* A runtime with signals started after a SIGTERM stopped the others, before they were
 * joined: that signal stops it too (its first own signal would otherwise be the process's
 * second, and exit at once; and nothing else would stop it). */
static int hook_pipe[2]; /* the child's: its stop hook says a stopped */

static void
hook_says_stopping(void *arg)
{
	(void)arg;
	if (write(hook_pipe[1], "s", 1) != 1)
		_exit(99);
}

static void
late_rt_start(void *app)
{
	keel_shard_on_stop(hook_says_stopping, NULL);
	two_rt_start(app);
}

static int
late_rt_child(void)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *a, *b;
	char c;

	o.signals = true;
	keel_log_set_level(KEEL_LOG_ERROR);
	if (pipe(hook_pipe) < 0)
		return 9;
	if (keel_runtime_create(&o, &a) < 0 || keel_runtime_create(&o, &b) < 0)
		return 10;
	if (keel_runtime_start(a, late_rt_start, "a") < 0)
		return 11;
	if (read(hook_pipe[0], &c, 1) != 1 || c != 's') /* the parent's SIGTERM stopped a */
		return 12;
	if (keel_runtime_start(b, two_rt_start, "b") < 0) /* a stopped, not yet joined */
		return 13;
	if (keel_runtime_join(b) != 0 || keel_runtime_join(a) != 0)
		return 14;
	keel_runtime_destroy(b);
	keel_runtime_destroy(a);
	return 0;
}

Test(core_lifecycle, a_runtime_started_after_the_stopping_signal_stops_too, .timeout = 60)
{
	int status;
	pid_t pid;
	char c;

	cr_assert_eq(pipe(sig_pipe), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(late_rt_child());
	wait_fd(sig_pipe[0], POLLIN, TEST_WAIT_MS, pid, "runtime a to start");
	cr_assert_eq(read(sig_pipe[0], &c, 1), 1);
	cr_assert_eq(c, 'a');
	kill(pid, SIGTERM);
	status = wait_child(pid, TEST_WAIT_MS, "runtime b to stop with a");
	cr_assert(WIFEXITED(status), "child did not exit: status 0x%x", status);
	cr_assert_eq(WEXITSTATUS(status), 0, "the child failed at step %d", WEXITSTATUS(status));
	close(sig_pipe[0]);
	close(sig_pipe[1]);
}

/* A signal that arrives once the shards have left their loops (the stop under way, or done) is
 * taken at join: the first is the stop already under way, a second exits at once. Before,
 * join restored the caller's mask with it pending and its default action ended the
 * process inside keel_runtime_join. Each case runs in a forked child. */
static void
stop_at_start(void *app)
{
	if (app && keel_shard_id(keel_this_shard()) == 0)
		keel_stop(0);
}

/* Waits until this process has only the calling thread: every shard thread has ended. */
static void
wait_shard_threads_gone(void)
{
	for (int i = 0; i < 60000; i++) {
		DIR *d = opendir("/proc/self/task");
		struct dirent *e;
		int n = 0;

		if (!d)
			_exit(97);
		while ((e = readdir(d)))
			n += e->d_name[0] != '.';
		closedir(d);
		if (n == 1)
			return;
		usleep(1000);
	}
	_exit(98);
}

static int
late_signal_child(bool first_signal_read)
{
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		struct keel_opts o = test_opts(2);
		struct keel_runtime *rt;
		int r;

		o.signals = true;
		keel_log_set_level(KEEL_LOG_ERROR);
		if (keel_runtime_create(&o, &rt) < 0 ||
		    keel_runtime_start(rt, stop_at_start, first_signal_read ? NULL : rt) < 0)
			_exit(96);
		if (first_signal_read)
			kill(getpid(), SIGTERM); /* read by a shard: the stop */
		wait_shard_threads_gone();
		kill(getpid(), first_signal_read ? SIGINT : SIGTERM);
		r = keel_runtime_join(rt);
		keel_runtime_destroy(rt);
		_exit(r == 0 ? 0 : 95);
	}
	return wait_child(pid, TEST_WAIT_MS, "the child's runtime to end");
}

Test(core_lifecycle, a_signal_after_the_loop_ended_is_the_stop_under_way, .timeout = 60)
{
	int status = late_signal_child(false);

	cr_assert(WIFEXITED(status), "the late SIGTERM ended the process: status 0x%x", status);
	cr_assert_eq(WEXITSTATUS(status), 0);
}

Test(core_lifecycle, a_second_signal_after_the_loop_ended_exits_at_once, .timeout = 60)
{
	int status = late_signal_child(true);

	cr_assert(WIFEXITED(status),
		  "the late SIGINT ended the process by its default action: "
		  "status 0x%x",
		  status);
	cr_assert_eq(WEXITSTATUS(status), 128 + SIGINT);
}

/* A callback on shard 0 that blocks (a deadlock, a slow host call) does not keep the
 * signals from being read: they were read through shard 0's ring alone, so while it blocked
 * the first did not stop the other shards and a second did not exit (a review's runs). Now
 * shard 1 takes them: every shard polls a signalfd and reads it itself. The block lasts
 * BLOCK_S; every wait for what the signals do is far shorter. */
#define BLOCK_S     30
#define SIG_WAIT_MS 10000
static int block_pipe[2]; /* the child's shards to the test: r, b, s, e */

static void
say(char c)
{
	if (write(block_pipe[1], &c, 1) != 1)
		_exit(99);
}

static void
block_on_shard_0(void *arg)
{
	struct timespec until, now;

	(void)arg;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += BLOCK_S;
	say('b');
	do { /* the stop signals are blocked here: nothing ends the sleep early */
		struct timespec ts = { 0, 50 * 1000000L };
		nanosleep(&ts, NULL);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while (now.tv_sec < until.tv_sec);
	say('e');
}

static void
shard_1_stopping(void *arg)
{
	(void)arg;
	say('s');
}

static void
block_start(void *app)
{
	(void)app;
	if (keel_shard_id(keel_this_shard()) == 0) {
		keel_defer(block_on_shard_0, NULL);
	} else {
		keel_shard_on_stop(shard_1_stopping, NULL);
		say('r');
	}
}

/* Fork a child whose shard 0 blocks; return once shard 1 has started and the block began. */
static pid_t
blocked_child(void)
{
	pid_t pid = fork_signal_child(block_pipe, block_start, 2);
	bool r = false, b = false;

	while (!r || !b) {
		char c;

		wait_fd(block_pipe[0], POLLIN, TEST_WAIT_MS, pid, "shard 1 and shard 0's block");
		cr_assert_eq(read(block_pipe[0], &c, 1), 1);
		cr_assert(c == 'r' || c == 'b', "unexpected '%c' before the signal", c);
		r |= c == 'r';
		b |= c == 'b';
	}
	return pid;
}

/* The first signal stops shard 1 (its stop hook runs) while shard 0 still blocks. */
static void
first_signal_stops_shard_1(pid_t pid, int sig)
{
	char c;

	kill(pid, sig);
	wait_fd(block_pipe[0], POLLIN, SIG_WAIT_MS, pid,
		"shard 1's stop hook after the signal, shard 0 blocked");
	cr_assert_eq(read(block_pipe[0], &c, 1), 1);
	cr_assert_eq(c, 's', "'%c', not shard 1's stop hook, came after the signal", c);
}

Test(core_lifecycle, a_signal_stops_the_other_shards_while_shard_0_blocks, .timeout = 120)
{
	pid_t pid = blocked_child();
	int status;

	first_signal_stops_shard_1(pid, SIGTERM);
	kill(pid, SIGKILL); /* shard 0 would block on for BLOCK_S */
	status = wait_child(pid, TEST_WAIT_MS, "the child to end on SIGKILL");
	cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
		  "the child ended otherwise: status 0x%x", status);
	close(block_pipe[0]);
	close(block_pipe[1]);
}

Test(core_lifecycle, a_second_signal_exits_at_once_while_shard_0_blocks, .timeout = 120)
{
	pid_t pid = blocked_child();

	first_signal_stops_shard_1(pid, SIGINT); /* read: the second is the process's second */
	second_sigint_exits(pid, block_pipe, SIG_WAIT_MS,
			    "the exit on the second signal, shard 0 blocked");
}

/* ---- stalls ---- */

static char stall_line[512];
static _Atomic int stall_lines;

static void
capture_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	if (shard == 1 && strstr(msg, "stall")) { /* other shards may stall on a busy machine */
		snprintf(stall_line, sizeof(stall_line), "%d %s", shard, msg);
		atomic_fetch_add(&stall_lines, 1);
	}
}

/* Blocks shard 1 for 60 ms in one callback, and stops the runtime in it: after the block,
 * or (@arg non-null) before it. */
static void
slow_cb(void *arg)
{
	struct timespec ts = { 0, 60 * 1000000L };

	if (arg)
		keel_stop(0);
	nanosleep(&ts, NULL);
	if (!arg)
		keel_stop(0);
}

static void
stall_start(void *app)
{
	if (keel_shard_id(keel_this_shard()) == 1)
		keel_defer(slow_cb, app);
}

/* Runs slow_cb on shard 1 of two with --stall-ms 20: its pass is counted and logged once,
 * from shard 1. */
static void
stall_reported(bool stop_first)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	struct keel_shard_stats st;

	o.stall_ms = 20;
	atomic_store(&stall_lines, 0);
	keel_log_set_sink(capture_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, stall_start, stop_first ? &o : NULL), 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(keel_runtime_stats(rt, 1, &st), 0);
	cr_assert_geq(st.stalls, 1, "the pass's 60 ms were not checked");
	cr_assert_geq(st.max_pass_ns, 60 * 1000000ULL);
	cr_assert_eq(atomic_load(&stall_lines), 1, "%d stall lines from shard 1 (rate limit: 1/s)",
		     atomic_load(&stall_lines));
	cr_assert(strncmp(stall_line, "1 ", 2) == 0, "stall logged from shard: %s", stall_line);
	cr_assert(strstr(stall_line, "--stall-ms 20"), "%s", stall_line);
	keel_runtime_destroy(rt);
}

Test(core_lifecycle, slow_callback_is_reported_as_a_stall)
{
	stall_reported(false);
}

/* The pass that ends the loop is checked too. Here the stop comes first and the callback
 * blocks after it, so the other shard has stopped by the time this one's pass ends, and
 * the pass's stop check finds the runtime done at once: the loop left without checking the
 * pass, and the stall went unseen (stalls 0; once in eight runs of the suite beside
 * another under ctest -j2, where slow_callback_is_reported_as_a_stall's shard was
 * preempted between its keel_stop and the end of its pass). */
Test(core_lifecycle, a_stall_in_the_pass_that_ends_the_loop_is_reported)
{
	stall_reported(true);
}

/* ---- foreign threads ---- */

#define FOREIGN_THREADS 3
#define FOREIGN_REQS    2000

struct foreign_ctx {
	struct keel_runtime *rt;
	int thread;
	_Atomic unsigned *done_cb_count; /* every thread's callbacks */
	_Atomic unsigned own_done;       /* this thread's */
	long failures;
};

static void
foreign_work(struct keel_xreq *req)
{
	/* Runs on the shard: answer with the shard id, later (through a deferral). */
	keel_xreq_complete(req, (int)keel_shard_id(keel_this_shard()));
}

static void
foreign_done_cb(struct keel_xreq *req)
{
	struct foreign_ctx *c = req->arg;

	atomic_fetch_add(c->done_cb_count, 1);
	atomic_fetch_add(&c->own_done, 1);
}

static void *
foreign_thread(void *p)
{
	struct foreign_ctx *c = p;
	struct keel_xqueue *q;
	struct keel_xreq *reqs = calloc(FOREIGN_REQS, sizeof(*reqs));
	struct keel_xreq *out[64];
	unsigned got = 0, nshards = keel_runtime_shard_count(c->rt);
	long bad = 0;

	/* No cr_assert here: Criterion's assertions belong to the test's main thread. */
	if (!SHARD_CHECK_EQ(keel_xqueue_create(&q), 0, "thread %d", c->thread)) {
		c->failures++;
		free(reqs);
		return NULL;
	}
	for (unsigned i = 0; i < FOREIGN_REQS; i++) {
		reqs[i].fn = foreign_work;
		reqs[i].queue = (i % 2) ? q : NULL;
		reqs[i].done = (i % 2) ? NULL : foreign_done_cb;
		reqs[i].arg = c;
		reqs[i].status = -1;
		if (!SHARD_CHECK_EQ(keel_runtime_submit(c->rt, i % nshards, &reqs[i]), 0,
				    "thread %d request %u", c->thread, i))
			c->failures++;
	}
	while (got < FOREIGN_REQS / 2) {
		int n = keel_xqueue_wait(q, out, 64, KEEL_MS(TEST_WAIT_MS));
		if (!SHARD_CHECK(n > 0, "thread %d: %u of %u completions, then none in %u ms (%d)",
				 c->thread, got, FOREIGN_REQS / 2, TEST_WAIT_MS, n)) {
			c->failures++;
			break;
		}
		for (int k = 0; k < n; k++) {
			unsigned idx = (unsigned)(out[k] - reqs);
			if (out[k]->status != (int)(idx % nshards))
				bad++;
		}
		got += (unsigned)n;
	}
	c->failures += bad;
	keel_xqueue_destroy(q);
	/* The requests answered by callback may still sit in a shard's queue behind the last
	 * one answered through @q: the array is theirs until every callback has run. */
	for (uint64_t dl = test_deadline(TEST_WAIT_MS);
	     atomic_load(&c->own_done) < FOREIGN_REQS / 2; test_pause()) {
		if (test_expired(dl)) {
			SHARD_CHECK(false, "thread %d: %u of %u callbacks in %u ms", c->thread,
				    atomic_load(&c->own_done), FOREIGN_REQS / 2, TEST_WAIT_MS);
			c->failures++;
			return NULL; /* leaked, not freed under the shards */
		}
	}
	free(reqs);
	return NULL;
}

Test(core_lifecycle, foreign_threads_submit_and_get_completions)
{
	struct keel_opts o = test_opts(3);
	struct keel_runtime *rt;
	pthread_t th[FOREIGN_THREADS];
	struct foreign_ctx ctx[FOREIGN_THREADS];
	_Atomic unsigned done_cb = 0;
	struct keel_xreq late = { .fn = foreign_work };

	o.idle_poll_us = 0; /* shards asleep: submissions must wake them */
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_submit(rt, 0, &late), -ESHUTDOWN, "submit before start");
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	for (int i = 0; i < FOREIGN_THREADS; i++) {
		ctx[i] = (struct foreign_ctx){ .rt = rt, .thread = i, .done_cb_count = &done_cb };
		pthread_create(&th[i], NULL, foreign_thread, &ctx[i]);
	}
	for (int i = 0; i < FOREIGN_THREADS; i++)
		pthread_join(th[i], NULL);
	SHARD_CHECKS_PASSED();
	for (int i = 0; i < FOREIGN_THREADS; i++)
		cr_assert_eq(ctx[i].failures, 0, "foreign thread %d: %ld failures", i,
			     ctx[i].failures);
	/* The callbacks of the other half ran on the shards; wait for them through a request
	 * queued behind them on every shard. */
	for (unsigned s = 0; s < 3; s++) {
		struct keel_xqueue *q;
		struct keel_xreq r = { .fn = foreign_work }, *out;
		cr_assert_eq(keel_xqueue_create(&q), 0);
		r.queue = q;
		cr_assert_eq(keel_runtime_submit(rt, s, &r), 0);
		cr_assert_eq(keel_xqueue_wait(q, &out, 1, KEEL_MS(TEST_WAIT_MS)), 1,
			     "shard %u answered no request in %u ms", s, TEST_WAIT_MS);
		keel_xqueue_destroy(q);
	}
	cr_assert_eq(atomic_load(&done_cb), FOREIGN_THREADS * FOREIGN_REQS / 2);
	cr_assert_eq(keel_runtime_submit(rt, 7, &late), -EINVAL);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	cr_assert_eq(keel_runtime_submit(rt, 0, &late), -ESHUTDOWN);
	keel_runtime_destroy(rt);
}

/* ---- a failed start refuses foreign requests ---- */

/* The start's error lines, in a child (a descriptor it could not make names the fix). */
static char nofile_lines[4096];

static void
nofile_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	size_t n = strlen(nofile_lines);

	snprintf(nofile_lines + n, sizeof(nofile_lines) - n, "%s\n", msg);
}

/* In a child: a descriptor limit that leaves room for the shards' eventfds (made by
 * keel_runtime_start on this thread) but not for their rings (made on the shard threads),
 * so the start fails inside the shards. Then a foreign request must be refused, not
 * queued on a shard that never runs it. Exit status: 0 as wanted, else which step failed. */
static int
failed_start_child(void)
{
	struct keel_opts o = test_opts(2);
	struct keel_xreq late = { .fn = foreign_work };
	struct keel_runtime *rt;
	struct rlimit rl;
	int lim = 0, room = 0, r;

	o.signals = false;
	if (keel_runtime_create(&o, &rt) < 0)
		return 10;
	for (; room < 2; lim++) /* the numbers two eventfds will get */
		room += fcntl(lim, F_GETFD) < 0;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 11;
	rl.rlim_cur = (rlim_t)lim;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 12;
	keel_log_set_sink(nofile_sink, NULL);
	r = keel_runtime_start(rt, NULL, NULL);
	if (r != -EMFILE) {
		fprintf(stderr, "keel_runtime_start: %d, want -EMFILE\n", r);
		return 13;
	}
	/* A ring's: "ulimit -l" was named for memory only, nothing for descriptors. */
	if (!strstr(nofile_lines, "io_uring_setup(") || !strstr(nofile_lines, "ulimit -n")) {
		fprintf(stderr, "no line names ulimit -n for the ring:\n%s", nofile_lines);
		return 16;
	}
	r = keel_runtime_submit(rt, 0, &late);
	if (r != -ESHUTDOWN) {
		fprintf(stderr, "keel_runtime_submit after a failed start: %d, want -ESHUTDOWN\n",
			r);
		return 14;
	}
	r = keel_runtime_join(rt); /* the host's usual next call: the error again, not 0 */
	if (r != -EMFILE) {
		fprintf(stderr, "keel_runtime_join after a failed start: %d, want -EMFILE\n", r);
		return 15;
	}
	keel_runtime_destroy(rt);
	return 0;
}

static int
open_fds(void)
{
	int n = 0;

	for (int fd = 0; fd < 1024; fd++)
		n += fcntl(fd, F_GETFD) >= 0;
	return n;
}

/* In a child: room for one of the two shards' eventfds, so the start fails on this thread
 * before any shard exists. It leaves nothing open, and a start with room then runs. */
static int
early_fail_child(void)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	struct rlimit rl, was;
	int lim = 0, room = 0, before, r;

	o.signals = false;
	if (keel_runtime_create(&o, &rt) < 0)
		return 10;
	for (; room < 1; lim++)
		room += fcntl(lim, F_GETFD) < 0;
	if (getrlimit(RLIMIT_NOFILE, &was) < 0)
		return 11;
	rl = was;
	rl.rlim_cur = (rlim_t)lim;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 12;
	before = open_fds();
	keel_log_set_sink(nofile_sink, NULL);
	r = keel_runtime_start(rt, NULL, NULL);
	keel_log_set_sink(NULL, NULL);
	if (r != -EMFILE) {
		fprintf(stderr, "keel_runtime_start: %d, want -EMFILE\n", r);
		return 13;
	}
	/* It said "eventfd failed: Too many open files", no shard, no fix. */
	if (!strstr(nofile_lines, "shard 1: eventfd failed") ||
	    !strstr(nofile_lines, "ulimit -n")) {
		fprintf(stderr, "no line names the shard and ulimit -n:\n%s", nofile_lines);
		return 19;
	}
	if (open_fds() != before) {
		fprintf(stderr, "the failed start left %d descriptors open\n", open_fds() - before);
		return 14;
	}
	if (keel_runtime_join(rt) != -EMFILE)
		return 15;
	if (setrlimit(RLIMIT_NOFILE, &was) < 0)
		return 16;
	r = keel_runtime_start(rt, NULL, NULL);
	if (r != 0) {
		fprintf(stderr, "the start tried again: %d, want 0\n", r);
		return 17;
	}
	keel_runtime_stop(rt, 0);
	if (keel_runtime_join(rt) != 0)
		return 18;
	keel_runtime_destroy(rt);
	return 0;
}

Test(core_lifecycle, a_start_that_failed_before_its_threads_leaves_nothing_open)
{
	run_in_child(early_fail_child);
}

Test(core_lifecycle, a_failed_start_refuses_foreign_requests)
{
	run_in_child(failed_start_child);
}

/* In a child: a start with signals whose shards fail (as failed_start_child's, with room
 * for the signalfds too), while a SIGTERM waits blocked in the host's thread. The start's
 * join took it ("received as the runtime stopped"): the host never saw it, and one that
 * carries on after a failed start had lost the user's interrupt. A failed start now leaves
 * pending signals to the host. Exit status: 0 as wanted, else which step failed. */
static _Atomic int host_sigterms;

static void
host_on_sigterm(int sig)
{
	(void)sig;
	atomic_fetch_add(&host_sigterms, 1);
}

static int
failed_start_signal_child(void)
{
	struct keel_opts o = test_opts(2);
	struct sigaction sa = { .sa_handler = host_on_sigterm };
	struct keel_runtime *rt;
	struct rlimit rl;
	sigset_t set;
	int lim = 0, room = 0, r;

	o.signals = true;
	if (sigaction(SIGTERM, &sa, NULL) < 0)
		return 10;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0 || raise(SIGTERM) != 0)
		return 11;
	if (keel_runtime_create(&o, &rt) < 0)
		return 12;
	for (; room < 4; lim++) /* the numbers of two eventfds and two signalfds */
		room += fcntl(lim, F_GETFD) < 0;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 13;
	rl.rlim_cur = (rlim_t)lim;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 14;
	keel_log_set_sink(nofile_sink, NULL);
	r = keel_runtime_start(rt, NULL, NULL);
	keel_log_set_sink(NULL, NULL);
	if (r != -EMFILE) {
		fprintf(stderr, "keel_runtime_start: %d, want -EMFILE (inside the shards)\n", r);
		return 15;
	}
	if (!strstr(nofile_lines, "io_uring_setup(")) {
		fprintf(stderr, "the start did not fail at the shards' rings:\n%s", nofile_lines);
		return 16;
	}
	keel_runtime_destroy(rt);
	if (pthread_sigmask(SIG_UNBLOCK, &set, NULL) != 0)
		return 17;
	if (atomic_load(&host_sigterms) != 1) {
		fprintf(stderr,
			"the host's SIGTERM handler ran %d times, want 1 (the failed start "
			"took the signal):\n%s",
			atomic_load(&host_sigterms), nofile_lines);
		return 18;
	}
	return 0;
}

Test(core_lifecycle, a_failed_start_leaves_a_pending_signal_to_the_host)
{
	run_in_child(failed_start_signal_child);
}

/* ---- a capability probe short of descriptors is not kept ---- */

static _Atomic int probe_said;

static void
probe_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)level;
	(void)module;
	(void)shard;
	(void)arg;
	if (strstr(msg, "capability probe could not run") && strstr(msg, "raise ulimit -n"))
		atomic_store(&probe_said, 1);
}

/* Create a runtime with room for @room more descriptors: its result. */
static int
create_with_room(int room, struct rlimit was)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct rlimit rl = was;
	int lim = 0, r;

	o.signals = false;
	for (int free_ = 0; free_ < room || fcntl(lim, F_GETFD) >= 0; lim++)
		free_ += fcntl(lim, F_GETFD) < 0;
	rl.rlim_cur = (rlim_t)lim;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -1000;
	r = keel_runtime_create(&o, &rt);
	setrlimit(RLIMIT_NOFILE, &was);
	if (r == 0)
		keel_runtime_destroy(rt);
	return r;
}

/* In a child (the probe runs once per process): the first creates find no descriptor for
 * the probe's trial ring, then none for its eventfd (the SEND_ZC trial); both fail naming
 * ulimit -n, and the next create, with room, probes again and runs with every feature the
 * kernel has. The failed probe used to be kept: every later create failed, or ran with
 * send_zc silently off. */
static int
short_probe_child(void)
{
	struct rlimit was;
	int r;

	if (getrlimit(RLIMIT_NOFILE, &was) < 0)
		return 10;
	keel_log_set_sink(probe_sink, NULL);
	r = create_with_room(0, was);
	if (r != -EMFILE) {
		fprintf(stderr, "create without a descriptor: %d, want -EMFILE\n", r);
		return 11;
	}
	if (!atomic_exchange(&probe_said, 0))
		return 12;
	r = create_with_room(1, was);
	if (r != -EMFILE) {
		fprintf(stderr, "create with one descriptor: %d, want -EMFILE\n", r);
		return 13;
	}
	if (!atomic_exchange(&probe_said, 0))
		return 14;
	/* keel-topo --caps's report, short of descriptors too: it said "io_uring unavailable:
	 * Too many open files", as if the kernel had refused it, and named no fix. */
	{
		struct rlimit rl = was;
		char *text = NULL;
		size_t len = 0;
		FILE *m = open_memstream(&text, &len);
		int lim = 0;

		if (!m)
			return 18;
		while (fcntl(lim, F_GETFD) >= 0)
			lim++;
		rl.rlim_cur = (rlim_t)lim;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			return 19;
		keel_caps_print(NULL, m);
		setrlimit(RLIMIT_NOFILE, &was);
		fclose(m);
		if (!strstr(text, "not probed") || !strstr(text, "ulimit -n") ||
		    strstr(text, "unavailable")) {
			fprintf(stderr, "keel_caps_print short of descriptors:\n%s", text);
			free(text);
			return 20;
		}
		free(text);
	}
	keel_log_set_sink(NULL, NULL);
	r = create_with_room(64, was);
	if (r != 0) {
		fprintf(stderr, "create with room: %d, want 0\n", r);
		return 15;
	}
	if (keel_caps_get()->probe_status != 0 || keel_caps_get()->cancel_any != true)
		return 16;
	if (keel_caps_get()->op_supported[IORING_OP_SEND_ZC] && !keel_caps_get()->zc_report_usage) {
		fprintf(stderr, "the probe kept SEND_ZC's trial that found no eventfd\n");
		return 17;
	}
	return 0;
}

Test(core_lifecycle, a_probe_short_of_descriptors_fails_and_is_made_again)
{
	run_in_child(short_probe_child);
}

/* ---- embedding: stop from the host thread, status returned ---- */

static void
noop_start(void *app)
{
}

Test(core_lifecycle, host_thread_stops_runtime_and_gets_status)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_shard_count(rt), 2);
	cr_assert_eq(keel_runtime_start(rt, noop_start, NULL), 0);
	keel_runtime_stop(rt, -ECONNRESET);
	keel_runtime_stop(rt, 0); /* first status wins */
	cr_assert_eq(keel_runtime_join(rt), -ECONNRESET);
	keel_runtime_destroy(rt);
}

/* In-flight user operations are cancelled at stop and reaped: no CQE left behind. */
struct op_test {
	struct keel_op op;
	int fd[2];
	char buf[16];
	int res;
	_Atomic int completions;
};

static void
read_done(struct keel_op *op, int res, uint32_t flags)
{
	struct op_test *t = (struct op_test *)op;
	t->res = res;
	atomic_fetch_add(&t->completions, 1);
}

static void
read_start(void *app)
{
	struct op_test *t = app;
	struct io_uring_sqe *sqe = keel_sqe_get();
	if (!SHARD_CHECK(sqe != NULL, "keel_sqe_get()")) {
		keel_stop(-EIO);
		return;
	}
	io_uring_prep_read(sqe, t->fd[0], t->buf, sizeof(t->buf), 0);
	keel_sqe_bind(sqe, &t->op);
	keel_stop(0);
}

Test(core_lifecycle, stop_cancels_and_reaps_inflight_operations)
{
	struct keel_opts o = test_opts(1);
	struct op_test t = { .op.fn = read_done };

	int r;

	cr_assert_eq(pipe(t.fd), 0);
	r = keel_run(&o, read_start, &t);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(atomic_load(&t.completions), 1);
	cr_assert_eq(t.res, -ECANCELED);
	close(t.fd[0]);
	close(t.fd[1]);
}

/* ---- stopping with an operation the cancel cannot reach ---- */

/* An operation keel's cancel cannot end (a disk read running in io-wq, a SEND_ZC's
 * notification): here a NOP whose success posts no CQE, completed later from outside with
 * a MSG_RING that carries its user_data. While it is in flight the stopping shard waits
 * for it in bounded sleeps, not in a loop of passes and cancels. */
struct uncancellable {
	struct keel_op op;
	_Atomic int ring_fd, done;
};
static struct uncancellable unc;

static void
unc_cb(struct keel_op *op, int res, uint32_t flags)
{
	atomic_store(&unc.done, 1);
}

static void
unc_start(void *arg)
{
	struct io_uring_sqe *sqe;

	if (keel_shard_id(keel_this_shard()) != 0)
		return;
	sqe = keel_sqe_get();
	if (!SHARD_CHECK(sqe != NULL, "no SQE"))
		return;
	io_uring_prep_nop(sqe);
	/* keel/ring.h forbids this flag to apps: here it makes an operation no cancel finds. */
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	unc.op.fn = unc_cb;
	keel_sqe_bind(sqe, &unc.op);
	atomic_store(&unc.ring_fd, keel_shard_ring_get()->ring_fd);
}

Test(core_lifecycle, stopping_with_an_operation_the_cancel_cannot_reach_sleeps)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	struct keel_shard_stats a, b;
	struct io_uring ring;
	struct io_uring_cqe *cqe;
	struct io_uring_sqe *sqe;

	memset(&unc, 0, sizeof(unc));
	atomic_store(&unc.ring_fd, -1);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, unc_start, NULL), 0);
	WAIT_FOR(atomic_load(&unc.ring_fd) >= 0, "shard 0 binding its NOP");
	keel_runtime_stop(rt, 0);
	/* Stopping: shard 0 cannot finish while the NOP counts as in flight. */
	cr_assert_eq(keel_runtime_stats(rt, 0, &a), 0);
	WAIT_FOR((keel_runtime_stats(rt, 0, &b), b.sleeps >= a.sleeps + 20),
		 "20 sleeps of the stopping shard (it passes without sleeping)");
	cr_assert_lt(b.passes - a.passes, 4 * (b.sleeps - a.sleeps) + 16,
		     "%llu passes for %llu sleeps", (unsigned long long)(b.passes - a.passes),
		     (unsigned long long)(b.sleeps - a.sleeps));
	cr_assert_eq(atomic_load(&unc.done), 0);
	/* Complete it: a CQE with its user_data, from another ring. */
	cr_assert_eq(io_uring_queue_init(4, &ring, 0), 0);
	sqe = io_uring_get_sqe(&ring);
	io_uring_prep_msg_ring(sqe, atomic_load(&unc.ring_fd), 0, (uint64_t)(uintptr_t)&unc.op, 0);
	cr_assert_eq(io_uring_submit_and_wait(&ring, 1), 1);
	cr_assert_eq(io_uring_wait_cqe(&ring, &cqe), 0);
	cr_assert_eq(cqe->res, 0, "MSG_RING: %s", strerror(-cqe->res));
	io_uring_cqe_seen(&ring, cqe);
	io_uring_queue_exit(&ring);
	cr_assert_eq(keel_runtime_join(rt), 0);
	cr_assert_eq(atomic_load(&unc.done), 1);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
}

/* ---- a stop that does not end says what holds it ---- */

/* core/internal.h: how often a stop that does not end is logged (10 s). */
extern uint64_t keel__stop_say_ns;

static _Atomic int held_keep;            /* shard 1's callback defers itself again */
static _Atomic int held_said, wait_said; /* the lines below came */
static char held_line[512], wait_line[512];

static void
held_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module;
	(void)shard;
	(void)arg;
	if (level != KEEL_LOG_WARN || !strstr(msg, "the stop has waited"))
		return;
	if (!strncmp(msg, "shard 1:", 8) && !atomic_load(&held_said)) {
		snprintf(held_line, sizeof(held_line), "%s", msg);
		atomic_store(&held_said, 1);
	} else if (!strncmp(msg, "shard 0:", 8) && !atomic_load(&wait_said)) {
		snprintf(wait_line, sizeof(wait_line), "%s", msg);
		atomic_store(&wait_said, 1);
	}
}

static void
defer_again(void *arg)
{
	if (atomic_load(&held_keep))
		keel_defer(defer_again, arg);
}

static void
held_start(void *arg)
{
	(void)arg;
	if (keel_shard_id(keel_this_shard()) == 1)
		keel_defer(defer_again, NULL);
}

/* A shard whose deferred work defers itself again never becomes quiescent: the stop waited
 * in 1 ms sleeps for ever and the join with it, without a word. Now every keel__stop_say_ns
 * (here 100 ms) shard 1 says the deferred work holds it and shard 0 that it waits for shard
 * 1; once the callback stops deferring, the stop ends. */
Test(core_lifecycle, a_stop_held_by_deferred_work_says_what_holds_it, .timeout = 120)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	uint64_t was = keel__stop_say_ns, dl = test_deadline(TEST_WAIT_MS);

	atomic_store(&held_keep, 1);
	keel__stop_say_ns = 100 * 1000000ull;
	keel_log_set_sink(held_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, held_start, NULL), 0);
	keel_runtime_stop(rt, 0);
	while ((!atomic_load(&held_said) || !atomic_load(&wait_said)) && !test_expired(dl))
		test_pause();
	atomic_store(&held_keep, 0); /* the test ends cleanly whatever was said */
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_log_set_sink(NULL, NULL);
	keel__stop_say_ns = was;
	cr_assert(atomic_load(&held_said), "shard 1 never said what held its stop");
	cr_assert_not_null(strstr(held_line, "deferred callbacks pending"), "shard 1 said: %s",
			   held_line);
	cr_assert(atomic_load(&wait_said), "shard 0 never said which shard it waited for");
	cr_assert_not_null(strstr(wait_line, "quiescent"), "shard 0 said: %s", wait_line);
	cr_assert_not_null(strstr(wait_line, "for shard 1 "), "shard 0 said: %s", wait_line);
}

/* ---- the last cancel, of keel's own reads, that found no SQE ---- */

/* core/internal.h: while non-zero, each cancel of the shard's final reaping finds no SQE
 * (the stop's earlier cancels are not touched, so the faults land there whatever else the
 * stop cancels first). */
extern _Atomic unsigned keel__fault_cancel_nosqe;

#define LAST_CANCEL_FAILS 3

static void
last_cancel_start(void *arg)
{
	(void)arg;
	/* The last cancel is of keel's own reads (the eventfd's), which never complete on
	 * their own. */
	atomic_store(&keel__fault_cancel_nosqe, LAST_CANCEL_FAILS);
	keel_stop(0);
}

struct joiner {
	struct keel_runtime *rt;
	_Atomic int done;
	int res;
};

static void *
join_thread(void *arg)
{
	struct joiner *j = arg;

	j->res = keel_runtime_join(j->rt);
	atomic_store(&j->done, 1);
	return NULL;
}

/* Once quiescent, a shard cancels keel's own operations and reaps until none is left. When
 * that cancel finds no SQE (the ring's submit failed), nothing ends the reads it was for:
 * the wait for a completion must be bounded and the cancel made again, or the shard sleeps
 * forever and the join never returns. Here the cancel finds none three times running. */
Test(core_lifecycle, the_last_cancel_that_found_no_sqe_is_made_again)
{
	struct keel_opts o = test_opts(1);
	struct joiner j = { 0 };
	pthread_t th;

	atomic_store(&keel__fault_cancel_nosqe, 0);
	cr_assert_eq(keel_runtime_create(&o, &j.rt), 0);
	cr_assert_eq(keel_runtime_start(j.rt, last_cancel_start, NULL), 0);
	cr_assert_eq(pthread_create(&th, NULL, join_thread, &j), 0);
	WAIT_FOR(atomic_load(&j.done),
		 "the shard to end (its last cancel found no SQE; %u of %u faults left)",
		 atomic_load(&keel__fault_cancel_nosqe), LAST_CANCEL_FAILS);
	pthread_join(th, NULL);
	cr_assert_eq(j.res, 0);
	cr_assert_eq(atomic_load(&keel__fault_cancel_nosqe), 0,
		     "the shard ended without its last cancel (%u of %u faults left)",
		     atomic_load(&keel__fault_cancel_nosqe), LAST_CANCEL_FAILS);
	keel_runtime_destroy(j.rt);
	SHARD_CHECKS_PASSED();
}

/* ---- stop hooks registered late ---- */

struct late_hooks {
	int first, second, third;
};

static void
late_third(void *arg)
{
	((struct late_hooks *)arg)->third++;
}

static void
late_after_stop(void *arg)
{
	/* A callback run while stopping (deferred work here) registers a hook. */
	SHARD_CHECK_EQ(keel_shard_on_stop(late_third, arg), 0);
}

static void
late_second(void *arg)
{
	struct late_hooks *h = arg;

	h->second++;
	SHARD_CHECK_EQ(h->first, 1, "the second hook ran before the first");
	SHARD_CHECK_EQ(keel_defer(late_after_stop, arg), 0);
}

static void
late_first(void *arg)
{
	((struct late_hooks *)arg)->first++;
	SHARD_CHECK_EQ(keel_shard_on_stop(late_second, arg), 0); /* from inside a hook */
}

static void
late_start(void *arg)
{
	SHARD_CHECK_EQ(keel_shard_on_stop(late_first, arg), 0);
	keel_stop(0);
}

Test(core_lifecycle, stop_hooks_registered_while_stopping_run_once)
{
	struct keel_opts o = test_opts(1);
	struct late_hooks h = { 0 };

	cr_assert_eq(keel_run(&o, late_start, &h), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(h.first, 1);
	cr_assert_eq(h.second, 1, "a hook registered by a hook ran %d times", h.second);
	cr_assert_eq(h.third, 1, "a hook registered while stopping ran %d times", h.third);
}

// SPDX-License-Identifier: MIT
#include <dirent.h>
#include <errno.h>
#include <keel/caps.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../core/hooks.h"
#include "../../core/internal.h"
#include "helpers.h"

struct start_state {
	unsigned shards;
	_Atomic unsigned started;
	_Atomic unsigned on_cpu;
	_Atomic unsigned flags_ok;
	_Atomic unsigned ids_seen; /* bitmap of ids, up to 32 */
	unsigned need_flags;
	unsigned forbid_flags;
	/* Ask the kernel, from another thread, what it enforces on the shard's ring:
	 * SINGLE_ISSUER refuses that thread's submit, DEFER_TASKRUN its GETEVENTS (EEXIST). */
	bool probe_kernel;
	_Atomic unsigned single_issuer_enforced, defer_taskrun_enforced;
	uint64_t deadline; /* for shard 0's wait for the others (set by shard 0) */
};

struct probe {
	int fd;
	long submit_errno, getevents_errno;
};

static void *
probe_ring(void *p)
{
	struct probe *pr = p;
	long r = syscall(__NR_io_uring_enter, pr->fd, 1, 0, 0, NULL, 0);
	pr->submit_errno = r < 0 ? errno : 0;
	r = syscall(__NR_io_uring_enter, pr->fd, 0, 0, IORING_ENTER_GETEVENTS, NULL, 0);
	pr->getevents_errno = r < 0 ? errno : 0;
	return NULL;
}

static void
stop_when_all_started(void *arg)
{
	struct start_state *st = arg;
	if (atomic_load(&st->started) == st->shards)
		keel_stop(0);
	else if (!SHARD_CHECK(!test_expired(st->deadline), "%u of %u shards started in %u ms",
			      atomic_load(&st->started), st->shards, TEST_WAIT_MS))
		keel_stop(-ETIMEDOUT);
	else
		keel_defer(stop_when_all_started, st);
}

static void
on_start_record(void *app)
{
	struct start_state *st = app;
	struct keel_shard *sh = keel_this_shard();
	unsigned flags;

	if (!SHARD_CHECK(sh != NULL, "on_start runs on a shard")) {
		keel_stop(-EIO);
		return;
	}
	flags = keel_shard_ring_flags(sh);
	SHARD_CHECK_EQ(keel_shard_count(sh), st->shards);
	if (sched_getcpu() == keel_shard_cpu(sh))
		atomic_fetch_add(&st->on_cpu, 1);
	if ((flags & st->need_flags) == st->need_flags && !(flags & st->forbid_flags))
		atomic_fetch_add(&st->flags_ok, 1);
	atomic_fetch_or(&st->ids_seen, 1u << keel_shard_id(sh));
	if (st->probe_kernel) {
		struct probe pr = { .fd = keel_shard_ring_get()->ring_fd };
		pthread_t t;
		pthread_create(&t, NULL, probe_ring, &pr);
		pthread_join(t, NULL);
		if (pr.submit_errno == EEXIST)
			atomic_fetch_add(&st->single_issuer_enforced, 1);
		if (pr.getevents_errno == EEXIST)
			atomic_fetch_add(&st->defer_taskrun_enforced, 1);
	}
	atomic_fetch_add(&st->started, 1);
	if (keel_shard_id(sh) == 0) {
		st->deadline = test_deadline(TEST_WAIT_MS);
		keel_defer(stop_when_all_started, st);
	}
}

static int
count_threads(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	int n = 0;

	cr_assert_not_null(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

static void
run_shards(unsigned n)
{
	struct keel_opts o = test_opts(n);
	struct start_state st = { .shards = n,
				  .need_flags =
					  IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
				  .probe_kernel = true };
	int threads_before = count_threads();
	int r = keel_run(&o, on_start_record, &st);

	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(atomic_load(&st.started), n);
	cr_assert_eq(atomic_load(&st.ids_seen), (n == 32 ? 0 : (1u << n)) - 1);
	cr_assert_eq(atomic_load(&st.on_cpu), n, "only %u of %u shards ran on their CPU",
		     atomic_load(&st.on_cpu), n);
	cr_assert_eq(atomic_load(&st.flags_ok), n, "ring lacks SINGLE_ISSUER|DEFER_TASKRUN");
	cr_assert_eq(atomic_load(&st.single_issuer_enforced), n,
		     "the kernel let another thread submit");
	cr_assert_eq(atomic_load(&st.defer_taskrun_enforced), n,
		     "the kernel let another thread run task work");
	cr_assert_eq(count_threads(), threads_before, "shard threads left behind");
}

Test(core_runtime, starts_and_stops_one_shard)
{
	run_shards(1);
}

Test(core_runtime, starts_and_stops_two_shards)
{
	run_shards(2);
}

Test(core_runtime, starts_and_stops_eight_shards_oversubscribed)
{
	run_shards(8);
}

Test(core_runtime, forced_coop_taskrun_fallback_works)
{
	struct keel_opts o = test_opts(2);
	struct start_state st = { .shards = 2,
				  .need_flags =
					  IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER,
				  .forbid_flags = IORING_SETUP_DEFER_TASKRUN,
				  .probe_kernel = true };
	int r;

	o.features[KEEL_FEAT_DEFER_TASKRUN] = KEEL_POLICY_OFF;
	r = keel_run(&o, on_start_record, &st);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(atomic_load(&st.flags_ok), 2);
	cr_assert_eq(atomic_load(&st.single_issuer_enforced), 2);
	cr_assert_eq(atomic_load(&st.defer_taskrun_enforced), 0, "DEFER_TASKRUN still on");
}

Test(core_runtime, all_features_forced_off_still_runs)
{
	struct keel_opts o = test_opts(2);
	struct start_state st = { .shards = 2,
				  .forbid_flags =
					  IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SINGLE_ISSUER };
	int r;

	for (int f = 0; f < KEEL_FEAT__COUNT; f++)
		o.features[f] = KEEL_POLICY_OFF;
	r = keel_run(&o, on_start_record, &st);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(atomic_load(&st.flags_ok), 2);
}

/* Run 2 shards under @o; every ring must have @need and lack @forbid. */
static void
ring_flags_are(struct keel_opts *o, unsigned need, unsigned forbid, const char *what)
{
	struct start_state st = { .shards = 2, .need_flags = need, .forbid_flags = forbid };

	cr_assert_eq(keel_run(o, on_start_record, &st), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&st.flags_ok), 2, "%s: ring flags other than asked", what);
}

/* IORING_SETUP_TASKRUN_FLAG (feature taskrun_flag) by default only on the rings of shards
 * that poll (--idle-poll-us > 0): a blocking shard's sleep runs the task work anyway, and
 * raising the flag costs every waker of its ring a write to a cache line the shard clears
 * each time. on: every ring; off: none. The COOP_TASKRUN fallback alike. */
Test(core_runtime, taskrun_flag_only_when_the_shard_polls)
{
	const unsigned DEFER = IORING_SETUP_DEFER_TASKRUN, COOP = IORING_SETUP_COOP_TASKRUN,
		       FLAG = IORING_SETUP_TASKRUN_FLAG;
	struct keel_opts o = test_opts(2);

	o.idle_poll_us = 0;
	ring_flags_are(&o, DEFER, FLAG, "auto, blocking");
	o.idle_poll_us = 50;
	ring_flags_are(&o, DEFER | FLAG, 0, "auto, polling");
	o.features[KEEL_FEAT_TASKRUN_FLAG] = KEEL_POLICY_OFF;
	ring_flags_are(&o, DEFER, FLAG, "off, polling");
	o.features[KEEL_FEAT_TASKRUN_FLAG] = KEEL_POLICY_ON;
	o.idle_poll_us = 0;
	ring_flags_are(&o, DEFER | FLAG, 0, "on, blocking");
	o.features[KEEL_FEAT_TASKRUN_FLAG] = KEEL_POLICY_AUTO;
	o.features[KEEL_FEAT_DEFER_TASKRUN] = KEEL_POLICY_OFF;
	ring_flags_are(&o, COOP, FLAG | DEFER, "COOP_TASKRUN, auto, blocking");
	o.idle_poll_us = 50;
	ring_flags_are(&o, COOP | FLAG, DEFER, "COOP_TASKRUN, auto, polling");
}

/* The decision says why a blocking shard's ring goes without it. */
Test(core_runtime, taskrun_flag_decision_names_the_reason)
{
	struct keel_feature_decision d[KEEL_FEAT__COUNT];
	struct keel_opts o = test_opts(1);

	o.idle_poll_us = 0;
	cr_assert_eq(keel_features_decide(&o, d), 0);
	cr_assert_not(d[KEEL_FEAT_TASKRUN_FLAG].used);
	cr_assert_not_null(strstr(d[KEEL_FEAT_TASKRUN_FLAG].reason, "--idle-poll-us 0"));
	cr_assert_str_eq(keel_feature_name(KEEL_FEAT_TASKRUN_FLAG), "taskrun_flag");
	o.idle_poll_us = 50;
	cr_assert_eq(keel_features_decide(&o, d), 0);
	cr_assert(d[KEEL_FEAT_TASKRUN_FLAG].used);
}

/* keel_stop_requested: a shard still in a long on_start (loading files) sees the stop
 * another shard asked for, though its own stop cannot begin before on_start returns
 * (keel_shard_stopping stays false there); and it is false before that stop. Shard 0 asks
 * for the stop only once shard 1 has read it false. */
static _Atomic int sr_seen, sr_before = -1;

static void
sr_start(void *app)
{
	uint64_t dl = test_deadline(TEST_WAIT_MS);

	(void)app;
	if (keel_shard_id(keel_this_shard()) == 0) {
		while (atomic_load(&sr_before) < 0 && !test_expired(dl))
			test_pause();
		keel_stop(0);
		return;
	}
	atomic_store(&sr_before, keel_stop_requested() ? 1 : 0);
	while (!keel_stop_requested() && !test_expired(dl))
		test_pause();
	atomic_store(&sr_seen, keel_stop_requested() && !keel_shard_stopping() ? 1 : -1);
}

Test(core_runtime, a_long_start_sees_the_stop_another_shard_asked_for)
{
	struct keel_opts o = test_opts(2);

	atomic_store(&sr_seen, 0);
	atomic_store(&sr_before, -1);
	cr_assert_eq(keel_run(&o, sr_start, NULL), 0);
	cr_assert_eq(atomic_load(&sr_before), 0, "a stop was said requested before any was");
	cr_assert_eq(atomic_load(&sr_seen), 1, "shard 1's start did not see the stop (%d)",
		     atomic_load(&sr_seen));
}

/* keel__later (core/hooks.h), the deferred step the network's closes use: it runs from the
 * loop, once however often it is queued before it runs, again when its own call queues it,
 * and a keel_defer that it makes runs too. The pass counted the deferred calls before the
 * steps ran, and lost those the steps added past that count (a close list's on_close that
 * deferred something: it never ran, and keel-kv leaked a connection's state). */
static struct keel__later lt_node;
static _Atomic int lt_runs, lt_a, lt_b, lt_inside;

static void
lt_b_cb(void *arg)
{
	atomic_fetch_add(&lt_b, 1);
	keel_stop(0);
}

static void
lt_a_cb(void *arg)
{
	atomic_fetch_add(&lt_a, 1);
}

static void
lt_step(struct keel__later *l)
{
	if (atomic_load(&lt_inside))
		SHARD_CHECK(false, " the step ran inside keel__later");
	if (atomic_fetch_add(&lt_runs, 1) == 0) {
		/* Again, and a deferred call queued before it runs: that pass's count of
		 * them is not 0 when it does. */
		SHARD_CHECK_EQ(keel__later(l), 0);
		SHARD_CHECK_EQ(keel_defer(lt_a_cb, NULL), 0);
		return;
	}
	SHARD_CHECK_EQ(keel_defer(lt_b_cb, NULL), 0);
}

static void
lt_start(void *arg)
{
	lt_node.fn = lt_step;
	atomic_store(&lt_inside, 1);
	SHARD_CHECK_EQ(keel__later(&lt_node), 0);
	SHARD_CHECK_EQ(keel__later(&lt_node), 0);
	atomic_store(&lt_inside, 0);
}

Test(core_runtime, later_steps_run_once_from_the_loop_and_what_they_defer_runs)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;

	atomic_store(&lt_runs, 0);
	atomic_store(&lt_a, 0);
	atomic_store(&lt_b, 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, lt_start, NULL), 0);
	WAIT_FOR(atomic_load(&lt_b) == 1, "the call the step deferred");
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&lt_runs), 2, "queued twice then once from itself: %d runs",
		     atomic_load(&lt_runs));
	cr_assert_eq(atomic_load(&lt_a), 1);
}

/* --stats's table went to stderr at the join whatever sink the host had set, so a host that
 * routes keel's log could not capture it. With a sink it now comes through the log, a line
 * each (module "stats", INFO, not held back by the log level: --stats asked for it), and
 * nothing reaches stderr; without one the table on stderr is as it was. stderr is a file of
 * the test's for the join. */
static char stats_logged[8192];
static unsigned stats_lines, stats_memory_lines;

static void
stats_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	size_t n = strlen(stats_logged);

	(void)shard, (void)arg;
	if (strcmp(module, "stats") || level != KEEL_LOG_INFO)
		return;
	if (strstr(msg, " memory: ")) { /* a shard's memory line, at its end */
		stats_memory_lines++;
		return;
	}
	stats_lines++;
	snprintf(stats_logged + n, sizeof(stats_logged) - n, "%s\n", msg);
}

static void
stats_stop_at_once(void *app)
{
	(void)app;
	if (keel_shard_id(keel_this_shard()) == 0)
		keel_stop(0);
}

/* Run two shards with --stats and join with stderr in a file: what the file got. */
static void
stats_run(bool sink, char *err_out, size_t len)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	FILE *f = tmpfile();
	int saved;
	size_t n;

	cr_assert_not_null(f);
	o.stats = true;
	o.log_level = KEEL_LOG_WARN; /* --stats's lines are not held back by it */
	stats_logged[0] = 0;
	stats_lines = stats_memory_lines = 0;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	if (sink)
		keel_log_set_sink(stats_sink, NULL);
	cr_assert_eq(keel_runtime_start(rt, stats_stop_at_once, NULL), 0);
	fflush(stderr);
	saved = dup(2);
	cr_assert_geq(saved, 0);
	cr_assert_eq(dup2(fileno(f), 2), 2);
	cr_assert_eq(keel_runtime_join(rt), 0);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	rewind(f);
	n = fread(err_out, 1, len - 1, f);
	err_out[n] = 0;
	fclose(f);
}

Test(core_runtime, stats_go_through_the_log_sink_when_one_is_set)
{
	char err[8192];

	stats_run(true, err, sizeof(err));
	cr_assert(strstr(stats_logged, "shard") && strstr(stats_logged, "passes") &&
			  strstr(stats_logged, "merged"),
		  "no header line through the sink: '%s'", stats_logged);
	cr_assert_eq(stats_lines, 3, "%u lines (header and two shards): '%s'", stats_lines,
		     stats_logged);
	/* Each shard's memory line too (it was an INFO line of module "core", below the
	 * level, while the table was not). */
	cr_assert_eq(stats_memory_lines, 2, "%u shards' memory lines through the sink",
		     stats_memory_lines);
	cr_assert_null(strstr(err, "passes"), "the table went to stderr: '%s'", err);

	stats_run(false, err, sizeof(err)); /* no sink: stderr, as before */
	cr_assert(strstr(err, "shard") && strstr(err, "passes") && strstr(err, "merged"),
		  "no table on stderr: '%s'", err);
	cr_assert_eq(stats_lines, 0);
}

/* keel_runtime_join and keel_runtime_destroy on one of the runtime's own shards: refused
 * with an ERROR naming the fix. The join used to wait for the shard it runs on (its own
 * pthread_join failed unseen, EDEADLK) and for the others, which once stopped wait for it
 * at their exit: the process hung. A destroy of a runtime not joined joins it: the same. */
static _Atomic int own_r, own_lines;
static _Atomic bool own_destroy;

static void
own_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	const char *call = atomic_load(&own_destroy) ? "keel_runtime_destroy" : "keel_runtime_join";

	(void)module, (void)shard, (void)arg;
	if (level == KEEL_LOG_ERROR && strstr(msg, call) && strstr(msg, "on shard 0") &&
	    strstr(msg, "the thread that started"))
		atomic_fetch_add(&own_lines, 1);
}

static void
own_start(void *app)
{
	struct keel_shard *sh = keel_this_shard();
	struct keel_runtime *rt = keel_shard_runtime(sh);

	(void)app;
	if (keel_shard_id(sh) != 0)
		return;
	keel_runtime_stop(rt, 0);
	if (atomic_load(&own_destroy))
		keel_runtime_destroy(rt); /* refused: the runtime stays, the host joins it */
	else
		atomic_store(&own_r, keel_runtime_join(rt));
}

static void
own_run(bool destroy)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;

	atomic_store(&own_r, 1);
	atomic_store(&own_lines, 0);
	atomic_store(&own_destroy, destroy);
	keel_log_set_sink(own_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, own_start, NULL), 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	cr_assert_eq(atomic_load(&own_lines), 1, "%d ERROR lines naming the fix, want 1",
		     atomic_load(&own_lines));
}

Test(core_runtime, a_join_on_one_of_its_own_shards_is_refused, .timeout = 10)
{
	own_run(false);
	cr_assert_eq(atomic_load(&own_r), -EDEADLK, "the join on shard 0: %d", atomic_load(&own_r));
}

Test(core_runtime, a_destroy_on_one_of_its_own_shards_is_refused, .timeout = 10)
{
	own_run(true);
}

/* Two threads that join one runtime at once: one joins it and returns the stop status, the
 * other is refused with -EALREADY rather than join the same threads again (undefined; glibc
 * fails the second pthread_join, so that join returned at once, status 0, while the shards
 * still ran) and release the signal mask's record twice. The runtime stops only once one
 * join has returned: while it runs a join waits, so the one back first is the refused one,
 * whichever thread claimed first, and no timing decides the outcome. A join after the
 * first has returned gets the status. */
static _Atomic int cj_lines, cj_back;

static void
cj_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module, (void)shard, (void)arg;
	if (level == KEEL_LOG_ERROR && strstr(msg, "keel_runtime_join") &&
	    strstr(msg, "another thread"))
		atomic_fetch_add(&cj_lines, 1);
}

static void *
cj_join(void *rt)
{
	int r = keel_runtime_join(rt);

	atomic_fetch_add(&cj_back, 1);
	return (void *)(intptr_t)r;
}

Test(core_runtime, a_second_join_at_once_is_refused, .timeout = 30)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	pthread_t th[2];
	void *r[2];

	atomic_store(&cj_lines, 0);
	atomic_store(&cj_back, 0);
	keel_log_set_sink(cj_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, cj_join, rt), 0);
	while (atomic_load(&cj_back) == 0)
		usleep(1000);
	keel_runtime_stop(rt, 7);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_join(th[i], &r[i]), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert((intptr_t)r[0] + (intptr_t)r[1] == 7 - EALREADY &&
			  ((intptr_t)r[0] == 7 || (intptr_t)r[1] == 7),
		  "the two joins returned %d and %d: want the stop status (7) and -EALREADY",
		  (int)(intptr_t)r[0], (int)(intptr_t)r[1]);
	cr_assert_eq(atomic_load(&cj_lines), 1, "%d ERROR lines naming the fix, want 1",
		     atomic_load(&cj_lines));
	cr_assert_eq(keel_runtime_join(rt), 7, "a join after the join: not the status");
	keel_runtime_destroy(rt);
}

/* A destroy on one thread while another joins the runtime: the destroy stops it and waits
 * for that join to return before it frees anything. It used to stop, be refused by its own
 * join (-EALREADY, logged) and free the runtime under the joining thread (use after free:
 * run in the ASan build). The join is seen claimed (core/internal.h: rt->join) before the
 * destroy: while the runtime runs the join waits in it, so no timing decides the order. */
static _Atomic int dj_errors;

static void
dj_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module, (void)shard, (void)msg, (void)arg;
	if (level == KEEL_LOG_ERROR)
		atomic_fetch_add(&dj_errors, 1);
}

static void *
dj_join(void *rt)
{
	return (void *)(intptr_t)keel_runtime_join(rt);
}

Test(core_runtime, a_destroy_while_another_thread_joins_waits_for_that_join, .timeout = 30)
{
	struct keel_opts o = test_opts(2);
	struct keel_runtime *rt;
	pthread_t th;
	void *r;

	atomic_store(&dj_errors, 0);
	keel_log_set_sink(dj_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	cr_assert_eq(pthread_create(&th, NULL, dj_join, rt), 0);
	while (atomic_load(&rt->join) != JOIN_BUSY)
		sched_yield();
	keel_runtime_destroy(rt);
	cr_assert_eq(pthread_join(th, &r), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq((intptr_t)r, 0, "the join returned %d: want the destroy's stop status (0)",
		     (int)(intptr_t)r);
	cr_assert_eq(atomic_load(&dj_errors), 0,
		     "%d ERROR lines: the destroy's own join was refused", atomic_load(&dj_errors));
}

/* The same destroy, made just as that join ends: it has stored JOIN_DONE and still holds
 * start_lock to signal join_cond. The destroy read JOIN_DONE without the lock, skipped the
 * wait, destroyed the locked mutex and freed the runtime, and the joiner then signalled and
 * unlocked freed memory (a KEEL_FAULTS build checks the mutex's destroy: EBUSY aborted the
 * test). The join is held at that point (core/internal.h, keel__hook_join_done) until the
 * destroy is about to wait for the lock (keel__hook_join_wait), or has returned. */
#ifdef KEEL_FAULTS
static sem_t dd_held, dd_release;
static _Atomic int dd_waits;

static void
dd_hold(struct keel_runtime *rt)
{
	(void)rt;
	sem_post(&dd_held);
	test_sem_wait(&dd_release);
}

static void
dd_wait(struct keel_runtime *rt)
{
	(void)rt;
	atomic_fetch_add(&dd_waits, 1);
	sem_post(&dd_release);
}

Test(core_runtime, a_destroy_as_another_threads_join_ends_waits_for_it_to_let_go, .timeout = 60)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	pthread_t th;
	void *r;

	sem_init(&dd_held, 0, 0);
	sem_init(&dd_release, 0, 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, NULL, NULL), 0);
	keel__hook_join_done = dd_hold;
	keel__hook_join_wait = dd_wait;
	cr_assert_eq(pthread_create(&th, NULL, dj_join, rt), 0);
	keel_runtime_stop(rt, 5);
	cr_assert(test_sem_wait(&dd_held), "the join never reached its end");
	keel_runtime_destroy(rt); /* JOIN_DONE stored, start_lock held by the joiner */
	sem_post(&dd_release);    /* without the wait: the joiner goes on in freed memory */
	cr_assert_eq(pthread_join(th, &r), 0);
	keel__hook_join_done = NULL;
	keel__hook_join_wait = NULL;
	cr_assert_eq((intptr_t)r, 5, "the join returned %d: want the stop status (5)",
		     (int)(intptr_t)r);
	cr_assert_eq(atomic_load(&dd_waits), 1, "the destroy waited %d times for the join",
		     atomic_load(&dd_waits));
}
#else
Test(core_runtime, a_destroy_as_another_threads_join_ends_waits_for_it_to_let_go)
{
	cr_skip_test("needs fault injection's pause points: a -DKEEL_FAULTS=ON build (build-asan)");
}
#endif

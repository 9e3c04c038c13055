// SPDX-License-Identifier: MIT
/* keel_call_value: a value computed on another shard comes back to the caller's shard. */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>

#include "helpers.h"

struct value_test {
	_Atomic int fn_shard;
	_Atomic int done_shard[2];
	_Atomic int status[2];
	_Atomic uint64_t value[2];
	_Atomic unsigned dones;
};

/* Returns a value that says where it ran. */
static int
where_fn(void *arg, uint64_t *value)
{
	struct value_test *v = arg;
	unsigned id = keel_shard_id(keel_this_shard());

	atomic_store(&v->fn_shard, (int)id);
	*value = 1000u + id;
	return 0;
}

/* Fails, but still sets a value: both reach the caller. */
static int
failing_fn(void *arg, uint64_t *value)
{
	*value = 77;
	return -ENOENT;
}

static void
value_done(int status, uint64_t value, void *arg)
{
	struct value_test *v = arg;
	unsigned i = atomic_fetch_add(&v->dones, 1);

	if (!SHARD_CHECK(i < 2, "done ran %u times", i + 1))
		return;
	atomic_store(&v->done_shard[i], (int)keel_shard_id(keel_this_shard()));
	atomic_store(&v->status[i], status);
	atomic_store(&v->value[i], value);
	if (i == 0) {
		/* Second call from the done callback: ordered after the first. */
		if (!SHARD_CHECK_EQ(keel_call_value(2, failing_fn, v, value_done, v), 0))
			keel_stop(-EIO);
	} else {
		keel_stop(0);
	}
}

static void
value_start(void *app)
{
	if (keel_shard_id(keel_this_shard()) == 1 &&
	    !SHARD_CHECK_EQ(keel_call_value(2, where_fn, app, value_done, app), 0))
		keel_stop(-EIO);
}

Test(core_call, value_computed_remotely_reaches_done_on_caller)
{
	struct keel_opts o = test_opts(3);
	struct value_test v = { .fn_shard = -1, .done_shard = { -1, -1 } };
	int r = keel_run(&o, value_start, &v);

	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(atomic_load(&v.dones), 2);
	cr_assert_eq(atomic_load(&v.fn_shard), 2);
	cr_assert_eq(atomic_load(&v.done_shard[0]), 1);
	cr_assert_eq(atomic_load(&v.status[0]), 0);
	cr_assert_eq(atomic_load(&v.value[0]), 1002, "value %llu",
		     (unsigned long long)atomic_load(&v.value[0]));
	cr_assert_eq(atomic_load(&v.done_shard[1]), 1);
	cr_assert_eq(atomic_load(&v.status[1]), -ENOENT);
	cr_assert_eq(atomic_load(&v.value[1]), 77);
}

/* A pointer to memory the remote shard allocated is a value like any other: here a string
 * built on shard 1, read and freed by the caller (plain malloc memory, not a slice). */
struct ptr_test {
	char text[32];
	_Atomic int ok;
};

static int
make_text(void *arg, uint64_t *value)
{
	char *p = malloc(32);

	if (!p)
		return -ENOMEM;
	snprintf(p, 32, "made on shard %u", keel_shard_id(keel_this_shard()));
	*value = (uint64_t)(uintptr_t)p;
	return 0;
}

static void
text_done(int status, uint64_t value, void *arg)
{
	struct ptr_test *t = arg;
	char *p = (char *)(uintptr_t)value;

	if (SHARD_CHECK_EQ(status, 0) && SHARD_CHECK(p != NULL, "no pointer")) {
		snprintf(t->text, sizeof(t->text), "%s", p);
		atomic_store(&t->ok, 1);
	}
	free(p);
	keel_stop(0);
}

static void
ptr_start(void *app)
{
	if (keel_shard_id(keel_this_shard()) == 0 &&
	    !SHARD_CHECK_EQ(keel_call_value(1, make_text, NULL, text_done, app), 0))
		keel_stop(-EIO);
}

Test(core_call, pointer_value_from_the_remote_shard)
{
	struct keel_opts o = test_opts(2);
	struct ptr_test t = { .ok = 0 };

	cr_assert_eq(keel_run(&o, ptr_start, &t), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&t.ok), 1);
	cr_assert_str_eq(t.text, "made on shard 1");
}

/* During stop: a call made by an on-stop hook still runs and its value still comes back
 * while the runtime drains; a call made once the shard is stopping (from that reply's done
 * callback) is refused with -ESHUTDOWN, and its done never runs. */
struct stop_test {
	_Atomic int hook_ret;
	_Atomic int late_ret;
	_Atomic int status;
	_Atomic uint64_t value;
	_Atomic unsigned dones;
};

static int
stop_fn(void *arg, uint64_t *value)
{
	*value = 0xfeedu;
	return 0;
}

static void
stop_late_done(int status, uint64_t value, void *arg)
{
	struct stop_test *t = arg;
	atomic_fetch_add(&t->dones, 100); /* must never run */
}

static void
stop_done(int status, uint64_t value, void *arg)
{
	struct stop_test *t = arg;

	atomic_fetch_add(&t->dones, 1);
	atomic_store(&t->status, status);
	atomic_store(&t->value, value);
	atomic_store(&t->late_ret, keel_call_value(1, stop_fn, t, stop_late_done, t));
}

static void
stop_hook(void *arg)
{
	struct stop_test *t = arg;
	atomic_store(&t->hook_ret, keel_call_value(1, stop_fn, t, stop_done, t));
}

static void
stop_start(void *app)
{
	if (keel_shard_id(keel_this_shard()) != 0)
		return;
	if (!SHARD_CHECK_EQ(keel_shard_on_stop(stop_hook, app), 0)) {
		keel_stop(-EIO);
		return;
	}
	keel_stop(0);
}

Test(core_call, call_during_stop)
{
	struct keel_opts o = test_opts(2);
	struct stop_test t = { .hook_ret = 1, .late_ret = 1 };

	cr_assert_eq(keel_run(&o, stop_start, &t), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&t.hook_ret), 0);
	cr_assert_eq(atomic_load(&t.dones), 1, "done ran %u (100 = the refused call's)",
		     atomic_load(&t.dones));
	cr_assert_eq(atomic_load(&t.status), 0);
	cr_assert_eq(atomic_load(&t.value), 0xfeedu);
	cr_assert_eq(atomic_load(&t.late_ret), -ESHUTDOWN);
}

static void
bad_start(void *app)
{
	int *r = app;

	r[0] = keel_call_value(9, stop_fn, NULL, stop_done, NULL);
	r[1] = keel_call_value(0, NULL, NULL, stop_done, NULL);
	r[2] = keel_call_value(0, stop_fn, NULL, NULL, NULL);
	keel_stop(0);
}

Test(core_call, bad_arguments_are_einval)
{
	struct keel_opts o = test_opts(1);
	int r[3] = { 1, 1, 1 };

	cr_assert_eq(keel_run(&o, bad_start, r), 0);
	cr_assert_eq(r[0], -EINVAL);
	cr_assert_eq(r[1], -EINVAL);
	cr_assert_eq(r[2], -EINVAL);
}

/* A call made while the runtime stops, whose work defers more work on the remote shard:
 * that shard, stopping and idle (quiescent) a pass before, receives the call, queues the
 * reply and runs the deferred work before its pass ends and the reply is published.
 * Stopping must wait for the reply: every message a handler sends counts as sent, and its
 * shard as busy, before the message that caused it counts as received. (The deferred
 * work spins 2 ms, so the caller's termination check runs many times in that window.) */
struct late_reply {
	_Atomic unsigned dones, deferred;
	_Atomic int status;
};

static void
spin_ms(long ms)
{
	struct timespec a, b;

	clock_gettime(CLOCK_MONOTONIC, &a);
	do
		clock_gettime(CLOCK_MONOTONIC, &b);
	while ((b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) < ms * 1000000L);
}

static void
late_spin(void *arg)
{
	struct late_reply *t = arg;

	spin_ms(2);
	atomic_fetch_add(&t->deferred, 1);
}

static int
late_fn(void *arg)
{
	return keel_defer(late_spin, arg);
}

static void
late_done(int status, void *arg)
{
	struct late_reply *t = arg;

	atomic_store(&t->status, status);
	atomic_fetch_add(&t->dones, 1);
}

static void
late_hook(void *arg)
{
	SHARD_CHECK_EQ(keel_call(1, late_fn, arg, late_done, arg), 0);
}

static void
late_start(void *app)
{
	if (keel_shard_id(keel_this_shard()) != 0) {
		keel_stop(0); /* shard 1 stops first and is idle when the call comes */
		return;
	}
	if (!SHARD_CHECK_EQ(keel_shard_on_stop(late_hook, app), 0)) {
		keel_stop(-EIO);
		return;
	}
	spin_ms(5); /* shard 0 notices the stop later, and calls from its stop hook */
}

Test(core_call, a_reply_sent_while_stopping_is_delivered, .timeout = 60)
{
	for (int i = 0; i < 20; i++) {
		struct keel_opts o = test_opts(2);
		struct late_reply t = { 0 };

		cr_assert_eq(keel_run(&o, late_start, &t), 0);
		SHARD_CHECKS_PASSED();
		cr_assert_eq(atomic_load(&t.deferred), 1, "round %d: the deferred work", i);
		cr_assert_eq(atomic_load(&t.dones), 1, "round %d: the reply was not delivered", i);
		cr_assert_eq(atomic_load(&t.status), 0);
	}
}

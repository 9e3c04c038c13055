// SPDX-License-Identifier: MIT
/*
 * A created timer's memory, freed by keel_timer_destroy and handed out again by malloc, made
 * a timer of the caller's with keel_timer_init. This binary's malloc is jemalloc, which
 * gives a freed block back unchanged: keel_timer_init took the destroyed timer's fields
 * (live, created, this shard) for a live created timer's and aborted the process.
 */
#include <keel/keel.h>
#include <stdlib.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define MiB (1ULL << 20)

static struct {
	void *freed, *got;
	int init_res;
} tr;

static void
tr_fn(struct keel_timer *t, void *arg)
{
	(void)t, (void)arg;
}

static void
tr_start(void *arg)
{
	struct keel_timer *t, *m;

	(void)arg;
	if (SHARD_CHECK_EQ(keel_timer_create(tr_fn, NULL, &t), 0)) {
		tr.freed = t;
		keel_timer_destroy(t);
		m = malloc(sizeof(*m));
		tr.got = m;
		if (SHARD_CHECK(m != NULL, "memory")) {
			tr.init_res = keel_timer_init(m, tr_fn, NULL);
			if (tr.init_res == 0)
				keel_timer_fini(m);
			free(m);
		}
	}
	keel_stop(0);
}

Test(alloc_timer, a_destroyed_timers_memory_reused_makes_a_timer)
{
	struct keel_opts o;

	keel_opts_init(&o);
	o.shards = 1;
	o.signals = false;
	o.memory = 16 * MiB;
	o.idle_poll_us = 0;
	cr_assert_eq(keel_run(&o, tr_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(tr.init_res, 0, "keel_timer_init: %d", tr.init_res);
	if (tr.got != tr.freed)
		cr_skip("malloc did not give back the destroyed timer's memory: the reuse was "
			"not shown");
}

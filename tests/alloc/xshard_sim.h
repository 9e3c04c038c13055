/* SPDX-License-Identifier: MIT */
/*
 * Several "shards" on the test thread, without a runtime: one allocator per shard, a
 * send_home hook that posts into a mailbox, and on(i)/deliver(i) to act as shard i. The
 * order of every get, put and message is the test's, so each step can be asserted.
 */
#ifndef KEEL_TEST_XSHARD_SIM_H
#define KEEL_TEST_XSHARD_SIM_H

#include <keel/alloc_runtime.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define SIM_SHARDS 3
#define SIM_MAIL   64

struct sim {
	struct keel_alloc *a[SIM_SHARDS];
	struct {
		struct keel_alloc *home;
		struct keel_buf *b;
	} mail[SIM_MAIL];
	unsigned nmail;
	unsigned released; /* external buffers whose release callback ran */
	unsigned released_on[SIM_SHARDS];
	int cur;
};

static struct sim sim;

static inline int
sim_send_home(struct keel_alloc *home, struct keel_buf *b, void *ctx)
{
	(void)ctx;
	cr_assert_lt(sim.nmail, SIM_MAIL);
	sim.mail[sim.nmail].home = home;
	sim.mail[sim.nmail].b = b;
	sim.nmail++;
	return 0;
}

static inline void
sim_on(int i)
{
	sim.cur = i;
	keel_alloc_bind_thread(sim.a[i]);
}

/* Messages waiting for shard @i. */
static inline unsigned
sim_pending(int i)
{
	unsigned n = 0;
	for (unsigned k = 0; k < sim.nmail; k++)
		n += sim.mail[k].home == sim.a[i];
	return n;
}

/* Run shard @i's messages (as the runtime's release_home does), in order; returns how many. */
static inline unsigned
sim_deliver(int i)
{
	unsigned n = 0, k = 0;

	sim_on(i);
	while (k < sim.nmail) {
		if (sim.mail[k].home != sim.a[i]) {
			k++;
			continue;
		}
		struct keel_buf *b = sim.mail[k].b;
		memmove(&sim.mail[k], &sim.mail[k + 1], (sim.nmail - k - 1) * sizeof(sim.mail[0]));
		sim.nmail--;
		keel_buf_release(b);
		n++;
	}
	return n;
}

static inline void
sim_ext_release(void *data, uint32_t cap, void *arg)
{
	(void)data;
	(void)cap;
	(void)arg;
	sim.released++;
	sim.released_on[sim.cur]++;
}

static inline void
sim_init(keel_alloc_log_fn log, void *log_arg)
{
	memset(&sim, 0, sizeof(sim));
	if (log)
		keel_alloc_log_set(log, log_arg);
	for (int i = 0; i < SIM_SHARDS; i++) {
		struct keel_alloc_config c =
			test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 8ULL << 20, 4ULL << 20);
		c.shard = (unsigned)i;
		c.send_home = sim_send_home;
		cr_assert_eq(keel_alloc_create(&c, &sim.a[i]), 0);
	}
	sim_on(0);
}

static inline void
sim_fini(void)
{
	cr_assert_eq(sim.nmail, 0, "%u messages never delivered", sim.nmail);
	for (int i = 0; i < SIM_SHARDS; i++) {
		sim_on(i);
		keel_alloc_destroy(sim.a[i]);
	}
}

#endif

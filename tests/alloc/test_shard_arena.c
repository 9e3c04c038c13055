// SPDX-License-Identifier: MIT
/*
 * keel_shard_malloc: shard-local objects come from the shard's own jemalloc arena, and so
 * do core's mailbox overflow nodes.
 */
#include <errno.h>
#include <keel/keel.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>
#include <jemalloc/jemalloc.h>

#include "helpers.h"

static unsigned
arena_of(void *p)
{
	unsigned idx = ~0u;
	size_t sz = sizeof(idx);

	if (mallctl("arenas.lookup", &idx, &sz, &p, sizeof(p)))
		return ~0u;
	return idx;
}

static uint64_t
arena_small_nmalloc(unsigned arena)
{
	uint64_t epoch = 1, v = 0;
	size_t sz = sizeof(epoch);
	char key[64];

	mallctl("epoch", &epoch, &sz, &epoch, sz);
	snprintf(key, sizeof(key), "stats.arenas.%u.small.nmalloc", arena);
	sz = sizeof(v);
	if (mallctl(key, &v, &sz, NULL, 0))
		return 0;
	return v;
}

struct sa_state {
	unsigned arena, got_arena, got_arena_realloc;
	bool ok_null_free;
	uint64_t nmalloc_before, nmalloc_after, overflow;
	_Atomic unsigned received;
};

static struct sa_state sa;

#define SA_MSGS 200

static void
sa_count(void *arg)
{
	if (++sa.received == SA_MSGS)
		keel_stop(0);
}

static void
sa_start(void *app)
{
	void *p, *q;

	if (keel_shard_id(keel_this_shard()) != 0)
		return;
	sa.arena = keel_alloc_arena(keel_shard_alloc());
	p = keel_shard_malloc(100);
	sa.got_arena = p ? arena_of(p) : ~0u;
	q = keel_shard_realloc(p, 10000);
	sa.got_arena_realloc = q ? arena_of(q) : ~0u;
	keel_shard_free(q ? q : p);
	keel_shard_free(NULL);
	sa.ok_null_free = true;
	/* A burst past a 16-slot mailbox: the rest goes to overflow nodes. */
	sa.nmalloc_before = arena_small_nmalloc(sa.arena);
	for (unsigned i = 0; i < SA_MSGS; i++)
		if (!SHARD_CHECK_EQ(keel_send(1, sa_count, NULL), 0, "message %u", i)) {
			keel_stop(-EIO);
			break;
		}
	sa.nmalloc_after = arena_small_nmalloc(sa.arena);
}

Test(alloc_shard_arena, shard_malloc_and_core_overflow_nodes_use_the_shards_arena)
{
	struct keel_opts o;
	int r;

	memset(&sa, 0, sizeof(sa));
	keel_opts_init(&o);
	o.shards = 2;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	o.memory = 8 << 20;
	o.mailbox_entries = 16;
	o.idle_poll_us = 0; /* two tests at once on two cores: no spinning shards */
	r = keel_run(&o, sa_start, NULL);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(sa.received, SA_MSGS);
	cr_assert_eq(sa.got_arena, sa.arena, "keel_shard_malloc: arena %u, shard's %u",
		     sa.got_arena, sa.arena);
	cr_assert_eq(sa.got_arena_realloc, sa.arena);
	cr_assert(sa.ok_null_free);
	/* jemalloc counts tcache fills, not each object: at least one fill for the nodes. */
	cr_assert_gt(sa.nmalloc_after, sa.nmalloc_before,
		     "no allocation in the shard's arena for %u overflow nodes", SA_MSGS - 16);
}

// SPDX-License-Identifier: MIT
/*
 * keel_shard_malloc: shard-local objects come from the shard's own jemalloc arena, and so
 * do core's mailbox overflow nodes.
 */
#include <errno.h>
#include <keel/alloc_runtime.h>
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

/* A destroyed allocator's general arena is emptied and kept for the next one: destroyed,
 * each left its metadata mapped (2 MiB of address space with jemalloc's default retain),
 * and a host that started and stopped runtimes grew by that per shard and run (a 400-run
 * loop of 2 shards went from 46 MiB to 1.7 GiB; jemalloc gave the index out again, not the
 * metadata). The next allocator gets the same arena, and the process's address space
 * stays where it was over 100 of them. */
static long
vm_size_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "VmSize:", 7))
			sscanf(line + 7, "%ld", &v);
	if (f)
		fclose(f);
	return v;
}

Test(alloc_shard_arena, a_destroyed_allocators_general_arena_serves_the_next_one)
{
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 8ull << 20, 4ull << 20);
	struct keel_alloc *a;
	unsigned first = KEEL_ALLOC_NO_ARENA;
	long before = 0;

	for (int i = 0; i < 101; i++) {
		void *p;

		cr_assert_eq(keel_alloc_create(&c, &a), 0);
		keel_alloc_bind_thread(a);
		if (i == 0) {
			first = keel_alloc_arena(a);
			cr_assert_neq(first, KEEL_ALLOC_NO_ARENA, "jemalloc is on in this binary");
		} else {
			cr_assert_eq(keel_alloc_arena(a), first, "run %d: arena %u, the first %u",
				     i, keel_alloc_arena(a), first);
		}
		p = keel_alloc_malloc(a, 1000);
		cr_assert_not_null(p);
		cr_assert_eq(arena_of(p), first);
		memset(p, 7, 1000);
		keel_alloc_free(a, p);
		keel_alloc_bind_thread(NULL);
		keel_alloc_destroy(a);
		if (i == 0)
			before = vm_size_kb();
	}
	cr_assert_leq(vm_size_kb(), before + 4096, "VmSize %ld kB after 100 more, %ld after one",
		      vm_size_kb(), before);
}

// SPDX-License-Identifier: MIT
/*
 * jemalloc: the shard's general arena, and the jemalloc backend for buffers: an arena whose
 * extent hooks carve extents out of the shard's regions, so jemalloc does the size classes
 * and everything it returns from that arena is registered memory. Both only where the
 * program opted in with keel_jemalloc_enable() before creating the allocator (jemalloc is
 * reached through a->je); otherwise general allocation is the C library's malloc.
 *
 * The hooks never give memory back to the kernel: purge and decommit are left unset (a
 * purged page of a registered region would no longer be the page the ring pinned), dalloc
 * opts out (jemalloc retains and reuses the extent), and merge refuses to join extents of
 * two regions (a block must lie inside one fixed buffer).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "alloc_internal.h"

/* jemalloc 5.3's experimental.arenas_create_ext takes this (not in the public header):
 * metadata_use_hooks=false keeps jemalloc's own metadata out of the registered regions. */
struct je_arena_config {
	extent_hooks_t *extent_hooks;
	bool metadata_use_hooks;
};

static struct keel_alloc *
hooks_alloc(extent_hooks_t *h)
{
	return ((struct ext_hooks *)h)->a;
}

static void *
ext_alloc(extent_hooks_t *h, void *new_addr, size_t size, size_t alignment, bool *zero,
	  bool *commit, unsigned arena_ind)
{
	struct keel_alloc *a = hooks_alloc(h);
	void *p;

	/* Growing in place at a given address is not supported: jemalloc then allocates a
	 * new extent and copies. */
	if (new_addr)
		return NULL;
	/* A pool block: inside one region, aligned to its own size; the chunks past @size go
	 * back to the pool (jemalloc's extents are mostly not powers of two, 2.5 or 3.5 MiB,
	 * or a page over one, and the rest of the block was lost until the destroy). */
	p = keel__pool_alloc_trim(a, size, alignment);
	if (!p)
		return NULL;
	/* Carved memory was never handed out before: fresh (zero) pages, committed. */
	*zero = true;
	*commit = true;
	return p;
}

static bool
ext_dalloc(extent_hooks_t *h, void *addr, size_t size, bool committed, unsigned arena_ind)
{
	return true; /* opt out: jemalloc keeps the extent for reuse */
}

static void
ext_destroy(extent_hooks_t *h, void *addr, size_t size, bool committed, unsigned arena_ind)
{
	/* The regions are unmapped as a whole when the allocator is destroyed. */
}

static bool
ext_commit(extent_hooks_t *h, void *addr, size_t size, size_t offset, size_t length,
	   unsigned arena_ind)
{
	return false; /* always committed */
}

static bool
ext_split(extent_hooks_t *h, void *addr, size_t size, size_t size_a, size_t size_b, bool committed,
	  unsigned arena_ind)
{
	return false;
}

static bool
ext_merge(extent_hooks_t *h, void *addr_a, size_t size_a, void *addr_b, size_t size_b,
	  bool committed, unsigned arena_ind)
{
	struct keel_alloc *a = hooks_alloc(h);
	uintptr_t ra = ((uintptr_t)addr_a - (uintptr_t)a->base) >> a->region_shift;
	uintptr_t rb = ((uintptr_t)addr_b + size_b - 1 - (uintptr_t)a->base) >> a->region_shift;

	return ra != rb; /* true refuses */
}

/* Set arena @arena's @name to the @n bytes at @v; a refusal is logged with @why (what the
 * arena would do without the setting) and returned as a negative errno. */
static int
arena_set(const struct keel__je *je, unsigned arena, const char *name, void *v, size_t n,
	  const char *why)
{
	char key[64];
	int r;

	snprintf(key, sizeof(key), "arena.%u.%s", arena, name);
	r = je->mallctl_fn(key, NULL, NULL, v, n);
	if (r)
		keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
				"jemalloc refused %s (%s): without it the registered arena %s; "
				"use jemalloc 5.1 or later, or the slab backend "
				"(KEEL_ALLOC_BACKEND_SLAB)",
				key, strerror(r), why);
	return -r;
}

static int
tcache_create(const struct keel__je *je, unsigned *out)
{
	size_t sz = sizeof(*out);
	return je->mallctl_fn("tcache.create", out, &sz, NULL, 0);
}

/* General arenas (jemalloc's own extent hooks) and their tcaches, emptied by a destroyed
 * allocator and kept for the next one: a destroyed arena leaves its metadata mapped (with
 * jemalloc's default opt.retain), 2 MiB of address space each, so a host that starts and
 * stops runtimes grew by that per shard and run. A registered arena is never kept: its
 * hooks and retained extents are its allocator's regions, gone with it. */
#define SPARE_MAX 256
static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	unsigned arena, tcache;
} spare[SPARE_MAX];
static unsigned nspare;

static bool
spare_take(unsigned *arena, unsigned *tcache)
{
	bool got = false;

	pthread_mutex_lock(&spare_lock);
	if (nspare) {
		nspare--;
		*arena = spare[nspare].arena;
		*tcache = spare[nspare].tcache;
		got = true;
	}
	pthread_mutex_unlock(&spare_lock);
	return got;
}

/* Empty general arena @arena (its tcache flushed first) and keep the pair; false when it
 * could not be emptied or no place is left (the caller destroys it). */
static bool
spare_keep(const struct keel__je *je, unsigned arena, unsigned tcache)
{
	char key[64];
	bool kept = false;

	if (je->mallctl_fn("tcache.flush", NULL, NULL, &tcache, sizeof(tcache)))
		return false;
	snprintf(key, sizeof(key), "arena.%u.reset", arena);
	pthread_mutex_lock(&spare_lock);
	if (nspare < SPARE_MAX && !je->mallctl_fn(key, NULL, NULL, NULL, 0)) {
		spare[nspare].arena = arena;
		spare[nspare].tcache = tcache;
		nspare++;
		kept = true;
	}
	pthread_mutex_unlock(&spare_lock);
	return kept;
}

/* jemalloc refused to create @what (a thread cache when @tcache) with @r (an errno): said,
 * with what it means, and returned as a negative errno (without it the create's caller saw
 * only the allocator's failure). jemalloc gives EAGAIN for an arena past its 4,095, EFAULT
 * for a thread cache past its 4,096 or without memory. */
static int
je_refused(const char *what, bool tcache, int r)
{
	const char *why = "an error of jemalloc's own (keel is tested with Debian's jemalloc 5.3)";

	if (r == ENOMEM)
		why = "memory ran out for jemalloc's metadata";
	else if (r == EAGAIN && !tcache)
		why = "it has no arena left (4,095 at most: fewer shards or runtimes alive at once)";
	else if (r == EFAULT && tcache)
		why = "it has no thread cache left (4,096 at most: fewer shards or runtimes alive "
		      "at once) or its memory ran out";
	keel__alloc_log(KEEL_ALLOC_LOG_ERROR, "jemalloc could not create %s (%s): %s", what,
			strerror(r), why);
	return -r;
}

int
keel__je_general_init(struct keel_alloc *a)
{
	size_t sz = sizeof(a->gen_arena);
	int r;

	if (spare_take(&a->gen_arena, &a->gen_tcache)) {
		a->gen_flags = (int)(MALLOCX_ARENA(a->gen_arena) | MALLOCX_TCACHE(a->gen_tcache));
		a->gen_ok = true;
		return 0;
	}
	r = a->je->mallctl_fn("arenas.create", &a->gen_arena, &sz, NULL, 0);
	if (r)
		return je_refused("the shard's general arena", false, r);
	r = tcache_create(a->je, &a->gen_tcache);
	if (r) {
		char key[64];
		snprintf(key, sizeof(key), "arena.%u.destroy", a->gen_arena);
		a->je->mallctl_fn(key, NULL, NULL, NULL, 0);
		return je_refused("the general arena's thread cache", true, r);
	}
	a->gen_flags = (int)(MALLOCX_ARENA(a->gen_arena) | MALLOCX_TCACHE(a->gen_tcache));
	a->gen_ok = true;
	return 0;
}

int
keel__je_registered_init(struct keel_alloc *a)
{
	struct je_arena_config cfg;
	extent_hooks_t *hp = &a->hooks.h;
	size_t sz = sizeof(a->reg_arena);
	size_t grow = a->region_size;
	ssize_t never = -1;
	char key[64];
	int r;

	memset(&a->hooks, 0, sizeof(a->hooks));
	a->hooks.h.alloc = ext_alloc;
	a->hooks.h.dalloc = ext_dalloc;
	a->hooks.h.destroy = ext_destroy;
	a->hooks.h.commit = ext_commit;
	a->hooks.h.split = ext_split;
	a->hooks.h.merge = ext_merge;
	a->hooks.a = a;

	cfg.extent_hooks = hp;
	cfg.metadata_use_hooks = false;
	r = a->je->mallctl_fn("experimental.arenas_create_ext", &a->reg_arena, &sz, &cfg,
			      sizeof(cfg));
	/* Only a jemalloc without the call (older than 5.3: ENOENT) falls back, and its
	 * metadata then lives in the regions too; any other refusal (EAGAIN: no arena left)
	 * fell back silently, metadata counted against the registered memory. */
	if (r == ENOENT)
		r = a->je->mallctl_fn("arenas.create", &a->reg_arena, &sz, &hp, sizeof(hp));
	if (r)
		return je_refused("the registered arena", false, r);
	/* No decay work: nothing is ever purged. Grow no further than a region at a time (an
	 * extent larger than a region cannot be carved: without the limit a 64 MiB cap of 4 MiB
	 * regions held 34 buffers of 1 MiB, against 45 with it). */
	r = arena_set(a->je, a->reg_arena, "dirty_decay_ms", &never, sizeof(never),
		      "would try to purge registered memory");
	if (!r)
		r = arena_set(a->je, a->reg_arena, "muzzy_decay_ms", &never, sizeof(never),
			      "would try to purge registered memory");
	if (!r)
		r = arena_set(a->je, a->reg_arena, "retain_grow_limit", &grow, sizeof(grow),
			      "would ask for extents larger than a region and fail with "
			      "memory free");
	if (!r && (r = tcache_create(a->je, &a->reg_tcache)) != 0)
		r = je_refused("the registered arena's thread cache", true, r);
	if (r) {
		snprintf(key, sizeof(key), "arena.%u.destroy", a->reg_arena);
		a->je->mallctl_fn(key, NULL, NULL, NULL, 0);
		return r;
	}
	a->reg_flags = (int)(MALLOCX_ARENA(a->reg_arena) | MALLOCX_TCACHE(a->reg_tcache));
	a->reg_ok = true;
	return 0;
}

static void
destroy_pair(const struct keel__je *je, unsigned arena, unsigned tcache)
{
	char key[64];

	/* The tcache first: arena reset requires every tcache that used it to be flushed. */
	je->mallctl_fn("tcache.destroy", NULL, NULL, &tcache, sizeof(tcache));
	snprintf(key, sizeof(key), "arena.%u.destroy", arena);
	if (je->mallctl_fn(key, NULL, NULL, NULL, 0))
		keel__alloc_log(KEEL_ALLOC_LOG_WARN, "jemalloc arena %u could not be destroyed",
				arena);
}

void
keel__je_fini(struct keel_alloc *a)
{
	if (a->reg_ok)
		destroy_pair(a->je, a->reg_arena, a->reg_tcache);
	if (a->gen_ok && !spare_keep(a->je, a->gen_arena, a->gen_tcache))
		destroy_pair(a->je, a->gen_arena, a->gen_tcache);
	a->reg_ok = a->gen_ok = false;
}

void *
keel_alloc_malloc(struct keel_alloc *a, size_t size)
{
	if (!a->je)
		return malloc(size ? size : 1);
	return a->je->mallocx_fn(size ? size : 1, a->gen_flags);
}

void *
keel_alloc_realloc(struct keel_alloc *a, void *p, size_t size)
{
	if (!p)
		return keel_alloc_malloc(a, size);
	if (!a->je)
		return realloc(p, size ? size : 1);
	return a->je->rallocx_fn(p, size ? size : 1, a->gen_flags);
}

void
keel_alloc_free(struct keel_alloc *a, void *p)
{
	if (!p)
		return;
	if (!a->je)
		free(p);
	/* An explicit tcache belongs to one thread: off the shard, go to the arena. */
	else if (a == keel__alloc_cur)
		a->je->dallocx_fn(p, a->gen_flags);
	else
		a->je->dallocx_fn(p, MALLOCX_TCACHE_NONE);
}

unsigned
keel_alloc_arena(const struct keel_alloc *a)
{
	return a->gen_ok ? a->gen_arena : KEEL_ALLOC_NO_ARENA;
}

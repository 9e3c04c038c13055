// SPDX-License-Identifier: MIT
/*
 * The pool and the slab backend.
 *
 * The pool hands out blocks of 64 KiB << order from the regions with a buddy allocator
 * whose state lives in a side table (one struct chunk per 64 KiB), so freed blocks merge
 * back up to whole regions and serve any size. Regions enter the pool in order, when it
 * has no block big enough.
 *
 * The slab: power-of-two size classes from 64 bytes to the region size. A class below
 * 64 KiB carves objects from chunks it takes from the pool: its current chunk serves the
 * fast path (the chunk's free list, then its bump range); chunks with free objects wait
 * on the class's partial list; a chunk whose last object is freed goes back to the pool,
 * except the class's current chunk and up to EMPTY_KEEP others, which are kept (a burst
 * that empties and refills a few chunks would split and merge pool blocks each time)
 * until the pool runs dry. A class of 64 KiB or more takes one block per object and keeps
 * up to LARGE_CACHE freed blocks for reuse, also given back when the pool runs dry. So
 * allocation fails only when live bytes plus the free space of partially used chunks
 * reach the cap (at worst one 64 KiB chunk per live small object, for a pathological
 * pattern; for ordinary churn a few chunks per class). Shard-local: no locks.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "alloc_internal.h"

int
keel__pool_init(struct keel_alloc *a)
{
	uint64_t n = (uint64_t)a->nregions << a->chunk_order;

	/* Address space only: the kernel supplies zero pages as regions come into use. */
	a->chunks_len = n * sizeof(struct chunk);
	a->chunks = mmap(NULL, a->chunks_len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (a->chunks == MAP_FAILED) {
		a->chunks = NULL;
		return -ENOMEM;
	}
	for (unsigned k = 0; k < POOL_ORDERS; k++)
		a->pool_free[k] = CHUNK_NONE;
	return 0;
}

void
keel__pool_fini(struct keel_alloc *a)
{
	if (a->chunks)
		munmap(a->chunks, a->chunks_len);
	a->chunks = NULL;
}

static inline uint8_t *
chunk_addr(struct keel_alloc *a, uint32_t idx)
{
	return a->base + ((uint64_t)idx << CHUNK_SHIFT);
}

static void
list_push(struct keel_alloc *a, uint32_t *head, uint32_t idx)
{
	struct chunk *c = &a->chunks[idx];

	c->prev = CHUNK_NONE;
	c->next = *head;
	if (*head != CHUNK_NONE)
		a->chunks[*head].prev = idx;
	*head = idx;
}

static void
list_unlink(struct keel_alloc *a, uint32_t *head, uint32_t idx)
{
	struct chunk *c = &a->chunks[idx];

	if (c->prev != CHUNK_NONE)
		a->chunks[c->prev].next = c->next;
	else
		*head = c->next;
	if (c->next != CHUNK_NONE)
		a->chunks[c->next].prev = c->prev;
	c->next = c->prev = CHUNK_NONE;
}

static void
block_free(struct keel_alloc *a, uint32_t idx, unsigned k)
{
	while (k < a->chunk_order) {
		uint32_t b = idx ^ (1u << k);
		struct chunk *bc = &a->chunks[b];

		if (bc->state != CH_FREE || bc->order != k)
			break;
		list_unlink(a, &a->pool_free[k], b);
		bc->state = CH_UNUSED; /* inside the merged block now */
		if (b < idx) {
			a->chunks[idx].state = CH_UNUSED;
			idx = b;
		}
		k++;
	}
	a->chunks[idx].state = CH_FREE;
	a->chunks[idx].order = (uint8_t)k;
	list_push(a, &a->pool_free[k], idx);
}

/* Small classes keep their emptied current chunk; when the pool is dry, take those back. */
static bool
reclaim_current_chunks(struct keel_alloc *a)
{
	bool any = false;

	for (unsigned c = 0; c < a->nclasses; c++) {
		struct slab_class *sc = &a->cls[c];
		struct chunk *ch = sc->cur;

		while (sc->cache) {
			void *p = sc->cache;
			UNPOISON(p, sizeof(void *));
			sc->cache = *(void **)p;
			sc->ncache--;
			keel__pool_free(a, p);
			any = true;
		}
		if (ch && ch->live == 0) {
			a->cls[c].cur = NULL;
			block_free(a, (uint32_t)(ch - a->chunks), 0);
			any = true;
		}
		/* Empty chunks kept on the partial list. */
		for (uint32_t i = sc->partial; sc->nempty && i != CHUNK_NONE;) {
			uint32_t next = a->chunks[i].next;
			if (a->chunks[i].live == 0) {
				list_unlink(a, &sc->partial, i);
				a->chunks[i].listed = false;
				a->chunks[i].free = NULL;
				sc->nempty--;
				block_free(a, i, 0);
				any = true;
			}
			i = next;
		}
	}
	return any;
}

/* Add the next region to the pool. Pre-faulting it is the grow hook's job, off the request
 * path; without a hook (standalone use) it happens here, counted in inline_prefaults. */
static int
add_region(struct keel_alloc *a)
{
	unsigned idx = a->added;

	if (idx >= a->nregions)
		return -ENOMEM;
	if (idx >= a->faulted) {
		/* Huge pages are pre-faulted before use, here if the hook has not yet: a hugetlb
		 * page that cannot be had at first touch is a SIGBUS (a NUMA node short of them
		 * while the pool has enough), where a pre-fault fails cleanly. */
		if ((!a->cfg.grow || a->cfg.hugepages) && !a->grow_failed) {
			int r = keel__region_prefault_next(a);
			/* A failure is logged once there. Huge pages stop here; other memory is
			 * used as it is (as every later region then is), not this request
			 * failed and the next one served from the same region. */
			if (r < 0 && a->cfg.hugepages)
				return r;
			if (r < 0)
				ASTAT_ADD(a, regions_unprefaulted, 1);
			else
				ASTAT_ADD(a, inline_prefaults, 1);
		} else if (a->cfg.hugepages) {
			return -ENOMEM; /* a pre-fault failed: the rest would fault the same way */
		} else {
			/* Usable as it is: its pages fault in on first touch. */
			ASTAT_ADD(a, regions_unprefaulted, 1);
		}
	}
	a->added = idx + 1;
	keel__alloc_mapped_grow(a, a->added);
	block_free(a, idx << a->chunk_order, a->chunk_order);
	keel__region_maybe_grow(a);
	return 0;
}

unsigned
keel__pool_order(uint64_t size, uint64_t align)
{
	uint64_t need = size > align ? size : align;
	unsigned k = 0;

	while (((uint64_t)SLAB_CHUNK << k) < need)
		k++;
	return k;
}

void *
keel__pool_alloc(struct keel_alloc *a, unsigned order)
{
	unsigned k;
	uint32_t idx;

	if (order > a->chunk_order)
		return NULL;
	for (;;) {
		for (k = order; k <= a->chunk_order; k++)
			if (a->pool_free[k] != CHUNK_NONE)
				break;
		if (k <= a->chunk_order)
			break;
		if (reclaim_current_chunks(a))
			continue;
		if (add_region(a) < 0)
			return NULL;
	}
	idx = a->pool_free[k];
	list_unlink(a, &a->pool_free[k], idx);
	/* Split: the upper halves go back, the lower one is ours. */
	while (k > order) {
		uint32_t half;

		k--;
		half = idx + (1u << k);
		a->chunks[half].state = CH_FREE;
		a->chunks[half].order = (uint8_t)k;
		list_push(a, &a->pool_free[k], half);
	}
	a->chunks[idx].state = CH_LARGE;
	a->chunks[idx].order = (uint8_t)order;
	return chunk_addr(a, idx);
}

void *
keel__pool_alloc_trim(struct keel_alloc *a, uint64_t size, uint64_t align)
{
	unsigned k = keel__pool_order(size, align);
	void *p = keel__pool_alloc(a, k);
	uint32_t idx, end, pos;

	if (!p)
		return NULL;
	idx = (uint32_t)(chunk_of(a, p) - a->chunks);
	end = idx + (1u << k);
	/* The chunks past @size, back as the largest aligned blocks that fit: each one's
	 * buddy is either inside the kept head (never free) or another piece of the tail. */
	for (pos = idx + (uint32_t)((size + SLAB_CHUNK - 1) / SLAB_CHUNK); pos < end;) {
		unsigned j = 0;

		while (j < k && !(pos & ((2u << j) - 1)) && pos + (2u << j) <= end)
			j++;
		block_free(a, pos, j);
		pos += 1u << j;
	}
	return p;
}

void
keel__pool_free(struct keel_alloc *a, void *p)
{
	struct chunk *c = chunk_of(a, p);
	uint32_t idx = (uint32_t)(c - a->chunks);

	alloc_verify(c->state == CH_LARGE || c->state == CH_SMALL);
	POISON(p, (uint64_t)SLAB_CHUNK << (c->state == CH_LARGE ? c->order : 0));
	block_free(a, idx, c->state == CH_LARGE ? c->order : 0);
}

void
keel__slab_init(struct keel_alloc *a)
{
	a->nclasses = a->region_shift - SLAB_MIN_SHIFT + 1;
	for (unsigned c = 0; c < a->nclasses; c++) {
		a->cls[c].size = 1u << (c + SLAB_MIN_SHIFT);
		a->cls[c].cur = NULL;
		a->cls[c].partial = CHUNK_NONE;
	}
}

void *
keel__slab_refill(struct keel_alloc *a, struct slab_class *sc, unsigned c)
{
	struct chunk *ch;
	uint8_t *p;

	if (class_is_large(c)) {
		if (sc->cache) {
			p = sc->cache;
			UNPOISON(p, sizeof(void *));
			sc->cache = *(void **)p;
			sc->ncache--;
			return p;
		}
		return keel__pool_alloc(a, c + SLAB_MIN_SHIFT - CHUNK_SHIFT);
	}
	/* The current chunk is full (not listed: a free into it lists it). */
	if (sc->partial != CHUNK_NONE) {
		uint32_t idx = sc->partial;

		list_unlink(a, &sc->partial, idx);
		ch = &a->chunks[idx];
		ch->listed = false;
		if (ch->live == 0)
			sc->nempty--;
		sc->cur = ch;
		if (ch->free) {
			p = ch->free;
			UNPOISON(p, sizeof(void *));
			ch->free = *(void **)p;
		} else {
			p = ch->bump;
			ch->bump += sc->size;
		}
		ch->live++;
		return p;
	}
	if (sc->cur && sc->cur->live == 0) /* emptied while current: reuse it */
		ch = sc->cur;
	else {
		sc->cur = NULL;
		p = keel__pool_alloc(a, 0);
		if (!p)
			return NULL;
		/* Under ASan the chunk stays poisoned until objects are handed out. */
		POISON(p, SLAB_CHUNK);
		ch = chunk_of(a, p);
		ch->state = CH_SMALL;
		ch->order = (uint8_t)c;
		ch->listed = false;
		sc->cur = ch;
	}
	p = chunk_addr(a, (uint32_t)(ch - a->chunks));
	ch->free = NULL;
	ch->bump = p + sc->size;
	ch->end = p + SLAB_CHUNK;
	ch->live = 1;
	return p;
}

/* A free into a chunk that is not the class's current one: it was full (list it) or it is
 * now empty (back to the pool). */
void
keel__slab_chunk_changed(struct keel_alloc *a, struct slab_class *sc, struct chunk *ch)
{
	uint32_t idx = (uint32_t)(ch - a->chunks);

	if (ch->live == 0) {
		if (ch->listed && sc->nempty < EMPTY_KEEP) {
			sc->nempty++;
			return;
		}
		if (ch->listed)
			list_unlink(a, &sc->partial, idx);
		ch->listed = false;
		ch->free = NULL;
		block_free(a, idx, 0);
		return;
	}
	if (!ch->listed) {
		ch->listed = true;
		list_push(a, &sc->partial, idx);
	}
}

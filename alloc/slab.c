// SPDX-License-Identifier: MIT
/*
 * The slab backend: power-of-two size classes from 64 bytes to the region size. Each class
 * keeps an intrusive free list and a bump range in its current chunk; chunks (64 KiB, or
 * one object for the larger classes) are carved from the regions and never given back, so
 * a class's memory is reused only by that class. Shard-local: no locks, no atomics.
 */
#include <string.h>

#include "alloc_internal.h"

void
keel__slab_init(struct keel_alloc *a)
{
	a->nclasses = a->region_shift - SLAB_MIN_SHIFT + 1;
	for (unsigned c = 0; c < a->nclasses; c++)
		a->cls[c].size = 1u << (c + SLAB_MIN_SHIFT);
}

void *
keel__slab_refill(struct keel_alloc *a, struct slab_class *sc)
{
	uint64_t chunk = sc->size > SLAB_CHUNK ? sc->size : SLAB_CHUNK;
	uint64_t align = sc->size < 4096 ? sc->size : 4096;
	uint8_t *p = keel__region_carve(a, chunk, align);

	if (!p)
		return NULL;
	/* Under ASan the chunk stays poisoned until objects are handed out. */
	POISON(p, chunk);
	sc->bump = p + sc->size;
	sc->end = p + chunk;
	return p;
}

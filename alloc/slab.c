// SPDX-License-Identifier: MIT
/*
 * The slab backend: power-of-two size classes from 64 bytes to the region size. Each class
 * keeps an intrusive free list and a bump range in its current chunk; chunks (64 KiB, or
 * one object for the larger classes) are carved from the regions and never given back, so
 * a class's memory is reused only by that class. Shard-local: no locks, no atomics.
 */
#include <string.h>

#include "alloc_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

void
keel__slab_init(struct keel_alloc *a)
{
	a->nclasses = a->region_shift - SLAB_MIN_SHIFT + 1;
	for (unsigned c = 0; c < a->nclasses; c++)
		a->cls[c].size = 1u << (c + SLAB_MIN_SHIFT);
}

static inline unsigned
class_of(size_t len)
{
	if (len <= (1u << SLAB_MIN_SHIFT))
		return 0;
	return (unsigned)(64 - __builtin_clzll((unsigned long long)len - 1)) - SLAB_MIN_SHIFT;
}

static void *
refill(struct keel_alloc *a, struct slab_class *sc)
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

void *
keel__slab_alloc(struct keel_alloc *a, size_t len, uint8_t *cls, uint32_t *cap)
{
	unsigned c = class_of(len);
	struct slab_class *sc;
	void *p;

	if (c >= a->nclasses)
		return NULL;
	sc = &a->cls[c];
	p = sc->free;
	if (p) {
		UNPOISON(p, sizeof(void *));
		sc->free = *(void **)p;
	} else if (sc->bump < sc->end) {
		p = sc->bump;
		sc->bump += sc->size;
	} else {
		p = refill(a, sc);
		if (!p)
			return NULL;
	}
	UNPOISON(p, sc->size);
	*cls = (uint8_t)c;
	*cap = sc->size;
	return p;
}

void
keel__slab_free(struct keel_alloc *a, void *p, uint8_t cls)
{
	struct slab_class *sc = &a->cls[cls];

	*(void **)p = sc->free;
	sc->free = p;
	/* Use after the last put is caught by ASan, except in the link word. */
	POISON((uint8_t *)p + sizeof(void *), sc->size - sizeof(void *));
}

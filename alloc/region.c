// SPDX-License-Identifier: MIT
/*
 * Regions: one address-space reservation per allocator for the whole cap, mapped region by
 * region. Region i starts at base + i * region_size, so locating a byte is a subtraction
 * and a shift. Each region is bound to the shard's NUMA node, advised for transparent huge
 * pages (or mapped from hugetlbfs) and pre-faulted when it is mapped: at create, or ahead
 * of need from the grow hook, so no request pays for page faults.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <hwloc.h>

#include "alloc_internal.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif
#ifndef MAP_HUGE_SHIFT
#define MAP_HUGE_SHIFT 26
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif

static uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

int
keel__region_reserve(struct keel_alloc *a)
{
	uint64_t align =
		a->region_size > KEEL_ALLOC_HUGEPAGE ? a->region_size : KEEL_ALLOC_HUGEPAGE;
	uint64_t span = (uint64_t)a->nregions * a->region_size;
	uintptr_t p;

	/* PROT_NONE and NORESERVE: address space only; nothing is committed until a region is
	 * mapped. Over-reserve by one alignment unit to align the base. */
	a->resv_len = span + align;
	a->resv = mmap(NULL, a->resv_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	if (a->resv == MAP_FAILED) {
		a->resv = NULL;
		return -errno;
	}
	p = ((uintptr_t)a->resv + align - 1) & ~(uintptr_t)(align - 1);
	a->base = (uint8_t *)p;
	return 0;
}

void
keel__region_release(struct keel_alloc *a)
{
	if (a->resv)
		munmap(a->resv, a->resv_len);
	a->resv = NULL;
}

/* Bind [p, p+len) to the NUMA node of the configured CPU. On failure the memory stays
 * where first touch puts it: the shard's own thread pre-faults it, so it is local anyway
 * unless the kernel's policy says otherwise. */
static void
bind_local(struct keel_alloc *a, void *p, uint64_t len)
{
	hwloc_topology_t topo = (hwloc_topology_t)a->cfg.topo;
	hwloc_obj_t pu;

	if (!topo || a->cfg.cpu < 0)
		return;
	pu = hwloc_get_pu_obj_by_os_index(topo, (unsigned)a->cfg.cpu);
	if (!pu || !pu->nodeset)
		return;
	if (hwloc_set_area_membind(topo, p, len, pu->nodeset, HWLOC_MEMBIND_BIND,
				   HWLOC_MEMBIND_BYNODESET) < 0) {
		keel__alloc_log(KEEL_ALLOC_LOG_DEBUG,
				"shard %u: binding region memory to its NUMA node failed: %s",
				a->cfg.shard, strerror(errno));
		return;
	}
	a->numa_node = hwloc_bitmap_first(pu->nodeset);
}

static int
prefault(void *p, uint64_t len)
{
	long pg = sysconf(_SC_PAGESIZE);

	if (madvise(p, len, MADV_POPULATE_WRITE) == 0)
		return 0;
	if (errno != EINVAL)
		return -errno;
	/* Kernels before 5.14: touch every page. */
	for (uint64_t off = 0; off < len; off += (uint64_t)pg)
		((volatile uint8_t *)p)[off] = 0;
	return 0;
}

int
keel__region_map(struct keel_alloc *a, unsigned idx)
{
	struct region *r = &a->regions[idx];
	uint8_t *p = a->base + (uint64_t)idx * a->region_size;
	uint64_t len = a->region_size;
	uint64_t t0 = now_ns();
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
	void *m;
	int e;

	if (a->cfg.hugepages)
		flags |= MAP_HUGETLB | MAP_HUGE_2MB;
	else
		flags |= MAP_NORESERVE;
	m = mmap(p, len, PROT_READ | PROT_WRITE, flags, -1, 0);
	if (m == MAP_FAILED) {
		e = errno;
		/* A failed MAP_FIXED may have unmapped the range: reserve it again. */
		mmap(p, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1,
		     0);
		if (a->cfg.hugepages)
			keel__alloc_log(
				KEEL_ALLOC_LOG_ERROR,
				"shard %u: no huge pages for a %llu MiB region (%s): reserve "
				"2 MiB pages first, e.g. echo N > /proc/sys/vm/nr_hugepages, "
				"or run without --hugepages",
				a->cfg.shard, (unsigned long long)(len >> 20), strerror(e));
		return -e;
	}
	if (!a->cfg.hugepages)
		madvise(p, len, MADV_HUGEPAGE); /* best effort: THP may be disabled */
	bind_local(a, p, len);
	e = prefault(p, len);
	if (e < 0) {
		mmap(p, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1,
		     0);
		if (a->cfg.hugepages && e == -ENOMEM)
			keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
					"shard %u: too few huge pages reserved: raise "
					"/proc/sys/vm/nr_hugepages or run without --hugepages",
					a->cfg.shard);
		return e;
	}
	r->base = p;
	r->len = len;
	r->used = 0;
	a->mapped = idx + 1;
	ASTAT_ADD(a, regions, 1);
	ASTAT_ADD(a, bytes_mapped, len);
	ASTAT_ADD(a, prefault_ns, now_ns() - t0);
	return 0;
}

/* A spare is a mapped region nothing was carved from yet. Keep one ahead when the runtime
 * gave us a way to map it off the hot path. */
static void
maybe_grow(struct keel_alloc *a)
{
	if (!a->cfg.grow || a->grow_pending || a->mapped >= a->nregions)
		return;
	if (a->mapped > 0 && a->regions[a->mapped - 1].used == 0)
		return;
	a->grow_pending = true;
	a->cfg.grow(a, a->cfg.ctx);
}

int
keel_alloc_grow(struct keel_alloc *a)
{
	int r;

	a->grow_pending = false;
	if (a->mapped >= a->nregions || (a->mapped > 0 && a->regions[a->mapped - 1].used == 0))
		return 0;
	r = keel__region_map(a, a->mapped);
	return r < 0 ? r : 1;
}

static inline uint64_t
align_up(uint64_t v, uint64_t align)
{
	return (v + align - 1) & ~(align - 1);
}

/* First fit from the hint: regions are few (the cap over the region size) and the hint
 * skips the full ones, so this is O(1) in the common case. Never crosses a region
 * boundary: every carved block lies inside one registered buffer. */
void *
keel__region_carve(struct keel_alloc *a, uint64_t size, uint64_t align)
{
	if (size > a->region_size)
		return NULL;
	for (unsigned i = a->hint;; i++) {
		struct region *r;
		uint64_t off;

		if (i >= a->mapped) {
			if (i >= a->nregions || keel__region_map(a, i) < 0)
				return NULL;
		}
		r = &a->regions[i];
		off = align_up(r->used, align);
		if (off + size <= r->len) {
			r->used = off + size;
			maybe_grow(a);
			return r->base + off;
		}
		/* Too little left for a slab chunk: skip this region from now on. */
		if (i == a->hint && r->len - r->used < SLAB_CHUNK)
			a->hint = i + 1;
	}
}

unsigned
keel_alloc_region_max(const struct keel_alloc *a)
{
	return a->nregions;
}

int
keel_alloc_region(const struct keel_alloc *a, unsigned idx, void **base, uint64_t *len)
{
	if (idx >= a->nregions)
		return -EINVAL;
	if (idx >= a->mapped)
		return -ENOENT;
	*base = a->regions[idx].base;
	*len = a->regions[idx].len;
	return 0;
}

int
keel_alloc_locate(const struct keel_alloc *a, const void *p, unsigned *region, uint64_t *offset)
{
	uintptr_t off = (uintptr_t)p - (uintptr_t)a->base;
	unsigned idx;

	if ((uintptr_t)p < (uintptr_t)a->base)
		return -ENOENT;
	idx = (unsigned)(off >> a->region_shift);
	if (idx >= a->mapped)
		return -ENOENT;
	*region = idx;
	*offset = off & (a->region_size - 1);
	return 0;
}

void
keel_alloc_region_set_registered(struct keel_alloc *a, unsigned idx, bool on)
{
	if (idx >= a->mapped || a->regions[idx].registered == on)
		return;
	a->regions[idx].registered = on;
	if (on)
		ASTAT_ADD(a, bytes_registered, a->regions[idx].len);
	else
		ASTAT_SUB(a, bytes_registered, a->regions[idx].len);
}

// SPDX-License-Identifier: MIT
/*
 * Regions: one mapping per allocator for the whole cap, region-aligned, made at create.
 * Region i starts at base + i * region_size, so locating a byte is a subtraction and a
 * shift. The mapping is bound to the shard's NUMA node and advised for transparent huge
 * pages (or is a hugetlbfs mapping, whose pages the kernel reserves for the whole cap at
 * create: huge pages cannot run out mid-run). Creating it commits nothing else.
 *
 * Pre-faulting is the only costly step, and it never happens inside a request when the
 * runtime gave a grow hook: create pre-faults the first region(s); after that the hook
 * pre-faults one region per deferred callback, keeping GROW_SPARE pre-faulted regions
 * ahead of the pool. An allocation burst that outruns it takes the next region as it is
 * (no system call: its pages fault in on first touch), counted in regions_unprefaulted.
 * Without a hook (standalone use) the pool pre-faults a region when it adds it, counted in
 * inline_prefaults.
 */
#define _GNU_SOURCE /* mremap */
#include <errno.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <hwloc.h>

#include "alloc_internal.h"
#include "numa_local.h"

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

/* Bind [p, p+len) to the NUMA node of the configured CPU: its one node with CPUs, not the
 * memory-only nodes (HBM, CXL) its nodeset also holds, where allocations would land or spill
 * (numa_local.h). On failure the memory stays where first touch puts it: the shard's own
 * thread pre-faults it, so it is local anyway unless the kernel's policy says otherwise.
 * Logged once per process at INFO: a person tuning NUMA placement needs to see it, and it
 * does not change from shard to shard. */
static void
bind_local(struct keel_alloc *a, void *p, uint64_t len)
{
	static _Atomic int logged;
	hwloc_topology_t topo = (hwloc_topology_t)a->cfg.topo;
	hwloc_obj_t node;

	if (!topo || a->cfg.cpu < 0)
		return;
	node = keel__numa_of_cpu(topo, (unsigned)a->cfg.cpu);
	if (!node || !node->nodeset)
		return;
	if (hwloc_set_area_membind(topo, p, len, node->nodeset, HWLOC_MEMBIND_BIND,
				   HWLOC_MEMBIND_BYNODESET) < 0) {
		int e = errno;
		if (!atomic_exchange(&logged, 1))
			keel__alloc_log(KEEL_ALLOC_LOG_INFO,
					"shard %u: binding buffer memory to its NUMA node failed "
					"(%s); pages go where the shard first touches them",
					a->cfg.shard, strerror(e));
		return;
	}
	a->numa_node = (int)node->os_index;
}

int
keel__region_reserve(struct keel_alloc *a)
{
	uint64_t align =
		a->region_size > KEEL_ALLOC_HUGEPAGE ? a->region_size : KEEL_ALLOC_HUGEPAGE;
	uint64_t span = (uint64_t)a->nregions * a->region_size;
	int flags = MAP_PRIVATE | MAP_ANONYMOUS;
	uintptr_t p;
	void *m;

	/* PROT_NONE and NORESERVE first, over-reserved by one alignment unit to align the
	 * base; then the aligned span is mapped for real. */
	a->resv_len = span + align;
	a->resv = mmap(NULL, a->resv_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	if (a->resv == MAP_FAILED) {
		int e = errno;

		a->resv = NULL;
		keel__alloc_log(
			KEEL_ALLOC_LOG_ERROR,
			"shard %u: reserving %llu MiB of address space for the buffer "
			"memory failed (%s): the whole cap (--memory) is reserved at start; "
			"lower --memory, or raise the address-space limit (ulimit -v, "
			"RLIMIT_AS)",
			a->cfg.shard, (unsigned long long)(a->resv_len >> 20), strerror(e));
		return -e;
	}
	p = ((uintptr_t)a->resv + align - 1) & ~(uintptr_t)(align - 1);
	a->base = (uint8_t *)p;
	if (a->cfg.hugepages) {
		/* Never a MAP_FIXED hugetlb mmap over the reservation: when the pages are not
		 * there it fails after the kernel has already unmapped the target range, and
		 * another thread's mmap (jemalloc's, say) can land in that hole before our
		 * reservation is released, which would then unmap it under that thread. Map
		 * the pages anywhere (which fails cleanly), then move them over the
		 * reservation: mremap replaces the target under the mm lock, no hole. */
		m = mmap(NULL, span, PROT_READ | PROT_WRITE, flags | MAP_HUGETLB | MAP_HUGE_2MB, -1,
			 0);
		if (m != MAP_FAILED &&
		    mremap(m, span, span, MREMAP_MAYMOVE | MREMAP_FIXED, a->base) == MAP_FAILED) {
			int e = errno;
			munmap(m, span);
			/* Kernels before 5.16 cannot move hugetlb mappings (EINVAL): map the
			 * pages in place, as before. They were there a moment ago, so this is
			 * not expected to fail; if it does, it has the hole described above. */
			if (e == EINVAL) {
				m = mmap(a->base, span, PROT_READ | PROT_WRITE,
					 flags | MAP_FIXED | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
			} else {
				m = MAP_FAILED;
				errno = e;
			}
		}
	} else {
		m = mmap(a->base, span, PROT_READ | PROT_WRITE, flags | MAP_FIXED | MAP_NORESERVE,
			 -1, 0);
	}
	if (m == MAP_FAILED) {
		int e = errno;
		if (a->cfg.hugepages)
			keel__alloc_log(
				KEEL_ALLOC_LOG_ERROR,
				"shard %u: %llu huge pages of 2 MiB needed for %llu MiB of "
				"buffers, not reserved (%s): reserve them first, e.g. echo N "
				"> /proc/sys/vm/nr_hugepages (N: this times the shard "
				"count), or run without --hugepages",
				a->cfg.shard, (unsigned long long)(span / KEEL_ALLOC_HUGEPAGE),
				(unsigned long long)(span >> 20), strerror(e));
		else
			keel__alloc_log(
				KEEL_ALLOC_LOG_ERROR,
				"shard %u: mapping %llu MiB for the buffer memory failed (%s): "
				"lower --memory, or raise the address-space limit (ulimit -v, "
				"RLIMIT_AS)",
				a->cfg.shard, (unsigned long long)(span >> 20), strerror(e));
		return -e;
	}
	if (!a->cfg.hugepages)
		madvise(a->base, span, MADV_HUGEPAGE); /* best effort: THP may be disabled */
	/* Not inherited by fork(): once registered with io_uring its pages are pinned, so a
	 * fork must copy every one into the child (hundreds of ms for 256 MiB, the parent's
	 * huge pages split) and, under --hugepages, find a free huge page for each or fail
	 * with ENOMEM. A child has no use for a shard's buffers (docs/memory.md). */
	if (madvise(a->base, span, MADV_DONTFORK))
		keel__alloc_log(KEEL_ALLOC_LOG_WARN,
				"shard %u: MADV_DONTFORK on the buffer memory failed (%s): a "
				"fork() of this process copies its registered pages",
				a->cfg.shard, strerror(errno));
	bind_local(a, a->base, span);
	return 0;
}

void
keel__region_release(struct keel_alloc *a)
{
	if (a->resv)
		munmap(a->resv, a->resv_len);
	a->resv = NULL;
}

/* MADV_POPULATE_WRITE (Linux 5.14): 0 not yet known, 1 the kernel has it, -1 it does not.
 * Learnt from the first pre-fault, on the region itself: a mapping of ours, writable, so
 * EINVAL says the kernel does not know the advice. Only that answer is kept: a probe of its
 * own on a spare page once took any failure (a memory cgroup at its limit that moment) for
 * "no", for the process's life, and sent every later pre-fault to touching pages, which
 * turns a hugetlb shortage from a clean failure into a SIGBUS. */
static _Atomic int have_populate;

static int
prefault(void *p, uint64_t len)
{
	long pg = sysconf(_SC_PAGESIZE);
	int h = atomic_load_explicit(&have_populate, memory_order_relaxed);

	if (h >= 0) {
		if (madvise(p, len, MADV_POPULATE_WRITE) == 0) {
			atomic_store_explicit(&have_populate, 1, memory_order_relaxed);
			return 0;
		}
		if (errno != EINVAL || h > 0)
			return -errno;
		atomic_store_explicit(&have_populate, -1, memory_order_relaxed);
	}
	/* Kernels before 5.14: touch every page (pages already in use keep their bytes). */
	for (uint64_t off = 0; off < len; off += (uint64_t)pg)
		__atomic_fetch_add((uint8_t *)p + off, 0, __ATOMIC_RELAXED);
	return 0;
}

int (*keel__region_prefault_fn)(void *p, uint64_t len) = prefault;

/* Pre-fault region `faulted`. A failure is recorded and logged once: later regions are then
 * used as they are (faulted on first touch), except huge pages (add_region); no system call
 * is retried. */
int
keel__region_prefault_next(struct keel_alloc *a)
{
	unsigned idx = a->faulted;
	struct region *r = &a->regions[idx];
	uint64_t t0 = now_ns();
	int e;

	if (idx >= a->nregions || a->grow_failed)
		return -ENOMEM;
	/* r->base and r->len were set at create (keel__region_prefault_initial): not written
	 * again, as any thread may read them for a region in use. */
	e = keel__region_prefault_fn(r->base, r->len);
	if (e < 0 && a->creating) {
		/* At create: keel_alloc_create fails with it, and the shard does not start. */
		keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
				"shard %u: pre-faulting buffer region %u at start failed (%s): the "
				"shard's allocator is not created; %s",
				a->cfg.shard, idx, strerror(-e),
				a->cfg.hugepages
					? "reserve more huge pages (/proc/sys/vm/nr_hugepages)"
					: "lower --memory, or raise the memory limit (cgroup, "
					  "RLIMIT_AS) the process runs under");
		return e;
	}
	if (e < 0) {
		a->grow_failed = true;
		if (a->cfg.hugepages) {
			char where[96] = "/proc/sys/vm/nr_hugepages, or per NUMA node under "
					 "/sys/devices/system/node/";

			if (a->numa_node >= 0)
				snprintf(where, sizeof(where),
					 "/sys/devices/system/node/node%d/hugepages/"
					 "hugepages-2048kB/nr_hugepages",
					 a->numa_node);
			keel__alloc_log(
				KEEL_ALLOC_LOG_ERROR,
				"shard %u: buffer region %u: its huge pages could not be "
				"had (%s), so the shard's buffers stop at %llu MiB "
				"(allocations beyond fail): reserve more (%s)",
				a->cfg.shard, idx, strerror(-e),
				(unsigned long long)(((uint64_t)idx * a->region_size) >> 20),
				where);
		} else {
			keel__alloc_log(
				KEEL_ALLOC_LOG_WARN,
				"shard %u: pre-faulting buffer region %u failed (%s); later "
				"regions are used without pre-faulting (first touch faults "
				"them in); not retried",
				a->cfg.shard, idx, strerror(-e));
		}
		return e;
	}
	a->faulted = idx + 1;
	keel__alloc_mapped_grow(a, a->faulted);
	ASTAT_ADD(a, regions, 1);
	ASTAT_ADD(a, bytes_mapped, r->len);
	ASTAT_ADD(a, prefault_ns, now_ns() - t0);
	return 0;
}

int
keel__region_prefault_initial(struct keel_alloc *a, unsigned n)
{
	for (unsigned i = 0; i < a->nregions; i++) {
		a->regions[i].base = a->base + (uint64_t)i * a->region_size;
		a->regions[i].len = a->region_size;
	}
	a->creating = true;
	for (unsigned i = 0; i < n && i < a->nregions; i++) {
		int r = keel__region_prefault_next(a);
		if (r < 0) {
			a->creating = false;
			return r;
		}
	}
	a->creating = false;
	return 0;
}

static bool
below_low_water(const struct keel_alloc *a)
{
	return !a->grow_failed && a->faulted < a->nregions &&
	       a->faulted < (uint64_t)a->added + GROW_SPARE;
}

/* Keep GROW_SPARE pre-faulted regions ahead of the pool, through the runtime's hook. */
void
keel__region_maybe_grow(struct keel_alloc *a)
{
	if (!a->cfg.grow || a->grow_pending || !below_low_water(a))
		return;
	a->grow_pending = true;
	if (a->cfg.grow(a, a->cfg.ctx) < 0)
		a->grow_pending = false;
}

int
keel_alloc_grow(struct keel_alloc *a)
{
	int r;

	a->grow_pending = false;
	if (!below_low_water(a))
		return 0;
	/* One region per call: the bounded slice of a loop pass. */
	r = keel__region_prefault_next(a);
	if (r < 0)
		return r;
	keel__region_maybe_grow(a);
	return 1;
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
	if (idx >= keel__alloc_mapped(a))
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
	if (idx >= keel__alloc_mapped(a))
		return -ENOENT;
	*region = idx;
	*offset = off & (a->region_size - 1);
	return 0;
}

void
keel_alloc_region_set_registered(struct keel_alloc *a, unsigned idx, bool on)
{
	if (idx >= keel__alloc_mapped(a) || a->regions[idx].registered == on)
		return;
	a->regions[idx].registered = on;
	if (on)
		ASTAT_ADD(a, bytes_registered, a->regions[idx].len);
	else
		ASTAT_SUB(a, bytes_registered, a->regions[idx].len);
}

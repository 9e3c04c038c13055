/* SPDX-License-Identifier: MIT */
/*
 * The per-shard allocator: registered-memory regions and general allocation.
 *
 * Each shard owns one allocator. It reserves address space for --memory bytes at create
 * and maps it region by region (NUMA-local to the shard's CPU, huge pages where
 * available, pre-faulted when mapped). Buffers (keel/buf.h) are carved out of those
 * regions, so every buffer lies inside exactly one region and the pair (region index,
 * offset) of any byte is O(1) to compute: the runtime registers region i as fixed buffer
 * i of the shard's ring the first time a buffer of it is used for I/O.
 *
 * General allocations (shard-local objects) come from the C library's malloc by default,
 * so linking keel leaves the process's malloc alone. A program that calls
 * keel_jemalloc_enable() (keel/jemalloc.h, library keel_jemalloc) first gets a jemalloc
 * arena per shard instead, with an explicit tcache, so shards never contend
 * (docs/embedding.md: what each choice costs).
 *
 * This module knows nothing of io_uring: it reports errors by return codes and through a
 * log hook (keel_alloc_log_set()) that the runtime points at keel_log.
 */
#ifndef KEEL_ALLOC_H
#define KEEL_ALLOC_H

#include <keel/common.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_alloc;
struct keel_buf;
struct hwloc_topology;

/** Default cap on one allocator's registered memory (--memory). */
#define KEEL_ALLOC_DEFAULT_MEMORY (256ULL << 20)
/** Default region size: the unit of mapping, pre-faulting and ring registration. */
#define KEEL_ALLOC_DEFAULT_REGION (4ULL << 20)
/**
 * Most regions one allocator may have: each is one slot of the shard ring's fixed-buffer
 * table, and the kernel allows at most this many (IORING_MAX_REG_BUFFERS).
 */
#define KEEL_ALLOC_MAX_REGIONS (1u << 14)
/** Largest --memory per shard: KEEL_ALLOC_MAX_REGIONS default-sized regions (64 GiB). */
#define KEEL_ALLOC_MAX_MEMORY ((uint64_t)KEEL_ALLOC_MAX_REGIONS * KEEL_ALLOC_DEFAULT_REGION)
/** Huge page size used for alignment and hugetlbfs mappings. */
#define KEEL_ALLOC_HUGEPAGE (2ULL << 20)

/** How buffer memory is carved out of the regions. */
enum keel_alloc_backend {
	KEEL_ALLOC_BACKEND_DEFAULT = 0,  /* the faster of the two, measured (docs/memory.md) */
	KEEL_ALLOC_BACKEND_SLAB = 1,     /* power-of-two size-class slab over the regions */
	KEEL_ALLOC_BACKEND_JEMALLOC = 2, /* a jemalloc arena whose extent hooks carve regions;
					  * buffers up to 7/8 of a region (keel_alloc_buf_max);
					  * needs keel_jemalloc_enable() (else -ENOTSUP) */
};

/**
 * Ask the runtime to call keel_alloc_grow(@a) (keel/alloc_runtime.h) soon, off the hot path (a
 * deferred callback on @a's shard): fewer pre-faulted regions than the low-water mark are left
 * ahead of use. Returns: 0 when scheduled, -errno when not (the allocator asks again later).
 */
typedef int (*keel_alloc_grow_fn)(struct keel_alloc *a, void *ctx);

/**
 * Send @b, whose last reference was put on another shard, home: arrange for
 * keel_buf_release(@b) (keel/alloc_runtime.h) to run on @a's shard (a cross-shard message).
 * Returns: 0, or -errno (the buffer is then leaked and reported).
 * Context: the shard that put the last reference.
 */
typedef int (*keel_alloc_send_home_fn)(struct keel_alloc *a, struct keel_buf *b, void *ctx);

/** Allocator configuration. Zero-initialise, then set what differs from the defaults. */
struct keel_alloc_config {
	unsigned shard;              /* owner shard id (reports) */
	uint64_t memory;             /* cap on mapped buffer memory; 0: KEEL_ALLOC_DEFAULT_MEMORY */
	uint64_t region_size;        /* power of two, 2 MiB to 1 GiB (io_uring's largest fixed
				      * buffer); 0: KEEL_ALLOC_DEFAULT_REGION */
	bool hugepages;              /* hugetlbfs 2 MiB pages (reserved in nr_hugepages), not THP */
	struct hwloc_topology *topo; /* with @cpu >= 0: bind regions to that CPU's NUMA node */
	int cpu;                     /* -1: no explicit binding */
	enum keel_alloc_backend backend;
	unsigned prefault_regions; /* regions pre-faulted at create; 0: 1 */
	/* Pre-faults regions ahead of need off the request path; NULL: a region is
	 * pre-faulted when the pool first needs it, inside that allocation. */
	keel_alloc_grow_fn grow;
	keel_alloc_send_home_fn send_home; /* NULL: single-threaded use, puts free locally */
	void *ctx;                         /* for the hooks */
};

/** Counters of one allocator. */
struct keel_alloc_stats {
	uint64_t regions;          /* regions pre-faulted */
	uint64_t regions_max;      /* regions the cap allows */
	uint64_t bytes_mapped;     /* bytes of regions pre-faulted */
	uint64_t bytes_registered; /* bytes of regions marked registered by the runtime */
	uint64_t bytes_in_use;     /* bytes of live region buffers (their size-class capacity) */
	uint64_t bytes_peak;       /* highest bytes_in_use */
	uint64_t buffers_live;     /* region buffers allocated and not yet returned */
	uint64_t alloc_failures;   /* buffer allocations that failed (-ENOMEM) */
	uint64_t remote_returns;   /* buffers whose last put happened on another shard, counted
				    * as each arrives home */
	uint64_t trace_errors;     /* KEEL_BUF_TRACE: double puts, wrong-shard puts, leaks */
	uint64_t prefault_ns;      /* time spent pre-faulting regions */
	uint64_t inline_prefaults; /* regions pre-faulted inside an allocation (no grow hook) */
	uint64_t regions_unprefaulted; /* regions an allocation took before the grow hook
					* pre-faulted them (their pages fault on first touch) */
	uint64_t ext_bytes_in_use;     /* bytes of live external buffers (keel_buf_wrap): the
					* receive rings wrap memory bytes_in_use counts
					* already, so the two do not add up */
	uint64_t ext_buffers_live;     /* external buffers not yet released */
	uint64_t exports;              /* slices exported to other shards (keel_slice_export) */
	uint64_t exports_live;         /* ... whose proxy is still held somewhere */
};

/**
 * Create an allocator: map the cap (address space; with hugepages, the huge pages of the
 * whole cap are reserved now), bind it and pre-fault the first region(s). Does not bind
 * the allocator to the calling thread.
 * The cap is rounded down to whole regions (a warning is logged when that drops some).
 * Returns: 0 and *out; -EINVAL (bad sizes, a backend not in the enum, or more than
 * KEEL_ALLOC_MAX_REGIONS regions: the error logged names the maximum), -ENOMEM (no memory; with
 * hugepages, the error logged names /proc/sys/vm/nr_hugepages), -ENOTSUP
 * (KEEL_ALLOC_BACKEND_JEMALLOC without keel_jemalloc_enable(): the error logged names the fix), or
 * another -errno from mmap. Context: any thread.
 */
KEEL_API int keel_alloc_create(const struct keel_alloc_config *cfg, struct keel_alloc **out);

/**
 * Destroy @a: report buffers still live (leaks; with KEEL_BUF_TRACE each with its
 * allocation site), destroy its jemalloc arenas and unmap its regions.
 * Ownership: every buffer and general allocation of @a becomes invalid.
 * Context: the thread @a is bound to, or any thread when it is bound to none.
 */
KEEL_API void keel_alloc_destroy(struct keel_alloc *a);

/** The calling thread's allocator (on a shard: the shard's), or NULL. */
KEEL_API struct keel_alloc *keel_alloc_current(void);

/** The owner shard id given at create. */
KEEL_API unsigned keel_alloc_shard(const struct keel_alloc *a);

/** The backend @a uses (never KEEL_ALLOC_BACKEND_DEFAULT). */
KEEL_API enum keel_alloc_backend keel_alloc_backend_of(const struct keel_alloc *a);

/** Name of a backend: "slab", "jemalloc" or "default". */
KEEL_API const char *keel_alloc_backend_name(enum keel_alloc_backend b);

/**
 * The largest buffer keel_buf_alloc() returns from @a: the region size with the slab
 * backend; 7/8 of it with the jemalloc backend (jemalloc pads a large allocation's extent
 * by a page, and an extent must fit in one region). A size, not a promise: with the
 * jemalloc backend, after buffers of other sizes came and went, none this large may be
 * had even with every buffer freed (its extents stay carved for their size class;
 * docs/memory.md).
 */
KEEL_API uint64_t keel_alloc_buf_max(const struct keel_alloc *a);

/**
 * The buffer memory an allocator made from @cfg maps: its cap rounded down to whole
 * regions (what --hugepages needs in huge pages). 0: @cfg would be refused (-EINVAL).
 */
KEEL_API uint64_t keel_alloc_memory_of(const struct keel_alloc_config *cfg);

/** Regions the cap allows: the size of the runtime's fixed-buffer table for @a. */
KEEL_API unsigned keel_alloc_region_max(const struct keel_alloc *a);

/**
 * Region @idx of @a: its base and length.
 * Returns: 0, -ENOENT when it is not mapped yet, -EINVAL past the cap.
 * Context: any thread (a mapped region never moves until destroy).
 */
KEEL_API int keel_alloc_region(const struct keel_alloc *a, unsigned idx, void **base,
			       uint64_t *len);

/**
 * Locate the byte at @p in @a's regions in O(1).
 * A pointer one past the end of a buffer (a zero-length slice at its end) may lie in the
 * next region: locate the buffer's start (keel_buf_base) and add the distance, as
 * keel_buf_fixed() does.
 * Returns: 0 with the region index and the offset from that region's base, or -ENOENT
 * when @p is not in a region of @a in use.
 */
KEEL_API int keel_alloc_locate(const struct keel_alloc *a, const void *p, unsigned *region,
			       uint64_t *offset);

/**
 * Copy @a's counters to @out (the stats convention: docs/architecture.md, "Stats").
 * Returns: 0, or -EINVAL for a NULL @a or @out.
 * Context: any thread; values written by other threads may be slightly stale.
 */
KEEL_API int keel_alloc_stats(const struct keel_alloc *a, struct keel_alloc_stats *out);

/**
 * General allocation (not registered memory): from @a's own jemalloc arena where the
 * program called keel_jemalloc_enable() before creating @a, from malloc otherwise.
 * Returns: the memory, or NULL.
 * Context: @a's shard.
 */
KEEL_API void *keel_alloc_malloc(struct keel_alloc *a, size_t size);

/**
 * Resize memory from keel_alloc_malloc(@a, ...) (@p NULL: allocate), in @a's arena.
 * Returns: the memory (@p is then invalid), or NULL (@p is untouched).
 * Context: @a's shard.
 */
KEEL_API void *keel_alloc_realloc(struct keel_alloc *a, void *p, size_t size);

/**
 * Free memory from keel_alloc_malloc(@a, ...). Never pass it to free().
 * Context: any thread: off @a's shard it bypasses @a's tcache (thread-safe, slower).
 */
KEEL_API void keel_alloc_free(struct keel_alloc *a, void *p);

/** keel_alloc_arena() of an allocator without a jemalloc arena. */
#define KEEL_ALLOC_NO_ARENA (~0u)

/**
 * The jemalloc arena index of @a's general arena (for MALLOCX_ARENA).
 * Returns: the index, or KEEL_ALLOC_NO_ARENA where general allocation is malloc's
 * (keel_jemalloc_enable() was not called before @a was created).
 */
KEEL_API unsigned keel_alloc_arena(const struct keel_alloc *a);

/** Log levels of the hook; the same numbers as enum keel_log_level. */
enum keel_alloc_log_level {
	KEEL_ALLOC_LOG_ERROR = 0,
	KEEL_ALLOC_LOG_WARN = 1,
	KEEL_ALLOC_LOG_INFO = 2,
	KEEL_ALLOC_LOG_DEBUG = 3,
};

/** A log hook: one line, no trailing newline. Must be thread-safe. */
typedef void (*keel_alloc_log_fn)(int level, const char *msg, void *arg);

/**
 * Route the allocator's messages (errors a person must read, KEEL_BUF_TRACE reports) to
 * @fn; NULL restores the default: one line on stderr. The runtime installs a hook that
 * logs through keel_log with module "alloc".
 * Context: any thread; set it before creating allocators.
 */
KEEL_API void keel_alloc_log_set(keel_alloc_log_fn fn, void *arg);

#ifdef __cplusplus
}
#endif

#endif

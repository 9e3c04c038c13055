/* SPDX-License-Identifier: MIT */
/* Private to alloc/: the allocator and buffer structures shared by its source files. */
#ifndef KEEL_ALLOC_INTERNAL_H
#define KEEL_ALLOC_INTERNAL_H

#include <keel/alloc.h>
#include <keel/alloc_runtime.h>
#include <keel/buf.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* jemalloc's header for its types and MALLOCX_* flags only: keel_alloc does not link
 * jemalloc. Its entry points come through struct keel__je, which keel_jemalloc_enable()
 * (library keel_jemalloc) installs, so linking keel leaves the process's malloc alone. */
#include <jemalloc/jemalloc.h>

struct keel__je {
	void *(*mallocx_fn)(size_t size, int flags);
	void *(*rallocx_fn)(void *p, size_t size, int flags);
	void (*dallocx_fn)(void *p, int flags);
	void (*sdallocx_fn)(void *p, size_t size, int flags);
	size_t (*sallocx_fn)(const void *p, int flags);
	int (*mallctl_fn)(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);
};

/* Install jemalloc's entry points: allocators created afterwards use jemalloc arenas for
 * general allocation and may use KEEL_ALLOC_BACKEND_JEMALLOC. Exported for the sibling
 * library keel_jemalloc only (not a public API). */
KEEL_API void keel__alloc_set_jemalloc(const struct keel__je *je);

/* Smallest size class of the slab, and the most classes any region size needs. */
#define SLAB_MIN_SHIFT 6
#define SLAB_CLASSES   32
/* The pool's unit: regions are split into 64 KiB chunks managed by a buddy allocator. A
 * small class (below a chunk) carves its objects from chunks it takes from the pool and
 * gives each chunk back when its last object is freed; a class of a chunk or more takes
 * a buddy block per object. So freed memory serves any class. */
#define CHUNK_SHIFT 16
#define SLAB_CHUNK  (1u << CHUNK_SHIFT)
#define CHUNK_NONE  UINT32_MAX
/* Buddy orders: chunk << order up to the largest region (2 GiB). */
#define POOL_ORDERS 16
/* Pre-faulted regions the grow hook keeps ahead of the pool (the low-water mark). */
#define GROW_SPARE 2

/* Always-on check for states that would corrupt memory (refcount underflow). */
#define alloc_verify(x)                                                  \
	do {                                                             \
		if (__builtin_expect(!(x), 0))                           \
			keel__alloc_verify_fail(__FILE__, __LINE__, #x); \
	} while (0)
__attribute__((noreturn)) void keel__alloc_verify_fail(const char *file, int line,
						       const char *expr);

/* Counters written by the owner, read by anyone: relaxed atomics (plain moves on x86). */
#define ASTAT_ADD(a, field, n)                                                                  \
	atomic_store_explicit(&(a)->st.field,                                                   \
			      atomic_load_explicit(&(a)->st.field, memory_order_relaxed) + (n), \
			      memory_order_relaxed)
#define ASTAT_SUB(a, field, n) ASTAT_ADD(a, field, -(uint64_t)(n))
/* Counters that several threads may update (trace_errors: a trace check on a shard that
 * does not hold a buffer counts on its home allocator): an atomic read-modify-write, or
 * concurrent updates are lost. */
#define ASTAT_ADD_SHARED(a, field, n) \
	atomic_fetch_add_explicit(&(a)->st.field, (n), memory_order_relaxed)
#define ASTAT_GET(a, field) atomic_load_explicit(&(a)->st.field, memory_order_relaxed)

enum buf_kind {
	BUF_SLAB = 0,
	BUF_JEMALLOC = 1,
	BUF_EXTERNAL = 2,
	BUF_FOREIGN = 3, /* a proxy made by keel_slice_export: counts a remote holder's refs */
	BUF_SLOT = 4,    /* external memory whose header its owner keeps across uses
			  * (keel_buf_slot_create): the last put does not free the header */
	BUF_DEAD = 5,    /* a slot header keel_buf_slot_destroy gave back, on the free list
			  * until reused: no check accepts it, so a second destroy or an arm
			  * is caught (a reuse gives it another kind) */
};

struct keel_buf {
	uint32_t refs;
	uint32_t gen; /* bumped when the buffer is freed: a slice with another gen is stale */
	uint32_t cap;
	uint16_t holder; /* shard holding the references (keel_slice_move, keel_slice_export) */
	uint8_t kind;    /* enum buf_kind */
	uint8_t cls;     /* slab class */
	uint8_t *data;
	struct keel_alloc *home;
	union {
		struct keel_buf *next_free; /* in the header free list */
		struct {
			keel_buf_release_fn fn;
			void *arg;
		} ext; /* BUF_EXTERNAL while live; BUF_SLOT from create to destroy */
		struct {
			struct keel_buf *buf;
			uint32_t gen;
		} fwd; /* BUF_FOREIGN: the exported slice's reference, held on the home (the
			* exporter); its window is the proxy's data and cap */
	} u;
#ifdef KEEL_BUF_TRACE
	const char *file;
	int line;
	struct keel_buf *tprev, *tnext; /* the allocator's live list */
#endif
};

struct region {
	uint8_t *base;
	uint64_t len;
	bool registered;
};

enum chunk_state {
	CH_UNUSED = 0, /* not in the pool (its region was not added), or inside a block */
	CH_FREE = 1,   /* head of a free buddy block of @order */
	CH_SMALL = 2,  /* objects of small class @order */
	CH_LARGE = 3,  /* head of a block of @order holding one buffer or jemalloc extent */
};

/* One per chunk of the cap: a side table, so the chunks themselves hold only data. */
struct chunk {
	void *free; /* small: intrusive list of free objects of this chunk */
	uint8_t *bump, *end;
	uint32_t next, prev; /* in a buddy free list or the class's partial list */
	uint32_t live;       /* small: objects handed out */
	uint8_t state;       /* enum chunk_state */
	uint8_t order;       /* buddy order, or small class */
	bool listed;         /* small: in the class's partial list */
};

struct slab_class {
	struct chunk *cur; /* objects come from here first */
	uint32_t partial;  /* chunks with free objects, other than cur */
	uint32_t size;
	/* Classes of a chunk or more: freed blocks kept for reuse (a buddy split and merge per
	 * alloc/free pair costs several times the slab path), given back when the pool runs
	 * dry, so they never strand memory. */
	void *cache;
	uint32_t ncache;
	uint32_t nempty; /* small classes: empty chunks kept on the partial list */
};
/* Empty chunks a small class keeps (on its partial list) before giving them back: a burst
 * that empties and refills a few chunks does not split and merge pool blocks each time. */
#define EMPTY_KEEP 4
/* Blocks a large class keeps in its cache. */
#define LARGE_CACHE 32

/* jemalloc extent hooks, with a way back to the allocator (the hooks get this pointer). */
struct ext_hooks {
	extent_hooks_t h; /* first: jemalloc passes &h */
	struct keel_alloc *a;
};

struct atomic_astats {
	_Atomic uint64_t regions, bytes_mapped, bytes_registered, bytes_in_use, bytes_peak,
		buffers_live, alloc_failures, remote_returns, trace_errors, prefault_ns,
		inline_prefaults, regions_unprefaulted, ext_bytes_in_use, ext_buffers_live, exports,
		exports_live;
};

struct keel_alloc {
	struct keel_alloc_config cfg;
	enum keel_alloc_backend backend;

	/* Address space for the whole cap, reserved at create, region-aligned. */
	uint8_t *resv;
	uint64_t resv_len;
	uint8_t *base;
	unsigned region_shift;
	uint64_t region_size;
	uint64_t buf_max;  /* largest buffer keel_buf_alloc returns (keel_alloc_buf_max) */
	unsigned nregions; /* the cap, in regions */
	/* Regions 0..mapped-1 are in use (added to the pool or pre-faulted). Written by the
	 * owner only (keel__alloc_mapped_grow), read by any thread (keel_alloc_region): a
	 * region's base and length, set at create, are published by it. */
	_Atomic unsigned mapped;
	unsigned faulted; /* regions 0..faulted-1 are pre-faulted */
	unsigned added;   /* regions 0..added-1 were added to the pool */
	bool grow_pending;
	bool grow_failed;       /* pre-faulting failed once: logged, not retried */
	bool creating;          /* keel__region_prefault_initial: a failure fails the create */
	struct region *regions; /* [nregions] */
	int numa_node;          /* node regions are bound to, -1 none */

	/* The pool: per-chunk state and the buddy free lists. */
	struct chunk *chunks; /* [nregions << chunk_order] */
	uint64_t chunks_len;
	unsigned chunk_order; /* log2(chunks per region): the largest buddy order */
	uint32_t pool_free[POOL_ORDERS];

	/* Slab backend. */
	unsigned nclasses;
	struct slab_class cls[SLAB_CLASSES];

	/* jemalloc: the general arena and (jemalloc backend) the registered arena, each with
	 * its own explicit tcache; @je NULL (keel_jemalloc_enable() not called before
	 * create): general allocation is the C library's malloc. */
	const struct keel__je *je;
	unsigned gen_arena, gen_tcache;
	int gen_flags;
	bool gen_ok;
	unsigned reg_arena, reg_tcache;
	int reg_flags;
	bool reg_ok;
	struct ext_hooks hooks;

	/* Buffer headers: a free list refilled in blocks from the general allocator; the
	 * blocks, linked through their first header, are freed at destroy. */
	struct keel_buf *hdr_free;
	struct keel_buf *hdr_blocks;

#ifdef KEEL_BUF_TRACE
	struct keel_buf *trace_live;
#endif
	/* Other shards' buffers whose last put here could not be sent home (leaked): the
	 * putting shard's count, not the home's (whose allocator may be gone by then). */
	uint64_t unsent;
	struct atomic_astats st;
};

extern _Thread_local struct keel_alloc *keel__alloc_cur __attribute__((tls_model("initial-exec")));

/* alloc.c */
void keel__alloc_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* region.c */
int keel__region_reserve(struct keel_alloc *a);
int keel__region_prefault_initial(struct keel_alloc *a, unsigned n);
int keel__region_prefault_next(struct keel_alloc *a);
/* What pre-faults a region: madvise(MADV_POPULATE_WRITE), or a touch of every page on
 * kernels without it. Tests replace it to fail as a NUMA node short of huge pages does. */
extern int (*keel__region_prefault_fn)(void *p, uint64_t len);
void keel__region_maybe_grow(struct keel_alloc *a);
void keel__region_release(struct keel_alloc *a);

/* slab.c: the pool, and the slab's slow paths; the fast paths are inline here */
int keel__pool_init(struct keel_alloc *a);
void keel__pool_fini(struct keel_alloc *a);
/* A block of 64 KiB << @order from the pool (adding a region when needed), or NULL. */
void *keel__pool_alloc(struct keel_alloc *a, unsigned order);
void keel__pool_free(struct keel_alloc *a, void *p);
/* A block for @size bytes aligned to @align, whose chunks past @size go back to the pool:
 * for jemalloc's extents, which are never freed (keel__pool_free must not see it: its
 * head keeps the whole block's order). */
void *keel__pool_alloc_trim(struct keel_alloc *a, uint64_t size, uint64_t align);
/* The smallest order whose block holds @size bytes aligned to @align. */
unsigned keel__pool_order(uint64_t size, uint64_t align);
void keel__slab_init(struct keel_alloc *a);
void *keel__slab_refill(struct keel_alloc *a, struct slab_class *sc, unsigned c);
void keel__slab_chunk_changed(struct keel_alloc *a, struct slab_class *sc, struct chunk *ch);

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define POISON(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

static inline unsigned
class_of(size_t len)
{
	if (len <= (1u << SLAB_MIN_SHIFT))
		return 0;
	return (unsigned)(64 - __builtin_clzll((unsigned long long)len - 1)) - SLAB_MIN_SHIFT;
}

static inline struct chunk *
chunk_of(struct keel_alloc *a, const void *p)
{
	return &a->chunks[((uintptr_t)p - (uintptr_t)a->base) >> CHUNK_SHIFT];
}

/* Classes of a chunk or more take one pool block per object. */
static inline bool
class_is_large(unsigned c)
{
	return c + SLAB_MIN_SHIFT >= CHUNK_SHIFT;
}

static inline void *
keel__slab_alloc(struct keel_alloc *a, size_t len, uint8_t *cls, uint32_t *cap)
{
	unsigned c = class_of(len);
	struct slab_class *sc;
	struct chunk *ch;
	void *p;

	if (__builtin_expect(c >= a->nclasses, 0))
		return NULL;
	sc = &a->cls[c];
	ch = sc->cur;
	if (__builtin_expect(ch != NULL, 1) && ch->free) {
		p = ch->free;
		UNPOISON(p, sizeof(void *));
		ch->free = *(void **)p;
		ch->live++;
	} else if (ch && ch->bump < ch->end) {
		p = ch->bump;
		ch->bump += sc->size;
		ch->live++;
	} else {
		p = keel__slab_refill(a, sc, c);
		if (!p)
			return NULL;
	}
	UNPOISON(p, sc->size);
	*cls = (uint8_t)c;
	*cap = sc->size;
	return p;
}

static inline void
keel__slab_free(struct keel_alloc *a, void *p, uint8_t cls)
{
	struct slab_class *sc = &a->cls[cls];
	struct chunk *ch;

	if (class_is_large(cls)) {
		if (sc->ncache < LARGE_CACHE) {
			*(void **)p = sc->cache;
			sc->cache = p;
			sc->ncache++;
			POISON((uint8_t *)p + sizeof(void *), sc->size - sizeof(void *));
		} else {
			keel__pool_free(a, p);
		}
		return;
	}
	ch = chunk_of(a, p);
	*(void **)p = ch->free;
	ch->free = p;
	/* Use after the last put is caught by ASan, except in the link word. */
	POISON((uint8_t *)p + sizeof(void *), sc->size - sizeof(void *));
	if (__builtin_expect(--ch->live == 0 || !ch->listed, 0) && ch != sc->cur)
		keel__slab_chunk_changed(a, sc, ch);
}

/* jeext.c */
int keel__je_general_init(struct keel_alloc *a);
int keel__je_registered_init(struct keel_alloc *a);
void keel__je_fini(struct keel_alloc *a);

/* buf.c */
void keel__buf_teardown(struct keel_alloc *a);

/* Regions 0..n-1 in use now: the owner's count after it added or pre-faulted region n-1. */
static inline void
keel__alloc_mapped_grow(struct keel_alloc *a, unsigned n)
{
	if (atomic_load_explicit(&a->mapped, memory_order_relaxed) < n)
		atomic_store_explicit(&a->mapped, n, memory_order_release);
}

/* Regions in use, from any thread. */
static inline unsigned
keel__alloc_mapped(const struct keel_alloc *a)
{
	return atomic_load_explicit(&a->mapped, memory_order_acquire);
}

#endif

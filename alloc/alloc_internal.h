/* SPDX-License-Identifier: MIT */
/* Private to alloc/: the allocator and buffer structures shared by its source files. */
#ifndef KEEL_ALLOC_INTERNAL_H
#define KEEL_ALLOC_INTERNAL_H

#include <keel/alloc.h>
#include <keel/buf.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jemalloc/jemalloc.h>

/* Smallest size class of the slab, and the most classes any region size needs. */
#define SLAB_MIN_SHIFT 6
#define SLAB_CLASSES   32
/* A slab chunk holds at least this many bytes of one class (one object when larger). */
#define SLAB_CHUNK (64u << 10)

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
#define ASTAT_GET(a, field)    atomic_load_explicit(&(a)->st.field, memory_order_relaxed)

enum buf_kind {
	BUF_SLAB = 0,
	BUF_JEMALLOC = 1,
	BUF_EXTERNAL = 2,
};

struct keel_buf {
	uint32_t refs;
	uint32_t gen; /* bumped when the buffer is freed: a slice with another gen is stale */
	uint32_t cap;
	uint16_t holder; /* shard holding the references (keel_slice_move) */
	uint8_t kind;    /* enum buf_kind */
	uint8_t cls;     /* slab class */
	uint8_t *data;
	struct keel_alloc *home;
	union {
		struct keel_buf *next_free; /* in the header free list */
		struct {
			keel_buf_release_fn fn;
			void *arg;
		} ext; /* BUF_EXTERNAL, while live */
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
	uint64_t used; /* bump offset of the next carve */
	bool registered;
};

struct slab_class {
	void *free; /* intrusive list through the first word of each free object */
	uint8_t *bump, *end;
	uint32_t size;
};

/* jemalloc extent hooks, with a way back to the allocator (the hooks get this pointer). */
struct ext_hooks {
	extent_hooks_t h; /* first: jemalloc passes &h */
	struct keel_alloc *a;
};

struct atomic_astats {
	_Atomic uint64_t regions, bytes_mapped, bytes_registered, bytes_in_use, bytes_peak,
		buffers_live, alloc_failures, remote_returns, trace_errors, prefault_ns;
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
	unsigned nregions; /* the cap, in regions */
	unsigned mapped;   /* regions 0..mapped-1 are mapped */
	unsigned hint;     /* lowest region that may still have room */
	bool grow_pending;
	struct region *regions; /* [nregions] */
	int numa_node;          /* node regions are bound to, -1 none */

	/* Slab backend. */
	unsigned nclasses;
	struct slab_class cls[SLAB_CLASSES];

	/* jemalloc: the general arena and (jemalloc backend) the registered arena, each with
	 * its own explicit tcache. */
	unsigned gen_arena, gen_tcache;
	int gen_flags;
	bool gen_ok;
	unsigned reg_arena, reg_tcache;
	int reg_flags;
	bool reg_ok;
	struct ext_hooks hooks;

	/* Buffer headers: a free list refilled in blocks from the general arena. */
	struct keel_buf *hdr_free;

#ifdef KEEL_BUF_TRACE
	struct keel_buf *trace_live;
#endif
	struct atomic_astats st;
};

extern _Thread_local struct keel_alloc *keel__alloc_cur __attribute__((tls_model("initial-exec")));

/* alloc.c */
void keel__alloc_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* region.c */
int keel__region_reserve(struct keel_alloc *a);
int keel__region_map(struct keel_alloc *a, unsigned idx);
void *keel__region_carve(struct keel_alloc *a, uint64_t size, uint64_t align);
void keel__region_release(struct keel_alloc *a);

/* slab.c */
void keel__slab_init(struct keel_alloc *a);
void *keel__slab_alloc(struct keel_alloc *a, size_t len, uint8_t *cls, uint32_t *cap);
void keel__slab_free(struct keel_alloc *a, void *p, uint8_t cls);

/* jeext.c */
int keel__je_general_init(struct keel_alloc *a);
int keel__je_registered_init(struct keel_alloc *a);
void keel__je_fini(struct keel_alloc *a);

/* buf.c */
void keel__buf_teardown(struct keel_alloc *a);

#endif

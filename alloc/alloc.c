// SPDX-License-Identifier: MIT
/* The allocator's lifecycle, thread binding, stats and the log hook. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc_internal.h"

_Thread_local struct keel_alloc *keel__alloc_cur __attribute__((tls_model("initial-exec")));

/* ---- log hook ---- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t je_create_lock = PTHREAD_MUTEX_INITIALIZER;
static keel_alloc_log_fn log_fn;
static void *log_arg;
/* jemalloc's entry points, or NULL: the C library's malloc (keel__alloc_set_jemalloc). */
static _Atomic(const struct keel__je *) je_fns;

void
keel__alloc_set_jemalloc(const struct keel__je *je)
{
	atomic_store(&je_fns, je);
}

void
keel_alloc_log_set(keel_alloc_log_fn fn, void *arg)
{
	pthread_mutex_lock(&log_lock);
	log_fn = fn;
	log_arg = arg;
	pthread_mutex_unlock(&log_lock);
}

void
keel__alloc_log(int level, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warn", "info", "debug" };
	char msg[512];
	keel_alloc_log_fn fn;
	void *arg;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&log_lock);
	fn = log_fn;
	arg = log_arg;
	pthread_mutex_unlock(&log_lock);
	if (fn) {
		fn(level, msg, arg);
		return;
	}
	if (level > KEEL_ALLOC_LOG_INFO)
		return;
	/* No hook (the allocator used without the runtime): like keel_log's default sink. */
	fprintf(stderr, "keel alloc %s: %s\n", names[level & 3], msg);
}

void
keel__alloc_verify_fail(const char *file, int line, const char *expr)
{
	keel__alloc_log(KEEL_ALLOC_LOG_ERROR, "%s:%d: invariant violated: %s (memory corruption)",
			file, line, expr);
	abort();
}

/* ---- lifecycle ---- */

static unsigned
log2_u64(uint64_t v)
{
	return 63u - (unsigned)__builtin_clzll(v);
}

const char *
keel_alloc_backend_name(enum keel_alloc_backend b)
{
	switch (b) {
	case KEEL_ALLOC_BACKEND_SLAB:
		return "slab";
	case KEEL_ALLOC_BACKEND_JEMALLOC:
		return "jemalloc";
	default:
		return "default";
	}
}

/* The region size @cfg gives, 0 when it is refused: at most 1 GiB (a region is one fixed
 * buffer, and the kernel registers none larger), a power of two; a cap below one region
 * gets smaller regions (still a power of two). The cap is rounded down to whole regions:
 * it is never exceeded. */
static uint64_t
region_of(const struct keel_alloc_config *cfg)
{
	uint64_t mem = cfg->memory ? cfg->memory : KEEL_ALLOC_DEFAULT_MEMORY;
	uint64_t rs = cfg->region_size ? cfg->region_size : KEEL_ALLOC_DEFAULT_REGION;

	if (rs < KEEL_ALLOC_HUGEPAGE || (rs & (rs - 1)) || rs > (1ULL << 30) ||
	    mem < KEEL_ALLOC_HUGEPAGE)
		return 0;
	while (rs > KEEL_ALLOC_HUGEPAGE && rs > mem)
		rs /= 2;
	return rs;
}

uint64_t
keel_alloc_memory_of(const struct keel_alloc_config *cfg)
{
	uint64_t mem = cfg->memory ? cfg->memory : KEEL_ALLOC_DEFAULT_MEMORY;
	uint64_t rs = region_of(cfg);

	/* 0 where keel_alloc_create refuses @cfg: a host sizing its huge pages from this
	 * would be told a size for a configuration that cannot start. */
	if (!rs || (unsigned)cfg->backend > KEEL_ALLOC_BACKEND_JEMALLOC ||
	    mem / rs > KEEL_ALLOC_MAX_REGIONS)
		return 0;
	return mem / rs * rs;
}

int
keel_alloc_create(const struct keel_alloc_config *cfg, struct keel_alloc **out)
{
	struct keel_alloc *a;
	uint64_t mem = cfg->memory ? cfg->memory : KEEL_ALLOC_DEFAULT_MEMORY;
	uint64_t rs = region_of(cfg);
	unsigned pre = cfg->prefault_regions ? cfg->prefault_regions : 1;
	int r;

	if (!rs)
		return -EINVAL;
	/* Any other value took the jemalloc path (a NULL call without it). */
	if ((unsigned)cfg->backend > KEEL_ALLOC_BACKEND_JEMALLOC)
		return -EINVAL;
	if (mem / rs > KEEL_ALLOC_MAX_REGIONS) {
		keel__alloc_log(
			KEEL_ALLOC_LOG_ERROR,
			"shard %u: %llu MiB of buffer memory is %llu regions of %llu MiB; "
			"at most %u fit a ring's fixed-buffer table (%llu MiB at most)",
			cfg->shard, (unsigned long long)(mem >> 20), (unsigned long long)(mem / rs),
			(unsigned long long)(rs >> 20), KEEL_ALLOC_MAX_REGIONS,
			(unsigned long long)(((uint64_t)KEEL_ALLOC_MAX_REGIONS * rs) >> 20));
		return -EINVAL;
	}

	if (mem % rs)
		keel__alloc_log(KEEL_ALLOC_LOG_WARN,
				"shard %u: %llu KiB of buffer memory is rounded down to %llu KiB, "
				"whole regions of %llu KiB (give a multiple of the region size to "
				"use all of it)",
				cfg->shard, (unsigned long long)(mem >> 10),
				(unsigned long long)((mem / rs * rs) >> 10),
				(unsigned long long)(rs >> 10));
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->cfg = *cfg;
	a->cfg.memory = (mem / rs) * rs;
	a->cfg.region_size = rs;
	a->region_size = rs;
	a->region_shift = log2_u64(rs);
	a->nregions = (unsigned)(mem / rs);
	a->numa_node = -1;
	/* Measured (docs/memory.md): the slab is the faster backend. */
	a->backend =
		cfg->backend == KEEL_ALLOC_BACKEND_DEFAULT ? KEEL_ALLOC_BACKEND_SLAB : cfg->backend;
	a->je = atomic_load(&je_fns);
	if (a->backend == KEEL_ALLOC_BACKEND_JEMALLOC && !a->je) {
		keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
				"shard %u: the jemalloc backend needs jemalloc: link the program "
				"with keel_jemalloc (pkg-config keel-jemalloc, or CMake "
				"keel::jemalloc) and call keel_jemalloc_enable() before creating "
				"the runtime (docs/embedding.md)",
				cfg->shard);
		free(a);
		return -ENOTSUP;
	}
	/* jemalloc places a large allocation in an extent one page larger than its size class
	 * (cache-oblivious padding), and an extent must fit in one region: its largest class
	 * that does is 7/8 of the region (size classes are 4 per power of two). */
	a->buf_max = a->backend == KEEL_ALLOC_BACKEND_JEMALLOC ? rs - rs / 8 : rs;
	a->regions = calloc(a->nregions, sizeof(*a->regions));
	if (!a->regions) {
		r = -ENOMEM;
		goto err;
	}
	a->chunk_order = a->region_shift - CHUNK_SHIFT;
	r = keel__pool_init(a);
	if (r < 0)
		goto err;
	r = keel__region_reserve(a);
	if (r < 0)
		goto err;
	keel__slab_init(a);
	/* jemalloc publishes a new arena's metadata (mutexes in memory it mapped) with its own
	 * atomics, which ThreadSanitizer does not see: shards creating allocators at once were
	 * reported as racing. Arena creation happens at start-up only; serialising it costs
	 * nothing and gives the ordering a form TSan understands. */
	r = 0;
	if (a->je) {
		pthread_mutex_lock(&je_create_lock);
		r = keel__je_general_init(a);
		if (r == 0 && a->backend == KEEL_ALLOC_BACKEND_JEMALLOC)
			r = keel__je_registered_init(a);
		pthread_mutex_unlock(&je_create_lock);
	}
	if (r < 0)
		goto err;
	r = keel__region_prefault_initial(a, pre);
	if (r < 0)
		goto err;
	*out = a;
	return 0;
err:
	keel__je_fini(a);
	keel__region_release(a);
	keel__pool_fini(a);
	free(a->regions);
	free(a);
	return r;
}

void
keel_alloc_destroy(struct keel_alloc *a)
{
	if (!a)
		return;
	keel__buf_teardown(a);
	if (keel__alloc_cur == a)
		keel__alloc_cur = NULL;
	/* The arenas before the regions: jemalloc may still touch extents it retains. */
	keel__je_fini(a);
	keel__region_release(a);
	keel__pool_fini(a);
	free(a->regions);
	free(a);
}

void
keel_alloc_bind_thread(struct keel_alloc *a)
{
	keel__alloc_cur = a;
}

struct keel_alloc *
keel_alloc_current(void)
{
	return keel__alloc_cur;
}

uint64_t
keel_alloc_buf_max(const struct keel_alloc *a)
{
	return a->buf_max;
}

unsigned
keel_alloc_shard(const struct keel_alloc *a)
{
	return a->cfg.shard;
}

enum keel_alloc_backend
keel_alloc_backend_of(const struct keel_alloc *a)
{
	return a->backend;
}

int
keel_alloc_stats(const struct keel_alloc *a, struct keel_alloc_stats *out)
{
	struct keel_alloc *m = (struct keel_alloc *)a;

	if (!a || !out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	out->regions = ASTAT_GET(m, regions);
	out->regions_max = a->nregions;
	out->bytes_mapped = ASTAT_GET(m, bytes_mapped);
	out->bytes_registered = ASTAT_GET(m, bytes_registered);
	out->bytes_in_use = ASTAT_GET(m, bytes_in_use);
	out->bytes_peak = ASTAT_GET(m, bytes_peak);
	out->buffers_live = ASTAT_GET(m, buffers_live);
	out->alloc_failures = ASTAT_GET(m, alloc_failures);
	out->remote_returns = ASTAT_GET(m, remote_returns);
	out->trace_errors = ASTAT_GET(m, trace_errors);
	out->prefault_ns = ASTAT_GET(m, prefault_ns);
	out->inline_prefaults = ASTAT_GET(m, inline_prefaults);
	out->regions_unprefaulted = ASTAT_GET(m, regions_unprefaulted);
	out->ext_bytes_in_use = ASTAT_GET(m, ext_bytes_in_use);
	out->ext_buffers_live = ASTAT_GET(m, ext_buffers_live);
	out->exports = ASTAT_GET(m, exports);
	out->exports_live = ASTAT_GET(m, exports_live);
	return 0;
}

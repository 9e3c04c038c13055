// SPDX-License-Identifier: MIT
/*
 * keel-bench alloc: buffer alloc+free pairs per second on a shard, beside glibc and plain
 * jemalloc in the same run, and the time to register 1 GiB of buffers with a ring.
 *
 * Each measurement runs on shard 0 (keel_run with one shard): batches of DEPTH allocations
 * of one size, each written once, then DEPTH frees, repeated for --ms milliseconds; a pair
 * is one allocation and its free. Allocators:
 *   glibc           __libc_malloc/__libc_free (jemalloc replaces malloc in this process)
 *   jemalloc        plain mallocx(size, 0)/dallocx(p, 0): the thread's arena and tcache
 *   keel slab       keel_buf_alloc/keel_slice_put, slab backend (registered memory)
 *   keel jemalloc   keel_buf_alloc/keel_slice_put, jemalloc arena with extent hooks over
 *                   the regions (registered memory)
 * --reps N repetitions (default 5), the allocators' order rotated by one each repetition
 * (a fixed order let the first one's warm-up or the machine's drift favour one); reported:
 * each allocator's median pairs/s with min-max, and the median of the per-repetition
 * ratios with min-max.
 * Registration: 1 GiB mapped (THP) and pre-faulted, then registered with a scratch ring as
 * one fixed buffer, and again as 256 regions of 4 MiB one at a time (keel's lazy path).
 */
#include <errno.h>
#include <keel/keel.h>
#include <keel/ring.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <jemalloc/jemalloc.h>

#include "bench.h"

/* glibc's allocator, still in the process beside jemalloc's malloc. */
extern void *__libc_malloc(size_t size);
extern void __libc_free(void *p);

#define DEPTH    16
#define NSIZES   5
#define NALLOC   4
#define MAX_REPS 21

static const size_t sizes[NSIZES] = { 64, 2048, 16384, 65536, 1 << 20 };
static const char *const alloc_names[NALLOC] = { "glibc", "jemalloc", "keel_slab",
						 "keel_jemalloc" };

struct ab {
	uint64_t dur_ns;
	unsigned reps;
	double ops[NALLOC][NSIZES][MAX_REPS];
	int err;
	const char *why;
	/* registration */
	bool reg_done;
	int reg_err;
	double prefault_ms, reg_one_ms, reg_lazy_ms, reg_lazy_max_ms;
};

static volatile uint8_t sink;

static double
run_libc(size_t size, uint64_t dur)
{
	void *p[DEPTH];
	uint64_t n = 0, t0 = bench_now_ns(), t;

	do {
		for (int k = 0; k < 64; k++) {
			for (int i = 0; i < DEPTH; i++) {
				p[i] = __libc_malloc(size);
				((uint8_t *)p[i])[0] = (uint8_t)i;
			}
			for (int i = 0; i < DEPTH; i++) {
				sink += ((uint8_t *)p[i])[0];
				__libc_free(p[i]);
			}
		}
		n += 64 * DEPTH;
	} while ((t = bench_now_ns()) - t0 < dur);
	return (double)n * 1e9 / (double)(t - t0);
}

static double
run_jemalloc(size_t size, uint64_t dur)
{
	void *p[DEPTH];
	uint64_t n = 0, t0 = bench_now_ns(), t;

	do {
		for (int k = 0; k < 64; k++) {
			for (int i = 0; i < DEPTH; i++) {
				p[i] = mallocx(size, 0);
				((uint8_t *)p[i])[0] = (uint8_t)i;
			}
			for (int i = 0; i < DEPTH; i++) {
				sink += ((uint8_t *)p[i])[0];
				dallocx(p[i], 0);
			}
		}
		n += 64 * DEPTH;
	} while ((t = bench_now_ns()) - t0 < dur);
	return (double)n * 1e9 / (double)(t - t0);
}

static double
run_keel(struct keel_alloc *a, size_t size, uint64_t dur)
{
	struct keel_slice s[DEPTH];
	uint64_t n = 0, t0 = bench_now_ns(), t;

	do {
		for (int k = 0; k < 64; k++) {
			for (int i = 0; i < DEPTH; i++) {
				if (keel_buf_alloc(a, size, &s[i]) < 0)
					return -1;
				s[i].data[0] = (uint8_t)i;
			}
			for (int i = 0; i < DEPTH; i++) {
				sink += s[i].data[0];
				keel_slice_put(&s[i]);
			}
		}
		n += 64 * DEPTH;
	} while ((t = bench_now_ns()) - t0 < dur);
	return (double)n * 1e9 / (double)(t - t0);
}

/* 1 GiB: pre-fault, register as one buffer, then as 256 regions one at a time. */
static void
measure_registration(struct ab *b)
{
	const size_t len = 1ULL << 30, region = 4ULL << 20;
	const unsigned nreg = (unsigned)(len / region);
	struct io_uring ring;
	struct iovec iov;
	__u64 tag = 0;
	uint8_t *m;
	uint64_t t0;
	int r;

	m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		b->reg_err = -errno;
		return;
	}
	madvise(m, len, MADV_HUGEPAGE);
	t0 = bench_now_ns();
	if (madvise(m, len, 23 /* MADV_POPULATE_WRITE */) < 0)
		for (size_t off = 0; off < len; off += 4096)
			m[off] = 0;
	b->prefault_ms = (double)(bench_now_ns() - t0) / 1e6;

	r = io_uring_queue_init(8, &ring, 0);
	if (r < 0)
		goto out_unmap;
	r = io_uring_register_buffers_sparse(&ring, nreg + 1);
	if (r < 0)
		goto out_ring;
	iov.iov_base = m;
	iov.iov_len = len;
	t0 = bench_now_ns();
	r = io_uring_register_buffers_update_tag(&ring, nreg, &iov, &tag, 1);
	b->reg_one_ms = (double)(bench_now_ns() - t0) / 1e6;
	if (r != 1)
		goto out_ring;
	io_uring_unregister_buffers(&ring);
	r = io_uring_register_buffers_sparse(&ring, nreg);
	if (r < 0)
		goto out_ring;
	for (unsigned i = 0; i < nreg; i++) {
		uint64_t t1 = bench_now_ns();
		double ms;
		iov.iov_base = m + (size_t)i * region;
		iov.iov_len = region;
		r = io_uring_register_buffers_update_tag(&ring, i, &iov, &tag, 1);
		if (r != 1)
			goto out_ring;
		ms = (double)(bench_now_ns() - t1) / 1e6;
		b->reg_lazy_ms += ms;
		if (ms > b->reg_lazy_max_ms)
			b->reg_lazy_max_ms = ms;
	}
	r = 1;
	b->reg_done = true;
out_ring:
	io_uring_queue_exit(&ring);
out_unmap:
	munmap(m, len);
	if (r != 1)
		b->reg_err = r < 0 ? r : -EIO;
}

static void
bench_start(void *app)
{
	struct ab *b = app;
	struct keel_alloc *ka[2] = { NULL, NULL };
	enum keel_alloc_backend be[2] = { KEEL_ALLOC_BACKEND_SLAB, KEEL_ALLOC_BACKEND_JEMALLOC };

	/* Two allocators of this shard's kind, one per backend, over their own regions. */
	for (int i = 0; i < 2; i++) {
		struct keel_alloc_config c;
		memset(&c, 0, sizeof(c));
		c.shard = keel_shard_id(keel_this_shard());
		c.memory = 64ULL << 20;
		c.cpu = keel_shard_cpu(keel_this_shard());
		c.backend = be[i];
		c.prefault_regions = 16;
		b->err = keel_alloc_create(&c, &ka[i]);
		if (b->err < 0) {
			b->why = "creating an allocator";
			goto out;
		}
	}
	for (unsigned k = 0; k < b->reps; k++) {
		for (int s = 0; s < NSIZES; s++) {
			/* The order rotates by one each repetition; each is warmed (first chunks,
			 * tcache fills), then measured. */
			for (int j = 0; j < NALLOC; j++) {
				int a = (int)((j + k) % NALLOC);
				double *o = &b->ops[a][s][k];

				if (a == 0) {
					run_libc(sizes[s], b->dur_ns / 10);
					*o = run_libc(sizes[s], b->dur_ns);
				} else if (a == 1) {
					run_jemalloc(sizes[s], b->dur_ns / 10);
					*o = run_jemalloc(sizes[s], b->dur_ns);
				} else {
					run_keel(ka[a - 2], sizes[s], b->dur_ns / 10);
					*o = run_keel(ka[a - 2], sizes[s], b->dur_ns);
					if (*o < 0) {
						b->err = -ENOMEM;
						b->why = "keel_buf_alloc";
						goto out;
					}
				}
			}
		}
	}
	measure_registration(b);
out:
	for (int i = 0; i < 2; i++)
		keel_alloc_destroy(ka[i]);
	keel_stop(0);
}

static const char alloc_usage[] =
	"usage: keel-bench alloc [--ms N] [--reps N] [--json] [runtime options]\n"
	"  --ms N     milliseconds per allocator, size and repetition (default 300)\n"
	"  --reps N   repetitions, the allocators' order rotated each time (default 5, 1..21)\n"
	"  --json     print JSON instead of a table\n\n";

/* Median, min and max of @n values (sorted in place). */
struct mm {
	double med, lo, hi;
};

static int
dcmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static struct mm
mm_of(double *v, unsigned n)
{
	qsort(v, n, sizeof(*v), dcmp);
	return (struct mm){ n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2, v[0], v[n - 1] };
}

/* Allocator @a's pairs/s at size @s over the repetitions. */
static struct mm
ops_mm(const struct ab *b, int a, int s)
{
	double v[MAX_REPS] = { 0 };

	memcpy(v, b->ops[a][s], b->reps * sizeof(*v));
	return mm_of(v, b->reps);
}

/* The per-repetition ratios of allocator @x to @y at size @s. */
static struct mm
ratio_mm(const struct ab *b, int x, int y, int s)
{
	double v[MAX_REPS] = { 0 };

	for (unsigned k = 0; k < b->reps; k++)
		v[k] = b->ops[y][s][k] > 0 ? b->ops[x][s][k] / b->ops[y][s][k] : 0;
	return mm_of(v, b->reps);
}

static const struct {
	const char *name, *col;
	int x, y;
} ratios[] = { { "ratio_keel_slab_to_glibc", "slab/gl", 2, 0 },
	       { "ratio_keel_slab_to_jemalloc", "slab/je", 2, 1 },
	       { "ratio_keel_jemalloc_to_jemalloc", "kje/je", 3, 1 } };

int
bench_alloc(int argc, char **argv)
{
	struct keel_opts o;
	struct ab *b;
	bool json = false;
	unsigned ms = 300, reps = 5;
	struct utsname u;
	int r;

	keel_opts_init(&o);
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	keel_opts_parse_or_exit(&o, &argc, argv, alloc_usage);
	for (int i = 1; i < argc; i++) {
		const char *v;
		int m;
		if ((m = bench_opt(argc, argv, &i, "--ms", &v)) != 0) {
			uint64_t x;
			if (m < 0 || !bench_parse_u64(v, 10, 60000, &x)) {
				fprintf(stderr, "keel-bench alloc: --ms: expected 10..60000\n");
				return 2;
			}
			ms = (unsigned)x;
		} else if ((m = bench_opt(argc, argv, &i, "--reps", &v)) != 0) {
			uint64_t x;
			if (m < 0 || !bench_parse_u64(v, 1, MAX_REPS, &x)) {
				fprintf(stderr, "keel-bench alloc: --reps: expected 1..%d\n",
					MAX_REPS);
				return 2;
			}
			reps = (unsigned)x;
		} else if (!strcmp(argv[i], "--json")) {
			json = true;
		} else {
			fprintf(stderr, "keel-bench alloc: unknown option '%s' (see --help)\n",
				argv[i]);
			return 2;
		}
	}
	/* Made once the options are read: a bad one returned without freeing it. */
	b = calloc(1, sizeof(*b));
	if (!b)
		return 1;
	o.shards = 1;
	b->dur_ns = (uint64_t)ms * 1000000ULL;
	b->reps = reps;
	r = keel_run(&o, bench_start, b);
	if (r < 0 || b->err < 0) {
		fprintf(stderr, "keel-bench alloc: %s failed: %s\n", b->why ? b->why : "runtime",
			strerror(-(r < 0 ? r : b->err)));
		free(b);
		return 1;
	}
	uname(&u);
	if (json) {
		printf("{\n  \"mode\": \"alloc\",\n  \"kernel\": \"%s\",\n  \"ms_per_point\": %u,\n"
		       "  \"reps\": %u,\n  \"stat\": \"median\",\n  \"depth\": %d,\n  \"sizes\": [",
		       u.release, ms, reps, DEPTH);
		for (int s = 0; s < NSIZES; s++)
			printf("%s%zu", s ? ", " : "", sizes[s]);
		printf("],\n  \"ops_per_sec\": {\n");
		for (int a = 0; a < NALLOC; a++) {
			printf("    \"%s\": {", alloc_names[a]);
			for (int s = 0; s < NSIZES; s++)
				printf("%s\"%zu\": %.0f", s ? ", " : "", sizes[s],
				       ops_mm(b, a, s).med);
			printf("}%s\n", a + 1 < NALLOC ? "," : "");
		}
		printf("  }");
		for (size_t q = 0; q < sizeof(ratios) / sizeof(ratios[0]); q++) {
			printf(",\n  \"%s\": {", ratios[q].name);
			for (int s = 0; s < NSIZES; s++) {
				struct mm rq = ratio_mm(b, ratios[q].x, ratios[q].y, s);
				printf("%s\"%zu\": %.2f", s ? ", " : "", sizes[s], rq.med);
			}
			printf("},\n  \"%s_min_max\": {", ratios[q].name);
			for (int s = 0; s < NSIZES; s++) {
				struct mm rq = ratio_mm(b, ratios[q].x, ratios[q].y, s);
				printf("%s\"%zu\": [%.2f, %.2f]", s ? ", " : "", sizes[s], rq.lo,
				       rq.hi);
			}
			printf("}");
		}
		printf(",\n  \"register_1gib\": ");
		if (b->reg_done)
			printf("{\"prefault_ms\": %.1f, \"one_buffer_ms\": %.1f, "
			       "\"regions_4mib_total_ms\": %.1f, \"regions_4mib_max_ms\": %.2f}\n",
			       b->prefault_ms, b->reg_one_ms, b->reg_lazy_ms, b->reg_lazy_max_ms);
		else
			printf("{\"error\": \"%s\"}\n", strerror(-b->reg_err));
		printf("}\n");
	} else {
		printf("alloc: alloc+free pairs/s on one shard, batches of %d, %u ms per point, "
		       "medians of %u repetitions, the order rotated each (kernel %s)\n",
		       DEPTH, ms, reps, u.release);
		printf("%8s %12s %12s %12s %14s\n", "size", "glibc", "jemalloc", "keel_slab",
		       "keel_jemalloc");
		for (int s = 0; s < NSIZES; s++)
			printf("%8zu %12.0f %12.0f %12.0f %14.0f\n", sizes[s], ops_mm(b, 0, s).med,
			       ops_mm(b, 1, s).med, ops_mm(b, 2, s).med, ops_mm(b, 3, s).med);
		printf("%8s", "size");
		for (size_t q = 0; q < sizeof(ratios) / sizeof(ratios[0]); q++)
			printf(" %27s", ratios[q].col);
		printf("   (median of the per-repetition ratios, min-max)\n");
		for (int s = 0; s < NSIZES; s++) {
			printf("%8zu", sizes[s]);
			for (size_t q = 0; q < sizeof(ratios) / sizeof(ratios[0]); q++) {
				struct mm rq = ratio_mm(b, ratios[q].x, ratios[q].y, s);
				char cell[40];
				snprintf(cell, sizeof(cell), "%.2fx (%.2f-%.2f)", rq.med, rq.lo,
					 rq.hi);
				printf(" %27s", cell);
			}
			printf("\n");
		}
		if (reps < 5)
			printf("(%u repetition%s: fewer than the 5 a comparison needs)\n", reps,
			       reps == 1 ? "" : "s");
		if (b->reg_done)
			printf("register 1 GiB: pre-fault %.1f ms; as one fixed buffer %.1f ms; as "
			       "256 x 4 MiB regions %.1f ms in all, %.2f ms at most per region\n",
			       b->prefault_ms, b->reg_one_ms, b->reg_lazy_ms, b->reg_lazy_max_ms);
		else
			printf("register 1 GiB: failed (%s)\n", strerror(-b->reg_err));
	}
	free(b);
	return 0;
}

// SPDX-License-Identifier: MIT
/*
 * keel-bench disk: random 4 KiB reads and sequential 128 KiB writes on one file, through
 * keel_file_* on one shard, beside two baselines in the same run with the same parameters:
 *   fio        fio's io_uring engine (--ioengine=io_uring --fixedbufs), its JSON parsed
 *   threads    a pool of --qd threads, each doing pread/pwrite (one request in flight each)
 *              from a buffer on transparent huge pages, as keel's regions are (MADV_HUGEPAGE,
 *              best effort both: on 4 KiB pages a 128 KiB write pins 32 pages, and the
 *              thirty-seventh session's review measured the pool at 1.4-2x its 4 KiB-page
 *              rate on huge pages, which was keel's whole sequential-write lead)
 * fio's buffers are its own malloc's, on 4 KiB pages where THP is "madvise" (fio has no
 * option for transparent huge pages): its write rows are flagged so.
 * Each round runs every engine once per workload; the order alternates between rounds
 * (keel, fio, threads; then threads, fio, keel) so a drift of the device or the machine
 * does not favour one engine. Reported: IOPS and MB/s (10^6 bytes), the median over the
 * rounds with the lowest and highest round, each round's IOPS, and keel/fio and keel/threads
 * as the median of the rounds' ratios (each round runs every engine, one after another)
 * with their lowest and highest, as tools/bench/xshard.sh reports: the ratio of two
 * medians can pair a fast round with a slow one. Fewer than 5 rounds is said in the report.
 *
 * The file is written in full before the first round (reads of holes would not reach the
 * device); with --direct on the page cache is bypassed by every engine.
 */
#include <errno.h>
#include <fcntl.h>
#include <keel/keel.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "bench.h"

#define MAX_ROUNDS 20
#define HUGE_BYTES (2u << 20)
#define MAX_QD     1024

enum { W_RANDREAD = 0, W_SEQWRITE = 1, NW = 2 };
enum { E_KEEL = 0, E_FIO = 1, E_THREADS = 2, NE = 3 };

static const char *const wl_name[NW] = { "randread_4k", "seqwrite_128k" };
static const uint32_t wl_bs[NW] = { 4096, 128 << 10 };
static const char *const eng_name[NE] = { "keel", "fio", "threads" };

struct dcfg {
	const char *path;
	uint64_t size;
	unsigned qd;
	bool direct;
	double seconds;
	unsigned rounds;
	const char *fio;
	bool json;
	bool pin;              /* baselines on the shard's CPU */
	int cpu;               /* the shard's CPU, learnt from the first keel run; -1 before */
	unsigned idle_poll_us; /* keel's; fio and the threads block for completions */
};

struct result {
	double iops, mbs;
	int err;
};

/* xorshift64*: a per-engine random offset stream. */
static uint64_t
rnd(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

/* ---- keel ---- */

struct kslot {
	struct keel_file_req req;
	struct keel_slice buf;
	struct kbench *kb;
};

struct kbench {
	const struct dcfg *cfg;
	int wl;
	struct keel_file f;
	struct keel_file_req open_req;
	struct kslot *slots;
	unsigned active;
	uint64_t seed, next_off, ops, t0, t_end, t_last;
	int err;
	char why[400]; /* a copy: keel_file_last_error() dies with the shard */
};

static void kb_done(struct kbench *kb);

static void
kb_closed(struct keel_file_req *req, int res, void *arg)
{
	keel_stop(0);
}

static void
kb_fail(struct kbench *kb, int err, const char *why)
{
	if (!kb->err) {
		kb->err = err;
		snprintf(kb->why, sizeof(kb->why), "%s", why);
	}
}

static void kb_io_cb(struct keel_file_req *req, int res, void *arg);

static int
kb_submit(struct kslot *sl)
{
	struct kbench *kb = sl->kb;
	uint32_t bs = wl_bs[kb->wl];
	uint64_t off, blocks = kb->cfg->size / bs;

	if (kb->wl == W_RANDREAD) {
		off = (rnd(&kb->seed) % blocks) * bs;
		return keel_file_read_slice(&sl->req, &kb->f, &sl->buf, off, kb_io_cb, sl);
	}
	off = kb->next_off;
	kb->next_off = (kb->next_off + bs) % (blocks * bs);
	return keel_file_write_slice(&sl->req, &kb->f, &sl->buf, off, kb_io_cb, sl);
}

static void
kb_io_cb(struct keel_file_req *req, int res, void *arg)
{
	struct kslot *sl = arg;
	struct kbench *kb = sl->kb;
	uint64_t now = bench_now_ns();
	int r = 0;

	if (res != (int)wl_bs[kb->wl])
		kb_fail(kb, res < 0 ? res : -EIO, res < 0 ? "a disk request" : "a short transfer");
	else {
		kb->ops++;
		kb->t_last = now;
	}
	if (kb->err || now >= kb->t_end || (r = kb_submit(sl)) < 0) {
		if (!kb->err && now < kb->t_end)
			kb_fail(kb, r, keel_file_last_error());
		if (--kb->active == 0)
			kb_done(kb);
	}
}

static void
kb_done(struct kbench *kb)
{
	for (unsigned i = 0; i < kb->cfg->qd; i++)
		if (kb->slots[i].buf.buf)
			keel_slice_put(&kb->slots[i].buf);
	if (keel_file_close(&kb->open_req, &kb->f, kb_closed, kb) < 0)
		keel_stop(0);
}

static void
kb_opened(struct keel_file_req *req, int res, void *arg)
{
	struct kbench *kb = arg;
	uint32_t bs = wl_bs[kb->wl];

	if (res < 0) {
		kb_fail(kb, res, "opening the file on the shard");
		keel_stop(0);
		return;
	}
	for (unsigned i = 0; i < kb->cfg->qd; i++) {
		struct kslot *sl = &kb->slots[i];
		sl->kb = kb;
		if (keel_buf_alloc(keel_shard_alloc(), bs, &sl->buf) < 0) {
			kb_fail(kb, -ENOMEM, "keel_buf_alloc (raise --memory)");
			kb_done(kb);
			return;
		}
		memset(sl->buf.data, 0x5a, bs);
	}
	kb->t0 = bench_now_ns();
	kb->t_end = kb->t0 + (uint64_t)(kb->cfg->seconds * 1e9);
	for (unsigned i = 0; i < kb->cfg->qd; i++) {
		int r = kb_submit(&kb->slots[i]);
		if (r < 0) {
			kb_fail(kb, r, keel_file_last_error());
			break;
		}
		kb->active++;
	}
	if (kb->active == 0)
		kb_done(kb);
}

static void
kb_start(void *app)
{
	struct kbench *kb = app;
	((struct dcfg *)kb->cfg)->cpu = keel_shard_cpu(keel_this_shard());
	int flags = (kb->wl == W_RANDREAD ? O_RDONLY : O_WRONLY) | (kb->cfg->direct ? O_DIRECT : 0);
	int r = keel_file_openat(&kb->open_req, AT_FDCWD, kb->cfg->path, flags, 0, 0, &kb->f,
				 kb_opened, kb);
	if (r < 0) {
		kb_fail(kb, r, keel_file_last_error());
		keel_stop(0);
	}
}

static struct result
run_keel(const struct dcfg *cfg, const struct keel_opts *base, int wl, uint64_t seed)
{
	struct kbench kb = { .cfg = cfg, .wl = wl, .seed = seed | 1 };
	struct keel_opts o = *base;
	struct result res = { 0 };
	int r;

	kb.slots = calloc(cfg->qd, sizeof(*kb.slots));
	if (!kb.slots)
		return (struct result){ .err = -ENOMEM };
	o.shards = 1;
	o.file_qd = cfg->qd;
	r = keel_run(&o, kb_start, &kb);
	free(kb.slots);
	if (r < 0 || kb.err < 0) {
		fprintf(stderr, "keel-bench disk: keel %s: %s failed: %s\n", wl_name[wl],
			kb.why[0] ? kb.why : "the runtime", strerror(-(r < 0 ? r : kb.err)));
		res.err = r < 0 ? r : kb.err;
		return res;
	}
	double secs = (double)(kb.t_last - kb.t0) / 1e9;
	res.iops = secs > 0 ? (double)kb.ops / secs : 0;
	res.mbs = res.iops * wl_bs[wl] / 1e6;
	return res;
}

/* ---- threads: pread/pwrite, one request in flight per thread ---- */

struct tpool {
	const struct dcfg *cfg;
	int wl, fd;
	_Atomic uint64_t next_off, ops;
	_Atomic int err;
	uint64_t t_end;
	pthread_barrier_t bar;
};

struct tworker {
	struct tpool *p;
	uint64_t seed;
};

static void *
tworker_main(void *arg)
{
	struct tworker *w = arg;
	struct tpool *p = w->p;
	uint32_t bs = wl_bs[p->wl];
	uint64_t blocks = p->cfg->size / bs, n = 0;
	void *buf;

	/* One huge page's worth, aligned to it: the buffer can sit in one, as keel's do. */
	if (posix_memalign(&buf, HUGE_BYTES, HUGE_BYTES)) {
		atomic_store(&p->err, -ENOMEM);
		pthread_barrier_wait(&p->bar);
		return NULL;
	}
	madvise(buf, HUGE_BYTES, MADV_HUGEPAGE); /* best effort, as alloc/region.c's */
	memset(buf, 0x5a, bs);
	if (p->cfg->pin && p->cfg->cpu >= 0)
		bench_pin(p->cfg->cpu);
	pthread_barrier_wait(&p->bar);
	/* At least one request each, however late the thread first runs: a loaded machine can
	 * hold a pinned thread off the CPU for the whole round, and a round of zero requests
	 * is no measurement (the elapsed time counted below includes the wait). */
	do {
		ssize_t r;
		if (p->wl == W_RANDREAD) {
			r = pread(p->fd, buf, bs, (off_t)((rnd(&w->seed) % blocks) * bs));
		} else {
			uint64_t off = atomic_fetch_add(&p->next_off, bs) % (blocks * bs);
			r = pwrite(p->fd, buf, bs, (off_t)off);
		}
		if (r != (ssize_t)bs) {
			atomic_store(&p->err, r < 0 ? -errno : -EIO);
			break;
		}
		n++;
	} while (bench_now_ns() < p->t_end);
	atomic_fetch_add(&p->ops, n);
	free(buf);
	return NULL;
}

static struct result
run_threads(const struct dcfg *cfg, int wl, uint64_t seed)
{
	struct tpool p = { .cfg = cfg, .wl = wl };
	struct result res = { 0 };
	pthread_t *th = calloc(cfg->qd, sizeof(*th));
	struct tworker *w = calloc(cfg->qd, sizeof(*w));
	unsigned started = 0;
	uint64_t t0;

	p.fd = open(cfg->path,
		    (wl == W_RANDREAD ? O_RDONLY : O_WRONLY) | (cfg->direct ? O_DIRECT : 0));
	if (!th || !w || p.fd < 0) {
		res.err = p.fd < 0 ? -errno : -ENOMEM;
		/* The caller ends the run on it: said here, where the cause is known. */
		fprintf(stderr, "keel-bench disk: threads %s: %s %s: %s\n", wl_name[wl],
			p.fd < 0 ? "opening" : "memory for", p.fd < 0 ? cfg->path : "the threads",
			strerror(-res.err));
		goto out;
	}
	pthread_barrier_init(&p.bar, NULL, cfg->qd + 1);
	p.t_end = UINT64_MAX;
	for (unsigned i = 0; i < cfg->qd; i++) {
		w[i].p = &p;
		w[i].seed = (seed + i * 0x9e3779b97f4a7c15ULL) | 1;
		if (pthread_create(&th[i], NULL, tworker_main, &w[i]) != 0)
			break;
		started++;
	}
	if (started < cfg->qd) {
		/* The others wait on a barrier of qd + 1 that will never fill. */
		fprintf(stderr,
			"keel-bench disk: could not start %u threads (%u started): lower --qd\n",
			cfg->qd, started);
		exit(1);
	}
	t0 = bench_now_ns();
	p.t_end = t0 + (uint64_t)(cfg->seconds * 1e9);
	pthread_barrier_wait(&p.bar);
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	double secs = (double)(bench_now_ns() - t0) / 1e9;
	pthread_barrier_destroy(&p.bar);
	res.err = atomic_load(&p.err);
	res.iops = (double)atomic_load(&p.ops) / secs;
	res.mbs = res.iops * wl_bs[wl] / 1e6;
	if (res.err)
		fprintf(stderr, "keel-bench disk: threads %s: %s\n", wl_name[wl],
			strerror(-res.err));
out:
	if (p.fd >= 0)
		close(p.fd);
	free(th);
	free(w);
	return res;
}

/* ---- fio ---- */

/* @s as one word of sh, in single quotes (each ' as '\''), into @out; "" when it does not
 * fit (the command then fails, and says so, rather than run cut). */
static const char *
sh_quote(const char *s, char *out, size_t len)
{
	size_t o = 0;

	if (len < 3)
		return "";
	out[o++] = '\'';
	for (; *s; s++) {
		if (*s == '\'') {
			if (o + 5 >= len)
				return out[0] = 0, out;
			memcpy(out + o, "'\\''", 4);
			o += 4;
		} else {
			if (o + 2 >= len)
				return out[0] = 0, out;
			out[o++] = *s;
		}
	}
	out[o++] = '\'';
	out[o] = 0;
	return out;
}

/* fio's command line; the program and the path quoted for the shell popen runs (a path with
 * a space split fio's --filename, and a ';' ran what followed it). */
static void
fio_cmd(const struct dcfg *cfg, int wl, char *out, size_t len)
{
	char rt[32], cpus[32] = "", qfio[600], qpath[1100];

	snprintf(rt, sizeof(rt), "%.0fms", cfg->seconds * 1000);
	if (cfg->pin && cfg->cpu >= 0)
		snprintf(cpus, sizeof(cpus), " --cpus_allowed=%d", cfg->cpu);
	snprintf(out, len,
		 "%s --name=keel-bench --filename=%s --size=%llu --rw=%s --bs=%u "
		 "--ioengine=io_uring --fixedbufs --iodepth=%u --direct=%d --time_based "
		 "--runtime=%s --numjobs=1%s --output-format=json",
		 sh_quote(cfg->fio, qfio, sizeof(qfio)), sh_quote(cfg->path, qpath, sizeof(qpath)),
		 (unsigned long long)cfg->size, wl == W_RANDREAD ? "randread" : "write", wl_bs[wl],
		 cfg->qd, cfg->direct ? 1 : 0, rt, cpus);
}

/* The number after "key" : inside fio's section "sect" : { of the first job. */
static int
fio_num(const char *json, const char *sect, const char *key, double *out)
{
	char pat[64];
	const char *at;

	snprintf(pat, sizeof(pat), "\"%s\" : {", sect);
	at = strstr(json, "\"jobs\"");
	if (!at || !(at = strstr(at, pat)))
		return -1;
	snprintf(pat, sizeof(pat), "\"%s\" : ", key);
	if (!(at = strstr(at, pat)))
		return -1;
	*out = strtod(at + strlen(pat), NULL);
	return 0;
}

static struct result
run_fio(const struct dcfg *cfg, int wl)
{
	struct result res = { .err = -EIO };
	char cmd[2048];
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	FILE *p;
	double iops, bw;

	if (!buf)
		return (struct result){ .err = -ENOMEM };
	fio_cmd(cfg, wl, cmd, sizeof(cmd));
	strncat(cmd, " 2>&1", sizeof(cmd) - strlen(cmd) - 1);
	p = popen(cmd, "r");
	if (!p) {
		fprintf(stderr, "keel-bench disk: fio: popen: %s\n", strerror(errno));
		free(buf);
		return res;
	}
	for (size_t k; (k = fread(buf + n, 1, cap - n - 1, p)) > 0;) {
		n += k;
		if (n + 1 == cap) {
			char *nb = realloc(buf, cap * 2);
			if (!nb)
				break;
			buf = nb;
			cap *= 2;
		}
	}
	buf[n] = 0;
	int st = pclose(p);
	const char *sect = wl == W_RANDREAD ? "read" : "write";
	if (st != 0 || fio_num(buf, sect, "iops", &iops) < 0 ||
	    fio_num(buf, sect, "bw_bytes", &bw) < 0) {
		fprintf(stderr, "keel-bench disk: fio failed (status %d): %s\n%.2000s\n", st, cmd,
			buf);
	} else {
		res.err = 0;
		res.iops = iops;
		res.mbs = bw / 1e6;
	}
	free(buf);
	return res;
}

/* ---- setup ---- */

static int
prepare_file(const struct dcfg *cfg)
{
	struct stat st;
	const size_t chunk = 1 << 20;
	int fd = open(cfg->path, O_RDWR | O_CREAT, 0600), r;
	char *buf;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) == 0 && (uint64_t)st.st_size >= cfg->size &&
	    (uint64_t)st.st_blocks * 512 >= cfg->size) {
		close(fd);
		return 0; /* written before, no holes */
	}
	buf = malloc(chunk);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	for (size_t i = 0; i < chunk; i++)
		buf[i] = (char)(i * 131 + 7);
	for (uint64_t off = 0; off < cfg->size; off += chunk) {
		size_t len = cfg->size - off < chunk ? (size_t)(cfg->size - off) : chunk;
		if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len) {
			int e = errno ? -errno : -EIO;
			free(buf);
			close(fd);
			return e;
		}
	}
	free(buf);
	/* A write-back error found here would leave the runs measuring a file whose pages
	 * never reached the disk. */
	r = fsync(fd) < 0 ? -errno : 0;
	if (close(fd) < 0 && !r)
		r = -errno;
	return r;
}

static bool
fio_available(const char *fio, char *why, size_t len)
{
	char cmd[512];

	if (!strcmp(fio, "off")) {
		snprintf(why, len, "--fio off");
		return false;
	}
	snprintf(cmd, sizeof(cmd), "%s --version >/dev/null 2>&1", fio);
	if (system(cmd) != 0) {
		snprintf(why, len,
			 "'%s --version' failed: install fio (Debian: apt-get install fio) or "
			 "give --fio PATH",
			 fio);
		return false;
	}
	return true;
}

static int
parse_size(const char *v, uint64_t *out)
{
	char *end;
	double x = *v >= '0' && *v <= '9' ? strtod(v, &end) : 0;
	uint64_t m = 1;

	if (!(x > 0) || !isfinite(x))
		return -1;
	switch (*end) {
	case 'k':
	case 'K':
		m = 1ULL << 10;
		end++;
		break;
	case 'm':
	case 'M':
		m = 1ULL << 20;
		end++;
		break;
	case 'g':
	case 'G':
		m = 1ULL << 30;
		end++;
		break;
	}
	/* 2^62 bytes at most: the conversion of a larger double is undefined */
	if (*end || x * (double)m > 0x1p62)
		return -1;
	*out = (uint64_t)(x * (double)m);
	return 0;
}

static const char disk_usage[] =
	"usage: keel-bench disk [options] [runtime options]\n"
	"  --path FILE        the file (created and filled when shorter than --size; default\n"
	"                     keel-bench-disk.dat; O_DIRECT needs a file system that has it,\n"
	"                     tmpfs may not)\n"
	"  --size SIZE        file size, K/M/G suffixes (default 1G)\n"
	"  --qd N             requests in flight: keel --file-qd, fio --iodepth, threads\n"
	"                     (default 32)\n"
	"  --direct on|off    O_DIRECT for every engine (default on)\n"
	"  --seconds S        per engine, workload and round (default 5)\n"
	"  --rounds N         rounds, engine order alternating (default 5; medians reported)\n"
	"  --fio PATH|off     the fio binary (default fio)\n"
	"  --pin on|off       run fio and the threads on the shard's CPU, as keel runs on one\n"
	"                     (default on)\n"
	"  --json             print JSON instead of a table\n"
	"keel sleeps in the kernel between completions (--idle-poll-us 0), as fio and the\n"
	"threads do: the same polling policy on every side unless --idle-poll-us is given.\n\n";

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* The median of @v[0..@n) (sorted in place; 0 when empty). */
static double
median(double *v, unsigned n)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Over the rounds: the medians of IOPS and MB/s, and the lowest and highest IOPS. */
struct rstat {
	double iops, mbs, lo, hi;
};

static void
round_stats(const struct result *rr, unsigned n, struct rstat *st)
{
	double iops[MAX_ROUNDS], mbs[MAX_ROUNDS];

	for (unsigned k = 0; k < n; k++) {
		iops[k] = rr[k].iops;
		mbs[k] = rr[k].mbs;
	}
	st->iops = median(iops, n); /* iops[] is sorted now */
	st->mbs = median(mbs, n);
	st->lo = n ? iops[0] : 0;
	st->hi = n ? iops[n - 1] : 0;
}

/* keel/@e over the rounds: the median of each round's ratio of IOPS, its lowest and highest
 * (rounds where @e moved nothing are left out; all 0 when none is left). */
struct rratio {
	double med, lo, hi;
};

static void
round_ratios(const struct result *keel, const struct result *e, unsigned n, struct rratio *q)
{
	double v[MAX_ROUNDS];
	unsigned m = 0;

	for (unsigned k = 0; k < n; k++)
		if (e[k].iops > 0)
			v[m++] = keel[k].iops / e[k].iops;
	q->med = median(v, m); /* v[] is sorted now */
	q->lo = m ? v[0] : 0;
	q->hi = m ? v[m - 1] : 0;
}

/* The transparent huge page mode ("always", "madvise", "never"; "unknown"): keel's and the
 * threads' buffers get huge pages unless "never", fio's only with "always". */
static const char *
thp_mode(void)
{
	static char mode[16];
	char line[128], *a, *b;
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");

	snprintf(mode, sizeof(mode), "unknown");
	if (f) {
		if (fgets(line, sizeof(line), f) && (a = strchr(line, '[')) &&
		    (b = strchr(a, ']')) && b - a - 1 < (long)sizeof(mode)) {
			*b = 0;
			snprintf(mode, sizeof(mode), "%s", a + 1);
		}
		fclose(f);
	}
	return mode;
}

/* @v as a JSON string: a path or a message with a quote or a backslash in it made the
 * output unreadable. */
static void
json_str(const char *v)
{
	putchar('"');
	for (const unsigned char *c = (const unsigned char *)v; *c; c++) {
		if (*c == '"' || *c == '\\')
			printf("\\%c", *c);
		else if (*c < 0x20)
			printf("\\u%04x", *c);
		else
			putchar(*c);
	}
	putchar('"');
}

static void
print_json(const struct dcfg *cfg, struct result r[NW][NE][MAX_ROUNDS], bool fio_ok,
	   const char *fio_why)
{
	struct utsname u;
	struct statfs sf;
	char cmd[2048];

	uname(&u);
	printf("{\n  \"mode\": \"disk\",\n  \"kernel\": \"%s\",\n  \"path\": ", u.release);
	json_str(cfg->path);
	printf(",\n");
	printf("  \"fs_magic\": \"0x%lx\",\n",
	       statfs(cfg->path, &sf) == 0 ? (unsigned long)sf.f_type : 0UL);
	printf("  \"size\": %llu,\n  \"qd\": %u,\n  \"direct\": %s,\n  \"seconds\": %.3f,\n"
	       "  \"rounds\": %u,\n  \"stat\": \"median\",\n"
	       "  \"ratio_stat\": \"median of the rounds' ratios\",\n  \"cpu\": %d,\n"
	       "  \"baselines_pinned\": %s,\n"
	       "  \"keel_idle_poll_us\": %u,\n"
	       "  \"thp\": \"%s\",\n",
	       (unsigned long long)cfg->size, cfg->qd, cfg->direct ? "true" : "false", cfg->seconds,
	       cfg->rounds, cfg->cpu, cfg->pin ? "true" : "false", cfg->idle_poll_us, thp_mode());
	if (fio_ok)
		printf("  \"fio_skipped\": null,\n");
	else {
		printf("  \"fio_skipped\": ");
		json_str(fio_why);
		printf(",\n");
	}
	for (int wl = 0; wl < NW; wl++) {
		struct rstat st[NE];
		memset(st, 0, sizeof(st));
		printf("  \"%s\": {\n    \"block\": %u,\n", wl_name[wl], wl_bs[wl]);
		fio_cmd(cfg, wl, cmd, sizeof(cmd));
		printf("    \"fio_cmd\": ");
		json_str(cmd);
		printf(",\n");
		for (int e = 0; e < NE; e++) {
			if (e == E_FIO && !fio_ok) {
				printf("    \"%s\": null,\n", eng_name[e]);
				continue;
			}
			round_stats(r[wl][e], cfg->rounds, &st[e]);
			printf("    \"%s\": {\"iops\": %.0f, \"mb_s\": %.1f, \"iops_min\": %.0f, "
			       "\"iops_max\": %.0f, \"iops_rounds\": [",
			       eng_name[e], st[e].iops, st[e].mbs, st[e].lo, st[e].hi);
			for (unsigned k = 0; k < cfg->rounds; k++)
				printf("%s%.0f", k ? ", " : "", r[wl][e][k].iops);
			printf("]},\n");
		}
		for (int e = E_KEEL + 1; e < NE; e++) {
			struct rratio q;

			if (e == E_FIO && !fio_ok) {
				printf("    \"keel_to_fio\": null,\n");
				continue;
			}
			round_ratios(r[wl][E_KEEL], r[wl][e], cfg->rounds, &q);
			if (q.med > 0)
				printf("    \"keel_to_%s\": %.3f,\n    \"keel_to_%s_min\": %.3f,\n"
				       "    \"keel_to_%s_max\": %.3f%s\n",
				       eng_name[e], q.med, eng_name[e], q.lo, eng_name[e], q.hi,
				       e + 1 < NE ? "," : "");
			else /* the baseline moved nothing in any round */
				printf("    \"keel_to_%s\": null%s\n", eng_name[e],
				       e + 1 < NE ? "," : "");
		}
		printf("  }%s\n", wl + 1 < NW ? "," : "");
	}
	printf("}\n");
}

static void
print_table(const struct dcfg *cfg, struct result r[NW][NE][MAX_ROUNDS], bool fio_ok,
	    const char *fio_why)
{
	char cmd[2048];

	printf("disk: %s, %llu bytes, qd %u, O_DIRECT %s, %.1f s x %u rounds per engine; keel's "
	       "shard on CPU %d (idle poll %u us), baselines %s\n",
	       cfg->path, (unsigned long long)cfg->size, cfg->qd, cfg->direct ? "on" : "off",
	       cfg->seconds, cfg->rounds, cfg->cpu, cfg->idle_poll_us,
	       cfg->pin ? "on that CPU too" : "unpinned");
	if (!fio_ok)
		printf("fio skipped: %s\n", fio_why);
	printf("buffers: keel's and the threads' on transparent huge pages where the kernel gives "
	       "them (THP \"%s\"); fio's %s\n",
	       thp_mode(),
	       strcmp(thp_mode(), "always")
		       ? "on 4 KiB pages (fio cannot ask for THP): its "
			 "write rows favour keel and the threads"
		       : "on huge pages only where its malloc'd buffer is large and "
			 "aligned enough (THP \"always\"): its write rows may favour "
			 "keel and the threads");
	if (cfg->rounds < 5)
		printf("(%u round%s: fewer than the 5 a comparison needs; --rounds 5 or more)\n",
		       cfg->rounds, cfg->rounds == 1 ? "" : "s");
	printf("%-14s %-8s %12s %25s %10s  %s\n", "workload", "engine", "IOPS median", "(min-max)",
	       "MB/s", "keel/x: median of the rounds' ratios (min-max)");
	for (int wl = 0; wl < NW; wl++) {
		struct rstat st[NE];
		memset(st, 0, sizeof(st));
		for (int e = 0; e < NE; e++)
			round_stats(r[wl][e], cfg->rounds, &st[e]);
		for (int e = 0; e < NE; e++) {
			char range[64];
			if (e == E_FIO && !fio_ok)
				continue;
			snprintf(range, sizeof(range), "(%.0f-%.0f)", st[e].lo, st[e].hi);
			printf("%-14s %-8s %12.0f %25s %10.1f", wl_name[wl], eng_name[e],
			       st[e].iops, range, st[e].mbs);
			if (e != E_KEEL) {
				struct rratio q;

				round_ratios(r[wl][E_KEEL], r[wl][e], cfg->rounds, &q);
				if (q.med > 0)
					printf("  %.2fx (%.2f-%.2f)", q.med, q.lo, q.hi);
			}
			printf("\n");
		}
	}
	if (fio_ok) {
		for (int wl = 0; wl < NW; wl++) {
			fio_cmd(cfg, wl, cmd, sizeof(cmd));
			printf("fio %s: %s\n", wl_name[wl], cmd);
		}
	}
}

int
bench_disk(int argc, char **argv)
{
	struct keel_opts o;
	struct dcfg cfg = { .path = "keel-bench-disk.dat",
			    .size = 1ULL << 30,
			    .qd = 32,
			    .direct = true,
			    .seconds = 5,
			    .rounds = 5,
			    .fio = "fio",
			    .pin = true,
			    .cpu = -1 };
	static struct result r[NW][NE][MAX_ROUNDS];
	char fio_why[256] = "";
	bool fio_ok;
	int err;

	keel_opts_init(&o);
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	/* The same polling policy on both sides: fio's io_uring engine and the threads block for
	 * completions, so keel sleeps in the kernel too unless --idle-poll-us says otherwise. */
	o.idle_poll_us = 0;
	keel_opts_parse_or_exit(&o, &argc, argv, disk_usage);
	cfg.idle_poll_us = o.idle_poll_us;
	if (o.idle_poll_us)
		fprintf(stderr,
			"keel-bench disk: keel busy-polls %u us before sleeping and fio and the "
			"threads do not: the ratios are not an equal comparison (drop "
			"--idle-poll-us)\n",
			o.idle_poll_us);
	for (int i = 1; i < argc; i++) {
		const char *v = NULL;
		int m;
		if ((m = bench_opt(argc, argv, &i, "--path", &v)) != 0) {
			if (m < 0)
				goto missing;
			cfg.path = v;
		} else if ((m = bench_opt(argc, argv, &i, "--size", &v)) != 0) {
			if (m < 0 || parse_size(v, &cfg.size) < 0 || cfg.size < (1 << 20)) {
				fprintf(stderr, "keel-bench disk: --size: expected 1M or more\n");
				return 2;
			}
		} else if ((m = bench_opt(argc, argv, &i, "--qd", &v)) != 0) {
			uint64_t x;
			if (m < 0 || !bench_parse_u64(v, 1, MAX_QD, &x)) {
				fprintf(stderr, "keel-bench disk: --qd: expected 1..%d\n", MAX_QD);
				return 2;
			}
			cfg.qd = (unsigned)x;
		} else if ((m = bench_opt(argc, argv, &i, "--direct", &v)) != 0) {
			if (m < 0 || (strcmp(v, "on") && strcmp(v, "off"))) {
				fprintf(stderr, "keel-bench disk: --direct: expected on or off\n");
				return 2;
			}
			cfg.direct = !strcmp(v, "on");
		} else if ((m = bench_opt(argc, argv, &i, "--seconds", &v)) != 0) {
			double x;
			if (m < 0 || !bench_parse_double(v, 0.05, 3600, &x)) {
				fprintf(stderr,
					"keel-bench disk: --seconds: expected 0.05..3600\n");
				return 2;
			}
			cfg.seconds = x;
		} else if ((m = bench_opt(argc, argv, &i, "--rounds", &v)) != 0) {
			uint64_t x;
			if (m < 0 || !bench_parse_u64(v, 1, MAX_ROUNDS, &x)) {
				fprintf(stderr, "keel-bench disk: --rounds: expected 1..%d\n",
					MAX_ROUNDS);
				return 2;
			}
			cfg.rounds = (unsigned)x;
		} else if ((m = bench_opt(argc, argv, &i, "--fio", &v)) != 0) {
			if (m < 0)
				goto missing;
			cfg.fio = v;
		} else if ((m = bench_opt(argc, argv, &i, "--pin", &v)) != 0) {
			if (m < 0 || (strcmp(v, "on") && strcmp(v, "off"))) {
				fprintf(stderr, "keel-bench disk: --pin: expected on or off\n");
				return 2;
			}
			cfg.pin = !strcmp(v, "on");
		} else if (!strcmp(argv[i], "--json")) {
			cfg.json = true;
		} else {
			fprintf(stderr, "keel-bench disk: unknown option '%s' (see --help)\n",
				argv[i]);
			return 2;
		}
		continue;
missing:
		fprintf(stderr, "keel-bench disk: %s needs a value\n", argv[i]);
		return 2;
	}
	err = prepare_file(&cfg);
	if (err < 0) {
		fprintf(stderr, "keel-bench disk: preparing %s (%llu bytes) failed: %s\n", cfg.path,
			(unsigned long long)cfg.size, strerror(-err));
		return 1;
	}
	if (cfg.direct) {
		int fd = open(cfg.path, O_RDONLY | O_DIRECT);
		if (fd < 0) {
			fprintf(stderr,
				"keel-bench disk: %s cannot be opened with O_DIRECT (%s): put --path "
				"on a file system that supports it (ext4, xfs), or use --direct off\n",
				cfg.path, strerror(errno));
			return 1;
		}
		close(fd);
	}
	fio_ok = fio_available(cfg.fio, fio_why, sizeof(fio_why));
	for (unsigned k = 0; k < cfg.rounds; k++) {
		for (int wl = 0; wl < NW; wl++) {
			for (int j = 0; j < NE; j++) {
				int e = (k % 2) ? NE - 1 - j : j;
				uint64_t seed = 0x1234567ULL * (k + 1) + (uint64_t)wl;
				if (e == E_KEEL)
					r[wl][e][k] = run_keel(&cfg, &o, wl, seed);
				else if (e == E_FIO && fio_ok)
					r[wl][e][k] = run_fio(&cfg, wl);
				else if (e == E_THREADS)
					r[wl][e][k] = run_threads(&cfg, wl, seed);
				if (r[wl][e][k].err < 0)
					return 1;
			}
		}
	}
	if (cfg.json)
		print_json(&cfg, r, fio_ok, fio_why);
	else
		print_table(&cfg, r, fio_ok, fio_why);
	return 0;
}

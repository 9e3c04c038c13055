// SPDX-License-Identifier: MIT
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "bench.h"

uint64_t
bench_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void
bench_window_open(const struct bench_cfg *cfg, pthread_barrier_t *bar, uint64_t *t_start,
		  uint64_t *t_end)
{
	pthread_barrier_wait(bar);
	*t_start = bench_now_ns() + cfg->warmup_ns;
	*t_end = *t_start + cfg->seconds_ns;
	if (cfg->on_window)
		cfg->on_window(cfg->window_arg, *t_start, *t_end);
	pthread_barrier_wait(bar);
}

bool
bench_window_done(const struct bench_cfg *cfg, bool wait)
{
	return !cfg->on_window_end || cfg->on_window_end(cfg->window_arg, wait);
}

static uint64_t
thread_cpu_ns(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) < 0)
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void
bench_tcpu_tick(struct bench_tcpu *c, uint64_t now, uint64_t t_start)
{
	if (!c->started && now >= t_start) {
		c->start = thread_cpu_ns();
		c->wall0 = bench_now_ns();
		c->started = true;
	}
}

void
bench_tcpu_stop(struct bench_tcpu *c)
{
	if (c->started && !c->stopped) {
		c->end = thread_cpu_ns();
		c->wall1 = bench_now_ns();
		c->stopped = true;
	}
}

/* The share of a core; 0 when not measured (see bench_tcpu_max). */
static double
bench_tcpu_util(const struct bench_tcpu *c, uint64_t window_ns)
{
	double u;

	if (!c->stopped || c->wall1 - c->wall0 < window_ns / 2 || c->end < c->start)
		return 0;
	u = (double)(c->end - c->start) / (double)(c->wall1 - c->wall0);
	return u < 1 ? u : 1;
}

void
bench_tcpu_max(double *max, const struct bench_tcpu *c, uint64_t window_ns)
{
	double u = bench_tcpu_util(c, window_ns);

	if (u > *max)
		*max = u;
}

int
bench_pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

uint64_t
bench_percentile(uint64_t *v, size_t n, double p)
{
	size_t i;

	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), cmp_u64);
	/* Nearest rank, as bench_hist_pct: the smallest value with p % at or below it. */
	i = (size_t)bench_rank(p, n) - 1;
	return v[i < n ? i : n - 1];
}

bool
bench_stalled(uint64_t last_win_ns, uint64_t t_start, uint64_t t_end)
{
	return last_win_ns < t_start + (t_end - t_start) / 2;
}

uint64_t
bench_rank(double p, uint64_t n)
{
	uint64_t pm, rank;

	if (n == 0)
		return 0;
	if (!(p > 0))
		return 1;
	pm = p >= 100 ? 100000 : (uint64_t)llround(p * 1000); /* thousandths of a percent */
	rank = (pm * n + 99999) / 100000;
	return rank < 1 ? 1 : rank > n ? n : rank;
}

void
bench_reservoir_add(struct bench_reservoir *r, uint64_t x)
{
	uint64_t j;

	r->seen++;
	if (r->n < r->cap) {
		r->v[r->n++] = x;
		return;
	}
	if (!r->rng)
		r->rng = 0x9e3779b97f4a7c15ull;
	r->rng ^= r->rng << 13; /* xorshift64 */
	r->rng ^= r->rng >> 7;
	r->rng ^= r->rng << 17;
	j = r->rng % r->seen;
	if (j < r->cap)
		r->v[j] = x;
}

bool
bench_parse_u64(const char *v, uint64_t lo, uint64_t hi, uint64_t *out)
{
	unsigned long long x;
	char *end;

	if (!v || *v < '0' || *v > '9')
		return false;
	errno = 0;
	x = strtoull(v, &end, 10);
	if (*end || errno || x < lo || x > hi)
		return false;
	*out = x;
	return true;
}

bool
bench_parse_double(const char *v, double lo, double hi, double *out)
{
	char *end;
	double x;

	if (!v || !*v)
		return false;
	x = strtod(v, &end);
	if (*end || !isfinite(x) || !(x >= lo && x <= hi))
		return false;
	*out = x;
	return true;
}

int
bench_opt(int argc, char **argv, int *i, const char *name, const char **val)
{
	size_t len = strlen(name);
	const char *a = argv[*i];

	if (strncmp(a, name, len) != 0)
		return 0;
	if (a[len] == '=') {
		*val = a + len + 1;
		return 1;
	}
	if (a[len] != 0)
		return 0;
	if (*i + 1 >= argc)
		return -1;
	*val = argv[++*i];
	return 1;
}

int
bench_cpu_for(const struct bench_cfg *cfg, unsigned k)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned n = 0, want;

	if (!cfg->cpus_given)
		return (int)(k % (unsigned)(ncpu > 0 ? ncpu : 1));
	for (unsigned c = 0; c < KEEL_MAX_CPUS; c++)
		n += keel_cpuset_has(&cfg->cpus, c);
	want = n ? k % n : 0;
	for (unsigned c = 0; c < KEEL_MAX_CPUS; c++)
		if (keel_cpuset_has(&cfg->cpus, c) && want-- == 0)
			return (int)c;
	return 0;
}

int
bench_port_free(const struct sockaddr_in *addr, uint16_t port, int type)
{
	struct sockaddr_in a = *addr;
	int one = 1, r = 0;
	int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	a.sin_port = htons(port);
	if ((type == SOCK_STREAM && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one))) ||
	    bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		r = -errno;
	close(fd);
	if (r == -EADDRINUSE)
		fprintf(stderr,
			"keel-bench: %s port %u is in use by another program: its share of the "
			"traffic would go uncounted (pick another --port, or stop it)\n",
			type == SOCK_STREAM ? "TCP" : "UDP", (unsigned)port);
	return r;
}

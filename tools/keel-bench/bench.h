/* SPDX-License-Identifier: MIT */
/* keel-bench: one tool, one mode per file. Shared helpers for the modes. */
#ifndef KEEL_BENCH_H
#define KEEL_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* A mode: argv[0] is the mode name; keel's runtime options are parsed by the mode. Returns
 * the process exit status (0 ok, 1 the run failed, 2 bad options). */
typedef int (*bench_mode_fn)(int argc, char **argv);

int bench_xshard(int argc, char **argv);
int bench_alloc(int argc, char **argv);
int bench_disk(int argc, char **argv);
/* pingpong, throughput, stream, connections, serve (net.c) */
int bench_net(int argc, char **argv);

/* Monotonic nanoseconds. */
uint64_t bench_now_ns(void);

/* Pin the calling thread to @cpu. Returns 0 or -errno. */
int bench_pin(int cpu);

/* Percentile @p (0..100) of @n samples (sorted in place). */
uint64_t bench_percentile(uint64_t *v, size_t n, double p);

/* How long a client's connect may take (both clients): a server that never answers fails
 * the run, naming it, instead of hanging it. */
#define BENCH_CONNECT_MS 10000u

/* Up to @cap samples of a run that may give more (v: @cap entries the caller allocates):
 * past the cap each new sample replaces a kept one with probability cap/seen (reservoir
 * sampling, a fixed seed), so the percentiles describe the whole run, not its first part. */
struct bench_reservoir {
	uint64_t *v;
	size_t n, cap;
	uint64_t seen, rng;
};
void bench_reservoir_add(struct bench_reservoir *r, uint64_t x);

/* The nearest rank of percentile @p (0..100, to 0.001) among @n samples: the smallest k with
 * k >= p % of n, at least 1 (0 for no samples). In integers, so 99.9 % of 21 M samples is
 * not one off for a rounding of the product. */
uint64_t bench_rank(double p, uint64_t n);

/* Parse "--name value" / "--name=value" options that keel's runtime does not own.
 * Returns 1 when argv[*i] is @name (advancing *i past its value and storing it in *val),
 * 0 when it is not, -1 when its value is missing. */
int bench_opt(int argc, char **argv, int *i, const char *name, const char **val);
/* An option's value @v as a decimal count in [@lo, @hi]: digits only (no sign, space or
 * suffix: strtoull reads "-1" as 2^64 - 1). True when it is. */
bool bench_parse_u64(const char *v, uint64_t lo, uint64_t hi, uint64_t *out);
/* ... as a finite number in [@lo, @hi] (NaN passes no comparison, so it is refused). */
bool bench_parse_double(const char *v, double lo, double hi, double *out);

#endif

// SPDX-License-Identifier: MIT
/* keel-bench wire protocol (tools/keel-bench/proto.c): the client's verification and the
 * latency histogram, tested directly since no honest server gets them wrong. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "backend.h"
#include "bench.h"

static struct bench_cfg
cfg(enum bench_mode mode, uint32_t size)
{
	struct bench_cfg c;

	memset(&c, 0, sizeof(c));
	c.mode = mode;
	c.size = size;
	return c;
}

Test(tools_bench_proto, framed_stream_starts_with_big_endian_length)
{
	struct bench_cfg c = cfg(BENCH_PINGPONG, 0x01020304 & 0xffff);
	struct bench_pattern p;

	cr_assert_eq(bench_pattern_init(&p, &c, 4096), 0);
	cr_assert_eq(p.unit, c.size + 4);
	cr_assert_eq(p.period % p.unit, 0);
	cr_assert_eq(p.pat[0], 0);
	cr_assert_eq(p.pat[1], 0);
	cr_assert_eq(p.pat[2], (c.size >> 8) & 0xff);
	cr_assert_eq(p.pat[3], c.size & 0xff);
	cr_assert_eq(memcmp(p.pat + p.period, p.pat, 4096), 0, "the tail repeats the start");
	bench_pattern_fini(&p);
}

Test(tools_bench_proto, check_accepts_the_stream_and_names_a_wrong_byte)
{
	struct bench_cfg c = cfg(BENCH_THROUGHPUT, 64);
	struct bench_pattern p;
	uint8_t buf[1000];
	char why[200];
	uint64_t off = 5 * 68 + 10; /* inside message 5 */

	cr_assert_eq(bench_pattern_init(&p, &c, sizeof(buf)), 0);
	memcpy(buf, p.pat + off % p.period, sizeof(buf));
	cr_assert_eq(bench_pattern_check(&p, buf, sizeof(buf), off, why, sizeof(why)), 0);

	buf[20] ^= 1; /* message 5, payload byte 10 + 20 - 4 = 26 */
	cr_assert_eq(bench_pattern_check(&p, buf, sizeof(buf), off, why, sizeof(why)), -EPROTO);
	cr_assert(strstr(why, "message 5: payload byte 26"), "%s", why);
	buf[20] ^= 1;

	buf[68 - 10 + 1] ^= 0x80; /* message 6, length byte 1 */
	cr_assert_eq(bench_pattern_check(&p, buf, sizeof(buf), off, why, sizeof(why)), -EPROTO);
	cr_assert(strstr(why, "message 6: length field byte 1"), "%s", why);
	bench_pattern_fini(&p);
}

Test(tools_bench_proto, a_dropped_message_does_not_verify)
{
	struct bench_cfg c = cfg(BENCH_PINGPONG, 64);
	struct bench_pattern p;
	char why[200];

	cr_assert_eq(bench_pattern_init(&p, &c, 4096), 0);
	/* Message 1 where message 0 was expected. */
	cr_assert_eq(bench_pattern_check(&p, p.pat + p.unit, p.unit, 0, why, sizeof(why)), -EPROTO);
	bench_pattern_fini(&p);
}

/* A message longer than 64 KiB (stream 1 MiB, framed messages of 200,000 bytes) with two of
 * its 64 KiB blocks swapped, or one dropped and another doubled, does not verify: the
 * pattern's byte j repeated every 65,536 bytes of j, so such a stream passed, and 64 KiB is
 * keel's bulk receive buffer: two of them echoed out of order counted as echoed. */
static void
blocks_moved_do_not_verify(enum bench_mode mode, uint32_t size)
{
	struct bench_cfg c = cfg(mode, size);
	const size_t blk = 64u << 10, n = 3 * blk;
	uint64_t off = mode == BENCH_STREAM ? 0 : BENCH_HDR; /* the payload's first byte */
	struct bench_pattern p;
	uint8_t *buf = malloc(n);
	char why[200];

	cr_assert_not_null(buf);
	cr_assert_eq(bench_pattern_init(&p, &c, n), 0);
	memcpy(buf, p.pat + off, n);
	cr_assert_eq(bench_pattern_check(&p, buf, n, off, why, sizeof(why)), 0, "%s", why);
	memcpy(buf, p.pat + off + blk, blk); /* blocks 1, 0, 2 */
	memcpy(buf + blk, p.pat + off, blk);
	cr_assert_eq(bench_pattern_check(&p, buf, n, off, why, sizeof(why)), -EPROTO,
		     "two 64 KiB blocks of a %u-byte message swapped verified", size);
	memcpy(buf, p.pat + off, blk); /* blocks 0, 0, 2: block 1 dropped, block 0 doubled */
	cr_assert_eq(bench_pattern_check(&p, buf, n, off, why, sizeof(why)), -EPROTO,
		     "a 64 KiB block of a %u-byte message doubled verified", size);
	bench_pattern_fini(&p);
	free(buf);
}

Test(tools_bench_proto, blocks_of_64_kib_moved_in_a_long_message_do_not_verify)
{
	blocks_moved_do_not_verify(BENCH_STREAM, 1u << 20);
	blocks_moved_do_not_verify(BENCH_THROUGHPUT, 200000);
}

Test(tools_bench_proto, histogram_percentiles_are_within_a_bucket)
{
	struct bench_hist *h = calloc(1, sizeof(*h));

	cr_assert_not_null(h);
	for (uint64_t v = 1; v <= 100000; v++)
		bench_hist_add(h, v * 100); /* 100 ns .. 10 ms, uniform */
	cr_assert_eq(h->count, 100000);
	cr_assert_eq(h->max_ns, 10000000);
	cr_assert_float_eq((double)bench_hist_pct(h, 50), 5e6, 5e6 * 0.04);
	cr_assert_float_eq((double)bench_hist_pct(h, 99), 9.9e6, 9.9e6 * 0.04);
	cr_assert_leq(bench_hist_pct(h, 100), h->max_ns);
	cr_assert_eq(bench_hist_pct(h, 0) <= bench_hist_pct(h, 50), true);
	free(h);
}

/* xshard's samples past its cap: a run longer than the cap kept only its first 4 Mi, so the
 * percentiles said nothing of the rest. A reservoir of 1,000 of 100,000 rising values now
 * has its median near the run's (50,000), where the first 1,000 had it at 500. */
Test(tools_bench_proto, a_reservoir_keeps_samples_from_the_whole_run)
{
	static uint64_t kept[1000];
	struct bench_reservoir r = { .v = kept, .cap = 1000 };
	uint64_t med;

	for (uint64_t x = 0; x < 100000; x++)
		bench_reservoir_add(&r, x);
	cr_assert_eq(r.n, 1000);
	cr_assert_eq(r.seen, 100000);
	med = bench_percentile(kept, r.n, 50);
	cr_assert(med > 45000 && med < 55000, "median of the kept samples %llu",
		  (unsigned long long)med);
	cr_assert_gt(bench_percentile(kept, r.n, 99), 95000);
}

/* Nearest rank: p99.9 of 1,600 samples is the 1,599th (ceil(1598.4)); the 1,598th would
 * leave only 99.875 % of the samples at or below it. */
Test(tools_bench_proto, histogram_percentiles_take_the_nearest_rank)
{
	struct bench_hist *h = calloc(1, sizeof(*h));

	cr_assert_not_null(h);
	for (int i = 0; i < 1598; i++)
		bench_hist_add(h, 1000);
	bench_hist_add(h, 1000000);
	bench_hist_add(h, 1000000);
	cr_assert_gt(bench_hist_pct(h, 99.9), 500000, "p99.9 is %llu ns",
		     (unsigned long long)bench_hist_pct(h, 99.9));
	cr_assert_lt(bench_hist_pct(h, 99.8), 500000);
	free(h);

	/* p99.9 of 1,000 is the 999th, though 99.9 / 100 x 1000 is 999.0000000000001. */
	h = calloc(1, sizeof(*h));
	cr_assert_not_null(h);
	for (int i = 0; i < 999; i++)
		bench_hist_add(h, 1000);
	bench_hist_add(h, 1000000);
	cr_assert_lt(bench_hist_pct(h, 99.9), 500000, "p99.9 of 1,000 took the 1,000th");
	free(h);

	/* The exact one (keel-bench xshard) takes the same rank: the median of 1..4 is 2. */
	uint64_t v[] = { 4, 3, 2, 1 };
	cr_assert_eq(bench_percentile(v, 4, 50), 2);
	cr_assert_eq(bench_percentile(v, 4, 100), 4);
	cr_assert_eq(bench_percentile(v, 4, 0), 1);
	{
		uint64_t w[1000];
		for (int i = 0; i < 1000; i++)
			w[i] = (uint64_t)i + 1;
		cr_assert_eq(bench_percentile(w, 1000, 99.9), 999);
	}
}

/* The rank in integers: the old ceil(p x n / 100 - 1e-9) took rank 20,979,001 for p99.9 of
 * 21 M samples, whose product rounds above the exact 20,979,000. */
Test(tools_bench_proto, percentile_ranks_are_exact_for_large_counts)
{
	cr_assert_eq(bench_rank(99.9, 21000000), 20979000);
	cr_assert_eq(bench_rank(99.9, 1000), 999);
	cr_assert_eq(bench_rank(99.9, 1001), 1000); /* 999.999: the next one up */
	cr_assert_eq(bench_rank(50, 4), 2);
	cr_assert_eq(bench_rank(50, 5), 3);
	cr_assert_eq(bench_rank(0, 5), 1);
	cr_assert_eq(bench_rank(100, 5), 5);
	cr_assert_eq(bench_rank(99.99, 10000), 9999);
	cr_assert_eq(bench_rank(50, 0), 0);
	for (uint64_t n = 20000000; n < 21000000; n += 997)
		for (unsigned k = 0; k < 3; k++) {
			static const uint64_t pm[] = { 50000, 99000, 99900 };
			uint64_t want = (pm[k] * n + 99999) / 100000;

			cr_assert_eq(bench_rank((double)pm[k] / 1000, n), want, "p%.1f of %llu",
				     (double)pm[k] / 1000, (unsigned long long)n);
		}
}

/* A receive longer than the pattern's contiguous tail (the keel client's receive buffers can
 * be 1 MiB, its tail 256 KiB) is checked in pieces, not refused with an unwritten reason. */
Test(tools_bench_proto, check_takes_receives_longer_than_the_pattern_tail)
{
	struct bench_cfg c = cfg(BENCH_STREAM, 65536);
	struct bench_pattern p;
	size_t n = 3 * 4096 + 100;
	uint8_t *buf = malloc(n);
	uint64_t off = 12345;
	char why[200] = "";

	cr_assert_not_null(buf);
	cr_assert_eq(bench_pattern_init(&p, &c, 4096), 0);
	for (size_t i = 0; i < n; i++)
		buf[i] = p.pat[(off + i) % p.period];
	cr_assert_eq(bench_pattern_check(&p, buf, n, off, why, sizeof(why)), 0, "%s", why);
	buf[2 * 4096 + 7] ^= 0x10; /* in the third piece */
	cr_assert_eq(bench_pattern_check(&p, buf, n, off, why, sizeof(why)), -EPROTO);
	cr_assert(strstr(why, "payload byte"), "%s", why);
	cr_assert(strstr(why, "stream offset 20544"), "%s", why); /* 12345 + 8199 */
	bench_pattern_fini(&p);
	free(buf);
}

/* Thread slots map onto --cpuset in order and wrap; without it, slot k is CPU k (mod the
 * CPUs online). Server threads take slots 0.., client threads the ones after. */
Test(tools_bench_proto, cpu_slots_follow_the_cpuset_in_order_and_wrap)
{
	struct bench_cfg c = cfg(BENCH_PINGPONG, 64);
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	keel_cpuset_add(&c.cpus, 9);
	keel_cpuset_add(&c.cpus, 4);
	keel_cpuset_add(&c.cpus, 5);
	c.cpus_given = true;
	cr_assert_eq(bench_cpu_for(&c, 0), 4);
	cr_assert_eq(bench_cpu_for(&c, 1), 5);
	cr_assert_eq(bench_cpu_for(&c, 2), 9);
	cr_assert_eq(bench_cpu_for(&c, 3), 4);
	c.cpus_given = false;
	cr_assert_eq(bench_cpu_for(&c, 0), 0);
	cr_assert_eq(bench_cpu_for(&c, (unsigned)n), 0);
	cr_assert_eq(bench_cpu_for(&c, 1), n > 1 ? 1 : 0);
}

// SPDX-License-Identifier: MIT
/*
 * keel-bench wire protocol, shared by every backend's client.
 *
 * Framed modes (pingpong, throughput, connections): a message is
 *     uint32 length, big-endian, equal to --size | --size payload bytes
 * Stream: unframed chunks of --size payload bytes.
 * Payload byte j of message (or chunk) number s on a connection is
 *     (uint8_t)(29 * (s % K) + 131 * j + (j >> 8) + 97 * (j >> 16) + 1)
 * with K = clamp(1 MiB / message bytes, 2, 61), so the byte stream a connection sends is
 * periodic with a period of K messages. The server echoes bytes back unchanged and parses
 * nothing; the client compares every echoed byte with the stream it sent (length field and
 * payload alike). A dropped, duplicated or altered byte shows unless whole multiples of K
 * messages vanish together. Within a message, a piece moved, dropped or doubled shows when it
 * moves by other than a multiple of 256 bytes (the 131 * j term), or by a multiple of 4 KiB
 * within 1 MiB (the j >> 8 and j >> 16 terms: before the latter, 64 KiB blocks were equal).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "backend.h"
#include "bench.h"

uint64_t
bench_unit(const struct bench_cfg *cfg)
{
	return (uint64_t)cfg->size +
	       (cfg->mode == BENCH_STREAM || cfg->mode == BENCH_UDP ? 0 : BENCH_HDR);
}

int
bench_pattern_init(struct bench_pattern *p, const struct bench_cfg *cfg, size_t extra)
{
	uint64_t unit = bench_unit(cfg), k = (1u << 20) / unit;
	uint32_t hdr = cfg->mode == BENCH_STREAM ? 0 : BENCH_HDR;

	if (k < 2)
		k = 2;
	if (k > 61)
		k = 61;
	p->unit = unit;
	p->hdr = hdr;
	p->period = k * unit;
	p->extra = extra;
	p->pat = malloc(p->period + extra);
	if (!p->pat)
		return -ENOMEM;
	for (uint64_t m = 0; m < k; m++) {
		uint8_t *msg = p->pat + m * unit;
		if (hdr) {
			msg[0] = (uint8_t)(cfg->size >> 24);
			msg[1] = (uint8_t)(cfg->size >> 16);
			msg[2] = (uint8_t)(cfg->size >> 8);
			msg[3] = (uint8_t)cfg->size;
		}
		/* (j >> 16): each 64 KiB block of a longer message differs, so one moved,
		 * dropped or doubled within it does not verify (97 is odd: 256 blocks differ). */
		for (uint32_t j = 0; j < cfg->size; j++)
			msg[hdr + j] = (uint8_t)(29 * m + 131 * j + (j >> 8) + 97 * (j >> 16) + 1);
	}
	for (size_t i = 0; i < extra; i++)
		p->pat[p->period + i] = p->pat[i % p->period];
	return 0;
}

void
bench_pattern_fini(struct bench_pattern *p)
{
	free(p->pat);
	p->pat = NULL;
}

int
bench_pattern_check(const struct bench_pattern *p, const uint8_t *buf, size_t n, uint64_t off,
		    char *why, size_t whylen)
{
	const uint8_t *want;
	uint64_t at, in;
	size_t i;

	/* The pattern is contiguous for @extra bytes from any offset: a longer receive (a
	 * receive buffer larger than the client's largest send) is checked in pieces. */
	while (n > p->extra) {
		int r = bench_pattern_check(p, buf, p->extra, off, why, whylen);
		if (r < 0)
			return r;
		buf += p->extra;
		off += p->extra;
		n -= p->extra;
	}
	want = p->pat + off % p->period;
	if (memcmp(buf, want, n) == 0)
		return 0;
	for (i = 0; buf[i] == want[i]; i++)
		;
	at = off + i;
	in = at % p->unit;
	/* The pattern knows whether it is framed: a framed message starts with its length. */
	if (p->hdr && in < BENCH_HDR)
		snprintf(
			why, whylen,
			"message %llu: length field byte %llu is 0x%02x, expected 0x%02x (stream offset "
			"%llu)",
			(unsigned long long)(at / p->unit), (unsigned long long)in, buf[i], want[i],
			(unsigned long long)at);
	else
		snprintf(
			why, whylen,
			"message %llu: payload byte %llu is 0x%02x, expected 0x%02x (stream offset "
			"%llu)",
			(unsigned long long)(at / p->unit), (unsigned long long)(in - p->hdr),
			buf[i], want[i], (unsigned long long)at);
	return -EPROTO;
}

/* Bucket index: values below 64 exactly; above, 32 buckets per power of two. */
static unsigned
hist_idx(uint64_t v)
{
	unsigned msb;

	if (v < 64)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	return 64u + (msb - 6u) * 32u + (unsigned)((v >> (msb - 5u)) & 31u);
}

/* The middle of bucket @i. */
static uint64_t
hist_mid(unsigned i)
{
	unsigned msb, sub;
	uint64_t lo, width;

	if (i < 64)
		return i;
	msb = (i - 64u) / 32u + 6u;
	sub = (i - 64u) % 32u;
	lo = (uint64_t)(32u + sub) << (msb - 5u);
	width = 1ULL << (msb - 5u);
	return lo + width / 2;
}

void
bench_hist_add(struct bench_hist *h, uint64_t ns)
{
	h->b[hist_idx(ns)]++;
	h->count++;
	if (ns > h->max_ns)
		h->max_ns = ns;
}

void
bench_hist_merge(struct bench_hist *into, const struct bench_hist *from)
{
	for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++)
		into->b[i] += from->b[i];
	into->count += from->count;
	if (from->max_ns > into->max_ns)
		into->max_ns = from->max_ns;
}

uint64_t
bench_hist_pct(const struct bench_hist *h, double p)
{
	uint64_t rank, seen = 0, v;

	if (h->count == 0)
		return 0;
	/* Nearest rank: the smallest value with at least p % of the samples at or below it. */
	rank = bench_rank(p, h->count);
	for (unsigned i = 0; i < BENCH_HIST_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= rank) {
			v = hist_mid(i);
			return v > h->max_ns ? h->max_ns : v;
		}
	}
	return h->max_ns;
}

uint64_t
bench_thread_cpu_ns(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_THREAD, &ru) < 0)
		return 0;
	return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) * 1000000000ULL +
	       ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000ULL;
}

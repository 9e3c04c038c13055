// SPDX-License-Identifier: MIT
/*
 * keel-echo --forward's code under ThreadSanitizer, as a plain program (Criterion's runner
 * is not instrumented and forks): received frames exported to the other shard and back
 * while the home shard keeps receiving. A reference count changed by two shards shows as
 * a data race; every byte is checked and every buffer must be home at the end.
 * Exits 0 when every check held, 1 otherwise. KEEL_TEST_SCALE=small shrinks it.
 *
 * Built a second time as trace_forward, against the allocator with KEEL_BUF_TRACE
 * (FWD_EXPECT_TRACE), at net_forward's full size (16 connections x 16 MiB, frames of
 * 1 B..256 KiB): then every get and put is checked for the right shard, and any report
 * fails the run.
 */
#include <keel/alloc_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fwd_drive.h"

#ifdef FWD_EXPECT_TRACE
#define PROG "trace_forward"
#else
#define PROG "tsan_forward"
#endif

#ifdef FWD_EXPECT_TRACE
static void
quiet(int level, const char *msg, void *arg)
{
	(void)level;
	(void)msg;
	(void)arg;
}
#endif

int
main(void)
{
	const char *scale = getenv("KEEL_TEST_SCALE");
	struct fwd_cfg cfg = {
		.shards = 2,
		.conns = 4,
		.bytes = 4ull << 20,
		.max_frame = 64u << 10,
		.window = 256u << 10,
		.buf_count = 512,
		.buf_size = 16384,
		.seconds = 240,
	};
	struct fwd_result res;
	uint64_t in = 0, relayed = 0, exports = 0;

#ifdef FWD_EXPECT_TRACE
	/* Not slowed by a sanitizer: the full stress of net_forward (16 x 16 MiB). */
	cfg.conns = 16;
	cfg.bytes = 16ull << 20;
	cfg.max_frame = 256u << 10;
	cfg.window = 1u << 20;
	cfg.buf_count = 2048;
#endif
	if (scale && !strcmp(scale, "small"))
		cfg.bytes = 1ull << 20;
#ifdef FWD_EXPECT_TRACE
	{
		/* Prove the traced allocator is the one linked: a planted double put is
		 * reported (and skipped) there; the plain one would abort. */
		struct keel_alloc_config c;
		struct keel_alloc_stats st;
		struct keel_alloc *a;
		struct keel_slice s, stale;
		memset(&c, 0, sizeof(c));
		c.memory = 8ull << 20;
		c.region_size = 4ull << 20;
		c.cpu = -1;
		keel_alloc_log_set(quiet, NULL);
		if (keel_alloc_create(&c, &a) < 0 || keel_buf_alloc(a, 64, &s) < 0)
			return 1;
		keel_alloc_bind_thread(a);
		stale = s;
		keel_slice_put(&s);
		keel_slice_put(&stale);
		keel_alloc_stats(a, &st);
		keel_alloc_bind_thread(NULL);
		keel_alloc_destroy(a);
		keel_alloc_log_set(NULL, NULL);
		if (st.trace_errors != 1) {
			fprintf(stderr, "%s: not linked against the traced allocator\n", PROG);
			return 1;
		}
	}
#endif
	if (fwd_run(&cfg, &res) < 0) {
		fprintf(stderr, "%s: %s\n", PROG, res.err);
		return 1;
	}
	for (unsigned i = 0; i < cfg.shards; i++) {
		in += res.end[i].frames_in;
		relayed += res.end[i].frames_relayed;
		exports += res.end[i].exports;
		if (res.end[i].errors || res.end[i].trace_errors) {
			fprintf(stderr, "%s: shard %u: %llu errors, %llu trace errors\n", PROG, i,
				(unsigned long long)res.end[i].errors,
				(unsigned long long)res.end[i].trace_errors);
			return 1;
		}
	}
	if (in != res.frames_sent || relayed != in || exports < 2 * in || res.trace_logs) {
		fprintf(stderr,
			"%s: %llu frames sent, %llu received, %llu relayed, %llu exports, "
			"%u buf trace lines\n",
			PROG, (unsigned long long)res.frames_sent, (unsigned long long)in,
			(unsigned long long)relayed, (unsigned long long)exports, res.trace_logs);
		return 1;
	}
	printf("%s: %llu frames, %llu bytes checked, every buffer home\n", PROG,
	       (unsigned long long)res.frames_sent, (unsigned long long)res.bytes_checked);
	return 0;
}

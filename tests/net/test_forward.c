// SPDX-License-Identifier: MIT
/*
 * Received frames handed to another shard and back without copying (keel_slice_export,
 * keel-echo --forward's code): every byte checked, every buffer back home at the end.
 */
#include <criterion/criterion.h>

#include "fwd_drive.h"
#include "helpers.h"

static void
check(const struct fwd_cfg *cfg, const struct fwd_result *res, int r)
{
	uint64_t exports = 0, trace = 0, errors = 0, relayed = 0, in = 0;

	cr_assert_eq(r, 0, "%s", res->err);
	cr_log_info("%llu frames, %llu bytes checked", (unsigned long long)res->frames_sent,
		    (unsigned long long)res->bytes_checked);
	for (unsigned i = 0; i < cfg->shards; i++) {
		const struct fwd_shard_end *e = &res->end[i];
		exports += e->exports;
		trace += e->trace_errors;
		errors += e->errors;
		relayed += e->frames_relayed;
		in += e->frames_in;
		cr_log_info("shard %u: frames in %llu relayed %llu out %llu; exports %llu, remote "
			    "returns %llu",
			    i, (unsigned long long)e->frames_in,
			    (unsigned long long)e->frames_relayed,
			    (unsigned long long)e->frames_out, (unsigned long long)e->exports,
			    (unsigned long long)e->remote_returns);
		cr_assert_eq(e->bufs_out, e->bufs_kernel,
			     "shard %u: %llu receive buffers out of the ring, %llu of them with "
			     "the kernel: the rest never came back",
			     i, (unsigned long long)e->bufs_out,
			     (unsigned long long)e->bufs_kernel);
		cr_assert_eq(e->exports_live, 0, "shard %u: %llu exported slices never released", i,
			     (unsigned long long)e->exports_live);
		cr_assert_gt(e->frames_in, 0,
			     "shard %u received no frame: steering put every "
			     "connection on one shard",
			     i);
	}
	cr_assert_eq(in, res->frames_sent, "every frame sent was received once");
	cr_assert_eq(relayed, in, "every frame went to the next shard and back");
	cr_assert_geq(exports, 2 * in, "each frame was exported at least there and back");
	cr_assert_eq(errors, 0);
	cr_assert_eq(trace, 0, "KEEL_BUF_TRACE reported %llu errors", (unsigned long long)trace);
	cr_assert_eq(res->trace_logs, 0, "buf trace lines logged (teardown included)");
}

Test(net_forward, frames_of_random_sizes_go_to_another_shard_and_back_intact, .timeout = 600)
{
	struct fwd_cfg cfg = {
		.shards = 2,
		.conns = 16,
		.bytes = 16ull << 20,
		.max_frame = 256u << 10,
		.window = 1u << 20,
		.buf_count = 2048,
		.buf_size = 16384,
		.seconds = 400,
	};
	struct fwd_result res;
	int r;

	if (test_small())
		cfg.bytes = 2ull << 20;
	r = fwd_run(&cfg, &res);
	check(&cfg, &res, r);
	cr_assert_gt(res.bytes_checked, cfg.conns * cfg.bytes,
		     "every payload byte and header came back");
}

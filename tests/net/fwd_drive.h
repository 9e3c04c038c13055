/* SPDX-License-Identifier: MIT */
/*
 * The forwarding echo (apps/echo/forward.c) under load, in-process: a server of @shards
 * shards and @conns client connections, each sending @bytes of length-prefixed frames of
 * random sizes while reading the echo, checking every byte. Shared by the Criterion test
 * (test_forward.c) and the ThreadSanitizer driver (tsan_forward.c).
 */
#ifndef KEEL_TEST_FWD_DRIVE_H
#define KEEL_TEST_FWD_DRIVE_H

#include <keel/keel.h>
#include <stdint.h>

struct fwd_cfg {
	unsigned shards;
	unsigned conns;
	uint64_t bytes;     /* payload bytes per connection */
	uint32_t max_frame; /* payload sizes are 1..max_frame */
	uint32_t window;    /* bytes a connection may have sent and not yet read back */
	uint32_t buf_count, buf_size;
	unsigned seconds; /* deadline of the whole run */
	/* keel_opts.mailbox_entries / mailbox_overflow; 0: the defaults */
	uint32_t mailbox_entries, mailbox_overflow;
};

/* One shard, once the clients closed and everything settled. */
struct fwd_shard_end {
	uint64_t bufs_out, bufs_kernel; /* keel_net_stats */
	uint64_t conns_open;
	uint64_t exports, exports_live, remote_returns, trace_errors, buffers_live;
	uint64_t frames_in, frames_relayed, frames_out, frames_dropped, frames_waited, errors;
};

struct fwd_result {
	char err[512]; /* "" when the run held */
	uint64_t frames_sent, bytes_checked;
	struct fwd_shard_end end[8];
	unsigned trace_logs; /* "buf trace" log lines, teardown included */
};

/* Run it. Returns 0 when every byte came back right and every buffer went home; else -1
 * with res->err saying what failed. */
int fwd_run(const struct fwd_cfg *cfg, struct fwd_result *res);

/* Only the clients (cfg->conns, bytes, max_frame, window, seconds), against a server on
 * 127.0.0.1:@port. Returns 0, or -1 with res->err. */
int fwd_clients(const struct fwd_cfg *cfg, uint16_t port, struct fwd_result *res);

#endif

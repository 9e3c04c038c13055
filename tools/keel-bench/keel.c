// SPDX-License-Identifier: MIT
/*
 * keel-bench keel backend: not built yet. It needs keel's network layer (issue 5: TCP on
 * the ring, slices, keel-echo). Until then --backend keel is refused with exit status 2,
 * never answered with a made-up figure. The implementation replaces this file: serve_start
 * runs cfg->shards keel shards, each accepting and echoing with keel_net; client_run drives
 * the protocol of proto.c from runtime shards; serve_stop fills syscalls with the shards'
 * io_uring_enter calls and syscalls_what with "io_uring_enter".
 */
#include <stddef.h>

#include "backend.h"

const struct bench_backend bench_backend_keel = {
	.name = "keel",
	.unavailable = "keel backend not built yet: it needs the net layer (issue 5)",
};

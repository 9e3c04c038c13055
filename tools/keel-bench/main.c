// SPDX-License-Identifier: MIT
/* keel-bench: benchmarks of the keel runtime, each beside a baseline in the same run. */
#include <keel/jemalloc.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

static const struct {
	const char *name;
	bench_mode_fn fn;
	const char *help;
} modes[] = {
	{ "xshard", bench_xshard,
	  "cross-shard messages: one-way rate and round trips, polling and sleeping, beside "
	  "two threads with a lock-free SPSC ring and an eventfd" },
	{ "alloc", bench_alloc,
	  "buffer alloc+free pairs/s on a shard beside glibc and jemalloc; 1 GiB registration "
	  "time" },
	{ "pingpong", bench_net,
	  "one message in flight per connection: round trips/s, latency p50..p99.9, max" },
	{ "throughput", bench_net, "--inflight messages in flight per connection: msgs/s, Gb/s" },
	{ "stream", bench_net, "unframed bytes echoed back: Gb/s" },
	{ "connections", bench_net,
	  "open/close rate, and latency on held connections beside --idle idle ones" },
	{ "udp", bench_net,
	  "datagrams echoed, --inflight outstanding per socket: round trips/s or datagrams/s, "
	  "latency, losses" },
	{ "disk", bench_disk,
	  "random 4 KiB reads and sequential 128 KiB writes on a file through keel_file_*, beside "
	  "fio's io_uring engine and a pread/pwrite thread pool" },
	{ "serve", bench_net,
	  "a TCP and UDP echo server (--backend epoll|keel) for the five modes above" },
};

static void
usage(FILE *f)
{
	fprintf(f, "usage: keel-bench MODE [options] [runtime options]\n\nmodes:\n");
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		fprintf(f, "  %-10s %s\n", modes[i].name, modes[i].help);
	fprintf(f, "\n'keel-bench MODE --help' lists a mode's options.\n");
}

int
main(int argc, char **argv)
{
	/* keel's own benchmark opts in to jemalloc arenas per shard, like keel-echo (and the
	 * alloc mode's jemalloc backend needs it). */
	keel_jemalloc_enable();
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		if (!strcmp(argv[1], modes[i].name))
			return modes[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "keel-bench: unknown mode '%s' (modes:", argv[1]);
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		fprintf(stderr, " %s", modes[i].name);
	fprintf(stderr, ")\n");
	return 2;
}

// SPDX-License-Identifier: MIT
/*
 * keel-kv with 2 shards still answers PING with 5,000 idle connections open (1,000 under
 * KEEL_TEST_SCALE=small), at under 64 KiB of server memory (RSS growth) per idle
 * connection. The figure is printed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "scale.h"

TestSuite(scale_kv, .fini = scale_fini);

#define PING "PING\r\n"
#define PONG "+PONG\r\n"

Test(scale_kv, kv_5000_idle_connections_ping_under_64k_each)
{
	unsigned n = scale_small() ? 1000 : 5000;
	char why[256], files[16];
	struct proc p;
	int *fds = calloc(n, sizeof(*fds)), ctl, fresh;
	long rss0, rss1;
	int fd0, fd1;

	cr_assert(fds);
	if (!nofile_raise(n + 256, why, sizeof(why)))
		cr_skip_test("%s", why);
	snprintf(files, sizeof(files), "%u", n + 128);
	proc_start(&p, KEEL_KV_BIN, "--port", "0", "--addr", "127.0.0.1", "--shards", "2",
		   "--idle-poll-us", "0", "--max-files", files, NULL);
	ctl = scale_connect(p.port);
	scale_roundtrip(ctl, PING, 6, PONG, 7);
	rss0 = proc_rss_kb(p.pid);
	fd0 = proc_fds(p.pid);
	for (unsigned i = 0; i < n; i++) {
		fds[i] = scale_connect(p.port);
		scale_roundtrip(fds[i], PING, 6, PONG, 7);
	}
	rss1 = proc_rss_kb(p.pid);
	fd1 = proc_fds(p.pid);
	scale_roundtrip(ctl, PING, 6, PONG, 7);
	fresh = scale_connect(p.port);
	scale_roundtrip(fresh, PING, 6, PONG, 7);
	scale_roundtrip(fds[0], PING, 6, PONG, 7);
	scale_roundtrip(fds[n - 1], PING, 6, PONG, 7);
	fprintf(stderr,
		"scale: keel-kv, 2 shards, %u idle connections: RSS %ld -> %ld KiB, %ld bytes "
		"per idle connection; server descriptors %d -> %d\n",
		n, rss0, rss1, (rss1 - rss0) * 1024 / (long)n, fd0, fd1);
	cr_assert_lt((rss1 - rss0) * 1024 / (long)n, 64 * 1024,
		     "%ld bytes of server memory per idle connection",
		     (rss1 - rss0) * 1024 / (long)n);
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
	close(ctl);
	close(fresh);
	proc_stop(&p);
	free(fds);
}

// SPDX-License-Identifier: MIT
/*
 * 10,000 connections over loopback to keel-echo (2,000 under KEEL_TEST_SCALE=small): the
 * server keeps answering them and a new connection, and its memory per idle connection
 * (RSS growth / connections) stays under 64 KiB. The figure is printed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "scale.h"

TestSuite(scale, .fini = scale_fini);

Test(scale, echo_10000_connections_bounded_memory)
{
	unsigned n = scale_small() ? 2000 : 10000;
	char why[256], files[16];
	struct proc p;
	int *fds = calloc(n, sizeof(*fds)), ctl, fresh;
	long rss0, rss1;
	int fd0, fd1;

	cr_assert(fds);
	if (!nofile_raise(n + 256, why, sizeof(why)))
		cr_skip_test("%s", why);
	/* Every connection may land on one shard (CPU steering of one client thread): the
	 * direct-descriptor table must hold them all. */
	snprintf(files, sizeof(files), "%u", n + 128);
	proc_start(&p, KEEL_ECHO_BIN, "--port", "0", "--addr", "127.0.0.1", "--shards", "2",
		   "--idle-poll-us", "0", "--max-files", files, NULL);
	ctl = scale_connect(p.port);
	scale_roundtrip(ctl, "w", 1, "w", 1);
	rss0 = proc_rss_kb(p.pid);
	fd0 = proc_fds(p.pid);
	for (unsigned i = 0; i < n; i++) {
		fds[i] = scale_connect(p.port);
		/* Answered: the server holds the connection, and it has been used once. */
		scale_roundtrip(fds[i], "e", 1, "e", 1);
	}
	rss1 = proc_rss_kb(p.pid);
	fd1 = proc_fds(p.pid);
	scale_roundtrip(ctl, "still", 5, "still", 5);
	fresh = scale_connect(p.port);
	scale_roundtrip(fresh, "new", 3, "new", 3);
	scale_roundtrip(fds[0], "first", 5, "first", 5);
	scale_roundtrip(fds[n - 1], "last", 4, "last", 4);
	fprintf(stderr,
		"scale: keel-echo, 2 shards, %u idle connections: RSS %ld -> %ld KiB, %ld bytes "
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

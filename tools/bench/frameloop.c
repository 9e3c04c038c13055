// SPDX-License-Identifier: MIT
/*
 * A fixed workload of framed sends, for instruction counts (valgrind --tool=callgrind) of
 * keel_frame_send and the connection's send path; see tools/bench/frameloop.sh and
 * docs/performance-history.md ("Speed work (session 3)").
 *
 *   frameloop SIZE FRAMES ROUNDS   one shard; a connection to its own listener (127.0.0.1);
 *                                  per round the client sends FRAMES frames of SIZE payload
 *                                  bytes (keel_frame_send, one fresh payload buffer each)
 *                                  in one pass, the server counts the bytes and answers one
 *                                  byte when the round's bytes are in; ROUNDS rounds
 *
 * Prints the send counters per round. The work is fixed by the arguments, so the
 * difference of two runs (ROUNDS and 2 x ROUNDS) is the cost of ROUNDS more rounds.
 */
#include <errno.h>
#include <keel/bufreg.h>
#include <keel/frame.h>
#include <keel/keel.h>
#include <keel/net.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned size, frames, rounds, done;
static uint64_t want, got;
static struct keel_listener *lis;
static struct keel_conn *srv;
static int failed;

static void
fail(int r)
{
	if (!failed)
		failed = r ? r : -EIO;
	keel_stop(failed);
}

static void
batch(struct keel_conn *c)
{
	for (unsigned i = 0; i < frames; i++) {
		struct keel_slice s;
		int r = keel_buf_alloc(keel_shard_alloc(), size ? size : 1, &s);

		if (r < 0)
			return fail(r);
		s.len = size;
		memset(s.data, (int)i, size);
		r = keel_frame_send(c, &s, 1);
		if (r < 0)
			return fail(r);
	}
}

static void
cli_open(struct keel_conn *c)
{
	batch(c);
}

static void
cli_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
	if (++done == rounds) {
		struct keel_net_stats st;
		keel_net_stats(keel_this_shard(), &st);
		printf("sends per round %.2f (frames per round %u, size %u)\n",
		       (double)st.sends / rounds, frames, size);
		keel_stop(0);
		return;
	}
	batch(c);
}

static void
cli_close(struct keel_conn *c, int status)
{
	if (done < rounds)
		fail(status ? status : -EPIPE);
}

static const struct keel_conn_ops cli_ops = { .on_open = cli_open,
					      .on_data = cli_data,
					      .on_close = cli_close };

static void
srv_open(struct keel_conn *c)
{
	srv = c;
}

static void
srv_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		got += s[i].len;
		keel_slice_put(&s[i]);
	}
	if (got >= want) {
		if (got != want)
			return fail(-EPROTO);
		got = 0;
		if (keel_conn_write(c, "k", 1) < 0)
			fail(-EIO);
	}
}

static void
srv_close(struct keel_conn *c, int status)
{
}

static const struct keel_conn_ops srv_ops = { .on_open = srv_open,
					      .on_data = srv_data,
					      .on_close = srv_close };

static void
start(void *arg)
{
	struct keel_conn *c;
	int r = keel_listener_start(lis);

	if (r == 0)
		r = keel_conn_connect("127.0.0.1", keel_listener_port(lis), KEEL_S(10), &cli_ops,
				      NULL, &c);
	if (r < 0)
		fail(r);
}

int
main(int argc, char **argv)
{
	struct keel_opts o;
	struct keel_listen_opts lo = { .addr = "127.0.0.1", .no_addrs = true };
	int r;

	if (argc != 4) {
		fprintf(stderr, "usage: frameloop SIZE FRAMES ROUNDS\n");
		return 2;
	}
	size = (unsigned)atoi(argv[1]);
	frames = (unsigned)atoi(argv[2]);
	rounds = (unsigned)atoi(argv[3]);
	want = (uint64_t)frames * (4 + size);
	keel_opts_init(&o);
	o.shards = 1;
	o.idle_poll_us = 0;
	o.signals = false;
	if (keel_listener_create(&lo, 1, &srv_ops, NULL, &lis) < 0) {
		fprintf(stderr, "frameloop: set-up failed\n");
		return 1;
	}
	r = keel_run(&o, start, NULL);
	keel_listener_destroy(lis);
	if (r < 0 || failed) {
		fprintf(stderr, "frameloop: %s\n", strerror(-(failed ? failed : r)));
		return 1;
	}
	return 0;
}

// SPDX-License-Identifier: MIT
/*
 * The bulk ring (keel_net_config.bulk_buf_size, net/conn.c): a connection whose receive
 * fills two first-ring buffers moves to the ring of larger buffers, comes back after
 * KEEL_NET_BULK_BACK small receives in a row or when the application holds every bulk
 * buffer, and its bytes arrive intact and in order across each move. The ring a slice came
 * from shows in its length (a first-ring slice is at most buf_size); the moves in the shard's
 * counters, read on the shard when the connection closes. Nothing here depends on timing:
 * the first large receive is made certain by holding the shard while the client writes.
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define BK_FIRST (48u << 10) /* written while the shard is held: one receive of 3 buffers */

static struct {
	_Atomic uint32_t max_len;
	_Atomic int closed;
	_Atomic uint64_t moves, backs, failed, enobufs, bytes, rearms, cqes, window, more, arms,
		arms_ms;
	/* hold: keep every slice until hold_until bytes, then put them all */
	_Atomic uint64_t hold_until;
	struct keel_slice held[4096]; /* shard only */
	unsigned nheld;
} bk;

static void
bk_note(const struct keel_slice *s)
{
	uint32_t m = atomic_load(&bk.max_len);

	while (s->len > m && !atomic_compare_exchange_weak(&bk.max_len, &m, s->len))
		;
	atomic_fetch_add(&bk.bytes, s->len);
}

static void
bk_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		bk_note(&s[i]);
		if (keel_conn_send(c, &s[i]) < 0)
			keel_slice_put(&s[i]);
	}
}

static void
bk_hold_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	(void)c;
	for (unsigned i = 0; i < n; i++) {
		bk_note(&s[i]);
		if (bk.nheld < sizeof(bk.held) / sizeof(bk.held[0]) &&
		    atomic_load(&bk.bytes) < atomic_load(&bk.hold_until))
			bk.held[bk.nheld++] = s[i];
		else
			keel_slice_put(&s[i]);
	}
	if (atomic_load(&bk.bytes) >= atomic_load(&bk.hold_until))
		while (bk.nheld)
			keel_slice_put(&bk.held[--bk.nheld]);
}

static void
bk_close(struct keel_conn *c, int status)
{
	struct keel_net_stats st;

	(void)c;
	(void)status;
	while (bk.nheld)
		keel_slice_put(&bk.held[--bk.nheld]);
	if (SHARD_CHECK_EQ(keel_net_stats(keel_this_shard(), &st), 0)) {
		atomic_store(&bk.moves, st.bulk_moves);
		atomic_store(&bk.backs, st.bulk_backs);
		atomic_store(&bk.failed, st.bulk_failed);
		atomic_store(&bk.enobufs, st.enobufs);
		atomic_store(&bk.rearms, st.rearms);
		atomic_store(&bk.cqes, st.recv_cqes);
		atomic_store(&bk.window, st.bulk_window);
		atomic_store(&bk.more, st.recv_more);
		atomic_store(&bk.arms, st.recv_arms);
		atomic_store(&bk.arms_ms, st.recv_arms_multishot);
	}
	atomic_store(&bk.closed, 1);
}

static const struct keel_conn_ops bk_ops = { .on_data = bk_data, .on_close = bk_close };
static const struct keel_conn_ops bk_hold_ops = { .on_data = bk_hold_data, .on_close = bk_close };

static void
pattern(uint8_t *p, size_t len, uint64_t at)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)((at + i) * 31 % 251);
}

/* Write @len bytes of the pattern from @at, the shard held meanwhile when @hold (so the
 * next receive takes them all), and, unless !@echo, read the echo back and compare. */
static void
bk_chunk(struct srv *s, int fd, size_t len, uint64_t at, bool hold, bool echo)
{
	static uint8_t out[1u << 20], in[1u << 20];
	struct shard_hold h;

	cr_assert_leq(len, sizeof(out));
	pattern(out, len, at);
	if (hold) {
		shard_hold_init(&h);
		shard_hold(&h, s->rt, 0);
	}
	cr_assert_eq(cli_write_all(fd, out, len), 0, "writing %zu bytes at %llu", len,
		     (unsigned long long)at);
	if (hold) {
		shard_hold_release(&h);
		shard_hold_fini(&h);
	}
	if (!echo)
		return;
	cr_assert_eq(cli_read_all(fd, in, len), 0, "reading the echo of %zu bytes at %llu", len,
		     (unsigned long long)at);
	cr_assert_eq(memcmp(in, out, len), 0, "the echo of %zu bytes at %llu differs", len,
		     (unsigned long long)at);
}

static void
bk_close_wait(struct srv *s, int fd)
{
	close(fd);
	WAIT_UNTIL(atomic_load(&bk.closed), TEST_WAIT_MS, "the server never closed");
	cr_assert_eq(srv_stop(s), 0);
	SHARD_CHECKS_PASSED(); /* bk_close's stats read: the counters below come from it */
}

/* Reset the counters, start the server with @nc (NULL: defaults), --feature @feature
 * (NULL: none) and @ops, and connect: the client's descriptor. */
static int
bk_start(struct srv *s, const struct keel_net_config *nc, const char *feature,
	 const struct keel_conn_ops *ops)
{
	struct keel_opts o = net_test_opts(1);
	int fd;

	memset(&bk, 0, sizeof(bk));
	if (feature)
		net_test_feature(&o, feature);
	cr_assert_eq(srv_start(s, &o, nc, ops), 0);
	fd = cli_connect(s->port);
	cr_assert_geq(fd, 0);
	return fd;
}

/* A stream: the first held chunk moves the connection, the rest is echoed from 64 KiB
 * buffers; every byte comes back in order. */
static void
stream_run(const char *feature)
{
	struct keel_net_config nc;
	uint64_t at = 0;
	struct srv s;
	int fd;

	keel_net_config_init(&nc);
	fd = bk_start(&s, &nc, feature, &bk_ops);
	bk_chunk(&s, fd, BK_FIRST, at, true, true);
	at += BK_FIRST;
	for (unsigned i = 0; i < 16; i++, at += 256u << 10)
		bk_chunk(&s, fd, 256u << 10, at, false, true);
	bk_close_wait(&s, fd);
	cr_assert_eq(atomic_load(&bk.moves), 1, "%llu moves to the bulk ring, want 1",
		     (unsigned long long)atomic_load(&bk.moves));
	cr_assert_eq(atomic_load(&bk.backs), 0);
	cr_assert_gt(atomic_load(&bk.max_len), nc.buf_size,
		     "the largest slice is %u bytes: no receive used the bulk ring",
		     atomic_load(&bk.max_len));
	cr_assert_leq(atomic_load(&bk.max_len), nc.bulk_buf_size);
	/* Every receive SQE was of the kind the test asked for, and single-shot ones left
	 * none armed (recv_more 0). */
	bool single = feature && strstr(feature, "multishot_recv=off");
	struct keel_net_stats k = { .recv_arms = atomic_load(&bk.arms),
				    .recv_arms_multishot = atomic_load(&bk.arms_ms),
				    .recv_more = atomic_load(&bk.more) };

	cr_assert(recv_kind_was(&k, !single),
		  "multishot_recv %s: %llu of %llu receive SQEs multishot, %llu completions "
		  "left one armed",
		  single ? "off" : "auto", (unsigned long long)k.recv_arms_multishot,
		  (unsigned long long)k.recv_arms, (unsigned long long)k.recv_more);
}

Test(net_bulk, a_stream_moves_to_the_bulk_ring_intact)
{
	stream_run(NULL);
}

Test(net_bulk, a_stream_moves_to_the_bulk_ring_intact_whole_buffers)
{
	stream_run("pbuf_inc=off");
}

Test(net_bulk, a_stream_moves_to_the_bulk_ring_intact_without_bundles)
{
	stream_run("recv_bundle=off");
}

Test(net_bulk, a_stream_moves_to_the_bulk_ring_intact_single_shot_receives)
{
	stream_run("multishot_recv=off");
}

/* A multishot receive with bundles ends when it takes the last buffer in the ring; were the
 * ring's window (16 buffers at first, 4 in the bulk ring) left smaller than the bytes in
 * flight, nearly every receive of a stream would end and be armed again. The window grows
 * instead (doubling, up to the ring or bulk_window), so the re-arms are a handful: the
 * window's doublings and the move to the bulk ring. */
static void
rearm_run(uint32_t bulk)
{
	struct keel_net_config nc;
	uint64_t at = 0;
	struct srv s;
	int fd;

	keel_net_config_init(&nc);
	nc.bulk_buf_size = bulk;
	if (!bulk)
		nc.buf_size = 4096; /* a window of 64 KiB under the 256 KiB chunks */
	fd = bk_start(&s, &nc, NULL, &bk_ops);
	for (unsigned i = 0; i < 64; i++, at += 256u << 10)
		bk_chunk(&s, fd, 256u << 10, at, false, true);
	bk_close_wait(&s, fd);
	cr_assert_geq(atomic_load(&bk.cqes), 64);
	cr_assert_leq(atomic_load(&bk.rearms), 12,
		      "%llu of %llu receive completions ended the multishot receive",
		      (unsigned long long)atomic_load(&bk.rearms),
		      (unsigned long long)atomic_load(&bk.cqes));
}

Test(net_bulk, a_stream_keeps_its_multishot_receive_armed)
{
	rearm_run(65536);
}

Test(net_bulk, a_stream_keeps_its_multishot_receive_armed_one_ring)
{
	rearm_run(0);
}

/* Small receives bring it back; a large one moves it again. */
Test(net_bulk, small_receives_move_the_connection_back)
{
	uint64_t at = 0;
	struct srv s;
	int fd = bk_start(&s, NULL, NULL, &bk_ops);

	bk_chunk(&s, fd, BK_FIRST, at, true, true);
	at += BK_FIRST;
	/* One small message at a time: each is one receive under buf_size. */
	for (unsigned i = 0; i < KEEL_NET_BULK_BACK + 8; i++, at += 100)
		bk_chunk(&s, fd, 100, at, false, true);
	bk_chunk(&s, fd, BK_FIRST, at, true, true);
	bk_close_wait(&s, fd);
	cr_assert_eq(atomic_load(&bk.backs), 1, "%llu moves back, want 1 after %u small receives",
		     (unsigned long long)atomic_load(&bk.backs), KEEL_NET_BULK_BACK + 8);
	cr_assert_eq(atomic_load(&bk.moves), 2, "%llu moves to the bulk ring, want 2",
		     (unsigned long long)atomic_load(&bk.moves));
}

/* bulk_buf_size 0, or not above buf_size (64 KiB both): one ring, no slice longer than
 * buf_size. */
static void
one_ring_run(uint32_t buf_size, uint32_t bulk)
{
	struct keel_net_config nc;
	struct srv s;
	int fd;

	keel_net_config_init(&nc);
	nc.buf_size = buf_size;
	nc.bulk_buf_size = bulk;
	fd = bk_start(&s, &nc, NULL, &bk_ops);
	bk_chunk(&s, fd, BK_FIRST, 0, true, true);
	bk_chunk(&s, fd, 256u << 10, BK_FIRST, false, true);
	bk_close_wait(&s, fd);
	cr_assert_eq(atomic_load(&bk.moves), 0);
	cr_assert_leq(atomic_load(&bk.max_len), nc.buf_size);
}

Test(net_bulk, bulk_buf_size_zero_keeps_one_ring)
{
	one_ring_run(16384, 0);
}

Test(net_bulk, bulk_buf_size_not_above_buf_size_keeps_one_ring)
{
	one_ring_run(65536, 65536);
}

/* The application holds every bulk buffer (4 of them): the next receive finds the bulk ring
 * empty and the connection goes back to the first ring, whose 256 buffers hold the rest.
 * Left waiting for a bulk buffer, it would never receive the 1 MiB. */
Test(net_bulk, held_bulk_buffers_send_the_connection_back)
{
	struct keel_net_config nc;
	struct srv s;
	int fd;

	keel_net_config_init(&nc);
	nc.bulk_buf_count = 4;
	fd = bk_start(&s, &nc, NULL, &bk_hold_ops);
	atomic_store(&bk.hold_until, 1u << 20); /* before any byte is written */
	bk_chunk(&s, fd, BK_FIRST, 0, true, false);
	bk_chunk(&s, fd, (1u << 20) - BK_FIRST, BK_FIRST, false, false);
	WAIT_UNTIL(atomic_load(&bk.bytes) == 1u << 20, TEST_WAIT_MS,
		   "%llu of %u bytes received with every bulk buffer held",
		   (unsigned long long)atomic_load(&bk.bytes), 1u << 20);
	bk_close_wait(&s, fd);
	/* Once: while the application holds every bulk buffer the large receives that follow
	 * on the first ring do not move it again (each such move would end in ENOBUFS). */
	cr_assert_eq(atomic_load(&bk.moves), 1, "%llu moves to the bulk ring, want 1",
		     (unsigned long long)atomic_load(&bk.moves));
	cr_assert_eq(atomic_load(&bk.backs), 1, "%llu moves back, want 1",
		     (unsigned long long)atomic_load(&bk.backs));
	cr_assert_gt(atomic_load(&bk.enobufs), 0);
}

#define WR_HOLD (3u << 20) /* 48 of the 64 bulk buffers */

/* The application holds all it receives until 3 MiB have come. The bulk ring's window starts
 * at 4 buffers (256 KiB), or bulk_window = @window bytes if less, and doubles each time the
 * kernel empties it before the shard tops it up (how often depends on timing), never past
 * bulk_window. Buffers held are outside the window, so the 3 MiB arrive whatever its size.
 * Returns the window the shard reports at the end. */
static uint64_t
window_run(uint32_t window)
{
	struct keel_net_config nc;
	struct srv s;
	int fd;

	keel_net_config_init(&nc);
	nc.bulk_window = window;
	fd = bk_start(&s, &nc, NULL, &bk_hold_ops);
	atomic_store(&bk.hold_until, WR_HOLD); /* before any byte is written */
	bk_chunk(&s, fd, BK_FIRST, 0, true, false);
	bk_chunk(&s, fd, (1u << 20) - BK_FIRST, BK_FIRST, false, false);
	bk_chunk(&s, fd, 1u << 20, 1u << 20, false, false);
	bk_chunk(&s, fd, 1u << 20, 2u << 20, false, false);
	WAIT_UNTIL(atomic_load(&bk.bytes) == WR_HOLD, TEST_WAIT_MS,
		   "%llu of %u bytes received under a bulk window of %u bytes",
		   (unsigned long long)atomic_load(&bk.bytes), WR_HOLD, window);
	bk_close_wait(&s, fd);
	cr_assert_eq(atomic_load(&bk.moves), 1, "%llu moves to the bulk ring, want 1",
		     (unsigned long long)atomic_load(&bk.moves));
	cr_assert_eq(atomic_load(&bk.backs), 0, "%llu moves back, want 0",
		     (unsigned long long)atomic_load(&bk.backs));
	return atomic_load(&bk.window);
}

Test(net_bulk, the_bulk_window_stops_at_bulk_window)
{
	uint64_t w = window_run(KEEL_NET_BULK_WINDOW_DEFAULT);

	/* How far it grows depends on timing; the bound does not. */
	cr_assert(w >= 256u << 10 && w <= KEEL_NET_BULK_WINDOW_DEFAULT,
		  "bulk window %llu bytes, want 262144 to %u (the default)", (unsigned long long)w,
		  KEEL_NET_BULK_WINDOW_DEFAULT);
	/* The start window: it cannot grow. */
	w = window_run(256u << 10);
	cr_assert_eq(w, 256u << 10, "bulk window %llu bytes, want 262144", (unsigned long long)w);
	/* Whole buffers, at least one. */
	w = window_run(100000);
	cr_assert_eq(w, 65536, "bulk window %llu bytes for 100000, want 65536",
		     (unsigned long long)w);
	w = window_run(1);
	cr_assert_eq(w, 65536, "bulk window %llu bytes for 1, want 65536", (unsigned long long)w);
}

static _Atomic unsigned bk_fail_lines;

static void
bk_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module;
	(void)shard;
	(void)arg;
	if (level == KEEL_LOG_ERROR && strstr(msg, "bulk receive ring") &&
	    strstr(msg, "--memory") && strstr(msg, "bulk_buf_size 0"))
		atomic_fetch_add(&bk_fail_lines, 1);
}

/* A bulk ring that cannot be made (32 GiB under --memory 64M) is said once, naming the
 * fixes, and counted; the connection stays on the first ring and its bytes are echoed
 * intact. */
Test(net_bulk, a_bulk_ring_that_cannot_be_made_is_counted)
{
	struct keel_net_config nc;
	struct srv s;
	int fd;

	keel_net_config_init(&nc);
	nc.bulk_buf_size = 1u << 20;
	nc.bulk_buf_count = 32768;
	atomic_store(&bk_fail_lines, 0);
	keel_log_set_sink(bk_sink, NULL);
	fd = bk_start(&s, &nc, NULL, &bk_ops);
	bk_chunk(&s, fd, BK_FIRST, 0, true, true);
	bk_chunk(&s, fd, BK_FIRST, BK_FIRST, true, true);
	bk_close_wait(&s, fd);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(atomic_load(&bk_fail_lines), 1, "%u log lines name the failure and its fixes",
		     atomic_load(&bk_fail_lines));
	cr_assert_eq(atomic_load(&bk.failed), 1);
	cr_assert_eq(atomic_load(&bk.moves), 0);
	cr_assert_leq(atomic_load(&bk.max_len), nc.buf_size);
}

Test(net_bulk, the_configuration_is_checked)
{
	struct keel_net_config nc;

	keel_net_config_init(&nc);
	cr_assert_eq(nc.bulk_buf_size, 65536);
	cr_assert_eq(nc.bulk_buf_count, 64);
	cr_assert_eq(nc.bulk_window, 512u << 10);
	nc.bulk_buf_size = (1u << 20) + 1;
	cr_assert_eq(keel_net_config_set(&nc), -EINVAL, "bulk_buf_size above 1 MiB");
	nc.bulk_buf_size = 65536;
	nc.bulk_buf_count = 48;
	cr_assert_eq(keel_net_config_set(&nc), -EINVAL, "bulk_buf_count not a power of two");
	nc.bulk_buf_count = 0;
	cr_assert_eq(keel_net_config_set(&nc), -EINVAL, "bulk_buf_count 0");
	nc.bulk_buf_size = 0;
	cr_assert_eq(keel_net_config_set(&nc), 0, "bulk_buf_size 0 turns it off");
	/* Not above buf_size: no bulk ring either, whatever the count (so raising buf_size
	 * to 64 KiB or more needs no other change). */
	nc.bulk_buf_size = nc.buf_size;
	cr_assert_eq(keel_net_config_set(&nc), 0, "bulk_buf_size == buf_size turns it off");
	keel_net_config_init(&nc);
	nc.buf_size = 1u << 20;
	cr_assert_eq(keel_net_config_set(&nc), 0, "buf_size 1 MiB with the default bulk ring");
	keel_net_config_init(&nc);
	cr_assert_eq(keel_net_config_set(&nc), 0);
}

/* keel-echo with --stats and @bulk_flag (NULL: the default bulk ring) echoes 16 x 256 KiB on
 * one connection; returns the moves to the bulk ring its "shard 0 net:" line reports, and
 * in @window_kib the bulk window it reports (NULL: not wanted). */
static unsigned long long
echo_moves(const char *bulk_flag, const char *bulk_value, unsigned long long *window_kib)
{
	char port_s[16], text[8192], *line;
	char *argv[] = { "keel-echo",
			 "--addr",
			 "127.0.0.1",
			 "--port",
			 port_s,
			 "--shards",
			 "1",
			 "--idle-poll-us",
			 "0",
			 "--log-level",
			 "warn",
			 "--stats",
			 (char *)(bulk_flag ? bulk_flag : "--bulk-buf-count"),
			 (char *)(bulk_flag ? bulk_value : "64"),
			 NULL };
	struct sockaddr_in a;
	unsigned long long moves = ~0ull;
	static uint8_t out[256u << 10], in[256u << 10];
	int fd, logfd, st;
	pid_t pid;

	free_loopback_port(SOCK_STREAM, &a, port_s, sizeof(port_s));
	pid = keel_echo_spawn(argv, &logfd);
	/* Until keel-echo listens: a try every 10 ms, 30 s at most. */
	for (unsigned tries = 0;; tries++) {
		struct timespec ts = { 0, 10000000 };

		cr_assert_lt(tries, 3000, "keel-echo did not listen in 30 s");
		if (waitpid(pid, &st, WNOHANG) == pid)
			cr_assert_fail("keel-echo exited early (status %d)", st);
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
			break;
		close(fd);
		nanosleep(&ts, NULL);
	}
	for (unsigned i = 0; i < 16; i++) {
		pattern(out, sizeof(out), (uint64_t)i * sizeof(out));
		cr_assert_eq(cli_write_all(fd, out, sizeof(out)), 0);
		cr_assert_eq(cli_read_all(fd, in, sizeof(in)), 0);
		cr_assert_eq(memcmp(in, out, sizeof(in)), 0, "chunk %u echoed wrong", i);
	}
	close(fd);
	cr_assert_gt(keel_echo_end(pid, logfd, text, sizeof(text)), 0,
		     "keel-echo wrote nothing with --stats");
	cr_assert(strstr(text, "shard 0 listener: 1 accepted, 1 steering checks"),
		  "no listener line (one accept, checked: cpu steering) in keel-echo's --stats "
		  "output:\n%s",
		  text);
	line = strstr(text, "shard 0 net:");
	cr_assert(line, "no network line in keel-echo's --stats output:\n%s", text);
	cr_assert(strstr(line, "bulk ring: "), "%s", line);
	cr_assert_eq(sscanf(strstr(line, "bulk ring: "), "bulk ring: %llu moves to", &moves), 1,
		     "%s", line);
	if (window_kib) {
		cr_assert(strstr(line, ", window "), "%s", line);
		cr_assert_eq(sscanf(strstr(line, ", window "), ", window %llu KiB", window_kib), 1,
			     "%s", line);
	}
	return moves;
}

/* keel-echo's --bulk-buf-* and --bulk-window flags reach the configuration and --stats
 * reports the moves and the window; a bad count is refused with exit status 2. */
Test(net_bulk, keel_echo_bulk_flags_and_stats, .timeout = 120)
{
	char *bad[] = { "keel-echo", "--port", "1", "--bulk-buf-count", "3", NULL };
	int st;

	unsigned long long kib = 0;

	cr_assert_geq(echo_moves(NULL, NULL, NULL), 1, "no move to the bulk ring with the default");
	cr_assert_eq(echo_moves("--bulk-buf-size", "0", NULL), 0, "a move with --bulk-buf-size 0");
	/* 128 KiB: two buffers, the window's first size already past it (4 buffers). */
	cr_assert_geq(echo_moves("--bulk-window", "128k", &kib), 1);
	cr_assert_eq(kib, 128, "keel-echo --bulk-window 128k: a window of %llu KiB reported", kib);
	st = keel_echo_status(bad);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "keel-echo status %d, want exit 2", st);
}

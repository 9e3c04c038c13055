// SPDX-License-Identifier: MIT
/* Limits against hostile peers: max_conns (docs/net.md, "Connection limit"). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../net/net_internal.h"
#include "helpers.h"

/* An echo server on one shard whose listener keeps at most @max connections. */
static void
limited_start(struct srv *s, uint32_t max)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config nc;
	struct keel_listen_opts lo;

	memset(s, 0, sizeof(*s));
	keel_net_config_init(&nc);
	cr_assert_eq(keel_net_config_set(&nc), 0);
	cr_assert_eq(keel_runtime_create(&o, &s->rt), 0);
	memset(&lo, 0, sizeof(lo));
	lo.addr = "127.0.0.1";
	lo.rt = s->rt;
	lo.max_conns = max;
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, s, &s->l), 0);
	s->port = keel_listener_port(s->l);
	cr_assert_eq(keel_runtime_start(s->rt, srv_on_start, s), 0);
}

static void
echo_once(int fd, char tag)
{
	char b = tag;
	cr_assert_eq(cli_write_all(fd, &b, 1), 0);
	b = 0;
	cr_assert_eq(cli_read_all(fd, &b, 1), 0);
	cr_assert_eq(b, tag);
}

/* Connections beyond the limit are accepted and closed at once, and counted; those within
 * it keep being served, and a freed place is taken by the next connection. */
Test(net_limits, max_conns_closes_the_excess_and_keeps_serving)
{
	enum { MAX = 4, EXTRA = 6 };
	struct srv s;
	struct keel_listener_stats st;
	int in[MAX], out[EXTRA];
	char b;

	limited_start(&s, MAX);
	for (int i = 0; i < MAX; i++) {
		in[i] = cli_connect(s.port);
		cr_assert_geq(in[i], 0);
		echo_once(in[i], (char)('a' + i)); /* accepted and open before the next */
	}
	for (int i = 0; i < EXTRA; i++) {
		out[i] = cli_connect(s.port);
		cr_assert_geq(out[i], 0);
		ssize_t r = cli_recv(out[i], &b, 1);
		cr_assert(
			r == 0 || (r < 0 && errno == ECONNRESET),
			"connection %d over the limit must be closed by the server (recv %zd: %s)",
			i, r, r < 0 ? strerror(errno) : "data");
		close(out[i]);
	}
	for (int i = 0; i < MAX; i++)
		echo_once(in[i], (char)('A' + i));
	cr_assert_eq(keel_listener_stats(s.l, 0, &st), 0);
	cr_assert_eq(st.over_limit, EXTRA);
	cr_assert_eq(st.accepted, MAX);

	/* A place freed is a place for the next connection. */
	close(in[0]);
	WAIT_FOR(atomic_load(&s.closes) == 1, "the server saw the close");
	in[0] = cli_connect(s.port);
	cr_assert_geq(in[0], 0);
	echo_once(in[0], 'z');
	for (int i = 0; i < MAX; i++)
		close(in[i]);
	cr_assert_eq(srv_stop(&s), 0);
}

/* The shard's limit counters, read on the shard at each close (the latest close's). */
static _Atomic uint64_t lim_hdr, lim_idle, lim_cap_conn, lim_cap_shard, lim_sendq;
static _Atomic int lim_enobufs_closes, lim_etimedout_closes;

static void
lim_note(int status)
{
	struct keel_net_stats st;

	if (keel_net_stats(keel_this_shard(), &st) == 0) {
		atomic_store(&lim_hdr, st.header_timeouts);
		atomic_store(&lim_idle, st.idle_timeouts);
		atomic_store(&lim_cap_conn, st.send_cap_conn);
		atomic_store(&lim_cap_shard, st.send_cap_shard);
		atomic_store(&lim_sendq, st.send_queued);
	}
	if (status == -ENOBUFS)
		atomic_fetch_add(&lim_enobufs_closes, 1);
	if (status == -ETIMEDOUT)
		atomic_fetch_add(&lim_etimedout_closes, 1);
}

static void
lim_reset(void)
{
	atomic_store(&lim_hdr, 0);
	atomic_store(&lim_idle, 0);
	atomic_store(&lim_cap_conn, 0);
	atomic_store(&lim_cap_shard, 0);
	atomic_store(&lim_enobufs_closes, 0);
	atomic_store(&lim_etimedout_closes, 0);
}

static void
lecho_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	echo_ops.on_data(c, s, n);
}

static void
lecho_close(struct keel_conn *c, int status)
{
	/* The server's close count first: the tests wait for the limit counters lim_note
	 * sets, then read the close count, which was otherwise not yet raised when the test
	 * thread got there first (a loaded CI machine, 1 run). */
	echo_ops.on_close(c, status);
	lim_note(status);
}

static const struct keel_conn_ops lecho_ops = { .on_data = lecho_data, .on_close = lecho_close };

/* Waits for the server to end @fd (EOF or reset); fails if it sends anything first. */
static void
expect_closed(int fd, const char *what)
{
	char b[64];
	ssize_t r = cli_recv(fd, b, sizeof(b));

	cr_assert(r == 0 || (r < 0 && errno == ECONNRESET),
		  "%s: expected the server to close it (recv %zd: %s)", what, r,
		  r < 0 ? strerror(errno) : "data");
}

/* Slowloris: a connection that sends nothing, and one that sends part of the header
 * (header_bytes) and then stalls, are both closed once header_timeout_ns has passed
 * (never before: bounded below by the test's own clock) and counted; a connection that
 * sent its header in time keeps being served after both are gone. */
Test(net_limits, header_timeout_closes_silent_and_slow_peers)
{
	struct keel_net_config nc;
	struct srv s;
	char hdr[64], back[64];
	uint64_t t0;
	int silent, slow, good;

	lim_reset();
	keel_net_config_init(&nc);
	nc.header_timeout_ns = KEEL_S(1);
	nc.header_bytes = sizeof(hdr);
	memset(hdr, 'h', sizeof(hdr));
	t0 = test_now_ms();
	cr_assert_eq(srv_start(&s, NULL, &nc, &lecho_ops), 0);
	good = cli_connect(s.port);
	cr_assert_geq(good, 0);
	cr_assert_eq(cli_write_all(good, hdr, sizeof(hdr)), 0);
	silent = cli_connect(s.port);
	slow = cli_connect(s.port);
	cr_assert(silent >= 0 && slow >= 0);
	cr_assert_eq(cli_write_all(slow, hdr, 10), 0); /* 10 of the 64 bytes */
	cr_assert_eq(cli_read_all(slow, back, 10), 0); /* echoed: the server reads it */
	cr_assert_eq(cli_read_all(good, back, sizeof(hdr)), 0);
	expect_closed(silent, "the silent connection");
	expect_closed(slow, "the connection that sent 10 of 64 header bytes");
	cr_assert_geq(test_now_ms() - t0, 1000, "closed before header_timeout_ns had passed");
	WAIT_FOR(atomic_load(&lim_hdr) == 2 && atomic_load(&lim_etimedout_closes) == 2,
		 "two header timeouts counted (%llu) and closed with -ETIMEDOUT (%d)",
		 (unsigned long long)atomic_load(&lim_hdr), atomic_load(&lim_etimedout_closes));
	/* The good one is past its header: it is not timed any more, and still served. */
	cr_assert_eq(cli_write_all(good, "again", 5), 0);
	cr_assert_eq(cli_read_all(good, back, 5), 0);
	cr_assert_eq(memcmp(back, "again", 5), 0);
	close(silent);
	close(slow);
	close(good);
	cr_assert_eq(srv_stop(&s), 0);
	cr_assert_eq(atomic_load(&lim_idle), 0);
}

/* A server that answers before the header came (a greeting, a refusal) and closes: 32 MiB
 * queued, then keel_conn_close(). */
static void
greet_open(struct keel_conn *c)
{
	static uint8_t chunk[1 << 16];

	memset(chunk, 'g', sizeof(chunk));
	for (int i = 0; i < 512; i++)
		if (!SHARD_CHECK(keel_conn_write(c, chunk, sizeof(chunk)) >= 0))
			return;
	keel_conn_close(c);
}

static const struct keel_conn_ops greet_ops = { .on_open = greet_open,
						.on_data = lecho_data,
						.on_close = lecho_close };

/* The application's close ends the header timeout: the peer that never sent its header and
 * reads the reply late gets all of it and the FIN, and no header timeout is counted. The
 * timeout used to fire during the close's flush and abort it, cutting the reply (a reset)
 * and counting a header timeout for a connection the application had closed. The close's
 * own bound (close_timeout_ns, 30 s here) applies. */
Test(net_limits, a_close_before_the_header_ends_its_timeout)
{
	static char buf[1 << 16];
	struct keel_net_config nc;
	struct srv s;
	size_t got = 0;
	ssize_t r;
	int fd;

	lim_reset();
	keel_net_config_init(&nc);
	nc.header_timeout_ns = KEEL_MS(100);
	nc.close_timeout_ns = KEEL_S(30);
	cr_assert_eq(srv_start(&s, NULL, &nc, &greet_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	usleep(600 * 1000); /* six header timeouts, none of them the peer's to hear */
	while ((r = cli_recv(fd, buf, sizeof(buf))) > 0)
		got += (size_t)r;
	cr_assert(r == 0, "the reply ended with %s after %zu bytes", strerror(errno), got);
	cr_assert_eq(got, (size_t)512 << 16);
	/* Closed here first: the server's graceful close lingers for this end (up to
	 * close_timeout_ns, 30 s), and waiting for its on_close with the socket open held
	 * the test for all of it. */
	close(fd);
	WAIT_FOR(atomic_load(&s.closes) == 1, "the server's on_close");
	cr_assert_eq(atomic_load(&lim_hdr), 0,
		     "a header timeout was counted for a closed connection");
	cr_assert_eq(atomic_load(&lim_etimedout_closes), 0);
	cr_assert_eq(srv_stop(&s), 0);
}

/* Without close_timeout_ns, what the header timeout had left bounds the close: a peer that
 * never sends its header and never reads is still ended (-ETIMEDOUT), not held until the
 * stop, and no header timeout is counted for the closed connection. */
Test(net_limits, a_close_before_the_header_is_bounded_by_what_the_header_timeout_had_left)
{
	struct keel_net_config nc;
	struct srv s;
	uint64_t t0;
	int fd;

	lim_reset();
	keel_net_config_init(&nc);
	nc.header_timeout_ns = KEEL_MS(200);
	t0 = test_now_ms();
	cr_assert_eq(srv_start(&s, NULL, &nc, &greet_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	/* The peer reads nothing: 32 MiB never fit the sockets, so the close's flush waits. */
	WAIT_FOR(atomic_load(&s.closes) == 1, "the close ended by the header timeout's rest");
	cr_assert_geq(test_now_ms() - t0, 200, "ended before the header timeout");
	cr_assert_eq(atomic_load(&lim_etimedout_closes), 1);
	cr_assert_eq(atomic_load(&lim_hdr), 0, "counted as a header timeout");
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
}

/* The time a close is given by a header timeout a program set to UINT64_MAX (the option
 * stops at a day; keel_net_config_check lets it through): what is left, not the 1 ms floor
 * a wrapped end gave, which aborted the close with -ETIMEDOUT. */
Test(net_limits, a_header_timeout_of_uint64_max_leaves_a_close_its_time)
{
	struct keel_net_config cfg;
	struct net_lim l;

	keel_net_config_init(&cfg);
	cfg.header_timeout_ns = UINT64_MAX;
	memset(&l, 0, sizeof(l));
	l.cfg = &cfg;
	l.open_ns = KEEL_MS(5000);
	l.need = 1;
	l.listed = true;
	cr_assert_eq(keel__lim_header_end(&l, KEEL_MS(5001)), UINT64_MAX - KEEL_MS(5001));
	/* an ordinary one: what it had left */
	cfg.header_timeout_ns = KEEL_MS(100);
	l.need = 1;
	cr_assert_eq(keel__lim_header_end(&l, KEEL_MS(5040)), KEEL_MS(60));
}

/* header_bytes 0 means 1 (a first-byte timeout): a connection that sent a byte is past its
 * header and stays served when the silent one beside it is closed. */
Test(net_limits, header_bytes_zero_is_a_first_byte_timeout)
{
	struct keel_net_config nc;
	struct srv s;
	char b = 'x';
	int silent, good;

	lim_reset();
	keel_net_config_init(&nc);
	nc.header_timeout_ns = KEEL_S(1);
	nc.header_bytes = 0;
	cr_assert_eq(srv_start(&s, NULL, &nc, &lecho_ops), 0);
	good = cli_connect(s.port);
	cr_assert_geq(good, 0);
	cr_assert_eq(cli_write_all(good, &b, 1), 0);
	cr_assert_eq(cli_read_all(good, &b, 1), 0);
	silent = cli_connect(s.port);
	cr_assert_geq(silent, 0);
	expect_closed(silent, "the silent connection");
	cr_assert_eq(cli_write_all(good, &b, 1), 0);
	cr_assert_eq(cli_read_all(good, &b, 1), 0, "the connection that sent a byte was closed");
	WAIT_FOR(atomic_load(&lim_hdr) == 1, "one header timeout counted (%llu)",
		 (unsigned long long)atomic_load(&lim_hdr));
	close(silent);
	close(good);
	cr_assert_eq(srv_stop(&s), 0);
}

/* Idle timeout: a connection that exchanged data and then went quiet is closed once
 * idle_timeout_ns has passed since its last traffic, and counted. */
Test(net_limits, idle_timeout_closes_a_quiet_connection)
{
	struct keel_net_config nc;
	struct srv s;
	char b = 'i';
	uint64_t t_last;
	int fd;

	lim_reset();
	keel_net_config_init(&nc);
	nc.idle_timeout_ns = KEEL_S(1);
	cr_assert_eq(srv_start(&s, NULL, &nc, &lecho_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	/* Read before the last byte goes: the server's idle clock starts at a sweep after
	 * that traffic, never before this (+1: both clocks are truncated to ms here). */
	t_last = test_now_ms();
	cr_assert_eq(cli_write_all(fd, &b, 1), 0);
	cr_assert_eq(cli_read_all(fd, &b, 1), 0);
	expect_closed(fd, "the idle connection");
	cr_assert_geq(test_now_ms() - t_last + 1, 1000, "closed before idle_timeout_ns");
	WAIT_FOR(atomic_load(&lim_idle) == 1, "one idle timeout counted (%llu)",
		 (unsigned long long)atomic_load(&lim_idle));
	cr_assert_eq(atomic_load(&lim_hdr), 0);
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
}

/* Both timeouts set, the idle one shorter: a silent peer (its header pending) is closed by
 * the idle timeout, counted there, not left until the header timeout. */
Test(net_limits, idle_timeout_applies_while_the_header_is_pending)
{
	struct keel_net_config nc;
	struct srv s;
	int fd;

	lim_reset();
	keel_net_config_init(&nc);
	nc.header_timeout_ns = KEEL_S(600);
	nc.idle_timeout_ns = KEEL_MS(500);
	cr_assert_eq(srv_start(&s, NULL, &nc, &lecho_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	expect_closed(fd, "the silent connection");
	WAIT_FOR(atomic_load(&lim_idle) == 1, "one idle timeout counted (%llu; header %llu)",
		 (unsigned long long)atomic_load(&lim_idle),
		 (unsigned long long)atomic_load(&lim_hdr));
	cr_assert_eq(atomic_load(&lim_hdr), 0);
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
}

/* A server that answers each byte 'x' with 1 MiB (four references to the connection's
 * 256 KiB buffer: no memory per reply) and echoes a slice without one. */
static _Atomic int big_done[2];
static _Atomic int big_next;

struct big_conn {
	int idx;
	struct keel_slice blk;
};

static void
big_open(struct keel_conn *c)
{
	struct big_conn *b = calloc(1, sizeof(*b));

	if (!b || keel_buf_alloc(keel_shard_alloc(), 256u << 10, &b->blk) < 0) {
		free(b);
		keel_conn_abort(c, -ENOMEM); /* the test sees the wrong close status */
		return;
	}
	memset(b->blk.data, 'B', b->blk.len);
	b->idx = atomic_fetch_add(&big_next, 1);
	keel_conn_set_user(c, b);
}

static void
big_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct big_conn *b = keel_conn_user(c);

	for (unsigned i = 0; i < n; i++) {
		bool any = false;

		for (uint32_t k = 0; k < s[i].len; k++) {
			if (s[i].data[k] != 'x')
				continue;
			any = true;
			for (int j = 0; j < 4; j++) {
				struct keel_slice r;
				keel_slice_get(&b->blk, &r);
				if (keel_conn_send(c, &r) < 0) {
					keel_slice_put(&r);
					break;
				}
			}
			if (b->idx >= 1 && b->idx <= 2)
				atomic_fetch_add(&big_done[b->idx - 1], 1);
		}
		if (any || keel_conn_send(c, &s[i]) < 0)
			keel_slice_put(&s[i]);
	}
}

static void
big_close(struct keel_conn *c, int status)
{
	struct big_conn *b = keel_conn_user(c);

	if (b) {
		keel_slice_put(&b->blk);
		free(b);
	}
	lecho_close(c, status);
}

static const struct keel_conn_ops big_ops = { .on_open = big_open,
					      .on_data = big_data,
					      .on_close = big_close };

/* Reads (and drops) what the server had sent until it ends @fd (EOF or reset): the
 * replies queued in the kernel before the abort may still arrive first. */
static void
drain_until_closed(int fd, const char *what)
{
	static char b[1 << 16];
	size_t got = 0;

	for (;;) {
		ssize_t r = cli_recv(fd, b, sizeof(b));
		if (r == 0 || (r < 0 && errno == ECONNRESET))
			return;
		cr_assert_gt(r, 0, "%s: expected the server to close it after %zu bytes (%s)", what,
			     got, strerror(errno));
		got += (size_t)r;
	}
}

static int
reader_that_never_reads(uint16_t port)
{
	int fd = cli_connect(port), rcv = 4096;

	cr_assert_geq(fd, 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
	return fd;
}

/* send_max: a peer that never reads while its requests make replies is cut off once its
 * queue would pass send_max (-ENOBUFS, counted), instead of growing without bound; the
 * shard keeps serving another connection. */
Test(net_limits, send_max_aborts_a_connection_that_does_not_read)
{
	struct keel_net_config nc;
	struct srv s;
	char req[32];
	int fd, other;

	lim_reset();
	atomic_store(&big_next, 1);
	keel_net_config_init(&nc);
	nc.high_watermark = 64u << 20; /* no read pause: every request is answered */
	nc.send_max = 8u << 20;
	cr_assert_eq(srv_start(&s, NULL, &nc, &big_ops), 0);
	fd = reader_that_never_reads(s.port);
	memset(req, 'x', sizeof(req)); /* 32 MiB of replies, were nothing bounded */
	cr_assert_eq(cli_write_all(fd, req, sizeof(req)), 0);
	drain_until_closed(fd, "the connection that never reads");
	WAIT_FOR(atomic_load(&lim_cap_conn) == 1 && atomic_load(&lim_enobufs_closes) == 1,
		 "one send_max abort counted (%llu), closed with -ENOBUFS (%d)",
		 (unsigned long long)atomic_load(&lim_cap_conn), atomic_load(&lim_enobufs_closes));
	other = cli_connect(s.port);
	cr_assert_geq(other, 0);
	echo_once(other, 'o'); /* not 'x': echoed */
	close(other);
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
}

/* A framed send refused by send_max after its header went in (a 1 MiB frame of four
 * slices, the payload passing it): the cap says so, rate-limited (the first refusal, then
 * one in 1000), and aborts the connection. keel_frame_send added a line of its own for each
 * such connection, past every limit: three connections that never read gave three. */
static _Atomic int fs_half_lines, fs_cap_lines;

static void
fs_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)level, (void)module, (void)shard, (void)arg;
	if (strstr(msg, "half-queued"))
		atomic_fetch_add(&fs_half_lines, 1);
	if (strstr(msg, "would pass send_max"))
		atomic_fetch_add(&fs_cap_lines, 1);
}

static void
fs_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct big_conn *b = keel_conn_user(c);
	bool failed = false;

	for (unsigned i = 0; i < n; i++) {
		for (uint32_t k = 0; k < s[i].len && !failed; k++) {
			struct keel_slice f[4];

			for (int j = 0; j < 4; j++)
				keel_slice_get(&b->blk, &f[j]);
			failed = keel_frame_send(c, f, 4) < 0;
			for (int j = 0; j < 4; j++)
				if (f[j].buf)
					keel_slice_put(&f[j]);
		}
		keel_slice_put(&s[i]);
	}
}

static const struct keel_conn_ops fs_ops = { .on_open = big_open,
					     .on_data = fs_data,
					     .on_close = big_close };

Test(net_limits, framed_sends_past_send_max_log_as_the_cap_does)
{
	struct keel_net_config nc;
	struct srv s;
	char req[32];
	int fd[3];

	lim_reset();
	keel_net_config_init(&nc);
	nc.high_watermark = 64u << 20;
	nc.send_max = 8u << 20;
	keel_log_set_sink(fs_sink, NULL);
	cr_assert_eq(srv_start(&s, NULL, &nc, &fs_ops), 0);
	memset(req, 'x', sizeof(req)); /* 32 frames of 1 MiB each */
	for (int i = 0; i < 3; i++) {
		fd[i] = reader_that_never_reads(s.port);
		cr_assert_eq(cli_write_all(fd[i], req, sizeof(req)), 0);
		drain_until_closed(fd[i], "a connection that never reads");
	}
	WAIT_FOR(atomic_load(&lim_cap_conn) == 3 && atomic_load(&lim_enobufs_closes) == 3,
		 "three send_max aborts counted (%llu), closed with -ENOBUFS (%d)",
		 (unsigned long long)atomic_load(&lim_cap_conn), atomic_load(&lim_enobufs_closes));
	for (int i = 0; i < 3; i++)
		close(fd[i]);
	cr_assert_eq(srv_stop(&s), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(atomic_load(&fs_cap_lines), 1, "the cap's lines: %d",
		     atomic_load(&fs_cap_lines));
	cr_assert_eq(atomic_load(&fs_half_lines), 0, "lines of keel_frame_send's own: %d",
		     atomic_load(&fs_half_lines));
}

/* shard_send_max: two non-reading peers, each within send_max alone, pass the shard's
 * total together: the one whose send would pass it is cut off, the first keeps its queue. */
Test(net_limits, shard_send_max_aborts_the_connection_that_passes_it)
{
	struct keel_net_config nc;
	struct srv s;
	char req[16];
	int a, b, other;

	lim_reset();
	atomic_store(&big_next, 1);
	atomic_store(&big_done[0], 0);
	atomic_store(&big_done[1], 0);
	keel_net_config_init(&nc);
	nc.high_watermark = 64u << 20;
	nc.send_max = 0;
	/* The kernel takes at most a few MiB of a connection's 16 MiB (socket buffers), so
	 * the first one queues 11-16 MiB, and the two together pass 20 MiB. */
	nc.shard_send_max = 20u << 20;
	cr_assert_eq(srv_start(&s, NULL, &nc, &big_ops), 0);
	memset(req, 'x', sizeof(req));
	a = reader_that_never_reads(s.port);
	cr_assert_eq(cli_write_all(a, req, sizeof(req)), 0);
	WAIT_FOR(atomic_load(&big_done[0]) == 16, "the first connection's 16 requests answered");
	b = reader_that_never_reads(s.port);
	cr_assert_eq(cli_write_all(b, req, sizeof(req)), 0);
	drain_until_closed(b, "the connection that passed the shard's total");
	WAIT_FOR(atomic_load(&lim_cap_shard) == 1 && atomic_load(&lim_enobufs_closes) == 1,
		 "one shard_send_max abort counted (%llu), closed with -ENOBUFS (%d)",
		 (unsigned long long)atomic_load(&lim_cap_shard), atomic_load(&lim_enobufs_closes));
	cr_assert_eq(atomic_load(&lim_cap_conn), 0);
	cr_assert_eq(atomic_load(&s.closes), 1, "the first connection was kept");
	other = cli_connect(s.port);
	cr_assert_geq(other, 0);
	echo_once(other, 'o');
	close(other);
	close(a);
	close(b);
	cr_assert_eq(srv_stop(&s), 0);
	/* The last connection closed (at the stop) with its queue dropped: nothing is counted
	 * as queued on the shard any more. */
	cr_assert_eq(atomic_load(&s.closes), 3);
	cr_assert_eq(atomic_load(&lim_sendq), 0, "send_queued %llu after every close",
		     (unsigned long long)atomic_load(&lim_sendq));
}

/* The sweep's period follows the connections it times: one listener with a 2 s header
 * timeout and a 10 s idle timeout (a 0.5 s sweep while a header is pending), one with
 * only the idle timeout (2.5 s), on the same shard. Once the silent connection with a
 * pending header is gone and the other one of its listener has sent its header, the sweep
 * is back at 2.5 s. It used to stay at the shortest period it ever had for as long as any
 * timed connection was open (with a 4 ms header timeout: every long-lived connection swept
 * a thousand times a second), and to keep the header timeout in the period after the
 * header had arrived. Read on the shard (keel_net_stats' timeout_sweep_ns) when the long-lived
 * connection's byte arrives: no timing in the assertions. */
static _Atomic uint64_t sweep_seen;

static void
sweep_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct keel_net_stats st;

	if (keel_net_stats(keel_this_shard(), &st) == 0)
		atomic_store(&sweep_seen, st.timeout_sweep_ns);
	echo_ops.on_data(c, s, n);
}

static const struct keel_conn_ops sweep_ops = { .on_data = sweep_data, .on_close = lecho_close };

struct two {
	struct srv app; /* echo_ops count closes in it */
	struct keel_listener *shortl, *longl;
};

static void
two_on_start(void *arg)
{
	struct two *t = arg;
	int r = keel_listener_start(t->longl);

	if (r == 0)
		r = keel_listener_start(t->shortl);
	if (r < 0)
		keel_stop(r);
}

Test(net_limits, sweep_period_follows_the_shortest_timeout_left)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config shortc, longc;
	struct keel_listen_opts lo;
	struct keel_runtime *rt;
	struct two t = { 0 };
	int keep, talker, quick;
	char b = 'k';

	lim_reset();
	keel_net_config_init(&shortc);
	/* 2 s: the talker below has that long to send its header on a loaded machine */
	shortc.header_timeout_ns = KEEL_S(2);
	shortc.idle_timeout_ns = KEEL_S(10);
	keel_net_config_init(&longc);
	longc.idle_timeout_ns = KEEL_S(10);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	memset(&lo, 0, sizeof(lo));
	lo.addr = "127.0.0.1";
	lo.rt = rt;
	lo.net = &longc;
	cr_assert_eq(keel_listener_create(&lo, 1, &sweep_ops, &t.app, &t.longl), 0);
	lo.net = &shortc;
	cr_assert_eq(keel_listener_create(&lo, 1, &lecho_ops, &t.app, &t.shortl), 0);
	cr_assert_eq(keel_runtime_start(rt, two_on_start, &t), 0);

	keep = cli_connect(keel_listener_port(t.longl));
	cr_assert_geq(keep, 0);
	cr_assert_eq(cli_write_all(keep, &b, 1), 0);
	cr_assert_eq(cli_read_all(keep, &b, 1), 0);
	cr_assert_eq(atomic_load(&sweep_seen), KEEL_MS(2500), "a 10 s idle timeout: %llu ns",
		     (unsigned long long)atomic_load(&sweep_seen));

	talker = cli_connect(keel_listener_port(t.shortl));
	cr_assert_geq(talker, 0);
	cr_assert_eq(cli_write_all(talker, &b, 1), 0); /* its header: past it at once */
	cr_assert_eq(cli_read_all(talker, &b, 1), 0);
	quick = cli_connect(keel_listener_port(t.shortl));
	cr_assert_geq(quick, 0);
	/* While its header is pending the sweep runs at a quarter of 2 s: seen through the
	 * long listener's connection, asked until the shard has accepted the silent one. */
	/* Until TEST_WAIT_MS (a fixed 1.5 s failed a shard that accepted late; the 500 ms
	 * period lasts the 2 s after the accept, and the loop ends when it is seen). */
	for (uint64_t dl = test_deadline(TEST_WAIT_MS);
	     atomic_load(&sweep_seen) != KEEL_MS(500) && !test_expired(dl);) {
		cr_assert_eq(cli_write_all(keep, &b, 1), 0);
		cr_assert_eq(cli_read_all(keep, &b, 1), 0);
		if (atomic_load(&sweep_seen) != KEEL_MS(500))
			usleep(5000);
	}
	cr_assert_eq(atomic_load(&sweep_seen), KEEL_MS(500),
		     "the sweep ran at %llu ns while a 2 s header timeout was pending",
		     (unsigned long long)atomic_load(&sweep_seen));
	expect_closed(quick, "the silent connection with a 2 s header timeout");
	WAIT_FOR(atomic_load(&lim_hdr) == 1, "one header timeout counted (%llu)",
		 (unsigned long long)atomic_load(&lim_hdr));
	close(quick);

	cr_assert_eq(cli_write_all(keep, &b, 1), 0);
	cr_assert_eq(cli_read_all(keep, &b, 1), 0);
	cr_assert_eq(atomic_load(&sweep_seen), KEEL_MS(2500),
		     "the sweep stayed at %llu ns after the pending header went",
		     (unsigned long long)atomic_load(&sweep_seen));
	close(talker);
	close(keep);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_listener_destroy(t.shortl);
	keel_listener_destroy(t.longl);
}

/* ---- the descriptor limit and the direct-descriptor table ---- */

/* The kernel refuses a registered file table larger than RLIMIT_NOFILE's soft limit, often
 * 1,024 where the table's default is 4,096; liburing then raised the soft limit by the
 * table's size, unsaid, and with a hard limit below that sum the server failed to start,
 * saying to turn direct descriptors off. The soft limit is now raised to the hard one,
 * said; a hard limit below the table is refused naming ulimit and --max-files. Each case
 * in a child: it changes the process's limits. */
static _Atomic int nofile_said;

static void
nofile_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)level;
	(void)module;
	(void)shard;
	(void)arg;
	if (strstr(msg, "hard limit is 1000: raise it (ulimit -Hn") && strstr(msg, "--max-files"))
		atomic_store(&nofile_said, 1);
}

static int
nofile_child(bool hard_too)
{
	struct keel_net_config nc;
	struct rlimit rl;
	struct srv s;
	char b[5];
	int fd, r;

	keel_net_config_init(&nc);
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 10;
	rl.rlim_cur = 1000;
	if (hard_too)
		rl.rlim_max = 1000;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 11;
	keel_log_set_sink(nofile_sink, NULL);
	if (srv_start(&s, NULL, &nc, NULL) < 0)
		return 12;
	/* on_start has run (the listener's start, and its keel_stop on failure): else the
	 * stop below may come first and its status 0 win. */
	for (uint64_t dl = test_deadline(TEST_WAIT_MS); atomic_load(&s.started) < 1;) {
		if (test_expired(dl))
			return 18;
		test_pause();
	}
	if (hard_too) {
		r = srv_stop(&s);
		if (r != -EMFILE) {
			fprintf(stderr, "a table above the hard limit: %d, want -EMFILE\n", r);
			return 13;
		}
		return atomic_load(&nofile_said) ? 0 : 14;
	}
	fd = cli_connect(s.port);
	if (fd < 0 || cli_write_all(fd, "hello", 5) < 0 || cli_read_all(fd, b, 5) < 0 ||
	    memcmp(b, "hello", 5))
		return 15;
	close(fd);
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur != rl.rlim_max)
		return 16;
	return srv_stop(&s) == 0 ? 0 : 17;
}

static int
nofile_soft_child(void)
{
	return nofile_child(false);
}

static int
nofile_hard_child(void)
{
	return nofile_child(true);
}

static void
nofile_child_run(int (*child)(void), bool needs_hard)
{
	struct rlimit rl;

	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (needs_hard && rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 4096)
		cr_skip_test("the hard descriptor limit %llu is below the table's %u",
			     (unsigned long long)rl.rlim_max, 4096u);
	run_in_child(child);
}

static void
nofile_run(bool hard_too)
{
	nofile_child_run(hard_too ? nofile_hard_child : nofile_soft_child, !hard_too);
}

Test(net_limits, a_soft_descriptor_limit_below_the_file_table_is_raised)
{
	nofile_run(false);
}

Test(net_limits, a_hard_descriptor_limit_below_the_file_table_is_refused_naming_the_fix)
{
	nofile_run(true);
}

/* The soft limit keel raised for its tables is put back at the last runtime's destroy,
 * where it still holds the value keel set and no descriptor is open at or above the old
 * one: it stayed raised for the rest of the process, and for the children it spawned
 * (select()'s FD_SET cannot hold a descriptor past 1,023). */
static char nofile_left[512];

static void
nofile_left_sink(enum keel_log_level level, const char *module, int shard, const char *msg,
		 void *arg)
{
	(void)module;
	(void)shard;
	(void)arg;
	if (level == KEEL_LOG_WARN && strstr(msg, "descriptor limit") && !nofile_left[0])
		snprintf(nofile_left, sizeof(nofile_left), "%s", msg);
}

/* Soft limit 1000, then a server of one shard started: its table raised the limit. */
static int
nofile_low_start(struct srv *s, struct rlimit *before)
{
	struct keel_net_config nc;
	struct rlimit rl;

	keel_net_config_init(&nc);
	if (getrlimit(RLIMIT_NOFILE, before) < 0)
		return 10;
	before->rlim_cur = 1000;
	if (setrlimit(RLIMIT_NOFILE, before) < 0)
		return 11;
	keel_log_set_sink(nofile_left_sink, NULL);
	if (srv_start(s, NULL, &nc, NULL) < 0)
		return 12;
	for (uint64_t dl = test_deadline(TEST_WAIT_MS); atomic_load(&s->started) < 1;) {
		if (test_expired(dl))
			return 13;
		test_pause();
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur != rl.rlim_max) {
		fprintf(stderr, "soft limit %llu while the server runs, not raised\n",
			(unsigned long long)rl.rlim_cur);
		return 14;
	}
	return 0;
}

static int
nofile_same(const struct rlimit *want, const char *when)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 1;
	if (rl.rlim_cur != want->rlim_cur || rl.rlim_max != want->rlim_max) {
		fprintf(stderr, "%s: descriptor limit %llu (hard %llu), want %llu (hard %llu)\n",
			when, (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
			(unsigned long long)want->rlim_cur, (unsigned long long)want->rlim_max);
		return 1;
	}
	return 0;
}

static int
nofile_restore_child(void)
{
	struct rlimit before, raised;
	struct srv a, b;
	int r = nofile_low_start(&a, &before);

	if (r)
		return r;
	if (srv_start(&b, NULL, NULL, NULL) < 0) /* a second runtime, alive across a's end */
		return 20;
	if (getrlimit(RLIMIT_NOFILE, &raised) < 0 || srv_stop(&a) != 0)
		return 21;
	if (nofile_same(&raised, "after the first of two runtimes was destroyed"))
		return 22;
	if (srv_stop(&b) != 0)
		return 23;
	if (nofile_same(&before, "after the last runtime was destroyed"))
		return 24;
	return nofile_left[0] ? 25 : 0;
}

Test(net_limits, the_soft_descriptor_limit_is_put_back_at_the_last_runtimes_destroy)
{
	nofile_child_run(nofile_restore_child, true);
}

/* A descriptor the process opened at or above the old soft limit while it was raised (1500
 * here): the limit is left raised, never below a descriptor in use, and a WARN line says
 * so, naming the descriptor and both limits. */
static int
nofile_above_child(void)
{
	struct rlimit before, raised;
	struct srv s;
	int r = nofile_low_start(&s, &before);

	if (r)
		return r;
	if (getrlimit(RLIMIT_NOFILE, &raised) < 0 || dup2(2, 1500) != 1500)
		return 20;
	if (srv_stop(&s) != 0)
		return 21;
	if (nofile_same(&raised, "with descriptor 1500 open"))
		return 22;
	if (!strstr(nofile_left, "descriptor 1500") || !strstr(nofile_left, "1000")) {
		fprintf(stderr, "WARN line: '%s'\n", nofile_left);
		return 23;
	}
	close(1500);
	return 0;
}

Test(net_limits, the_soft_descriptor_limit_stays_raised_above_a_descriptor_in_use)
{
	nofile_child_run(nofile_above_child, true);
}

/* /proc/self/fd refused with EPERM (a seccomp filter's errno, or a security module's): the
 * open descriptors cannot be known, so the limit stays, said. highest_fd returned -errno
 * and -1 for "none open", and -EPERM is -1: the limit was put back under descriptor 1500. */
static int
nofile_eperm_child(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
	struct rlimit before, raised;
	struct srv s;
	int r = nofile_low_start(&s, &before);

	if (r)
		return r;
	if (getrlimit(RLIMIT_NOFILE, &raised) < 0 || dup2(2, 1500) != 1500)
		return 20;
	/* This thread's opens fail from here: the destroy's look at /proc/self/fd too. */
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
		return 21;
	if (srv_stop(&s) != 0)
		return 22;
	if (nofile_same(&raised, "with /proc/self/fd refused (EPERM) and descriptor 1500 open"))
		return 23;
	if (!strstr(nofile_left, "/proc/self/fd")) {
		fprintf(stderr, "WARN line: '%s'\n", nofile_left);
		return 24;
	}
	close(1500);
	return 0;
}

Test(net_limits, the_soft_descriptor_limit_stays_raised_where_proc_refuses_with_eperm)
{
	nofile_child_run(nofile_eperm_child, true);
}

/* A limit the host set itself while the runtime ran is the host's: left as it is. */
static int
nofile_host_child(void)
{
	struct rlimit before, mine;
	struct srv s;
	int r = nofile_low_start(&s, &before);

	if (r)
		return r;
	mine = before;
	mine.rlim_cur = 2000;
	if (setrlimit(RLIMIT_NOFILE, &mine) < 0)
		return 20;
	if (srv_stop(&s) != 0)
		return 21;
	if (nofile_same(&mine, "after the host set 2000 itself"))
		return 22;
	return nofile_left[0] ? 23 : 0;
}

Test(net_limits, a_soft_descriptor_limit_the_host_set_meanwhile_is_left_as_it_is)
{
	nofile_child_run(nofile_host_child, true);
}

/* ---- accept failures for want of descriptors: the log names the limit that was hit ---- */

/* keel__accept_error_hint: EMFILE is the process's descriptor limit (ulimit -n); ENFILE
 * with plain descriptors the system's (fs.file-max); ENFILE in direct mode the
 * direct-descriptor table (--max-files, or the application's own direct descriptors). No
 * hint names a limit of the other mode, and other errors have none. */
Test(net_limits, the_accept_failure_hint_follows_the_error_and_the_descriptor_mode)
{
	const char *emfile = keel__accept_error_hint(-EMFILE, false);
	const char *enfile = keel__accept_error_hint(-ENFILE, false);
	const char *table = keel__accept_error_hint(-ENFILE, true);

	cr_assert(strstr(emfile, "ulimit -n") && !strstr(emfile, "max-files") &&
			  !strstr(emfile, "file-max"),
		  "EMFILE: '%s'", emfile);
	cr_assert_str_eq(keel__accept_error_hint(-EMFILE, true), emfile);
	cr_assert(strstr(enfile, "fs.file-max") && !strstr(enfile, "ulimit") &&
			  !strstr(enfile, "max-files"),
		  "ENFILE, plain: '%s'", enfile);
	cr_assert(strstr(table, "--max-files") && strstr(table, "direct") &&
			  !strstr(table, "ulimit"),
		  "ENFILE, direct: '%s'", table);
}

/* Every other failure that pauses accepting says where to look too: ENOMEM and ENOBUFS the
 * kernel's memory (they had no hint: "accept failed: Cannot allocate memory; pausing
 * 100 ms", nothing to check); the rest a line naming accept(2) and the kernel log, and one
 * connection's errors, 16 in a row, the network and the clients. */
Test(net_limits, an_accept_failure_for_want_of_memory_names_the_kernels_memory)
{
	int mem[] = { -ENOMEM, -ENOBUFS };

	for (unsigned i = 0; i < 2; i++)
		for (int direct = 0; direct < 2; direct++) {
			const char *h = keel__accept_error_hint(mem[i], direct);

			cr_assert(strstr(h, "dmesg") && strstr(h, "net.ipv4.tcp_mem") &&
					  strstr(h, "net.core.rmem_max") && !strstr(h, "ulimit"),
				  "%s: '%s'", strerror(-mem[i]), h);
		}
	cr_assert(strstr(keel__accept_error_hint(-EPERM, false), "accept(2)") &&
			  strstr(keel__accept_error_hint(-EPERM, true), "dmesg"),
		  "EPERM: '%s'", keel__accept_error_hint(-EPERM, false));
	cr_assert(strstr(keel__accept_error_hint(-ECONNABORTED, true), "16 connections in a row"),
		  "ECONNABORTED: '%s'", keel__accept_error_hint(-ECONNABORTED, true));
}

/* The first "accept failed" line of the run (any shard), kept for the test to read. */
static char accept_log[512];
static _Atomic int accept_logged;

static void
accept_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)level;
	(void)module;
	(void)shard;
	(void)arg;
	if (strstr(msg, "accept failed") && !atomic_load(&accept_logged)) {
		snprintf(accept_log, sizeof(accept_log), "%s", msg);
		atomic_store(&accept_logged, 1);
	}
}

/* Plain descriptors, the process out of them while four clients connect: each accept fails
 * with EMFILE, and the line says to raise ulimit -n, naming no direct-descriptor table
 * (there is none). Once the descriptors are freed, the accepts that follow the back-off
 * take the four waiting clients and serve them. In a child: it takes every descriptor of
 * the process (its soft limit lowered to 256). */
static int
plain_emfile_child(void)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config nc;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct rlimit rl;
	struct srv s;
	enum { K = 4 };
	int cl[K], dups[256], ndup = 0;

	net_test_feature(&o, "direct_fd=off");
	keel_net_config_init(&nc);
	nc.max_files = 64; /* below the soft limit: it stays */
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 10;
	rl.rlim_cur = 256;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 11;
	keel_log_set_sink(accept_sink, NULL);
	if (srv_start(&s, &o, &nc, NULL) < 0)
		return 12;
	for (uint64_t dl = test_deadline(TEST_WAIT_MS); atomic_load(&s.started) < 1;) {
		if (test_expired(dl))
			return 13;
		test_pause();
	}
	for (int i = 0; i < K; i++)
		if ((cl[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
			return 14;
	for (int d; ndup < 256 && (d = dup(0)) >= 0;)
		dups[ndup++] = d;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons(s.port);
	for (int i = 0; i < K; i++)
		if (connect(cl[i], (struct sockaddr *)&sa, sizeof(sa)) < 0)
			return 15;
	for (uint64_t dl = test_deadline(TEST_WAIT_MS); !atomic_load(&accept_logged);) {
		if (test_expired(dl))
			return 16;
		test_pause();
	}
	/* Only the copies (the runtime's own descriptors are among the lower numbers). */
	for (int i = 0; i < ndup; i++)
		close(dups[i]);
	for (int i = 0; i < K; i++) {
		char b = (char)('a' + i);

		if (cli_write_all(cl[i], &b, 1) < 0 || cli_read_all(cl[i], &b, 1) < 0 ||
		    b != 'a' + i)
			return 17;
		close(cl[i]);
	}
	if (srv_stop(&s) != 0)
		return 18;
	if (!strstr(accept_log, strerror(EMFILE)) || !strstr(accept_log, "ulimit -n") ||
	    strstr(accept_log, "max_files") || strstr(accept_log, "max-files") ||
	    strstr(accept_log, "direct")) {
		fprintf(stderr, "the accept failure's line: '%s'\n", accept_log);
		return 19;
	}
	return 0;
}

Test(net_limits, plain_descriptors_out_of_descriptors_say_ulimit_and_accept_again_after)
{
	run_in_child(plain_emfile_child);
}

/* Direct descriptors: the table's slots all taken behind keel's back (registered on the
 * shard's ring by the application, which keel_file_direct_slots does not count), so keel
 * counts room and arms an accept, whose install finds no slot: ENFILE. The line names the
 * table (--max-files, the application's own direct descriptors), not ulimit. Once the slots
 * are freed, the accept after the back-off serves the next client. */
#define TAKEN_SLOTS 16u

static void
take_slots(struct keel_xreq *req)
{
	int fds[TAKEN_SLOTS], r, n = 0;

	for (unsigned i = 0; i < TAKEN_SLOTS; i++) {
		fds[i] = -1;
		if (*(bool *)req->arg && (fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
			n++;
	}
	r = n == (*(bool *)req->arg ? (int)TAKEN_SLOTS : 0)
		    ? io_uring_register_files_update(keel_shard_ring_get(), 0, fds, TAKEN_SLOTS)
		    : -EMFILE;
	for (unsigned i = 0; i < TAKEN_SLOTS; i++)
		if (fds[i] >= 0)
			close(fds[i]); /* the table holds its own reference */
	keel_xreq_complete(req, r);
}

Test(net_limits, a_full_direct_table_keel_did_not_count_says_max_files)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config nc;
	struct srv s;
	bool take = true;
	char b = 'x';
	int fd, r;

	keel_net_config_init(&nc);
	nc.max_files = TAKEN_SLOTS;
	atomic_store(&accept_logged, 0);
	accept_log[0] = 0;
	keel_log_set_sink(accept_sink, NULL);
	cr_assert_eq(srv_start(&s, &o, &nc, NULL), 0);
	WAIT_FOR(atomic_load(&s.started) == 1, "the listener's start");
	if (rt_feature_used(s.rt, 0, KEEL_FEAT_DIRECT_FD) != 1) {
		srv_stop(&s);
		keel_log_set_sink(NULL, NULL);
		cr_skip_test("no direct descriptors on this kernel");
	}
	r = rt_run_on(s.rt, 0, take_slots, &take);
	cr_assert_eq(r, (int)TAKEN_SLOTS, "taking the table's slots: %d", r);
	fd = cli_connect(s.port); /* the kernel's handshake; keel's accept fails */
	cr_assert_geq(fd, 0);
	WAIT_FOR(atomic_load(&accept_logged), "the accept failure's line");
	close(fd);
	take = false;
	r = rt_run_on(s.rt, 0, take_slots, &take);
	cr_assert_eq(r, (int)TAKEN_SLOTS, "freeing the table's slots: %d", r);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	cr_assert_eq(cli_write_all(fd, &b, 1), 0);
	cr_assert_eq(cli_read_all(fd, &b, 1), 0);
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(accept_log, strerror(ENFILE)) && strstr(accept_log, "--max-files") &&
			  !strstr(accept_log, "ulimit"),
		  "the accept failure's line: '%s'", accept_log);
}

/* A shard with at least as many listeners as direct-descriptor slots: each armed accept
 * holds a slot, so the listeners past max_files wait with no connection open at all. Said
 * at keel_listener_start, naming --max-files, once the shard's count reaches max_files (two
 * listeners on a table of two); not for the first. */
static _Atomic int many_said, many_said_early;
static _Atomic int many_started;

static void
many_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module;
	(void)shard;
	(void)arg;
	if (level == KEEL_LOG_WARN && strstr(msg, "listeners") && strstr(msg, "--max-files")) {
		if (atomic_load(&many_started) < 1)
			atomic_store(&many_said_early, 1);
		else if (strstr(msg, "2 listeners"))
			atomic_store(&many_said, 1);
	}
}

static void
two_listeners_start(void *arg)
{
	struct keel_listener **ls = arg;

	for (int i = 0; i < 2; i++) {
		int r = keel_listener_start(ls[i]);

		if (!SHARD_CHECK_EQ(r, 0)) {
			keel_stop(r);
			return;
		}
		atomic_fetch_add(&many_started, 1);
	}
}

Test(net_limits, as_many_listeners_as_direct_slots_on_a_shard_is_said)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config nc;
	struct keel_listen_opts lo = { .addr = "127.0.0.1" };
	struct keel_listener *ls[2];
	struct keel_runtime *rt;
	struct srv sv = { 0 };

	keel_net_config_init(&nc);
	nc.max_files = 2;
	cr_assert_eq(keel_net_config_set(&nc), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	lo.rt = rt;
	for (int i = 0; i < 2; i++)
		cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, &sv, &ls[i]), 0);
	keel_log_set_sink(many_sink, NULL);
	cr_assert_eq(keel_runtime_start(rt, two_listeners_start, ls), 0);
	WAIT_FOR(atomic_load(&many_started) == 2, "both listeners' start");
	if (rt_feature_used(rt, 0, KEEL_FEAT_DIRECT_FD) != 1) {
		keel_runtime_stop(rt, 0);
		keel_runtime_join(rt);
		keel_log_set_sink(NULL, NULL);
		keel_runtime_destroy(rt);
		cr_skip_test("no direct descriptors on this kernel");
	}
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	for (int i = 0; i < 2; i++)
		keel_listener_destroy(ls[i]);
	keel_net_config_init(&nc);
	cr_assert_eq(keel_net_config_set(&nc), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_not(atomic_load(&many_said_early), "said at the first listener's start");
	cr_assert(atomic_load(&many_said), "two listeners on a table of two: not said");
}

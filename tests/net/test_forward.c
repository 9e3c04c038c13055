// SPDX-License-Identifier: MIT
/*
 * Received frames handed to another shard and back without copying (keel_slice_export,
 * keel-echo --forward's code): every byte checked, every buffer back home at the end.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <keel/faults.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../apps/echo/forward.h"
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

/* A queue of 16 messages between the shards and no overflow list: frames meet -EAGAIN all
 * the time. keel-echo --forward then holds them on the connection, stops reading it and
 * sends them when keel_msg_wait_room() says there is room: every byte still comes back. */
Test(net_forward, a_full_queue_between_shards_delays_frames_and_loses_none, .timeout = 600)
{
	struct fwd_cfg cfg = {
		.shards = 2,
		.conns = 16,
		.bytes = 4ull << 20,
		.max_frame = 16u << 10,
		.window = 1u << 20,
		.buf_count = 2048,
		.buf_size = 16384,
		.seconds = 400,
		.mailbox_entries = 16,
		.mailbox_overflow = 0,
	};
	struct fwd_result res;
	int r;

	if (test_small())
		cfg.bytes = 1ull << 20;
	r = fwd_run(&cfg, &res);
	check(&cfg, &res, r);
	cr_assert_gt(res.bytes_checked, cfg.conns * cfg.bytes,
		     "every payload byte and header came back");
	cr_assert_gt(res.end[0].frames_waited + res.end[1].frames_waited, 0,
		     "no frame met a full queue: the test did not test the wait");
}

extern char **environ;

/* The done-when check: the keel-echo binary itself, 2 shards, --forward; 32 clients of
 * 4 MiB each (frames of 1 B..256 KiB), every byte checked; then SIGTERM, exit status 0. */
Test(net_forward, keel_echo_forward_echoes_32_clients_of_4_MiB_intact, .timeout = 600)
{
	struct fwd_cfg cfg = {
		.conns = 32,
		.bytes = 4ull << 20,
		.max_frame = 256u << 10,
		.window = 1u << 20,
		.seconds = 400,
	};
	char logpath[] = "/tmp/keel-echo-forward-XXXXXX";
	/* 64 MiB of receive buffers per shard: twice the 32 x 1 MiB the clients may have in
	 * flight, so partial frames never pin them all. */
	char *argv[] = { KEEL_BIN_DIR "/keel-echo",
			 "--addr",
			 "127.0.0.1",
			 "--port",
			 "0",
			 "--forward",
			 "--shards",
			 "2",
			 "--steer",
			 "hash",
			 "--idle-poll-us",
			 "0",
			 "--buf-count",
			 "4096",
			 "--stats",
			 NULL };
	posix_spawn_file_actions_t fa;
	struct fwd_result res;
	static char text[1 << 16];
	unsigned port = 0;
	int fd, status, r;
	pid_t pid;

	if (test_small())
		cfg.bytes = 1ull << 20;
	fd = mkstemp(logpath);
	cr_assert_geq(fd, 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fd, 2);
	cr_assert_eq(posix_spawn(&pid, argv[0], &fa, NULL, argv, environ), 0, "spawn %s", argv[0]);
	posix_spawn_file_actions_destroy(&fa);
	for (int i = 0; i < 3000 && !port; i++) { /* 30 s */
		ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
		const char *p;
		text[n > 0 ? n : 0] = 0;
		p = strstr(text, " port ");
		if (p && strstr(text, "forwarding frames"))
			sscanf(p, " port %u", &port);
		if (!port)
			usleep(10000);
	}
	if (!port) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		cr_assert_fail("keel-echo --forward did not say it listens within 30 s: %s", text);
	}
	memset(&res, 0, sizeof(res));
	r = fwd_clients(&cfg, (uint16_t)port, &res);
	kill(pid, SIGTERM);
	waitpid(pid, &status, 0);
	{
		ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
		text[n > 0 ? n : 0] = 0;
	}
	close(fd);
	unlink(logpath);
	cr_assert_eq(r, 0, "%s; keel-echo said: %s", res.err, text);
	cr_log_info("keel-echo --forward: %llu frames, %llu bytes checked",
		    (unsigned long long)res.frames_sent, (unsigned long long)res.bytes_checked);
	cr_assert_eq(res.bytes_checked, cfg.conns * cfg.bytes + 4 * res.frames_sent,
		     "every frame came back whole");
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "keel-echo exit status 0x%x after SIGTERM: %s", status, text);
	/* Frames did cross shards, both ways: each shard's memory line (at its stop) counts
	 * slices that came back from the other. With the next shard made the home one, the
	 * echo above came back just as whole. */
	for (unsigned sh = 0; sh < 2; sh++) {
		char want[48];
		const char *p, *q;
		unsigned long long back = 0;

		snprintf(want, sizeof(want), "shard %u memory: ", sh);
		p = strstr(text, want);
		q = p ? strstr(p, " returned from other shards") : NULL;
		cr_assert(q, "no memory line for shard %u: %s", sh, text);
		while (q > p && q[-1] >= '0' && q[-1] <= '9')
			q--;
		back = strtoull(q, NULL, 10);
		cr_assert_gt(back, 0, "shard %u had no slice back from another shard: %s", sh,
			     text);
	}
}

/* ---- frames away count towards the connection's watermark ---- */

struct away_srv {
	struct keel_listener *l;
	_Atomic unsigned started;
	_Atomic int blocked, release;
};

static void
away_start(void *arg)
{
	struct away_srv *s = arg;

	if (keel_listener_start(s->l) < 0)
		keel_stop(-EIO);
	atomic_fetch_add(&s->started, 1);
}

/* Holds its shard until the test releases it: frames sent to it wait in its queue. */
static void
away_block(struct keel_xreq *req)
{
	struct away_srv *s = req->arg;
	struct timespec ts = { 0, 1000000 };

	atomic_store(&s->blocked, 1);
	while (!atomic_load(&s->release))
		nanosleep(&ts, NULL);
	keel_xreq_complete(req, 0);
}

/* A two-shard forwarding echo and one client connection on it. */
struct away_env {
	struct away_srv srv;
	struct keel_runtime *rt;
	struct keel_xreq block;
	unsigned home; /* the connection's shard */
	int fd;
};

/* Non-zero: the shards' mailbox_entries, with mailbox_overflow 0. */
static uint32_t away_mailbox;
/* Non-NULL: the listener's callbacks (wrapping echo_fwd_ops), else echo_fwd_ops. */
static const struct keel_conn_ops *away_ops;

/* Starts the echo with @nc and connects; returns once the connection is open. */
static void
away_open(struct away_env *e, const struct keel_net_config *nc)
{
	struct keel_opts o;
	struct keel_listen_opts lo = { .addr = "127.0.0.1", .steer = KEEL_STEER_HASH };
	struct sockaddr_in a = { .sin_family = AF_INET };
	struct echo_fwd_stats st;

	memset(e, 0, sizeof(*e));
	e->home = 2;
	keel_opts_init(&o);
	o.shards = 2;
	o.signals = false;
	o.idle_poll_us = 0;
	o.memory = 192ull << 20;
	if (away_mailbox) { /* a small queue between the shards, no overflow */
		o.mailbox_entries = away_mailbox;
		o.mailbox_overflow = 0;
	}
	cr_assert_eq(keel_net_config_set(nc), 0);
	cr_assert_eq(keel_runtime_create(&o, &e->rt), 0);
	lo.rt = e->rt;
	cr_assert_eq(keel_listener_create(&lo, 2, away_ops ? away_ops : &echo_fwd_ops, &e->srv,
					  &e->srv.l),
		     0);
	cr_assert_eq(keel_runtime_start(e->rt, away_start, &e->srv), 0);
	WAIT_FOR(atomic_load(&e->srv.started) == 2, "both shards to listen");
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons(keel_listener_port(e->srv.l));
	e->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(connect(e->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	for (uint64_t dl = test_deadline(TEST_WAIT_MS); e->home == 2; test_pause()) {
		cr_assert(!test_expired(dl), "the connection did not open on a shard");
		for (unsigned i = 0; i < 2; i++) {
			echo_fwd_stats(i, &st);
			if (st.conns_live)
				e->home = i;
		}
	}
}

/* Holds the shard the connection's frames go to, until srv.release. */
static void
away_hold(struct away_env *e)
{
	e->block = (struct keel_xreq){ .fn = away_block, .arg = &e->srv };
	cr_assert_eq(keel_runtime_submit(e->rt, 1 - e->home, &e->block), 0);
	WAIT_FOR(atomic_load(&e->srv.blocked), "the other shard to be held");
}

/* Reads @n echoed bytes of @frame (repeated) from @fd and checks each. */
static void
read_echo(int fd, const uint8_t *frame, size_t flen, uint64_t n)
{
	static uint8_t in[65536];
	struct timeval tv = { .tv_sec = TEST_WAIT_MS / 1000 };
	uint64_t got = 0;

	fcntl(fd, F_SETFL, 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	while (got < n) {
		ssize_t r = recv(fd, in, sizeof(in), 0);

		if (r < 0 && errno == EINTR) /* a signal to the test process: read on */
			continue;
		cr_assert_gt(r, 0, "after %llu of %llu bytes: %s", (unsigned long long)got,
			     (unsigned long long)n, r ? strerror(errno) : "EOF");
		for (ssize_t k = 0; k < r; k++, got++)
			cr_assert_eq(in[k], frame[got % flen], "byte %llu",
				     (unsigned long long)got);
	}
}

/* One byte (or the end) from @fd, read on through signals: the socket has SO_RCVTIMEO, so a
 * signal to the test process ends a blocking recv() with EINTR rather than restarting it. */
static ssize_t
recv_byte(int fd, uint8_t *c)
{
	ssize_t r;

	do
		r = recv(fd, c, 1, 0);
	while (r < 0 && errno == EINTR);
	return r;
}

static void
away_end(struct away_env *e)
{
	close(e->fd);
	keel_runtime_stop(e->rt, 0);
	cr_assert_eq(keel_runtime_join(e->rt), 0);
	keel_runtime_destroy(e->rt);
	keel_listener_destroy(e->srv.l);
	echo_fwd_fini();
}

/* A client that sends 16 KiB frames and does not read, while the shard its frames go to
 * is held: frames away pile up at the connection's shard. Reading must pause once they
 * pass the high watermark (1 MiB), as it does for replies queued; without that the shard
 * read until its 16 MiB of receive buffers were all away, and when they came back their
 * echoes passed send_max (8 MiB here) and the connection was aborted. Every byte must
 * come back once the shard is released. */
Test(net_forward, frames_away_pause_reading_at_the_high_watermark, .timeout = 120)
{
	static uint8_t frame[4 + 16384];
	struct away_env e;
	struct keel_net_config nc;
	struct echo_fwd_stats st;
	struct pollfd pfd;
	uint64_t sent = 0;

	keel_net_config_init(&nc);
	nc.buf_count = 1024; /* 16 MiB of receive buffers */
	nc.bulk_buf_size = 0;
	nc.send_max = 8u << 20;
	away_open(&e, &nc);
	away_hold(&e);
	frame[2] = 0x40; /* a length of 16,384, big-endian */
	for (size_t i = 4; i < sizeof(frame); i++)
		frame[i] = (uint8_t)(i * 7);
	/* Send until the server stops reading (300 ms with no room) once it paused for the
	 * bytes away, or 40 MiB; or, when it never pauses for them, until the deadline. */
	fcntl(e.fd, F_SETFL, O_NONBLOCK);
	pfd = (struct pollfd){ .fd = e.fd, .events = POLLOUT };
	for (uint64_t dl = test_deadline(TEST_WAIT_MS); sent < (40u << 20);) {
		ssize_t w = send(e.fd, frame + sent % sizeof(frame),
				 sizeof(frame) - sent % sizeof(frame), MSG_NOSIGNAL);
		if (w > 0) {
			sent += (uint64_t)w;
			continue;
		}
		cr_assert(errno == EAGAIN, "send: %s", strerror(errno));
		if (poll(&pfd, 1, 300) > 0)
			continue;
		echo_fwd_stats(e.home, &st);
		if (st.away_holds || test_expired(dl))
			break;
	}
	echo_fwd_stats(e.home, &st);
	atomic_store(&e.srv.release, 1);
	cr_assert_leq(st.away_peak, 4u << 20,
		      "%llu bytes of frames away from one connection (the high watermark is 1 "
		      "MiB); %llu sent",
		      (unsigned long long)st.away_peak, (unsigned long long)sent);
	cr_assert_geq(st.away_holds, 1);
	/* Finish the last frame, then read every byte back. */
	fcntl(e.fd, F_SETFL, 0);
	while (sent % sizeof(frame)) {
		ssize_t w = send(e.fd, frame + sent % sizeof(frame),
				 sizeof(frame) - sent % sizeof(frame), MSG_NOSIGNAL);
		cr_assert_gt(w, 0, "send: %s", strerror(errno));
		sent += (uint64_t)w;
	}
	read_echo(e.fd, frame, sizeof(frame), sent);
	away_end(&e);
}

/* A LEN32 frame of 1,024 payload bytes (4 + 1,024 in all), its bytes a pattern. */
static void
frame_1k(uint8_t *frame)
{
	memset(frame, 0, 4);
	frame[2] = 0x04; /* a length of 1,024, big-endian */
	for (size_t i = 4; i < 4 + 1024; i++)
		frame[i] = (uint8_t)(i * 13);
}

/* A client that half-closes inside a frame (a whole frame, then 7 bytes of one announced as
 * 1,024): the whole one is echoed, the server closes, and the truncated one is counted in
 * errors and frames_cut. It was dropped without a word, the close a clean one; then it was
 * counted in frames_dropped, not being among frames_in, so that received = echoed + dropped
 * no longer held (a review). */
Test(net_forward, a_half_close_inside_a_frame_is_counted_not_passed_over, .timeout = 120)
{
	static uint8_t frame[4 + 1024], part[4 + 7];
	struct away_env e;
	struct keel_net_config nc;
	struct echo_fwd_stats st;
	ssize_t r;
	uint8_t c;

	keel_net_config_init(&nc);
	away_open(&e, &nc);
	frame_1k(frame);
	memcpy(part, frame, sizeof(part));
	cr_assert_eq(send(e.fd, frame, sizeof(frame), MSG_NOSIGNAL), (ssize_t)sizeof(frame));
	cr_assert_eq(send(e.fd, part, sizeof(part), MSG_NOSIGNAL), (ssize_t)sizeof(part));
	WAIT_FOR((echo_fwd_stats(e.home, &st), st.frames_in == 1), "the whole frame to arrive");
	cr_assert_eq(shutdown(e.fd, SHUT_WR), 0);
	read_echo(e.fd, frame, sizeof(frame), sizeof(frame));
	r = recv_byte(e.fd, &c);
	cr_assert_eq(r, 0, "the server's FIN after the echo: recv gave %zd (%s)", r,
		     r < 0 ? strerror(errno) : "a byte past the echo");
	WAIT_FOR((echo_fwd_stats(e.home, &st), st.conns_live == 0), "the connection to close");
	cr_assert_eq(st.frames_in, 1);
	cr_assert_eq(st.frames_out, 1);
	cr_assert_eq(st.frames_cut, 1, "the truncated frame was not counted");
	cr_assert_eq(st.frames_dropped, 0, "a frame never whole counted as a dropped one");
	cr_assert_eq(st.errors, 1);
	away_end(&e);
}

/* A frame back from the other shard that its connection cannot take: 4 KiB of echo where
 * send_max is 1 KiB, so keel_frame_send() refuses it (-ENOBUFS) and the connection is
 * aborted. That is a failed send: counted in errors, and the frame in frames_dropped. */
Test(net_forward, a_frame_its_connection_cannot_queue_is_counted_in_errors, .timeout = 120)
{
	static uint8_t frame[4 + 4096];
	struct away_env e;
	struct keel_net_config nc;
	struct echo_fwd_stats st, other;
	struct timeval tv = { .tv_sec = TEST_WAIT_MS / 1000 };
	ssize_t r;
	uint8_t c;

	keel_net_config_init(&nc);
	nc.send_max = 1024;
	away_open(&e, &nc);
	frame[2] = 0x10; /* a length of 4,096, big-endian */
	for (size_t i = 4; i < sizeof(frame); i++)
		frame[i] = (uint8_t)(i * 5);
	cr_assert_eq(send(e.fd, frame, sizeof(frame), MSG_NOSIGNAL), (ssize_t)sizeof(frame));
	/* The abort reaches the client: a reset (or an end), never an echo. */
	setsockopt(e.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	r = recv_byte(e.fd, &c);
	cr_assert(r == 0 || (r < 0 && errno == ECONNRESET), "recv: %zd (%s)", r,
		  r < 0 ? strerror(errno) : "a byte");
	WAIT_FOR((echo_fwd_stats(e.home, &st), st.conns_live == 0), "the connection to close");
	echo_fwd_stats(1 - e.home, &other);
	cr_assert_eq(st.frames_in, 1);
	cr_assert_eq(other.frames_relayed, 1, "the frame went to the other shard and back");
	cr_assert_eq(st.frames_out, 0);
	cr_assert_eq(st.frames_dropped, 1);
	cr_assert_eq(st.errors, 1, "the refused send was not counted (%llu errors)",
		     (unsigned long long)st.errors);
	cr_assert_eq(other.errors, 0);
	away_end(&e);
}

/* A client that sends its frames, half-closes (SHUT_WR) and reads the echoes, as a batch
 * client does: the echoes of the frames still away at its EOF must come before the
 * server's FIN. Before, the default EOF handling closed at once: each frame came back to a
 * closed connection and was dropped, and the client read EOF and nothing else. */
Test(net_forward, a_client_that_half_closes_gets_every_frame_echoed, .timeout = 120)
{
	static uint8_t frame[4 + 1024];
	struct away_env e;
	struct keel_net_config nc;
	struct echo_fwd_stats st;
	uint8_t c;

	keel_net_config_init(&nc);
	away_open(&e, &nc);
	away_hold(&e);
	frame_1k(frame);
	for (int i = 0; i < 8; i++)
		cr_assert_eq(send(e.fd, frame, sizeof(frame), MSG_NOSIGNAL),
			     (ssize_t)sizeof(frame));
	WAIT_FOR((echo_fwd_stats(e.home, &st), st.frames_in == 8), "the 8 frames to arrive");
	cr_assert_eq(shutdown(e.fd, SHUT_WR), 0);
	/* The EOF is handled: held (the fix) or the connection closed (without it). */
	WAIT_FOR((echo_fwd_stats(e.home, &st), st.eofs_held == 1 || st.conns_live == 0),
		 "the server to see the half-close");
	atomic_store(&e.srv.release, 1);
	read_echo(e.fd, frame, sizeof(frame), 8 * sizeof(frame));
	cr_assert_eq(recv_byte(e.fd, &c), 0, "the server's FIN after the last echo");
	WAIT_FOR((echo_fwd_stats(e.home, &st), st.conns_live == 0), "the connection to close");
	cr_assert_eq(st.frames_out, 8);
	cr_assert_eq(st.frames_dropped, 0);
	cr_assert_eq(st.errors, 0);
	away_end(&e);
}

/* A stop while frames wait for room in the queue to the other shard: their waits end with
 * -ESHUTDOWN, a stop's refusal, which is no failure: the frames are dropped (counted), not
 * counted in errors, and the connection is left to the stop's own close. Each was counted
 * an error and the connection reset, so every Ctrl-C of a busy keel-echo --forward showed
 * errors. */
Test(net_forward, a_stop_while_frames_wait_for_room_is_no_error, .timeout = 120)
{
	static uint8_t frame[4 + 1024];
	struct away_env e;
	struct keel_net_config nc;
	struct echo_fwd_stats st, other;

	keel_net_config_init(&nc);
	away_mailbox = 16;
	away_open(&e, &nc);
	away_mailbox = 0;
	away_hold(&e);
	frame_1k(frame);
	for (int i = 0; i < 64; i++)
		cr_assert_eq(send(e.fd, frame, sizeof(frame), MSG_NOSIGNAL),
			     (ssize_t)sizeof(frame));
	/* 16 fill the queue; the 17th waits for room, and reading pauses. */
	WAIT_FOR((echo_fwd_stats(e.home, &st), st.frames_waited > 0),
		 "a frame to wait for room (%llu in)", (unsigned long long)st.frames_in);
	keel_runtime_stop(e.rt, 0);
	atomic_store(&e.srv.release, 1);
	cr_assert_eq(keel_runtime_join(e.rt), 0);
	echo_fwd_stats(e.home, &st);
	echo_fwd_stats(1 - e.home, &other);
	cr_assert_eq(st.errors + other.errors, 0, "%llu errors at a stop (%llu frames dropped)",
		     (unsigned long long)(st.errors + other.errors),
		     (unsigned long long)st.frames_dropped);
	cr_assert_gt(st.frames_dropped, 0, "no frame was still waiting at the stop (premise)");
	close(e.fd);
	keel_runtime_destroy(e.rt);
	keel_listener_destroy(e.srv.l);
	echo_fwd_fini();
}

/* ---- a wait for room that fails for want of memory ---- */

#ifdef KEEL_FAULTS
/* Wrapping the forwarding echo's callbacks: each receive runs with every keel_shard_malloc
 * failing (alloc:ENOMEM) until one failed; the close's status is kept. */
static _Atomic int oom_armed, oom_done, oom_close_status = 1;
static _Atomic uint64_t oom_injected;

static void
oom_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	bool armed = atomic_load(&oom_armed);
	uint64_t k;

	if (armed)
		SHARD_CHECK_EQ(keel_faults_set("alloc:ENOMEM"), 0);
	echo_fwd_ops.on_data(c, s, n);
	if (!armed)
		return;
	k = keel_faults_injected("alloc");
	SHARD_CHECK_EQ(keel_faults_set(NULL), 0);
	if (k) {
		atomic_store(&oom_injected, k);
		atomic_store(&oom_armed, 0);
		atomic_store(&oom_done, 1); /* after the reset: the held shard reads it later */
	}
}

static void
oom_close(struct keel_conn *c, int status)
{
	atomic_store(&oom_close_status, status);
	echo_fwd_ops.on_close(c, status);
}

/* A frame that meets the full queue to the other shard (16 entries, no overflow, that
 * shard held) waits for room with keel_msg_wait_room(), whose record cannot be allocated
 * (-ENOMEM): the frame cannot be sent on nor wait, so the connection is aborted with
 * -ENOMEM (the framer's callback fails), counted once in errors, and the frame waiting is
 * dropped at the close, as are the 16 frames in the queue when they come back. The spec is
 * set on the connection's shard, inside its receive, while the only other shard is held in
 * a request (keel_faults_set wants no shard reading it meanwhile), and reset before it is
 * released; in that receive the failed wait's record is the only keel_shard_malloc. */
Test(net_forward, a_wait_for_room_without_memory_aborts_the_connection_counted, .timeout = 120)
{
	static uint8_t frame[4 + 1024];
	struct keel_conn_ops ops = echo_fwd_ops;
	struct away_env e;
	struct keel_net_config nc;
	struct echo_fwd_stats st, other;
	struct timeval tv = { .tv_sec = TEST_WAIT_MS / 1000 };
	ssize_t r;
	uint8_t c;

	ops.on_data = oom_data;
	ops.on_close = oom_close;
	keel_net_config_init(&nc);
	away_mailbox = 16;
	away_ops = &ops;
	away_open(&e, &nc);
	away_mailbox = 0;
	away_ops = NULL;
	away_hold(&e);
	atomic_store(&oom_armed, 1);
	frame_1k(frame);
	for (int i = 0; i < 32; i++)
		cr_assert_eq(send(e.fd, frame, sizeof(frame), MSG_NOSIGNAL),
			     (ssize_t)sizeof(frame));
	/* The abort reaches the client: a reset (or an end), never an echo (the shard that
	 * would send the frames back is held). */
	setsockopt(e.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	r = recv_byte(e.fd, &c);
	cr_assert(r == 0 || (r < 0 && errno == ECONNRESET),
		  "recv: %zd (%s): the connection was not aborted", r,
		  r < 0 ? strerror(errno) : "a byte");
	WAIT_FOR((echo_fwd_stats(e.home, &st), st.conns_live == 0), "the connection to close");
	WAIT_FOR(atomic_load(&oom_done), "the injected failure to be reset");
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&oom_injected), 1,
		     "%llu allocations failed in the receive, not only the wait's record",
		     (unsigned long long)atomic_load(&oom_injected));
	cr_assert_eq(atomic_load(&oom_close_status), -ENOMEM, "the connection closed with %d",
		     atomic_load(&oom_close_status));
	cr_assert_eq(st.frames_in, 17, "%llu frames in (16 fill the queue, the 17th waits)",
		     (unsigned long long)st.frames_in);
	cr_assert_eq(st.frames_waited, 1);
	cr_assert_eq(st.errors, 1, "the failed wait for room counted %llu errors, not 1",
		     (unsigned long long)st.errors);
	atomic_store(&e.srv.release, 1);
	/* The 16 frames in the queue come back to a closed connection: dropped too. */
	WAIT_FOR((echo_fwd_stats(e.home, &st), st.frames_dropped == 17),
		 "the 17 frames to be dropped (%llu)", (unsigned long long)st.frames_dropped);
	echo_fwd_stats(1 - e.home, &other);
	cr_assert_eq(other.frames_relayed, 16);
	cr_assert_eq(other.errors, 0);
	cr_assert_eq(st.frames_out, 0);
	away_end(&e);
}
#else
Test(net_forward, a_wait_for_room_without_memory_aborts_the_connection_counted)
{
	cr_skip_test("needs a KEEL_FAULTS build (-DKEEL_FAULTS=ON: build-asan/ in tools/test.sh)");
}
#endif

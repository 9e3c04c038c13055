// SPDX-License-Identifier: MIT
/* The stop's flush (--stop-flush-ms): the replies queued as the runtime stops (by the
 * callback that stops it, or by a stop hook) reach the client whole, then an EOF, where
 * the default stop resets the connection; a peer that never reads holds the stop only
 * until the deadline, said with the option's name. Every shard flushes at one stop; a
 * connect still in progress is aborted, not waited for; a flush that cannot begin says so
 * and aborts as the default does. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

static uint8_t
pat(uint64_t k)
{
	return (uint8_t)(k * 13 + k / 509);
}

static struct {
	size_t reply;        /* bytes the server answers with */
	bool stop_in_data;   /* on_data calls keel_stop after queueing the reply */
	bool close_in_data;  /* on_data closes the connection after queueing the reply */
	struct keel_conn *c; /* shard only: the connection the stop hook answers on */
	_Atomic int got, closed, close_status, hooked, flush_said, begin_failed_said;
} fl;

/* The reply, in 64 KiB writes (pattern by offset); a buffer per thread, as several shards
 * may write replies at once. */
static void
fl_reply(struct keel_conn *c)
{
	static _Thread_local uint8_t chunk[1 << 16];
	size_t off = 0;

	while (off < fl.reply) {
		size_t n = fl.reply - off < sizeof(chunk) ? fl.reply - off : sizeof(chunk);

		for (size_t k = 0; k < n; k++)
			chunk[k] = pat(off + k);
		if (!SHARD_CHECK(keel_conn_write(c, chunk, n) >= 0))
			return;
		off += n;
	}
}

static void
fl_hook(void *arg)
{
	(void)arg;
	fl_reply(fl.c);
	atomic_store(&fl.hooked, 1);
}

static void
fl_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
	if (atomic_exchange(&fl.got, 1))
		return;
	if (fl.stop_in_data) {
		fl_reply(c);
		keel_stop(0);
		return;
	}
	if (fl.close_in_data) {
		fl_reply(c);
		keel_conn_close(c);
		return;
	}
	/* The network's own stop hook was registered as its state was made (the listener's
	 * start): this one runs after it, as an application's does. */
	fl.c = c;
	SHARD_CHECK_EQ(keel_shard_on_stop(fl_hook, NULL), 0);
}

static void
fl_close(struct keel_conn *c, int status)
{
	(void)c;
	atomic_store(&fl.close_status, status);
	atomic_store(&fl.closed, 1);
}

static const struct keel_conn_ops fl_ops = { .on_data = fl_data, .on_close = fl_close };

static void
fl_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module;
	(void)shard;
	(void)arg;
	if (level == KEEL_LOG_WARN && strstr(msg, "connections still closing") &&
	    strstr(msg, "--stop-flush-ms"))
		atomic_fetch_add(&fl.flush_said, 1);
	if (level == KEEL_LOG_ERROR && strstr(msg, "the stop's flush (--stop-flush-ms") &&
	    strstr(msg, "could not begin"))
		atomic_fetch_add(&fl.begin_failed_said, 1);
}

/* The network configuration fl_start gives the server (NULL: the default), and whether its
 * on_data closes the connection after the reply (fl.close_in_data). */
static const struct keel_net_config *fl_nc;
static bool fl_close_next;

/* A client connected to 127.0.0.1:@port that sent @req (@rcvbuf: its receive buffer, 0 the
 * kernel's). */
static int
fl_client(uint16_t port, int rcvbuf, const char *req)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	if (rcvbuf)
		cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "connect: %s",
		     strerror(errno));
	cr_assert_eq(cli_write_all(fd, req, strlen(req)), 0);
	return fd;
}

/* A server of fl_ops with --stop-flush-ms @ms (0: the default), and a client connected to
 * it that sent its request (@rcvbuf: its receive buffer, 0 the kernel's). */
static int
fl_start(struct srv *s, unsigned ms, size_t reply, bool stop_in_data, int rcvbuf)
{
	struct keel_opts o = net_test_opts(1);

	memset(&fl, 0, sizeof(fl));
	fl.reply = reply;
	fl.stop_in_data = stop_in_data;
	fl.close_in_data = fl_close_next;
	o.stop_flush_ms = ms;
	cr_assert_eq(srv_start(s, &o, fl_nc, &fl_ops), 0);
	return fl_client(s->port, rcvbuf, "go");
}

/* srv_start with the listener's steering @steer and the shards' @on_start (its app @s). */
static void
fl_srv_start(struct srv *s, const struct keel_opts *o, enum keel_steer steer,
	     keel_shard_fn on_start, const struct keel_conn_ops *ops)
{
	struct keel_listen_opts lo = { .addr = "127.0.0.1", .steer = steer };
	struct keel_net_config nc;

	memset(s, 0, sizeof(*s));
	keel_net_config_init(&nc);
	cr_assert_eq(keel_net_config_set(&nc), 0);
	cr_assert_eq(keel_runtime_create(o, &s->rt), 0);
	cr_assert_eq(keel_listener_create(&lo, keel_runtime_shard_count(s->rt), ops, s, &s->l), 0);
	s->port = keel_listener_port(s->l);
	cr_assert_eq(keel_runtime_start(s->rt, on_start, s), 0);
}

/* Read the whole reply, in @step-byte reads, then the EOF; fails the test otherwise. */
static void
fl_read_whole(int fd, size_t step)
{
	uint8_t *buf = malloc(step);
	size_t at = 0;
	ssize_t r;

	cr_assert_not_null(buf);
	while (at < fl.reply) {
		r = cli_recv(fd, buf, step);
		cr_assert_gt(r, 0, "the reply ended at %zu of %zu bytes with %s", at, fl.reply,
			     r == 0 ? "an EOF" : strerror(errno));
		for (ssize_t k = 0; k < r; k++)
			cr_assert_eq(buf[k], pat(at + (size_t)k), "byte %zu", at + (size_t)k);
		at += (size_t)r;
	}
	r = cli_recv(fd, buf, step);
	cr_assert_eq(r, 0, "after the whole reply: %s, not an EOF",
		     r < 0 ? strerror(errno) : "more bytes");
	free(buf);
}

Test(net_stop_flush, a_reply_queued_by_the_callback_that_stops_arrives_whole_then_eof)
{
	struct srv s;
	int fd = fl_start(&s, 30000, 64u << 10, true, 0);

	fl_read_whole(fd, 1u << 16);
	close(fd); /* the server's close lingers for this EOF */
	cr_assert_eq(srv_stop(&s), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&fl.closed), 1);
	cr_assert_eq(atomic_load(&fl.close_status), 0, "on_close: %s",
		     strerror(-atomic_load(&fl.close_status)));
}

/* The default (--stop-flush-ms 0): the stop aborts the connection with its reply queued,
 * and the client sees a reset. */
Test(net_stop_flush, without_the_option_the_stop_resets_a_reply_queued_with_it)
{
	static char buf[1 << 16];
	struct srv s;
	ssize_t r;
	int fd = fl_start(&s, 0, 64u << 10, true, 0);

	while ((r = cli_recv(fd, buf, sizeof(buf))) > 0)
		;
	cr_assert(r < 0 && errno == ECONNRESET, "the stopped reply ended with %s",
		  r == 0 ? "an EOF" : strerror(errno));
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&fl.close_status), -ESHUTDOWN);
}

/* A reply of several MiB (far more than the socket buffers hold), queued by a stop hook,
 * read by a client in small reads: the stop waits for it all. */
Test(net_stop_flush, a_large_reply_queued_by_a_stop_hook_arrives_whole_to_a_slow_reader)
{
	struct srv s;
	int fd = fl_start(&s, 60000, test_small() ? 4u << 20 : 16u << 20, false, 16384);

	WAIT_FOR(atomic_load(&fl.got), "the request");
	keel_runtime_stop(s.rt, 0);
	fl_read_whole(fd, 4096);
	cr_assert_eq(atomic_load(&fl.hooked), 1);
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&fl.close_status), 0, "on_close: %s",
		     strerror(-atomic_load(&fl.close_status)));
}

/* A peer that never reads: the flush ends at the deadline (its length is not asserted,
 * only that the join returns), the connection is reset, and the line names the option. */
Test(net_stop_flush, a_peer_that_never_reads_is_reset_at_the_deadline_and_said)
{
	static char buf[1 << 16];
	struct srv s;
	ssize_t r;
	int fd;

	keel_log_set_sink(fl_sink, NULL);
	fd = fl_start(&s, 50, 8u << 20, true, 16384);
	WAIT_FOR(atomic_load(&fl.got), "the request (its callback stops the runtime)");
	cr_assert_eq(srv_stop(&s), 0);
	keel_log_set_sink(NULL, NULL);
	SHARD_CHECKS_PASSED();
	while ((r = cli_recv(fd, buf, sizeof(buf))) > 0)
		;
	cr_assert(r < 0 && errno == ECONNRESET, "the cut reply ended with %s",
		  r == 0 ? "an EOF, as a whole one does" : strerror(errno));
	close(fd);
	cr_assert_eq(atomic_load(&fl.closed), 1, "on_close ran");
	cr_assert_eq(atomic_load(&fl.close_status), -ESHUTDOWN, "on_close: %s",
		     strerror(-atomic_load(&fl.close_status)));
	cr_assert_eq(atomic_load(&fl.flush_said), 1, "said %d times", atomic_load(&fl.flush_said));
}

/* A peer that takes the whole reply and its EOF but keeps its side open, with the
 * connections' close_timeout_ns set: the close's own timer (started by the flush's close)
 * was stopped with every timer at the stop, so the linger takes its own bound,
 * KEEL_NET_LINGER_NS (5 s), from the queue's end, and the stop ends there with on_close(0),
 * well before the 60 s deadline. Before, with close_timeout_ns set the linger started no
 * timer, and the stop waited for the deadline and reset the connection. */
Test(net_stop_flush, a_lingering_close_with_close_timeout_ns_ends_at_the_lingers_bound,
     .timeout = 120)
{
	struct keel_net_config nc;
	struct srv s;
	int fd;

	keel_net_config_init(&nc);
	nc.close_timeout_ns = KEEL_MS(1000);
	fl_nc = &nc;
	keel_log_set_sink(fl_sink, NULL);
	fd = fl_start(&s, 60000, 4096, true, 0);
	fl_nc = NULL;
	fl_read_whole(fd, 4096); /* the whole reply, then the EOF; this side stays open */
	cr_assert_eq(srv_stop(&s), 0);
	keel_log_set_sink(NULL, NULL);
	SHARD_CHECKS_PASSED();
	close(fd);
	cr_assert_eq(atomic_load(&fl.closed), 1, "on_close ran");
	cr_assert_eq(atomic_load(&fl.close_status), 0, "on_close: %s",
		     strerror(-atomic_load(&fl.close_status)));
	cr_assert_eq(atomic_load(&fl.flush_said), 0,
		     "the stop waited for --stop-flush-ms's deadline (said %d times)",
		     atomic_load(&fl.flush_said));
}

/* A connection already lingering when the stop begins (the application closed it after its
 * reply; the peer took the reply and the FIN and keeps its side open): the stop stops every
 * timer, the linger's too, and the flush starts it again, so the stop ends at the linger's
 * bound (KEEL_NET_LINGER_NS, 5 s) with on_close(0), not at the 60 s deadline. Before, only the
 * deadline ended it, with its line. */
Test(net_stop_flush, a_close_lingering_before_the_stop_keeps_the_lingers_bound, .timeout = 120)
{
	struct srv s;
	int fd;

	keel_log_set_sink(fl_sink, NULL);
	fl_close_next = true;
	fd = fl_start(&s, 60000, 4096, false, 0);
	fl_close_next = false;
	fl_read_whole(fd, 4096); /* the whole reply, then the EOF; this side stays open */
	cr_assert_eq(atomic_load(&fl.closed), 0, "the close ended before the stop");
	cr_assert_eq(srv_stop(&s), 0);
	keel_log_set_sink(NULL, NULL);
	SHARD_CHECKS_PASSED();
	close(fd);
	cr_assert_eq(atomic_load(&fl.closed), 1, "on_close ran");
	cr_assert_eq(atomic_load(&fl.close_status), 0, "on_close: %s",
		     strerror(-atomic_load(&fl.close_status)));
	cr_assert_eq(atomic_load(&fl.flush_said), 0,
		     "the stop waited for --stop-flush-ms's deadline (said %d times)",
		     atomic_load(&fl.flush_said));
}

/* Several shards: each connection's request (one byte) registers a stop hook that queues
 * its reply, counted by the shard it landed on. */
#define MS_SHARDS 2
static struct {
	_Atomic int requests, closes, bad_closes, bad_status;
	_Atomic int on_shard[MS_SHARDS];
} ms;

static void
ms_hook(void *arg)
{
	fl_reply(arg);
	atomic_fetch_add(&fl.hooked, 1);
}

static void
ms_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	unsigned id = keel_shard_id(keel_this_shard());

	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
	if (!SHARD_CHECK(id < MS_SHARDS))
		return;
	SHARD_CHECK_EQ(keel_shard_on_stop(ms_hook, c), 0);
	atomic_fetch_add(&ms.on_shard[id], 1);
	atomic_fetch_add(&ms.requests, 1);
}

static void
ms_close(struct keel_conn *c, int status)
{
	(void)c;
	if (status != 0) {
		atomic_store(&ms.bad_status, status);
		atomic_fetch_add(&ms.bad_closes, 1);
	}
	atomic_fetch_add(&ms.closes, 1);
}

static const struct keel_conn_ops ms_ops = { .on_data = ms_data, .on_close = ms_close };

/* Connections on more than one shard (the kernel's hash places them: more are opened until
 * two shards hold some), each reply queued by its shard's stop hook, one stop from the test
 * thread: every shard flushes, and every client reads its whole reply, then an EOF. */
Test(net_stop_flush, one_stop_flushes_the_connections_of_every_shard)
{
	enum { STEP = 4, MOST = 32 };
	struct keel_opts o = net_test_opts(MS_SHARDS);
	int fds[MOST];
	unsigned n = 0, held = 0;
	struct srv s;

	memset(&fl, 0, sizeof(fl));
	memset(&ms, 0, sizeof(ms));
	fl.reply = 256u << 10;
	o.stop_flush_ms = 60000;
	keel_log_set_sink(fl_sink, NULL);
	fl_srv_start(&s, &o, KEEL_STEER_HASH, srv_on_start, &ms_ops);
	WAIT_FOR(atomic_load(&s.started) == MS_SHARDS, "the shards' listeners");
	while (held < 2) {
		cr_assert_lt(n, MOST, "all %u connections landed on one shard", n);
		for (unsigned k = 0; k < STEP; k++)
			fds[n++] = fl_client(s.port, 0, "g");
		WAIT_FOR(atomic_load(&ms.requests) == (int)n, "%u requests", n);
		held = 0;
		for (unsigned i = 0; i < MS_SHARDS; i++)
			held += atomic_load(&ms.on_shard[i]) > 0;
	}
	keel_runtime_stop(s.rt, 0);
	for (unsigned i = 0; i < n; i++) {
		fl_read_whole(fds[i], 1u << 16);
		close(fds[i]); /* the server's close lingers for this EOF */
	}
	cr_assert_eq(srv_stop(&s), 0);
	keel_log_set_sink(NULL, NULL);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&fl.hooked), (int)n);
	cr_assert_eq(atomic_load(&ms.closes), (int)n);
	cr_assert_eq(atomic_load(&ms.bad_closes), 0, "%d on_close with %s",
		     atomic_load(&ms.bad_closes), strerror(-atomic_load(&ms.bad_status)));
	cr_assert_eq(atomic_load(&fl.flush_said), 0, "the stop waited for the deadline");
}

/* An outbound connection of the server's, still connecting as the runtime stops. */
static struct {
	uint16_t port; /* what it connects to */
	_Atomic int opened, closed, close_status;
} cn;

static void
cn_open(struct keel_conn *c)
{
	(void)c;
	atomic_store(&cn.opened, 1);
}

static void
cn_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	(void)c;
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
}

static void
cn_close(struct keel_conn *c, int status)
{
	(void)c;
	atomic_store(&cn.close_status, status);
	atomic_store(&cn.closed, 1);
}

static const struct keel_conn_ops cn_ops = { .on_open = cn_open,
					     .on_data = cn_data,
					     .on_close = cn_close };

static void
cn_connect(struct keel_xreq *req)
{
	struct keel_conn *c;

	keel_xreq_complete(req, keel_conn_connect("127.0.0.1", cn.port, 0, &cn_ops, NULL, &c));
}

/* The accept queue of listening socket @fd: its length, and its most (TCP_INFO). */
static void
accept_queue(int fd, unsigned *len, unsigned *most)
{
	struct tcp_info ti;
	socklen_t tl = sizeof(ti);

	cr_assert_eq(getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl), 0, "TCP_INFO: %s",
		     strerror(errno));
	*len = ti.tcpi_unacked;
	*most = ti.tcpi_sacked;
}

/* A connect in progress at the stop: the test's listener never accepts and its accept queue
 * is full, so the kernel drops the connect's SYNs (and its retries) and the connect cannot
 * end by itself within the test. The flush aborts it with -ESHUTDOWN, and the stop, with a
 * client's reply flushed beside it, ends once that client is done: not at the 60 s
 * deadline. */
Test(net_stop_flush, a_connect_in_progress_is_aborted_and_the_stop_does_not_wait_for_it,
     .timeout = 120)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), fill[4];
	unsigned nfill = 0, len, most;
	struct srv s;
	int fd;

	cr_assert_geq(lfd, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(lfd, 1), 0);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&a, &al), 0);
	memset(&cn, 0, sizeof(cn));
	cn.port = ntohs(a.sin_port);
	/* Filled one connection at a time, each waited for in the queue: the kernel drops a
	 * SYN once the queue holds more than its most. */
	for (accept_queue(lfd, &len, &most); len <= most; accept_queue(lfd, &len, &most)) {
		cr_assert_lt(nfill, 4, "the accept queue of backlog 1 holds %u of at most %u", len,
			     most);
		fill[nfill] = cli_connect(cn.port);
		cr_assert_geq(fill[nfill], 0, "a filler's connect: %s", strerror(-fill[nfill]));
		nfill++;
		WAIT_FOR((accept_queue(lfd, &len, &most), len == nfill), "filler %u queued", nfill);
	}
	keel_log_set_sink(fl_sink, NULL);
	fd = fl_start(&s, 60000, 4096, false, 0);
	WAIT_FOR(atomic_load(&fl.got), "the request");
	cr_assert_eq(rt_run_on(s.rt, 0, cn_connect, NULL), 0);
	keel_runtime_stop(s.rt, 0);
	fl_read_whole(fd, 4096);
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
	keel_log_set_sink(NULL, NULL);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&cn.opened), 0, "the connect completed: the queue was not full");
	cr_assert_eq(atomic_load(&cn.closed), 1, "the connect's on_close ran");
	cr_assert_eq(atomic_load(&cn.close_status), -ESHUTDOWN, "the connect's on_close: %s",
		     strerror(-atomic_load(&cn.close_status)));
	cr_assert_eq(atomic_load(&fl.close_status), 0, "the client's on_close: %s",
		     strerror(-atomic_load(&fl.close_status)));
	cr_assert_eq(atomic_load(&fl.flush_said), 0,
		     "the stop waited for --stop-flush-ms's deadline (said %d times)",
		     atomic_load(&fl.flush_said));
	for (unsigned i = 0; i < nfill; i++)
		close(fill[i]);
	close(lfd);
}

#ifdef KEEL_FAULTS
/* core/internal.h: while non-zero, each keel_shard_on_stop() fails with -ENOMEM. */
extern _Atomic unsigned keel__fault_stop_hook_nomem;

/* Registered before the listener starts (so before the network's hook): it runs first. */
static void
fh_arm(void *arg)
{
	(void)arg;
	atomic_store(&keel__fault_stop_hook_nomem, 1);
}

static void
fh_on_start(void *arg)
{
	SHARD_CHECK_EQ(keel_shard_on_stop(fh_arm, NULL), 0);
	srv_on_start(arg);
}

/* The network's hook cannot register the flush's second hook: it says so, and the
 * connections are aborted at once, as without the option (the reply queued with the stop
 * is reset), with no wait for the deadline. */
Test(net_stop_flush, a_flush_that_cannot_begin_is_said_and_aborts_as_without_the_option,
     .timeout = 120)
{
	static char buf[1 << 16];
	struct keel_opts o = net_test_opts(1);
	struct srv s;
	unsigned left;
	ssize_t r;
	int fd;

	memset(&fl, 0, sizeof(fl));
	fl.reply = 64u << 10;
	fl.stop_in_data = true;
	o.stop_flush_ms = 60000;
	keel_log_set_sink(fl_sink, NULL);
	fl_srv_start(&s, &o, KEEL_STEER_HASH, fh_on_start, &fl_ops);
	fd = fl_client(s.port, 0, "go");
	while ((r = cli_recv(fd, buf, sizeof(buf))) > 0)
		;
	cr_assert(r < 0 && errno == ECONNRESET, "the stopped reply ended with %s",
		  r == 0 ? "an EOF, as a flushed one does" : strerror(errno));
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
	keel_log_set_sink(NULL, NULL);
	left = atomic_exchange(&keel__fault_stop_hook_nomem, 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(left, 0, "the fault was not used: no keel_shard_on_stop after fh_arm");
	cr_assert_eq(atomic_load(&fl.begin_failed_said), 1, "the ERROR line, said %d times",
		     atomic_load(&fl.begin_failed_said));
	cr_assert_eq(atomic_load(&fl.closed), 1, "on_close ran");
	cr_assert_eq(atomic_load(&fl.close_status), -ESHUTDOWN, "on_close: %s",
		     strerror(-atomic_load(&fl.close_status)));
	cr_assert_eq(atomic_load(&fl.flush_said), 0, "the stop waited for the deadline");
}
#else
Test(net_stop_flush, a_flush_that_cannot_begin_is_said_and_aborts_as_without_the_option)
{
	cr_skip_test("needs fault injection: a -DKEEL_FAULTS=ON build (build-asan)");
}
#endif

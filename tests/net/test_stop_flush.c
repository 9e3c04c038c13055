// SPDX-License-Identifier: MIT
/* The stop's flush (--stop-flush-ms): the replies queued as the runtime stops (by the
 * callback that stops it, or by a stop hook) reach the client whole, then an EOF, where
 * the default stop resets the connection; a peer that never reads holds the stop only
 * until the deadline, said with the option's name. */
#include <errno.h>
#include <netinet/in.h>
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
	_Atomic int got, closed, close_status, hooked, flush_said;
} fl;

/* The reply, in 64 KiB writes (pattern by offset). */
static void
fl_reply(struct keel_conn *c)
{
	static uint8_t chunk[1 << 16];
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
}

/* The network configuration fl_start gives the server (NULL: the default), and whether its
 * on_data closes the connection after the reply (fl.close_in_data). */
static const struct keel_net_config *fl_nc;
static bool fl_close_next;

/* A server of fl_ops with --stop-flush-ms @ms (0: the default), and a client connected to
 * it that sent its request (@rcvbuf: its receive buffer, 0 the kernel's). */
static int
fl_start(struct srv *s, unsigned ms, size_t reply, bool stop_in_data, int rcvbuf)
{
	struct keel_opts o = net_test_opts(1);
	int fd;

	memset(&fl, 0, sizeof(fl));
	fl.reply = reply;
	fl.stop_in_data = stop_in_data;
	fl.close_in_data = fl_close_next;
	o.stop_flush_ms = ms;
	cr_assert_eq(srv_start(s, &o, fl_nc, &fl_ops), 0);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	if (rcvbuf)
		cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
	{
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(s->port) };

		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "connect: %s",
			     strerror(errno));
	}
	cr_assert_eq(cli_write_all(fd, "go", 2), 0);
	return fd;
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

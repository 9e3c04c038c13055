// SPDX-License-Identifier: MIT
/* Limits against hostile peers: max_conns (docs/net.md, "Connection limit"). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

static void
limits_on_start(void *arg)
{
	struct srv *s = arg;
	int r = keel_listener_start(s->l);
	if (r < 0)
		keel_stop(r);
	atomic_fetch_add(&s->started, 1);
}

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
	cr_assert_eq(keel_runtime_start(s->rt, limits_on_start, s), 0);
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

// SPDX-License-Identifier: MIT
/*
 * keel_conn_setsockopt / keel_conn_getsockopt on accepted connections held as direct
 * descriptors (through the ring) and as plain ones, and on connected ones: TCP_NODELAY and
 * SO_KEEPALIVE set, then read back.
 */
#include <errno.h>
#include <keel/caps.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

struct so_state {
	int set_status[2];
	int keepalive_before, keepalive_after, nodelay_after;
	int get_status[3];
	int bad_status;
	int after_close;
	_Atomic int steps; /* callbacks seen */
	_Atomic int closes;
	bool on_close_after_all;
};

static struct so_state st;

static int
int_of(const void *v, socklen_t len)
{
	int x = -1;
	if (len == sizeof(int))
		memcpy(&x, v, sizeof(x));
	return x;
}

static void
got_nodelay(struct keel_conn *c, int status, const void *v, socklen_t len, void *arg)
{
	st.get_status[1] = status;
	st.nodelay_after = status >= 0 ? int_of(v, len) : -2;
	atomic_fetch_add(&st.steps, 1);
}

static void
got_keepalive_after(struct keel_conn *c, int status, const void *v, socklen_t len, void *arg)
{
	st.get_status[2] = status;
	st.keepalive_after = status >= 0 ? int_of(v, len) : -2;
	atomic_fetch_add(&st.steps, 1);
}

static void
got_bad(struct keel_conn *c, int status, const void *v, socklen_t len, void *arg)
{
	st.bad_status = status;
	atomic_fetch_add(&st.steps, 1);
	/* The last step: close, and nothing may be asked after. */
	keel_conn_close(c);
	st.after_close =
		keel_conn_getsockopt(c, SOL_SOCKET, SO_KEEPALIVE, sizeof(int), got_bad, NULL);
}

static void
set_done(struct keel_conn *c, int status, const void *v, socklen_t len, void *arg)
{
	int which = (int)(intptr_t)arg;

	st.set_status[which] = status;
	atomic_fetch_add(&st.steps, 1);
	if (which == 1) {
		/* Both sets completed (they were queued in order, but only a completion says
		 * the kernel applied one): read back. */
		SHARD_CHECK_EQ(keel_conn_getsockopt(c, IPPROTO_TCP, TCP_NODELAY, sizeof(int),
						    got_nodelay, NULL),
			       0);
		SHARD_CHECK_EQ(keel_conn_getsockopt(c, SOL_SOCKET, SO_KEEPALIVE, sizeof(int),
						    got_keepalive_after, NULL),
			       0);
		SHARD_CHECK_EQ(
			keel_conn_getsockopt(c, SOL_SOCKET, 9999, sizeof(int), got_bad, NULL), 0);
	}
}

static void
got_keepalive_before(struct keel_conn *c, int status, const void *v, socklen_t len, void *arg)
{
	int zero = 0, one = 1;

	st.get_status[0] = status;
	st.keepalive_before = status >= 0 ? int_of(v, len) : -2;
	atomic_fetch_add(&st.steps, 1);
	SHARD_CHECK_EQ(keel_conn_setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &zero, sizeof(zero),
					    set_done, (void *)(intptr_t)0),
		       0);
	SHARD_CHECK_EQ(keel_conn_setsockopt(c, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one),
					    set_done, (void *)(intptr_t)1),
		       0);
}

static void
so_open(struct keel_conn *c)
{
	char big[KEEL_SOCKOPT_MAX + 1] = { 0 };

	SHARD_CHECK_EQ(
		keel_conn_setsockopt(c, SOL_SOCKET, SO_KEEPALIVE, big, sizeof(big), NULL, NULL),
		-EINVAL);
	SHARD_CHECK_EQ(keel_conn_getsockopt(c, SOL_SOCKET, SO_KEEPALIVE, sizeof(int), NULL, NULL),
		       -EINVAL);
	SHARD_CHECK_EQ(keel_conn_getsockopt(c, SOL_SOCKET, SO_KEEPALIVE, sizeof(int),
					    got_keepalive_before, NULL),
		       0);
}

static void
so_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
}

static void
so_close(struct keel_conn *c, int status)
{
	st.on_close_after_all = atomic_load(&st.steps) == 6;
	atomic_fetch_add(&st.closes, 1);
}

static const struct keel_conn_ops so_ops = { .on_open = so_open,
					     .on_data = so_data,
					     .on_close = so_close };

static void
check_steps(void)
{
	cr_assert_eq(st.get_status[0], sizeof(int), "get SO_KEEPALIVE: %d", st.get_status[0]);
	cr_assert_eq(st.keepalive_before, 0);
	cr_assert_eq(st.set_status[0], 0, "set TCP_NODELAY: %s", strerror(-st.set_status[0]));
	cr_assert_eq(st.set_status[1], 0, "set SO_KEEPALIVE: %s", strerror(-st.set_status[1]));
	cr_assert_eq(st.get_status[1], sizeof(int), "get TCP_NODELAY: %d", st.get_status[1]);
	cr_assert_eq(st.nodelay_after, 0, "TCP_NODELAY read back");
	cr_assert_eq(st.get_status[2], sizeof(int), "get SO_KEEPALIVE: %d", st.get_status[2]);
	cr_assert_eq(st.keepalive_after, 1, "SO_KEEPALIVE read back");
	cr_assert_eq(st.bad_status, -ENOPROTOOPT, "an unknown option: %d", st.bad_status);
	cr_assert_eq(st.after_close, -EPIPE);
	cr_assert(st.on_close_after_all, "every callback ran before on_close");
}

static void
start_listener(void *arg)
{
	int r = keel_listener_start(arg);
	if (!SHARD_CHECK_EQ(r, 0))
		keel_stop(r);
}

static void
accepted_case(const char *feature)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_listen_opts lo = { .addr = "127.0.0.1" };
	struct keel_runtime *rt;
	struct keel_listener *l;
	char b;
	int fd;

	memset(&st, 0, sizeof(st));
	net_test_feature(&o, feature);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	lo.rt = rt;
	cr_assert_eq(keel_listener_create(&lo, 1, &so_ops, NULL, &l), 0);
	cr_assert_eq(keel_runtime_start(rt, start_listener, l), 0);
	fd = cli_connect(keel_listener_port(l));
	cr_assert_geq(fd, 0);
	/* The server closes after the last step: EOF. */
	cr_assert_eq(cli_recv(fd, &b, 1), 0, "EOF from the server");
	close(fd); /* the end of ours: a graceful close waits for it */
	WAIT_FOR(atomic_load(&st.closes) == 1, "on_close");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_listener_destroy(l);
	SHARD_CHECKS_PASSED();
	check_steps();
}

/* direct_fd=on: the connection must be a direct descriptor (auto could fall back). */
Test(net_sockopt, direct_descriptor_through_the_ring)
{
	accepted_case("direct_fd=on");
}

Test(net_sockopt, plain_descriptor)
{
	accepted_case("direct_fd=off");
}

static uint16_t conn_port;

static void
start_connect(void *arg)
{
	struct keel_conn *c;
	int r = keel_conn_connect("127.0.0.1", conn_port, KEEL_S(10), &so_ops, NULL, &c);
	if (!SHARD_CHECK_EQ(r, 0))
		keel_stop(r);
}

Test(net_sockopt, connected)
{
	struct keel_opts o = net_test_opts(1);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	struct keel_runtime *rt;
	int lfd, fd;
	char b;

	memset(&st, 0, sizeof(st));
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(lfd, 0);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&a, len), 0);
	cr_assert_eq(listen(lfd, 4), 0);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
	conn_port = ntohs(a.sin_port);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, start_connect, NULL), 0);
	fd = accept(lfd, NULL, NULL);
	cr_assert_geq(fd, 0);
	cr_assert_eq(cli_recv(fd, &b, 1), 0, "EOF from keel");
	close(fd); /* the end of ours: a graceful close waits for it */
	WAIT_FOR(atomic_load(&st.closes) == 1, "on_close");
	close(lfd);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	check_steps();
}

/* A Unix connection held as a direct descriptor: SOL_SOCKET options go through the ring's
 * socket command as for TCP (docs/net.md: Unix connections take socket options). */
static int unix_set_status = 1, unix_get_status = 1, unix_sndbuf, unix_tcp_status = 1;
static _Atomic int unix_closes;
static char unix_logged[4096];

static void
unix_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	size_t n = strlen(unix_logged);

	snprintf(unix_logged + n, sizeof(unix_logged) - n, "%s\n", msg);
}

static void
unix_got(struct keel_conn *c, int status, const void *v, socklen_t len, void *arg)
{
	unix_get_status = status;
	unix_sndbuf = status >= 0 ? int_of(v, len) : -2;
	keel_conn_close(c);
}

static void
unix_set(struct keel_conn *c, int status, const void *v, socklen_t len, void *arg)
{
	unix_set_status = status;
	SHARD_CHECK_EQ(keel_conn_getsockopt(c, SOL_SOCKET, SO_SNDBUF, sizeof(int), unix_got, NULL),
		       0);
}

static void
unix_tcp(struct keel_conn *c, int status, const void *v, socklen_t len, void *arg)
{
	int b = 65536;

	unix_tcp_status = status;
	SHARD_CHECK_EQ(
		keel_conn_setsockopt(c, SOL_SOCKET, SO_SNDBUF, &b, sizeof(b), unix_set, NULL), 0);
}

/* First a TCP option, which a Unix socket does not have (EOPNOTSUPP on every kernel): the
 * callback gets the error, and nothing tells the operator to upgrade a kernel that has
 * the ring's socket commands (it did, once per shard, hiding the line for a kernel that
 * lacks them). */
static void
unix_open(struct keel_conn *c)
{
	int one = 1;

	SHARD_CHECK_EQ(keel_conn_setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one),
					    unix_tcp, NULL),
		       0);
}

static void
unix_close(struct keel_conn *c, int status)
{
	atomic_fetch_add(&unix_closes, 1);
}

static const struct keel_conn_ops unix_ops = { .on_open = unix_open,
					       .on_data = so_data,
					       .on_close = unix_close };

static void
unix_case(const char *feature)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_listen_opts lo = { 0 };
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct keel_runtime *rt;
	struct keel_listener *l;
	char addr[64], b;
	int fd, n;

	unix_set_status = unix_get_status = unix_tcp_status = 1;
	atomic_store(&unix_closes, 0);
	unix_logged[0] = 0;
	keel_log_set_sink(unix_sink, NULL);
	net_test_feature(&o, feature);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	snprintf(addr, sizeof(addr), "unix:@keel-sockopt-%d", (int)getpid());
	lo.rt = rt;
	lo.addr = addr;
	cr_assert_eq(keel_listener_create(&lo, 1, &unix_ops, NULL, &l), 0);
	cr_assert_eq(keel_runtime_start(rt, start_listener, l), 0);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	n = snprintf(a.sun_path + 1, sizeof(a.sun_path) - 1, "%s", addr + 6);
	cr_assert_eq(connect(fd, (struct sockaddr *)&a,
			     (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n)),
		     0, "%s", strerror(errno));
	cr_assert_eq(cli_recv(fd, &b, 1), 0, "EOF from the server");
	close(fd);
	WAIT_FOR(atomic_load(&unix_closes) == 1, "on_close");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_listener_destroy(l);
	keel_log_set_sink(NULL, NULL);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(unix_tcp_status, -EOPNOTSUPP, "set TCP_NODELAY: %d", unix_tcp_status);
	if (keel_caps_get()->sock_cmd)
		cr_assert_null(strstr(unix_logged, "upgrade the kernel"), "%s", unix_logged);
	cr_assert_eq(unix_set_status, 0, "set SO_SNDBUF: %s", strerror(-unix_set_status));
	cr_assert_eq(unix_get_status, sizeof(int), "get SO_SNDBUF: %s", strerror(-unix_get_status));
	cr_assert_geq(unix_sndbuf, 65536, "SO_SNDBUF read back: %d", unix_sndbuf);
}

Test(net_sockopt, unix_direct_descriptor)
{
	unix_case("direct_fd=on");
}

Test(net_sockopt, unix_plain_descriptor)
{
	unix_case("direct_fd=off");
}

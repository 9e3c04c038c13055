// SPDX-License-Identifier: MIT
/*
 * keel_conn_peer_addr / keel_conn_local_addr: accepted connections (direct descriptors and
 * plain ones) and connected ones, over IPv4 and IPv6 loopback, compared with what the
 * plain socket on the other end sees.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

struct seen {
	_Atomic int done;
	int rpeer, rlocal;
	struct sockaddr_storage peer, local;
	socklen_t peerlen, locallen;
	uint64_t name_reads; /* keel_net_stats' at on_open */
	_Atomic int closes;
};

static struct seen seen;

static void
addr_open(struct keel_conn *c)
{
	seen.peerlen = seen.locallen = 0;
	seen.rpeer = keel_conn_peer_addr(c, &seen.peer, &seen.peerlen);
	seen.rlocal = keel_conn_local_addr(c, &seen.local, &seen.locallen);
	struct keel_net_stats st;
	if (SHARD_CHECK_EQ(keel_net_stats(keel_this_shard(), &st), 0))
		seen.name_reads = st.name_reads;
	atomic_store(&seen.done, 1);
}

static void
addr_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
}

static void
addr_close(struct keel_conn *c, int status)
{
	atomic_fetch_add(&seen.closes, 1);
}

static const struct keel_conn_ops addr_ops = { .on_open = addr_open,
					       .on_data = addr_data,
					       .on_close = addr_close };

/* Same family, address and port. */
static void
assert_same(const struct sockaddr_storage *a, socklen_t alen, const struct sockaddr_storage *b,
	    const char *what)
{
	cr_assert_eq(a->ss_family, b->ss_family, "%s: family %d, want %d", what, a->ss_family,
		     b->ss_family);
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		cr_assert_eq(alen, sizeof(*x), "%s: length", what);
		cr_assert_eq(x->sin_addr.s_addr, y->sin_addr.s_addr, "%s: address", what);
		cr_assert_eq(ntohs(x->sin_port), ntohs(y->sin_port), "%s: port %u, want %u", what,
			     ntohs(x->sin_port), ntohs(y->sin_port));
	} else {
		const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
		cr_assert_eq(a->ss_family, AF_INET6, "%s: family", what);
		cr_assert_eq(alen, sizeof(*x), "%s: length", what);
		cr_assert_eq(memcmp(&x->sin6_addr, &y->sin6_addr, 16), 0, "%s: address", what);
		cr_assert_eq(ntohs(x->sin6_port), ntohs(y->sin6_port), "%s: port %u, want %u", what,
			     ntohs(x->sin6_port), ntohs(y->sin6_port));
	}
}

static void
start_listener(void *arg)
{
	int r = keel_listener_start(arg);
	if (!SHARD_CHECK_EQ(r, 0))
		keel_stop(r);
}

/* One accepted connection. @addr: the listener's address; @conn: where the client connects
 * (NULL: @addr); @want_reads: the getpeername/getsockname calls expected for it (a listener
 * bound to one address knows the local address: only the peer's is read); @steer: the
 * listener's steering, and the steering reads (getsockopt) expected per accept. */
struct acase {
	const char *addr, *conn, *feature;
	bool no_addrs;
	unsigned want_reads;
	enum keel_steer steer;
	unsigned want_steer_reads;
};

static void
accepted_run(const struct acase *k)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_listen_opts lo = { .addr = k->addr,
				       .no_addrs = k->no_addrs,
				       .steer = k->steer };
	struct keel_runtime *rt;
	struct keel_listener *l;
	struct keel_listener_stats lst;
	struct sockaddr_storage want_peer, want_local;
	socklen_t len, wlen;
	int fd;

	memset(&seen, 0, sizeof(seen));
	net_test_feature(&o, k->feature);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	lo.rt = rt;
	cr_assert_eq(keel_listener_create(&lo, 1, &addr_ops, NULL, &l), 0);
	cr_assert_eq(keel_runtime_start(rt, start_listener, l), 0);
	cr_assert_eq(keel_net_addr_parse(k->conn ? k->conn : k->addr, keel_listener_port(l),
					 &want_local, &wlen),
		     0);
	fd = socket(want_local.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&want_local, wlen), 0, "connect: %s",
		     strerror(errno));
	len = sizeof(want_peer);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&want_peer, &len), 0);
	WAIT_FOR(atomic_load(&seen.done), "on_open of the accepted connection");
	if (k->no_addrs) {
		cr_assert_eq(seen.rpeer, -ENODATA);
		cr_assert_eq(seen.rlocal, -ENODATA);
	} else {
		cr_assert_eq(seen.rpeer, 0, "keel_conn_peer_addr: %s", strerror(-seen.rpeer));
		cr_assert_eq(seen.rlocal, 0, "keel_conn_local_addr: %s", strerror(-seen.rlocal));
		assert_same(&seen.peer, seen.peerlen, &want_peer, "peer");
		assert_same(&seen.local, seen.locallen, &want_local, "local");
	}
	cr_assert_eq(seen.name_reads, k->want_reads, "%s: %llu address reads, want %u", k->addr,
		     (unsigned long long)seen.name_reads, k->want_reads);
	close(fd);
	WAIT_FOR(atomic_load(&seen.closes) == 1, "on_close");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	/* After the join: a steering read on a direct descriptor is a ring operation. */
	cr_assert_eq(keel_listener_stats(l, 0, &lst), 0);
	cr_assert_eq(lst.accepted, 1);
	cr_assert_eq(lst.steer_reads, k->want_steer_reads, "%llu steering reads, want %u",
		     (unsigned long long)lst.steer_reads, k->want_steer_reads);
	keel_runtime_destroy(rt);
	keel_listener_destroy(l);
	SHARD_CHECKS_PASSED();
}

static void
accepted_case_opts(const char *addr, const char *feature, bool no_addrs)
{
	accepted_run(&(struct acase){ .addr = addr,
				      .feature = feature,
				      .no_addrs = no_addrs,
				      .want_reads = no_addrs ? 0 : 1,
				      .want_steer_reads = 1 });
}

static void
accepted_case(const char *addr, const char *feature)
{
	accepted_case_opts(addr, feature, false);
}

/* A wildcard listener cannot know which local address a connection came to: both are
 * read, and the local one is the address connected to. */
Test(net_addr, wildcard_listener_reads_the_local_address)
{
	accepted_run(&(struct acase){ .addr = "0.0.0.0",
				      .conn = "127.0.0.1",
				      .feature = "direct_fd=auto",
				      .want_reads = 2,
				      .want_steer_reads = 1 });
	accepted_run(&(struct acase){ .addr = "::",
				      .conn = "::1",
				      .feature = "direct_fd=off",
				      .want_reads = 2,
				      .want_steer_reads = 1 });
}

/* Steering is checked with the one value it compares (cpu: SO_INCOMING_CPU, queue: the
 * NAPI id), and not at all with hash steering. */
Test(net_addr, steering_reads_only_what_it_checks)
{
	accepted_run(&(struct acase){ .addr = "127.0.0.1",
				      .feature = "direct_fd=auto",
				      .want_reads = 1,
				      .steer = KEEL_STEER_HASH,
				      .want_steer_reads = 0 });
	accepted_run(&(struct acase){ .addr = "127.0.0.1",
				      .feature = "direct_fd=off",
				      .want_reads = 1,
				      .steer = KEEL_STEER_QUEUE,
				      .want_steer_reads = 1 });
	accepted_run(&(struct acase){ .addr = "127.0.0.1",
				      .feature = "direct_fd=off",
				      .want_reads = 1,
				      .steer = KEEL_STEER_CPU,
				      .want_steer_reads = 1 });
}

Test(net_addr, listener_without_addresses_answers_enodata)
{
	accepted_case_opts("127.0.0.1", "direct_fd=auto", true);
	accepted_case_opts("127.0.0.1", "direct_fd=off", true);
}

/* direct_fd=on: the connection must be a direct descriptor (auto could fall back). */
Test(net_addr, accepted_ipv4_direct_descriptor)
{
	accepted_case("127.0.0.1", "direct_fd=on");
}

Test(net_addr, accepted_ipv4_plain_descriptor)
{
	accepted_case("127.0.0.1", "direct_fd=off");
}

Test(net_addr, accepted_ipv6_direct_descriptor)
{
	accepted_case("::1", "direct_fd=on");
}

Test(net_addr, accepted_ipv6_plain_descriptor)
{
	accepted_case("::1", "direct_fd=off");
}

static struct sockaddr_storage conn_to;

static void
start_connect(void *arg)
{
	struct keel_conn *c;
	char host[64];
	uint16_t port;
	int r;

	if (conn_to.ss_family == AF_INET) {
		struct sockaddr_in *a = (void *)&conn_to;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
	} else {
		struct sockaddr_in6 *a = (void *)&conn_to;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
	}
	r = keel_conn_connect(host, port, KEEL_S(10), &addr_ops, NULL, &c);
	if (!SHARD_CHECK_EQ(r, 0)) {
		keel_stop(r);
		return;
	}
	/* Not connected yet: the target is not the peer's address until the connect ends
	 * (it returned 0 with the target before). */
	{
		struct sockaddr_storage ss;

		SHARD_CHECK_EQ(keel_conn_peer_addr(c, &ss, NULL), -ENOTCONN);
	}
}

static void
connected_case(const char *addr)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_runtime *rt;
	struct sockaddr_storage want_peer;
	socklen_t len;
	int lfd, fd;

	memset(&seen, 0, sizeof(seen));
	cr_assert_eq(keel_net_addr_parse(addr, 0, &conn_to, &len), 0);
	lfd = socket(conn_to.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(lfd, 0);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&conn_to, len), 0);
	cr_assert_eq(listen(lfd, 4), 0);
	len = sizeof(conn_to);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&conn_to, &len), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, start_connect, NULL), 0);
	WAIT_FOR(atomic_load(&seen.done), "on_open of the connection");
	fd = accept(lfd, (struct sockaddr *)&want_peer, &(socklen_t){ sizeof(want_peer) });
	cr_assert_geq(fd, 0);
	cr_assert_eq(seen.rpeer, 0, "keel_conn_peer_addr: %s", strerror(-seen.rpeer));
	cr_assert_eq(seen.rlocal, 0, "keel_conn_local_addr: %s", strerror(-seen.rlocal));
	/* keel's peer is the listener; keel's local address is what accept() saw. */
	assert_same(&seen.peer, seen.peerlen, &conn_to, "peer");
	assert_same(&seen.local, seen.locallen, &want_peer, "local");
	close(fd);
	close(lfd);
	WAIT_FOR(atomic_load(&seen.closes) == 1, "on_close");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
}

Test(net_addr, connected_ipv4)
{
	connected_case("127.0.0.1");
}

Test(net_addr, connected_ipv6)
{
	connected_case("::1");
}

static void
stop_open(struct keel_conn *c)
{
	atomic_store(&seen.done, 1);
	keel_stop(0);
}

static const struct keel_conn_ops stop_ops = { .on_open = stop_open,
					       .on_data = addr_data,
					       .on_close = addr_close };

/* A steering read still in flight when the runtime stops completes after the listener's
 * shard part was closed: two connections wait before the listener starts, its table holds
 * one descriptor, so the one accept (its read submitted) fills the table and the listener
 * parks, unarmed (the second connection stays in the backlog), to be closed at once by the
 * stop that the first on_open makes. The read's completion arrives after the close. */
Test(net_addr, a_steering_read_in_flight_at_stop_outlives_the_listener_part)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config nc;
	struct keel_runtime *rt;
	struct keel_listener *l;
	struct keel_listener_stats lst;
	struct sockaddr_storage to;
	socklen_t len;
	int fd[2];

	memset(&seen, 0, sizeof(seen));
	keel_net_config_init(&nc);
	nc.max_files = 1;
	net_test_feature(&o, "direct_fd=auto");
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	struct keel_listen_opts lo = {
		.addr = "127.0.0.1", .no_addrs = true, .steer = KEEL_STEER_CPU, .net = &nc, .rt = rt
	};
	cr_assert_eq(keel_listener_create(&lo, 1, &stop_ops, NULL, &l), 0);
	cr_assert_eq(keel_net_addr_parse("127.0.0.1", keel_listener_port(l), &to, &len), 0);
	for (int i = 0; i < 2; i++) {
		fd[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		cr_assert_geq(fd[i], 0);
		cr_assert_eq(connect(fd[i], (struct sockaddr *)&to, len), 0, "connect: %s",
			     strerror(errno));
	}
	cr_assert_eq(keel_runtime_start(rt, start_listener, l), 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	cr_assert_eq(keel_listener_stats(l, 0, &lst), 0);
	cr_assert_eq(lst.accepted, 1);
	cr_assert_eq(lst.steer_reads, 1);
	cr_assert_eq(lst.accept_errors, 0, "%llu accept errors: a full table parks the listener",
		     (unsigned long long)lst.accept_errors);
	keel_runtime_destroy(rt);
	keel_listener_destroy(l);
	close(fd[0]);
	close(fd[1]);
	SHARD_CHECKS_PASSED();
}

static char create_log[512];

static void
create_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	if (level == KEEL_LOG_ERROR && !create_log[0])
		snprintf(create_log, sizeof(create_log), "%s", msg);
}

/* A bind that fails for want of a privilege or of the address says the fix, in the
 * listener's port check and its shards' binds, and in a UDP endpoint's. */
static void
bind_refused(const char *addr, uint16_t port, int want, const char *said)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_runtime *rt;
	struct keel_listener *l = NULL;
	struct keel_listen_opts lo = { .addr = addr, .port = port };
	int r;

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	create_log[0] = 0;
	keel_log_set_sink(create_sink, NULL);
	r = keel_listener_create(&lo, 1, &addr_ops, NULL, &l);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	if (r == 0)
		keel_listener_destroy(l);
	cr_assert_eq(r, want, "%s port %u: %d (%s)", addr, port, r, create_log);
	cr_assert(strstr(create_log, said), "%s port %u: '%s'", addr, port, create_log);
}

/* A queue map longer than the steering program can hold (2 instructions a queue, the
 * kernel's 4096 at most) is refused at create, naming the count and the limit; the
 * kernel's refusal said only "Invalid argument; use --steer hash". */
Test(net_addr, a_queue_map_longer_than_the_steering_program_holds_is_refused_naming_the_limit)
{
	static unsigned map[3000]; /* every queue to shard 0 */
	struct keel_listen_opts lo = {
		.addr = "127.0.0.1", .steer = KEEL_STEER_QUEUE, .queue_shard = map, .nqueues = 3000
	};
	struct keel_listener *l = NULL;
	int r;

	create_log[0] = 0;
	keel_log_set_sink(create_sink, NULL);
	r = keel_listener_create(&lo, 1, &addr_ops, NULL, &l);
	keel_log_set_sink(NULL, NULL);
	if (r == 0)
		keel_listener_destroy(l);
	cr_assert_eq(r, -EINVAL, "%d: '%s'", r, create_log);
	cr_assert(strstr(create_log, "3000 rx queues") && strstr(create_log, "at most 2045 queues"),
		  "'%s'", create_log);
}

Test(net_addr, an_address_no_interface_has_is_said_as_such)
{
	if (net_sysctl_int("/proc/sys/net/ipv4/ip_nonlocal_bind", 0))
		cr_skip_test("net.ipv4.ip_nonlocal_bind is 1: any address binds");
	/* TEST-NET-1 (RFC 5737): on no interface here; a bind sends nothing. Port 0 reaches
	 * the shards' binds, another the port check before them. */
	bind_refused("192.0.2.1", 0, -EADDRNOTAVAIL, "no interface of this host has that address");
	bind_refused("192.0.2.1", 4242, -EADDRNOTAVAIL,
		     "no interface of this host has that address");
}

Test(net_addr, a_privileged_port_without_the_capability_names_it)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];
	int start = net_sysctl_int("/proc/sys/net/ipv4/ip_unprivileged_port_start", 1024);

	if (start <= 1)
		cr_skip_test("net.ipv4.ip_unprivileged_port_start is %d: no port is privileged",
			     start);
	/* This test's own process (Criterion forks one per test) drops the capability. */
	cr_assert_eq(syscall(SYS_capget, &h, d), 0);
	d[CAP_NET_BIND_SERVICE / 32].effective &= ~(1u << (CAP_NET_BIND_SERVICE % 32));
	cr_assert_eq(syscall(SYS_capset, &h, d), 0, "capset: %s", strerror(errno));
	bind_refused("127.0.0.1", 1, -EACCES, "need CAP_NET_BIND_SERVICE");
}

/* A listener whose socket finds the descriptor table full names its address and the fix. */
Test(net_addr, a_listener_out_of_descriptors_says_so)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_runtime *rt;
	struct keel_listener *l = NULL;
	struct keel_listen_opts lo = { .addr = "127.0.0.1", .port = 0 };
	struct rlimit rl, was;
	int fd, r;

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	/* The next descriptor is the last one allowed: no socket can be made. The limit is
	 * put back at once (Criterion's own work in this process needs descriptors). */
	fd = dup(0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &was), 0);
	rl = was;
	rl.rlim_cur = (rlim_t)fd;
	close(fd);
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	create_log[0] = 0;
	keel_log_set_sink(create_sink, NULL);
	r = keel_listener_create(&lo, 1, &addr_ops, NULL, &l);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &was), 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(r, -EMFILE, "%d (%s)", r, create_log);
	cr_assert(strstr(create_log, "listener on 127.0.0.1 port 0: socket: ") &&
			  strstr(create_log, "raise ulimit -n"),
		  "'%s'", create_log);
}

/* A CPU-steered listener for more shards than its runtime has is refused, and says so. */
Test(net_addr, a_listener_for_more_shards_than_its_runtime_is_refused_with_a_reason)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_runtime *rt;
	struct keel_listener *l = NULL;
	int r;

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	struct keel_listen_opts lo = { .addr = "127.0.0.1", .steer = KEEL_STEER_CPU, .rt = rt };
	create_log[0] = 0;
	keel_log_set_sink(create_sink, NULL);
	r = keel_listener_create(&lo, 2, &addr_ops, NULL, &l);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(r, -EINVAL);
	cr_assert_null(l);
	cr_assert(strstr(create_log, "2 shards") && strstr(create_log, "has 1"), "log: '%s'",
		  create_log);
	keel_runtime_destroy(rt);
}

/* A listener made for more shards than the runtime that starts it: the missing shards'
 * sockets listen, so the kernel put a share of the connections in backlogs nothing
 * accepted, and the start said nothing. Refused at each shard's start, with the fix. */
static struct keel_listener *more_l;
static _Atomic int more_starts, more_refused;

static void
more_start(void *app)
{
	int r = keel_listener_start(more_l);

	(void)app;
	atomic_fetch_add(&more_starts, 1);
	if (r == -EINVAL)
		atomic_fetch_add(&more_refused, 1);
}

Test(net_addr, a_listener_for_more_shards_than_the_runtime_that_starts_it_is_refused)
{
	struct keel_opts o = net_test_opts(2);
	struct keel_listen_opts lo = { .addr = "127.0.0.1" };
	struct keel_runtime *rt;

	atomic_store(&more_starts, 0);
	atomic_store(&more_refused, 0);
	cr_assert_eq(keel_listener_create(&lo, 3, &addr_ops, NULL, &more_l), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	create_log[0] = 0;
	keel_log_set_sink(create_sink, NULL);
	cr_assert_eq(keel_runtime_start(rt, more_start, NULL), 0);
	WAIT_FOR(atomic_load(&more_starts) == 2, "both shards' starts");
	keel_log_set_sink(NULL, NULL);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_listener_destroy(more_l);
	cr_assert_eq(atomic_load(&more_refused), 2, "%d of 2 starts refused (log: '%s')",
		     atomic_load(&more_refused), create_log);
	cr_assert(strstr(create_log, "for 3 shards, started on a runtime of 2") &&
			  strstr(create_log, "create it for 2"),
		  "'%s'", create_log);
}

/* A shard whose ring has a file table of the application's (docs/file.md, a core-only
 * program's direct descriptors) cannot make its network state, which registers its own:
 * the kernel's -EBUSY was logged as "lower --max-files", which cannot help, and returned
 * as the -EBUSY keel_net_shard_init gives for state that exists already. */
static struct keel_listener *table_l;
static _Atomic int table_r = 1;

static void
table_start(void *app)
{
	int r = io_uring_register_files_sparse(keel_shard_ring_get(), 8);

	(void)app;
	atomic_store(&table_r, r < 0 ? 1000 + r : keel_listener_start(table_l));
}

Test(net_addr, a_file_table_of_the_applications_is_named_when_the_network_starts)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_listen_opts lo = { .addr = "127.0.0.1" };
	struct keel_runtime *rt;
	int r;

	net_test_feature(&o, "direct_fd=on");
	cr_assert_eq(keel_listener_create(&lo, 1, &addr_ops, NULL, &table_l), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	create_log[0] = 0;
	keel_log_set_sink(create_sink, NULL);
	cr_assert_eq(keel_runtime_start(rt, table_start, NULL), 0);
	WAIT_FOR(atomic_load(&table_r) != 1, "the shard's start");
	keel_log_set_sink(NULL, NULL);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_listener_destroy(table_l);
	r = atomic_load(&table_r);
	cr_assert_lt(r, 900, "the test's own table was refused: %s", strerror(1000 - r));
	cr_assert_eq(r, -EEXIST, "%d (%s)", r, create_log);
	cr_assert(strstr(create_log, "has a file table already") &&
			  strstr(create_log, "direct_fd=off"),
		  "'%s'", create_log);
}

/* The addresses of an accepted direct descriptor are read through a plain copy of it: with
 * the process's descriptors all taken, that copy fails with EMFILE. keel_conn_peer_addr
 * gives -EMFILE, and the log says the descriptors ran out (raise ulimit -n), not that the
 * kernel is too old for IORING_OP_FIXED_FD_INSTALL, which it said of every failure. In a
 * child: it takes every descriptor of the process. */
static _Atomic int fd_said, kernel_blamed;

static void
fd_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)level;
	(void)module;
	(void)shard;
	(void)arg;
	if (strstr(msg, "raise ulimit -n") && strstr(msg, "cannot be read"))
		atomic_store(&fd_said, 1);
	if (strstr(msg, "needs Linux 6.8"))
		atomic_store(&kernel_blamed, 1);
}

static int
no_fd_child(void)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config nc;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct rlimit rl;
	struct srv s;
	int fd, dups[256], ndup = 0, r;

	keel_net_config_init(&nc);
	nc.max_files = 64; /* below the soft limit: it stays */
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 10;
	rl.rlim_cur = 256;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 11;
	keel_log_set_sink(fd_sink, NULL);
	memset(&seen, 0, sizeof(seen));
	if (srv_start(&s, &o, &nc, &addr_ops) < 0)
		return 12;
	/* The listener started (its start may need a descriptor), then the table fills. */
	for (uint64_t dl = test_deadline(TEST_WAIT_MS); atomic_load(&s.started) < 1;) {
		if (test_expired(dl))
			return 20;
		test_pause();
	}
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); /* before the table fills */
	if (fd < 0)
		return 13;
	/* Every descriptor of the process taken; the limit is 256, so dups[] holds them all. */
	for (int d; ndup < 256 && (d = dup(0)) >= 0;)
		dups[ndup++] = d;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons(s.port);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return 14;
	for (uint64_t dl = test_deadline(TEST_WAIT_MS); !atomic_load(&seen.done);) {
		if (test_expired(dl))
			return 15;
		test_pause();
	}
	/* Only the copies: the runtime's own descriptors (its shards' eventfds) are among the
	 * numbers below them, and closing one made the stop's wake-up fail with EBADF, a hang
	 * when the shard had gone back to sleep (seen once in a CI simulation). */
	for (int i = 0; i < ndup; i++)
		close(dups[i]);
	close(fd);
	r = srv_stop(&s);
	if (r != 0)
		return 16;
	if (seen.rpeer != -EMFILE) {
		fprintf(stderr, "keel_conn_peer_addr: %d, want -EMFILE\n", seen.rpeer);
		return 17;
	}
	if (atomic_load(&kernel_blamed))
		return 18;
	return atomic_load(&fd_said) ? 0 : 19;
}

Test(net_addr, no_descriptor_left_to_read_the_addresses_is_said_as_such)
{
	run_in_child(no_fd_child);
}

/* ---- CPU steering attached late while shard 0's socket is closed by the stop ---- */

/* Without a runtime at create, the last shard to start attaches the program to shard 0's
 * socket (l->parts[0].fd) from its own thread, while shard 0, stopped already, may close
 * that socket from its own. Driven in that order here: shard 0 starts the listener and
 * stops; shard 1 waits in on_start until shard 0's socket is gone, then starts it. The
 * attach read the closed socket's -1 (EBADF: "attaching the cpu steering program
 * failed: Bad file descriptor; use --steer hash"; or, had the number been reused, another
 * file). It is skipped now, the listener stopping. */
static struct {
	struct keel_listener *l;
	int fd0; /* shard 0's socket: the lowest free descriptor at create */
	uint16_t port;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool gone;  /* shard 0's socket closed (set on shard 0) */
	int r0, r1; /* each shard's keel_listener_start */
	char attach_log[512];
} late = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

static bool
late_fd0_open(void)
{
	struct sockaddr_in a;
	socklen_t al = sizeof(a);

	return getsockname(late.fd0, (struct sockaddr *)&a, &al) == 0 && a.sin_family == AF_INET &&
	       ntohs(a.sin_port) == late.port;
}

/* On shard 0, each pass of its loop until the stop has closed the socket. */
static void
late_watch(void *arg)
{
	(void)arg;
	if (late_fd0_open()) {
		SHARD_CHECK_EQ(keel_defer(late_watch, NULL), 0);
		return;
	}
	pthread_mutex_lock(&late.lock);
	late.gone = true;
	pthread_cond_broadcast(&late.cond);
	pthread_mutex_unlock(&late.lock);
}

static void
late_start(void *app)
{
	(void)app;
	if (keel_shard_id(keel_this_shard()) == 0) {
		late.r0 = keel_listener_start(late.l);
		SHARD_CHECK_EQ(keel_defer(late_watch, NULL), 0);
		keel_stop(0);
		return;
	}
	pthread_mutex_lock(&late.lock);
	while (!late.gone)
		pthread_cond_wait(&late.cond, &late.lock);
	pthread_mutex_unlock(&late.lock);
	late.r1 = keel_listener_start(late.l);
}

static void
late_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module, (void)shard, (void)arg;
	if (level == KEEL_LOG_ERROR && strstr(msg, "steering program") && !late.attach_log[0])
		snprintf(late.attach_log, sizeof(late.attach_log), "%s", msg);
}

Test(net_addr, a_late_cpu_steering_attach_after_shard_0_closed_its_socket_is_skipped)
{
	struct keel_opts o = net_test_opts(2);
	struct keel_runtime *rt;
	struct keel_listen_opts lo = { .addr = "127.0.0.1", .steer = KEEL_STEER_CPU };

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	/* The listener's first socket takes the lowest free descriptor (port 0: no port
	 * probe before it; nothing else opens one meanwhile, the shards not yet running). */
	late.fd0 = dup(0);
	cr_assert_geq(late.fd0, 0);
	close(late.fd0);
	cr_assert_eq(keel_listener_create(&lo, 2, &addr_ops, NULL, &late.l), 0);
	late.port = keel_listener_port(late.l);
	cr_assert(late_fd0_open(), "descriptor %d is the listener's first socket (premise)",
		  late.fd0);
	keel_log_set_sink(late_sink, NULL);
	cr_assert_eq(keel_runtime_start(rt, late_start, NULL), 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	keel_listener_destroy(late.l);
	cr_assert(late.gone);
	cr_assert_eq(late.r0, 0);
	cr_assert_eq(late.r1, 0, "shard 1's start: %d (%s); '%s'", late.r1, strerror(-late.r1),
		     late.attach_log);
	cr_assert_eq(late.attach_log[0], 0, "'%s'", late.attach_log);
	SHARD_CHECKS_PASSED();
}

// SPDX-License-Identifier: MIT
/*
 * Host names are resolved at set-up time, never on a shard's loop: keel_net_resolve before
 * the runtime starts, keel_listener_create with a name, keel_conn_connect_addr with the
 * result; on a shard both refuse names.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

static bool
is_loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_LOOPBACK);
	if (ss->ss_family == AF_INET6)
		return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
	return false;
}

static uint16_t
port_of(const struct sockaddr_storage *ss)
{
	return ntohs(ss->ss_family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
					      : ((const struct sockaddr_in6 *)ss)->sin6_port);
}

Test(net_resolve, localhost_and_literals)
{
	struct sockaddr_storage ss;
	socklen_t len;

	cr_assert_eq(keel_net_resolve("localhost", 4242, AF_UNSPEC, &ss, &len), 0);
	cr_assert(is_loopback(&ss), "localhost is a loopback address (family %d)", ss.ss_family);
	cr_assert_eq(port_of(&ss), 4242);
	cr_assert_eq(keel_net_resolve("localhost", 1, AF_INET, &ss, &len), 0);
	cr_assert_eq(ss.ss_family, AF_INET);
	cr_assert_eq(len, sizeof(struct sockaddr_in));
	cr_assert(is_loopback(&ss));
	cr_assert_eq(keel_net_resolve("::1", 7, AF_UNSPEC, &ss, &len), 0);
	cr_assert_eq(ss.ss_family, AF_INET6);
	cr_assert_eq(port_of(&ss), 7);
	cr_assert_eq(keel_net_resolve("", 7, AF_UNSPEC, &ss, &len), -EINVAL);
	cr_assert_eq(keel_net_resolve(NULL, 7, AF_UNSPEC, &ss, &len), -EINVAL);
	cr_assert_eq(keel_net_resolve("localhost", 7, 12345, &ss, &len), -EINVAL);
}

/* An address shorter than its family's is refused at once (-EINVAL, no callback), as the
 * header says; it was accepted and ended in on_close(-EINVAL) from the kernel. The length
 * checks come before the shard's: off a shard too. keel_net_addr_parse takes a NULL @len,
 * as keel_net_resolve does. */
static void
never_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	(void)c;
	(void)s;
	(void)n;
	cr_assert_fail("on_data");
}

static void
never_close(struct keel_conn *c, int status)
{
	(void)c;
	cr_assert_fail("on_close(%d)", status);
}

Test(net_resolve, addresses_shorter_than_their_family_are_refused)
{
	static const struct keel_conn_ops ops = { .on_data = never_data, .on_close = never_close };
	struct sockaddr_storage ss;
	struct keel_conn *c;
	socklen_t len;

	cr_assert_eq(keel_net_addr_parse("127.0.0.1", 9, &ss, &len), 0);
	cr_assert_eq(keel_conn_connect_addr((struct sockaddr *)&ss, 3, 0, &ops, NULL, &c), -EINVAL);
	cr_assert_eq(keel_conn_connect_addr((struct sockaddr *)&ss, len - 1, 0, &ops, NULL, &c),
		     -EINVAL);
	cr_assert_eq(keel_net_addr_parse("::1", 9, &ss, &len), 0);
	cr_assert_eq(keel_conn_connect_addr((struct sockaddr *)&ss, sizeof(struct sockaddr_in), 0,
					    &ops, NULL, &c),
		     -EINVAL);
	cr_assert_eq(keel_net_addr_parse("unix:/x", 0, &ss, &len), 0);
	cr_assert_eq(keel_conn_connect_addr((struct sockaddr *)&ss, sizeof(sa_family_t), 0, &ops,
					    NULL, &c),
		     -EINVAL);
	/* Longer than a sockaddr_un (the kernel refuses it): refused here. */
	cr_assert_eq(keel_conn_connect_addr((struct sockaddr *)&ss, sizeof(ss), 0, &ops, NULL, &c),
		     -EINVAL);
	/* Long enough: refused only for want of a shard. */
	cr_assert_eq(keel_conn_connect_addr((struct sockaddr *)&ss, len, 0, &ops, NULL, &c),
		     -EPERM);
	cr_assert_eq(keel_net_addr_parse("::1", 9, &ss, NULL), 0);
	cr_assert_eq(ss.ss_family, AF_INET6);
}

static struct sockaddr_storage target;
static socklen_t target_len;
static int on_shard_resolve = 1, on_shard_connect_name = 1;
static _Atomic int echoed, closes;
static char got[5];
static unsigned ngot;

static void
c_open(struct keel_conn *c)
{
	SHARD_CHECK_EQ(keel_conn_write(c, "hello", 5), 0);
}

static void
c_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		for (uint32_t k = 0; k < s[i].len && ngot < sizeof(got); k++)
			got[ngot++] = (char)s[i].data[k];
		keel_slice_put(&s[i]);
	}
	if (ngot == sizeof(got)) {
		atomic_store(&echoed, 1);
		keel_conn_close(c);
	}
}

static void
c_close(struct keel_conn *c, int status)
{
	atomic_fetch_add(&closes, 1);
}

static const struct keel_conn_ops c_ops = { .on_open = c_open,
					    .on_data = c_data,
					    .on_close = c_close };

static void
start(void *arg)
{
	struct sockaddr_storage ss;
	struct keel_conn *c;
	socklen_t len;
	int r = keel_listener_start(arg);

	if (!SHARD_CHECK_EQ(r, 0)) {
		keel_stop(r);
		return;
	}
	/* Never on a shard: a resolver call blocks the loop. */
	on_shard_resolve = keel_net_resolve("localhost", 1, AF_UNSPEC, &ss, &len);
	on_shard_connect_name = keel_conn_connect("localhost", 1, KEEL_S(1), &c_ops, NULL, &c);
	r = keel_conn_connect_addr((struct sockaddr *)&target, target_len, KEEL_S(10), &c_ops, NULL,
				   &c);
	if (!SHARD_CHECK_EQ(r, 0))
		keel_stop(r);
}

static void
start_only(void *arg)
{
	int r = keel_listener_start(arg);

	if (!SHARD_CHECK_EQ(r, 0))
		keel_stop(r);
}

Test(net_resolve, listener_and_connect_by_name_resolved_before_the_run)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_listen_opts lo = { .addr = "localhost" };
	struct srv sv = { 0 };
	struct keel_runtime *rt;
	struct keel_listener *l;

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	lo.rt = rt;
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, &sv, &l), 0);
	cr_assert_eq(keel_net_resolve("localhost", keel_listener_port(l), AF_UNSPEC, &target,
				      &target_len),
		     0);
	cr_assert_eq(keel_runtime_start(rt, start, l), 0);
	WAIT_FOR(atomic_load(&echoed) && atomic_load(&closes) == 1, "the echo of 'hello'");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_listener_destroy(l);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(memcmp(got, "hello", 5), 0);
	cr_assert_eq(on_shard_resolve, -EPERM, "keel_net_resolve on a shard");
	cr_assert_eq(on_shard_connect_name, -EINVAL, "keel_conn_connect takes literals only");
}

/* Scoped IPv6 literals ("fe80::1%lo", "fe80::1%1"): the scope is the interface a link-local
 * address belongs to, in sin6_scope_id. Parsed without the resolver (getaddrinfo with
 * AI_NUMERICHOST: no DNS, on a shard too), by keel_net_addr_parse and keel_net_resolve
 * alike; an interface that does not exist is refused naming it. They were refused as no
 * IPv6 literal at all, so no link-local listener could be made. */
static char scope_log[512];

static void
scope_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module;
	(void)shard;
	(void)arg;
	if (level == KEEL_LOG_ERROR && !scope_log[0])
		snprintf(scope_log, sizeof(scope_log), "%s", msg);
}

/* keel_net_addr_parse(@addr, 80) is refused with -EINVAL; its first error line is left in
 * scope_log. */
static void
parse_refused(const char *addr)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int r;

	scope_log[0] = 0;
	keel_log_set_sink(scope_sink, NULL);
	r = keel_net_addr_parse(addr, 80, &ss, &len);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(r, -EINVAL, "keel_net_addr_parse(\"%s\"): %d", addr, r);
}

static void
assert_scoped(const struct sockaddr_storage *ss, socklen_t len, uint32_t scope, uint16_t port)
{
	const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
	struct in6_addr want;

	cr_assert_eq(inet_pton(AF_INET6, "fe80::1", &want), 1);
	cr_assert_eq(ss->ss_family, AF_INET6);
	cr_assert_eq(len, sizeof(*a6));
	cr_assert_eq(memcmp(&a6->sin6_addr, &want, sizeof(want)), 0);
	cr_assert_eq(a6->sin6_scope_id, scope, "scope id %u, want %u", a6->sin6_scope_id, scope);
	cr_assert_eq(ntohs(a6->sin6_port), port);
}

Test(net_resolve, scoped_ipv6_literals_carry_their_interface)
{
	unsigned lo = if_nametoindex("lo");
	struct sockaddr_storage ss;
	socklen_t len = 0;
	int r;

	cr_assert_neq(lo, 0u, "no interface lo");
	r = keel_net_addr_parse("fe80::1%lo", 80, &ss, &len);
	cr_assert_eq(r, 0, "keel_net_addr_parse(\"fe80::1%%lo\"): %d", r);
	assert_scoped(&ss, len, lo, 80);
	r = keel_net_resolve("fe80::1%lo", 81, AF_UNSPEC, &ss, &len);
	cr_assert_eq(r, 0, "keel_net_resolve(\"fe80::1%%lo\"): %d", r);
	assert_scoped(&ss, len, lo, 81);
	cr_assert_eq(keel_net_resolve("fe80::1%lo", 81, AF_INET, &ss, &len), -EAFNOSUPPORT);
	cr_assert_eq(keel_net_addr_parse("fe80::1%1", 82, &ss, &len), 0);
	assert_scoped(&ss, len, 1, 82);
	/* Unscoped literals as before: no scope. */
	cr_assert_eq(keel_net_addr_parse("::1", 83, &ss, &len), 0);
	cr_assert_eq(((struct sockaddr_in6 *)&ss)->sin6_scope_id, 0u);

	/* An interface that does not exist: refused, naming it; a resolve too (no DNS). */
	parse_refused("fe80::1%nosuchif0");
	cr_assert(strstr(scope_log, "'nosuchif0'") && strstr(scope_log, "interface"), "log: '%s'",
		  scope_log);
	cr_assert_eq(keel_net_resolve("fe80::1%nosuchif0", 80, AF_UNSPEC, &ss, &len), -EINVAL);
	/* A scope on an address that needs none: refused as such, not blaming lo. */
	parse_refused("::1%lo");
	cr_assert(strstr(scope_log, "link-local") && !strstr(scope_log, "no network interface"),
		  "log: '%s'", scope_log);
	/* A numeric scope is held to the same rules (glibc takes any number on any address):
	 * an index no interface has, and one on an address that needs none. */
	cr_assert(!if_indextoname(99999, (char[IF_NAMESIZE]){ 0 }), "an interface 99999 exists");
	parse_refused("fe80::1%99999");
	cr_assert(strstr(scope_log, "'99999'") && strstr(scope_log, "interface"), "log: '%s'",
		  scope_log);
	parse_refused("2001:db8::1%1");
	cr_assert(strstr(scope_log, "link-local"), "log: '%s'", scope_log);
	/* The scope only follows an IPv6 literal, and names something. */
	cr_assert_eq(keel_net_addr_parse("fe80::1%", 80, &ss, &len), -EINVAL);
	cr_assert_eq(keel_net_addr_parse("127.0.0.1%lo", 80, &ss, &len), -EINVAL);
	cr_assert_eq(keel_net_addr_parse("fe80::zz%lo", 80, &ss, &len), -EINVAL);
}

/* Whether fe80::1%lo binds here: 0, or -errno. */
static int
link_local_binds(void)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0), r;

	cr_assert_geq(fd, 0);
	cr_assert_eq(keel_net_addr_parse("fe80::1%lo", 0, &ss, &len), 0);
	r = bind(fd, (struct sockaddr *)&ss, len) < 0 ? -errno : 0;
	close(fd);
	return r;
}

/* A listener on a link-local address with its scope. lo has no link-local address unless
 * one was added, and the tests bind to loopback only: as root the test adds fe80::1 to the
 * loopback of a network namespace of its own (it skipped on every machine before, CI's
 * included); elsewhere "fe80::1%lo" is used only where the kernel binds it. The listener
 * serves a client that connects to the same scoped address. */
Test(net_resolve, a_listener_on_a_scoped_link_local_address_serves)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_listen_opts lo = { .addr = "fe80::1%lo" };
	struct sockaddr_storage ss;
	struct srv sv = { 0 };
	struct keel_runtime *rt;
	struct keel_listener *l;
	socklen_t len;
	char b[5];
	int fd, r = link_local_binds();

	if (r < 0 && geteuid() == 0 && unshare(CLONE_NEWNET) == 0 &&
	    system("ip link set lo up && ip -6 addr add fe80::1/64 dev lo nodad") == 0)
		r = link_local_binds();
	if (r < 0)
		cr_skip_test("fe80::1%%lo does not bind (%s): lo has no such address, and one "
			     "could not be added in a namespace of the test's (root, ip)",
			     strerror(-r));
	cr_assert_eq(keel_net_addr_parse(lo.addr, 0, &ss, &len), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	lo.rt = rt;
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, &sv, &l), 0);
	cr_assert_eq(keel_runtime_start(rt, start_only, l), 0);
	((struct sockaddr_in6 *)&ss)->sin6_port = htons(keel_listener_port(l));
	fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), 0, "connect: %s", strerror(errno));
	cr_assert_eq(cli_write_all(fd, "hello", 5), 0);
	cr_assert_eq(cli_read_all(fd, b, 5), 0);
	cr_assert_eq(memcmp(b, "hello", 5), 0);
	close(fd);
	WAIT_FOR(atomic_load(&sv.closes) == 1, "the server's on_close");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_listener_destroy(l);
	SHARD_CHECKS_PASSED();
}

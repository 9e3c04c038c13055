// SPDX-License-Identifier: MIT
/*
 * Host names are resolved at set-up time, never on a shard's loop: keel_net_resolve before
 * the runtime starts, keel_listener_create with a name, keel_conn_connect_addr with the
 * result; on a shard both refuse names.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
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

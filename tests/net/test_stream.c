// SPDX-License-Identifier: MIT
/* Data integrity per feature combination, steering, bad input, shutdown with open conns. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define NCONN 16

static uint8_t
prng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return (uint8_t)(*s >> 32);
}

/* Full duplex: write a seeded random stream on 16 connections while reading the echo back,
 * checking every byte and a running checksum at both ends. */
static void
integrity(const char *feature, enum keel_policy p, uint32_t zc_threshold)
{
	/* The sanitizer run of tools/test.sh sets KEEL_TEST_SCALE=small: 1 MiB per connection
	 * there, the full 64 MiB in the normal build. */
	size_t total = test_small() ? (1u << 20) : (64u << 20);
	struct keel_opts o = net_test_opts(2);
	struct keel_net_config nc;
	struct srv s;
	int fds[NCONN];
	uint64_t wseed[NCONN], rseed[NCONN], wsum[NCONN] = { 0 }, rsum[NCONN] = { 0 };
	size_t sent[NCONN] = { 0 }, rcvd[NCONN] = { 0 };
	static uint8_t buf[65536];
	unsigned done = 0;

	keel_net_config_init(&nc);
	nc.zc_threshold = zc_threshold;
	if (feature) {
		char err[128];
		char spec[64];
		int argc = 3;
		snprintf(spec, sizeof(spec), "%s=%s", feature, keel_policy_name(p));
		char *argv[] = { "t", "--feature", spec, NULL };
		cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	}
	cr_assert_eq(srv_start(&s, &o, &nc, NULL), 0);
	for (int i = 0; i < NCONN; i++) {
		fds[i] = cli_connect(s.port);
		cr_assert_geq(fds[i], 0);
		fcntl(fds[i], F_SETFL, O_NONBLOCK);
		wseed[i] = rseed[i] = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
	}
	while (done < NCONN) {
		struct pollfd pf[NCONN];
		for (int i = 0; i < NCONN; i++) {
			pf[i].fd = rcvd[i] < total ? fds[i] : -1;
			pf[i].events = POLLIN | (sent[i] < total ? POLLOUT : 0);
		}
		cr_assert_gt(poll(pf, NCONN, 30000), 0, "no progress for 30 s");
		for (int i = 0; i < NCONN; i++) {
			if (pf[i].revents & POLLOUT) {
				size_t n = total - sent[i] < 16384 ? total - sent[i] : 16384;
				uint64_t save = wseed[i];
				for (size_t k = 0; k < n; k++)
					buf[k] = prng(&wseed[i]);
				ssize_t w = send(fds[i], buf, n, MSG_NOSIGNAL);
				cr_assert(w >= 0 || errno == EAGAIN, "send: %s", strerror(errno));
				/* Regenerate to the bytes actually sent. */
				wseed[i] = save;
				for (ssize_t k = 0; k < (w > 0 ? w : 0); k++)
					wsum[i] += prng(&wseed[i]);
				if (w > 0)
					sent[i] += (size_t)w;
			}
			if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
				ssize_t r = recv(fds[i], buf, sizeof(buf), 0);
				cr_assert(r > 0 || (r < 0 && errno == EAGAIN), "recv: %zd %s", r,
					  strerror(errno));
				for (ssize_t k = 0; k < r; k++) {
					uint8_t e = prng(&rseed[i]);
					cr_assert_eq(buf[k], e, "conn %d byte %zu differs", i,
						     rcvd[i] + (size_t)k);
					rsum[i] += buf[k];
				}
				if (r > 0) {
					rcvd[i] += (size_t)r;
					if (rcvd[i] == total)
						done++;
				}
			}
		}
	}
	for (int i = 0; i < NCONN; i++) {
		cr_assert_eq(wsum[i], rsum[i]);
		close(fds[i]);
	}
	cr_assert_eq(srv_stop(&s), 0);
}

Test(net_stream, integrity_all_auto)
{
	integrity(NULL, KEEL_POLICY_AUTO, 32768);
}
Test(net_stream, integrity_multishot_recv_off)
{
	integrity("multishot_recv", KEEL_POLICY_OFF, 32768);
}
Test(net_stream, integrity_bundle_off)
{
	integrity("recv_bundle", KEEL_POLICY_OFF, 32768);
}
Test(net_stream, integrity_pbuf_inc_off)
{
	integrity("pbuf_inc", KEEL_POLICY_OFF, 32768);
}
Test(net_stream, integrity_direct_fd_off)
{
	integrity("direct_fd", KEEL_POLICY_OFF, 32768);
}
Test(net_stream, integrity_send_zc_on_all_sizes)
{
	integrity("send_zc", KEEL_POLICY_ON, 1);
}
Test(net_stream, integrity_send_zc_off)
{
	integrity("send_zc", KEEL_POLICY_OFF, 1);
}

/* Shutdown with connections open: every connection is closed with -ESHUTDOWN and nothing
 * leaks (the ASan run checks). */
Test(net_stream, shutdown_with_open_connections)
{
	struct keel_opts o = net_test_opts(2);
	struct srv s;
	int fds[8];
	char b[100] = { 1 };

	cr_assert_eq(srv_start(&s, &o, NULL, NULL), 0);
	for (int i = 0; i < 8; i++) {
		fds[i] = cli_connect(s.port);
		cr_assert_geq(fds[i], 0);
		cr_assert_eq(cli_write_all(fds[i], b, sizeof(b)), 0);
		cr_assert_eq(cli_read_all(fds[i], b, sizeof(b)), 0);
	}
	cr_assert_eq(srv_stop(&s), 0);
	cr_assert_eq(atomic_load(&s.closes), 8);
	cr_assert_eq(atomic_load(&s.close_errors), 8);
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(recv(fds[i], b, 1, 0), 0, "server side closed");
		close(fds[i]);
	}
}

Test(net_stream, bad_input_gives_clear_errors)
{
	struct keel_listen_opts lo = { .addr = "127.0.0.1.5" };
	struct keel_listener *l, *l2;
	int fd;

	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, NULL, &l), -EINVAL);
	lo.addr = "127.0.0.1";
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, NULL, &l), 0);
	/* A port in use (a plain socket without SO_REUSEPORT holds it). */
	fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(fd, 1), 0);
	socklen_t al = sizeof(a);
	getsockname(fd, (struct sockaddr *)&a, &al);
	lo.port = ntohs(a.sin_port);
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, NULL, &l2), -EADDRINUSE);
	close(fd);
	keel_listener_destroy(l);
}

// SPDX-License-Identifier: MIT
/* UDP: echo of many datagrams of mixed sizes from several sources. */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

struct udp_srv {
	struct keel_udp *u;
	_Atomic uint16_t port;
	_Atomic int open_err;
	_Atomic int closes, close_status;
	_Atomic uint64_t datagrams;
};

static void
udp_echo(struct keel_udp *u, struct keel_slice *s, const struct sockaddr_storage *src)
{
	struct udp_srv *us = keel_udp_app(u);

	atomic_fetch_add(&us->datagrams, 1);
	if (keel_udp_send(u, s, src) < 0)
		keel_slice_put(s);
}

static void
udp_closed(struct keel_udp *u, int status)
{
	struct udp_srv *us = keel_udp_app(u);

	atomic_store(&us->close_status, status);
	atomic_fetch_add(&us->closes, 1);
}

static const struct keel_udp_ops udp_echo_ops = { .on_datagram = udp_echo, .on_close = udp_closed };

static void
udp_start(void *arg)
{
	struct udp_srv *us = arg;
	int r = keel_udp_open("127.0.0.1", 0, &udp_echo_ops, us, &us->u);

	if (r < 0) {
		atomic_store(&us->open_err, r);
		atomic_store(&us->port, 1);
		keel_stop(r);
		return;
	}
	atomic_store(&us->port, keel_udp_port(us->u));
}

#define NSRC   3
#define WINDOW 2 /* per source: bounds what waits in a receive queue, so nothing drops */

/* 10,000 datagrams from three sockets, sizes from 1 byte to 40,000 (SENDMSG_ZC above the
 * 32 KiB threshold), each echoed to the socket that sent it, byte for byte. */
static void
udp_echo_run(const char *feature)
{
	static const size_t sizes[] = { 1, 7, 64, 512, 1400, 1472, 4096, 9000, 16000, 40000 };
	unsigned total = test_small() ? 1000 : 10000;
	struct keel_opts o = net_test_opts(1);
	struct keel_runtime *rt;
	struct udp_srv us = { 0 };
	struct sockaddr_in dst = { .sin_family = AF_INET };
	static uint8_t out[65536], in[65536];
	int fds[NSRC];
	if (feature) {
		char err[128], spec[64];
		int argc = 3;
		snprintf(spec, sizeof(spec), "%s", feature);
		char *argv[] = { "t", "--feature", spec, NULL };
		cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	}
	unsigned sent[NSRC] = { 0 }, got[NSRC] = { 0 }, nsent = 0, ngot = 0;

	struct keel_net_config nc;
	keel_net_config_init(&nc);
	nc.zc_threshold = 32768; /* the 40,000-byte datagrams go out with SENDMSG_ZC */
	cr_assert_eq(keel_net_config_set(&nc), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, udp_start, &us), 0);
	WAIT_FOR(atomic_load(&us.port), "the shard to open its UDP socket");
	cr_assert_eq(atomic_load(&us.open_err), 0);
	dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	dst.sin_port = htons(atomic_load(&us.port));
	for (int i = 0; i < NSRC; i++) {
		int sz = 4 << 20;
		fds[i] = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		cr_assert_geq(fds[i], 0);
		setsockopt(fds[i], SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz));
		/* Connected: the kernel delivers only datagrams from the server's address. */
		cr_assert_eq(connect(fds[i], (struct sockaddr *)&dst, sizeof(dst)), 0);
	}
	while (ngot < total) {
		for (int i = 0; i < NSRC; i++) {
			while (sent[i] - got[i] < WINDOW && nsent < total) {
				unsigned seq = sent[i]++;
				size_t len = sizes[(seq * 7 + (unsigned)i) % 10];
				for (size_t k = 0; k < len; k++)
					out[k] = (uint8_t)(seq * 131 + (unsigned)i * 17 + k);
				memcpy(out, &seq, len < sizeof(seq) ? len : sizeof(seq));
				cr_assert_eq(send(fds[i], out, len, 0), (ssize_t)len);
				nsent++;
			}
		}
		struct pollfd pf[NSRC];
		for (int i = 0; i < NSRC; i++)
			pf[i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
		int pr;
		while ((pr = poll(pf, NSRC, TEST_WAIT_MS)) < 0 && errno == EINTR)
			; /* a signal is not an echo, nor the lack of one */
		cr_assert_gt(pr, 0, "no echo for %u ms (%u of %u back): %s", TEST_WAIT_MS, ngot,
			     total, pr < 0 ? strerror(errno) : "timeout");
		for (int i = 0; i < NSRC; i++) {
			if (!(pf[i].revents & POLLIN))
				continue;
			ssize_t n = recv(fds[i], in, sizeof(in), MSG_DONTWAIT);
			if (n < 0 && errno == EAGAIN)
				continue;
			/* In order per source: loopback neither drops (the window) nor reorders. */
			unsigned seq = got[i];
			size_t len = sizes[(seq * 7 + (unsigned)i) % 10];
			cr_assert_eq(n, (ssize_t)len, "source %d datagram %u: %zd bytes, want %zu",
				     i, seq, n, len);
			for (size_t k = 0; k < len; k++)
				out[k] = (uint8_t)(seq * 131 + (unsigned)i * 17 + k);
			memcpy(out, &seq, len < sizeof(seq) ? len : sizeof(seq));
			cr_assert_eq(memcmp(in, out, len), 0, "source %d datagram %u differs", i,
				     seq);
			got[i]++;
			ngot++;
		}
	}
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(atomic_load(&us.datagrams), total);
	cr_assert_eq(atomic_load(&us.closes), 1);
	cr_assert_eq(atomic_load(&us.close_status), -ESHUTDOWN);
	for (int i = 0; i < NSRC; i++)
		close(fds[i]);
}

Test(net_udp, echo_10000_mixed_sizes_to_their_sources)
{
	udp_echo_run(NULL);
}

/* The fallback: single-shot recvmsg (the source address lands in the endpoint's msghdr). */
Test(net_udp, echo_with_multishot_recv_off)
{
	udp_echo_run("multishot_recv=off");
}

/* And plain sendmsg for every size. */
Test(net_udp, echo_with_send_zc_off)
{
	udp_echo_run("send_zc=off");
}

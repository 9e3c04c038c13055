/* SPDX-License-Identifier: MIT */
/*
 * A blocking loopback client for the tests that drive a server process: connect with a
 * receive deadline (TEST_WAIT_MS, so a missing reply fails instead of hanging) and
 * TCP_NODELAY (close-on-exec: a server the test starts later does not inherit it), and
 * send everything or fail the test.
 */
#ifndef KEEL_TEST_CLIENT_H
#define KEEL_TEST_CLIENT_H

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <criterion/criterion.h>

#include "wait.h"

/* A connection to 127.0.0.1:@port, or fails the test. */
static inline int __attribute__((unused)) test_connect(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct timeval tv = { .tv_sec = TEST_WAIT_MS / 1000 };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_geq(fd, 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "connect: %s",
		     strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* Send @n bytes of @p, or fail the test. */
static inline void __attribute__((unused)) test_send_all(int fd, const void *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		cr_assert_gt(w, 0, "send: %s", strerror(errno));
		p = (const char *)p + w;
		n -= (size_t)w;
	}
}

#endif

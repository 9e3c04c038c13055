// SPDX-License-Identifier: MIT
/*
 * An LD_PRELOAD library for test_keel_bench.c: the KEEL_TEST_SENDMMSG_EAGAIN-th sendmmsg
 * call of the process (1: the first) fails with EAGAIN, as a full socket send buffer makes
 * it fail, and says so on stderr; every other call goes to the next definition (libc, or a
 * sanitizer's interceptor). Nothing on loopback makes a UDP sendmmsg find a full buffer.
 * With KEEL_TEST_GSO_REFUSE=N, every sendmsg that carries UDP_SEGMENT fails with errno N,
 * as a kernel refuses segments over the path MTU (loopback's is 64 KiB).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

/* Exported whatever the build's default visibility (keel builds hide symbols). */
__attribute__((visibility("default"))) int
sendmmsg(int fd, struct mmsghdr *m, unsigned int n, int flags)
{
	static _Atomic unsigned long calls;
	static int (*next)(int, struct mmsghdr *, unsigned int, int);
	const char *e = getenv("KEEL_TEST_SENDMMSG_EAGAIN");
	unsigned long k = atomic_fetch_add(&calls, 1) + 1;

	if (e && strtoul(e, NULL, 10) == k) {
		fprintf(stderr, "sendmmsg_eagain: call %lu failed with EAGAIN\n", k);
		errno = EAGAIN;
		return -1;
	}
	if (!next)
		next = (int (*)(int, struct mmsghdr *, unsigned int, int))dlsym(RTLD_NEXT,
										"sendmmsg");
	if (!next) {
		errno = ENOSYS;
		return -1;
	}
	return next(fd, m, n, flags);
}

__attribute__((visibility("default"))) ssize_t
sendmsg(int fd, const struct msghdr *m, int flags)
{
	static _Atomic int said;
	static ssize_t (*next)(int, const struct msghdr *, int);
	const char *e = getenv("KEEL_TEST_GSO_REFUSE");

	if (e) {
		for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c;
		     c = CMSG_NXTHDR((struct msghdr *)m, c))
			if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_SEGMENT) {
				if (!atomic_exchange(&said, 1))
					fprintf(stderr,
						"sendmsg_gso: a UDP_SEGMENT batch refused\n");
				errno = (int)strtol(e, NULL, 10);
				return -1;
			}
	}
	if (!next)
		next = (ssize_t(*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
	if (!next) {
		errno = ENOSYS;
		return -1;
	}
	return next(fd, m, flags);
}

// SPDX-License-Identifier: MIT
/*
 * An LD_PRELOAD library for test_kv.c: every ftruncate the process makes through libc is
 * written, as a line, to the file $KEEL_TEST_FTRUNCATE_LOG, then made. A truncation through
 * io_uring (IORING_OP_FTRUNCATE) is the kernel's and does not come here: the test tells a
 * FLUSHALL that truncates on the shard's thread from one that goes through the ring.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static void
note(int fd, off_t len)
{
	const char *path = getenv("KEEL_TEST_FTRUNCATE_LOG");
	char line[96];
	int lf, n;

	if (!path || !*path)
		return;
	lf = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (lf < 0)
		return;
	n = snprintf(line, sizeof(line), "ftruncate(%d, %lld)\n", fd, (long long)len);
	if (write(lf, line, (size_t)n) < 0)
		n = 0;
	close(lf);
}

/* Exported whatever the build's default visibility (keel builds hide symbols). */
__attribute__((visibility("default"))) int
ftruncate(int fd, off_t len)
{
	static int (*next)(int, off_t);

	note(fd, len);
	if (!next)
		next = (int (*)(int, off_t))dlsym(RTLD_NEXT, "ftruncate");
	if (!next) {
		errno = ENOSYS;
		return -1;
	}
	return next(fd, len);
}

__attribute__((visibility("default"))) int
ftruncate64(int fd, off_t len)
{
	return ftruncate(fd, len);
}

/* SPDX-License-Identifier: MIT */
/* A test's LD_PRELOAD library under a path the dynamic loader can take. */
#ifndef KEEL_TEST_PRELOAD_H
#define KEEL_TEST_PRELOAD_H

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

/* @so as LD_PRELOAD can name it. ld.so splits LD_PRELOAD at spaces and colons, so a
 * library whose path holds either (a checkout under "my work/") is named by a symbolic link
 * in /tmp, made in @buf; else @so itself. */
static inline const char *__attribute__((unused))
preload_path(const char *so, char *buf, size_t len)
{
	const char *base = strrchr(so, '/');

	if (!strpbrk(so, " :"))
		return so;
	snprintf(buf, len, "/tmp/keel-preload-%d-%s", (int)getpid(), base ? base + 1 : so);
	unlink(buf);
	cr_assert_eq(symlink(so, buf), 0, "symlink %s -> %s: %s", buf, so, strerror(errno));
	return buf;
}

/* The link preload_path() made for @so in @path, if any, removed once the run is done. */
static inline void __attribute__((unused)) preload_done(const char *path, const char *so)
{
	if (path != so)
		unlink(path);
}

#endif

// SPDX-License-Identifier: MIT
/*
 * RLIMIT_NOFILE's soft limit, which the network raises for its direct-descriptor tables
 * (net/shard.c, nofile_fit: the kernel refuses a table of more slots than the soft limit),
 * put back when the last runtime is destroyed. The limit is the process's, and a host or
 * the children it spawns may use select(), whose FD_SET holds no descriptor past 1,023: a
 * library does not leave it changed for ever. (RLIMIT_MEMLOCK's raise, bufreg.c, is left:
 * a higher locked-memory limit changes nothing for code that locks nothing.)
 *
 * Put back only where the limit still holds the value keel set (one the host set since is
 * the host's), and never below a descriptor in use: where the process has one at or above
 * the old limit (opened while it was raised), the limit stays and a WARN line says so, as
 * a descriptor past the limit would break the next dup2/F_DUPFD near it and an FD_SET of it
 * anyway. The check and the setrlimit are not atomic against the host's other threads: one
 * that opens such a descriptor between them keeps it (the kernel closes nothing), under the
 * old limit again.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "internal.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned live; /* runtimes created and not yet destroyed */
static bool raised;   /* keel raised the soft limit, from was to set */
static rlim_t was, set;

void
keel__nofile_lock(void)
{
	pthread_mutex_lock(&lock);
}

void
keel__nofile_unlock(void)
{
	pthread_mutex_unlock(&lock);
}

void
keel__nofile_raised(rlim_t from, rlim_t to)
{
	/* A raise after the host lowered it again: its latest value is the one to put back. */
	raised = true;
	was = from;
	set = to;
}

void
keel__nofile_runtime_created(void)
{
	pthread_mutex_lock(&lock);
	live++;
	pthread_mutex_unlock(&lock);
}

/* The highest descriptor open in the process in *@top (-1 for none): 0, or -errno where
 * /proc cannot say (an -EPERM is no "none open"). */
static int
highest_fd(long *top)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int own;

	*top = -1;
	if (!d)
		return -errno;
	own = dirfd(d);
	while ((e = readdir(d))) {
		char *end;
		long fd = strtol(e->d_name, &end, 10);

		if (e->d_name[0] >= '0' && e->d_name[0] <= '9' && !*end && fd != own && fd > *top)
			*top = fd;
	}
	closedir(d);
	return 0;
}

static void
put_back(void)
{
	struct rlimit rl;
	long top;
	int e;

	raised = false;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur != set)
		return; /* the host's own value since */
	e = highest_fd(&top);
	if (e < 0) {
		keel_log(
			KEEL_LOG_WARN, "core",
			"the soft descriptor limit (ulimit -n) keel raised from %llu stays at %llu: "
			"which descriptors are open cannot be read from /proc/self/fd (%s), and the "
			"limit is never put below one in use",
			(unsigned long long)was, (unsigned long long)set, strerror(-e));
		return;
	}
	if (top >= 0 && (rlim_t)top >= was) {
		keel_log(
			KEEL_LOG_WARN, "core",
			"the soft descriptor limit (ulimit -n) keel raised from %llu stays at %llu "
			"after the last runtime: descriptor %ld is open, at or above %llu, and the "
			"limit is never put below one in use (select() cannot watch it either); set "
			"it back with setrlimit once such descriptors are closed",
			(unsigned long long)was, (unsigned long long)set, top,
			(unsigned long long)was);
		return;
	}
	rl.rlim_cur = was;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		keel_log(KEEL_LOG_WARN, "core",
			 "putting the soft descriptor limit (ulimit -n) back from %llu to %llu "
			 "failed: %s",
			 (unsigned long long)set, (unsigned long long)was, strerror(errno));
	else
		keel_log(
			KEEL_LOG_INFO, "core",
			"put the soft descriptor limit (ulimit -n) back from %llu to %llu: the last "
			"runtime is destroyed",
			(unsigned long long)set, (unsigned long long)was);
}

void
keel__nofile_runtime_destroyed(void)
{
	pthread_mutex_lock(&lock);
	if (live && --live == 0 && raised)
		put_back();
	pthread_mutex_unlock(&lock);
}

// SPDX-License-Identifier: MIT
/*
 * Another process sharing a port through SO_REUSEPORT. keel's UDP endpoints set
 * SO_REUSEPORT so that every shard binds the same port; the kernel then lets any other
 * socket of the same user that sets it too join them on that address and port without an
 * error, and splits the datagrams between them by its hash: a second instance of a server,
 * started while the first still runs, takes part of the first one's traffic and neither
 * says so. keel__port_sharer looks, once a socket is bound, for other sockets on the same
 * local address and port (/proc/net/udp or udp6, the bound address as the kernel prints
 * it), leaves out those of this process (its shards' own, found in /proc/self/fd), and
 * names the process that holds any other (/proc/PID/fd: the kernel lets a socket join only
 * one of the same user, whose descriptors this process may read).
 *
 * A socket of no process found (one of this process's that a close has not yet freed, or
 * one hidden from /proc) is not taken as a sharer. A process that binds after the check is
 * not seen: its own check (keel's, if it is keel) sees this one.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "net_internal.h"

/* Sockets on the address looked for at most: more are not looked at (a port that crowded
 * is shared by something on purpose). */
#define SHARERS_MAX 64

/* The inode of the socket a /proc/PID/fd entry names, or 0. */
static unsigned long
fd_socket_inode(int dirfd, const char *name)
{
	char link[64];
	unsigned long ino;
	char tail;
	ssize_t n = readlinkat(dirfd, name, link, sizeof(link) - 1);

	if (n <= 0)
		return 0;
	link[n] = 0;
	if (sscanf(link, "socket:[%lu%c", &ino, &tail) != 2 || tail != ']')
		return 0;
	return ino;
}

/* Whether a socket of @inos (@n of them) is in the descriptor table at @fddir; the first
 * found in *@hit. */
static bool
table_holds(const char *fddir, const unsigned long *inos, unsigned n, unsigned long *hit)
{
	DIR *d = opendir(fddir);
	struct dirent *de;
	bool found = false;

	if (!d)
		return false;
	while (!found && (de = readdir(d))) {
		unsigned long ino;

		if (de->d_name[0] == '.')
			continue;
		ino = fd_socket_inode(dirfd(d), de->d_name);
		for (unsigned i = 0; ino && i < n && !found; i++)
			if (inos[i] == ino) {
				found = true;
				*hit = ino;
			}
	}
	closedir(d);
	return found;
}

/* Removes from @inos those this process holds; returns how many are left. */
static unsigned
drop_own(unsigned long *inos, unsigned n)
{
	unsigned long hit;

	while (n && table_holds("/proc/self/fd", inos, n, &hit))
		for (unsigned i = 0; i < n; i++)
			if (inos[i] == hit) {
				inos[i] = inos[--n];
				break;
			}
	return n;
}

/* The process other than this one that holds one of @inos: its pid and name in @who. */
static bool
find_holder(const unsigned long *inos, unsigned n, char *who, size_t len)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	bool found = false;
	pid_t self = getpid();

	if (!d)
		return false;
	while (!found && (de = readdir(d))) {
		char path[64], comm[64] = "?";
		unsigned long hit;
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		FILE *f;

		if (*end || pid <= 0 || pid == self)
			continue;
		snprintf(path, sizeof(path), "/proc/%ld/fd", pid);
		if (!table_holds(path, inos, n, &hit))
			continue;
		found = true;
		snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
		f = fopen(path, "re");
		if (f) {
			if (fgets(comm, sizeof(comm), f))
				comm[strcspn(comm, "\n")] = 0;
			fclose(f);
		}
		snprintf(who, len, "pid %ld (%s)", pid, comm);
	}
	closedir(d);
	return found;
}

/* The inodes of the sockets in @table (/proc/net/udp and the like) bound to the local
 * address and port of the one whose inode is @own, @own left out; -errno when @own is not
 * in it or the table cannot be read. */
static int
same_address(const char *table, unsigned long own, unsigned long *inos, unsigned *n)
{
	char line[512], mine[64] = "";
	FILE *f = fopen(table, "re");

	*n = 0;
	if (!f)
		return -errno;
	/* Two passes: the first finds this socket's address as the kernel prints it. */
	for (int pass = 0; pass < 2 && (pass == 0 || mine[0]); pass++) {
		rewind(f);
		if (!fgets(line, sizeof(line), f)) /* the heading */
			break;
		while (fgets(line, sizeof(line), f)) {
			char local[64];
			unsigned long ino;

			/* sl local rem st tx:rx tr:when retr uid timeout inode */
			if (sscanf(line, " %*s %63s %*s %*s %*s %*s %*s %*s %*s %lu", local,
				   &ino) != 2)
				continue;
			if (pass == 0 && ino == own) {
				snprintf(mine, sizeof(mine), "%s", local);
				break;
			}
			if (pass == 1 && ino != own && ino && !strcmp(local, mine) &&
			    *n < SHARERS_MAX)
				inos[(*n)++] = ino;
		}
	}
	fclose(f);
	return mine[0] ? 0 : -ENOENT;
}

int
keel__port_sharer(int fd, int family, char *who, size_t len)
{
	unsigned long inos[SHARERS_MAX];
	unsigned n;
	struct stat st;
	int r;

	if (fstat(fd, &st) < 0)
		return -errno;
	r = same_address(family == AF_INET6 ? "/proc/net/udp6" : "/proc/net/udp",
			 (unsigned long)st.st_ino, inos, &n);
	if (r < 0)
		return r;
	n = drop_own(inos, n);
	return n && find_holder(inos, n, who, len) ? 1 : 0;
}

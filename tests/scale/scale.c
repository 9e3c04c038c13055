// SPDX-License-Identifier: MIT
#include "scale.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "wait.h"

static pid_t live;

void
proc_start(struct proc *p, const char *bin, ...)
{
	const char *argv[40];
	char line[512];
	int pfd[2], n = 0;
	va_list ap;
	FILE *f;

	argv[n++] = bin;
	va_start(ap, bin);
	for (const char *a; (a = va_arg(ap, const char *)) && n < 38;)
		argv[n++] = a;
	va_end(ap);
	argv[n] = NULL;
	cr_assert_eq(pipe(pfd), 0);
	p->pid = fork();
	cr_assert_geq(p->pid, 0);
	if (p->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(pfd[1], 2);
		close(pfd[0]);
		execv(argv[0], (char **)argv);
		_exit(127);
	}
	close(pfd[1]);
	f = fdopen(pfd[0], "r");
	p->port = -1;
	p->direct_fd_off = false;
	while (fgets(line, sizeof(line), f)) {
		char *q = strstr(line, " port ");

		if (strstr(line, "feature direct_fd: not used"))
			p->direct_fd_off = true;
		if (strstr(line, "listening") && q) {
			p->port = atoi(q + 6);
			break;
		}
		fprintf(stderr, "%s", line);
	}
	cr_assert_gt(p->port, 0, "%s did not start (no 'listening ... port' line)", bin);
	if (fork() == 0) {
		/* KEEL_TEST_SERVER_LOG=FILE keeps what the server says (appended), each line as
		 * it comes, so that a test can wait for one while the server runs. */
		const char *keep = getenv("KEEL_TEST_SERVER_LOG");
		int null = open("/dev/null", O_WRONLY);
		FILE *out = keep ? fopen(keep, "a") : NULL;
		char b[4096];

		dup2(null, 1);
		dup2(null, 2);
		while (fgets(b, sizeof(b), f))
			if (out) {
				fputs(b, out);
				fflush(out);
			}
		if (out)
			fclose(out);
		_exit(0);
	}
	fclose(f);
	live = p->pid;
}

int
proc_run_to_exit(const char *const argv[], const char *env, const char *val, char *out,
		 size_t outlen)
{
	uint64_t dl = test_deadline(TEST_WAIT_MS);
	size_t got = 0;
	int pfd[2], st;
	pid_t pid;

	cr_assert_eq(pipe(pfd), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(pfd[1], 2);
		close(pfd[0]);
		if (env)
			setenv(env, val, 1);
		execv(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(pfd[1]);
	/* Its stderr is a few lines, well within the pipe: read it once it has exited. */
	while (waitpid(pid, &st, WNOHANG) == 0) {
		if (test_expired(dl)) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			st = -1;
			break;
		}
		test_pause();
	}
	for (ssize_t k; got < outlen - 1 && (k = read(pfd[0], out + got, outlen - 1 - got)) > 0;)
		got += (size_t)k;
	out[got] = 0;
	close(pfd[0]);
	return st;
}

int
proc_stop_status(struct proc *p)
{
	uint64_t dl = test_deadline(TEST_WAIT_MS);
	int st = 0;
	pid_t r;

	kill(p->pid, SIGTERM);
	while ((r = waitpid(p->pid, &st, WNOHANG)) == 0) {
		cr_assert(!test_expired(dl), "the server did not stop after SIGTERM");
		test_pause();
	}
	live = 0;
	cr_assert(r == p->pid && WIFEXITED(st), "the server ended with status 0x%x", st);
	return st;
}

void
proc_stop(struct proc *p)
{
	int st = proc_stop_status(p);

	cr_assert(WEXITSTATUS(st) == 0, "the server ended with status 0x%x", st);
}

void
scale_fini(void)
{
	if (live > 0)
		kill(live, SIGKILL);
	live = 0;
}

long
proc_status_kb(pid_t pid, const char *field)
{
	char path[64], line[256];
	size_t fl = strlen(field);
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	cr_assert(f, "%s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, fl) && line[fl] == ':')
			kb = atol(line + fl + 1);
	fclose(f);
	cr_assert_geq(kb, 0, "no %s in %s", field, path);
	return kb;
}

long
proc_rss_kb(pid_t pid)
{
	return proc_status_kb(pid, "VmRSS");
}

int
proc_fds(pid_t pid)
{
	char path[64];
	struct dirent *e;
	int n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	cr_assert(d, "%s: %s", path, strerror(errno));
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

bool
nofile_raise(unsigned need, char *why, size_t whylen)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
		snprintf(why, whylen, "getrlimit: %s", strerror(errno));
		return false;
	}
	if (rl.rlim_cur >= need)
		return true;
	if (rl.rlim_max < need) {
		/* Root may raise the hard limit too (up to fs.nr_open). */
		rl.rlim_max = need;
	}
	rl.rlim_cur = need;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
		snprintf(why, whylen,
			 "RLIMIT_NOFILE cannot be raised to %u (%s); run with ulimit -n %u or more",
			 need, strerror(errno), need);
		return false;
	}
	return true;
}

int
scale_connect(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "connect: %s",
		     strerror(errno));
	return fd;
}

void
scale_roundtrip(int fd, const char *req, size_t qlen, const char *resp, size_t rlen)
{
	char b[256];
	size_t got = 0;
	uint64_t dl = test_deadline(TEST_WAIT_MS);

	cr_assert_leq(rlen, sizeof(b));
	cr_assert_eq(send(fd, req, qlen, MSG_NOSIGNAL), (ssize_t)qlen, "send: %s", strerror(errno));
	while (got < rlen) {
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		int r = poll(&pf, 1, 100);
		ssize_t k;

		cr_assert(!test_expired(dl), "no reply within %u ms (%zu of %zu bytes)",
			  TEST_WAIT_MS, got, rlen);
		if (r <= 0)
			continue;
		k = recv(fd, b + got, rlen - got, 0);
		cr_assert_gt(k, 0, "the server closed the connection (%s)",
			     k < 0 ? strerror(errno) : "EOF");
		got += (size_t)k;
	}
	cr_assert_eq(memcmp(b, resp, rlen), 0, "reply '%.*s', expected '%.*s'", (int)rlen, b,
		     (int)rlen, resp);
}

bool
scale_small(void)
{
	const char *e = getenv("KEEL_TEST_SCALE");
	return e && !strcmp(e, "small");
}

void
scale_idle_conns(const char *bin, const char *name, unsigned n, const char *req, const char *resp)
{
	size_t ql = strlen(req), rl = strlen(resp);
	char why[256], files[16];
	struct proc p;
	int *fds = calloc(n, sizeof(*fds)), ctl, fresh;
	long rss0, rss1;
	int fd0, fd1;

	cr_assert(fds);
	if (!nofile_raise(n + 256, why, sizeof(why)))
		cr_skip_test("%s", why);
	/* Every connection may land on one shard (CPU steering of one client thread): the
	 * direct-descriptor table must hold them all. */
	snprintf(files, sizeof(files), "%u", n + 128);
	proc_start(&p, bin, "--port", "0", "--addr", "127.0.0.1", "--shards", "2", "--idle-poll-us",
		   "0", "--max-files", files, NULL);
	ctl = scale_connect(p.port);
	scale_roundtrip(ctl, req, ql, resp, rl);
	rss0 = proc_rss_kb(p.pid);
	fd0 = proc_fds(p.pid);
	for (unsigned i = 0; i < n; i++) {
		fds[i] = scale_connect(p.port);
		/* Answered: the server holds the connection, and it has been used once. */
		scale_roundtrip(fds[i], req, ql, resp, rl);
	}
	rss1 = proc_rss_kb(p.pid);
	fd1 = proc_fds(p.pid);
	/* The server still answers an old connection, a new one, the first and the last. */
	scale_roundtrip(ctl, req, ql, resp, rl);
	fresh = scale_connect(p.port);
	scale_roundtrip(fresh, req, ql, resp, rl);
	scale_roundtrip(fds[0], req, ql, resp, rl);
	scale_roundtrip(fds[n - 1], req, ql, resp, rl);
	fprintf(stderr,
		"scale: %s, 2 shards, %u idle connections: RSS %ld -> %ld KiB, %ld bytes per idle "
		"connection; server descriptors %d -> %d\n",
		name, n, rss0, rss1, (rss1 - rss0) * 1024 / (long)n, fd0, fd1);
	/* Measured: 2.2 KiB (keel-echo) and 3.7 KiB (keel-kv) per idle connection, 2.9 and
	 * 8.1 KiB under ASan. 64 KiB, the bound until the twenty-seventh session, let a
	 * touched 32 KiB buffer per connection through. */
	cr_assert_lt((rss1 - rss0) * 1024 / (long)n, 16 * 1024,
		     "%ld bytes of server memory per idle connection",
		     (rss1 - rss0) * 1024 / (long)n);
	/* The connections are direct descriptors (docs/net.md): the server's file table does
	 * not grow with them (measured: 14 -> 14). Only a kernel without them, which the
	 * server names at start, gives each one a descriptor. */
	if (p.direct_fd_off)
		cr_assert_geq(fd1 - fd0, (int)n, "direct_fd off: %d descriptors for %u connections",
			      fd1 - fd0, n);
	else
		cr_assert_leq(fd1 - fd0, 16,
			      "%u connections added %d descriptors to the server's file table "
			      "(direct descriptors add none)",
			      n, fd1 - fd0);
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
	close(ctl);
	close(fresh);
	proc_stop(&p);
	free(fds);
}

/* SPDX-License-Identifier: MIT */
/* Helpers of the scale tests: a server process, many client sockets, its memory. */
#ifndef KEEL_TEST_SCALE_H
#define KEEL_TEST_SCALE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct proc {
	pid_t pid;
	int port;
	bool direct_fd_off; /* the server said "feature direct_fd: not used" */
};

/* Start @bin with the arguments (NULL-terminated), stderr drained in the background;
 * the port is read from its "listening on ... port N" line. Fails the test if it does not
 * start. A server left running by a failed test is killed by scale_fini (the suite's fini)
 * or, failing that, with the test process (PR_SET_PDEATHSIG). */
void proc_start(struct proc *p, const char *bin, ...);
/* Run @argv (NULL-terminated; argv[0] the binary) with @env=@val in its environment when
 * @env is not NULL, to its end: its stderr (at most @outlen - 1 bytes, NUL-terminated) in
 * @out, and its wait status; -1 when it was still running after TEST_WAIT_MS (killed). For
 * a program expected to refuse to start: its stderr must fit the pipe (64 KiB). */
int proc_run_to_exit(const char *const argv[], const char *env, const char *val, char *out,
		     size_t outlen);
/* SIGTERM, then wait (TEST_WAIT_MS); fails the test unless it exits with status 0. */
void proc_stop(struct proc *p);
/* The same, returning its wait status (it must exit, with any status). */
int proc_stop_status(struct proc *p);
void scale_fini(void);

/* Field @field ("VmRSS", "VmHWM", ...) of /proc/PID/status in KiB (fails the test when it is
 * missing); VmRSS; and the process's open descriptors. */
long proc_status_kb(pid_t pid, const char *field);
long proc_rss_kb(pid_t pid);
int proc_fds(pid_t pid);

/* Raise RLIMIT_NOFILE's soft limit to cover @need descriptors (the hard limit allows).
 * Returns false, with the reason in @why, when it cannot. */
bool nofile_raise(unsigned need, char *why, size_t whylen);

/* A blocking TCP connection to 127.0.0.1:@port, or fails the test. */
int scale_connect(int port);
/* Send @req and read exactly @rlen bytes, which must equal @resp (fails the test). */
void scale_roundtrip(int fd, const char *req, size_t qlen, const char *resp, size_t rlen);

/* Start @bin (2 shards), open @n connections that each send @req and read @resp once, then
 * check the server still answers old and new connections and grew by under 16 KiB of RSS
 * per idle connection (the figure is printed, with @name). Skips when RLIMIT_NOFILE
 * cannot be raised. */
void scale_idle_conns(const char *bin, const char *name, unsigned n, const char *req,
		      const char *resp);

/* KEEL_TEST_SCALE=small (the sanitizer run). */
bool scale_small(void);

#endif

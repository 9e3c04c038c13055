/* SPDX-License-Identifier: MIT */
/* Shared helpers for the net tests: an in-process echo server and plain-socket clients. */
#ifndef KEEL_NET_TEST_HELPERS_H
#define KEEL_NET_TEST_HELPERS_H

#include <keel/keel.h>
#include <keel/ring.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/types.h>

#include "shard_check.h"
#include "wait.h"

struct srv {
	struct keel_runtime *rt;
	struct keel_listener *l;
	uint16_t port;
	_Atomic int closes;
	_Atomic int close_errors;   /* on_close with status < 0 */
	_Atomic int close_shutdown; /* ... of them with -ESHUTDOWN (the runtime's stop) */
	_Atomic uint64_t max_queued;
	_Atomic int started;
	/* echo_ops: received slices that did not start at their buffer's start (incremental
	 * buffer rings hand out the rest of a buffer the kernel partly filled) */
	_Atomic uint64_t inner_slices;
};

/* Quiet, no signals, 64 MiB, and no idle polling (two tests' shards share two cores). */
struct keel_opts net_test_opts(unsigned shards);
/* Apply one --feature NAME=POLICY to @o; fails the test if it does not parse. */
void net_test_feature(struct keel_opts *o, const char *spec);

/* Holding a shard: it runs a request that waits (at most 60 s) until the test releases
 * it, so whatever the test sends meanwhile piles up in the kernel for one pass. */
struct shard_hold {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool blocked, released, left; /* left: the shard is done with this hold */
	_Atomic int timed_out;        /* the shard gave up waiting: the test never released it */
	struct keel_xreq req;
};
void shard_hold_init(struct shard_hold *h);
/* Fails the test if a hold timed out. */
void shard_hold_fini(struct shard_hold *h);
/* Returns once shard @shard of @rt is held. */
void shard_hold(struct shard_hold *h, struct keel_runtime *rt, unsigned shard);
/* Lets the shard go; returns once the shard is done with @h (it may then go out of scope). */
void shard_hold_release(struct shard_hold *h);
/* A runtime's on_start for @arg, a struct srv: start its listener (keel_stop on failure),
 * count the shard in started. */
void srv_on_start(void *arg);
/* Start an echo server on 127.0.0.1:0 with @o (NULL: defaults) and @nc (NULL: defaults). */
int srv_start(struct srv *s, const struct keel_opts *o, const struct keel_net_config *nc,
	      const struct keel_conn_ops *ops);
/* Stop, join, destroy. Returns the runtime's status. */
int srv_stop(struct srv *s);
extern const struct keel_conn_ops echo_ops;
/* Shard @shard's network counters, read on the shard (within 30 s): 0 or -errno. */
int srv_net_stats(struct srv *s, unsigned shard, struct keel_net_stats *out);
/* ... of any runtime. */
int rt_net_stats(struct keel_runtime *rt, unsigned shard, struct keel_net_stats *out);
/* An integer sysctl (@path under /proc/sys), or @dflt where it cannot be read. */
int net_sysctl_int(const char *path, int dflt);
/* net.ipv6.bindv6only is 1: a socket bound to "::" is then IPv6 only (no v4-mapped peers). */
bool net_bindv6only(void);
/* keel_feature_used(@f) on shard @shard of @rt: 1, 0, or -errno. The receive kind a test
 * names is checked through it: whether a completion keeps a multishot receive armed
 * (IORING_CQE_F_MORE) is the kernel's call (a bundle that maps the last buffer of the
 * ring's window ends it), so a count of such completions can be 0 by chance. */
int rt_feature_used(struct keel_runtime *rt, unsigned shard, enum keel_feature f);
/* Whether the receives counted in @st were all of one kind: each receive SQE multishot
 * (@multishot) or none, at least one submitted, and for single-shot no completion that
 * left its receive armed. Exact, unlike a count of IORING_CQE_F_MORE completions. */
bool recv_kind_was(const struct keel_net_stats *st, bool multishot);
/* Run @fn on shard @shard of @rt as a request (@arg its req->arg; it completes the
 * request) and wait (within 30 s) for it: its status, or -errno. */
int rt_run_on(struct keel_runtime *rt, unsigned shard, keel_xreq_fn fn, void *arg);

/* A free loopback port of socket @type (SOCK_STREAM, SOCK_DGRAM): the kernel's pick,
 * released for a program the test starts; *@a is 127.0.0.1 and the port, @port_s its text. */
struct sockaddr_in;
void free_loopback_port(int type, struct sockaddr_in *a, char *port_s, size_t len);
/* keel-echo run with @argv (argv[0] "keel-echo", NULL-terminated), its stderr discarded,
 * to its end: its wait status; one still running after TEST_WAIT_MS is killed and fails the
 * test. In binaries built with KEEL_BIN_DIR only. */
int keel_echo_status(char *const argv[]);
/* keel-echo started with @argv, its stderr going to an unlinked temporary file whose
 * descriptor is put in *@logfd (read it with pread); it dies with the test. Its pid. */
pid_t keel_echo_spawn(char *const argv[], int *logfd);
/* Stop it (SIGTERM; status 0 asserted) and read its stderr into @text (NUL-terminated,
 * @size bytes at most, the NUL included): the bytes read. */
size_t keel_echo_end(pid_t pid, int logfd, char *text, size_t size);

/* A blocking client socket connected to 127.0.0.1:@port, or -errno. */
int cli_connect(uint16_t port);
/* Send all / receive exactly @len; 0 or -errno (-EPIPE on EOF). Each waits at most
 * TEST_WAIT_MS for the peer to take or send anything, then prints how far it got and
 * returns -ETIMEDOUT. */
int cli_write_all(int fd, const void *p, size_t len);
int cli_read_all(int fd, void *p, size_t len);
/* One recv() of up to @len bytes once something (or EOF) arrives, within TEST_WAIT_MS:
 * its result (0 on EOF), -1 with errno ETIMEDOUT (printed) when nothing came. */
ssize_t cli_recv(int fd, void *p, size_t len);
/* TCP_NODELAY of this process's loopback socket on @port that is (or is not) @listening
 * (a plain descriptor: the test finds it by scanning fds 3..1023), or -1 when none. */
int tcp_nodelay_of(uint16_t port, bool listening);
/* Small scale under the sanitizer run (KEEL_TEST_SCALE=small). */
bool test_small(void);

#endif

// SPDX-License-Identifier: MIT
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

struct keel_opts
net_test_opts(unsigned shards)
{
	struct keel_opts o;
	keel_opts_init(&o);
	o.shards = shards;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	o.memory = 64ull << 20;
	o.idle_poll_us = 0;
	return o;
}

void
net_test_feature(struct keel_opts *o, const char *spec)
{
	char err[128], s[64];
	int argc = 3;
	char *argv[] = { "t", "--feature", s, NULL };

	snprintf(s, sizeof(s), "%s", spec);
	cr_assert_eq(keel_opts_parse(o, &argc, argv, err, sizeof(err)), 0, "%s", err);
}

bool
test_small(void)
{
	const char *e = getenv("KEEL_TEST_SCALE");
	return e && !strcmp(e, "small");
}

static void
echo_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct srv *sv = keel_conn_app(c);
	uint64_t inner = 0;

	for (unsigned i = 0; i < n; i++) {
		inner += s[i].buf && s[i].data != (uint8_t *)keel_buf_base(s[i].buf);
		if (keel_conn_send(c, &s[i]) < 0)
			keel_slice_put(&s[i]);
	}
	if (inner)
		atomic_fetch_add(&sv->inner_slices, inner);
	uint64_t q = keel_conn_queued(c), m = atomic_load(&sv->max_queued);
	while (q > m && !atomic_compare_exchange_weak(&sv->max_queued, &m, q))
		;
}

static void
echo_close(struct keel_conn *c, int status)
{
	struct srv *sv = keel_conn_app(c);
	atomic_fetch_add(&sv->closes, 1);
	if (status < 0)
		atomic_fetch_add(&sv->close_errors, 1);
	if (status == -ESHUTDOWN)
		atomic_fetch_add(&sv->close_shutdown, 1);
}

const struct keel_conn_ops echo_ops = { .on_data = echo_data, .on_close = echo_close };

void
srv_on_start(void *arg)
{
	struct srv *s = arg;
	int r = keel_listener_start(s->l);
	if (r < 0)
		keel_stop(r);
	atomic_fetch_add(&s->started, 1);
}

int
srv_start(struct srv *s, const struct keel_opts *o, const struct keel_net_config *nc,
	  const struct keel_conn_ops *ops)
{
	struct keel_opts def = net_test_opts(1);
	struct keel_net_config ndef;
	struct keel_listen_opts lo;
	int r;

	memset(s, 0, sizeof(*s));
	keel_net_config_init(&ndef);
	r = keel_net_config_set(nc ? nc : &ndef);
	if (r < 0)
		return r;
	r = keel_runtime_create(o ? o : &def, &s->rt);
	if (r < 0)
		return r;
	memset(&lo, 0, sizeof(lo));
	lo.addr = "127.0.0.1";
	lo.rt = s->rt;
	r = keel_listener_create(&lo, keel_runtime_shard_count(s->rt), ops ? ops : &echo_ops, s,
				 &s->l);
	if (r < 0) {
		keel_runtime_destroy(s->rt);
		return r;
	}
	s->port = keel_listener_port(s->l);
	r = keel_runtime_start(s->rt, srv_on_start, s);
	if (r < 0) {
		keel_runtime_destroy(s->rt);
		keel_listener_destroy(s->l);
		return r;
	}
	return 0;
}

int
srv_stop(struct srv *s)
{
	int r;
	keel_runtime_stop(s->rt, 0);
	r = keel_runtime_join(s->rt);
	keel_runtime_destroy(s->rt);
	keel_listener_destroy(s->l);
	return r;
}

static void
net_stats_fn(struct keel_xreq *req)
{
	keel_xreq_complete(req, keel_net_stats(keel_this_shard(), req->arg));
}

int
rt_run_on(struct keel_runtime *rt, unsigned shard, keel_xreq_fn fn, void *arg)
{
	struct keel_xreq *req = calloc(1, sizeof(*req)), *done;
	struct keel_xqueue *q = NULL;
	int r = req ? keel_xqueue_create(&q) : -ENOMEM;

	if (r == 0) {
		req->fn = fn;
		req->arg = arg;
		req->queue = q;
		r = keel_runtime_submit(rt, shard, req);
		/* Not answered: the request may still complete into q, so both are left. */
		if (r == 0 && keel_xqueue_wait(q, &done, 1, KEEL_S(30)) != 1)
			return -ETIMEDOUT;
		if (r == 0)
			r = done->status;
		keel_xqueue_destroy(q);
	}
	free(req);
	return r;
}

int
net_sysctl_int(const char *path, int dflt)
{
	FILE *f = fopen(path, "re");
	int v = dflt;

	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = dflt;
		fclose(f);
	}
	return v;
}

bool
net_bindv6only(void)
{
	return net_sysctl_int("/proc/sys/net/ipv6/bindv6only", 0) == 1;
}

int
rt_net_stats(struct keel_runtime *rt, unsigned shard, struct keel_net_stats *out)
{
	struct keel_net_stats *st = calloc(1, sizeof(*st));
	int r = st ? rt_run_on(rt, shard, net_stats_fn, st) : -ENOMEM;

	/* Not answered: the request may still complete into st, so it is left. */
	if (r == -ETIMEDOUT)
		return r;
	if (r == 0)
		*out = *st;
	free(st);
	return r;
}

static void
feature_used_fn(struct keel_xreq *req)
{
	keel_xreq_complete(req, keel_feature_used(*(const enum keel_feature *)req->arg));
}

int
rt_feature_used(struct keel_runtime *rt, unsigned shard, enum keel_feature f)
{
	return rt_run_on(rt, shard, feature_used_fn, &f);
}

bool
recv_kind_was(const struct keel_net_stats *st, bool multishot)
{
	if (!st->recv_arms || st->recv_arms_multishot != (multishot ? st->recv_arms : 0))
		return false;
	return multishot || st->recv_more == 0;
}

int
srv_net_stats(struct srv *s, unsigned shard, struct keel_net_stats *out)
{
	return rt_net_stats(s->rt, shard, out);
}

void
free_loopback_port(int type, struct sockaddr_in *a, char *port_s, size_t len)
{
	socklen_t al = sizeof(*a);
	int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);

	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_geq(fd, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)a, sizeof(*a)), 0);
	getsockname(fd, (struct sockaddr *)a, &al);
	close(fd);
	snprintf(port_s, len, "%u", ntohs(a->sin_port));
}

#ifdef KEEL_BIN_DIR /* the binaries that run programs of the build */
pid_t
keel_echo_spawn(char *const argv[], int *logfd)
{
	char path[] = "/tmp/keel-echo-log-XXXXXX";
	pid_t pid;

	*logfd = mkstemp(path);
	cr_assert_geq(*logfd, 0);
	unlink(path);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* a failed assertion must not leave it */
		dup2(*logfd, 2);
		execv(KEEL_BIN_DIR "/keel-echo", argv);
		_exit(127);
	}
	return pid;
}

size_t
keel_echo_end(pid_t pid, int logfd, char *text, size_t size)
{
	ssize_t n;
	int st;

	kill(pid, SIGTERM);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "keel-echo status %d", st);
	n = pread(logfd, text, size - 1, 0);
	close(logfd);
	cr_assert_geq(n, 0);
	text[n] = 0;
	return (size_t)n;
}

int
keel_echo_status(char *const argv[])
{
	int st;
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);

		dup2(null, 2);
		execv(KEEL_BIN_DIR "/keel-echo", argv);
		_exit(127);
	}
	/* Every program run so exits at once (a refused option): one still running at the
	 * deadline is killed and fails the test. */
	for (uint64_t dl = test_deadline(TEST_WAIT_MS); waitpid(pid, &st, WNOHANG) == 0;
	     test_pause()) {
		if (test_expired(dl)) {
			kill(pid, SIGKILL);
			waitpid(pid, &st, 0);
			cr_assert_fail("keel-echo %s%s still ran after %u ms",
				       argv[1] ? argv[1] : "", argv[1] && argv[2] ? " ..." : "",
				       TEST_WAIT_MS);
		}
	}
	return st;
}
#endif

int
cli_connect(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0)
		return -errno;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/*
 * Wait until @fd is ready for @events, at most until @deadline (test_now_ms() time).
 * Returns 1, or -ETIMEDOUT, or -errno. Deadlines come from poll(), not SO_RCVTIMEO: a
 * socket with a timeout is not restarted after a signal, so every plain recv() on it
 * would have to handle EINTR.
 */
static int
ready(int fd, short events, uint64_t deadline)
{
	for (;;) {
		struct pollfd pf = { .fd = fd, .events = events };
		uint64_t now = test_now_ms();
		int r = poll(&pf, 1, now >= deadline ? 0 : (int)(deadline - now));

		if (r > 0)
			return 1;
		if (r == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

int
cli_write_all(int fd, const void *p, size_t len)
{
	const char *b = p;
	size_t want = len;
	uint64_t deadline = test_deadline(TEST_WAIT_MS);

	while (len) {
		int r = ready(fd, POLLOUT, deadline);
		ssize_t n;

		if (r == -ETIMEDOUT)
			fprintf(stderr,
				"cli_write_all(fd %d): the peer took nothing for %d ms (%zu of %zu "
				"bytes sent)\n",
				fd, TEST_WAIT_MS, want - len, want);
		if (r < 0)
			return r;
		n = send(fd, b, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		b += n;
		len -= (size_t)n;
		deadline = test_deadline(TEST_WAIT_MS);
	}
	return 0;
}

int
cli_read_all(int fd, void *p, size_t len)
{
	char *b = p;
	size_t want = len;
	uint64_t deadline = test_deadline(TEST_WAIT_MS);

	while (len) {
		int r = ready(fd, POLLIN, deadline);
		ssize_t n;

		if (r == -ETIMEDOUT)
			fprintf(stderr,
				"cli_read_all(fd %d): nothing arrived for %d ms (%zu of %zu bytes "
				"read)\n",
				fd, TEST_WAIT_MS, want - len, want);
		if (r < 0)
			return r;
		n = recv(fd, b, len, MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EPIPE;
		b += n;
		len -= (size_t)n;
		deadline = test_deadline(TEST_WAIT_MS);
	}
	return 0;
}

ssize_t
cli_recv(int fd, void *p, size_t len)
{
	uint64_t deadline = test_deadline(TEST_WAIT_MS);

	for (;;) {
		int r = ready(fd, POLLIN, deadline);
		ssize_t n;

		if (r == -ETIMEDOUT)
			fprintf(stderr, "cli_recv(fd %d): nothing (not even EOF) for %d ms\n", fd,
				TEST_WAIT_MS);
		if (r < 0) {
			errno = -r;
			return -1;
		}
		n = recv(fd, p, len, MSG_DONTWAIT);
		if (n >= 0 || (errno != EINTR && errno != EAGAIN))
			return n;
	}
}

static void
hold_cb(struct keel_xreq *req)
{
	struct shard_hold *h =
		(struct shard_hold *)((char *)req - offsetof(struct shard_hold, req));
	struct timespec dl;

	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 60;
	pthread_mutex_lock(&h->lock);
	h->blocked = true;
	pthread_cond_broadcast(&h->cond);
	while (!h->released)
		if (pthread_cond_timedwait(&h->cond, &h->lock, &dl) == ETIMEDOUT) {
			atomic_store(&h->timed_out, 1);
			break;
		}
	h->released = false;
	/* @h lives in the releasing thread's frame: all use of it (the request inside it
	 * too) ends before that thread learns it may go (shard_hold_release). */
	keel_xreq_complete(req, 0);
	h->left = true;
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->lock);
}

void
shard_hold_init(struct shard_hold *h)
{
	memset(h, 0, sizeof(*h));
	pthread_mutex_init(&h->lock, NULL);
	pthread_cond_init(&h->cond, NULL);
}

void
shard_hold_fini(struct shard_hold *h)
{
	cr_assert_eq(atomic_load(&h->timed_out), 0, "a held shard waited 60 s for its release");
	pthread_mutex_destroy(&h->lock);
	pthread_cond_destroy(&h->cond);
}

void
shard_hold(struct shard_hold *h, struct keel_runtime *rt, unsigned shard)
{
	h->req = (struct keel_xreq){ .fn = hold_cb };
	pthread_mutex_lock(&h->lock);
	h->released = h->left = false; /* a hold that timed out left them set */
	cr_assert_eq(keel_runtime_submit(rt, shard, &h->req), 0);
	while (!h->blocked)
		pthread_cond_wait(&h->cond, &h->lock);
	h->blocked = false;
	pthread_mutex_unlock(&h->lock);
}

void
shard_hold_release(struct shard_hold *h)
{
	pthread_mutex_lock(&h->lock);
	h->released = true;
	pthread_cond_broadcast(&h->cond);
	/* Until the shard is done with @h: returning earlier let the caller's frame (and @h
	 * in it) be reused while the shard still read h->released, which then could read
	 * false and hold the shard for 60 s. */
	while (!h->left)
		pthread_cond_wait(&h->cond, &h->lock);
	h->left = false;
	pthread_mutex_unlock(&h->lock);
}

int
tcp_nodelay_of(uint16_t port, bool listening)
{
	for (int fd = 3; fd < 1024; fd++) {
		struct sockaddr_in a;
		socklen_t al = sizeof(a);
		int acc = 0, v = -1;
		socklen_t l = sizeof(acc);

		if (getsockname(fd, (struct sockaddr *)&a, &al) < 0 || a.sin_family != AF_INET ||
		    ntohs(a.sin_port) != port)
			continue;
		if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) < 0 || !!acc != listening)
			continue;
		l = sizeof(v);
		if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &l) == 0)
			return v;
	}
	return -1;
}

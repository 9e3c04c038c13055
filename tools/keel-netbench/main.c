// SPDX-License-Identifier: MIT
/*
 * keel-netbench: the figures in docs/net.md.
 *
 *   keel-netbench rr PORT CONNS ROUNDS
 *       plain-socket client: CONNS connections to 127.0.0.1:PORT (keel-echo), each doing
 *       ROUNDS round trips of 64 bytes, one message outstanding per connection; prints
 *       round trips per second.
 *   keel-netbench send SIZE TOTAL_MIB [zc|plain] [--feature ...]
 *       one keel shard sends TOTAL_MIB in slices of SIZE bytes from registered memory to a
 *       plain-socket sink thread on loopback, with SEND_ZC (threshold SIZE) or plain send
 *       (threshold above SIZE); prints MB/s and how many notifications said "copied".
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <keel/keel.h>
#include <keel/net.h>
#include <limits.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char usage[] = "usage: keel-netbench rr PORT CONNS ROUNDS\n"
			    "       keel-netbench send SIZE TOTAL_MIB [zc|plain] [keel options]\n";

/* @what's value @v: a decimal number in [@lo, @hi], or the usage error (exit 2). */
static unsigned long long
num(const char *what, const char *v, unsigned long long lo, unsigned long long hi)
{
	unsigned long long x;
	char *end;

	errno = 0;
	x = isdigit((unsigned char)v[0]) ? strtoull(v, &end, 10) : 0;
	if (!isdigit((unsigned char)v[0]) || errno || *end || x < lo || x > hi) {
		fprintf(stderr, "keel-netbench: %s '%s' is not a number from %llu to %llu\n%s",
			what, v, lo, hi, usage);
		exit(2);
	}
	return x;
}

/* Connection @i of the rr client failed: say how (@r: recv's or send's result). */
static int
rr_failed(int i, const char *op, ssize_t r)
{
	fprintf(stderr, "keel-netbench rr: connection %d: %s %s\n", i, op,
		r == 0 ? "met EOF: the server closed it" : strerror(errno));
	return 1;
}

static int
rr(int argc, char **argv)
{
	uint16_t port;
	int nc, ep, one = 1;
	long rounds, done = 0, *left;
	int *fds;
	char b[64] = { 0 };
	struct sockaddr_in a = { .sin_family = AF_INET };
	double t0;

	if (argc != 5) {
		fprintf(stderr, "keel-netbench rr: takes PORT CONNS ROUNDS\n%s", usage);
		return 2;
	}
	port = (uint16_t)num("PORT", argv[2], 1, 65535);
	nc = (int)num("CONNS", argv[3], 1, 1u << 20);
	rounds = (long)num("ROUNDS", argv[4], 1, LONG_MAX);
	ep = epoll_create1(0);
	left = calloc((size_t)nc, sizeof(long));
	fds = calloc((size_t)nc, sizeof(int));
	if (ep < 0 || !left || !fds) {
		fprintf(stderr, "keel-netbench rr: %s\n", strerror(ep < 0 ? errno : ENOMEM));
		return 1;
	}
	a.sin_port = htons(port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (int i = 0; i < nc; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&a, sizeof(a)) < 0) {
			int e = errno;

			fprintf(stderr, "keel-netbench rr: connection %d to 127.0.0.1:%u: %s%s\n",
				i, port, strerror(e),
				e == EMFILE || e == ENFILE
					? " (one descriptor per connection: raise ulimit -n)"
				: e == ECONNREFUSED ? " (is a server listening on that port?)"
						    : "");
			return 1;
		}
		setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0)
			return rr_failed(i, "epoll_ctl", -1);
		left[i] = rounds;
	}
	t0 = now_s();
	for (int i = 0; i < nc; i++) {
		ssize_t w = send(fds[i], b, 64, 0);
		if (w != 64)
			return rr_failed(i, "send", w);
	}
	while (done < nc) {
		struct epoll_event evs[256];
		int n = epoll_wait(ep, evs, 256, -1);
		if (n < 0 && errno != EINTR)
			return rr_failed(-1, "epoll_wait", -1);
		for (int k = 0; k < n; k++) {
			int i = (int)evs[k].data.u32;
			size_t got = 0;
			ssize_t w;
			while (got < 64) {
				ssize_t r = recv(fds[i], b + got, 64 - got, 0);
				if (r <= 0)
					return rr_failed(i, "recv", r);
				got += (size_t)r;
			}
			if (--left[i] == 0) {
				done++;
				continue;
			}
			w = send(fds[i], b, 64, 0);
			if (w != 64)
				return rr_failed(i, "send", w);
		}
	}
	double dt = now_s() - t0;
	printf("rr: %d connections x %ld round trips of 64 B: %.0f round trips/s (%.2f s)\n", nc,
	       rounds, (double)nc * (double)rounds / dt, dt);
	for (int i = 0; i < nc; i++)
		close(fds[i]);
	return 0;
}

/* send mode */
static uint32_t g_size;
static uint64_t g_total, g_queued_total, g_got;
static int g_lfd;
static uint16_t g_port;
static struct keel_slice g_src;
static double g_t0, g_t1;
static struct keel_net_stats g_st;

static void
sink_run(void)
{
	static char b[1 << 20];
	int fd = accept(g_lfd, NULL, NULL);
	uint64_t got = 0;

	if (fd < 0) /* the sender failed: sendbench shut the listener down */
		return;
	while (got < g_total) {
		ssize_t r = recv(fd, b, sizeof(b), 0);
		if (r <= 0)
			break;
		got += (uint64_t)r;
	}
	g_t1 = now_s();
	g_got = got;
	close(fd);
}

static void *
sink_thread(void *arg)
{
	(void)arg;
	sink_run();
	return NULL;
}

static void
pump(struct keel_conn *c)
{
	while (g_queued_total < g_total) {
		struct keel_slice s;
		keel_slice_get(&g_src, &s);
		g_queued_total += s.len;
		if (keel_conn_send(c, &s) != 0)
			return; /* above the high watermark: on_writable resumes */
	}
	keel_net_stats(keel_this_shard(), &g_st);
	keel_conn_close(c);
}

static void
b_open(struct keel_conn *c)
{
	g_t0 = now_s();
	pump(c);
}

static void
b_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
}

static void
b_close(struct keel_conn *c, int status)
{
	struct keel_net_stats st;

	if (keel_net_stats(keel_this_shard(), &st) == 0)
		g_st = st;
	keel_slice_put(&g_src);
	keel_stop(status);
}

static const struct keel_conn_ops b_ops = {
	.on_open = b_open, .on_data = b_data, .on_writable = pump, .on_close = b_close
};

static void
b_start(void *arg)
{
	struct keel_conn *c;
	(void)arg;
	if (keel_buf_alloc(keel_shard_alloc(), g_size, &g_src) < 0) {
		keel_stop(-ENOMEM);
		return;
	}
	memset(g_src.data, 0x5a, g_size);
	if (keel_conn_connect("127.0.0.1", g_port, 0, &b_ops, NULL, &c) < 0)
		keel_stop(-EIO);
}

static int
sendbench(int argc, char **argv)
{
	struct keel_opts o;
	struct keel_net_config nc;
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	pthread_t th;
	bool mode = argc > 4 && (!strcmp(argv[4], "zc") || !strcmp(argv[4], "plain"));
	bool zc = mode && !strcmp(argv[4], "zc");
	char err[256];
	int r;

	g_size = (uint32_t)num("SIZE", argv[2], 1, 64u << 20);
	g_total = num("TOTAL_MIB", argv[3], 1, 1u << 20) << 20;
	keel_opts_init(&o);
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	/* keel's options follow; keel_opts_parse skips argv[0], here the word before them. */
	argc -= mode ? 4 : 3;
	argv += mode ? 4 : 3;
	r = keel_opts_parse(&o, &argc, argv, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "keel-netbench send: %s\n", err);
		return 2;
	}
	if (r == 1) {
		fputs(usage, stdout);
		keel_opts_help(stdout);
		return 0;
	}
	if (argc > 1) {
		fprintf(stderr, "keel-netbench send: unexpected argument '%s'\n%s", argv[1], usage);
		return 2;
	}
	keel_net_config_init(&nc);
	nc.zc_threshold = zc ? g_size : UINT32_MAX;
	nc.high_watermark = 4u << 20;
	nc.low_watermark = 1u << 20;
	keel_net_config_set(&nc);
	g_lfd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (g_lfd < 0 || bind(g_lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(g_lfd, 1) < 0 || getsockname(g_lfd, (struct sockaddr *)&a, &al) < 0) {
		fprintf(stderr, "keel-netbench send: the sink's socket: %s\n", strerror(errno));
		return 1;
	}
	g_port = ntohs(a.sin_port);
	r = pthread_create(&th, NULL, sink_thread, NULL);
	if (r) {
		fprintf(stderr, "keel-netbench send: the sink's thread: %s\n", strerror(r));
		return 1;
	}
	r = keel_run(&o, b_start, NULL);
	/* A sender that failed before it connected leaves the sink in accept(): woken. Only
	 * then: a shutdown drops a connection still in the accept queue, which a sender that
	 * finished before the sink's accept() leaves there. */
	if (r < 0)
		shutdown(g_lfd, SHUT_RDWR);
	pthread_join(th, NULL);
	close(g_lfd);
	if (r < 0) {
		fprintf(stderr,
			"keel-netbench send: the runtime failed: %s (the lines above say "
			"why)\n",
			strerror(-r));
		return 1;
	}
	if (g_got != g_total) {
		fprintf(stderr, "keel-netbench send: the sink got %llu of %llu bytes\n",
			(unsigned long long)g_got, (unsigned long long)g_total);
		return 1;
	}
	printf("send %s size %u: %.0f MB/s (%llu MiB), sends %llu, sends_zc %llu, zc_copied "
	       "%llu\n",
	       zc ? "zc" : "plain", g_size, (double)g_total / (g_t1 - g_t0) / 1e6,
	       (unsigned long long)(g_total >> 20), (unsigned long long)g_st.sends,
	       (unsigned long long)g_st.sends_zc, (unsigned long long)g_st.zc_copied);
	return 0;
}

int
main(int argc, char **argv)
{
	if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		fputs(usage, stdout);
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "rr"))
		return rr(argc, argv);
	if (argc >= 4 && !strcmp(argv[1], "send"))
		return sendbench(argc, argv);
	fputs(usage, stderr);
	return 2;
}

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
#include <errno.h>
#include <keel/keel.h>
#include <keel/net.h>
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

static int
rr(int argc, char **argv)
{
	uint16_t port = (uint16_t)atoi(argv[2]);
	int nc = atoi(argv[3]), ep = epoll_create1(0), one = 1;
	long rounds = atol(argv[4]), done = 0, *left = calloc((size_t)nc, sizeof(long));
	int *fds = calloc((size_t)nc, sizeof(int));
	char b[64] = { 0 };
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	double t0;

	(void)argc;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (int i = 0; i < nc; i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(fds[i], (struct sockaddr *)&a, sizeof(a)) < 0) {
			perror("connect");
			return 1;
		}
		setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
		left[i] = rounds;
	}
	t0 = now_s();
	for (int i = 0; i < nc; i++)
		if (send(fds[i], b, 64, 0) != 64)
			return 1;
	while (done < nc) {
		struct epoll_event evs[256];
		int n = epoll_wait(ep, evs, 256, -1);
		for (int k = 0; k < n; k++) {
			int i = (int)evs[k].data.u32;
			size_t got = 0;
			while (got < 64) {
				ssize_t r = recv(fds[i], b + got, 64 - got, 0);
				if (r <= 0)
					return 1;
				got += (size_t)r;
			}
			if (--left[i] == 0) {
				done++;
				continue;
			}
			if (send(fds[i], b, 64, 0) != 64)
				return 1;
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
static uint64_t g_total, g_queued_total;
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

	while (got < g_total) {
		ssize_t r = recv(fd, b, sizeof(b), 0);
		if (r <= 0)
			break;
		got += (uint64_t)r;
	}
	g_t1 = now_s();
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
	bool zc = argc > 4 && !strcmp(argv[4], "zc");
	char err[256];
	int r;

	g_size = (uint32_t)atoi(argv[2]);
	g_total = (uint64_t)atol(argv[3]) << 20;
	keel_opts_init(&o);
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	argc -= 4;
	argv += 4;
	if (keel_opts_parse(&o, &argc, argv, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	keel_net_config_init(&nc);
	nc.zc_threshold = zc ? g_size : UINT32_MAX;
	nc.high_watermark = 4u << 20;
	nc.low_watermark = 1u << 20;
	keel_net_config_set(&nc);
	g_lfd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bind(g_lfd, (struct sockaddr *)&a, sizeof(a));
	listen(g_lfd, 1);
	getsockname(g_lfd, (struct sockaddr *)&a, &al);
	g_port = ntohs(a.sin_port);
	pthread_create(&th, NULL, sink_thread, NULL);
	r = keel_run(&o, b_start, NULL);
	pthread_join(th, NULL);
	if (r < 0) {
		fprintf(stderr, "keel_run: %s\n", strerror(-r));
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
	if (argc >= 5 && !strcmp(argv[1], "rr"))
		return rr(argc, argv);
	if (argc >= 4 && !strcmp(argv[1], "send"))
		return sendbench(argc, argv);
	fprintf(stderr, "usage: keel-netbench rr PORT CONNS ROUNDS\n"
			"       keel-netbench send SIZE TOTAL_MIB [zc|plain] [keel options]\n");
	return 2;
}

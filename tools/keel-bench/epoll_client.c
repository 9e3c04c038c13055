// SPDX-License-Identifier: MIT
/*
 * keel-bench epoll backend, client side: --threads pinned threads, each with its own epoll
 * instance and its share of the connections, edge-triggered and non-blocking like the
 * server.
 *
 * A connection sends from the pre-built pattern (proto.c): every message the window allows
 * goes out in one send() call (the pattern is contiguous, so no gathering is needed), and
 * what comes back is read until EAGAIN or a short read into a per-thread 256 KiB buffer,
 * compared with the pattern and counted. Message s may be sent once message
 * s - inflight has come back; pingpong and the held connections of the connections mode
 * have inflight 1.
 *
 * Latency: the clock is read before each send() (every message whose first byte it sends
 * gets that time) and after each read() that returned data (every message it completes is
 * timed then): per-syscall clock reads, not per message.
 *
 * connections mode: --conns held connections do pingpong (and give the latency), --idle
 * connections are opened first and held without traffic, and --churn slots per thread each
 * loop: non-blocking connect, one message, its echo, close. A cycle counts when its echo
 * arrives in the window.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "backend.h"
#include "bench.h"

#define RXBUF (256u * 1024u)
#define MAXEV 256

enum { C_ACTIVE, C_IDLE, C_CHURN };
enum { S_CONNECTING, S_OPEN, S_CLOSED };

struct cconn {
	int fd;
	uint8_t kind, state;
	unsigned id;
	uint64_t tx_off, rx_off; /* bytes sent and bytes echoed back, from the start */
	uint64_t last_win_ns;    /* the last echo inside the window; 0: none */
	uint64_t *sent_ns;       /* send time of message s at [s % inflight] */
	struct cconn *reopen;
};

struct client;

struct cthread {
	pthread_t tid;
	struct client *cl;
	int cpu, epfd;
	unsigned nactive, nidle, nchurn, first_id;
	struct cconn *conns; /* active, then idle, then churn */
	uint64_t *sent;
	uint8_t *rx;
	struct cconn *reopen;
	uint64_t msgs, bytes, msgs_all, cycles, errors, tx_all, rx_all, stalled;
	struct bench_poll_wait wait;
	struct bench_tcpu tcpu;
	int err;
	char why[256];
	struct bench_hist lat;
} __attribute__((aligned(64)));

struct client {
	const struct bench_cfg *cfg;
	struct bench_pattern pat;
	uint64_t unit, inflight;
	pthread_barrier_t bar;
	uint64_t t_start, t_end; /* the window; written by the caller between two barriers */
};

static int fail(struct cthread *t, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int
fail(struct cthread *t, int err, const char *fmt, ...)
{
	va_list ap;

	if (t->err == 0) {
		va_start(ap, fmt);
		vsnprintf(t->why, sizeof(t->why), fmt, ap);
		va_end(ap);
		t->err = err;
	}
	t->errors++;
	return err;
}

static int
add_fd(struct cthread *t, struct cconn *c, uint32_t events)
{
	struct epoll_event ev = { .events = events | EPOLLET, .data.ptr = c };

	if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		return fail(t, -errno, "epoll_ctl: %s", strerror(errno));
	return 0;
}

/* A blocking connect for held connections, bounded by BENCH_CONNECT_MS as the keel client's
 * is (a server whose listen backlog is full drops the SYNs, and the kernel retries them
 * for about 127 s with tcp_syn_retries 6, the default), then non-blocking from there on. */
static int
open_held(struct cthread *t, struct cconn *c)
{
	const struct bench_cfg *cfg = t->cl->cfg;
	struct timeval to = { BENCH_CONNECT_MS / 1000, (BENCH_CONNECT_MS % 1000) * 1000 };
	int one = 1;

	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return fail(t, -errno, "socket: %s (raise ulimit -n?)", strerror(errno));
	if (setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &to, sizeof(to)) < 0)
		return fail(t, -errno, "SO_SNDTIMEO: %s", strerror(errno));
	if (connect(c->fd, (const struct sockaddr *)&cfg->addr, sizeof(cfg->addr)) < 0) {
		if (errno == EINPROGRESS || errno == EAGAIN)
			return fail(
				t, -ETIMEDOUT,
				"connect to %s:%u: no answer within %u ms (a server that accepts "
				"no more: its listen backlog full?)",
				inet_ntoa(cfg->addr.sin_addr), ntohs(cfg->addr.sin_port),
				BENCH_CONNECT_MS);
		return fail(t, -errno, "connect to %s:%u: %s", inet_ntoa(cfg->addr.sin_addr),
			    ntohs(cfg->addr.sin_port), strerror(errno));
	}
	/* A blocking socket would hang the thread at its first read; no TCP_NODELAY would
	 * measure Nagle's delays: either fails the run. */
	if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
	    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0)
		return fail(t, -errno, "connection %u: TCP_NODELAY or O_NONBLOCK: %s", c->id,
			    strerror(errno));
	c->state = S_OPEN;
	return add_fd(t, c,
		      c->kind == C_IDLE ? EPOLLIN | EPOLLRDHUP : EPOLLIN | EPOLLOUT | EPOLLRDHUP);
}

static int conn_send(struct cthread *t, struct cconn *c);

static int
open_churn(struct cthread *t, struct cconn *c)
{
	const struct bench_cfg *cfg = t->cl->cfg;
	int one = 1, r;

	c->tx_off = c->rx_off = 0;
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return fail(t, -errno, "socket: %s (raise ulimit -n?)", strerror(errno));
	if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		return fail(t, -errno, "TCP_NODELAY: %s", strerror(errno));
	r = connect(c->fd, (const struct sockaddr *)&cfg->addr, sizeof(cfg->addr));
	if (r < 0 && errno != EINPROGRESS)
		return fail(t, -errno, "connect (open/close loop): %s%s", strerror(errno),
			    errno == EADDRNOTAVAIL ? ": out of local ports" : "");
	c->state = r == 0 ? S_OPEN : S_CONNECTING;
	r = add_fd(t, c, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
	if (r == 0 && c->state == S_OPEN)
		r = conn_send(t, c);
	return r;
}

static bool
in_window(const struct client *cl, uint64_t now)
{
	return now >= cl->t_start && now < cl->t_end;
}

/* Send what the window allows: one call per contiguous run of the pattern. */
static int
conn_send(struct cthread *t, struct cconn *c)
{
	struct client *cl = t->cl;
	uint64_t unit = cl->unit, window = c->kind == C_CHURN ? 1 : cl->inflight;
	uint64_t limit = (c->rx_off / unit + window) * unit;

	if (c->kind == C_CHURN && limit > unit)
		limit = unit;
	while (c->tx_off < limit) {
		uint64_t len = limit - c->tx_off, ts, s, end;
		ssize_t w;

		if (len > RXBUF)
			len = RXBUF;
		ts = bench_now_ns();
		w = send(c->fd, cl->pat.pat + c->tx_off % cl->pat.period, len, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			return fail(t, -errno, "connection %u: send: %s", c->id, strerror(errno));
		}
		/* Messages whose first byte this call sent start their clock now. */
		s = (c->tx_off + unit - 1) / unit;
		end = (c->tx_off + (uint64_t)w + unit - 1) / unit;
		if (c->kind != C_IDLE && cl->cfg->mode != BENCH_STREAM)
			for (; s < end; s++)
				c->sent_ns[s % window] = ts;
		c->tx_off += (uint64_t)w;
		t->tx_all += (uint64_t)w;
		if ((uint64_t)w < len)
			return 0; /* the socket is full: wait for EPOLLOUT */
	}
	return 0;
}

/* Verify and count @n echoed bytes. */
static int
on_data(struct cthread *t, struct cconn *c, const uint8_t *buf, size_t n, uint64_t now)
{
	struct client *cl = t->cl;
	uint64_t unit = cl->unit, s, end;
	bool win = in_window(cl, now), timed = cl->cfg->mode != BENCH_STREAM;
	uint64_t window = c->kind == C_CHURN ? 1 : cl->inflight;
	char why[200];

	if (c->rx_off + n > c->tx_off)
		return fail(t, -EPROTO, "connection %u: %llu bytes came back, only %llu were sent",
			    c->id, (unsigned long long)(c->rx_off + n),
			    (unsigned long long)c->tx_off);
	if (bench_pattern_check(&cl->pat, buf, n, c->rx_off, why, sizeof(why)) < 0)
		return fail(t, -EPROTO, "connection %u: %s", c->id, why);
	s = c->rx_off / unit;
	c->rx_off += n;
	t->rx_all += n;
	end = c->rx_off / unit;
	t->msgs_all += end - s;
	if (!win)
		return 0;
	c->last_win_ns = now;
	t->msgs += end - s;
	t->bytes += (end - s) * unit;
	if (c->kind == C_ACTIVE && timed)
		for (; s < end; s++)
			bench_hist_add(&t->lat, now - c->sent_ns[s % window]);
	return 0;
}

/* Read until EAGAIN or a short read. */
static int
conn_read(struct cthread *t, struct cconn *c)
{
	for (;;) {
		ssize_t n = read(c->fd, t->rx, RXBUF);
		int r;

		if (n > 0) {
			r = on_data(t, c, t->rx, (size_t)n, bench_now_ns());
			if (r < 0 || (size_t)n < RXBUF)
				return r;
			continue;
		}
		if (n == 0)
			return fail(t, -ECONNRESET,
				    "connection %u: the server closed it after %llu bytes", c->id,
				    (unsigned long long)c->rx_off);
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			return 0;
		return fail(t, -errno, "connection %u: read: %s", c->id, strerror(errno));
	}
}

static int
on_event(struct cthread *t, struct cconn *c, uint32_t events)
{
	struct client *cl = t->cl;
	int r, err = 0;
	socklen_t len = sizeof(err);

	switch (c->kind) {
	case C_IDLE:
		return fail(t, -ECONNRESET, "idle connection %u: the server closed it", c->id);
	case C_ACTIVE:
		r = conn_read(t, c);
		return r < 0 ? r : conn_send(t, c);
	default: /* C_CHURN */
		if (c->state == S_CLOSED)
			return 0;
		if (c->state == S_CONNECTING) {
			if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
				return 0;
			if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
				err = errno;
			if (err)
				return fail(t, -err, "connect (open/close loop): %s",
					    strerror(err));
			c->state = S_OPEN;
			return conn_send(t, c);
		}
		r = conn_read(t, c);
		if (r < 0)
			return r;
		if (c->rx_off < cl->unit)
			return conn_send(t, c);
		/* The cycle is done: close now, reopen after this batch of events (a later
		 * event of the batch may still name this slot). */
		if (in_window(cl, bench_now_ns()))
			t->cycles++;
		close(c->fd);
		c->fd = -1;
		c->state = S_CLOSED;
		c->reopen = t->reopen;
		t->reopen = c;
		return 0;
	}
}

static int
thread_setup(struct cthread *t)
{
	const struct bench_cfg *cfg = t->cl->cfg;
	unsigned n = t->nactive + t->nidle + t->nchurn;
	uint64_t win = t->cl->inflight;

	t->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (t->epfd < 0)
		return fail(t, -errno, "epoll_create1: %s", strerror(errno));
	t->rx = malloc(RXBUF);
	t->conns = calloc(n ? n : 1, sizeof(*t->conns));
	t->sent = calloc((size_t)t->nactive * win + t->nchurn + 1, sizeof(*t->sent));
	for (unsigned i = 0; t->conns && i < n; i++)
		t->conns[i].fd = -1; /* before any failure: the end closes what is >= 0 */
	if (!t->rx || !t->conns || !t->sent)
		return fail(t, -ENOMEM, "out of memory");
	for (unsigned i = 0; i < n; i++) {
		struct cconn *c = &t->conns[i];
		c->fd = -1;
		c->id = t->first_id + i;
		c->kind = i < t->nactive ? C_ACTIVE : i < t->nactive + t->nidle ? C_IDLE : C_CHURN;
		c->sent_ns = c->kind == C_ACTIVE  ? t->sent + (size_t)i * win
			     : c->kind == C_CHURN ? t->sent + (size_t)t->nactive * win + i -
							    t->nactive - t->nidle
						  : NULL;
	}
	/* Idle connections first, so the latency connections run beside all of them. */
	for (unsigned i = t->nactive; i < t->nactive + t->nidle; i++)
		if (open_held(t, &t->conns[i]) < 0)
			return t->err;
	for (unsigned i = 0; i < t->nactive; i++)
		if (open_held(t, &t->conns[i]) < 0)
			return t->err;
	(void)cfg;
	return 0;
}

static void *
client_thread(void *arg)
{
	struct cthread *t = arg;
	struct client *cl = t->cl;
	struct epoll_event ev[MAXEV];
	unsigned n = t->nactive + t->nidle + t->nchurn;

	if (t->cpu >= 0)
		bench_pin(t->cpu);
	thread_setup(t);
	pthread_barrier_wait(&cl->bar); /* everyone connected */
	pthread_barrier_wait(&cl->bar); /* the window is set */
	if (t->err)
		goto out;
	for (unsigned i = 0; i < n && !t->err; i++) {
		struct cconn *c = &t->conns[i];
		if (c->kind == C_ACTIVE)
			conn_send(t, c);
		else if (c->kind == C_CHURN)
			open_churn(t, c);
	}
	while (!t->err) {
		uint64_t now = bench_now_ns();
		int k;

		bench_tcpu_tick(&t->tcpu, now, cl->t_start);
		if (now >= cl->t_end)
			break;
		k = epoll_wait(
			t->epfd, ev, MAXEV,
			bench_poll_wait_ms(&t->wait, now, (int)((cl->t_end - now) / 1000000) + 1));
		if (k < 0 && errno != EINTR) {
			fail(t, -errno, "epoll_wait: %s", strerror(errno));
			break;
		}
		bench_poll_waited(&t->wait, now, k);
		for (int i = 0; i < k && !t->err; i++)
			on_event(t, ev[i].data.ptr, ev[i].events);
		while (t->reopen && !t->err) {
			struct cconn *c = t->reopen;
			t->reopen = c->reopen;
			if (bench_now_ns() < cl->t_end)
				open_churn(t, c);
		}
	}
	bench_tcpu_stop(&t->tcpu);
	if (!t->err)
		bench_window_done(cl->cfg, true); /* the end's CPU read before any close */
	/* Connections that were sending and got no echo in the window's second half. */
	for (unsigned i = 0; i < t->nactive && !t->err; i++)
		t->stalled += t->conns[i].kind == C_ACTIVE &&
			      bench_stalled(t->conns[i].last_win_ns, cl->t_start, cl->t_end);
out:
	for (unsigned i = 0; t->conns && i < n; i++)
		if (t->conns[i].fd >= 0)
			close(t->conns[i].fd);
	if (t->epfd >= 0)
		close(t->epfd);
	free(t->conns);
	free(t->sent);
	free(t->rx);
	return NULL;
}

int bench__epoll_client_run(const struct bench_cfg *cfg, struct bench_result *out);

int
bench__epoll_client_run(const struct bench_cfg *cfg, struct bench_result *out)
{
	struct client cl = { .cfg = cfg };
	unsigned nt = cfg->threads, started = 0, id = 0;
	struct cthread *t;
	int r;

	cl.unit = bench_unit(cfg);
	cl.inflight =
		cfg->mode == BENCH_PINGPONG || cfg->mode == BENCH_CONNECTIONS ? 1 : cfg->inflight;
	r = bench_pattern_init(&cl.pat, cfg, RXBUF);
	if (r < 0)
		return r;
	t = aligned_alloc(64, sizeof(*t) * nt);
	if (!t) {
		bench_pattern_fini(&cl.pat);
		return -ENOMEM;
	}
	memset(t, 0, sizeof(*t) * nt);
	pthread_barrier_init(&cl.bar, NULL, nt + 1);
	for (unsigned i = 0; i < nt; i++) {
		t[i].cl = &cl;
		t[i].epfd = -1;
		t[i].wait.poll_ns = (uint64_t)cfg->client_poll_us * 1000;
		t[i].cpu = cfg->pin ? bench_cpu_for(cfg, cfg->client_cpu0 + i) : -1;
		t[i].nactive = cfg->conns / nt + (i < cfg->conns % nt);
		t[i].nidle =
			cfg->mode == BENCH_CONNECTIONS ? cfg->idle / nt + (i < cfg->idle % nt) : 0;
		t[i].nchurn = cfg->mode == BENCH_CONNECTIONS ? cfg->churn : 0;
		t[i].first_id = id;
		id += t[i].nactive + t[i].nidle + t[i].nchurn;
	}
	for (; started < nt; started++)
		if ((r = -pthread_create(&t[started].tid, NULL, client_thread, &t[started])) < 0)
			break;
	if (started < nt) {
		/* Threads already started wait at the barrier: cannot release them cleanly. */
		fprintf(stderr, "keel-bench: pthread_create: %s\n", strerror(-r));
		exit(1);
	}
	bench_window_open(cfg, &cl.bar, &cl.t_start, &cl.t_end);
	memset(out, 0, sizeof(*out));
	r = 0;
	for (unsigned i = 0; i < nt; i++) {
		pthread_join(t[i].tid, NULL);
		out->msgs += t[i].msgs;
		out->bytes += t[i].bytes;
		out->msgs_all += t[i].msgs_all;
		out->cycles += t[i].cycles;
		out->errors += t[i].errors;
		out->tx_all += t[i].tx_all;
		out->rx_all += t[i].rx_all;
		out->stalled += t[i].stalled;
		out->polls += t[i].wait.polls;
		out->sleeps += t[i].wait.sleeps;
		bench_hist_merge(&out->lat, &t[i].lat);
		bench_tcpu_max(&out->client_thread_max, &t[i].tcpu, cfg->seconds_ns);
		if (t[i].err && r == 0) {
			r = t[i].err;
			snprintf(out->why, sizeof(out->why), "%s", t[i].why);
		}
	}
	out->window_ns = cfg->seconds_ns;
	pthread_barrier_destroy(&cl.bar);
	free(t);
	bench_pattern_fini(&cl.pat);
	return r;
}

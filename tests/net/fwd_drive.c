// SPDX-License-Identifier: MIT
#include "fwd_drive.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <keel/alloc_runtime.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../../apps/echo/forward.h"

/* The byte stream of one connection: frames of random sizes (xorshift from a per-connection
 * seed), each a big-endian length then payload bytes that depend on the connection and
 * the position. The sender and the checker each run one, so the checker knows every byte
 * that must come back without keeping what was sent. */
struct gen {
	uint64_t rng;
	uint32_t id;
	uint32_t max;
	uint64_t left;    /* payload bytes still to frame */
	uint64_t pos;     /* payload bytes generated so far */
	uint8_t hdr[4];   /* current frame's header */
	uint32_t hdr_off; /* header bytes emitted (4: in the payload) */
	uint32_t frame;   /* payload bytes left in the current frame */
	uint64_t frames;
};

static void
gen_init(struct gen *g, uint32_t id, uint64_t total, uint32_t max)
{
	memset(g, 0, sizeof(*g));
	g->rng = 0x9e3779b97f4a7c15ull * (id + 1);
	g->id = id;
	g->max = max;
	g->left = total;
	g->hdr_off = 4;
}

static uint64_t
xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

static inline uint8_t
pattern(uint32_t id, uint64_t pos)
{
	return (uint8_t)(pos * 131 + (pos >> 9) * 7 + id * 29 + 1);
}

/* The next up to @n bytes; returns how many (0 at the end). */
static size_t
gen_next(struct gen *g, uint8_t *out, size_t n)
{
	size_t k = 0;

	while (k < n) {
		if (g->hdr_off == 4 && g->frame == 0) {
			uint32_t len;
			if (!g->left)
				break;
			len = 1 + (uint32_t)(xorshift(&g->rng) % g->max);
			if (len > g->left)
				len = (uint32_t)g->left;
			g->left -= len;
			g->frame = len;
			g->hdr[0] = (uint8_t)(len >> 24);
			g->hdr[1] = (uint8_t)(len >> 16);
			g->hdr[2] = (uint8_t)(len >> 8);
			g->hdr[3] = (uint8_t)len;
			g->hdr_off = 0;
			g->frames++;
		}
		if (g->hdr_off < 4) {
			out[k++] = g->hdr[g->hdr_off++];
			continue;
		}
		while (k < n && g->frame) {
			out[k++] = pattern(g->id, g->pos++);
			g->frame--;
		}
	}
	return k;
}

struct cconn {
	int fd;
	struct gen tx, rx;
	uint8_t pend[65536];
	size_t pend_len, pend_off;
	uint64_t sent, recvd, total; /* wire bytes */
	bool tx_done;
};

static void
fail(struct fwd_result *r, const char *fmt, ...)
{
	va_list ap;

	if (r->err[0])
		return;
	va_start(ap, fmt);
	vsnprintf(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
}

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Wire bytes of a stream of @total payload bytes (a dry run of the generator). */
static uint64_t
wire_bytes(uint32_t id, uint64_t total, uint32_t max)
{
	struct gen g;
	uint64_t frames;

	gen_init(&g, id, total, max);
	while (g.left) {
		uint32_t len = 1 + (uint32_t)(xorshift(&g.rng) % g.max);
		if (len > g.left)
			len = (uint32_t)g.left;
		g.left -= len;
		g.frames++;
	}
	frames = g.frames;
	return total + 4 * frames;
}

static int
connect_nb(uint16_t port)
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
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	return fd;
}

int
fwd_clients(const struct fwd_cfg *cfg, uint16_t port, struct fwd_result *res)
{
	struct cconn *cs = calloc(cfg->conns, sizeof(*cs));
	struct pollfd *pf = calloc(cfg->conns, sizeof(*pf));
	uint8_t *rbuf = malloc(1 << 16), *want = malloc(1 << 16);
	double deadline = now_s() + cfg->seconds;
	unsigned done = 0;
	int ret = -1;

	if (!cs || !pf || !rbuf || !want) {
		fail(res, "client: out of memory");
		goto out;
	}
	for (unsigned i = 0; i < cfg->conns; i++)
		cs[i].fd = -1;
	for (unsigned i = 0; i < cfg->conns; i++) {
		struct cconn *c = &cs[i];
		c->fd = connect_nb(port);
		if (c->fd < 0) {
			fail(res, "client: connect to 127.0.0.1:%u: %s", port, strerror(-c->fd));
			goto out;
		}
		gen_init(&c->tx, i, cfg->bytes, cfg->max_frame);
		gen_init(&c->rx, i, cfg->bytes, cfg->max_frame);
		c->total = wire_bytes(i, cfg->bytes, cfg->max_frame);
	}
	while (done < cfg->conns) {
		int n;

		if (now_s() > deadline) {
			uint64_t s = 0, r = 0, t = 0;
			for (unsigned i = 0; i < cfg->conns; i++) {
				s += cs[i].sent;
				r += cs[i].recvd;
				t += cs[i].total;
			}
			fail(res,
			     "client: deadline of %u s passed with %llu of %llu bytes sent and %llu "
			     "echoed back (a frame lost, or the server stuck)",
			     cfg->seconds, (unsigned long long)s, (unsigned long long)t,
			     (unsigned long long)r);
			goto out;
		}
		for (unsigned i = 0; i < cfg->conns; i++) {
			struct cconn *c = &cs[i];
			pf[i].fd = c->recvd < c->total ? c->fd : -1;
			pf[i].events = POLLIN;
			pf[i].revents = 0;
			if (!c->tx_done && c->sent - c->recvd < cfg->window)
				pf[i].events |= POLLOUT;
		}
		n = poll(pf, cfg->conns, 1000);
		if (n < 0 && errno != EINTR) {
			fail(res, "client: poll: %s", strerror(errno));
			goto out;
		}
		for (unsigned i = 0; i < cfg->conns; i++) {
			struct cconn *c = &cs[i];
			if (pf[i].fd < 0 || !pf[i].revents)
				continue;
			/* Send while the window allows. */
			while (!c->tx_done && c->sent - c->recvd < cfg->window) {
				ssize_t w;
				size_t room;
				if (c->pend_off == c->pend_len) {
					c->pend_off = 0;
					c->pend_len = gen_next(&c->tx, c->pend, sizeof(c->pend));
					if (!c->pend_len) {
						c->tx_done = true;
						res->frames_sent += c->tx.frames;
						break;
					}
				}
				room = c->pend_len - c->pend_off;
				if (room > cfg->window - (c->sent - c->recvd))
					room = cfg->window - (c->sent - c->recvd);
				w = send(c->fd, c->pend + c->pend_off, room, MSG_NOSIGNAL);
				if (w < 0) {
					if (errno == EAGAIN || errno == EINTR)
						break;
					fail(res, "client %u: send: %s", i, strerror(errno));
					goto out;
				}
				c->pend_off += (size_t)w;
				c->sent += (uint64_t)w;
			}
			for (;;) {
				ssize_t r = recv(c->fd, rbuf, 1 << 16, 0);
				if (r < 0) {
					if (errno == EAGAIN || errno == EINTR)
						break;
					fail(res, "client %u: recv: %s", i, strerror(errno));
					goto out;
				}
				if (r == 0) {
					fail(res,
					     "client %u: the server closed after %llu of %llu bytes",
					     i, (unsigned long long)c->recvd,
					     (unsigned long long)c->total);
					goto out;
				}
				if (gen_next(&c->rx, want, (size_t)r) != (size_t)r ||
				    memcmp(rbuf, want, (size_t)r) != 0) {
					size_t k = 0;
					while (k < (size_t)r && rbuf[k] == want[k])
						k++;
					fail(res,
					     "client %u: byte %llu of the echo is 0x%02x, sent 0x%02x "
					     "(a frame altered, reordered or lost)",
					     i, (unsigned long long)(c->recvd + k), rbuf[k],
					     want[k]);
					goto out;
				}
				c->recvd += (uint64_t)r;
				res->bytes_checked += (uint64_t)r;
				if (c->recvd == c->total) {
					done++;
					break;
				}
			}
		}
	}
	ret = 0;
out:
	if (cs)
		for (unsigned i = 0; i < cfg->conns; i++)
			if (cs[i].fd >= 0)
				close(cs[i].fd);
	free(cs);
	free(pf);
	free(rbuf);
	free(want);
	return ret;
}

/* ---- the server ---- */

struct server {
	struct keel_runtime *rt;
	struct keel_listener *l;
	_Atomic unsigned started;
	_Atomic int start_err;
};

static void
on_start(void *arg)
{
	struct server *s = arg;
	int r = keel_listener_start(s->l);
	if (r < 0) {
		atomic_store(&s->start_err, r);
		keel_stop(r);
	}
	atomic_fetch_add(&s->started, 1);
}

static void
snap_fn(struct keel_xreq *req)
{
	struct fwd_shard_end *e = req->arg;
	struct keel_net_stats ns;
	struct keel_alloc_stats as;
	struct echo_fwd_stats fs;

	memset(&ns, 0, sizeof(ns));
	keel_net_stats(keel_this_shard(), &ns); /* -ENOENT before the network was used: zeros */
	keel_alloc_stats(keel_shard_alloc(), &as);
	echo_fwd_stats(keel_shard_id(keel_this_shard()), &fs);
	e->bufs_out = ns.bufs_out;
	e->bufs_kernel = ns.bufs_kernel;
	e->conns_open = ns.conns_open;
	e->exports = as.exports;
	e->exports_live = as.exports_live;
	e->remote_returns = as.remote_returns;
	e->trace_errors = as.trace_errors;
	e->buffers_live = as.buffers_live;
	e->frames_in = fs.frames_in;
	e->frames_relayed = fs.frames_relayed;
	e->frames_out = fs.frames_out;
	e->frames_dropped = fs.frames_dropped;
	e->frames_waited = fs.frames_waited;
	e->errors = fs.errors;
	keel_xreq_complete(req, 0);
}

static int
snapshot(struct server *s, unsigned shards, struct fwd_shard_end *end)
{
	struct keel_xqueue *q;
	struct keel_xreq req[8], *got[8];
	unsigned n = 0;
	int r = keel_xqueue_create(&q);

	if (r < 0)
		return r;
	for (unsigned i = 0; i < shards; i++) {
		memset(&req[i], 0, sizeof(req[i]));
		req[i].fn = snap_fn;
		req[i].queue = q;
		req[i].arg = &end[i];
		r = keel_runtime_submit(s->rt, i, &req[i]);
		if (r < 0)
			break;
	}
	while (r == 0 && n < shards) {
		int k = keel_xqueue_wait(q, got, 8, KEEL_S(10));
		if (k <= 0) {
			r = k < 0 ? k : -ETIMEDOUT;
			break;
		}
		n += (unsigned)k;
	}
	keel_xqueue_destroy(q);
	return r;
}

static _Atomic unsigned trace_logs;

static void
log_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)arg;
	if (strstr(msg, "buf trace"))
		atomic_fetch_add(&trace_logs, 1);
	fprintf(stderr, "keel %d %s[shard %d]: %s\n", (int)level, module, shard, msg);
}

/* Everything is home: no connection, no frame away, no exported slice held anywhere, and
 * every receive buffer back in its ring except those the kernel is still filling. */
static bool
settled(const struct fwd_shard_end *e, unsigned shards)
{
	uint64_t in = 0, out = 0, dropped = 0;

	for (unsigned i = 0; i < shards; i++) {
		if (e[i].conns_open || e[i].exports_live || e[i].bufs_out != e[i].bufs_kernel)
			return false;
		in += e[i].frames_in;
		out += e[i].frames_out;
		dropped += e[i].frames_dropped;
	}
	return in == out + dropped;
}

int
fwd_run(const struct fwd_cfg *cfg, struct fwd_result *res)
{
	struct keel_opts o;
	struct keel_net_config nc;
	struct keel_listen_opts lo;
	struct server s;
	double until;
	int r;

	memset(res, 0, sizeof(*res));
	memset(&s, 0, sizeof(s));
	if (cfg->shards > 8)
		return fail(res, "at most 8 shards"), -1;
	atomic_store(&trace_logs, 0);
	keel_log_set_sink(log_sink, NULL);
	keel_opts_init(&o);
	o.shards = cfg->shards;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	o.idle_poll_us = 0;
	if (cfg->mailbox_entries) {
		o.mailbox_entries = cfg->mailbox_entries;
		o.mailbox_overflow = cfg->mailbox_overflow;
	}
	o.memory = (uint64_t)cfg->buf_count * cfg->buf_size + (128ull << 20);
	keel_net_config_init(&nc);
	nc.buf_count = cfg->buf_count;
	nc.buf_size = cfg->buf_size;
	r = keel_net_config_set(&nc);
	if (r < 0)
		return fail(res, "keel_net_config_set: %s", strerror(-r)), -1;
	r = keel_runtime_create(&o, &s.rt);
	if (r < 0)
		return fail(res, "keel_runtime_create: %s", strerror(-r)), -1;
	memset(&lo, 0, sizeof(lo));
	lo.addr = "127.0.0.1";
	lo.rt = s.rt;
	lo.steer = KEEL_STEER_HASH; /* connections on every shard, whatever CPU the client is on */
	r = keel_listener_create(&lo, cfg->shards, &echo_fwd_ops, &s, &s.l);
	if (r < 0) {
		keel_runtime_destroy(s.rt);
		return fail(res, "keel_listener_create: %s", strerror(-r)), -1;
	}
	r = keel_runtime_start(s.rt, on_start, &s);
	if (r < 0) {
		keel_runtime_destroy(s.rt);
		keel_listener_destroy(s.l);
		return fail(res, "keel_runtime_start: %s", strerror(-r)), -1;
	}
	until = now_s() + 30;
	while (atomic_load(&s.started) < cfg->shards && now_s() < until)
		usleep(1000);
	if (atomic_load(&s.started) < cfg->shards || atomic_load(&s.start_err))
		fail(res, "server: %u of %u shards started (%s)", atomic_load(&s.started),
		     cfg->shards, strerror(-atomic_load(&s.start_err)));
	if (!res->err[0])
		fwd_clients(cfg, keel_listener_port(s.l), res);
	/* Every frame home, every proxy released, every receive buffer back in its ring. */
	until = now_s() + 30;
	for (;;) {
		r = snapshot(&s, cfg->shards, res->end);
		if (r < 0) {
			fail(res, "snapshot of the shards: %s", strerror(-r));
			break;
		}
		if (settled(res->end, cfg->shards))
			break;
		if (now_s() > until) {
			char *p = res->err[0] ? NULL : res->err;
			for (unsigned i = 0; p && i < cfg->shards; i++) {
				const struct fwd_shard_end *e = &res->end[i];
				p += snprintf(p, sizeof(res->err) - (size_t)(p - res->err),
					      "shard %u after 30 s: %llu conns, %llu exports live, "
					      "%llu receive buffers out (%llu with the kernel), "
					      "frames in %llu out %llu dropped %llu; ",
					      i, (unsigned long long)e->conns_open,
					      (unsigned long long)e->exports_live,
					      (unsigned long long)e->bufs_out,
					      (unsigned long long)e->bufs_kernel,
					      (unsigned long long)e->frames_in,
					      (unsigned long long)e->frames_out,
					      (unsigned long long)e->frames_dropped);
			}
			break;
		}
		usleep(10000);
	}
	keel_runtime_stop(s.rt, 0);
	r = keel_runtime_join(s.rt);
	keel_runtime_destroy(s.rt);
	keel_listener_destroy(s.l);
	echo_fwd_fini();
	res->trace_logs = atomic_load(&trace_logs);
	keel_log_set_sink(NULL, NULL);
	if (r < 0)
		fail(res, "the runtime ended with %s", strerror(-r));
	return res->err[0] ? -1 : 0;
}

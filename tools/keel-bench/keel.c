// SPDX-License-Identifier: MIT
/*
 * keel-bench keel backend: both sides on keel runtimes embedded in this process
 * (keel_runtime_create/start), TCP through keel's network layer (keel/net.h).
 *
 * Server: cfg->shards shards, one SO_REUSEPORT listener socket each (keel_listener_*,
 * steered by the connection's hash unless --steer cpu), every received slice handed
 * straight back to keel_conn_send(): the echo copies nothing in user space. Each shard also binds a
 * UDP socket on the same port (keel_udp_open) and sends every datagram back to its source, the
 * slice itself. The runtime takes the command line's runtime options (cfg->rt: --idle-poll-us...).
 * Figures: io_uring_enter calls of the shards (keel_runtime_stats .enters), each shard's
 * RUSAGE_THREAD CPU read on the shard when the runtime begins to stop, bytes and errors counted in
 * the callbacks, accepted connections from the listener's counters.
 *
 * Client: cfg->threads shards, pinned after the server's CPUs like the epoll client. Each
 * shard opens its share of the connections with keel_conn_connect() and runs the same
 * protocol as epoll_client.c, with the same accounting:
 *   - sends come from the pattern of proto.c, wrapped once per shard as an external buffer
 *     (keel_buf_wrap, no-op release: the pattern outlives the runtime) and sent as
 *     sub-slices of it: no copy and no allocation per message in the application;
 *   - every echoed byte is compared with the pattern in the received slices themselves,
 *     then the slices are put;
 *   - message s may be sent once message s - inflight has come back, and at most 4 MiB
 *     wait unsent (the kernel's socket buffer plays that part for epoll); reading never
 *     pauses; the clock is read
 *     once per batch queued and once per on_data call (per completion, not per message);
 *   - messages count when they complete inside [warmup, warmup + seconds); a keel timer
 *     ends each shard's run at the end of the window, and the last shard stops the runtime;
 *   - connections mode: held latency connections and idle ones are opened first, then
 *     cfg->churn slots per shard loop: connect, one message, its echo, close.
 * The window starts when every shard has its held connections open: the calling thread
 * waits on a latch, sets the window, and hands each shard a start request
 * (keel_runtime_submit).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <keel/keel.h>
#include <keel/net.h>
#include <keel/zcrx.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "bench.h"

/* Most bytes one send slice covers (and the pattern's contiguous tail). */
#define SENDMAX (256u * 1024u)
/*
 * Client connections never pause reading on their send queue (the epoll client always
 * reads): their watermarks are set out of reach, and conn_send() stops queueing at SENDQ
 * unsent bytes instead; the echo of what is queued brings it back.
 */
#define SENDQ (4u * 1024u * 1024u)
/* Buffer memory per shard: the receive rings need a few MiB. */
#define SHARD_MEMORY (64ull << 20)

/* The runtime options of the command line (--idle-poll-us, --ring-entries, ...; keel-bench
 * sets its own defaults for the log level and memory before parsing them, see net.c), with
 * the shards and their CPUs of this side. The options that give shards rx queues (--zcrx,
 * --iface, --rxqs, --map) are the server's: the @client runtime drops them, else its
 * shards would try ZCRX on (and claim) the server's queues. Where the keel client is the
 * only keel runtime here, net.c's rt_check refused them (they would do nothing). */
static int
opts_for(struct keel_opts *o, const struct bench_cfg *cfg, unsigned shards, unsigned first_slot,
	 bool client)
{
	if (cfg->rt) {
		*o = *cfg->rt;
		if (client) {
			o->zcrx = KEEL_POLICY_OFF;
			o->iface[0] = 0;
			o->nrxqs = 0;
			memset(o->rxqs, 0, sizeof(o->rxqs));
			o->map_path = NULL;
		}
	} else {
		keel_opts_init(o);
		o->log_level = KEEL_LOG_WARN;
		o->memory = SHARD_MEMORY;
	}
	o->signals = false;
	if (o->map_path && *o->map_path) {
		/* The server's map places its shards: the count and the CPUs stay as the user
		 * gave them (the runtime refuses a --shards or --cpuset beside the map), not
		 * keel-bench's default count and CPU slots, which the runtime took for the
		 * user's and refused every map for (net.c's map_place set cfg->shards to the
		 * map's count and the client's slots apart from its CPUs). */
		return 0;
	}
	o->shards = shards;
	o->shards_given = true;
	memset(&o->cpuset, 0, sizeof(o->cpuset));
	o->cpuset_given = false;
	if (cfg->pin) {
		/* The CPUs of slots first_slot.. (bench_cpu_for). The runtime puts its shards on
		 * the set's CPUs in ascending order (wrapping when there are fewer). */
		o->cpuset_given = true;
		for (unsigned i = 0; i < shards; i++)
			keel_cpuset_add(&o->cpuset, (unsigned)bench_cpu_for(cfg, first_slot + i));
	}
	return 0;
}

/* A latch: the calling thread waits until @n shards arrived. */
struct latch {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned arrived;
	int err; /* the first error reported */
};

static void
latch_init(struct latch *l)
{
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
	l->arrived = 0;
	l->err = 0;
}

static void
latch_fini(struct latch *l)
{
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->cv);
}

static void
latch_arrive(struct latch *l, int err)
{
	pthread_mutex_lock(&l->mu);
	l->arrived++;
	if (err && !l->err)
		l->err = err;
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
}

static int
latch_wait(struct latch *l, unsigned n)
{
	int err;

	pthread_mutex_lock(&l->mu);
	while (l->arrived < n)
		pthread_cond_wait(&l->cv, &l->mu);
	err = l->err;
	pthread_mutex_unlock(&l->mu);
	return err;
}

/* ---- server ---- */

struct sshard {
	uint64_t bytes_in, bytes_out, dgrams_in, dgrams_out, errors, cpu_ns;
	struct keel_zcrx_stats zst; /* read on the shard as it stops, and again at each
				     * connection's close after that (srv_close) */
	struct keel_net_stats nst;  /* read on the shard as it stops */
	bool zst_ok, nst_ok, stopping;
	clockid_t clock;
	struct keel_udp *udp;
} __attribute__((aligned(64)));

struct bench_server {
	struct keel_runtime *rt;
	struct keel_listener *l;
	char addr[INET_ADDRSTRLEN];
	unsigned n;
	struct sshard *sh;
	struct latch started;
};

static __thread struct sshard *srv_shard;

static void
srv_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct sshard *ss = srv_shard;
	unsigned i = 0;

	for (; i < n; i++)
		ss->bytes_in += s[i].len;
	for (i = 0; i < n; i++) {
		uint32_t len = s[i].len;
		int r = keel_conn_send(c, &s[i]);

		if (r < 0) {
			if (r != -EPIPE) {
				ss->errors++;
				keel_conn_abort(c, r);
			}
			break;
		}
		ss->bytes_out += len;
	}
	for (; i < n; i++)
		keel_slice_put(&s[i]);
}

static void
srv_datagram(struct keel_udp *u, struct keel_slice *s, const struct sockaddr_storage *src)
{
	struct sshard *ss = srv_shard;
	int r;

	ss->dgrams_in++;
	/* UDP may drop: a datagram not sent is counted by its absence (dgrams_out), and the
	 * client counts it lost. A full shard (-ENOBUFS, as the epoll server's ENOBUFS and
	 * EAGAIN) is no error; any other failure is, as there. */
	r = keel_udp_send(u, s, src);
	if (r < 0) {
		if (r != -ENOBUFS)
			ss->errors++;
		keel_slice_put(s);
		return;
	}
	ss->dgrams_out++;
}

static const struct keel_udp_ops srv_udp_ops = { .on_datagram = srv_datagram };

static void
srv_close(struct keel_conn *c, int status)
{
	(void)c;
	/* A client's close or reset and the runtime stopping are not errors. */
	if (status < 0 && status != -ECONNRESET && status != -EPIPE && status != -ESHUTDOWN)
		srv_shard->errors++;
	/* The stop hook (srv_on_stop) runs before the network's own, which closes the
	 * connections: the area slices their send queues and held data still hold are put,
	 * and their refills counted, only as they close. So read again at every close after
	 * the stop began; the last close has them all. */
	if (srv_shard->stopping) {
		srv_shard->zst_ok = keel_zcrx_stats(keel_this_shard(), &srv_shard->zst) == 0;
		/* The whole-life CPU after the connections' close, as the epoll server reads
		 * its after closing them. */
		srv_shard->cpu_ns = bench_thread_cpu_ns();
	}
}

static const struct keel_conn_ops srv_ops = { .on_data = srv_data, .on_close = srv_close };

static void
srv_on_stop(void *arg)
{
	struct sshard *ss = arg;

	ss->cpu_ns = bench_thread_cpu_ns();
	ss->zst_ok = keel_zcrx_stats(keel_this_shard(), &ss->zst) == 0;
	ss->nst_ok = keel_net_stats(keel_this_shard(), &ss->nst) == 0;
	ss->stopping = true;
}

static void
srv_start(void *arg)
{
	struct bench_server *s = arg;
	unsigned id = keel_shard_id(keel_this_shard());
	int r;

	srv_shard = &s->sh[id];
	r = -pthread_getcpuclockid(pthread_self(), &s->sh[id].clock);
	if (r == 0)
		r = keel_shard_on_stop(srv_on_stop, &s->sh[id]);
	if (r == 0)
		r = keel_listener_start(s->l);
	/* UDP on the TCP port (every shard binds it, SO_REUSEPORT). */
	if (r == 0)
		r = keel_udp_open(s->addr, keel_listener_port(s->l), &srv_udp_ops, s,
				  &s->sh[id].udp);
	latch_arrive(&s->started, r);
}

static void
srv_free(struct bench_server *s)
{
	if (s->rt)
		keel_runtime_destroy(s->rt);
	if (s->l)
		keel_listener_destroy(s->l);
	latch_fini(&s->started);
	free(s->sh);
	free(s);
}

static int
serve_start(const struct bench_cfg *cfg, uint16_t *port, struct bench_server **out)
{
	struct bench_server *s = calloc(1, sizeof(*s));
	struct keel_listen_opts lo;
	struct keel_opts o;
	int r;

	if (!s)
		return -ENOMEM;
	latch_init(&s->started);
	s->n = cfg->shards;
	s->sh = aligned_alloc(64, sizeof(*s->sh) * s->n);
	if (!s->sh) {
		srv_free(s);
		return -ENOMEM;
	}
	memset(s->sh, 0, sizeof(*s->sh) * s->n);
	r = opts_for(&o, cfg, cfg->shards, 0, false);
	if (r == 0)
		r = keel_runtime_create(&o, &s->rt);
	if (r < 0) {
		s->rt = NULL;
		srv_free(s);
		return r;
	}
	/* With --map the runtime counted the shards itself: the per-shard state above is
	 * cfg->shards long (the map's count as net.c read it), and must be the runtime's. */
	if (keel_runtime_shard_count(s->rt) != s->n) {
		fprintf(stderr,
			"keel-bench: the keel server has %u shards where %u were expected (did "
			"the --map file change while it started?)\n",
			keel_runtime_shard_count(s->rt), s->n);
		srv_free(s);
		return -EINVAL;
	}
	memset(&lo, 0, sizeof(lo));
	inet_ntop(AF_INET, &cfg->addr.sin_addr, s->addr, sizeof(s->addr));
	lo.addr = s->addr;
	lo.port = ntohs(cfg->addr.sin_port);
	lo.no_addrs = true; /* the echo server never asks for a connection's addresses */
	lo.steer = (enum keel_steer)cfg->steer;
	r = keel_listener_create(&lo, s->n, &srv_ops, s, &s->l);
	if (r < 0) {
		s->l = NULL;
		srv_free(s);
		return r;
	}
	/* The listener checked its TCP port; keel_udp_open checks the UDP one too (its first
	 * endpoint's bind without SO_REUSEPORT), and this check says so first, in the same
	 * words for both servers (the epoll server's sockets have no check of their own). */
	r = bench_port_free(&cfg->addr, keel_listener_port(s->l), SOCK_DGRAM);
	if (r < 0) {
		srv_free(s);
		return r;
	}
	r = keel_runtime_start(s->rt, srv_start, s);
	if (r < 0) {
		srv_free(s);
		return r;
	}
	/* Every shard accepts before the client connects. */
	r = latch_wait(&s->started, s->n);
	if (r < 0) {
		keel_runtime_stop(s->rt, r);
		keel_runtime_join(s->rt);
		srv_free(s);
		return r;
	}
	*port = keel_listener_port(s->l);
	*out = s;
	return 0;
}

static int
serve_stop(struct bench_server *s, struct bench_server_stats *out)
{
	struct bench_server_stats st = { .syscalls_what = "io_uring_enter",
					 .zcrx_state = "none",
					 .io_udp_too = true };
	int r;

	keel_runtime_stop(s->rt, 0);
	r = keel_runtime_join(s->rt);
	for (unsigned i = 0; i < s->n; i++) {
		struct keel_shard_stats ks;
		struct keel_listener_stats ls;

		if (keel_runtime_stats(s->rt, i, &ks) == 0) {
			st.syscalls += ks.enters;
			st.sleeps += ks.sleeps;
			st.gathered += ks.coalesced;
			st.merges += ks.merges;
		}
		if (keel_listener_stats(s->l, i, &ls) == 0) {
			st.accepted += ls.accepted;
			st.errors += ls.accept_errors;
		}
		st.cpu_ns += s->sh[i].cpu_ns;
		st.bytes_in += s->sh[i].bytes_in;
		st.bytes_out += s->sh[i].bytes_out;
		st.dgrams_in += s->sh[i].dgrams_in;
		st.dgrams_out += s->sh[i].dgrams_out;
		st.errors += s->sh[i].errors;
		if (s->sh[i].nst_ok) {
			st.recvs += s->sh[i].nst.recv_cqes;
			st.sends += s->sh[i].nst.sends + s->sh[i].nst.sends_zc;
			st.send_iovs += s->sh[i].nst.send_iovs + s->sh[i].nst.sends_zc;
			st.short_sends += s->sh[i].nst.short_sends;
			st.enobufs += s->sh[i].nst.enobufs;
			st.rearms += s->sh[i].nst.rearms;
			st.bp_pauses += s->sh[i].nst.bp_pauses;
			if (s->sh[i].nst.bulk_window > st.bulk_window)
				st.bulk_window = s->sh[i].nst.bulk_window;
			/* A completion per datagram received; a sendmsg per UDP_SEGMENT batch
			 * sent, per datagram sent alone, and per batch the kernel refused (whose
			 * datagrams then went alone: udp_gso_sends and udp_gso_datagrams count
			 * only the batches that went). */
			st.udp_recv_calls += s->sh[i].dgrams_in;
			st.udp_send_calls += s->sh[i].nst.udp_gso_sends +
					     s->sh[i].nst.udp_gso_fallbacks + s->sh[i].dgrams_out -
					     s->sh[i].nst.udp_gso_datagrams;
			/* Receives that failed, and datagrams received with no memory for them:
			 * errors, as the epoll server's failed recvmmsg; and sends that failed
			 * after keel_udp_send took them, but for ENOBUFS, EAGAIN and
			 * ECONNREFUSED (udp_send_pressed), as the epoll server counts its
			 * failed sendmmsg (the client counts those lost either way). */
			st.errors += s->sh[i].nst.udp_recv_errors + s->sh[i].nst.udp_nomem +
				     s->sh[i].nst.udp_send_errors - s->sh[i].nst.udp_send_pressed;
		}
		if (s->sh[i].zst_ok) {
			const struct keel_zcrx_stats *z = &s->sh[i].zst;

			if (z->state == KEEL_ZCRX_FALLBACK)
				st.zcrx_state = "fallback";
			else if (z->state == KEEL_ZCRX_ON && strcmp(st.zcrx_state, "fallback"))
				st.zcrx_state = "on";
			st.zcrx_bytes += z->zc_bytes;
			st.zcrx_copy_bytes += z->copy_bytes;
			st.zcrx_refills += z->refills;
			st.zcrx_frags += z->zc_frags;
		}
	}
	srv_free(s);
	if (out)
		*out = st;
	return r < 0 ? r : 0;
}

/* ---- client ---- */

enum { C_ACTIVE, C_IDLE, C_CHURN };

struct kconn {
	struct keel_conn *c; /* NULL while closed */
	struct cshard *sh;
	uint8_t kind;
	bool open, closed_by_us;
	unsigned id;
	uint64_t tx_off, rx_off; /* bytes sent and bytes echoed back, from the start */
	uint64_t last_win_ns;    /* the last echo inside the window; 0: none */
	uint64_t *sent_ns;       /* send time of message s at [s % window] */
};

struct kclient;

struct cshard {
	struct kclient *cl;
	unsigned nactive, nidle, nchurn, first_id, nheld, nopened;
	struct kconn *conns; /* active, then idle, then churn */
	uint64_t *sent;
	struct keel_slice base; /* the whole pattern, wrapped */
	bool have_base, ready, finished, closed_all;
	struct keel_timer *timer; /* the window's start (tcpu), then its end */
	struct bench_tcpu tcpu;
	bool tcpu_stopped; /* past the window: its CPU read (window_end) */
	struct keel_xreq go;
	uint64_t msgs, bytes, msgs_all, cycles, errors, tx_all, rx_all, stalled;
	int err;
	char why[256];
	struct bench_hist lat;
} __attribute__((aligned(64)));

struct kclient {
	const struct bench_cfg *cfg;
	struct bench_pattern pat;
	uint64_t unit, inflight;
	char addr[INET_ADDRSTRLEN];
	uint16_t port;
	struct cshard *sh;
	unsigned n;
	struct latch ready;
	pthread_mutex_t left_mu;
	unsigned left;           /* shards not finished */
	uint64_t t_start, t_end; /* the window: set before the start requests are submitted */
};

static void conn_send(struct kconn *k);
static void finish(struct cshard *sh);

static int fail(struct cshard *sh, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int
fail(struct cshard *sh, int err, const char *fmt, ...)
{
	va_list ap;

	if (sh->finished)
		return err; /* after the window: closing down, nothing counts */
	if (sh->err == 0) {
		va_start(ap, fmt);
		vsnprintf(sh->why, sizeof(sh->why), fmt, ap);
		va_end(ap);
		sh->err = err;
	}
	sh->errors++;
	finish(sh);
	return err;
}

static void
set_ready(struct cshard *sh)
{
	if (sh->ready)
		return;
	sh->ready = true;
	latch_arrive(&sh->cl->ready, sh->err);
}

static void
close_all(void *arg)
{
	struct cshard *sh = arg;
	struct kclient *cl = sh->cl;
	unsigned n = sh->nactive + sh->nidle + sh->nchurn, left;

	if (sh->closed_all)
		return;
	sh->closed_all = true;
	for (unsigned i = 0; i < n; i++)
		if (sh->conns[i].c)
			keel_conn_abort(sh->conns[i].c, 0);
	pthread_mutex_lock(&cl->left_mu);
	left = --cl->left;
	pthread_mutex_unlock(&cl->left_mu);
	if (left == 0)
		keel_stop(0);
}

/* End this shard's run (window over, or an error): close everything, from a deferred
 * callback so that no connection is closed under its own callback. */
static void
finish(struct cshard *sh)
{
	if (sh->finished)
		return;
	sh->finished = true;
	if (sh->timer)
		keel_timer_stop(sh->timer);
	set_ready(sh);
	if (keel_defer(close_all, sh) < 0)
		close_all(sh);
}

static bool
in_window(const struct kclient *cl, uint64_t now)
{
	return now >= cl->t_start && now < cl->t_end;
}

static uint64_t
window_of(const struct kconn *k)
{
	return k->kind == C_CHURN ? 1 : k->sh->cl->inflight;
}

/* Queue what the window allows, as sub-slices of the wrapped pattern. */
static void
conn_send(struct kconn *k)
{
	struct cshard *sh = k->sh;
	struct kclient *cl = sh->cl;
	uint64_t unit = cl->unit, window = window_of(k);
	uint64_t limit = (k->rx_off / unit + window) * unit, ts;
	bool timed = k->kind != C_IDLE && cl->cfg->mode != BENCH_STREAM;

	if (k->kind == C_CHURN && limit > unit)
		limit = unit;
	if (k->tx_off >= limit || !k->c || !k->open)
		return;
	ts = bench_now_ns();
	while (k->tx_off < limit) {
		uint64_t len = limit - k->tx_off, s, end;
		struct keel_slice sl;
		int r;

		if (keel_conn_queued(k->c) >= SENDQ)
			return; /* on_data sends the rest as the echo comes back */
		if (len > SENDMAX)
			len = SENDMAX;
		r = keel_slice_sub(&sh->base, k->tx_off % cl->pat.period, len, &sl);
		if (r < 0) {
			fail(sh, r, "connection %u: slicing the pattern: %s", k->id, strerror(-r));
			return;
		}
		r = keel_conn_send(k->c, &sl);
		if (r < 0) {
			keel_slice_put(&sl);
			fail(sh, r, "connection %u: send: %s", k->id, strerror(-r));
			return;
		}
		/* Messages whose first byte this slice holds start their clock now. */
		s = (k->tx_off + unit - 1) / unit;
		end = (k->tx_off + len + unit - 1) / unit;
		if (timed)
			for (; s < end; s++)
				k->sent_ns[s % window] = ts;
		k->tx_off += len;
		sh->tx_all += len;
	}
}

static void
cli_open(struct keel_conn *c)
{
	struct kconn *k = keel_conn_user(c);
	struct cshard *sh = k->sh;

	k->open = true;
	if (sh->finished)
		return;
	if (k->kind == C_CHURN) {
		conn_send(k);
		return;
	}
	if (++sh->nopened == sh->nheld)
		set_ready(sh);
}

/* Verify and count the echoed bytes of @s. */
static int
on_bytes(struct kconn *k, const struct keel_slice *s, uint64_t now)
{
	struct cshard *sh = k->sh;
	struct kclient *cl = sh->cl;
	uint64_t unit = cl->unit, window = window_of(k), m, end;
	char why[200];

	if (k->kind == C_IDLE)
		return fail(sh, -EPROTO, "idle connection %u: %u bytes came back, none were sent",
			    k->id, s->len);
	if (k->rx_off + s->len > k->tx_off)
		return fail(sh, -EPROTO, "connection %u: %llu bytes came back, only %llu were sent",
			    k->id, (unsigned long long)(k->rx_off + s->len),
			    (unsigned long long)k->tx_off);
	if (bench_pattern_check(&cl->pat, s->data, s->len, k->rx_off, why, sizeof(why)) < 0)
		return fail(sh, -EPROTO, "connection %u: %s", k->id, why);
	m = k->rx_off / unit;
	k->rx_off += s->len;
	sh->rx_all += s->len;
	end = k->rx_off / unit;
	sh->msgs_all += end - m;
	if (!in_window(cl, now))
		return 0;
	k->last_win_ns = now;
	sh->msgs += end - m;
	sh->bytes += (end - m) * unit;
	if (k->kind == C_ACTIVE && cl->cfg->mode != BENCH_STREAM)
		for (; m < end; m++)
			bench_hist_add(&sh->lat, now - k->sent_ns[m % window]);
	return 0;
}

static void
cli_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct kconn *k = keel_conn_user(c);
	struct cshard *sh = k->sh;
	struct kclient *cl = sh->cl;
	uint64_t now = bench_now_ns();
	unsigned i = 0;

	for (; i < n && !sh->finished; i++) {
		int r = on_bytes(k, &s[i], now);

		keel_slice_put(&s[i]);
		if (r < 0) {
			i++;
			break;
		}
	}
	for (; i < n; i++)
		keel_slice_put(&s[i]);
	if (sh->finished)
		return;
	if (k->kind == C_ACTIVE) {
		conn_send(k);
	} else if (k->kind == C_CHURN && k->rx_off >= cl->unit) {
		/* The cycle is done: close; on_close opens the slot again. */
		if (in_window(cl, bench_now_ns()))
			sh->cycles++;
		k->closed_by_us = true;
		/* Nothing is queued and the whole echo is read: closed now, as the epoll
		 * client's close(2) does. keel_conn_close would linger for the server's EOF
		 * (net.md), a round trip more per cycle than the other client pays. */
		keel_conn_abort(c, 0);
	}
}

static void
cli_eof(struct keel_conn *c)
{
	struct kconn *k = keel_conn_user(c);

	if (k->closed_by_us)
		return; /* a churn cycle's close is under way */
	fail(k->sh, -ECONNRESET, "%sconnection %u: the server closed it after %llu bytes",
	     k->kind == C_IDLE ? "idle " : "", k->id, (unsigned long long)k->rx_off);
	keel_conn_close(c);
}

static int open_conn(struct kconn *k);

static void
reopen(void *arg)
{
	struct kconn *k = arg;

	if (!k->sh->finished && !k->c && bench_now_ns() < k->sh->cl->t_end)
		open_conn(k);
}

static void
cli_close(struct keel_conn *c, int status)
{
	struct kconn *k = keel_conn_user(c);
	struct cshard *sh;
	struct kclient *cl;
	bool was_open, by_us;

	if (!k)
		return; /* failed inside keel_conn_connect(), which reported it */
	sh = k->sh;
	cl = sh->cl;
	was_open = k->open;
	by_us = k->closed_by_us;

	k->c = NULL;
	k->open = false;
	k->closed_by_us = false;
	if (sh->finished)
		return;
	if (k->kind == C_CHURN && by_us && status == 0) {
		if (keel_defer(reopen, k) < 0)
			fail(sh, -ENOMEM, "out of memory");
		return;
	}
	if (!was_open)
		fail(sh, status < 0 ? status : -ECONNABORTED, "connect to %s:%u%s: %s", cl->addr,
		     cl->port, k->kind == C_CHURN ? " (open/close loop)" : "",
		     strerror(status < 0 ? -status : ECONNABORTED));
	else
		fail(sh, status < 0 ? status : -ECONNRESET,
		     "connection %u: closed after %llu bytes: %s", k->id,
		     (unsigned long long)k->rx_off, strerror(status < 0 ? -status : ECONNRESET));
}

static const struct keel_conn_ops cli_ops = {
	.on_open = cli_open,
	.on_data = cli_data,
	.on_eof = cli_eof,
	.on_close = cli_close,
};

static int
open_conn(struct kconn *k)
{
	struct cshard *sh = k->sh;
	struct kclient *cl = sh->cl;
	int r;

	k->tx_off = k->rx_off = 0;
	k->open = k->closed_by_us = false;
	r = keel_conn_connect(cl->addr, cl->port, KEEL_MS(BENCH_CONNECT_MS), &cli_ops, cl, &k->c);
	if (r < 0) {
		k->c = NULL;
		return fail(sh, r, "connect to %s:%u: %s%s", cl->addr, cl->port, strerror(-r),
			    r == -EMFILE ? " (raise ulimit -n?)" : "");
	}
	keel_conn_set_user(k->c, k);
	keel_conn_set_watermarks(k->c, UINT32_MAX, UINT32_MAX);
	return 0;
}

static void
window_end(struct keel_timer *t, void *arg)
{
	struct cshard *sh = arg;
	uint64_t now = bench_now_ns();

	bench_tcpu_tick(&sh->tcpu, now, sh->cl->t_start);
	/* The timer's clock is the loop's: never end before the window has. */
	if (now < sh->cl->t_end) {
		keel_timer_start(t, sh->cl->t_end - now, 0);
		return;
	}
	if (!sh->tcpu_stopped) {
		bench_tcpu_stop(&sh->tcpu);
		sh->tcpu_stopped = true;
	}
	/* The end's CPU read before any close; looked at each millisecond, not waited for,
	 * which would block this shard's loop. */
	if (!bench_window_done(sh->cl->cfg, false)) {
		keel_timer_start(t, 1000000, 0);
		return;
	}
	/* Connections that were sending and got no echo in the window's second half. */
	for (unsigned i = 0; i < sh->nactive; i++)
		sh->stalled +=
			sh->conns[i].kind == C_ACTIVE &&
			bench_stalled(sh->conns[i].last_win_ns, sh->cl->t_start, sh->cl->t_end);
	finish(sh);
}

/* Runs on the shard once every shard is set up and the window is known. */
static void
go(struct keel_xreq *req)
{
	struct cshard *sh = req->arg;
	struct kclient *cl = sh->cl;
	unsigned n = sh->nactive + sh->nidle + sh->nchurn;
	uint64_t now = bench_now_ns();

	if (!sh->finished) {
		/* First to the window's start (where this shard's CPU is read), then its end. */
		keel_timer_start(sh->timer, now < cl->t_start ? cl->t_start - now : 0, 0);
		for (unsigned i = 0; i < n && !sh->finished; i++) {
			struct kconn *k = &sh->conns[i];
			if (k->kind == C_ACTIVE)
				conn_send(k);
			else if (k->kind == C_CHURN)
				open_conn(k);
		}
	}
	keel_xreq_complete(req, 0);
}

static void
noop_release(void *data, uint32_t cap, void *arg)
{
	(void)data;
	(void)cap;
	(void)arg;
}

static void
cli_on_stop(void *arg)
{
	struct cshard *sh = arg;

	if (sh->have_base) {
		keel_slice_put(&sh->base);
		sh->have_base = false;
	}
}

static void
cli_start(void *arg)
{
	struct kclient *cl = arg;
	struct cshard *sh = &cl->sh[keel_shard_id(keel_this_shard())];
	int r;

	r = keel_shard_on_stop(cli_on_stop, sh);
	if (r < 0) {
		fail(sh, r, "keel_shard_on_stop: %s", strerror(-r));
		return;
	}
	r = keel_buf_wrap(keel_shard_alloc(), sh->cl->pat.pat,
			  (uint32_t)(cl->pat.period + cl->pat.extra), noop_release, NULL,
			  &sh->base);
	if (r < 0) {
		fail(sh, r, "wrapping the pattern: %s", strerror(-r));
		return;
	}
	sh->have_base = true;
	r = keel_timer_create(window_end, sh, &sh->timer);
	if (r < 0) {
		sh->timer = NULL;
		fail(sh, r, "keel_timer_create: %s", strerror(-r));
		return;
	}
	/* Idle connections first, so the latency connections run beside all of them. */
	for (unsigned i = sh->nactive; i < sh->nactive + sh->nidle && !sh->finished; i++)
		open_conn(&sh->conns[i]);
	for (unsigned i = 0; i < sh->nactive && !sh->finished; i++)
		open_conn(&sh->conns[i]);
	if (sh->nheld == 0)
		set_ready(sh);
}

static int
shard_setup(struct kclient *cl, struct cshard *sh, unsigned i, unsigned *id)
{
	const struct bench_cfg *cfg = cl->cfg;
	unsigned nt = cl->n, n;
	uint64_t win = cl->inflight;

	sh->cl = cl;
	sh->nactive = cfg->conns / nt + (i < cfg->conns % nt);
	sh->nidle = cfg->mode == BENCH_CONNECTIONS ? cfg->idle / nt + (i < cfg->idle % nt) : 0;
	sh->nchurn = cfg->mode == BENCH_CONNECTIONS ? cfg->churn : 0;
	sh->nheld = sh->nactive + sh->nidle;
	sh->first_id = *id;
	n = sh->nactive + sh->nidle + sh->nchurn;
	*id += n;
	sh->conns = calloc(n ? n : 1, sizeof(*sh->conns));
	sh->sent = calloc((size_t)sh->nactive * win + sh->nchurn + 1, sizeof(*sh->sent));
	if (!sh->conns || !sh->sent)
		return -ENOMEM;
	for (unsigned k = 0; k < n; k++) {
		struct kconn *c = &sh->conns[k];
		c->sh = sh;
		c->id = sh->first_id + k;
		c->kind = k < sh->nactive               ? C_ACTIVE
			  : k < sh->nactive + sh->nidle ? C_IDLE
							: C_CHURN;
		c->sent_ns = c->kind == C_ACTIVE  ? sh->sent + (size_t)k * win
			     : c->kind == C_CHURN ? sh->sent + (size_t)sh->nactive * win + k -
							    sh->nactive - sh->nidle
						  : NULL;
	}
	return 0;
}

static int
client_run(const struct bench_cfg *cfg, struct bench_result *out)
{
	struct kclient *cl = calloc(1, sizeof(*cl));
	struct keel_runtime *rt = NULL;
	struct keel_opts o;
	unsigned nt = cfg->threads, id = 0;
	int r;

	memset(out, 0, sizeof(*out));
	if (!cl)
		return -ENOMEM;
	cl->cfg = cfg;
	cl->n = nt;
	cl->left = nt;
	cl->unit = bench_unit(cfg);
	cl->inflight =
		cfg->mode == BENCH_PINGPONG || cfg->mode == BENCH_CONNECTIONS ? 1 : cfg->inflight;
	cl->port = ntohs(cfg->addr.sin_port);
	inet_ntop(AF_INET, &cfg->addr.sin_addr, cl->addr, sizeof(cl->addr));
	latch_init(&cl->ready);
	pthread_mutex_init(&cl->left_mu, NULL);
	r = bench_pattern_init(&cl->pat, cfg, SENDMAX);
	if (r < 0)
		goto out_cl;
	cl->sh = aligned_alloc(64, sizeof(*cl->sh) * nt);
	if (!cl->sh) {
		r = -ENOMEM;
		goto out_pat;
	}
	memset(cl->sh, 0, sizeof(*cl->sh) * nt);
	for (unsigned i = 0; i < nt; i++) {
		r = shard_setup(cl, &cl->sh[i], i, &id);
		if (r < 0) {
			snprintf(out->why, sizeof(out->why), "out of memory");
			goto out_sh;
		}
	}
	r = opts_for(&o, cfg, nt, cfg->client_cpu0, true);
	if (r == 0)
		r = keel_runtime_create(&o, &rt);
	if (r < 0) {
		snprintf(out->why, sizeof(out->why), "creating the client runtime: %s",
			 strerror(-r));
		goto out_sh;
	}
	r = keel_runtime_start(rt, cli_start, cl);
	if (r < 0) {
		snprintf(out->why, sizeof(out->why), "starting the client runtime: %s",
			 strerror(-r));
		goto out_rt;
	}
	/* Every shard has its held connections open (or failed): set the window, go. */
	if (latch_wait(&cl->ready, nt) < 0) {
		keel_runtime_stop(rt, 0);
	} else {
		cl->t_start = bench_now_ns() + cfg->warmup_ns;
		cl->t_end = cl->t_start + cfg->seconds_ns;
		if (cfg->on_window)
			cfg->on_window(cfg->window_arg, cl->t_start, cl->t_end);
		for (unsigned i = 0; i < nt; i++) {
			cl->sh[i].go.fn = go;
			cl->sh[i].go.arg = &cl->sh[i];
			/* -ESHUTDOWN: every shard already failed and the runtime stops. */
			(void)keel_runtime_submit(rt, i, &cl->sh[i].go);
		}
	}
	int joined = keel_runtime_join(rt);
	r = 0;
	for (unsigned i = 0; i < nt; i++) {
		struct cshard *sh = &cl->sh[i];
		out->msgs += sh->msgs;
		out->bytes += sh->bytes;
		out->msgs_all += sh->msgs_all;
		out->cycles += sh->cycles;
		out->errors += sh->errors;
		out->tx_all += sh->tx_all;
		out->rx_all += sh->rx_all;
		out->stalled += sh->stalled;
		bench_hist_merge(&out->lat, &sh->lat);
		bench_tcpu_max(&out->client_thread_max, &sh->tcpu, cfg->seconds_ns);
		if (sh->err && r == 0) {
			r = sh->err;
			snprintf(out->why, sizeof(out->why), "%s", sh->why);
		}
	}
	/* A runtime that stopped with an error no shard recorded: no figure either. */
	if (r == 0 && joined < 0) {
		r = joined;
		snprintf(out->why, sizeof(out->why), "the client runtime stopped with %s",
			 strerror(-joined));
	}
	out->window_ns = cfg->seconds_ns;
out_rt:
	keel_runtime_destroy(rt);
out_sh:
	for (unsigned i = 0; i < nt; i++) {
		free(cl->sh[i].conns);
		free(cl->sh[i].sent);
	}
	free(cl->sh);
out_pat:
	bench_pattern_fini(&cl->pat);
out_cl:
	latch_fini(&cl->ready);
	pthread_mutex_destroy(&cl->left_mu);
	free(cl);
	return r;
}

static unsigned
server_clocks(struct bench_server *s, clockid_t *out, unsigned max)
{
	unsigned n = 0;

	for (unsigned i = 0; i < s->n && n < max; i++)
		out[n++] = s->sh[i].clock;
	return n;
}

const struct bench_backend bench_backend_keel = {
	.name = "keel",
	.unavailable = NULL,
	.serve_start = serve_start,
	.serve_stop = serve_stop,
	.server_clocks = server_clocks,
	.client_run = client_run,
};

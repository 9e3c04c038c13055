// SPDX-License-Identifier: MIT
/*
 * TCP connections: receive (multishot recv from the shard's buffer ring), send (one
 * operation in flight; what is queued meanwhile leaves together), backpressure, close.
 *
 * Lifetime: every operation in flight on a connection is counted in c->nops (deferred
 * flushes too). Closing (keel_conn_close, keel_conn_abort) only marks it and cancels what
 * is in flight; it never runs a callback. Once nothing is in flight (the last CQE of every
 * operation seen, SEND_ZC completions reaped, the queue dropped) the descriptor is released
 * (a direct one through the ring: IORING_OP_CLOSE), and then the connection goes on the
 * shard's close list. The list is run from the loop (a deferred callback, like libuv's
 * closing_handles): detached first, so a close issued by an on_close waits for the next
 * run; each entry gets on_close and is freed. So no callback ever runs inside the call
 * the application made, and no callback ever runs on a freed connection. Slices of a send
 * stay queued until that send completes, because the kernel may still be reading them.
 *
 * Pause: after keel_conn_pause_read (or the high watermark) no on_data runs until resume.
 * Data that completes meanwhile (CQEs already reaped, or racing the cancel) is held in
 * c->rq and delivered, in order, from the loop after resume. The receive stays cancelled
 * while anything is held, so c->rq never holds more than the receives in flight at the
 * pause could fill: at most the buffer ring.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include "net_internal.h"
#include "zcrx.h"

#define SEND_BYTES_MAX (1ull << 30)

_Atomic unsigned keel__conn_fail_recv_async;

struct keel_conn {
	struct net_shard *ns;
	struct keel_framer *hframer;       /* its framers holding a partial frame (a list) */
	const struct keel_net_config *cfg; /* the listener's, or the shard's */
	const struct keel_conn_ops *ops;
	void *app, *user;
	int fd;
	bool direct;
	struct keel_conn *prev, *next; /* ns->conns */
	struct keel_conn *starve_next;
	bool starving; /* on ns->starved, ns->starved_bulk (bulk_waiting) or ns->zc_waiting
			* (zc_waiting) */
	bool zc_waiting;
	bool bulk_waiting;

	struct keel_op recv_op, rcancel_op, send_op, cancel_op, shut_op, connect_op, tmo_op;
	struct keel_op close_op, rst_op;
	unsigned nops;

	bool open, connecting, recv_armed, rcancel_sent, read_paused, bp_paused, eof;
	bool closing, flush_close, shut_pending, shut_sent, send_inflight, flush_queued;
	bool lingering; /* a graceful close sent its queue and waits for the peer's EOF */
	bool rst;       /* an abort that cuts the stream: the close resets it (fd_release) */
	/* SEND_ZCs whose notification has not come: the socket may hold their pages */
	struct zc_op *zc_out;
	/* Its RECV_ZCs ended by ENOMEM with nothing held, in a row (keel__zcrx_nomem_give_up) */
	struct keel__zcrx_nomem zc_nomem;
	/* A receive, send or shutdown found no SQE: tried again next pass (queued while it
	 * waits) */
	struct keel__later retry_later;
	bool want_writable, cancel_sent;
	bool zc_ok;         /* may receive with RECV_ZC: accepted TCP (keel__zcrx_conn_wants) */
	bool unseen;        /* accepted, on_open not yet run: ended so, no on_close either */
	uint32_t zc_min;    /* slices of this many bytes go out with SEND_ZC; UINT32_MAX: none
			     * (send_zc off, or AF_UNIX, where the kernel refuses it) */
	bool zc;            /* the armed receive is a RECV_ZC (zcrx_rx.c) */
	bool zc_sim;        /* ... simulated: a test plays the kernel (keel__zcrx_sim_attach) */
	bool zc_sim_end;    /* a deferred simulated cancel of it is queued (holds a nop) */
	bool bulk;          /* receive from the bulk ring (the next receive armed does) */
	bool rx_bulk;       /* the armed receive takes the bulk ring's buffers */
	uint16_t small_run; /* receives in a row under buf_size on the bulk ring */
	bool eof_held;      /* EOF seen behind held data: on_eof after it */
	struct keel__later rq_later; /* the deferred delivery of the held data */
	bool wm_queued;              /* a deferred resume after new watermarks is queued */
	bool fd_released;            /* the descriptor is closed (or its close is in flight) */
	bool close_listed;
	struct keel_conn *close_next; /* ns->close_head */
	struct keel_conn *flush_next; /* ns->flush_head, while flush_queued */
	int status;

	/* Received slices held while paused: rq[rqhead..rqn) */
	struct keel_slice *rq;
	uint32_t rqhead, rqn, rqcap;

	struct keel_timer *close_timer; /* bounds a graceful close (close_timeout_ns) */
	struct keel_slice *q;
	uint32_t qhead, qn, qcap, qoff;
	/* The open write buffer (keel_conn_write's): a reference whose data is its first free
	 * byte; buf NULL when none. Writes fill it whatever slices were queued between them,
	 * each joining the queue as a piece of it; it goes once its last piece is sent. */
	struct keel_slice wb;
	uint64_t queued, offered;
	uint32_t low, high;
	struct iovec iov[NET_IOV_MAX];
	struct msghdr msg;
	struct sockaddr_storage peer, local; /* read when it opened (keel__conn_accepted) */
	socklen_t peerlen, locallen;
	int addr_err;           /* why they could not be read: what keel_conn_*_addr return */
	struct keel_op addr_op; /* the descriptor's regular copy, to read them (direct) */
	struct __kernel_timespec ts;
	/* The connect's link timeout: its CQE not yet come; it fired (connect_cb) */
	bool tmo_inflight, tmo_fired;
	int connect_err;    /* a failed connect held for the timeout's CQE (connect_cb) */
	struct net_lim lim; /* limits.c: timeouts of an accepted connection */
};

/* A SEND_ZC: lives until its notification, which may come after the connection is gone. */
struct zc_op {
	struct keel_op op;
	struct keel_conn *c;     /* until the first CQE */
	struct keel_conn *owner; /* until the notification, or the connection's free */
	struct zc_op *onext;     /* owner->zc_out's list */
	struct net_shard *ns;
	struct keel_slice s;
};

static void conn_check(struct keel_conn *c);
static void send_kick(struct keel_conn *c);
static void recv_update(struct keel_conn *c);
static void rq_later(struct keel_conn *c);

static void
sqe_fd(struct keel_conn *c, struct io_uring_sqe *sqe)
{
	if (c->direct)
		sqe->flags |= IOSQE_FIXED_FILE;
}

static bool
want_recv(const struct keel_conn *c)
{
	if (!c->open || c->closing || c->eof || c->starving || c->ns->stopping ||
	    c->rqhead != c->rqn)
		return false;
	/* A graceful close reads on, dropping what comes, until the peer's EOF: a close(2)
	 * with bytes unread would reset the connection (send_kick, linger). */
	return c->flush_close || (!c->read_paused && !c->bp_paused);
}

static bool
read_blocked(const struct keel_conn *c)
{
	return c->read_paused || c->bp_paused;
}

static bool
dropping_reads(const struct keel_conn *c)
{
	return c->closing || c->flush_close;
}

static void
rq_drop(struct keel_conn *c)
{
	while (c->rqhead < c->rqn)
		keel_slice_put(&c->rq[c->rqhead++]);
	c->rqhead = c->rqn = 0;
	c->eof_held = false;
}

/* Room for @want slices in c->rq (grown, doubling from 16). Returns 0 or -ENOMEM. */
static int
rq_room(struct keel_conn *c, uint32_t want)
{
	uint32_t ncap = c->rqcap ? c->rqcap : 16;
	struct keel_slice *nq;

	if (want <= c->rqcap)
		return 0;
	while (ncap < want)
		ncap *= 2;
	nq = realloc(c->rq, ncap * sizeof(*nq));
	if (!nq)
		return -ENOMEM;
	c->rq = nq;
	c->rqcap = ncap;
	return 0;
}

/* Slice @s is of a receive ring running low (keel__pbuf_pressed: the TCP rings' or the UDP
 * ring's), or of a ZCRX area running low (keel__zcrx_pressed), and is to be held for as long
 * as a peer takes to read (a send queue, a paused connection's held reads, a UDP send
 * waiting for room): replace it with a copy in the shard's allocator memory (--memory) and
 * give the ring (or the kernel's queue) its buffer back. A few peers that never read could
 * otherwise hold every receive buffer of the shard, and no connection or endpoint of it
 * could receive again. Left as it is when no memory can be had. */
static __attribute__((noinline, cold)) void
unring_copy(struct net_shard *ns, struct keel_slice *s)
{
	struct keel_slice copy;

	/* An empty slice (an empty datagram's, which held a ring buffer) becomes an empty one
	 * of a byte's buffer of its own: the allocator makes no empty buffers. */
	if (keel_buf_alloc(keel_shard_alloc(), s->len ? s->len : 1, &copy) < 0)
		return;
	memcpy(copy.data, s->data, s->len);
	copy.len = s->len;
	keel_slice_put(s);
	*s = copy;
	ns->st.recv_copies++;
}

/* Whether @p lies in a receive ring or ZCRX area running low. Checked for every slice a
 * send queue or a UDP send takes: a few loads each while no ring runs low. */
static inline bool
ring_pressed(const struct net_shard *ns, const void *p)
{
	return keel__pbuf_pressed(&ns->tcp, p) || keel__pbuf_pressed(&ns->bulk, p) ||
	       keel__pbuf_pressed(&ns->udp, p) || keel__zcrx_pressed(ns, p);
}

/* The copy is out of the checks' way (unring_copy). */
void
keel__net_unring(struct net_shard *ns, struct keel_slice *s)
{
	if (__builtin_expect(ring_pressed(ns, s->data), 0))
		unring_copy(ns, s);
}

/* Hold @n slices for delivery after resume. Consumes them, also on failure (-ENOMEM). */
static int
rq_hold(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	if (c->rqhead == c->rqn)
		c->rqhead = c->rqn = 0;
	if (c->rqn + n > c->rqcap && c->rqhead) {
		memmove(c->rq, c->rq + c->rqhead, (c->rqn - c->rqhead) * sizeof(*c->rq));
		c->rqn -= c->rqhead;
		c->rqhead = 0;
	}
	if (rq_room(c, c->rqn + n) < 0) {
		for (unsigned i = 0; i < n; i++)
			keel_slice_put(&s[i]);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < n; i++)
		keel__net_unring(c->ns, &s[i]);
	memcpy(c->rq + c->rqn, s, n * sizeof(*s));
	c->rqn += n;
	c->ns->st.reads_held += n;
	return 0;
}

/* How many of @s[0..n) one on_data may carry: what fits under the high watermark plus one
 * receive buffer, and at least one slice. An application that echoes what it receives
 * therefore never queues more than high + buf_size (bulk_buf_size once the bulk ring
 * exists). */
static unsigned
chunk(const struct keel_conn *c, const struct keel_slice *s, unsigned n)
{
	const struct net_shard *ns = c->ns;
	uint64_t budget = (c->queued < c->high ? c->high - c->queued : 0) +
			  (ns->bulk_ready ? ns->cfg.bulk_buf_size : ns->cfg.buf_size);
	uint64_t bytes = s[0].len;
	unsigned k = 1;

	while (k < n && bytes + s[k].len <= budget)
		bytes += s[k++].len;
	return k;
}

/* Deliver @s[0..n) in on_data calls, as long as reading is not paused; hold the rest. */
static void
deliver_slices(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	unsigned i = 0;

	while (i < n) {
		unsigned k;

		if (dropping_reads(c)) {
			for (; i < n; i++)
				keel_slice_put(&s[i]);
			return;
		}
		if (read_blocked(c)) {
			if (rq_hold(c, s + i, n - i) < 0)
				keel_conn_abort(c, -ENOMEM);
			recv_update(c);
			return;
		}
		k = chunk(c, s + i, n - i);
		c->ops->on_data(c, s + i, k);
		i += k;
	}
}

static void sqe_retry(struct keel_conn *c);
static void abort_cancel(struct keel_conn *c);
static void flush_later(struct keel_conn *c);

static void
recv_arm(struct keel_conn *c)
{
	struct net_shard *ns = c->ns;
	struct io_uring_sqe *sqe;

	if (c->zc_ok && __builtin_expect(ns->zcrx != NULL, 0) && keel__zcrx_sim_recv(ns)) {
		/* Tests: a RECV_ZC the test plays the kernel for. Nothing is submitted; its
		 * completions come from keel__conn_zcrx_inject() and its cancel completes from
		 * the loop (sim_end_later), so it is counted and ended like a real one. */
		c->zc = c->zc_sim = true;
		c->recv_armed = true;
		c->rcancel_sent = false;
		c->nops++;
		return;
	}
	sqe = keel_sqe_get();
	if (!sqe) {
		sqe_retry(c);
		return;
	}
	c->zc_sim = false;
	c->zc = c->zc_ok && keel__zcrx_prep_recv(ns, sqe, c->fd);
	if (!c->zc) {
		if (ns->f_ms_recv)
			io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
		else
			io_uring_prep_recv(sqe, c->fd, NULL, 0, 0);
		if (ns->f_bundle)
			sqe->ioprio |= IORING_RECVSEND_BUNDLE;
		sqe->flags |= IOSQE_BUFFER_SELECT;
		if (__builtin_expect(keel__fault_take(&keel__conn_fail_recv_async), 0))
			sqe->flags |= IOSQE_ASYNC;
		/* c->bulk is set only once the bulk ring exists (bulk_note). */
		c->rx_bulk = c->bulk;
		sqe->buf_group = c->bulk ? ns->bulk.bgid : ns->tcp.bgid;
	}
	/* Counted from the SQE itself, so that the count says what was submitted. */
	ns->st.recv_arms++;
	ns->st.recv_arms_multishot += (sqe->ioprio & IORING_RECV_MULTISHOT) != 0;
	sqe_fd(c, sqe);
	keel_sqe_bind(sqe, &c->recv_op);
	c->recv_armed = true;
	c->rcancel_sent = false;
	c->nops++;
}

static void recv_done(struct keel_conn *c, const struct io_uring_cqe *cqe, int res, uint32_t flags);

/* Tests: the simulated RECV_ZC's cancel completes (-ECANCELED) from the loop, as the
 * kernel's would, unless it ended meanwhile and was armed again without a cancel. */
static void
sim_end_cb(void *arg)
{
	struct keel_conn *c = arg;

	c->zc_sim_end = false;
	if (c->recv_armed && c->zc_sim && (c->rcancel_sent || c->closing))
		recv_done(c, NULL, -ECANCELED, 0);
	c->nops--; /* the deferred call's hold */
	conn_check(c);
}

static void
sim_end_later(struct keel_conn *c)
{
	c->rcancel_sent = true;
	if (c->zc_sim_end)
		return;
	if (keel_defer(sim_end_cb, c) < 0) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: cannot defer the simulated RECV_ZC's cancel (out of memory)",
			 c->ns->id);
		return;
	}
	c->zc_sim_end = true;
	c->nops++;
}

static void
recv_cancel(struct keel_conn *c)
{
	struct io_uring_sqe *sqe;

	if (!c->recv_armed || c->rcancel_sent || c->cancel_sent)
		return;
	if (c->zc_sim) {
		sim_end_later(c);
		return;
	}
	sqe = keel_sqe_get();
	if (!sqe) {
		sqe_retry(c);
		return;
	}
	io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&c->recv_op, 0);
	keel_sqe_bind(sqe, &c->rcancel_op);
	c->rcancel_sent = true;
	c->nops++;
}

/* Arm or cancel the receive to match want_recv(); end an armed receive of the ring the
 * connection is leaving (its last completion re-arms with the other). */
static void
recv_update(struct keel_conn *c)
{
	if (want_recv(c)) {
		if (!c->recv_armed)
			recv_arm(c);
		else if (c->bulk != c->rx_bulk && !c->zc)
			recv_cancel(c);
		return;
	}
	recv_cancel(c);
}

static void
starve_remove(struct keel_conn *c)
{
	struct keel_conn **pp = c->zc_waiting     ? &c->ns->zc_waiting
				: c->bulk_waiting ? &c->ns->starved_bulk
						  : &c->ns->starved;

	if (!c->starving)
		return;
	for (; *pp; pp = &(*pp)->starve_next)
		if (*pp == c) {
			*pp = c->starve_next;
			c->nops--; /* the list's hold */
			break;
		}
	c->starving = false;
	c->zc_waiting = false;
	c->bulk_waiting = false;
}

/* Put @c on @list (ns->starved, ns->starved_bulk or ns->zc_waiting) until its kick: no
 * receive meanwhile. */
static void
starve_add(struct keel_conn *c, struct keel_conn **list, bool zc)
{
	c->starving = true;
	c->zc_waiting = zc;
	c->bulk_waiting = list == &c->ns->starved_bulk;
	c->starve_next = *list;
	*list = c;
	c->nops++; /* held while on the list */
}

static void
starve_wake(struct keel_conn *list)
{
	while (list) {
		struct keel_conn *c = list;
		list = c->starve_next;
		c->starving = false;
		c->zc_waiting = false;
		c->bulk_waiting = false;
		c->nops--;
		recv_update(c);
		conn_check(c);
	}
}

/* A deferred kick of one waiting list: take it, re-arm them. */
static void
waiters_run(struct net_shard *ns, struct keel_conn **list)
{
	struct keel_conn *l = *list;

	*list = NULL;
	starve_wake(l);
	keel__net_unref(ns);
}

static void
starve_cb(struct keel__later *l)
{
	struct net_shard *ns = container_of(l, struct net_shard, starve_kick);

	waiters_run(ns, &ns->starved);
}

static void
starve_bulk_cb(struct keel__later *l)
{
	struct net_shard *ns = container_of(l, struct net_shard, starve_bulk_kick);

	waiters_run(ns, &ns->starved_bulk);
}

void
keel__conn_starved_kick(struct net_shard *ns, const struct pbuf_ring *r)
{
	if (r == &ns->bulk) {
		if (ns->starved_bulk)
			keel__net_kick(ns, &ns->starve_bulk_kick, starve_bulk_cb);
	} else if (ns->starved) {
		keel__net_kick(ns, &ns->starve_kick, starve_cb);
	}
}

static void
zc_wait_cb(struct keel__later *l)
{
	struct net_shard *ns = container_of(l, struct net_shard, zc_wait_kick);

	waiters_run(ns, &ns->zc_waiting);
}

void
keel__conn_zc_wait_kick(struct net_shard *ns)
{
	if (ns->zc_waiting)
		keel__net_kick(ns, &ns->zc_wait_kick, zc_wait_cb);
}

static void deliver_taken(struct keel_conn *c, int n);

/* A receive of @res bytes from the ring in use: move to the bulk ring when it filled two
 * first-ring buffers (one without bundles, where a receive takes at most one) and the bulk
 * ring has a buffer to give (else the move would end in ENOBUFS and back); back after
 * KEEL_NET_BULK_BACK receives in a row under one. */
static void
bulk_note(struct keel_conn *c, uint32_t res)
{
	struct net_shard *ns = c->ns;

	if (c->rx_bulk) {
		if (res >= ns->cfg.buf_size)
			c->small_run = 0;
		else if (c->bulk && ++c->small_run >= KEEL_NET_BULK_BACK) {
			c->bulk = false;
			ns->st.bulk_backs++;
		}
	} else if (!c->bulk && res >= (ns->f_bundle ? 2 : 1) * (uint64_t)ns->cfg.buf_size) {
		struct pbuf_ring *b = keel__net_bulk(ns);

		if (!b || !keel__pbuf_has_buffer(b))
			return;
		c->bulk = true;
		c->small_run = 0;
		ns->st.bulk_moves++;
	}
}

static void
deliver(struct keel_conn *c, unsigned bid, int res, uint32_t flags)
{
	struct net_shard *ns = c->ns;
	struct pbuf_ring *r = c->rx_bulk ? &ns->bulk : &ns->tcp;
	int n = keel__pbuf_take(r, bid, res, flags, ns->f_bundle, ns->scratch, r->nbufs);

	if (n > 0) {
		keel__zcrx_copy_bytes(ns, (uint64_t)res);
		/* Bytes a graceful close reads only to drop are no activity: a peer that never
		 * reads its reply and trickles bytes is still ended by idle_timeout_ns. */
		if (!dropping_reads(c))
			keel__lim_rx(&c->lim, res);
	}
	deliver_taken(c, n);
}

/* A RECV_ZC completion: one slice of the ZCRX area, delivered like the copy path's. */
static void
deliver_zc(struct keel_conn *c, const struct io_uring_cqe *cqe)
{
	int n = keel__zcrx_take(c->ns, cqe, c->ns->scratch);

	if (n > 0)
		c->zc_nomem.rounds = 0; /* the kernel had a buffer: an ENOMEM run ends */
	if (n > 0 && !dropping_reads(c))
		keel__lim_rx(&c->lim, cqe->res);
	if (n != 0)
		deliver_taken(c, n);
}

int
keel__conn_zcrx_inject(struct keel_conn *c, const struct io_uring_cqe *cqe)
{
	if (!c->recv_armed || !c->zc_sim)
		return -EINVAL;
	recv_done(c, cqe, cqe->res, cqe->flags);
	return 0;
}

struct keel_framer **
keel__conn_framer_slot(struct keel_conn *c)
{
	return &c->hframer;
}

int
keel__conn_recv_kind(const struct keel_conn *c)
{
	if (!c->recv_armed)
		return 0;
	return c->zc ? 2 : 1;
}

/* Deliver the @n slices in ns->scratch (-errno: abort). */
static void
deliver_taken(struct keel_conn *c, int n)
{
	struct net_shard *ns = c->ns;

	if (n < 0) {
		keel_conn_abort(c, n);
		return;
	}
	ns->st.recv_cqes++;
	ns->st.recv_bufs += (unsigned)n;
	/* Behind held data: in order, after it. */
	if (c->rqhead < c->rqn && !dropping_reads(c)) {
		if (rq_hold(c, ns->scratch, (unsigned)n) < 0)
			keel_conn_abort(c, -ENOMEM);
		return;
	}
	deliver_slices(c, ns->scratch, (unsigned)n);
}

static void
eof_deliver(struct keel_conn *c)
{
	if (c->ops->on_eof)
		c->ops->on_eof(c);
	else
		keel_conn_close(c);
}

/* Deferred: hand over what was held while reading was paused, then a held EOF. */
static void
rq_cb(struct keel__later *l)
{
	struct keel_conn *c = container_of(l, struct keel_conn, rq_later);

	while (c->rqhead < c->rqn && !dropping_reads(c) && !read_blocked(c)) {
		struct net_shard *ns = c->ns;
		unsigned k = chunk(c, c->rq + c->rqhead, c->rqn - c->rqhead);

		/* Delivered from a copy, as fresh data is (ns->scratch): a framer that on_data
		 * hands part of the array gives slices back in front of rqhead when a callback
		 * pauses reading (keel__conn_unread), where the array's tail would be. Advanced
		 * first: on_data owns the slices (keel_conn_send clears them). */
		if (k > ns->scratch_n)
			k = ns->scratch_n;
		memcpy(ns->scratch, c->rq + c->rqhead, k * sizeof(*c->rq));
		c->rqhead += k;
		c->ops->on_data(c, ns->scratch, k);
	}
	if (c->rqhead == c->rqn) {
		c->rqhead = c->rqn = 0;
		if (c->eof_held && !dropping_reads(c)) {
			c->eof_held = false;
			eof_deliver(c);
		}
	}
	recv_update(c);
	c->nops--;
	conn_check(c);
}

static void
rq_later(struct keel_conn *c)
{
	if (c->rq_later.queued || (c->rqhead == c->rqn && !c->eof_held) || read_blocked(c) ||
	    dropping_reads(c))
		return;
	/* A step that allocates nothing: with keel_defer, a shard short of memory aborted the
	 * connection rather than deliver inside the application's call. */
	c->rq_later.fn = rq_cb;
	if (keel__later(&c->rq_later) < 0)
		return; /* the shard's loop has ended: nothing is delivered any more */
	c->nops++;
}

/* A RECV_ZC that ended with @res < 0 (not a cancel), by keel__zcrx_end_action: armed again
 * at once (ENOSPC: the CQ was full, as the copy path re-arms an ended multishot), once a
 * refill is published or the retry timer fires (ENOMEM; aborted when it keeps failing with
 * nothing held: keel__zcrx_nomem_give_up), or the copy path from now on
 * (EPROTONOSUPPORT: not TCP); EFAULT (the payload is in another queue's buffers, which no
 * receive here can read) and anything else abort. Nothing was consumed from the socket,
 * so the next receive reads from where this one stopped; the re-arm itself is the
 * caller's (the final CQE's). Returns: false when the connection is to be aborted. */
static bool
zc_end(struct keel_conn *c, int res)
{
	struct net_shard *ns = c->ns;

	switch (keel__zcrx_end_action(res)) {
	case KEEL__ZCRX_END_REARM:
		keel__zcrx_count_end(ns, res);
		return true;
	case KEEL__ZCRX_END_WAIT:
		keel__zcrx_count_end(ns, res);
		/* Failing for about a second with nothing held: its packets are copies from
		 * another queue, and the ZCRX queue may never receive to give buffers back. */
		if (keel__zcrx_nomem_give_up(ns, &c->zc_nomem))
			return false; /* aborted with ENOMEM */
		if (keel__zcrx_retry_later(ns) < 0)
			return false; /* no timer to bound the wait: aborted with ENOMEM */
		if (!c->starving && !c->closing)
			starve_add(c, &ns->zc_waiting, true);
		/* Partial frames may hold area slices: copied out, they go back. */
		keel__framers_reclaim_later(ns);
		return true;
	case KEEL__ZCRX_END_COPY:
		c->zc_ok = false;
		keel__zcrx_conn_to_copy(ns, res);
		return true;
	case KEEL__ZCRX_END_ABORT:
		if (res == -EFAULT)
			keel__zcrx_misrouted(ns);
		break;
	}
	return false;
}

/* A completion of the armed receive: @cqe is the whole CQE (a RECV_ZC's is 32 bytes). */
static void
recv_done(struct keel_conn *c, const struct io_uring_cqe *cqe, int res, uint32_t flags)
{
	struct net_shard *ns = c->ns;
	bool more = flags & IORING_CQE_F_MORE;

	if (!more)
		c->recv_armed = false;
	else
		ns->st.recv_more++;
	/* An EOF or error that names a buffer (run from io-wq): retired empty. */
	if (__builtin_expect(res <= 0, 0) && (flags & IORING_CQE_F_BUFFER) && !c->zc)
		keel__pbuf_retire_empty(c->rx_bulk ? &ns->bulk : &ns->tcp,
					flags >> IORING_CQE_BUFFER_SHIFT);
	if (res > 0) {
		if (c->zc)
			deliver_zc(c, cqe);
		else if (flags & IORING_CQE_F_BUFFER) {
			if (keel__net_bulk_on(&ns->cfg))
				bulk_note(c, (uint32_t)res);
			deliver(c, flags >> IORING_CQE_BUFFER_SHIFT, res, flags);
			/* Changing rings ends this receive (the op holds c). */
			if (more && c->bulk != c->rx_bulk)
				recv_update(c);
			/* A multishot receive that ends with data and was not cancelled took
			 * the last buffer in the ring (a bundle stops there): the window is
			 * smaller than the bytes in flight, and left so every receive would
			 * end and be armed again. */
			if (!more && ns->f_ms_recv && !c->rcancel_sent && !c->cancel_sent)
				keel__pbuf_grow(c->rx_bulk ? &ns->bulk : &ns->tcp);
		}
	} else if (res == 0) {
		if (!c->closing && !c->eof) {
			c->eof = true;
			/* After keel_conn_close (flush_close) the app hears nothing more but
			 * on_close, even when the EOF came in the batch that held the data it
			 * closed on. */
			if (dropping_reads(c)) {
				if (c->flush_close)
					flush_later(c); /* the queue sent, the close comes */
			} else if (c->rqhead < c->rqn)
				c->eof_held = true; /* after the held data */
			else
				eof_deliver(c);
		}
	} else if (c->zc && res != -ECANCELED) {
		/* Recoverable: armed again below (or on its kick), RECV_ZC or the copy path.
		 * Else aborted: an ENOBUFS of a RECV_ZC is no want of the copy path's
		 * buffers, which the branch below would take it for. */
		if (!zc_end(c, res))
			keel_conn_abort(c, res);
	} else if (res == -ENOBUFS) {
		ns->st.enobufs++;
		if (!c->starving && !c->closing) {
			/* Buffers may have come back before this completion was seen. The
			 * application holds every bulk buffer: back to the first ring. */
			bool ok = keel__pbuf_grow(c->rx_bulk ? &ns->bulk : &ns->tcp);

			if (!ok && c->rx_bulk && c->bulk) {
				c->bulk = false;
				ns->st.bulk_backs++;
			}
			/* A move to the bulk ring decided while it had a buffer, and it has
			 * none now (other connections' applications hold them all): stay on
			 * the first ring, which may have buffers back, rather than wait on
			 * an empty ring for a buffer that nothing may return. */
			if (c->bulk && !c->rx_bulk && !keel__pbuf_has_buffer(&ns->bulk)) {
				c->bulk = false;
				ns->st.bulk_backs++;
			}
			/* The next receive takes the other ring (a move was under way, or
			 * just made): it did not run dry, so it need not grow. */
			if (c->bulk != c->rx_bulk)
				ok = (c->bulk ? ns->bulk.inring : ns->tcp.inring) > 0;
			/* It waits for the ring its next receive takes: a buffer of the
			 * other wakes it no more (each woke every waiting connection, to
			 * fail again). */
			starve_add(c, c->bulk ? &ns->starved_bulk : &ns->starved, false);
			if (ok)
				keel__conn_starved_kick(ns, c->bulk ? &ns->bulk : &ns->tcp);
			else /* partial frames may hold them: copied out, they come back */
				keel__framers_reclaim_later(ns);
		}
	} else if (res != -ECANCELED) {
		keel_conn_abort(c, res);
	}
	if (!more) {
		c->nops--;
		if (want_recv(c) && res != -ENOBUFS)
			ns->st.rearms++;
		recv_update(c);
		conn_check(c);
	}
}

static void
recv_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_conn *c = container_of(op, struct keel_conn, recv_op);

	recv_done(c, keel_cqe_current(), res, flags);
}

static void
rcancel_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_conn *c = container_of(op, struct keel_conn, rcancel_op);

	c->nops--;
	conn_check(c);
}

/* The queue's slot @i places after its head. qcap is a power of two (q_reserve doubles
 * from 16): a mask, not a division, on every queued slice. */
static inline struct keel_slice *
q_at(const struct keel_conn *c, uint32_t i)
{
	return &c->q[(c->qhead + i) & (c->qcap - 1)];
}

/* The open write buffer goes (its last piece sent, the queue emptied or dropped): an idle
 * connection holds no memory for its next write. */
static inline void
wb_release(struct keel_conn *c)
{
	if (c->wb.buf) {
		keel_slice_put(&c->wb);
		memset(&c->wb, 0, sizeof(c->wb));
	}
}

static void
drop_queue(struct keel_conn *c)
{
	while (c->qn) {
		keel_slice_put(&c->q[c->qhead]);
		c->qhead = (c->qhead + 1) & (c->qcap - 1);
		c->qn--;
	}
	c->qoff = 0;
	c->ns->st.send_queued -= c->queued;
	c->queued = 0;
	wb_release(c);
}

static void
consume(struct keel_conn *c, uint32_t res)
{
	if (res < c->offered)
		c->ns->st.short_sends++;
	c->ns->st.send_queued -= res;
	while (res) {
		struct keel_slice *s = &c->q[c->qhead];
		uint32_t avail = s->len - c->qoff;

		net_verify(c->qn > 0);
		if (res >= avail) {
			res -= avail;
			c->queued -= avail;
			/* The open write buffer's last piece is sent: the buffer goes with it (a
			 * 4 KiB buffer held by a header write would else stay for as long as the
			 * large slice behind it took to send, where it went once sent before
			 * writes shared one). Its later pieces end at wb.data. */
			if (s->buf == c->wb.buf && s->data + s->len == c->wb.data)
				wb_release(c);
			keel_slice_put(s);
			c->qhead = (c->qhead + 1) & (c->qcap - 1);
			c->qn--;
			c->qoff = 0;
			if (!c->qn)
				wb_release(c);
		} else {
			c->qoff += res;
			c->queued -= res;
			res = 0;
		}
	}
}

/* Reading paused by the queue (bp_paused) resumes once the queue is at or under the low
 * watermark, with on_writable for a sender that passed the high one. */
static void
bp_resume(struct keel_conn *c)
{
	if (!c->bp_paused || c->queued > c->low)
		return;
	c->bp_paused = false;
	rq_later(c);
	recv_update(c);
	/* Not after a close (the app's, or rq_later's abort): on_close is next. */
	if (c->want_writable && !dropping_reads(c)) {
		c->want_writable = false;
		if (c->ops->on_writable)
			c->ops->on_writable(c);
	}
}

static void
send_done(struct keel_conn *c, int res)
{
	c->send_inflight = false;
	if (res > 0) {
		consume(c, (uint32_t)res);
		keel__lim_tx(&c->lim);
	} else if (!c->closing) {
		keel_conn_abort(c, res == 0 ? -EPIPE : res);
		return;
	}
	if (c->closing)
		return;
	bp_resume(c);
	send_kick(c);
}

static void
send_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_conn *c = container_of(op, struct keel_conn, send_op);

	send_done(c, res);
	c->nops--;
	conn_check(c);
}

static void
zc_done(struct zc_op *z)
{
	struct net_shard *ns = z->ns;
	struct keel_conn *c = z->owner;

	if (c) { /* off its connection's list: the socket holds no page of it now */
		struct zc_op **p = &c->zc_out;

		while (*p != z)
			p = &(*p)->onext;
		*p = z->onext;
	}
	keel_slice_put(&z->s);
	free(z);
	/* A graceful close that had only these pages left to wait for (linger): closed now,
	 * with a FIN. @c holds its own reference of @ns. */
	if (c && !c->zc_out && c->lingering && c->eof && !c->closing)
		keel_conn_abort(c, 0);
	keel__net_unref(ns);
}

static void
zc_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct zc_op *z = container_of(op, struct zc_op, op);

	if (flags & IORING_CQE_F_NOTIF) {
		if (res & (int)IORING_NOTIF_USAGE_ZC_COPIED)
			z->ns->st.zc_copied++;
		zc_done(z);
		return;
	}
	struct keel_conn *c = z->c;
	z->c = NULL;
	send_done(c, res);
	c->nops--;
	conn_check(c);
	/* Without F_MORE no notification follows: the buffer is free now. */
	if (!(flags & IORING_CQE_F_MORE))
		zc_done(z);
}

static bool
zc_send(struct keel_conn *c, struct keel_slice *s, uint32_t off, uint32_t len)
{
	struct net_shard *ns = c->ns;
	struct io_uring_sqe *sqe;
	struct zc_op *z;
	unsigned idx;
	uint64_t boff;

	if (len < c->zc_min || keel__net_fixed(ns, s, &idx, &boff) < 0)
		return false;
	z = calloc(1, sizeof(*z));
	if (!z)
		return false;
	if (keel_slice_sub(s, off, len, &z->s) < 0) {
		free(z);
		return false;
	}
	sqe = keel_sqe_get();
	if (!sqe) {
		keel_slice_put(&z->s);
		free(z);
		return false;
	}
	z->op.fn = zc_cb;
	z->c = c;
	z->ns = ns;
	keel__net_ref(ns);
	z->owner = c;
	z->onext = c->zc_out;
	c->zc_out = z;
	io_uring_prep_send_zc_fixed(sqe, c->fd, s->data + off, len, MSG_NOSIGNAL,
				    IORING_SEND_ZC_REPORT_USAGE, idx);
	sqe_fd(c, sqe);
	keel_sqe_bind(sqe, &z->op);
	c->offered = len;
	c->send_inflight = true;
	c->nops++;
	ns->st.sends_zc++;
	return true;
}

static void
shut_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_conn *c = container_of(op, struct keel_conn, shut_op);

	if (res < 0 && res != -ECANCELED && !c->closing)
		keel_conn_abort(c, res);
	c->nops--;
	conn_check(c);
}

/* Shut the write side (the FIN follows what was sent). Returns false when no SQE could be
 * had: tried again on the next pass (sqe_retry). */
static bool
shut_send(struct keel_conn *c)
{
	struct io_uring_sqe *sqe = keel_sqe_get();

	if (!sqe) {
		sqe_retry(c);
		return false;
	}
	io_uring_prep_shutdown(sqe, c->fd, SHUT_WR);
	sqe_fd(c, sqe);
	keel_sqe_bind(sqe, &c->shut_op);
	c->shut_sent = true;
	c->nops++;
	return true;
}

/* The peer did not end its side in time after a graceful close sent the queue: closed as
 * it is, status 0 (the queue went out); see linger. */
static void
linger_timeout_cb(struct keel_timer *t, void *arg)
{
	struct keel_conn *c = arg;

	(void)t;
	keel_conn_abort(c, c->zc_out ? -ETIMEDOUT : 0); /* pages held: the reply is cut */
}

/* A graceful close sent the queue. A close(2) now, with bytes from the peer unread or
 * still to come, makes the kernel reset the connection and drop what it still holds of the
 * queue (the peer sees a cut reply and ECONNRESET). So, unless the peer has ended its side
 * already: the write side is shut (a FIN after the queue), what the peer sends is read and
 * dropped (want_recv), and the close comes with its EOF (recv_done), or after
 * close_timeout_ns from the close, or else KEEL_NET_LINGER_NS from here. Zero-copy sends
 * whose pages the socket still holds (zc_out: their notifications not come) are waited for
 * too, EOF or not (zc_done closes): a close(2) would leave keel's pages pinned in a socket
 * the kernel keeps for as long as the peer does not read (minutes), the stop waiting on
 * them all that time; the bound ends that wait with a reset (keel_conn_abort). */
static void
linger(struct keel_conn *c)
{
	if (c->eof && !c->zc_out) {
		keel_conn_abort(c, 0);
		return;
	}
	if (!c->shut_sent && !shut_send(c))
		return;
	if (c->lingering)
		return;
	c->lingering = true;
	c->ns->st.close_lingers++;
	if (!c->close_timer) {
		if (keel_timer_create(linger_timeout_cb, c, &c->close_timer) < 0) {
			/* No timer to bound it: closed now, as before (a reset that cuts the reply
			 * while zero-copy pages are held). */
			keel_conn_abort(c, c->zc_out ? -ENOMEM : 0);
			return;
		}
		keel_timer_start(c->close_timer, KEEL_NET_LINGER_NS, 0);
	} else if (!c->cfg->close_timeout_ns || c->ns->flushing) {
		/* The close's timer holds what the header timeout had left (keel_conn_close),
		 * for a peer that sends no header and reads nothing; the queue went out, so
		 * the linger's own bound applies. In the stop's flush the close's timer
		 * (close_timeout_ns too) was stopped with every timer: the linger's bound
		 * applies as well, or only the flush's deadline would end the linger. */
		keel_timer_start(c->close_timer, KEEL_NET_LINGER_NS, 0);
	}
	recv_update(c);
}

/* Send what the queue holds (send_kick). */
static void
send_queued(struct keel_conn *c)
{
	struct net_shard *ns = c->ns;
	struct io_uring_sqe *sqe;
	unsigned n = 0;
	uint32_t i, first_len;

	first_len = c->q[c->qhead].len - c->qoff;
	if (zc_send(c, &c->q[c->qhead], c->qoff, first_len))
		return;
	/* Locals, not the connection's fields: nothing aliases them in the loop. qcap is a
	 * power of two (q_reserve doubles from 16). */
	{
		const uint32_t mask = c->qcap - 1, zct = c->zc_min;
		uint64_t offered = 0;
		uint8_t *end = NULL;

		for (i = 0; i < c->qn; i++) {
			const struct keel_slice *s = &c->q[(c->qhead + i) & mask];
			uint32_t off = i == 0 ? c->qoff : 0, len = s->len - off;
			uint8_t *p = s->data + off;

			/* A large slice goes on its own, with SEND_ZC. */
			if (i > 0 && s->len >= zct)
				break;
			/* A send's length is 32 bits (a merged iovec too): 1 GiB a send at most,
			 * past the first slice (reachable with send_max and shard_send_max 0). */
			if (i > 0 && offered + len > SEND_BYTES_MAX)
				break;
			/* Adjacent bytes of one buffer (consecutive slices of a receive buffer,
			 * small frames in one write buffer) go as one iovec. */
			if (p == end) {
				c->iov[n - 1].iov_len += len;
			} else {
				if (n == NET_IOV_MAX)
					break;
				c->iov[n].iov_base = p;
				c->iov[n].iov_len = len;
				n++;
			}
			end = p + len;
			offered += len;
		}
		c->offered = offered;
	}
	sqe = keel_sqe_get();
	if (!sqe) {
		sqe_retry(c);
		return;
	}
	if (n == 1) {
		io_uring_prep_send(sqe, c->fd, c->iov[0].iov_base, c->iov[0].iov_len, MSG_NOSIGNAL);
	} else {
		memset(&c->msg, 0, sizeof(c->msg));
		c->msg.msg_iov = c->iov;
		c->msg.msg_iovlen = n;
		io_uring_prep_sendmsg(sqe, c->fd, &c->msg, MSG_NOSIGNAL);
	}
	sqe_fd(c, sqe);
	keel_sqe_bind(sqe, &c->send_op);
	c->send_inflight = true;
	c->nops++;
	ns->st.sends++;
	ns->st.send_iovs += n;
	ns->st.send_bytes += c->offered;
}

/* Start the connection's next send, or, with its queue empty, the close or shutdown it
 * waits for. Inline: called again when each send completes, mostly to find nothing to do. */
static inline void
send_kick(struct keel_conn *c)
{
	if (c->send_inflight || c->closing || !c->open)
		return;
	if (c->qn)
		send_queued(c);
	else if (c->flush_close)
		linger(c);
	else if (c->shut_pending && !c->shut_sent)
		shut_send(c);
}

/* The shard's flush list, run from the loop. Detached first: a connection queued again
 * by what runs here waits for the next run, as a deferral made during the loop's run of
 * deferred calls does. */
static void
flush_run(void *arg)
{
	struct net_shard *ns = arg;
	struct keel_conn *c = ns->flush_head;

	ns->flush_head = NULL;
	ns->flush_tail = NULL;
	while (c) {
		struct keel_conn *next = c->flush_next;

		c->flush_queued = false;
		send_kick(c); /* may close it: our count keeps it alive until below */
		c->nops--;
		conn_check(c);
		c = next;
	}
	keel__net_unref(ns); /* the kick's */
}

/* The ring gave no SQE (its submit failed; core logs why): the receive, send or shutdown
 * is tried again on the next pass, rather than the connection left without one. */
static void
sqe_retry_cb(struct keel__later *l)
{
	struct keel_conn *c = container_of(l, struct keel_conn, retry_later);

	if (!c->closing) {
		recv_update(c);
		send_kick(c);
	} else {
		abort_cancel(c);
	}
	c->nops--;
	conn_check(c);
}

static void
sqe_retry(struct keel_conn *c)
{
	if (c->retry_later.queued)
		return;
	/* A step that allocates nothing: a keel_defer could fail for memory too, and the
	 * connection then waited for its next event (a close for its close timer, 5 s). */
	c->retry_later.fn = sqe_retry_cb;
	if (keel__later(&c->retry_later) < 0) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: no SQE after the shard's loop ended: a connection waits for "
			 "its next event",
			 c->ns->id);
		return;
	}
	c->nops++;
}

/* Send @c's queue at the end of the pass, so slices queued by the same callbacks leave
 * together: on the shard's flush list, which one deferred call runs, however many
 * connections a pass queues on (a deferred call each cost about 45 instructions a message
 * at 16 connections, callgrind). Without memory for that call, now. */
static void
flush_later(struct keel_conn *c)
{
	struct net_shard *ns = c->ns;

	if (c->flush_queued || c->send_inflight)
		return;
	/* The first on the list queues the run, which holds a reference to the shard. */
	if (!ns->flush_head) {
		if (keel_defer(flush_run, ns) < 0) {
			send_kick(c);
			return;
		}
		keel__net_ref(ns);
	}
	c->flush_queued = true;
	c->nops++;
	c->flush_next = NULL;
	if (ns->flush_tail)
		ns->flush_tail->flush_next = c;
	else
		ns->flush_head = c;
	ns->flush_tail = c;
}

/* Room in the queue for @extra more slices. Returns: 0 or -ENOMEM. */
static int
q_reserve(struct keel_conn *c, uint32_t extra)
{
	uint32_t ncap = c->qcap ? c->qcap : 16;
	struct keel_slice *nq;

	if (c->qn + extra <= c->qcap)
		return 0;
	while (ncap < c->qn + extra)
		ncap *= 2;
	nq = malloc(ncap * sizeof(*nq));
	if (!nq)
		return -ENOMEM;
	for (uint32_t i = 0; i < c->qn; i++)
		nq[i] = c->q[(c->qhead + i) % c->qcap];
	free(c->q);
	c->q = nq;
	c->qhead = 0;
	c->qcap = ncap;
	return 0;
}

/* The queue passed the high watermark: reading pauses until it drains (bp_resume). */
static void
bp_pause(struct keel_conn *c)
{
	if (!c->bp_paused) {
		c->bp_paused = true;
		c->ns->st.bp_pauses++;
		recv_update(c);
	}
	c->want_writable = true;
}

/* @bytes were added to the queue: flush at the end of the pass, and the high watermark. */
static int
queued_more(struct keel_conn *c, uint64_t bytes)
{
	c->queued += bytes;
	c->ns->st.send_queued += bytes;
	if (c->open)
		flush_later(c);
	if (c->queued > c->high) {
		bp_pause(c);
		return 1;
	}
	return 0;
}

static int send_pressed_small(struct keel_conn *c, struct keel_slice *s);

int
keel_conn_send(struct keel_conn *c, struct keel_slice *s)
{
	net_on_own_shard(c->ns);
	if (!s || !s->len)
		return -EINVAL;
	if (c->closing || c->flush_close || c->shut_pending)
		return -EPIPE;
	if (keel__lim_send_check(c->ns, c, c->cfg, c->queued, s->len) < 0)
		return -ENOBUFS;
	/* A slice of a ring running low is copied out of it (unring_copy). A small one to
	 * wait behind others is copied into the open write buffer, as a write is: a buffer of
	 * its own (64 bytes at least) and a queue entry each made a peer trickling bytes to an
	 * echo that cannot send cost some 90 times the bytes send_max counts. Without memory
	 * for that, the copy of its own is tried, and without memory for either the slice
	 * stays in the ring. */
	if (__builtin_expect(ring_pressed(c->ns, s->data), 0)) {
		int r = c->qn && s->len < NET_PRESSED_JOIN_MAX ? send_pressed_small(c, s) : -ENOMEM;

		if (r >= 0)
			return r;
		unring_copy(c->ns, s);
	}
	uint64_t len = s->len;
	/* The bytes right after the tail's, in the same buffer (the next receive into an
	 * incrementally consumed buffer, echoed): the tail grows, as a write's does, and
	 * this reference goes. Else a peer trickling bytes to an echo that cannot send made a
	 * queue entry per receive, 24 bytes each outside --memory, and each send walked them
	 * all (quadratic). */
	if (c->qn) {
		struct keel_slice *t = q_at(c, c->qn - 1);

		if (keel__slice_follows(t, s)) { /* never a write buffer's: nobody else has one */
			t->len += s->len;
			keel_slice_put(s);
			/* Emptied as the other path's: a caller that puts what is left after a
			 * failure (keel_frame_send's contract) would put this reference again. */
			memset(s, 0, sizeof(*s));
			return queued_more(c, len);
		}
	}
	if (q_reserve(c, 1) < 0)
		return -ENOMEM;
	*q_at(c, c->qn) = *s;
	c->qn++;
	memset(s, 0, sizeof(*s));
	return queued_more(c, len);
}

uint32_t
keel__conn_queue_slices(const struct keel_conn *c)
{
	return c->qn;
}

bool
keel__conn_slice_pressed(const struct keel_conn *c, const struct keel_slice *s)
{
	return ring_pressed(c->ns, s->data);
}

bool
keel__conn_write_open(const struct keel_conn *c)
{
	return c->wb.buf != NULL;
}

/* Room left in the open write buffer. Its bytes past c->wb.data are in no queued slice
 * and no send in flight (a send offers only the lengths it saw), and only this connection
 * holds the buffer, so appending there is safe. */
static size_t
wb_room(const struct keel_conn *c)
{
	if (!c->wb.buf)
		return 0;
	return (size_t)((uint8_t *)keel_buf_base(c->wb.buf) + keel_buf_cap(c->wb.buf) - c->wb.data);
}

/* The queue's last slice ends where the open write buffer's free bytes begin: a write
 * grows it rather than queuing another piece. */
static bool
wb_at_tail(const struct keel_conn *c)
{
	const struct keel_slice *t;

	if (!c->qn)
		return false;
	t = q_at(c, c->qn - 1);
	return t->buf == c->wb.buf && t->data + t->len == c->wb.data;
}

size_t
keel__conn_write_room(const struct keel_conn *c)
{
	return c->closing || c->flush_close || c->shut_pending ? 0 : wb_room(c);
}

/* keel_conn_writev; a new buffer takes at least @minbuf bytes (room for the next writes
 * to join it). */
static int
conn_writev(struct keel_conn *c, const struct iovec *iov, unsigned n, size_t minbuf)
{
	struct keel_alloc *a = keel_shard_alloc();
	size_t total = 0, room, need, chunk;
	uint32_t nbufs = 0, first, piece;
	size_t copied = 0;
	struct keel_slice *tail = NULL;
	unsigned part = 0;
	size_t poff = 0;

	net_on_own_shard(c->ns);
	if (!iov || !n)
		return -EINVAL;
	for (unsigned i = 0; i < n; i++) {
		if (iov[i].iov_len && !iov[i].iov_base)
			return -EINVAL;
		total += iov[i].iov_len;
	}
	if (!total)
		return -EINVAL;
	if (c->closing || c->flush_close || c->shut_pending)
		return -EPIPE;
	if (!a)
		return -EPERM;
	if (keel__lim_send_check(c->ns, c, c->cfg, c->queued, total) < 0)
		return -ENOBUFS;
	chunk = KEEL_NET_WRITE_CHUNK;
	if (keel_alloc_buf_max(a) < chunk)
		chunk = (size_t)keel_alloc_buf_max(a);
	room = wb_room(c);
	need = total > room ? total - room : 0;
	nbufs = (uint32_t)((need + chunk - 1) / chunk);
	/* The open buffer's bytes join the queue as a piece of their own, unless the queue's
	 * tail is its last piece (then that grows). */
	piece = room && !wb_at_tail(c);
	if (q_reserve(c, nbufs + piece) < 0)
		return -ENOMEM;
	/* Every buffer first, into the slots past the queue's end: on failure nothing was
	 * queued. */
	first = c->qn + piece;
	for (uint32_t i = 0; i < nbufs; i++) {
		size_t want = need - (size_t)i * chunk < chunk ? need - (size_t)i * chunk : chunk;
		struct keel_slice *s = q_at(c, first + i);

		/* A small write gets a buffer with room for the next few to join it. */
		if (want < minbuf)
			want = minbuf < chunk ? minbuf : chunk;
		if (keel_buf_alloc(a, want, s) < 0) {
			while (i--)
				keel_slice_put(q_at(c, first + i));
			return -ENOMEM;
		}
		s->len = 0;
	}
	if (room && piece) {
		tail = q_at(c, c->qn);
		keel_slice_get(&c->wb, tail);
		tail->len = 0;
	} else if (room) {
		tail = q_at(c, c->qn - 1);
	}
	/* Copy: the tail's room first, then each new buffer its planned share (the
	 * allocator may have rounded the buffer up; the rest is room for the next write). */
	for (uint32_t b = 0; b <= nbufs; b++) {
		struct keel_slice *s = b == 0 ? tail : q_at(c, first + b - 1);
		size_t cap = b == 0 ? room : need - (size_t)(b - 1) * chunk;

		if (!s)
			continue;
		if (b > 0 && cap > chunk)
			cap = chunk;
		while (cap && part < n) {
			size_t k = iov[part].iov_len - poff;

			if (k > cap)
				k = cap;
			memcpy(s->data + s->len, (const uint8_t *)iov[part].iov_base + poff, k);
			s->len += (uint32_t)k;
			copied += k;
			cap -= k;
			poff += k;
			if (poff == iov[part].iov_len) {
				part++;
				poff = 0;
			}
		}
	}
	net_verify(copied == total);
	c->qn += piece + nbufs;
	if (nbufs) {
		const struct keel_slice *last = q_at(c, first + nbufs - 1);

		wb_release(c);
		keel_slice_get(last, &c->wb);
		c->wb.data = last->data + last->len;
		c->wb.len = 0;
	} else {
		c->wb.data += total;
	}
	return queued_more(c, total);
}

int
keel_conn_writev(struct keel_conn *c, const struct iovec *iov, unsigned n)
{
	return conn_writev(c, iov, n, 4096);
}

int
keel_conn_write(struct keel_conn *c, const void *data, size_t len)
{
	struct iovec iov = { (void *)data, len };

	if (!data || !len)
		return -EINVAL;
	return keel_conn_writev(c, &iov, 1);
}

/* keel_conn_send's small slice of a ring running low: its bytes written into the open
 * write buffer, or a new one of NET_PRESSED_JOIN_BUF bytes (a write's 4 KiB would make each
 * of many connections' first such slice cost 64 times its copy's 64 bytes), and its
 * reference put (the slice emptied, as a queued one is). On failure (-ENOMEM) the caller
 * keeps it. */
static __attribute__((noinline, cold)) int
send_pressed_small(struct keel_conn *c, struct keel_slice *s)
{
	struct iovec iov = { s->data, s->len };
	int r = conn_writev(c, &iov, 1, NET_PRESSED_JOIN_BUF);

	if (r < 0)
		return r;
	c->ns->st.recv_copies++;
	keel_slice_put(s);
	memset(s, 0, sizeof(*s));
	return r;
}

int
keel_conn_shutdown(struct keel_conn *c)
{
	net_on_own_shard(c->ns);
	if (c->closing || c->flush_close || c->shut_pending)
		return -EPIPE;
	c->shut_pending = true;
	flush_later(c);
	return 0;
}

/* The peer did not take the queue in time. The abort may free @c, and with it this timer
 * (destroying a timer inside its callback is allowed). */
static void
close_timeout_cb(struct keel_timer *t, void *arg)
{
	struct keel_conn *c = arg;

	(void)t;
	/* While it lingers the queue has gone out: only the peer's EOF was still awaited,
	 * unless zero-copy pages are held (the reset drops them: the reply is cut). */
	keel_conn_abort(c, c->lingering && !c->zc_out ? 0 : -ETIMEDOUT);
}

void
keel_conn_close(struct keel_conn *c)
{
	uint64_t bound;

	net_on_own_shard(c->ns);
	if (c->closing || c->flush_close)
		return;
	if (!c->open && !c->connecting) {
		keel_conn_abort(c, -ECANCELED);
		return;
	}
	c->flush_close = true;
	bound = keel__lim_header_end(&c->lim, keel_now_ns());
	/* Still connecting: keel__conn_opened sends the queue and closes (no on_open). */
	if (c->open) {
		rq_drop(c); /* a closing connection reads nothing more */
		recv_update(c);
		flush_later(c);
	}
	/* Not when one exists: the flush above may have reached the linger at once (a deferral
	 * that failed sends now), whose timer a second one would overwrite and leak. */
	/* close_timeout_ns, or else what the header timeout had left (a peer that never sent
	 * its header and never reads must still be ended). */
	if (c->cfg->close_timeout_ns)
		bound = c->cfg->close_timeout_ns;
	/* The linger began inside this call (the queue empty, sent at once): its timer, set
	 * to KEEL_NET_LINGER_NS, takes this close's bound, as it does when it begins later. */
	if (!c->closing && c->close_timer && c->lingering && c->cfg->close_timeout_ns)
		keel_timer_start(c->close_timer, c->cfg->close_timeout_ns, 0);
	if (!c->closing && !c->close_timer && bound) {
		int r = keel_timer_create(close_timeout_cb, c, &c->close_timer);

		if (r == 0) {
			keel_timer_start(c->close_timer, bound, 0);
		} else if (!c->ns->close_untimed_said) {
			/* Without a timer the close waits as long as the peer does not read: the
			 * runtime's stop still aborts it. Said, once per shard. */
			c->ns->close_untimed_said = true;
			keel_log(KEEL_LOG_WARN, NET_MOD,
				 "shard %u: no timer for a connection's close (%s): its bound "
				 "(close_timeout_ns) is not applied, and it waits for the peer to "
				 "read or for the runtime's stop; logged once per shard",
				 c->ns->id, strerror(-r));
		}
	}
}

/* An aborted connection's operations in flight are cancelled (all of them, by its fd);
 * without an SQE, again on the next pass (sqe_retry). */
static void
abort_cancel(struct keel_conn *c)
{
	struct io_uring_sqe *sqe;

	if (c->cancel_sent || !c->nops ||
	    !(c->recv_armed || c->send_inflight || c->connecting || c->shut_sent))
		return;
	sqe = keel_sqe_get();
	if (!sqe) {
		sqe_retry(c);
		return;
	}
	io_uring_prep_cancel_fd(sqe, c->fd,
				IORING_ASYNC_CANCEL_ALL |
					(c->direct ? IORING_ASYNC_CANCEL_FD_FIXED : 0));
	keel_sqe_bind(sqe, &c->cancel_op);
	c->cancel_sent = true;
	c->nops++;
}

void
keel_conn_abort(struct keel_conn *c, int status)
{
	net_on_own_shard(c->ns);
	if (c->closing)
		return;
	c->closing = true;
	/* Lingering, the queue has gone out as the close asked: whatever ends the wait for
	 * the peer's EOF (its reset, a failed shutdown, a timeout, the stop) is no failure.
	 * Unless zero-copy pages are still held (linger): the peer has not taken those bytes,
	 * and the reset below drops them, so the status stays the abort's (the timers give
	 * -ETIMEDOUT then; an application's own 0 stays 0). */
	c->status = status > 0 || (c->lingering && !c->zc_out) ? 0 : status;
	/* An abort for an error that cuts the stream (bytes still queued or in a send) ends in
	 * a reset, not a FIN: a FIN after a cut reply reads as a complete one to a peer whose
	 * protocol ends a reply with the close. So does any abort while zero-copy sends may
	 * still hold its buffers, status 0 too: a plain close left the socket to the kernel
	 * with its pages pinned for as long as the peer did not read (minutes), and the stop
	 * waited for their notifications all that time. */
	c->rst = c->open && (c->zc_out || (c->status < 0 && (c->qn || c->send_inflight)));
	keel__lim_close(c->ns, &c->lim);
	if (c->close_timer) {
		/* Allowed inside its own callback (close_timeout_cb). */
		keel_timer_destroy(c->close_timer);
		c->close_timer = NULL;
	}
	rq_drop(c);
	starve_remove(c);
	if (c->recv_armed && c->zc_sim)
		sim_end_later(c);
	abort_cancel(c);
	conn_check(c);
}

static void
cancel_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_conn *c = container_of(op, struct keel_conn, cancel_op);

	c->nops--;
	conn_check(c);
}

/* Free @c: unlinked, on_close (when @notify), memory. Nothing may be in flight. */
static void
conn_free(struct keel_conn *c, bool notify)
{
	struct net_shard *ns = c->ns;

	net_verify(c->nops == 0 && c->fd_released);
	for (struct zc_op *z = c->zc_out; z; z = z->onext) /* notifications still to come */
		z->owner = NULL;
	if (c->close_timer)
		keel_timer_destroy(c->close_timer);
	if (notify && c->ops->on_close)
		c->ops->on_close(c, c->status);
	/* After on_close: framers the app keeps past it, one it pushed to inside it included,
	 * must not abort @c later. */
	keel__framers_conn_gone(c->hframer);
	if (c->prev)
		c->prev->next = c->next;
	else
		ns->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	ns->st.conns_open--;
	if (ns->flushing && !ns->conns)
		keel__net_flush_idle(ns);
	keel__lim_close(ns, &c->lim);
	net_verify(!c->qn && !c->wb.buf);
	free(c->q);
	free(c->rq);
	free(c);
	keel__net_unref(ns);
}

/* The close list, run from the loop. Detached first: what on_close closes waits for the
 * next run, which the deferral already queued. */
static void
close_run(struct net_shard *ns)
{
	struct keel_conn *c = ns->close_head;

	ns->close_head = NULL;
	ns->close_tail = NULL;
	while (c) {
		struct keel_conn *next = c->close_next;
		/* An accepted connection the application never saw (the runtime stopped
		 * while its addresses were read): no on_close for it. */
		conn_free(c, !c->unseen);
		c = next;
	}
	keel__net_unref(ns); /* the kick's */
}

static void
close_later_cb(struct keel__later *l)
{
	close_run(container_of(l, struct net_shard, close_later));
}

static void
close_list_add(struct keel_conn *c)
{
	struct net_shard *ns = c->ns;

	if (c->close_listed)
		return;
	c->close_listed = true;
	c->close_next = NULL;
	if (ns->close_tail)
		ns->close_tail->close_next = c;
	else
		ns->close_head = c;
	ns->close_tail = c;
	/* A deferred step that allocates nothing, which keeps the shard awake until it runs
	 * (a keel_defer could fail for memory, and then a NOP for want of an SQE: the closes
	 * waited for the next close). It fails only once the shard's loop has ended, where
	 * the stop has closed every connection already. */
	if (!keel__net_kick(ns, &ns->close_later, close_later_cb))
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: a connection closed after the shard's loop ended: its on_close "
			 "does not run",
			 ns->id);
}

static void
close_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_conn *c = container_of(op, struct keel_conn, close_op);

	if (res < 0) {
		/* The slot must not stay taken for good: release it the synchronous way. */
		int r = keel__direct_clear((unsigned)c->fd);

		if (r < 0)
			c->ns->st.direct_stuck++; /* still taken: no accept counts on it */
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: closing direct descriptor %d on the ring: %s; released with "
			 "a files update instead (%s)",
			 c->ns->id, c->fd, strerror(-res), r < 0 ? strerror(-r) : "done");
	} else
		c->ns->st.fd_closes_ring++;
	keel__listeners_slot_freed(c->ns); /* only accepted connections are direct */
	c->nops--;
	conn_check(c);
}

/* The SO_LINGER {1, 0} of a reset (c->rst): on a direct descriptor, a socket command
 * linked ahead of the close (Linux 6.7). */
static const struct linger rst_linger = { .l_onoff = 1, .l_linger = 0 };

static void
rst_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_conn *c = container_of(op, struct keel_conn, rst_op);
	/* Once per shard for each kind: a kernel without socket commands, or another error. */
	static _Thread_local bool logged[2];
	/* Only a kernel without socket commands answers EOPNOTSUPP or EINVAL; any other error
	 * is this socket's, and the hint would mislead. */
	bool old_kernel = res == -EOPNOTSUPP || res == -EINVAL;

	(void)flags;
	if (res < 0 && !logged[old_kernel]) {
		logged[old_kernel] = true;
		keel_log(KEEL_LOG_WARN, NET_MOD,
			 "shard %u: an aborted connection's reset (SO_LINGER 0 on its direct "
			 "descriptor) failed with %s: it ends with a FIN instead%s",
			 c->ns->id, strerror(-res),
			 old_kernel ? " (the socket command needs Linux 6.7; --feature "
				      "direct_fd=off resets with setsockopt)"
				    : "");
	} else if (res >= 0) {
		c->ns->st.conn_resets++;
	}
	c->nops--;
	conn_check(c);
}

/* A reset that could not be made (@why): the connection ends with a FIN, which a peer
 * may read as a whole reply after a cut one. Said once per process, as rst_cb does. */
static void
rst_lost(struct keel_conn *c, const char *why)
{
	static _Atomic bool logged;

	if (!atomic_exchange(&logged, true))
		keel_log(KEEL_LOG_WARN, NET_MOD,
			 "shard %u: an aborted connection's reset could not be made (%s): it ends "
			 "with a FIN instead; later ones are not logged",
			 c->ns->id, why);
}

/* Release the descriptor. A direct one goes through the ring (IORING_OP_CLOSE on the
 * fixed slot, Linux 5.15, older than the sparse tables direct_fd needs): no system call
 * of its own, and its completion comes before on_close, so the slot is free again by
 * then. Without an SQE (the ring failed, logged) the slot is released synchronously. A
 * reset (c->rst) sets SO_LINGER {1, 0} first, so that the close sends a RST and drops
 * what the socket still holds. */
static void
fd_release(struct keel_conn *c)
{
	struct io_uring_sqe *sqe, *lsqe = NULL;
	int r;

	c->fd_released = true;
	if (!c->direct) {
		if (c->rst) {
			if (setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &rst_linger,
				       sizeof(rst_linger)) == 0)
				c->ns->st.conn_resets++;
			else
				rst_lost(c, strerror(errno));
		}
		close(c->fd);
		return;
	}
	/* Both in a row or the close alone: the SQ's room for two is made first, so the
	 * close's keel_sqe_get() cannot submit the setsockopt's SQE on its own (a submit
	 * between them sent it unfilled, whatever that slot held on the ring's last lap). */
	if (c->rst && keel_sqe_reserve(2) == 0 && (lsqe = keel_sqe_get())) {
		keel__sqe_sockopt(lsqe, c->fd, false, SOL_SOCKET, SO_LINGER, (void *)&rst_linger,
				  sizeof(rst_linger));
		lsqe->flags |= IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK;
		keel_sqe_bind(lsqe, &c->rst_op);
		c->nops++;
	} else if (c->rst) {
		rst_lost(c, "no SQE for its SO_LINGER: the ring's submit failed, logged");
	}
	sqe = keel_sqe_get();
	if (sqe) {
		io_uring_prep_close_direct(sqe, (unsigned)c->fd);
		keel_sqe_bind(sqe, &c->close_op);
		c->nops++;
		return;
	}
	r = keel__direct_clear((unsigned)c->fd);
	if (r < 0) {
		/* The slot keeps its socket (never closed: no FIN, no RST) and stays counted as
		 * taken, so that accepts are not told it is free. */
		c->ns->st.direct_stuck++;
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: a connection's direct descriptor %d could not be released (no "
			 "SQE, and the file update failed: %s): its socket stays open and its slot "
			 "taken until the shard ends",
			 c->ns->id, c->fd, strerror(-r));
	}
	keel__listeners_slot_freed(c->ns); /* only accepted connections are direct */
}

static void
conn_check(struct keel_conn *c)
{
	if (!c->closing)
		return;
	if (!c->send_inflight)
		drop_queue(c);
	if (c->nops)
		return;
	if (!c->fd_released) {
		fd_release(c);
		if (c->nops)
			return;
	}
	close_list_add(c);
}

static void connect_cb(struct keel_op *op, int res, uint32_t flags);
static void tmo_cb(struct keel_op *op, int res, uint32_t flags);
static void addr_cb(struct keel_op *op, int res, uint32_t flags);

/* Read both addresses from @fd, a plain descriptor of the socket. */
static void
read_names(struct keel_conn *c, int fd)
{
	socklen_t pl = sizeof(c->peer), ll = sizeof(c->local);

	if (!c->peerlen) {
		c->ns->st.name_reads++;
		if (getpeername(fd, (struct sockaddr *)&c->peer, &pl) < 0) {
			c->addr_err = -errno;
			c->locallen = 0; /* both or neither */
			return;
		}
		c->peerlen = pl;
	}
	if (c->locallen) { /* the listener's (keel__conn_accepted) */
		c->addr_err = 0;
		return;
	}
	c->ns->st.name_reads++;
	if (getsockname(fd, (struct sockaddr *)&c->local, &ll) < 0) {
		c->addr_err = -errno;
		c->peerlen = 0;
		return;
	}
	c->locallen = ll;
	c->addr_err = 0;
}

void
keel__conn_accepted(struct keel_conn *c, bool addrs, const struct sockaddr_storage *local,
		    socklen_t locallen)
{
	struct io_uring_sqe *sqe;

	keel__lim_open(c->ns, &c->lim, c, c->cfg);
	if (addrs && local) {
		memcpy(&c->local, local, locallen);
		c->locallen = locallen;
	}
	if (!addrs) {
		c->addr_err = -ENODATA;
	} else if (!c->direct) {
		read_names(c, c->fd);
	} else if ((sqe = keel_sqe_get())) {
		/* A direct descriptor has no getpeername: install a regular copy of it
		 * (IORING_OP_FIXED_FD_INSTALL, Linux 6.8), read both names, close the copy.
		 * on_open waits for it, so the addresses are there from on_open on. */
		io_uring_prep_rw(KEEL_IORING_OP_FIXED_FD_INSTALL, sqe, c->fd, NULL, 0, 0);
		sqe->flags |= IOSQE_FIXED_FILE;
		keel_sqe_bind(sqe, &c->addr_op);
		c->nops++;
		return;
	} else {
		c->addr_err = -EBUSY;
		c->locallen = 0;
	}
	keel__conn_opened(c);
}

static void
addr_cb(struct keel_op *op, int res, uint32_t flags)
{
	static _Thread_local bool kernel_said;
	static _Thread_local uint64_t failures;
	struct keel_conn *c = container_of(op, struct keel_conn, addr_op);

	c->nops--;
	if (res >= 0) {
		read_names(c, res);
		close(res);
	} else {
		c->addr_err = res == -EINVAL ? -EOPNOTSUPP : res;
		c->locallen = 0;
		if ((res == -EINVAL || res == -EOPNOTSUPP) && !kernel_said) {
			kernel_said = true;
			keel_log(KEEL_LOG_WARN, NET_MOD,
				 "shard %u: the addresses of an accepted direct descriptor cannot "
				 "be read (%s): it needs Linux 6.8 (IORING_OP_FIXED_FD_INSTALL); "
				 "upgrade, or use --feature direct_fd=off",
				 c->ns->id, strerror(-res));
		} else if (res != -EINVAL && res != -EOPNOTSUPP && res != -ECANCELED &&
			   ++failures && (failures & (failures - 1)) == 0) { /* 1st, 2nd, 4th... */
			keel_log(
				KEEL_LOG_WARN, NET_MOD,
				"shard %u: the addresses of an accepted direct descriptor cannot "
				"be read (%s; %llu times on this shard): %s",
				c->ns->id, strerror(-res), (unsigned long long)failures,
				res == -EMFILE || res == -ENFILE
					? "reading them takes a plain descriptor for a moment, and "
					  "the process has none left: raise ulimit -n, or create the "
					  "listener with no_addrs"
					: "keel_conn_peer_addr gives this error");
		}
	}
	if (c->closing) {
		conn_check(c);
		return;
	}
	keel__conn_opened(c);
}

struct keel_conn *
keel__conn_new(struct net_shard *ns, int fd, bool direct, int family, bool accepted,
	       const struct keel_conn_ops *ops, void *app, const struct keel_net_config *cfg)
{
	struct keel_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->ns = ns;
	c->zc_ok = keel__zcrx_conn_wants(family, accepted);
	c->unseen = accepted;
	c->ops = ops;
	c->app = app;
	c->fd = fd;
	c->direct = direct;
	c->cfg = cfg ? cfg : &ns->cfg;
	/* Fixed for the connection's life: the shard's feature and its configuration are. A
	 * slice is below 4 GiB, so UINT32_MAX never sends with SEND_ZC. AF_UNIX has no
	 * SOCK_SUPPORT_ZC: the send would fail. */
	c->zc_min = ns->f_zc && family != AF_UNIX ? c->cfg->zc_threshold : UINT32_MAX;
	c->low = c->cfg->low_watermark;
	c->high = c->cfg->high_watermark;
	c->recv_op.fn = recv_cb;
	c->rcancel_op.fn = rcancel_cb;
	c->send_op.fn = send_cb;
	c->cancel_op.fn = cancel_cb;
	c->shut_op.fn = shut_cb;
	c->connect_op.fn = connect_cb;
	c->tmo_op.fn = tmo_cb;
	c->close_op.fn = close_cb;
	c->rst_op.fn = rst_cb;
	c->addr_op.fn = addr_cb;
	c->next = ns->conns;
	if (c->next)
		c->next->prev = c;
	ns->conns = c;
	ns->st.conns_open++;
	keel__net_ref(ns);
	return c;
}

void
keel__conn_opened(struct keel_conn *c)
{
	c->open = true;
	c->unseen = false;
	/* Closed while connecting: the application hears on_close only. */
	if (c->ops->on_open && !c->flush_close) {
		c->nops++; /* on_open may close it */
		c->ops->on_open(c);
		c->nops--;
	}
	if (!c->closing) {
		recv_update(c);
		/* The queue, a half-close or a close asked for while connecting. */
		if (c->qn || c->shut_pending || c->flush_close)
			flush_later(c);
	}
	conn_check(c);
}

void
keel__conns_stop(struct net_shard *ns)
{
	struct keel_conn *c = ns->conns, *next;

	for (; c; c = next) {
		next = c->next;
		keel_conn_abort(c, -ESHUTDOWN);
	}
}

void
keel__conns_flush(struct net_shard *ns)
{
	struct keel_conn *c = ns->conns, *next;

	for (; c; c = next) {
		next = c->next;
		/* Nothing of the application's to deliver yet: no reply can be waiting. */
		if (c->unseen || c->connecting)
			keel_conn_abort(c, -ESHUTDOWN);
		else
			keel_conn_close(c);
	}
}

void
keel__conns_flush_timers(struct net_shard *ns)
{
	for (struct keel_conn *c = ns->conns; c; c = c->next) {
		if (!c->flush_close || c->closing || !c->close_timer)
			continue;
		/* Lingering: only the peer's EOF is awaited, for the linger's own bound.
		 * Else the queue still goes out: close_timeout_ns again from here (the header
		 * timeout's rest is not restarted: the flush's deadline bounds that close). */
		if (c->lingering)
			keel_timer_start(c->close_timer, KEEL_NET_LINGER_NS, 0);
		else if (c->cfg->close_timeout_ns)
			keel_timer_start(c->close_timer, c->cfg->close_timeout_ns, 0);
	}
}

/* A failed connect: -ETIMEDOUT whenever its timeout fired, whatever the connect's own error
 * says. Which error a timed-out connect gets is the kernel's: -ECANCELED when the cancel
 * found it waiting on poll, but -EINTR when it was blocked in an io-wq worker (an AF_UNIX
 * connect to a full backlog), which the cancel can only interrupt. */
static void
connect_failed(struct keel_conn *c, int res)
{
	c->connecting = false;
	keel_conn_abort(c, c->tmo_fired ? -ETIMEDOUT : res);
}

static void
connect_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_conn *c = container_of(op, struct keel_conn, connect_op);

	c->nops--;
	if (!c->closing) {
		if (res == 0) {
			c->connecting = false;
			read_names(c, c->fd);
			keel__conn_opened(c);
			return;
		}
		/* Whether the timeout fired is in its own CQE, and the two CQEs come in either
		 * order (a refused connect's first, its cancelled timeout's after; on 6.18 an
		 * interrupted worker's connect after the timeout's): when the timeout's is
		 * still to come the failure waits for it, still connecting (a close meanwhile
		 * behaves as one during the connect). */
		if (c->tmo_inflight) {
			c->connect_err = res;
			return;
		}
		connect_failed(c, res);
		return;
	}
	c->connecting = false;
	conn_check(c);
}

static void
tmo_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_conn *c = container_of(op, struct keel_conn, tmo_op);

	c->nops--;
	c->tmo_inflight = false;
	/* -ECANCELED: the connect ended first and took the timeout with it. Any other result
	 * means the timer fired: -ETIME when its cancel of the connect worked, -EALREADY or
	 * -ENOENT when the connect was running in a worker or had just ended. */
	c->tmo_fired = res != -ECANCELED;
	if (c->connect_err && !c->closing) {
		connect_failed(c, c->connect_err);
		return;
	}
	if (c->connect_err)
		c->connecting = false;
	conn_check(c);
}

/* A connection the application never got (keel_conn_connect failed): freed without
 * on_close. Nothing may be in flight. */
static void
conn_discard(struct keel_conn *c)
{
	c->closing = true;
	fd_release(c); /* a plain descriptor: synchronous */
	conn_free(c, false);
}

int
keel_conn_connect(const char *addr, uint16_t port, uint64_t timeout_ns,
		  const struct keel_conn_ops *ops, void *app, struct keel_conn **out)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int r;

	/* Literals only: a name would need the resolver, which blocks (keel_net_resolve
	 * before the run, then keel_conn_connect_addr). */
	r = keel_net_addr_parse(addr, port, &ss, &len);
	if (r < 0)
		return r;
	return keel_conn_connect_addr((const struct sockaddr *)&ss, len, timeout_ns, ops, app, out);
}

/* Whether @salen fits an address of @sa's family that a connect can take: no shorter
 * than the family's address (an unnamed sockaddr_un, its path empty, names nothing), and no
 * longer than sockaddr_storage, or sockaddr_un for AF_UNIX (the kernel's limit there). */
static bool
addr_len_ok(const struct sockaddr *sa, socklen_t salen)
{
	if (salen < sizeof(sa_family_t) || salen > sizeof(struct sockaddr_storage))
		return false;
	switch (sa->sa_family) {
	case AF_INET:
		return salen >= sizeof(struct sockaddr_in);
	case AF_INET6:
		return salen >= sizeof(struct sockaddr_in6);
	case AF_UNIX:
		return salen > offsetof(struct sockaddr_un, sun_path) &&
		       salen <= sizeof(struct sockaddr_un);
	default:
		return false;
	}
}

int
keel_conn_connect_addr(const struct sockaddr *sa, socklen_t salen, uint64_t timeout_ns,
		       const struct keel_conn_ops *ops, void *app, struct keel_conn **out)
{
	struct net_shard *ns;
	struct keel_conn *c;
	struct io_uring_sqe *sqe;
	struct sockaddr_storage ss;
	socklen_t len = salen;
	int fd, r;

	if (!sa || !ops || !ops->on_data || !ops->on_close || !out || !addr_len_ok(sa, salen))
		return -EINVAL;
	memset(&ss, 0, sizeof(ss));
	memcpy(&ss, sa, salen);
	r = keel__net_shard_get(&ns);
	if (r < 0)
		return r;
	/* Client sockets stay plain descriptors: liburing 2.3 cannot install one into the
	 * table synchronously, and a connect is not the hot path. */
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, NET_MOD, "connect: socket: %s%s", strerror(-r),
			 keel__sock_hint(r, false));
		return r;
	}
	if (ns->cfg.nodelay && ss.ss_family != AF_UNIX) {
		int one = 1;
		if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
			keel_log(KEEL_LOG_WARN, NET_MOD, "TCP_NODELAY: %s", strerror(errno));
	}
	c = keel__conn_new(ns, fd, false, ss.ss_family, false, ops, app, NULL);
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	c->peer = ss;
	c->peerlen = len;
	/* The connect and its link timeout are one chain: both SQEs are reserved before
	 * either is prepared, so a full SQ never submits the connect as an unterminated
	 * chain (no timeout) and a missing second SQE never links it to whatever comes
	 * next. */
	r = keel_sqe_reserve(timeout_ns ? 2 : 1);
	if (r < 0) {
		conn_discard(c);
		return r;
	}
	sqe = keel_sqe_get();
	net_verify(sqe);
	io_uring_prep_connect(sqe, fd, (struct sockaddr *)&c->peer, c->peerlen);
	keel_sqe_bind(sqe, &c->connect_op);
	c->connecting = true;
	c->nops++;
	if (timeout_ns) {
		sqe->flags |= IOSQE_IO_LINK;
		c->ts.tv_sec = (long long)(timeout_ns / KEEL_S(1));
		c->ts.tv_nsec = (long long)(timeout_ns % KEEL_S(1));
		sqe = keel_sqe_get();
		net_verify(sqe); /* reserved above */
		io_uring_prep_link_timeout(sqe, &c->ts, 0);
		keel_sqe_bind(sqe, &c->tmo_op);
		c->tmo_inflight = true;
		c->nops++;
	}
	*out = c;
	return 0;
}

void
keel_conn_pause_read(struct keel_conn *c)
{
	net_on_own_shard(c->ns);
	c->read_paused = true;
	recv_update(c);
}

void
keel_conn_resume_read(struct keel_conn *c)
{
	net_on_own_shard(c->ns);
	c->read_paused = false;
	rq_later(c);
	recv_update(c);
}

uint64_t
keel_conn_queued(const struct keel_conn *c)
{
	return c->queued;
}

/* Deferred by keel_conn_set_watermarks: the queue is under the new low watermark. */
static void
wm_cb(void *arg)
{
	struct keel_conn *c = arg;

	c->wm_queued = false;
	if (!c->closing)
		bp_resume(c);
	c->nops--;
	conn_check(c);
}

int
keel_conn_set_watermarks(struct keel_conn *c, uint32_t low, uint32_t high)
{
	net_on_own_shard(c->ns);
	if (low > high)
		return -EINVAL;
	c->low = low;
	c->high = high;
	if (c->closing)
		return 0;
	if (c->queued > high) {
		bp_pause(c);
	} else if (c->bp_paused && c->queued <= low && !c->wm_queued) {
		/* Resumed from the loop: on_writable never runs inside this call. */
		if (keel_defer(wm_cb, c) < 0)
			return -ENOMEM;
		c->wm_queued = true;
		c->nops++;
	}
	return 0;
}

void *
keel_conn_user(const struct keel_conn *c)
{
	return c->user;
}

void
keel_conn_set_user(struct keel_conn *c, void *user)
{
	c->user = user;
}

void *
keel_conn_app(const struct keel_conn *c)
{
	return c->app;
}

static int
addr_copy(const struct keel_conn *c, const struct sockaddr_storage *a, socklen_t alen,
	  struct sockaddr_storage *out, socklen_t *len)
{
	if (!out)
		return -EINVAL;
	if (c->connecting) /* the peer's is the connect's target until it ends */
		return -ENOTCONN;
	if (!alen)
		return c->addr_err ? c->addr_err : -ENOTCONN;
	memset(out, 0, sizeof(*out));
	memcpy(out, a, alen);
	if (len)
		*len = alen;
	return 0;
}

int
keel_conn_peer_addr(const struct keel_conn *c, struct sockaddr_storage *out, socklen_t *len)
{
	return addr_copy(c, &c->peer, c->peerlen, out, len);
}

int
keel_conn_local_addr(const struct keel_conn *c, struct sockaddr_storage *out, socklen_t *len)
{
	return addr_copy(c, &c->local, c->locallen, out, len);
}

int
keel__conn_fd(const struct keel_conn *c, bool *direct)
{
	*direct = c->direct;
	return c->fd;
}

bool
keel__conn_closing(const struct keel_conn *c)
{
	return c->closing || c->flush_close || c->fd_released;
}

int
keel__conn_deliver_stop(const struct keel_conn *c)
{
	if (keel__conn_closing(c))
		return KEEL__CONN_CLOSING;
	return read_blocked(c) ? KEEL__CONN_PAUSED : 0;
}

void
keel__conn_unread(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	uint32_t held = c->rqn - c->rqhead;

	if (!n)
		return;
	if (dropping_reads(c)) {
		for (unsigned i = 0; i < n; i++)
			keel_slice_put(&s[i]);
		return;
	}
	if (c->rqhead < n) {
		if (rq_room(c, held + n) < 0) {
			for (unsigned i = 0; i < n; i++)
				keel_slice_put(&s[i]);
			keel_conn_abort(c, -ENOMEM);
			return;
		}
		memmove(c->rq + n, c->rq + c->rqhead, held * sizeof(*c->rq));
		c->rqhead = n;
		c->rqn = n + held;
	}
	for (unsigned i = 0; i < n; i++)
		keel__net_unring(c->ns, &s[i]); /* a framer's held frames, as rq_hold's */
	c->rqhead -= n;
	memcpy(c->rq + c->rqhead, s, n * sizeof(*s));
	c->ns->st.reads_held += n;
	recv_update(c); /* the receive stays cancelled while anything is held */
	rq_later(c);    /* in case reading was resumed meanwhile */
}

struct net_shard *
keel__conn_shard(const struct keel_conn *c)
{
	return c->ns;
}

void
keel__conn_hold(struct keel_conn *c)
{
	c->nops++;
}

void
keel__conn_unhold(struct keel_conn *c)
{
	c->nops--;
	conn_check(c);
}

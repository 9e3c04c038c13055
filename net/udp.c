// SPDX-License-Identifier: MIT
/*
 * UDP endpoints: multishot recvmsg with provided buffers (a buffer ring of its own, without
 * bundles or incremental consumption, since each buffer holds one datagram after its
 * io_uring_recvmsg_out header, source address and control data), and sendmsgs queued in a
 * pass submitted together: the datagrams of one pass to one destination and of one size in
 * one sendmsg with UDP_SEGMENT (gso_join; one by one where the kernel refused a batch),
 * SENDMSG_ZC for large ones.
 *
 * A receive that finds the ring empty (ENOBUFS: the application holds every buffer) is not
 * re-armed into it, which would end the same way at once, pass after pass: the endpoint
 * waits until a buffer comes back (keel__udp_starved_kick), its datagrams in the socket.
 *
 * Each socket has SO_RXQ_OVFL set: a datagram carries the socket's running count of
 * datagrams the kernel dropped (receive queue full) as control data, and the difference
 * from the last one seen is added to the shard's udp_drops. Send state comes from a
 * per-shard pool of slots, carved from chunks: nothing is allocated per datagram once the
 * pool covers the most datagrams in flight at once.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net_internal.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h, Linux 4.18 */
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

/* The buffer layout of a multishot recvmsg: header, source address (room for IPv6, a
 * multiple of 8 so the control data is aligned), control data (the drop counter). */
#define UDP_NAMELEN  32
#define UDP_CTRL_LEN CMSG_SPACE(sizeof(uint32_t))
_Static_assert(sizeof(struct io_uring_recvmsg_out) + UDP_NAMELEN + UDP_CTRL_LEN ==
		       KEEL_UDP_BUF_OVERHEAD,
	       "KEEL_UDP_BUF_OVERHEAD (keel/net.h) is the buffer layout's overhead");
_Static_assert(UDP_NAMELEN >= sizeof(struct sockaddr_in6), "an IPv6 source fits");

/* A sendmsg of several datagrams the kernel refused: its error, datagrams and their size. */
struct gso_refusal {
	int err;
	unsigned n;
	uint32_t seg;
	bool ceiling; /* keel__udp_gso_refused's verdict: that size and larger, not all */
};

/* The largest UDP payload in an IP packet: 65,535 less the IPv4 (20) and UDP (8) headers;
 * IPv6's 40-byte header is outside its 65,535-byte payload length. */
#define UDP_MAX_PAYLOAD4 65507u
#define UDP_MAX_PAYLOAD6 65527u

struct keel_udp {
	struct net_shard *ns;
	const struct keel_udp_ops *ops;
	void *app;
	int fd;
	sa_family_t family; /* the socket's: AF_INET or AF_INET6 */
	bool v4ok;          /* ... sends to IPv4 (and v4-mapped) addresses: an IPv4 socket, or
			     * an IPv6 one that is not IPv6-only (IPV6_V6ONLY,
			     * net.ipv6.bindv6only) bound to :: or a v4-mapped address */
	bool v6ok;          /* ... to IPv6 ones: an IPv6 socket not bound to a v4-mapped
			     * address (the kernel refuses those, EAFNOSUPPORT) */
	uint16_t port;
	struct udp_port *held; /* its address and port in udp_ports */
	struct keel_op recv_op;
	struct keel__later close_later; /* keel_udp_close's step from the loop */
	struct keel__later cancel_step; /* ... its cancel, retried without an SQE */
	/* The receive template: name and control lengths (multishot lays the buffer out
	 * with them); single-shot receives the name and control data here. */
	struct msghdr rmsg;
	struct sockaddr_storage rname;
	uint64_t rctrl[UDP_CTRL_LEN / sizeof(uint64_t)];
	uint32_t drops_seen; /* the kernel's drop count in the last datagram (SO_RXQ_OVFL) */
	bool nomem_logged;   /* a datagram dropped for want of memory was logged */
	unsigned ops_n;
	bool armed, closing;
	bool gso_off; /* a sendmsg of several datagrams failed where one went: one
		       * by one from then on */
	/* gso_fallback's refused batch: udp_send_one makes its next send that batch's probe */
	const struct gso_refusal *probe_next;
	/* Datagrams of at least this many bytes go alone: a batch of them was refused with
	 * EMSGSIZE, larger than the path's MTU (UINT32_MAX: no such ceiling). */
	uint32_t gso_seg_ceiling;
	/* While refused batches' probes are out (gso_probes of them), datagrams of at least
	 * this many bytes go alone (0: all; UINT32_MAX: none held): one batched before the
	 * probe answers went to the kernel, was refused again and counted twice. */
	uint32_t gso_probe_seg;
	unsigned gso_probes;
	bool send_err_logged;      /* a failed send was logged (udp_send_errors counts all) */
	bool recv_err_logged;      /* a failed receive was logged (udp_recv_errors counts all) */
	struct keel_timer *retry;  /* arms the receive again after a failure (made on first use) */
	bool retry_pending;        /* ... started, holding ops_n */
	struct udp_send *gso_tail; /* the last sendmsg, which the next datagram may join */
	bool starving; /* waiting for a buffer to come back (counted in ns->udp_starving) */
	int status;
	struct keel_udp *next;
	/* The source on_datagram borrows, zero past its address (src_set) */
	struct sockaddr_storage src;
	socklen_t src_len; /* ... the bytes of it the last datagram's address set */
};

/* One datagram on its way out: a slot of the shard's pool. */
struct udp_send {
	struct keel_op op;
	struct keel_udp *u;
	struct net_shard *ns;
	struct keel_slice s;
	struct sockaddr_storage dst;
	struct iovec iov;
	struct msghdr msg;
	bool zc;
	/* The first datagram of a refused batch, sent alone (gso_fallback), and that batch's
	 * refusal: its own, as another batch may be refused before this probe completes. */
	bool probe;
	struct gso_refusal refusal;
	unsigned sqe_pos;    /* its SQE's place in the SQ (liburing's sqe_tail count) */
	struct udp_gso *gso; /* the datagrams after the first that joined it, or NULL */
	uint64_t ctrl[CMSG_SPACE(sizeof(uint16_t)) / sizeof(uint64_t)]; /* UDP_SEGMENT */
	struct udp_send *next_free;
};

/* A sendmsg that carries several datagrams (UDP_SEGMENT): their buffers, in order; the
 * first is the send slot's own. From a per-shard pool, like the slots. */
struct udp_gso {
	struct udp_gso *next_free;
	unsigned n;  /* datagrams */
	bool closed; /* the last one was shorter than the others: no more may join */
	struct iovec iov[KEEL_UDP_GSO_MAX];
	struct keel_slice s[KEEL_UDP_GSO_MAX];
};

#define UDP_SEND_CHUNK 64

struct udp_send_chunk {
	struct udp_send_chunk *next;
	struct udp_send slot[UDP_SEND_CHUNK];
};

static void udp_check(struct keel_udp *u);
static void udp_close_status(struct keel_udp *u, int status);

static void
noop_cb(struct keel_op *op, int res, uint32_t flags)
{
}

/* Target of cancel completions nobody waits for; shared and never written. */
static struct keel_op noop_op = { noop_cb };

/* Arm the endpoint's receive. False when no SQE could be had (a ring error, logged by the
 * core): see udp_rearm. */
static bool
udp_arm(struct keel_udp *u)
{
	struct net_shard *ns = u->ns;
	struct io_uring_sqe *sqe = keel_sqe_get();

	if (!sqe)
		return false;
	/* Single-shot recvmsg writes the lengths back: reset them. */
	u->rmsg.msg_name = &u->rname;
	u->rmsg.msg_namelen = UDP_NAMELEN;
	u->rmsg.msg_control = u->rctrl;
	u->rmsg.msg_controllen = UDP_CTRL_LEN;
	u->rmsg.msg_flags = 0;
	if (ns->f_ms_recv)
		io_uring_prep_recvmsg_multishot(sqe, u->fd, &u->rmsg, 0);
	else
		io_uring_prep_recvmsg(sqe, u->fd, &u->rmsg, 0);
	ns->st.recv_arms++; /* counted from the SQE: what was submitted */
	ns->st.recv_arms_multishot += (sqe->ioprio & IORING_RECV_MULTISHOT) != 0;
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = ns->udp.bgid;
	keel_sqe_bind(sqe, &u->recv_op);
	u->armed = true;
	u->ops_n++;
	return true;
}

static void
udp_starve(struct keel_udp *u, bool on)
{
	if (u->starving == on)
		return;
	u->starving = on;
	if (on)
		u->ns->udp_starving++;
	else
		u->ns->udp_starving--;
}

/* Arm the receive, or wait: for a buffer (the next to come back kicks the starving), and
 * when the ring gave no SQE also for the next pass, which tries again (every buffer may
 * already be in the ring, and then none would come back to wake the endpoint). */
static void
udp_rearm(struct keel_udp *u)
{
	if (udp_arm(u))
		return;
	udp_starve(u, true);
	keel__udp_starved_kick(u->ns);
}

/* Re-arm waiting endpoints, at most as many as the ring holds buffers: a receive armed on
 * a socket with datagrams queued and no buffer in the ring fails at once (ENOBUFS), so
 * waking every one of many endpoints for each buffer that came back cost a failed receive
 * each (thousands for a few hundred datagrams; a completion queue overflow with 500). They
 * are taken in turn from where the last pass stopped; those left wait for the next pass,
 * or, with no buffer in the ring, for the next to come back. */
static void
udp_starve_cb(struct keel__later *l)
{
	struct net_shard *ns = container_of(l, struct net_shard, udp_kick);
	uint32_t budget = ns->udp.inring;
	struct keel_udp *u = ns->udp_wake_next ? ns->udp_wake_next : ns->udps;
	struct keel_udp *first = u;

	while (u && ns->udp_starving && budget) {
		struct keel_udp *next = u->next ? u->next : ns->udps;

		if (u->starving) {
			udp_starve(u, false);
			if (!u->closing && !ns->stopping) {
				budget--;
				udp_rearm(u); /* submits at most: no callback runs here */
			}
		}
		u = next == first ? NULL : next;
		ns->udp_wake_next = next;
	}
	if (ns->udp_starving && ns->udp.inring)
		keel__udp_starved_kick(ns); /* the rest in the next pass */
	keel__net_unref(ns);
}

void
keel__udp_starved_kick(struct net_shard *ns)
{
	if (ns->udp_starving)
		keel__net_kick(ns, &ns->udp_kick, udp_starve_cb);
}

/* The kernel's running drop count of the socket, if the control data carries it. Read
 * with memcpy: the control data need not be aligned in the buffer. */
static void
udp_count_drops(struct keel_udp *u, const uint8_t *ctrl, size_t len)
{
	while (len >= sizeof(struct cmsghdr)) {
		struct cmsghdr c;
		uint32_t v;

		memcpy(&c, ctrl, sizeof(c));
		if (c.cmsg_len < sizeof(c) || c.cmsg_len > len)
			return;
		if (c.cmsg_level == SOL_SOCKET && c.cmsg_type == SO_RXQ_OVFL &&
		    c.cmsg_len >= CMSG_LEN(sizeof(v))) {
			memcpy(&v, ctrl + CMSG_LEN(0), sizeof(v));
			/* Unsigned difference: the kernel's counter wraps at 2^32. */
			u->ns->st.udp_drops += (uint32_t)(v - u->drops_seen);
			u->drops_seen = v;
		}
		if (CMSG_ALIGN(c.cmsg_len) >= len)
			return;
		ctrl += CMSG_ALIGN(c.cmsg_len);
		len -= CMSG_ALIGN(c.cmsg_len);
	}
}

/* A datagram received but dropped: no memory for its slice (@err). Counted; logged at
 * most once per endpoint. */
static void
udp_nomem(struct keel_udp *u, int err)
{
	u->ns->st.udp_nomem++;
	if (u->nomem_logged)
		return;
	u->nomem_logged = true;
	keel_log(KEEL_LOG_WARN, NET_MOD,
		 "udp port %u: a datagram dropped: no memory for its slice (%s); raise --memory "
		 "(udp_nomem in keel_net_stats counts them)",
		 u->port, strerror(-err));
}

/* Set u->src to @len bytes of @name, the rest of it zero as a zeroed sockaddr_storage is:
 * only what the last address set past @len is cleared, rather than all 128 bytes for every
 * datagram (about 15 instructions, callgrind). IPv4's size is a constant, copied inline. */
static const struct sockaddr_storage *
src_set(struct keel_udp *u, const void *name, size_t len)
{
	if (len == sizeof(struct sockaddr_in)) {
		memcpy(&u->src, name, sizeof(struct sockaddr_in));
	} else {
		if (len > sizeof(u->src))
			len = sizeof(u->src);
		memcpy(&u->src, name, len);
	}
	if (len < u->src_len)
		memset((uint8_t *)&u->src + len, 0, u->src_len - len);
	u->src_len = (socklen_t)len;
	return &u->src;
}

static void
udp_deliver(struct keel_udp *u, unsigned bid, int res, uint32_t flags)
{
	struct net_shard *ns = u->ns;
	struct keel_slice whole, payload;
	struct io_uring_recvmsg_out o;
	const struct sockaddr_storage *src;
	size_t off;
	int n;

	if (ns->f_ms_recv) {
		n = keel__pbuf_take(&ns->udp, bid, res, flags, false, &whole, 1);
		if (n != 1) {
			udp_nomem(u, n < 0 ? n : -ENOMEM);
			return;
		}
		if (whole.len < KEEL_UDP_BUF_OVERHEAD) {
			/* Never on a working kernel: the header is always there. */
			ns->st.udp_truncated++;
			keel_slice_put(&whole);
			return;
		}
		/* Copied out: a buffer holds any datagram size, so it need not be aligned. */
		memcpy(&o, whole.data, sizeof(o));
		off = sizeof(o);
		src = src_set(u, whole.data + off,
			      o.namelen < UDP_NAMELEN ? o.namelen : UDP_NAMELEN);
		off += UDP_NAMELEN;
		udp_count_drops(u, whole.data + off,
				o.controllen < UDP_CTRL_LEN ? o.controllen : UDP_CTRL_LEN);
		off += UDP_CTRL_LEN;
		/* A zero-length datagram is a valid one: an empty slice. */
		if ((o.flags & MSG_TRUNC) || o.payloadlen > ns->cfg.udp_buf_size ||
		    off > whole.len || o.payloadlen > whole.len - off) {
			ns->st.udp_truncated++;
			keel_slice_put(&whole);
			return;
		}
		/* Narrowed in place: whole's reference becomes the datagram's (a sub-slice and
		 * a put cost two count changes for nothing). */
		payload = whole;
		payload.data += off;
		payload.len = o.payloadlen;
	} else {
		/* Single-shot recvmsg: the name and control data land in rmsg's own buffers.
		 * Linux 6.18 reports no buffer for a zero-length datagram (udp_deliver_empty);
		 * should a kernel report one with res 0, own it as a one-byte slice narrowed to
		 * an empty one, so it still goes back to the ring when that is put. */
		n = keel__pbuf_take(&ns->udp, bid, res ? res : 1, flags, false, &whole, 1);
		if (n != 1) {
			udp_nomem(u, n < 0 ? n : -ENOMEM);
			return;
		}
		src = src_set(u, &u->rname, u->rmsg.msg_namelen);
		udp_count_drops(u, (const uint8_t *)u->rctrl,
				u->rmsg.msg_controllen < UDP_CTRL_LEN ? u->rmsg.msg_controllen
								      : UDP_CTRL_LEN);
		if ((u->rmsg.msg_flags & MSG_TRUNC) || (uint32_t)res > ns->cfg.udp_buf_size ||
		    keel_slice_sub(&whole, 0, (size_t)res, &payload) < 0) {
			ns->st.udp_truncated++;
			keel_slice_put(&whole);
			return;
		}
		keel_slice_put(&whole);
	}
	ns->st.recv_cqes++;
	ns->st.recv_bufs++;
	if (u->closing) {
		keel_slice_put(&payload);
		return;
	}
	u->ops->on_datagram(u, &payload, src);
}

/* Single-shot recvmsg of a zero-length datagram: the kernel completes it with res 0 and
 * puts the provided buffer back itself (no IORING_CQE_F_BUFFER), so the empty slice comes
 * from the shard's allocator. Multishot always uses a buffer (the header). */
static void
udp_deliver_empty(struct keel_udp *u)
{
	struct net_shard *ns = u->ns;
	struct keel_slice one, payload;
	const struct sockaddr_storage *src = src_set(u, &u->rname, u->rmsg.msg_namelen);
	int r;

	udp_count_drops(u, (const uint8_t *)u->rctrl,
			u->rmsg.msg_controllen < UDP_CTRL_LEN ? u->rmsg.msg_controllen
							      : UDP_CTRL_LEN);
	r = keel_buf_alloc(keel_shard_alloc(), 1, &one);
	if (r < 0) {
		udp_nomem(u, r);
		return;
	}
	r = keel_slice_sub(&one, 0, 0, &payload);
	keel_slice_put(&one);
	if (r < 0)
		return;
	ns->st.recv_cqes++;
	if (u->closing) {
		keel_slice_put(&payload);
		return;
	}
	u->ops->on_datagram(u, &payload, src);
}

static void
udp_retry_cb(struct keel_timer *t, void *arg)
{
	struct keel_udp *u = arg;

	(void)t;
	u->retry_pending = false;
	u->ops_n--;
	if (!u->closing && !u->ns->stopping)
		udp_rearm(u);
	udp_check(u);
}

/* The receive ended with an error keel does not expect (ENOMEM from the kernel, say):
 * counted, the endpoint's first logged, and the receive armed again in 10 ms (not at once:
 * an error that persists would make every loop pass fail it again). Without a timer the
 * endpoint closes with the error, so its app hears of it (on_close). */
static void
udp_recv_failed(struct keel_udp *u, int res)
{
	u->ns->st.udp_recv_errors++;
	if (!u->recv_err_logged) {
		u->recv_err_logged = true;
		keel_log(
			KEEL_LOG_WARN, NET_MOD,
			"udp port %u: recvmsg failed (%s): receiving again in 10 ms; this "
			"endpoint's later failures are counted in udp_recv_errors (keel_net_stats)",
			u->port, strerror(-res));
	}
	if (!u->retry && keel_timer_create(udp_retry_cb, u, &u->retry) < 0) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "udp port %u: no timer to receive again after a failed recvmsg (%s): the "
			 "endpoint closes",
			 u->port, strerror(-res));
		udp_close_status(u, res);
		return;
	}
	if (!u->retry_pending) {
		keel_timer_start(u->retry, KEEL_MS(10), 0);
		u->retry_pending = true;
		u->ops_n++;
	}
}

static void
udp_recv_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_udp *u = container_of(op, struct keel_udp, recv_op);
	bool more = flags & IORING_CQE_F_MORE;

	if (!more)
		u->armed = false;
	else
		u->ns->st.recv_more++;
	if (res >= 0 && (flags & IORING_CQE_F_BUFFER))
		udp_deliver(u, flags >> IORING_CQE_BUFFER_SHIFT, res, flags);
	else if (res == 0 && !u->ns->f_ms_recv)
		udp_deliver_empty(u);
	else if (res == -ENOBUFS)
		u->ns->st.enobufs++;
	/* An error that names a buffer (a receive run from io-wq): retired empty. */
	if (__builtin_expect(res < 0, 0) && (flags & IORING_CQE_F_BUFFER))
		keel__pbuf_retire_empty(&u->ns->udp, flags >> IORING_CQE_BUFFER_SHIFT);
	if (!more) {
		u->ops_n--;
		/* ENOBUFS: the datagrams wait in the socket (the kernel drops only when its
		 * receive queue is full). The endpoint waits for a buffer: at the end of the
		 * pass if the ring seems to hold some, else when one comes back, with the
		 * others waiting, in turn (udp_starve_cb). Re-armed at once, as it was, each
		 * of many endpoints failed again while later completions of the same pass
		 * took the buffers the count still showed. */
		if (!u->closing && !u->ns->stopping &&
		    (res >= 0 || res == -ENOBUFS || res == -EAGAIN)) {
			if (res == -ENOBUFS) {
				udp_starve(u, true);
				if (u->ns->udp.inring)
					keel__udp_starved_kick(u->ns);
			} else {
				/* An empty datagram ends a multishot receive, as does any
				 * completion of a single-shot one. */
				u->ns->st.rearms++;
				udp_rearm(u);
			}
		} else if (!u->closing && !u->ns->stopping && res < 0) {
			/* -ECANCELED too: keel cancels only at close and stop, so another
			 * (io-wq could not run it) is a failure like any other, not an end. */
			u->ops_n++; /* a close inside must not free u under us: udp_check does */
			udp_recv_failed(u, res);
			u->ops_n--;
		}
		udp_check(u);
	}
}

static void udp_port_release(struct udp_port *p, unsigned shard);

static void
udp_free(struct keel_udp *u)
{
	struct net_shard *ns = u->ns;
	struct keel_udp **pp;

	close(u->fd);
	/* after the close: its socket no longer holds the port */
	udp_port_release(u->held, u->ns->id);
	if (u->retry)
		keel_timer_destroy(u->retry);
	if (u->ops->on_close)
		u->ops->on_close(u, u->status);
	if (ns->udp_wake_next == u)
		ns->udp_wake_next = u->next;
	for (pp = &ns->udps; *pp; pp = &(*pp)->next)
		if (*pp == u) {
			*pp = u->next;
			break;
		}
	free(u);
	keel__net_unref(ns);
}

static void
udp_check(struct keel_udp *u)
{
	if (u->closing && !u->ops_n)
		udp_free(u);
}

/* The addresses and ports this process's UDP endpoints hold. Every shard binds its own
 * socket to the port with SO_REUSEPORT, which lets any other socket of the same user that
 * sets it too join them without an error, on that address or one that overlaps it (a
 * wildcard, the other family's dual-stack or v4-mapped form), and the kernel then sends the
 * datagrams to either: a second instance of a server, started while the first still runs,
 * took part or all of the first one's traffic, and neither said so. So the first endpoint
 * on an address and port first binds a socket without SO_REUSEPORT, which the kernel
 * refuses wherever any other socket holds it or an overlapping address (as the TCP
 * listener does, listen.c port_free); the endpoints after it, on the other shards of the
 * same runtime, join without that probe. A second endpoint of a shard there, or one of
 * another runtime of the process, is refused as well: it too would take datagrams. Port 0
 * is first resolved by a bind without SO_REUSEPORT (with it, the kernel may pick a port a
 * socket of the same user holds with SO_REUSEPORT, and share it). The lock spans the probe
 * and the bind, so that shards opening the port at once do not take each other's socket
 * for another program's. */
struct udp_port {
	struct udp_port *next;
	struct sockaddr_storage addr;  /* as asked (keel_net_addr_parse), port 0 resolved */
	const struct keel_runtime *rt; /* the runtime whose shards hold it */
	uint64_t shards[(KEEL_MAX_SHARDS + 63) / 64]; /* ... which of them */
	unsigned refs;                                /* endpoints bound to it */
};
static pthread_mutex_t udp_ports_mu = PTHREAD_MUTEX_INITIALIZER;
static struct udp_port *udp_ports;

static bool
same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;

		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;

	return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
	       !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr));
}

static uint16_t
ss_port(const struct sockaddr_storage *ss)
{
	return ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
					       : ((const struct sockaddr_in *)ss)->sin_port);
}

/* Shard @shard's endpoint on @p is gone (its socket closed); the entry goes with the
 * last. */
static void
udp_port_release(struct udp_port *p, unsigned shard)
{
	struct udp_port **pp;

	if (!p)
		return;
	pthread_mutex_lock(&udp_ports_mu);
	p->shards[shard / 64] &= ~(1ull << (shard % 64));
	if (--p->refs == 0) {
		for (pp = &udp_ports; *pp != p; pp = &(*pp)->next)
			;
		*pp = p->next;
		free(p);
	}
	pthread_mutex_unlock(&udp_ports_mu);
}

/* Whether any socket holds @ss (or an address overlapping it): a bind without
 * SO_REUSEPORT fails where one does. With port 0, the port the kernel picks (a free one)
 * goes into @ss. 0 or -errno (logged). */
static int
udp_port_probe(struct sockaddr_storage *ss, socklen_t len, const char *addr)
{
	struct sockaddr_storage b;
	socklen_t bl = sizeof(b);
	uint16_t port = ss_port(ss);
	int r = 0, fd = socket(ss->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, NET_MOD, "udp port %u: socket: %s%s", port, strerror(-r),
			 keel__sock_hint(r, false));
		return r;
	}
	if (bind(fd, (const struct sockaddr *)ss, len) < 0) {
		r = -errno;
		keel_log(
			KEEL_LOG_ERROR, NET_MOD, "udp bind %s port %u: %s%s",
			addr ? addr : "0.0.0.0", port, strerror(-r),
			r == -EADDRINUSE && !port
				? " (no port of net.ipv4.ip_local_port_range is free)"
			: r == -EADDRINUSE
				? " (another program has a socket on that port, at that address "
				  "or one that overlaps it; keel's SO_REUSEPORT would let it share "
				  "the datagrams unseen: stop it, or pick another port)"
				: keel__sock_hint(r, true));
	} else if (!port) {
		if (getsockname(fd, (struct sockaddr *)&b, &bl) < 0) {
			r = -errno;
			keel_log(KEEL_LOG_ERROR, NET_MOD, "udp port 0: getsockname: %s",
				 strerror(-r));
		} else if (ss->ss_family == AF_INET6) {
			((struct sockaddr_in6 *)ss)->sin6_port =
				((struct sockaddr_in6 *)&b)->sin6_port;
		} else {
			((struct sockaddr_in *)ss)->sin_port = ((struct sockaddr_in *)&b)->sin_port;
		}
	}
	close(fd);
	return r;
}

/* The entry of udp_ports for this shard's new endpoint on @ss (port 0 resolved into it
 * first), made and probed when none is; refused (-EADDRINUSE, logged) when the shard has
 * an endpoint there already or another runtime holds it. Called and returns with
 * udp_ports_mu held. */
static int
udp_port_take(struct sockaddr_storage *ss, socklen_t len, const char *addr, unsigned shard,
	      const struct keel_runtime *rt, struct udp_port **out)
{
	uint16_t port = ss_port(ss);
	struct udp_port *p;
	int r;

	/* Port 0: the probe picks a port no socket holds, so no entry is there either. */
	for (p = port ? udp_ports : NULL; p && !same_addr(&p->addr, ss); p = p->next)
		;
	if (p && p->rt != rt) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "udp bind %s port %u: another keel runtime of this process has UDP "
			 "endpoints there: the kernel would split the datagrams between them; "
			 "open it in one runtime",
			 addr ? addr : "0.0.0.0", port);
		return -EADDRINUSE;
	}
	if (p && (p->shards[shard / 64] >> (shard % 64) & 1)) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "udp bind %s port %u: shard %u has an endpoint there already: a second "
			 "would take part of its datagrams (the kernel's hash); use that one",
			 addr ? addr : "0.0.0.0", port, shard);
		return -EADDRINUSE;
	}
	if (!p) {
		/* The first of the process there: no other socket may hold it. */
		r = udp_port_probe(ss, len, addr);
		if (r < 0)
			return r;
		p = calloc(1, sizeof(*p));
		if (!p)
			return -ENOMEM;
		p->addr = *ss;
		p->rt = rt;
		p->next = udp_ports;
		udp_ports = p;
	}
	p->shards[shard / 64] |= 1ull << (shard % 64);
	p->refs++; /* taken back by udp_port_release on a failure after */
	*out = p;
	return 0;
}

/* The endpoint's socket, bound to @ss (@addr for the log) with SO_REUSEPORT, in *@fd; the
 * entry of udp_ports it holds in *@held. 0 or -errno. */
static int
udp_socket(const struct sockaddr_storage *want, socklen_t len, const char *addr, unsigned shard,
	   struct udp_port **held, int *out)
{
	struct sockaddr_storage ss = *want;
	struct udp_port *p = NULL;
	int fd, r, one = 1;
	uint16_t port;

	*held = NULL;
	pthread_mutex_lock(&udp_ports_mu);
	r = udp_port_take(&ss, len, addr, shard, keel_shard_runtime(keel_this_shard()), &p);
	if (r < 0) {
		pthread_mutex_unlock(&udp_ports_mu);
		return r;
	}
	port = ss_port(&ss);
	fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, NET_MOD, "udp port %u: socket: %s%s", port, strerror(-r),
			 keel__sock_hint(r, false));
		goto fail;
	}
	/* Each shard binds its own socket to the port: without SO_REUSEPORT the second bind
	 * would fail with EADDRINUSE, naming the wrong cause. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, NET_MOD, "udp port %u: SO_REUSEPORT: %s", port,
			 strerror(-r));
		close(fd);
		goto fail;
	}
	/* The kernel's drop counter with each datagram (udp_drops in the stats). */
	if (setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof(one)) < 0)
		keel_log(KEEL_LOG_WARN, NET_MOD,
			 "udp port %u: SO_RXQ_OVFL: %s; datagrams the kernel drops are not counted",
			 port, strerror(errno));
	if (bind(fd, (const struct sockaddr *)&ss, len) < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, NET_MOD, "udp bind %s port %u: %s%s",
			 addr ? addr : "0.0.0.0", port, strerror(-r), keel__sock_hint(r, true));
		close(fd);
		goto fail;
	}
	pthread_mutex_unlock(&udp_ports_mu);
	*held = p;
	*out = fd;
	return 0;
fail:
	pthread_mutex_unlock(&udp_ports_mu);
	udp_port_release(p, shard);
	return r;
}

/* The shard's UDP buffer ring, shared by its endpoints: made with the first. */
static int
udp_ring(struct net_shard *ns)
{
	/* Each buffer holds the largest datagram with its header, address and control data;
	 * rounded up to 8 bytes so every buffer starts aligned. */
	uint32_t bufsize = (ns->cfg.udp_buf_size + KEEL_UDP_BUF_OVERHEAD + 7) & ~7u;
	int r;

	if (ns->udp_ready)
		return 0;
	r = keel__pbuf_init(ns, &ns->udp, 1, ns->cfg.udp_buf_count, bufsize, false);
	if (r < 0)
		return r;
	ns->udp_ready = true;
	return 0;
}

int
keel_udp_open(const char *addr, uint16_t port, const struct keel_udp_ops *ops, void *app,
	      struct keel_udp **out)
{
	struct sockaddr_storage ss, b;
	socklen_t len, bl = sizeof(b);
	struct net_shard *ns;
	struct keel_udp *u;
	struct udp_port *held;
	int fd = -1, r;

	if (!ops || !ops->on_datagram)
		return -EINVAL;
	r = keel_net_addr_parse(addr, port, &ss, &len);
	if (r < 0)
		return r;
	if (ss.ss_family == AF_UNIX) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "keel_udp_open('%s'): UDP needs an IPv4 or IPv6 address", addr);
		return -EINVAL;
	}
	r = keel__net_shard_get(&ns);
	if (r < 0)
		return r;
	r = udp_socket(&ss, len, addr, ns->id, &held, &fd);
	if (r < 0)
		return r;
	if (getsockname(fd, (struct sockaddr *)&b, &bl) < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, NET_MOD, "udp port %u: getsockname: %s", port,
			 strerror(-r));
		goto err_fd;
	}
	u = calloc(1, sizeof(*u));
	if (!u) {
		r = -ENOMEM;
		goto err_fd;
	}
	/* The shard's UDP ring last, when nothing else can fail: made before the port's probe,
	 * a refused open left it (17 MiB of --memory with the defaults, and buffer group 1)
	 * to a shard with no endpoint, for the shard's life. */
	r = udp_ring(ns);
	if (r < 0) {
		free(u);
		goto err_fd;
	}
	u->held = held;
	u->ns = ns;
	u->ops = ops;
	u->app = app;
	u->fd = fd;
	u->family = ss.ss_family;
	if (u->family == AF_INET6) {
		const struct in6_addr *a6 = &((const struct sockaddr_in6 *)&b)->sin6_addr;
		socklen_t vl = sizeof(int);
		int v6 = 0;

		u->v4ok = getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6, &vl) == 0 && !v6 &&
			  (IN6_IS_ADDR_UNSPECIFIED(a6) || IN6_IS_ADDR_V4MAPPED(a6));
		u->v6ok = !IN6_IS_ADDR_V4MAPPED(a6);
	} else {
		u->v4ok = true;
	}
	u->gso_seg_ceiling = UINT32_MAX;
	u->gso_probe_seg = UINT32_MAX;
	u->port = ntohs(((struct sockaddr_in *)&b)->sin_port);
	u->recv_op.fn = udp_recv_cb;
	u->next = ns->udps;
	ns->udps = u;
	keel__net_ref(ns);
	udp_rearm(u);
	*out = u;
	return 0;
err_fd:
	close(fd);
	udp_port_release(held, ns->id);
	return r;
}

static int udp_send_one(struct keel_udp *u, struct keel_slice *s,
			const struct sockaddr_storage *dst);

/* Errors a sendmsg with UDP_SEGMENT gets where one datagram per sendmsg would have gone:
 * no checksum offload on the route's device (EIO), a segment above the path MTU or too
 * many segments (EINVAL), more than an IP packet holds (EMSGSIZE). */
static bool
gso_refused(int res)
{
	return res == -EIO || res == -EINVAL || res == -EMSGSIZE;
}

/* @n datagrams that keel_udp_send accepted are lost: their sendmsg failed with @err (or
 * could not be made again). Counted; the first per endpoint is logged, as a WARN: the
 * caller was told nothing at the call. */
static void
send_lost(struct keel_udp *u, unsigned n, int err)
{
	u->ns->st.udp_send_errors += n;
	if (err == -ENOBUFS || err == -EAGAIN || err == -ECONNREFUSED)
		u->ns->st.udp_send_pressed += n;
	if (u->send_err_logged)
		return;
	u->send_err_logged = true;
	keel_log(KEEL_LOG_WARN, NET_MOD,
		 "udp port %u: %u datagram%s that keel_udp_send accepted could not be sent (%s) "
		 "and %s lost; counted in udp_send_errors (keel_net_stats), and only this "
		 "endpoint's first such failure is logged",
		 u->port, n, n == 1 ? "" : "s", strerror(-err), n == 1 ? "is" : "are");
}

/* A sendmsg of several datagrams failed where single ones may not: send each again alone,
 * in order. The first goes as a probe: if it is sent, the batch was refused for being one
 * (gso_probe_done), and this endpoint's datagrams go one by one from then on; if it fails
 * too, the datagrams' own destination refused them (port 0 gets EINVAL either way), and
 * batching stays on (a peer could otherwise turn it off by sending from port 0). */
static bool udp_csum_off(const struct keel_udp *u);

static void
gso_fallback(struct keel_udp *u, struct udp_send *d, int res)
{
	struct udp_gso *g = d->gso;
	uint32_t seg = (uint32_t)g->iov[0].iov_len;
	struct gso_refusal why = { res, g->n, seg,
				   keel__udp_gso_refused(res, seg,
							 res == -EINVAL && udp_csum_off(u)) ==
					   KEEL__UDP_GSO_CEILING };

	d->ns->st.udp_gso_fallbacks++;
	/* They move to sends of their own, which count them again. */
	d->ns->st.udp_send_inflight -= g->n;
	/* Also after keel_udp_close: these datagrams were accepted (keel_udp_send returned 0),
	 * and each send holds the endpoint open until it completes. */
	for (unsigned i = 0; i < g->n; i++) {
		int r;

		u->probe_next = i == 0 ? &why : NULL;
		r = udp_send_one(u, &g->s[i], &d->dst);
		if (r < 0) {
			keel_slice_put(&g->s[i]);
			send_lost(u, 1, r);
		}
	}
	u->probe_next = NULL;
	u->gso_tail = NULL; /* no later datagram joins these: they go alone */
	g->n = 0;
}

enum keel__udp_gso_verdict
keel__udp_gso_refused(int err, uint32_t seg, bool csum_off)
{
	/* EMSGSIZE: a segment plus its headers is larger than the path's MTU (the kernel's
	 * udp_send_skb), as datagrams larger than a NIC's 1,500-byte MTU are, which a peer
	 * may send. Only that size and larger are refused; batching smaller ones goes on, or
	 * any peer could turn batching off. At or below the smallest IPv4 MTU's payload no
	 * ceiling is believed. Kernels before 6.14 ("udp: gso: do not drop small packets when
	 * PMTU reduces", in the stable series from early 2025) said EINVAL for the MTU, as for
	 * checksums turned off: EINVAL with checksums on is the MTU (keel never asks for more
	 * than UDP_MAX_SEGMENTS segments). If it was not, the ceiling comes down with each
	 * refusal to the floor, and batching is off there. EIO (IPsec on the route; on older
	 * kernels also a device without checksum offload) is taken for the socket's. */
	if ((err == -EMSGSIZE || (err == -EINVAL && !csum_off)) && seg > KEEL__UDP_GSO_SEG_FLOOR)
		return KEEL__UDP_GSO_CEILING;
	return KEEL__UDP_GSO_OFF;
}

/* Whether @u's socket sends without UDP checksums (SO_NO_CHECK for IPv4, UDP_NO_CHECK6_TX
 * for IPv6), where the kernel refuses UDP_SEGMENT with EINVAL. A socket that cannot say is
 * taken to: its refusal then turns batching off, as every refusal did before. */
static bool
udp_csum_off(const struct keel_udp *u)
{
	int v4 = 0, v6 = 0;
	socklen_t l4 = sizeof(v4), l6 = sizeof(v6);

	if (getsockopt(u->fd, SOL_SOCKET, SO_NO_CHECK, &v4, &l4) < 0)
		return true;
	if (u->family == AF_INET6 && getsockopt(u->fd, SOL_UDP, UDP_NO_CHECK6_TX, &v6, &l6) < 0)
		return true;
	return v4 || v6;
}

/* A refused batch's first datagram, sent alone as @d, completed with @res. udp_send_one
 * checks gso_off, the ceiling and the probes' hold only when it makes a sendmsg the next
 * datagram may join (gso_tail), nothing per datagram: from the refusal (gso_fallback) to
 * here the hold keeps the refused size from batching, so no sendmsg made meanwhile, in the
 * SQ or submitted, holds datagrams the probe then finds refused (one that took them was
 * refused again: a second fallback, and the size logged again). */
static void
gso_probe_done(struct keel_udp *u, int res, const struct udp_send *d)
{
	const struct gso_refusal *w = &d->refusal;

	if (--u->gso_probes == 0)
		u->gso_probe_seg = UINT32_MAX; /* what the probes found holds from here */
	if (res < 0 || u->gso_off)
		return;
	if (w->ceiling) {
		/* Once per size: a second probe of the same size (two batches refused at
		 * once) finds the ceiling already there. */
		if (w->seg < u->gso_seg_ceiling) {
			keel_log(KEEL_LOG_INFO, NET_MOD,
				 "udp port %u: a sendmsg of %u datagrams of %u bytes with "
				 "UDP_SEGMENT failed (%s) where one went: datagrams of %u bytes "
				 "or more are sent one by one from now on for this endpoint",
				 u->port, w->n, w->seg, strerror(-w->err), w->seg);
			u->gso_seg_ceiling = w->seg;
		}
		return;
	}
	keel_log(KEEL_LOG_WARN, NET_MOD,
		 "udp port %u: a sendmsg of %u datagrams with UDP_SEGMENT failed (%s) where one "
		 "datagram went: sent one by one from now on for this endpoint; udp_gso_segs 1 "
		 "(keel-echo --udp-gso-segs 1) turns batching off",
		 u->port, w->n, strerror(-w->err));
	u->gso_off = true;
	u->gso_tail = NULL;
}

static void
send_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct udp_send *d = container_of(op, struct udp_send, op);
	struct keel_udp *u = d->u;
	struct net_shard *ns;

	if (u) {
		/* The first (or only) CQE: the endpoint's part ends here. */
		d->u = NULL;
		u->ops_n--;
		if (u->gso_tail == d)
			u->gso_tail = NULL;
		if (d->probe)
			gso_probe_done(u, res, d);
		if (d->gso && gso_refused(res))
			gso_fallback(u, d, res);
		else if (res < 0) /* -ECANCELED too: the stop cancelled it, and it is lost */
			send_lost(u, d->gso ? d->gso->n : 1, res);
		else if (d->gso) {
			/* A batch counted once sent, not as its datagrams joined it: a refused
			 * one was counted as carrying them, and they again as batched when
			 * they went one by one. Per sendmsg, nothing per datagram. */
			d->ns->st.udp_gso_sends++;
			d->ns->st.udp_gso_datagrams += d->gso->n;
		}
		udp_check(u);
		if (d->zc && (flags & IORING_CQE_F_MORE))
			return; /* the notification releases the buffer */
	} else if ((flags & IORING_CQE_F_NOTIF) && (res & (int)IORING_NOTIF_USAGE_ZC_COPIED)) {
		d->ns->st.zc_copied++;
	}
	ns = d->ns;
	if (d->gso) {
		struct udp_gso *g = d->gso;

		ns->st.udp_send_inflight -= g->n;
		for (unsigned i = 0; i < g->n; i++)
			keel_slice_put(&g->s[i]);
		g->next_free = ns->udp_gso_free;
		ns->udp_gso_free = g;
	} else {
		ns->st.udp_send_inflight--;
		keel_slice_put(&d->s);
	}
	/* Back to the pool before the unref, which may free the pool with the shard. */
	d->next_free = ns->udp_sends_free;
	ns->udp_sends_free = d;
	keel__net_unref(ns);
}

/* A send slot from the shard's pool; a new chunk only when every slot is in flight. */
static struct udp_send *
send_slot(struct net_shard *ns)
{
	struct udp_send *d = ns->udp_sends_free;

	if (__builtin_expect(d == NULL, 0)) {
		struct udp_send_chunk *c = calloc(1, sizeof(*c));
		if (!c)
			return NULL;
		c->next = ns->udp_send_chunks;
		ns->udp_send_chunks = c;
		for (unsigned i = UDP_SEND_CHUNK; i-- > 0;) {
			c->slot[i].next_free = ns->udp_sends_free;
			ns->udp_sends_free = &c->slot[i];
		}
		ns->st.udp_send_slots += UDP_SEND_CHUNK;
		d = ns->udp_sends_free;
	}
	ns->udp_sends_free = d->next_free;
	memset(d, 0, sizeof(*d));
	return d;
}

static void
send_slot_put(struct net_shard *ns, struct udp_send *d)
{
	d->next_free = ns->udp_sends_free;
	ns->udp_sends_free = d;
}

void
keel__udp_fini(struct net_shard *ns)
{
	struct udp_send_chunk *c = ns->udp_send_chunks, *next;
	struct udp_gso *g = ns->udp_gso_free, *gnext;

	for (; c; c = next) {
		next = c->next;
		free(c);
	}
	ns->udp_send_chunks = NULL;
	ns->udp_sends_free = NULL;
	for (; g; g = gnext) {
		gnext = g->next_free;
		free(g);
	}
	ns->udp_gso_free = NULL;
}

/* The sendmsg @d still waits in the SQ: the kernel has not read its message, which may
 * therefore still grow. Every submission moves liburing's sqe_head to its sqe_tail. */
static bool
sqe_unsent(const struct udp_send *d)
{
	const struct io_uring_sq *sq = &d->ns->ring->sq;

	return sq->sqe_tail - 1 - d->sqe_pos < sq->sqe_tail - sq->sqe_head;
}

/* The first @len bytes of the two addresses are equal; IPv4's size compared inline. */
static inline bool
same_dst(const struct sockaddr_storage *a, const struct sockaddr_storage *b, socklen_t len)
{
	if (len == sizeof(struct sockaddr_in))
		return memcmp(a, b, sizeof(struct sockaddr_in)) == 0;
	return memcmp(a, b, len) == 0;
}

/* Add @s to @d, the endpoint's last sendmsg, when it is still in the SQ and the datagram
 * can be one more segment of it: the same destination, the size of the first (or shorter,
 * which ends the batch), within the segment count and an IP packet's payload. */
static bool
gso_join(struct keel_udp *u, struct udp_send *d, struct keel_slice *s,
	 const struct sockaddr_storage *dst)
{
	struct net_shard *ns = u->ns;
	struct udp_gso *g = d->gso;
	uint32_t seg = (uint32_t)d->iov.iov_len;
	struct cmsghdr *cm;
	unsigned n = g ? g->n : 1;

	if (s->len == 0 || s->len > seg || (g && g->closed) || n >= ns->cfg.udp_gso_segs ||
	    (uint64_t)seg * n + s->len > KEEL_UDP_GSO_BYTES || dst->ss_family != d->dst.ss_family ||
	    !same_dst(dst, &d->dst, d->msg.msg_namelen) || !sqe_unsent(d))
		return false;
	if (!g) {
		g = ns->udp_gso_free;
		if (g)
			ns->udp_gso_free = g->next_free;
		else if ((g = malloc(sizeof(*g))))
			ns->st.udp_gso_batches++;
		else
			return false;
		g->n = 1;
		g->closed = false;
		g->iov[0] = d->iov;
		g->s[0] = d->s;
		d->gso = g;
		d->msg.msg_iov = g->iov;
		d->msg.msg_control = d->ctrl;
		d->msg.msg_controllen = sizeof(d->ctrl);
		cm = CMSG_FIRSTHDR(&d->msg);
		cm->cmsg_level = SOL_UDP;
		cm->cmsg_type = UDP_SEGMENT;
		cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
		*(uint16_t *)CMSG_DATA(cm) = (uint16_t)seg;
	}
	/* Taken (nothing fails from here): a send may wait for room in the socket as long as
	 * the network takes, so a slice of a receive ring running low is copied out of it. */
	keel__net_unring(ns, s);
	g->iov[g->n].iov_base = s->data;
	g->iov[g->n].iov_len = s->len;
	g->s[g->n++] = *s;
	g->closed = s->len < seg;
	d->msg.msg_iovlen = g->n;
	ns->st.udp_send_inflight++;
	memset(s, 0, sizeof(*s));
	return true;
}

/* One sendmsg for @s alone (SENDMSG_ZC when large). */
static int
udp_send_one(struct keel_udp *u, struct keel_slice *s, const struct sockaddr_storage *dst)
{
	struct net_shard *ns = u->ns;
	struct io_uring_sqe *sqe;
	struct udp_send *d;

	d = send_slot(ns);
	if (!d)
		return -ENOMEM;
	sqe = keel_sqe_get();
	if (!sqe) {
		send_slot_put(ns, d);
		return -EIO;
	}
	/* Taken, as in gso_join: a slice of a ring running low is copied out, an empty one too
	 * (a multishot receive's empty datagram holds a whole ring buffer). */
	keel__net_unring(ns, s);
	d->op.fn = send_cb;
	d->u = u;
	d->ns = ns;
	d->probe = u->probe_next != NULL;
	if (d->probe) {
		/* Until it answers, its size (or, for a refusal taken for the socket's, every
		 * size) goes alone. */
		d->refusal = *u->probe_next;
		u->gso_probes++;
		if (!d->refusal.ceiling)
			u->gso_probe_seg = 0;
		else if (d->refusal.seg < u->gso_probe_seg)
			u->gso_probe_seg = d->refusal.seg;
	}
	d->s = *s;
	d->dst = *dst;
	d->iov.iov_base = s->data;
	d->iov.iov_len = s->len;
	d->msg.msg_name = &d->dst;
	d->msg.msg_namelen = dst->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
							: sizeof(struct sockaddr_in);
	d->msg.msg_iov = &d->iov;
	d->msg.msg_iovlen = 1;
	d->zc = ns->f_zc && s->len >= ns->cfg.zc_threshold;
	if (d->zc) {
		io_uring_prep_sendmsg_zc(sqe, u->fd, &d->msg, 0);
		sqe->ioprio |= IORING_SEND_ZC_REPORT_USAGE;
		ns->st.sends_zc++;
	} else {
		io_uring_prep_sendmsg(sqe, u->fd, &d->msg, 0);
		ns->st.sends++;
	}
	keel_sqe_bind(sqe, &d->op);
	d->sqe_pos = ns->ring->sq.sqe_tail - 1;
	memset(s, 0, sizeof(*s));
	u->ops_n++;
	ns->st.udp_send_inflight++;
	keel__net_ref(ns);
	/* The next datagram may join this sendmsg while it waits in the SQ. */
	u->gso_tail = !d->zc && d->iov.iov_len && !u->gso_off && ns->cfg.udp_gso_segs > 1 &&
				      d->iov.iov_len < u->gso_seg_ceiling &&
				      d->iov.iov_len < u->gso_probe_seg
			      ? d
			      : NULL;
	return 0;
}

int
keel_udp_send(struct keel_udp *u, struct keel_slice *s, const struct sockaddr_storage *dst)
{
	net_on_own_shard(u->ns);
	if (!s || !dst || !s->buf) /* {0}: no buffer to send from, nor to put after */
		return -EINVAL;
	if (u->closing)
		return -EPIPE;
	/* What the socket would refuse at once, refused here, as a non-blocking sendto does:
	 * accepted, it was lost later with only a count and one line per endpoint. An IPv6
	 * endpoint bound to :: without IPV6_V6ONLY (v4ok) sends to IPv4 addresses too; an
	 * IPv4 one not to IPv6. */
	if (dst->ss_family == AF_INET && u->v4ok) {
		if (s->len > UDP_MAX_PAYLOAD4)
			return -EMSGSIZE;
	} else if (dst->ss_family == AF_INET6 && u->family == AF_INET6) {
		/* A v4-mapped address goes out over IPv4, with its limit (not from an IPv6-only
		 * socket, which refuses it). */
		bool v4 = IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)dst)->sin6_addr);

		if (v4 ? !u->v4ok : !u->v6ok)
			return -EAFNOSUPPORT;
		if (s->len > (v4 ? UDP_MAX_PAYLOAD4 : UDP_MAX_PAYLOAD6))
			return -EMSGSIZE;
	} else {
		return -EAFNOSUPPORT;
	}
	if (__builtin_expect(u->ns->st.udp_send_inflight >= u->ns->cfg.udp_send_max, 0) &&
	    u->ns->cfg.udp_send_max) {
		u->ns->st.udp_send_capped++;
		return -ENOBUFS;
	}
	if (u->gso_tail && gso_join(u, u->gso_tail, s, dst))
		return 0;
	return udp_send_one(u, s, dst);
}

/* keel_udp_close's step from the loop: counted in ops_n like an operation, so the endpoint
 * is freed (and on_close runs) from the loop, never inside keel_udp_close. */
static void
close_later_run(struct keel__later *l)
{
	struct keel_udp *u = container_of(l, struct keel_udp, close_later);

	u->ops_n--;
	udp_check(u);
}

static void udp_cancel_recv(struct keel_udp *u);

/* keel_udp_close's cancel, again from the loop: a deferred call counted in ops_n, as
 * close_later_run is. */
static void
cancel_later(struct keel__later *l)
{
	struct keel_udp *u = container_of(l, struct keel_udp, cancel_step);

	u->ops_n--;
	if (u->armed)
		udp_cancel_recv(u);
	udp_check(u);
}

/* Cancel the armed receive only: sends already accepted go out (a cancel by descriptor
 * would end those waiting for room in the socket, their datagrams dropped uncounted).
 * Without an SQE it is tried again on the next pass (a step that allocates nothing: with
 * keel_defer, a shard short of memory left the endpoint open until the runtime's stop). */
static void
udp_cancel_recv(struct keel_udp *u)
{
	struct io_uring_sqe *sqe = keel_sqe_get();

	if (sqe) {
		io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&u->recv_op, 0);
		keel_sqe_bind(sqe, &noop_op);
		return;
	}
	u->cancel_step.fn = cancel_later;
	if (!u->cancel_step.queued && keel__later(&u->cancel_step) == 0)
		u->ops_n++;
}

void
keel_udp_close(struct keel_udp *u)
{
	net_on_own_shard(u->ns);
	udp_close_status(u, u->ns->stopping ? -ESHUTDOWN : 0);
}

/* keel_udp_close, with @status for on_close. */
static void
udp_close_status(struct keel_udp *u, int status)
{
	if (u->closing)
		return;
	u->closing = true;
	u->status = status;
	udp_starve(u, false);
	if (u->retry_pending) { /* a receive to arm again after a failure: not now */
		keel_timer_stop(u->retry);
		u->retry_pending = false;
		u->ops_n--;
	}
	if (u->armed)
		udp_cancel_recv(u);
	if (u->ops_n)
		return; /* the last completion frees it */
	/* Nothing in flight: on_close still runs from the loop (STYLE.md, Callbacks), from a
	 * deferred step that allocates nothing (it once fell back to a NOP, and with no SQE
	 * either ran on_close inside this call). Only once the shard's loop has ended, when
	 * no pass is left, does it run here. */
	u->close_later.fn = close_later_run;
	if (keel__later(&u->close_later) == 0) {
		u->ops_n++;
		return;
	}
	udp_check(u);
}

void
keel__udps_stop(struct net_shard *ns)
{
	struct keel_udp *u = ns->udps, *next;

	/* -ESHUTDOWN whether or not the shard's network state is stopping yet: the stop's
	 * flush ends the endpoints before it (shard.c, on_stop). */
	for (; u; u = next) {
		next = u->next;
		udp_close_status(u, -ESHUTDOWN);
	}
}

uint16_t
keel_udp_port(const struct keel_udp *u)
{
	return u->port;
}

void *
keel_udp_app(const struct keel_udp *u)
{
	return u->app;
}

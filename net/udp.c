// SPDX-License-Identifier: MIT
/*
 * UDP endpoints: multishot recvmsg with provided buffers (a buffer ring of its own, without
 * bundles or incremental consumption, since each buffer holds one datagram after its
 * io_uring_recvmsg_out header and source address), and one sendmsg per datagram, all
 * queued in a pass submitted together; SENDMSG_ZC for large ones.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net_internal.h"

struct keel_udp {
	struct net_shard *ns;
	const struct keel_udp_ops *ops;
	void *app;
	int fd;
	uint16_t port;
	struct keel_op recv_op;
	struct msghdr rmsg; /* the template: name length, no control */
	unsigned ops_n;
	bool armed, closing;
	int status;
	struct keel_udp *next;
};

/* One datagram on its way out. */
struct udp_send {
	struct keel_op op;
	struct keel_udp *u;
	struct net_shard *ns;
	struct keel_slice s;
	struct sockaddr_storage dst;
	struct iovec iov;
	struct msghdr msg;
	bool zc;
};

static void udp_check(struct keel_udp *u);

static void
noop_cb(struct keel_op *op, int res, uint32_t flags)
{
}

/* Target of cancel completions nobody waits for; shared and never written. */
static struct keel_op noop_op = { noop_cb };

static void
udp_arm(struct keel_udp *u)
{
	struct net_shard *ns = u->ns;
	struct io_uring_sqe *sqe = keel_sqe_get();

	if (!sqe)
		return;
	if (ns->f_ms_recv)
		io_uring_prep_recvmsg_multishot(sqe, u->fd, &u->rmsg, 0);
	else
		io_uring_prep_recvmsg(sqe, u->fd, &u->rmsg, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = ns->udp.bgid;
	keel_sqe_bind(sqe, &u->recv_op);
	u->armed = true;
	u->ops_n++;
}

static void
udp_deliver(struct keel_udp *u, unsigned bid, int res, uint32_t flags)
{
	struct net_shard *ns = u->ns;
	struct keel_slice whole, payload;
	struct io_uring_recvmsg_out *o;
	struct sockaddr_storage src;
	int n;

	if (ns->f_ms_recv) {
		n = keel__pbuf_take(&ns->udp, bid, res, flags, false, &whole, 1);
		if (n != 1)
			return;
		o = io_uring_recvmsg_validate(whole.data, (int)whole.len, &u->rmsg);
		if (!o || (o->flags & MSG_TRUNC)) {
			keel_slice_put(&whole);
			return;
		}
		memset(&src, 0, sizeof(src));
		memcpy(&src, io_uring_recvmsg_name(o),
		       o->namelen < sizeof(src) ? o->namelen : sizeof(src));
		if (keel_slice_sub(
			    &whole,
			    (size_t)((uint8_t *)io_uring_recvmsg_payload(o, &u->rmsg) - whole.data),
			    io_uring_recvmsg_payload_length(o, (int)whole.len, &u->rmsg),
			    &payload) < 0) {
			keel_slice_put(&whole);
			return;
		}
		keel_slice_put(&whole);
	} else {
		/* Single-shot recvmsg: the name lands in rmsg's own buffer. */
		n = keel__pbuf_take(&ns->udp, bid, res, flags, false, &payload, 1);
		if (n != 1)
			return;
		memcpy(&src, u->rmsg.msg_name, sizeof(src));
	}
	ns->st.recv_cqes++;
	ns->st.recv_bufs++;
	if (u->closing || !payload.len) {
		keel_slice_put(&payload);
		return;
	}
	u->ops->on_datagram(u, &payload, &src);
}

static void
udp_recv_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel_udp *u = container_of(op, struct keel_udp, recv_op);
	bool more = flags & IORING_CQE_F_MORE;

	if (!more)
		u->armed = false;
	if (res >= 0 && (flags & IORING_CQE_F_BUFFER))
		udp_deliver(u, flags >> IORING_CQE_BUFFER_SHIFT, res, flags);
	else if (res == -ENOBUFS)
		u->ns->st.enobufs++;
	if (!more) {
		u->ops_n--;
		/* ENOBUFS: datagrams are dropped by the kernel meanwhile; re-arm at once, the
		 * buffers the application put are back in the ring. */
		if (!u->closing && !u->ns->stopping &&
		    (res >= 0 || res == -ENOBUFS || res == -EAGAIN))
			udp_arm(u);
		else if (!u->closing && res < 0 && res != -ECANCELED)
			keel_log(KEEL_LOG_WARN, NET_MOD, "udp port %u: recvmsg: %s", u->port,
				 strerror(-res));
		udp_check(u);
	}
}

static void
udp_free(struct keel_udp *u)
{
	struct net_shard *ns = u->ns;
	struct keel_udp **pp;

	close(u->fd);
	if (u->ops->on_close)
		u->ops->on_close(u, u->status);
	for (pp = &ns->udps; *pp; pp = &(*pp)->next)
		if (*pp == u) {
			*pp = u->next;
			break;
		}
	free(u->rmsg.msg_name);
	free(u);
	keel__net_unref(ns);
}

static void
udp_check(struct keel_udp *u)
{
	if (u->closing && !u->ops_n)
		udp_free(u);
}

int
keel_udp_open(const char *addr, uint16_t port, const struct keel_udp_ops *ops, void *app,
	      struct keel_udp **out)
{
	struct sockaddr_storage ss, b;
	socklen_t len, bl = sizeof(b);
	struct net_shard *ns;
	struct keel_udp *u;
	int fd, r, one = 1;

	if (!ops || !ops->on_datagram)
		return -EINVAL;
	r = keel_net_addr_parse(addr, port, &ss, &len);
	if (r < 0)
		return r;
	r = keel__net_shard_get(&ns);
	if (r < 0)
		return r;
	if (!ns->udp_ready) {
		/* Each buffer holds the largest datagram with its header and address. */
		r = keel__pbuf_init(ns, &ns->udp, 1, 64, 65536 + 512, false);
		if (r < 0)
			return r;
		ns->udp_ready = true;
	}
	fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, NET_MOD, "udp bind %s port %u: %s",
			 addr ? addr : "0.0.0.0", port, strerror(-r));
		close(fd);
		return r;
	}
	getsockname(fd, (struct sockaddr *)&b, &bl);
	u = calloc(1, sizeof(*u));
	if (!u) {
		close(fd);
		return -ENOMEM;
	}
	u->rmsg.msg_name = calloc(1, sizeof(struct sockaddr_storage));
	if (!u->rmsg.msg_name) {
		free(u);
		close(fd);
		return -ENOMEM;
	}
	u->rmsg.msg_namelen = sizeof(struct sockaddr_storage);
	u->ns = ns;
	u->ops = ops;
	u->app = app;
	u->fd = fd;
	u->port = ntohs(((struct sockaddr_in *)&b)->sin_port);
	u->recv_op.fn = udp_recv_cb;
	u->next = ns->udps;
	ns->udps = u;
	keel__net_ref(ns);
	udp_arm(u);
	*out = u;
	return 0;
}

static void
send_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct udp_send *d = container_of(op, struct udp_send, op);
	struct keel_udp *u = d->u;

	if (u) {
		/* The first (or only) CQE: the endpoint's part ends here. */
		d->u = NULL;
		u->ops_n--;
		if (res < 0 && res != -ECANCELED)
			keel_log(KEEL_LOG_DEBUG, NET_MOD, "udp sendmsg: %s", strerror(-res));
		udp_check(u);
		if (d->zc && (flags & IORING_CQE_F_MORE))
			return; /* the notification releases the buffer */
	} else if ((flags & IORING_CQE_F_NOTIF) && (res & (int)IORING_NOTIF_USAGE_ZC_COPIED)) {
		d->ns->st.zc_copied++;
	}
	keel_slice_put(&d->s);
	keel__net_unref(d->ns);
	free(d);
}

int
keel_udp_send(struct keel_udp *u, struct keel_slice *s, const struct sockaddr_storage *dst)
{
	struct net_shard *ns = u->ns;
	struct io_uring_sqe *sqe;
	struct udp_send *d;

	if (!s || !dst)
		return -EINVAL;
	if (u->closing)
		return -EPIPE;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	sqe = keel_sqe_get();
	if (!sqe) {
		free(d);
		return -EIO;
	}
	d->op.fn = send_cb;
	d->u = u;
	d->ns = ns;
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
	memset(s, 0, sizeof(*s));
	u->ops_n++;
	keel__net_ref(ns);
	return 0;
}

void
keel_udp_close(struct keel_udp *u)
{
	struct io_uring_sqe *sqe;

	if (u->closing)
		return;
	u->closing = true;
	u->status = u->ns->stopping ? -ESHUTDOWN : 0;
	if (u->armed) {
		sqe = keel_sqe_get();
		if (sqe) {
			io_uring_prep_cancel_fd(sqe, u->fd, IORING_ASYNC_CANCEL_ALL);
			keel_sqe_bind(sqe, &noop_op);
		}
	}
	udp_check(u);
}

void
keel__udps_stop(struct net_shard *ns)
{
	struct keel_udp *u = ns->udps, *next;

	for (; u; u = next) {
		next = u->next;
		keel_udp_close(u);
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

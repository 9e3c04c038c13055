// SPDX-License-Identifier: MIT
/*
 * keel-bench udp mode: the UDP client (plain sockets, the one client of this mode whatever
 * the server) and the epoll backend's UDP echo.
 *
 * Wire: a datagram is --size bytes (16..65507): its sequence number on its socket as a
 * big-endian uint64, then bytes j = 8..size-1 equal to
 *     (uint8_t)(29 * (seq % 61) + 131 * j + (j >> 8) + 1).
 * The server sends every datagram back to its source unchanged.
 *
 * Client: --conns connected UDP sockets ("flows", each its own source port, so SO_REUSEPORT
 * spreads them over the server's threads) dealt over --threads pinned threads, each with an
 * epoll instance. A flow keeps --inflight datagrams outstanding: datagram seq uses slot
 * seq % inflight and goes out once that slot is free; the free slots' datagrams go out in
 * one sendmmsg (two iovecs each: the slot's sequence number and a row of the pattern, no
 * copy). Echoes are read with recvmmsg, checked byte for byte and matched to their slot.
 * UDP may drop: a datagram without an echo after LOSS_MS is given up (lost) and its slot
 * freed; an echo that comes after that is counted late, never as a message. A datagram that
 * differs from what was sent, an echo of a sequence number never sent, or a second echo of
 * the last one its slot matched (a duplicate), fails the run.
 * Counters: msgs are datagrams echoed in the window, tx_all/rx_all datagrams sent and
 * matched over the whole run; lost and late only those given up on or late in the window;
 * latency per datagram, as in pingpong. A flow with no echo in the second half of the window
 * is stalled (bench_stalled), as a TCP connection is.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "backend.h"
#include "bench.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h */
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

#define BATCH 32u /* the client's recvmmsg and sendmmsg */
/* The epoll server's recvmmsg: as many datagrams as keel's one UDP_SEGMENT sendmsg carries
 * (KEEL_UDP_GSO_MAX, 64), so that with --udp-gso neither server batches more than the
 * other (at 32 a batch of the epoll server was capped at half keel's). */
#define SBATCH 64u
#define DGRAM  65536u
/* A receive slot's stride: a line more than DGRAM. At 64 KiB apart (a multiple of L1's
 * and L2's set period) the same line of every slot falls in the same cache set, and the
 * slots of one batch evicted each other between recvmmsg and the send that reads them
 * back; keel's own UDP buffers are 65,608 bytes apart. */
#define SLOT (DGRAM + 64u)
/* Below this segment size a refusal is not taken for the path's MTU: keel's
 * KEEL__UDP_GSO_SEG_FLOOR (net/net_internal.h, private to keel), the same rule. */
#define GSO_SEG_FLOOR 40u
#define PERIOD        61u
#define LOSS_MS       50u
#define MAXEV         64

/* ---- the epoll server's echo ---- */

struct bench_udp_batch {
	struct mmsghdr m[SBATCH];
	struct iovec iov[SBATCH];
	struct sockaddr_storage from[SBATCH];
	uint8_t *buf;
	bool gso; /* --udp-gso: runs of one size to one source as one UDP_SEGMENT sendmsg */
	size_t gso_refused; /* segments of this size or more go alone (0: none refused): a
			     * batch the kernel refused sets it, by keel's rule (net/udp.c) */
	unsigned dirty;     /* headers the last batch changed (lengths, names), set back before the
			     * next recvmmsg: the others are as bench_udp_batch_new made them */
	uint64_t rx_calls, tx_calls; /* recvmmsg calls that took datagrams, and send calls
				      * (sendmsg with --udp-gso, else sendmmsg) that sent some */
};

/* Header @i as recvmmsg takes it: its slot of the buffer, room for any source. */
static void
batch_slot_reset(struct bench_udp_batch *b, unsigned i)
{
	b->iov[i].iov_base = b->buf + (size_t)i * SLOT;
	b->iov[i].iov_len = DGRAM;
	memset(&b->m[i].msg_hdr, 0, sizeof(b->m[i].msg_hdr));
	b->m[i].msg_hdr.msg_iov = &b->iov[i];
	b->m[i].msg_hdr.msg_iovlen = 1;
	b->m[i].msg_hdr.msg_name = &b->from[i];
	b->m[i].msg_hdr.msg_namelen = sizeof(b->from[i]);
}

struct bench_udp_batch *
bench_udp_batch_new(bool gso)
{
	struct bench_udp_batch *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	b->buf = malloc((size_t)SBATCH * SLOT);
	if (!b->buf) {
		free(b);
		return NULL;
	}
	b->gso = gso;
	for (unsigned i = 0; i < SBATCH; i++)
		batch_slot_reset(b, i);
	return b;
}

void
bench_udp_batch_calls(const struct bench_udp_batch *b, uint64_t *rx, uint64_t *tx)
{
	*rx += b ? b->rx_calls : 0;
	*tx += b ? b->tx_calls : 0;
}

void
bench_udp_batch_free(struct bench_udp_batch *b)
{
	if (!b)
		return;
	free(b->buf);
	free(b);
}

int
bench_udp_socket(const struct sockaddr_in *addr, uint16_t port)
{
	struct sockaddr_in a = *addr;
	int one = 1, fd, r;

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	a.sin_port = htons(port);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	return fd;
}

/* One sendmsg, again on EINTR; counted. */
static ssize_t
send_one(int fd, const struct msghdr *mh, uint64_t *syscalls)
{
	ssize_t r;

	do {
		r = sendmsg(fd, mh, 0);
		(*syscalls)++;
	} while (r < 0 && errno == EINTR);
	return r;
}

/* --udp-gso: each run of datagrams from one source, of the first one's length (the last may
 * be shorter), within 64 KiB less the headers, goes back in one sendmsg with UDP_SEGMENT;
 * a run of one is a plain sendmsg. What the socket does not take is dropped, as UDP may. A
 * batch the kernel refuses for its segments (EMSGSIZE, or EINVAL on kernels before 6.14:
 * over the path MTU; EIO) goes again one datagram at a time, and later batches follow
 * keel's rule: it dropped the whole run and counted errors, where keel's server sends such
 * a batch again (net/udp.c). */
static void
echo_gso(int fd, struct bench_udp_batch *b, int n, uint64_t *syscalls, uint64_t *out,
	 uint64_t *errors)
{
	for (int i = 0, j; i < n; i = j) {
		size_t seg = b->iov[i].iov_len, total = seg;
		uint64_t ctrl[CMSG_SPACE(sizeof(uint16_t)) / sizeof(uint64_t)];
		struct msghdr mh = b->m[i].msg_hdr;
		ssize_t r;

		for (j = i + 1; j < n; j++) {
			size_t len = b->iov[j].iov_len;
			if (b->iov[j - 1].iov_len != seg || len == 0 || len > seg ||
			    (b->gso_refused && seg >= b->gso_refused) || total + len > 65507 ||
			    b->m[j].msg_hdr.msg_namelen != mh.msg_namelen ||
			    memcmp(&b->from[j], &b->from[i], mh.msg_namelen) != 0)
				break;
			total += len;
		}
		mh.msg_iovlen = (size_t)(j - i);
		if (j - i > 1) {
			struct cmsghdr *cm;

			mh.msg_control = ctrl;
			mh.msg_controllen = sizeof(ctrl);
			cm = CMSG_FIRSTHDR(&mh);
			cm->cmsg_level = SOL_UDP;
			cm->cmsg_type = UDP_SEGMENT;
			cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
			*(uint16_t *)CMSG_DATA(cm) = (uint16_t)seg;
		}
		r = send_one(fd, &mh, syscalls);
		if (r < 0 && j - i > 1 && (errno == EMSGSIZE || errno == EINVAL || errno == EIO)) {
			/* keel's rule (keel__udp_gso_refused): the MTU's word (EMSGSIZE, or
			 * EINVAL: this socket keeps its checksums) above 40 bytes stops that
			 * size and larger; anything else stops batching. */
			b->gso_refused = errno != EIO && seg > GSO_SEG_FLOOR ? seg : 1;
			for (int k = i; k < j; k++) {
				mh = b->m[k].msg_hdr;
				if (send_one(fd, &mh, syscalls) >= 0) {
					(*out)++;
					b->tx_calls++;
				} else if (errno != EAGAIN && errno != ENOBUFS &&
					   errno != ECONNREFUSED)
					(*errors)++;
			}
			continue;
		}
		if (r >= 0) {
			*out += (uint64_t)(j - i);
			b->tx_calls++;
		} else if (errno != EAGAIN && errno != ENOBUFS && errno != ECONNREFUSED)
			(*errors)++;
	}
}

void
bench_udp_echo(int fd, struct bench_udp_batch *b, uint64_t *syscalls, uint64_t *in, uint64_t *out,
	       uint64_t *errors)
{
	for (;;) {
		int n, done = 0;

		/* Only the headers the last batch used (once per datagram in pingpong: all 64
		 * cost about 100 ns a call by the measurement review's timing, a cost keel's server
		 * does not have). */
		for (unsigned i = 0; i < b->dirty; i++)
			batch_slot_reset(b, i);
		b->dirty = 0;
		n = recvmmsg(fd, b->m, SBATCH, MSG_DONTWAIT, NULL);
		(*syscalls)++;
		if (n < 0) {
			if (errno != EAGAIN && errno != EINTR)
				(*errors)++;
			if (errno == EINTR)
				continue;
			return;
		}
		*in += (uint64_t)n;
		b->rx_calls++;
		b->dirty = (unsigned)n;
		/* The same headers send: name = the source, iov = what came. */
		for (int i = 0; i < n; i++)
			b->iov[i].iov_len = b->m[i].msg_len;
		if (b->gso) {
			echo_gso(fd, b, n, syscalls, out, errors);
			done = n;
		}
		while (done < n) {
			int k = sendmmsg(fd, b->m + done, (unsigned)(n - done), 0);

			(*syscalls)++;
			if (k < 0) {
				if (errno == EINTR)
					continue;
				if (errno != EAGAIN && errno != ENOBUFS && errno != ECONNREFUSED)
					(*errors)++;
				break; /* dropped, as UDP may */
			}
			done += k;
			*out += (uint64_t)k;
			b->tx_calls++;
		}
		if ((unsigned)n < SBATCH)
			return;
	}
}

/* ---- the client ---- */

struct uslot {
	uint64_t seq, sent_ns;
	uint8_t hdr[BENCH_UDP_HDR];
	bool busy;
	/* The slot's last datagram that was echoed (matched), kept after the slot is reused,
	 * so a second echo of it is known for a duplicate (done: one was matched). */
	uint64_t done_seq;
	bool done;
};

struct uflow {
	int fd;
	unsigned id;
	uint64_t next_seq;
	unsigned busy;
	struct uslot *slot;   /* [inflight] */
	uint64_t last_win_ns; /* the last echo inside the window; 0: none */
};

struct uclient;

struct uthread {
	pthread_t tid;
	struct uclient *cl;
	int cpu, epfd;
	unsigned nflows, first_id;
	struct uflow *flows;
	struct mmsghdr m[BATCH];
	struct iovec iov[2 * BATCH];
	uint8_t *rx;
	uint64_t msgs, msgs_all, errors, tx_all, rx_all, lost, lost_all, late, last_scan, stalled;
	struct bench_poll_wait wait;
	struct bench_tcpu tcpu;
	int err;
	char why[256];
	struct bench_hist lat;
} __attribute__((aligned(64)));

struct uclient {
	const struct bench_cfg *cfg;
	uint32_t size, inflight;
	uint8_t *pat; /* PERIOD rows of size bytes (the first 8 of each unused) */
	pthread_barrier_t bar;
	uint64_t t_start, t_end;
};

static int fail(struct uthread *t, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int
fail(struct uthread *t, int err, const char *fmt, ...)
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

static void
put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t
get_be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* Send every datagram the free slots allow, in one sendmmsg. */
static int
flow_send(struct uthread *t, struct uflow *f)
{
	struct uclient *cl = t->cl;
	unsigned n = 0;
	uint64_t ts = bench_now_ns();
	int k;

	while (n < BATCH && !f->slot[(f->next_seq + n) % cl->inflight].busy &&
	       f->busy + n < cl->inflight) {
		uint64_t seq = f->next_seq + n;
		struct uslot *s = &f->slot[seq % cl->inflight];

		put_be64(s->hdr, seq);
		t->iov[2 * n].iov_base = s->hdr;
		t->iov[2 * n].iov_len = BENCH_UDP_HDR;
		t->iov[2 * n + 1].iov_base =
			cl->pat + (size_t)(seq % PERIOD) * cl->size + BENCH_UDP_HDR;
		t->iov[2 * n + 1].iov_len = cl->size - BENCH_UDP_HDR;
		memset(&t->m[n].msg_hdr, 0, sizeof(t->m[n].msg_hdr));
		t->m[n].msg_hdr.msg_iov = &t->iov[2 * n];
		t->m[n].msg_hdr.msg_iovlen = 2;
		n++;
	}
	if (n == 0)
		return 0;
	do
		k = sendmmsg(f->fd, t->m, n, 0);
	while (k < 0 && errno == EINTR);
	if (k < 0) {
		if (errno == EAGAIN || errno == ENOBUFS)
			return 0; /* the next pass tries again */
		return fail(t, -errno, "flow %u: sendmmsg: %s%s", f->id, strerror(errno),
			    errno == ECONNREFUSED ? " (no UDP echo server on that port?)" : "");
	}
	for (int i = 0; i < k; i++) {
		struct uslot *s = &f->slot[(f->next_seq + (uint64_t)i) % cl->inflight];

		s->seq = f->next_seq + (uint64_t)i;
		s->sent_ns = ts;
		s->busy = true;
	}
	f->next_seq += (uint64_t)k;
	f->busy += (unsigned)k;
	t->tx_all += (uint64_t)k;
	return 0;
}

static bool
in_window(const struct uclient *cl, uint64_t now)
{
	return now >= cl->t_start && now < cl->t_end;
}

static int
on_dgram(struct uthread *t, struct uflow *f, const uint8_t *d, size_t len, int flags, uint64_t now)
{
	struct uclient *cl = t->cl;
	uint64_t seq;
	struct uslot *s;
	const uint8_t *want;

	if ((flags & MSG_TRUNC) || len != cl->size)
		return fail(t, -EPROTO,
			    "flow %u: a datagram of %zu%s bytes came back, %u were sent", f->id,
			    len, (flags & MSG_TRUNC) ? "+" : "", cl->size);
	seq = get_be64(d);
	if (seq >= f->next_seq)
		return fail(t, -EPROTO, "flow %u: datagram %llu came back, only %llu were sent",
			    f->id, (unsigned long long)seq, (unsigned long long)f->next_seq);
	want = cl->pat + (size_t)(seq % PERIOD) * cl->size;
	if (memcmp(d + BENCH_UDP_HDR, want + BENCH_UDP_HDR, cl->size - BENCH_UDP_HDR) != 0) {
		size_t j = BENCH_UDP_HDR;
		while (d[j] == want[j])
			j++;
		return fail(t, -EPROTO,
			    "flow %u: datagram %llu: byte %zu is 0x%02x, 0x%02x was sent", f->id,
			    (unsigned long long)seq, j, d[j], want[j]);
	}
	s = &f->slot[seq % cl->inflight];
	if (!s->busy || s->seq != seq) {
		/* A second echo of one matched fails the run (a server that sends a datagram
		 * back twice would pass for a clean run); else it was given up on already, or
		 * is older than the slot's last match, and counts late. */
		if (s->done && s->done_seq == seq)
			return fail(t, -EPROTO, "flow %u: datagram %llu came back twice", f->id,
				    (unsigned long long)seq);
		t->late += in_window(cl, now);
		return 0;
	}
	s->busy = false;
	s->done = true;
	s->done_seq = seq;
	f->busy--;
	t->rx_all++;
	t->msgs_all++;
	if (in_window(cl, now)) {
		t->msgs++;
		f->last_win_ns = now;
		bench_hist_add(&t->lat, now - s->sent_ns);
	}
	return 0;
}

static int
flow_read(struct uthread *t, struct uflow *f)
{
	struct uclient *cl = t->cl;

	for (;;) {
		int n;
		uint64_t now;

		for (unsigned i = 0; i < BATCH; i++) {
			t->iov[i].iov_base = t->rx + (size_t)i * (cl->size + 1);
			t->iov[i].iov_len = cl->size + 1;
			memset(&t->m[i].msg_hdr, 0, sizeof(t->m[i].msg_hdr));
			t->m[i].msg_hdr.msg_iov = &t->iov[i];
			t->m[i].msg_hdr.msg_iovlen = 1;
		}
		n = recvmmsg(f->fd, t->m, BATCH, MSG_DONTWAIT, NULL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return 0;
			return fail(t, -errno, "flow %u: recvmmsg: %s%s", f->id, strerror(errno),
				    errno == ECONNREFUSED ? " (no UDP echo server on that port?)"
							  : "");
		}
		now = bench_now_ns();
		for (int i = 0; i < n; i++)
			if (on_dgram(t, f, t->iov[i].iov_base, t->m[i].msg_len,
				     t->m[i].msg_hdr.msg_flags, now) < 0)
				return t->err;
		if ((unsigned)n < BATCH)
			return 0;
	}
}

/* Give up on datagrams older than LOSS_MS, and refill. A flow with nothing in flight is
 * tried again here too: its last sendmmsg found no room (EAGAIN, ENOBUFS), and with no echo
 * to come nothing else would send for it again. */
static void
scan_lost(struct uthread *t, uint64_t now)
{
	struct uclient *cl = t->cl;

	if (now - t->last_scan < 1000000)
		return;
	t->last_scan = now;
	for (unsigned i = 0; i < t->nflows; i++) {
		struct uflow *f = &t->flows[i];
		bool freed = false;

		for (unsigned k = 0; k < cl->inflight; k++) {
			struct uslot *s = &f->slot[k];
			if (s->busy && now - s->sent_ns > (uint64_t)LOSS_MS * 1000000) {
				s->busy = false;
				f->busy--;
				t->lost += in_window(cl, now);
				t->lost_all++;
				freed = true;
			}
		}
		if (freed || f->busy == 0)
			flow_send(t, f);
	}
}

static int
thread_setup(struct uthread *t)
{
	struct uclient *cl = t->cl;
	const struct bench_cfg *cfg = cl->cfg;

	t->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (t->epfd < 0)
		return fail(t, -errno, "epoll_create1: %s", strerror(errno));
	t->rx = malloc((size_t)BATCH * (cl->size + 1));
	t->flows = calloc(t->nflows ? t->nflows : 1, sizeof(*t->flows));
	for (unsigned i = 0; t->flows && i < t->nflows; i++)
		t->flows[i].fd = -1; /* before any failure: the end closes what is >= 0 */
	if (!t->rx || !t->flows)
		return fail(t, -ENOMEM, "out of memory");
	for (unsigned i = 0; i < t->nflows; i++) {
		struct uflow *f = &t->flows[i];
		struct epoll_event ev = { .events = EPOLLIN | EPOLLET, .data.ptr = f };

		f->id = t->first_id + i;
		f->slot = calloc(cl->inflight, sizeof(*f->slot));
		if (!f->slot)
			return fail(t, -ENOMEM, "out of memory");
		f->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (f->fd < 0)
			return fail(t, -errno, "socket: %s (raise ulimit -n?)", strerror(errno));
		if (connect(f->fd, (const struct sockaddr *)&cfg->addr, sizeof(cfg->addr)) < 0)
			return fail(t, -errno, "connect (UDP) to %s:%u: %s",
				    inet_ntoa(cfg->addr.sin_addr), ntohs(cfg->addr.sin_port),
				    strerror(errno));
		if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, f->fd, &ev) < 0)
			return fail(t, -errno, "epoll_ctl: %s", strerror(errno));
	}
	return 0;
}

static void *
client_thread(void *arg)
{
	struct uthread *t = arg;
	struct uclient *cl = t->cl;
	struct epoll_event ev[MAXEV];

	if (t->cpu >= 0)
		bench_pin(t->cpu);
	thread_setup(t);
	pthread_barrier_wait(&cl->bar); /* everyone set up */
	pthread_barrier_wait(&cl->bar); /* the window is set */
	for (unsigned i = 0; i < t->nflows && !t->err; i++)
		flow_send(t, &t->flows[i]);
	while (!t->err) {
		uint64_t now = bench_now_ns(), left;
		int k;

		bench_tcpu_tick(&t->tcpu, now, cl->t_start);
		if (now >= cl->t_end)
			break;
		left = (cl->t_end - now) / 1000000 + 1;
		k = epoll_wait(t->epfd, ev, MAXEV,
			       bench_poll_wait_ms(&t->wait, now, left < 10 ? (int)left : 10));
		if (k < 0 && errno != EINTR) {
			fail(t, -errno, "epoll_wait: %s", strerror(errno));
			break;
		}
		bench_poll_waited(&t->wait, now, k);
		for (int i = 0; i < k && !t->err; i++) {
			struct uflow *f = ev[i].data.ptr;
			if (flow_read(t, f) == 0)
				flow_send(t, f);
		}
		scan_lost(t, bench_now_ns());
	}
	bench_tcpu_stop(&t->tcpu);
	if (!t->err)
		bench_window_done(cl->cfg, true); /* the end's CPU read before any close */
	for (unsigned i = 0; t->flows && i < t->nflows && !t->err; i++)
		t->stalled += bench_stalled(t->flows[i].last_win_ns, cl->t_start, cl->t_end);
	for (unsigned i = 0; t->flows && i < t->nflows; i++) {
		if (t->flows[i].fd >= 0)
			close(t->flows[i].fd);
		free(t->flows[i].slot);
	}
	if (t->epfd >= 0)
		close(t->epfd);
	free(t->flows);
	free(t->rx);
	return NULL;
}

int
bench_udp_client_run(const struct bench_cfg *cfg, struct bench_result *out)
{
	struct uclient cl = { .cfg = cfg, .size = cfg->size, .inflight = cfg->inflight };
	unsigned nt = cfg->threads, started = 0, id = 0;
	struct uthread *t;
	int r;

	memset(out, 0, sizeof(*out));
	if (cfg->size < 16 || cfg->size > 65507) {
		snprintf(out->why, sizeof(out->why),
			 "udp: --size must be 16..65507 (a datagram with its 8-byte number)");
		return -EINVAL;
	}
	cl.pat = malloc((size_t)PERIOD * cfg->size);
	t = aligned_alloc(64, sizeof(*t) * nt);
	if (!cl.pat || !t) {
		free(cl.pat);
		free(t);
		return -ENOMEM;
	}
	for (uint32_t s = 0; s < PERIOD; s++)
		for (uint32_t j = 0; j < cfg->size; j++)
			cl.pat[(size_t)s * cfg->size + j] =
				(uint8_t)(29 * s + 131 * j + (j >> 8) + 1);
	memset(t, 0, sizeof(*t) * nt);
	pthread_barrier_init(&cl.bar, NULL, nt + 1);
	for (unsigned i = 0; i < nt; i++) {
		t[i].cl = &cl;
		t[i].epfd = -1;
		t[i].wait.poll_ns = (uint64_t)cfg->client_poll_us * 1000;
		t[i].cpu = cfg->pin ? bench_cpu_for(cfg, cfg->client_cpu0 + i) : -1;
		t[i].nflows = cfg->conns / nt + (i < cfg->conns % nt);
		t[i].first_id = id;
		id += t[i].nflows;
	}
	for (; started < nt; started++)
		if ((r = -pthread_create(&t[started].tid, NULL, client_thread, &t[started])) < 0)
			break;
	if (started < nt) {
		fprintf(stderr, "keel-bench: pthread_create: %s\n", strerror(-r));
		exit(1);
	}
	bench_window_open(cfg, &cl.bar, &cl.t_start, &cl.t_end);
	r = 0;
	for (unsigned i = 0; i < nt; i++) {
		pthread_join(t[i].tid, NULL);
		out->msgs += t[i].msgs;
		out->bytes += t[i].msgs * cfg->size;
		out->msgs_all += t[i].msgs_all;
		out->errors += t[i].errors;
		out->tx_all += t[i].tx_all;
		out->rx_all += t[i].rx_all;
		out->lost += t[i].lost;
		out->lost_all += t[i].lost_all;
		out->late += t[i].late;
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
	free(cl.pat);
	return r;
}

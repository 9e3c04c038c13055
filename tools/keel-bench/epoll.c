// SPDX-License-Identifier: MIT
/*
 * keel-bench epoll backend, server side: a byte-echo server written the way a careful
 * epoll program is, so that keel is compared with a good baseline and not a straw man.
 *
 *   - one thread per shard, pinned, each with its own SO_REUSEPORT listener and its own
 *     epoll instance: the kernel spreads connections, threads share nothing;
 *   - edge-triggered (EPOLLET) for the listener and for connections, registered once with
 *     EPOLLIN|EPOLLOUT|EPOLLRDHUP: no epoll_ctl per message;
 *   - non-blocking sockets with TCP_NODELAY;
 *   - reads a batch into a per-thread buffer until the buffer is full (256 KiB), EAGAIN, a
 *     short read (epoll(7): a stream socket that returns fewer bytes than asked for has
 *     been drained; the next arrival raises a new edge) or EOF, then echoes the batch with
 *     one sendmsg (MSG_NOSIGNAL), and reads the next batch only when the socket took all of
 *     it and the last read did not drain;
 *   - backpressure without a copy: when the socket takes part of a batch, the read buffer
 *     with the rest goes to the connection (the thread takes a spare: up to 8 are kept) and
 *     the connection is not read until the socket took the rest, sent from where it lies
 *     at the connection's EPOLLOUT edge. No byte is copied and a connection holds at most
 *     one batch. Until the sixty-fourth session the rest was copied into a per-connection
 *     1 MiB buffer and the connection read on, a new batch copied whole when the socket
 *     had not taken the old rest (0.6 % and 10.5 % of the bytes of two 1 s stream runs of 1 MiB
 *     chunks copied: work keel, which sends the received buffers, does not do; a fairness
 *     review); the report counts these sends and bytes (held, held_bytes);
 *   - --busy-poll-us N (default 0): after the last event, epoll_wait with a zero timeout
 *     for N us before blocking, the policy of keel's --idle-poll-us, so that both servers
 *     can be compared blocking or spinning alike;
 *   - --gather-us N (default 0): keel's wait coalescing (--wait-coalesce-us) under the same
 *     policy code (core/coalesce.c), so that both servers can be compared gathering alike.
 *     epoll has no minimum wait (io_uring's min_wait_usec), so a gathering sleep is a
 *     clock_nanosleep of N us, without timer slack, before the blocking epoll_wait, which
 *     then returns at once with what arrived meanwhile: one system call more per sleep than
 *     keel's, and no early end when many are ready. The policy and the skip below count in
 *     keel's unit, completions: keel's pass reaps a receive's and a send's per message
 *     where epoll_wait returns one ready descriptor, so each event counts two (EV_UNITS).
 *     So the policy's floor (64 per 10 ms epoch) is met at the same message rate as keel's
 *     where a ready descriptor is one message (pingpong; not a stream's or a UDP batch's),
 *     and a sleep is skipped when the last epoll_wait's events count as many as end keel's
 *     gathering early (KEEL__CO_GATHER, 64: 32 events; keel's own early end also counts
 *     the sends its sleep submits). Until the forty-fourth session each event counted one,
 *     which met the floor only at twice keel's message rate and skipped only at 64 events
 *     (a review of the measurement code);
 *   - --defer-writes (the default; --no-defer-writes: each reply as its connection is read,
 *     conn_io): a wait's replies are sent after all of its events are
 *     read, as Redis does, from a reply buffer per connection (16 KiB, doubled up to 256
 *     KiB by a connection that fills it: conn_io_defer);
 *   - UDP on the same port: a SO_REUSEPORT socket per thread in the same epoll instance,
 *     datagrams read with recvmmsg and echoed with sendmmsg in batches (udp.c).
 * No allocation per message. Every epoll_wait, read, sendmsg, accept4 and close a server
 * thread makes is counted (server_syscalls_per_msg).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "../../core/coalesce.h"
#include "backend.h"
#include "bench.h"

#define TBUF     (256u * 1024u)
#define EV_UNITS 2u /* keel's completions per ready descriptor: a receive's and a send's */
#define SPARES   8u /* read buffers a thread keeps for connections that back up */
#define MAXEV    256
#define OCAP     (16u * 1024u) /* --defer-writes: a connection's first reply buffer */

struct sconn {
	int fd;
	uint8_t *pend; /* the read buffer it holds while backed up: unsent bytes [head, head + len)
			*/
	size_t head, len;
	struct sconn *prev, *next;
	/* --defer-writes: replies read in this wait's events, sent after all of them */
	uint8_t *out;                /* ocap bytes, from the first read */
	size_t ohead, olen, ocap;    /* unsent: [ohead, olen) */
	bool more;                   /* out filled up before the socket drained: read on after */
	struct sconn *dprev, *dnext; /* on the thread's list of those to send (dirty) */
};

struct sthread {
	pthread_t tid;
	struct bench_server *srv;
	int cpu, lfd, epfd, evfd, ufd;
	uint8_t *buf;
	uint8_t *spare[SPARES]; /* read buffers connections gave back */
	unsigned nspare;
	struct bench_udp_batch *ub;
	struct sconn conns; /* list head */
	struct sconn dirty; /* --defer-writes: connections with replies to send (dprev/dnext) */
	uint64_t syscalls, bytes_in, bytes_out, dgrams_in, dgrams_out, accepted, errors, cpu_ns;
	uint64_t sleeps, polls, gathered, recvs, sends, send_iovs, short_sends, held, held_bytes;
	clockid_t clock;
	bool started;
} __attribute__((aligned(64)));

struct bench_server {
	struct sthread *t;
	unsigned n;
	uint64_t busy_poll_ns;
	uint64_t gather_ns; /* --gather-us */
	bool gather_fixed;
	bool defer_writes; /* --defer-writes */
	_Atomic bool stop;
};

static const char syscalls_what[] =
	"epoll_wait+read+sendmsg+accept4+close+recvmmsg+sendmmsg+clock_nanosleep";

/* A read buffer: the spare one a connection gave back, or a new one. */
static uint8_t *
buf_get(struct sthread *t)
{
	return t->nspare ? t->spare[--t->nspare] : malloc(TBUF);
}

static void
buf_put(struct sthread *t, uint8_t *b)
{
	if (t->nspare < SPARES)
		t->spare[t->nspare++] = b;
	else
		free(b);
}

static void
conn_close(struct sthread *t, struct sconn *c)
{
	close(c->fd);
	t->syscalls++;
	c->prev->next = c->next;
	c->next->prev = c->prev;
	if (c->dnext) {
		c->dprev->dnext = c->dnext;
		c->dnext->dprev = c->dprev;
	}
	if (c->pend)
		buf_put(t, c->pend);
	free(c->out);
	free(c);
}

/* One sendmsg of @len bytes at @p. Returns what the socket took (0 on EAGAIN), or -1 when
 * the connection was closed. */
static ssize_t
conn_send(struct sthread *t, struct sconn *c, uint8_t *p, size_t len)
{
	struct iovec iov = { .iov_base = p, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	t->sends++;
	t->send_iovs++;
	do {
		n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
		t->syscalls++;
	} while (n < 0 && errno == EINTR);
	if (n < 0 && errno != EAGAIN) {
		if (errno != ECONNRESET && errno != EPIPE)
			t->errors++;
		conn_close(t, c);
		return -1;
	}
	if (n < 0)
		n = 0;
	if ((size_t)n < len)
		t->short_sends++;
	t->bytes_out += (uint64_t)n;
	return n;
}

/*
 * Echo what is readable. @events: the epoll events that brought us here. Returns false when
 * the connection was closed.
 *
 * Backpressure without a copy: when the socket takes only part of a batch, the thread's read
 * buffer, the rest still in it, goes to the connection, and the thread takes a spare one. The
 * connection is not read again until the socket took all of it: its EPOLLOUT edge brings us
 * back (an edge without EPOLLOUT finds the socket still full, and tcp_poll has then asked for
 * the wake-up that brings EPOLLOUT), and once the bytes are gone its buffer is given back and
 * reading goes on where it stopped. No byte is copied, and a connection holds at most one
 * batch (TBUF).
 */
static bool
conn_io(struct sthread *t, struct sconn *c, uint32_t events)
{
	ssize_t n;

	if (c->len) {
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return true;
		n = conn_send(t, c, c->pend + c->head, c->len);
		if (n < 0)
			return false;
		c->head += (size_t)n;
		c->len -= (size_t)n;
		if (c->len)
			return true;
		buf_put(t, c->pend);
		c->pend = NULL;
		c->head = 0;
	}
	for (;;) {
		size_t got = 0;
		bool drained = false, eof = false;

		while (got < TBUF) {
			n = read(c->fd, t->buf + got, TBUF - got);
			t->syscalls++;
			if (n > 0) {
				t->recvs++;
				got += (size_t)n;
				if (got < TBUF) {
					drained = true;
					break;
				}
				continue;
			}
			if (n == 0) {
				eof = true;
				break;
			}
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				drained = true;
				break;
			}
			if (errno != ECONNRESET)
				t->errors++;
			conn_close(t, c);
			return false;
		}
		t->bytes_in += got;
		if (got) {
			n = conn_send(t, c, t->buf, got);
			if (n < 0)
				return false;
			if ((size_t)n < got) {
				uint8_t *b = buf_get(t);

				if (!b) {
					t->errors++;
					conn_close(t, c);
					return false;
				}
				c->pend = t->buf;
				c->head = (size_t)n;
				c->len = got - (size_t)n;
				t->buf = b;
				t->held++;
				t->held_bytes += c->len;
			}
		}
		if (eof) {
			conn_close(t, c);
			return false;
		}
		if (c->len || drained)
			return true;
	}
}

/*
 * --defer-writes: as a Redis-style server does, the replies a wait's events produce are
 * sent after all of those events are handled, not one by one between the reads. A
 * connection reads into its own reply buffer (OCAP, 16 KiB, doubled up to TBUF by one that
 * fills it; nothing is copied: the echo is the bytes read) until it is full, EAGAIN, a
 * short read or EOF, and goes on the thread's dirty list; defer_flush sends each with one
 * sendmsg. A connection whose socket
 * took part of its replies is not read until its EPOLLOUT edge, as in conn_io.
 */
static void
dirty_add(struct sthread *t, struct sconn *c)
{
	if (c->dnext)
		return;
	c->dnext = &t->dirty;
	c->dprev = t->dirty.dprev;
	c->dprev->dnext = c;
	t->dirty.dprev = c;
}

static bool
conn_io_defer(struct sthread *t, struct sconn *c, uint32_t events)
{
	ssize_t n;

	if (c->olen > c->ohead && !c->dnext) {
		/* backed up: the rest of the last replies goes first */
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return true;
		n = conn_send(t, c, c->out + c->ohead, c->olen - c->ohead);
		if (n < 0)
			return false;
		c->ohead += (size_t)n;
		if (c->ohead < c->olen)
			return true;
		c->ohead = c->olen = 0;
	}
	if (!c->out) {
		/* Allocated at its first data, not at the EPOLLOUT edge every new connection
		 * gets: an idle connection (the connections mode holds many) holds none. */
		if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
			return true;
		c->out = malloc(OCAP);
		c->ocap = OCAP;
		if (!c->out) {
			t->errors++;
			conn_close(t, c);
			return false;
		}
	}
	c->more = false;
	for (;;) {
		if (c->olen == c->ocap && c->ocap < TBUF) {
			/* A connection that fills its buffer (a stream) reads in batches as
			 * large as conn_io's, so the mode costs it no more reads. */
			uint8_t *b = realloc(c->out, c->ocap * 2);

			if (b) {
				c->out = b;
				c->ocap *= 2;
			}
		}
		if (c->olen == c->ocap) {
			c->more = true;
			break;
		}
		n = read(c->fd, c->out + c->olen, c->ocap - c->olen);
		t->syscalls++;
		if (n > 0) {
			t->recvs++;
			t->bytes_in += (uint64_t)n;
			c->olen += (size_t)n;
			if (c->olen < c->ocap)
				break; /* a short read: drained */
			continue;
		}
		if (n == 0) {
			/* EOF: what it sent before goes back first (conn_io's order) */
			if (c->olen > c->ohead &&
			    conn_send(t, c, c->out + c->ohead, c->olen - c->ohead) < 0)
				return false; /* closed */
			conn_close(t, c);
			return false;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			break;
		if (errno != ECONNRESET)
			t->errors++;
		conn_close(t, c);
		return false;
	}
	if (c->olen > c->ohead)
		dirty_add(t, c);
	return true;
}

/* --defer-writes: send every dirty connection's replies, after a wait's events. */
static void
defer_flush(struct sthread *t)
{
	struct sconn *c;

	while ((c = t->dirty.dnext) != &t->dirty) {
		ssize_t n;

		t->dirty.dnext = c->dnext;
		c->dnext->dprev = &t->dirty;
		c->dnext = c->dprev = NULL;
		n = conn_send(t, c, c->out + c->ohead, c->olen - c->ohead);
		if (n < 0)
			continue; /* closed */
		c->ohead += (size_t)n;
		if (c->ohead < c->olen) {
			/* backed up: its EPOLLOUT edge sends the rest, from where it lies (the
			 * report's backpressure line counts it, as conn_io's) */
			t->held++;
			t->held_bytes += c->olen - c->ohead;
			continue;
		}
		c->ohead = c->olen = 0;
		/* Its buffer filled before the socket drained: no new edge will come for what
		 * is left, so read on now (it joins the list's tail again if it has more). */
		if (c->more)
			(void)conn_io_defer(t, c, 0);
	}
}

static void
do_accept(struct sthread *t)
{
	for (;;) {
		struct epoll_event ev;
		struct sconn *c;
		int one = 1, fd;

		fd = accept4(t->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		t->syscalls++;
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN)
				t->errors++; /* EMFILE: raise the limit (ulimit -n) */
			return;
		}
		if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
			t->errors++; /* served on, with Nagle's delays: the run reports errors */
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			t->errors++;
			continue;
		}
		c->fd = fd;
		c->next = t->conns.next;
		c->prev = &t->conns;
		c->next->prev = c;
		t->conns.next = c;
		ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
		ev.data.ptr = c;
		if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			t->errors++;
			conn_close(t, c);
			continue;
		}
		t->accepted++;
	}
}

static void *
server_thread(void *arg)
{
	struct sthread *t = arg;
	struct epoll_event ev[MAXEV];
	uint64_t gather = t->srv->gather_ns;
	struct bench_poll_wait pw = { .poll_ns = t->srv->busy_poll_ns };
	struct timespec gts = { .tv_sec = (time_t)(gather / 1000000000u),
				.tv_nsec = (long)(gather % 1000000000u) };
	struct keel__coalesce co;
	uint64_t units = 0; /* the last epoll_wait's events in keel's unit (EV_UNITS) */
	bool defer = t->srv->defer_writes;
	int n;

	keel__coalesce_init(&co, gather, t->srv->gather_fixed, bench_now_ns());
	/* A gathering sleep as exact as io_uring's minimum wait: no timer slack (50 us by
	 * default, which would make a 10 us sleep up to 60). */
	if (gather && prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL) < 0)
		t->errors++;
	while (!atomic_load_explicit(&t->srv->stop, memory_order_acquire)) {
		/* keel's loop policy: poll until idle for --busy-poll-us, then block. */
		uint64_t now = pw.poll_ns ? bench_now_ns() : 0;
		int ms = bench_poll_wait_ms(&pw, now, -1);

		if (ms && units < KEEL__CO_GATHER && keel__coalesce_on(&co)) {
			clock_nanosleep(CLOCK_MONOTONIC, 0, &gts, NULL);
			t->syscalls++;
			t->gathered++;
		}
		n = epoll_wait(t->epfd, ev, MAXEV, ms);
		t->syscalls++;
		units = n > 0 ? (uint64_t)n * EV_UNITS : 0;
		if (ms)
			keel__coalesce_slept(&co);
		/* The same counts keel's loop gives the policy: a pass's arrivals. */
		if (gather)
			keel__coalesce_pass(&co, bench_now_ns(), units);
		bench_poll_waited(&pw, now, n);
		if (n <= 0)
			continue;
		for (int i = 0; i < n; i++) {
			if (ev[i].data.ptr == &t->lfd)
				do_accept(t);
			else if (ev[i].data.ptr == &t->ufd)
				bench_udp_echo(t->ufd, t->ub, &t->syscalls, &t->dgrams_in,
					       &t->dgrams_out, &t->errors);
			else if (ev[i].data.ptr == &t->evfd)
				;
			else if (defer)
				conn_io_defer(t, ev[i].data.ptr, ev[i].events);
			else
				conn_io(t, ev[i].data.ptr, ev[i].events);
		}
		if (defer)
			defer_flush(t);
	}
	while (t->conns.next != &t->conns)
		conn_close(t, t->conns.next);
	t->polls = pw.polls;
	t->sleeps = pw.sleeps;
	t->cpu_ns = bench_thread_cpu_ns();
	return NULL;
}

static int
listener(const struct sockaddr_in *addr, uint16_t *port)
{
	struct sockaddr_in a = *addr;
	socklen_t len = sizeof(a);
	int one = 1, fd, r;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	a.sin_port = htons(*port);
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 4096) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	*port = ntohs(a.sin_port);
	return fd;
}

static int serve_stop(struct bench_server *s, struct bench_server_stats *out);

static int
serve_start(const struct bench_cfg *cfg, uint16_t *port, struct bench_server **out)
{
	struct bench_server *s = calloc(1, sizeof(*s));
	uint16_t p = ntohs(cfg->addr.sin_port);
	int r = -ENOMEM;

	if (!s)
		return -ENOMEM;
	s->n = cfg->shards;
	s->busy_poll_ns = (uint64_t)cfg->busy_poll_us * 1000;
	s->gather_ns = (uint64_t)cfg->gather_us * 1000;
	s->gather_fixed = cfg->gather_fixed;
	s->defer_writes = cfg->defer_writes;
	s->t = aligned_alloc(64, sizeof(*s->t) * s->n);
	if (!s->t) {
		free(s);
		return -ENOMEM;
	}
	memset(s->t, 0, sizeof(*s->t) * s->n);
	for (unsigned i = 0; i < s->n; i++) {
		struct sthread *t = &s->t[i];
		struct epoll_event ev;

		t->srv = s;
		t->lfd = t->epfd = t->evfd = t->ufd = -1;
		t->conns.next = t->conns.prev = &t->conns;
		t->dirty.dnext = t->dirty.dprev = &t->dirty;
		t->cpu = cfg->pin ? bench_cpu_for(cfg, i) : -1;
		t->buf = malloc(TBUF);
		t->ub = bench_udp_batch_new(cfg->udp_gso);
		if (!t->buf || !t->ub) {
			r = -ENOMEM;
			goto err;
		}
		/* A fixed port another program holds too is refused, as keel's listener does;
		 * an ephemeral one is checked for UDP, which binds the number TCP picked. */
		if (i == 0 && p && (r = bench_port_free(&cfg->addr, p, SOCK_STREAM)) < 0)
			goto err;
		r = listener(&cfg->addr, &p);
		if (r < 0)
			goto err;
		t->lfd = r;
		if (i == 0 && (r = bench_port_free(&cfg->addr, p, SOCK_DGRAM)) < 0)
			goto err;
		t->epfd = epoll_create1(EPOLL_CLOEXEC);
		t->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (t->epfd < 0 || t->evfd < 0) {
			r = -errno;
			goto err;
		}
		ev.events = EPOLLIN | EPOLLET;
		ev.data.ptr = &t->lfd;
		if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->lfd, &ev) < 0) {
			r = -errno;
			goto err;
		}
		ev.events = EPOLLIN;
		ev.data.ptr = &t->evfd;
		if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->evfd, &ev) < 0) {
			r = -errno;
			goto err;
		}
		r = bench_udp_socket(&cfg->addr, p);
		if (r < 0)
			goto err;
		t->ufd = r;
		ev.events = EPOLLIN | EPOLLET;
		ev.data.ptr = &t->ufd;
		if (epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->ufd, &ev) < 0) {
			r = -errno;
			goto err;
		}
	}
	for (unsigned i = 0; i < s->n; i++) {
		pthread_attr_t attr;
		cpu_set_t set;

		/* Pinned from its creation: it never runs, nor shows, elsewhere. */
		pthread_attr_init(&attr);
		if (s->t[i].cpu >= 0) {
			CPU_ZERO(&set);
			CPU_SET(s->t[i].cpu, &set);
			pthread_attr_setaffinity_np(&attr, sizeof(set), &set);
		}
		r = -pthread_create(&s->t[i].tid, &attr, server_thread, &s->t[i]);
		pthread_attr_destroy(&attr);
		if (r == -EINVAL && s->t[i].cpu >= 0)
			/* The affinity given at creation: a CPU offline, missing or outside the
			 * process's mask (the bare EINVAL named none of it). */
			fprintf(stderr,
				"keel-bench: the epoll server's thread %u cannot be pinned to CPU "
				"%d (offline, missing, or outside this process's CPUs): give "
				"--cpuset a list of CPUs it may use, or --no-pin\n",
				i, s->t[i].cpu);
		if (r < 0)
			goto err;
		s->t[i].started = true;
		r = -pthread_getcpuclockid(s->t[i].tid, &s->t[i].clock);
		if (r < 0)
			goto err;
	}
	*port = p;
	*out = s;
	return 0;
err:
	serve_stop(s, NULL);
	return r;
}

static int
serve_stop(struct bench_server *s, struct bench_server_stats *out)
{
	struct bench_server_stats st = { .syscalls_what = syscalls_what };
	uint64_t one = 1;

	atomic_store_explicit(&s->stop, true, memory_order_release);
	for (unsigned i = 0; i < s->n; i++)
		if (s->t[i].started && write(s->t[i].evfd, &one, sizeof(one)) < 0)
			return -errno;
	for (unsigned i = 0; i < s->n; i++) {
		struct sthread *t = &s->t[i];
		if (t->started)
			pthread_join(t->tid, NULL);
		st.cpu_ns += t->cpu_ns;
		st.syscalls += t->syscalls;
		st.bytes_in += t->bytes_in;
		st.bytes_out += t->bytes_out;
		st.dgrams_in += t->dgrams_in;
		st.dgrams_out += t->dgrams_out;
		st.sleeps += t->sleeps;
		st.polls += t->polls;
		st.gathered += t->gathered;
		st.recvs += t->recvs;
		st.sends += t->sends;
		st.send_iovs += t->send_iovs;
		st.short_sends += t->short_sends;
		st.held += t->held;
		st.held_bytes += t->held_bytes;
		st.accepted += t->accepted;
		st.errors += t->errors;
		bench_udp_batch_calls(t->ub, &st.udp_recv_calls, &st.udp_send_calls);
		if (t->lfd >= 0)
			close(t->lfd);
		if (t->epfd >= 0)
			close(t->epfd);
		if (t->evfd >= 0)
			close(t->evfd);
		if (t->ufd >= 0)
			close(t->ufd);
		free(t->buf);
		while (t->nspare)
			free(t->spare[--t->nspare]);
		bench_udp_batch_free(t->ub);
	}
	free(s->t);
	free(s);
	if (out)
		*out = st;
	return 0;
}

static unsigned
server_clocks(struct bench_server *s, clockid_t *out, unsigned max)
{
	unsigned n = 0;

	for (unsigned i = 0; i < s->n && n < max; i++)
		out[n++] = s->t[i].clock;
	return n;
}

int bench__epoll_client_run(const struct bench_cfg *cfg, struct bench_result *out);

const struct bench_backend bench_backend_epoll = {
	.name = "epoll",
	.serve_start = serve_start,
	.serve_stop = serve_stop,
	.server_clocks = server_clocks,
	.client_run = bench__epoll_client_run,
};

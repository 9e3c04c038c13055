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
 *   - reads a batch into a per-thread buffer until the buffer is full (256 KiB, less when
 *     the connection's pending bytes would pass 1 MiB), EAGAIN, a short read (epoll(7): a
 *     stream socket that returns fewer bytes than asked for has been drained; the next
 *     arrival raises a new edge) or EOF, then echoes the batch with one call, and reads
 *     the next batch only when the socket took all of it and the last read did not drain;
 *   - writev batching: bytes left over from an earlier partial write and the new batch go
 *     out in one sendmsg (writev with MSG_NOSIGNAL); only what the socket did not take is
 *     copied, into a per-connection buffer allocated once on the first partial write;
 *   - backpressure: a connection with any bytes pending stops being read until its next
 *     edge (EPOLLOUT as the socket drains, or EPOLLIN as more arrives); each such pass
 *     reads at most what keeps it within 1 MiB pending, so a connection never holds more
 *     than 1 MiB and, once it does, is not read until the socket took some of it.
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
#define PEND_CAP (1024u * 1024u)
#define MAXEV    256

struct sconn {
	int fd;
	uint8_t *pend; /* bytes the socket has not taken yet, [head, head + len) */
	size_t head, len;
	struct sconn *prev, *next;
};

struct sthread {
	pthread_t tid;
	struct bench_server *srv;
	int cpu, lfd, epfd, evfd, ufd;
	uint8_t *buf;
	struct bench_udp_batch *ub;
	struct sconn conns; /* list head */
	uint64_t syscalls, bytes_in, bytes_out, dgrams_in, dgrams_out, accepted, errors, cpu_ns;
	uint64_t sleeps, polls, gathered, recvs, sends, send_iovs, short_sends;
	clockid_t clock;
	bool started;
} __attribute__((aligned(64)));

struct bench_server {
	struct sthread *t;
	unsigned n;
	uint64_t busy_poll_ns;
	uint64_t gather_ns; /* --gather-us */
	bool gather_fixed;
	_Atomic bool stop;
};

static const char syscalls_what[] =
	"epoll_wait+read+sendmsg+accept4+close+recvmmsg+sendmmsg+clock_nanosleep";

static void
conn_close(struct sthread *t, struct sconn *c)
{
	close(c->fd);
	t->syscalls++;
	c->prev->next = c->next;
	c->next->prev = c->prev;
	free(c->pend);
	free(c);
}

/* Keep @n bytes of @src that the socket did not take. */
static int
pend_append(struct sconn *c, const uint8_t *src, size_t n)
{
	if (!c->pend) {
		c->pend = malloc(PEND_CAP);
		if (!c->pend)
			return -ENOMEM;
	}
	if (c->head + c->len + n > PEND_CAP) {
		memmove(c->pend, c->pend + c->head, c->len);
		c->head = 0;
	}
	memcpy(c->pend + c->head + c->len, src, n);
	c->len += n;
	return 0;
}

/* Echo what is readable. Returns false when the connection was closed. */
static bool
conn_io(struct sthread *t, struct sconn *c)
{
	for (;;) {
		size_t want = PEND_CAP - c->len < TBUF ? PEND_CAP - c->len : TBUF;
		size_t got = 0;
		bool drained = false, eof = false;
		struct iovec iov[2];
		struct msghdr mh;
		ssize_t n;

		while (got < want) {
			n = read(c->fd, t->buf + got, want - got);
			t->syscalls++;
			if (n > 0) {
				t->recvs++;
				got += (size_t)n;
				if (got < want) {
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
		if (c->len + got) {
			memset(&mh, 0, sizeof(mh));
			iov[0].iov_base = c->pend ? c->pend + c->head : NULL;
			iov[0].iov_len = c->len;
			iov[1].iov_base = t->buf;
			iov[1].iov_len = got;
			mh.msg_iov = c->len ? iov : iov + 1;
			mh.msg_iovlen = c->len ? (got ? 2 : 1) : 1;
			t->sends++;
			t->send_iovs += mh.msg_iovlen;
			do {
				n = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
				t->syscalls++;
			} while (n < 0 && errno == EINTR);
			if (n < 0 && errno != EAGAIN) {
				if (errno != ECONNRESET && errno != EPIPE)
					t->errors++;
				conn_close(t, c);
				return false;
			}
			if (n < 0)
				n = 0;
			if ((size_t)n < c->len + got)
				t->short_sends++;
			t->bytes_out += (uint64_t)n;
			if ((size_t)n >= c->len) {
				n -= (ssize_t)c->len;
				c->head = 0;
				c->len = 0;
				if ((size_t)n < got &&
				    pend_append(c, t->buf + n, got - (size_t)n)) {
					t->errors++;
					conn_close(t, c);
					return false;
				}
			} else {
				c->head += (size_t)n;
				c->len -= (size_t)n;
				if (got && pend_append(c, t->buf, got)) {
					t->errors++;
					conn_close(t, c);
					return false;
				}
			}
		}
		if (eof) {
			conn_close(t, c);
			return false;
		}
		/* The socket is full: its EPOLLOUT edge brings us back, and we read on then. */
		if (c->len)
			return true;
		if (drained)
			return true;
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
			else if (ev[i].data.ptr != &t->evfd)
				conn_io(t, ev[i].data.ptr);
		}
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

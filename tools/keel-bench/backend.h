/* SPDX-License-Identifier: MIT */
/*
 * keel-bench network modes: the interface a backend implements.
 *
 * The harness (net.c) parses options, picks a backend by --backend, starts an in-process
 * server when no --port is given, runs the client and prints the table or the JSON. A
 * backend moves bytes: a server that echoes every byte it reads back to its sender, and a
 * client that drives the wire protocol (proto.c) for one mode and fills a bench_result.
 *
 * Wire protocol (docs/bench.md): framed modes (pingpong, throughput, connections) send
 * messages of a 4-byte big-endian length (= --size) and --size payload bytes; stream sends
 * unframed chunks of --size bytes. The server never parses: it echoes bytes unchanged, so
 * one byte-echo server (keel-echo, `keel-bench serve`) serves every mode. Every byte the
 * client sends comes from a periodic pattern (bench_pattern) and every byte echoed back is
 * compared with it; a difference is an error, never a counted message.
 */
#ifndef KEEL_BENCH_BACKEND_H
#define KEEL_BENCH_BACKEND_H

#include <keel/opts.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

enum bench_mode {
	BENCH_PINGPONG,    /* one message in flight per connection */
	BENCH_THROUGHPUT,  /* --inflight messages in flight per connection */
	BENCH_STREAM,      /* unframed bytes, --inflight chunks of --size in flight */
	BENCH_CONNECTIONS, /* open+round trip+close cycles beside held and idle conns */
	BENCH_UDP,         /* datagrams echoed, --inflight outstanding per socket (udp.c) */
};

/* Bytes of a UDP datagram's sequence number (big-endian, at its start). */
#define BENCH_UDP_HDR 8u

/* Bytes of a framed message's length field. */
#define BENCH_HDR 4u

/** The run's parameters, read-only to backends. */
struct bench_cfg {
	enum bench_mode mode;
	struct sockaddr_in addr; /* server: bind address; client: where to connect */
	uint32_t size;           /* payload bytes per message (stream: bytes per chunk) */
	uint32_t inflight;       /* messages (stream: chunks) in flight per connection */
	uint32_t conns;          /* active connections (connections mode: latency conns) */
	uint32_t idle;           /* connections mode: idle connections held open */
	uint32_t churn;          /* connections mode: open/close loops per client thread */
	uint32_t threads;        /* client threads */
	uint32_t shards;         /* server threads (one per core, SO_REUSEPORT) */
	uint64_t warmup_ns;      /* run, but do not count */
	uint64_t seconds_ns;     /* the measured window */
	bool pin;                /* pin threads (bench_cpu_for) */
	uint32_t client_cpu0;    /* client thread i takes CPU slot client_cpu0 + i */
	struct keel_cpuset cpus; /* --cpuset: the CPUs slot k means, in order; else CPU k */
	bool cpus_given;
	/* --map with the keel server in this process: its shards' CPUs, which the runtime
	 * takes from the map (not from slots); @cpus then holds the CPUs it leaves free, for
	 * the client's slots (net.c, map_place). */
	struct keel_cpuset map_cpus;
	bool map_given;
	uint32_t busy_poll_us;      /* epoll server: epoll_wait(0) this long before blocking */
	uint32_t gather_us;         /* epoll server: sleep this long before a blocking
				     * epoll_wait when keel's coalescing policy says so */
	bool gather_fixed;          /* ... always, no trials (--gather-fixed) */
	bool defer_writes;          /* epoll server: a wait's replies sent after all its events
				       (--defer-writes) */
	bool udp_gso;               /* epoll server: UDP echoes with UDP_SEGMENT (--udp-gso) */
	int steer;                  /* keel server: enum keel_steer (--steer; default hash, as
				     * the epoll server's SO_REUSEPORT group places flows) */
	uint32_t client_poll_us;    /* epoll and udp clients: epoll_wait(0) this long after
				     * the last event before blocking (--client-poll-us) */
	const struct keel_opts *rt; /* runtime options for keel runtimes in this process */
	/* Called once by client_run, from the calling thread, when the window is known (the
	 * harness samples CPU clocks at its edges). NULL: nobody asked. */
	void (*on_window)(void *arg, uint64_t t_start, uint64_t t_end);
	/* Called by each client thread (or shard) past the window's end, before it closes its
	 * connections: whether the harness has read the clocks at the window's end (with
	 * @wait, once it has), so that the servers' work of closing them (1,000 in pp1000) is
	 * never counted in the window, however late the sampler woke. NULL: nobody asked.
	 * bench_window_done calls it. */
	bool (*on_window_end)(void *arg, bool wait);
	void *window_arg;
};

/* A client thread is past the window's end: whether the end's clocks were read (true when
 * nobody reads them); with @wait, returns once they were. */
bool bench_window_done(const struct bench_cfg *cfg, bool wait);

/* The CPU of thread slot @k: the k-th CPU of --cpuset (wrapping), or k modulo the CPUs
 * online. */
int bench_cpu_for(const struct bench_cfg *cfg, unsigned k);

/* Latency histogram: log-linear buckets, 32 per power of two (about 3% wide). */
#define BENCH_HIST_BUCKETS 1920
struct bench_hist {
	uint64_t count;
	uint64_t max_ns;
	uint64_t b[BENCH_HIST_BUCKETS];
};

/** What a client run measured. Counters cover the measured window unless said. */
struct bench_result {
	uint64_t msgs;         /* messages (stream: whole chunks) echoed back and verified */
	uint64_t bytes;        /* bytes of those messages: msgs * (size + 4); stream: echoed */
	uint64_t msgs_all;     /* every message completed, warmup and set-up included */
	uint64_t cycles;       /* connections mode: open+round trip+close cycles */
	uint64_t window_ns;    /* the measured window */
	uint64_t errors;       /* resets, short connects...: any is a failed run */
	uint64_t tx_all;       /* bytes (udp: datagrams) sent over the whole run */
	uint64_t rx_all;       /* bytes (udp: datagrams) echoed back and verified, whole run */
	uint64_t lost;         /* udp: datagrams given up on (no echo within the loss timeout),
				* in the window */
	uint64_t lost_all;     /* udp: ... over the whole run (what tx_all - rx_all holds) */
	uint64_t late;         /* udp: echoes that came after their datagram was given up on */
	uint64_t polls;        /* epoll and udp clients: epoll_wait(0) calls (--client-poll-us) */
	uint64_t sleeps;       /* epoll and udp clients: epoll_waits that could block */
	uint64_t stalled;      /* sending connections (udp: flows) that got no echo in the
				* second half of the window (bench_stalled: a server that
				* stopped answering one, or a grossly unfair one): the rate
				* does not show them; compare.sh fails such a run */
	struct bench_hist lat; /* per-message latency (pingpong, throughput, held conns) */
	double client_thread_max; /* the busiest client thread's share of a core over the
				   * window (bench_tcpu); 0: not measured */
	char why[256];            /* first error, for a person */
};

/* A client thread's CPU over the window, read by the thread itself: a sampler cannot read
 * the clock of a thread that has ended, and the clients' threads end with the window.
 * bench_tcpu_tick at each pass of the thread's loop (the first pass at or after the
 * window's start reads the clock), bench_tcpu_stop at its end. */
struct bench_tcpu {
	uint64_t start, end;   /* the thread's CPU clock */
	uint64_t wall0, wall1; /* CLOCK_MONOTONIC at the same two reads */
	bool started, stopped;
};
void bench_tcpu_tick(struct bench_tcpu *c, uint64_t now, uint64_t t_start);
void bench_tcpu_stop(struct bench_tcpu *c);
/* *@max = the larger of it and the share of a core @c's thread used between its two reads,
 * at most 1 (their edges are a loop pass wide); a thread whose reads span less than half the
 * window of @window_ns (it started late, or stopped early) is not counted. */
void bench_tcpu_max(double *max, const struct bench_tcpu *c, uint64_t window_ns);

/** What a server did over its whole life (start to stop). */
struct bench_server_stats {
	uint64_t cpu_ns;           /* user+system CPU of the server threads (RUSAGE_THREAD) */
	uint64_t syscalls;         /* I/O syscalls, counted by the backend (see syscalls_what) */
	const char *syscalls_what; /* "epoll_wait+read+write...", "io_uring_enter" */
	uint64_t sleeps;           /* waits that blocked in the kernel (epoll_wait -1, keel) */
	uint64_t polls;            /* epoll: epoll_wait(0) calls of --busy-poll-us */
	uint64_t gathered;         /* sleeps that gathered arrivals first (keel: coalesced, its
				    * --wait-coalesce-us; epoll: --gather-us) */
	uint64_t bytes_in;         /* TCP bytes read from clients */
	uint64_t bytes_out;        /* TCP bytes written back (keel: accepted by keel_conn_send) */
	uint64_t dgrams_in;        /* UDP datagrams received */
	uint64_t dgrams_out;       /* UDP datagrams sent back (keel: accepted by keel_udp_send) */
	uint64_t accepted;         /* connections accepted */
	uint64_t errors;           /* connection errors other than a client's close or reset */
	/* TCP receives and sends (keel: receive completions with data, and send operations
	 * (UDP's included), from keel_net_stats; epoll: read() calls that returned data,
	 * sendmsg() calls), and the buffers the sends offered (keel: iovecs after merging;
	 * epoll: 1 per sendmsg). */
	uint64_t recvs, sends, send_iovs;
	bool io_udp_too; /* keel: recvs and sends count UDP's too */
	/* UDP: the receive calls that took datagrams and the send calls that sent some, for the
	 * datagrams per call (epoll: recvmmsg, and sendmsg with --udp-gso or sendmmsg; keel: a
	 * receive completion per datagram, and its UDP sendmsgs: each UDP_SEGMENT batch once,
	 * each datagram sent alone once, from keel_net_stats; a batch the kernel refused, sent
	 * again one by one, counts once). */
	uint64_t udp_recv_calls, udp_send_calls;
	/* Sends that took less than was offered: keel's short completions; epoll's sendmsg()
	 * calls that took part or, with EAGAIN, none (keel's wait in the kernel instead). */
	uint64_t short_sends;
	/* epoll: the sends that left bytes the socket did not take, kept (without a copy) in the
	 * read buffer handed to the connection, whose reads wait until they went; and those
	 * bytes. */
	uint64_t held, held_bytes;
	/* keel: its receive rings (keel_net_stats): receives that found no buffer, multishot
	 * receives re-armed after ending, reads paused by the high watermark. */
	uint64_t enobufs, rearms, bp_pauses;
	/* keel: loop passes that ran the arrivals waiting before they submitted
	 * (keel_shard_stats.merges), and the largest bulk-ring window a shard reached, in bytes
	 * (keel_net_stats.bulk_window; 0: no bulk ring). */
	uint64_t merges, bulk_window;
	/* keel: ZCRX (keel_zcrx_stats summed over the shards; docs/zcrx.md). */
	const char *zcrx_state;   /* "on" when every shard with a queue registered, "fallback"
				   * when one fell back, "none" (epoll: NULL) */
	uint64_t zcrx_bytes;      /* bytes received zero-copy into the areas */
	uint64_t zcrx_copy_bytes; /* bytes received through the copy path after a fallback */
	uint64_t zcrx_refills;    /* refill entries written */
	uint64_t zcrx_frags;      /* RECV_ZC completions with payload */
};

struct bench_server; /* a backend's running server; opaque to the harness */

/**
 * A network backend: a byte-echo server and a client for the four modes.
 *
 * serve_start: bind cfg->addr (port 0: an ephemeral port) on cfg->shards threads and serve
 *   until serve_stop. Returns 0 with *port (host order) and *out set, or -errno.
 *   Context: any thread; the server runs on threads of its own.
 *   The server serves TCP and UDP (datagrams echoed to their sender) on the same port.
 * serve_stop: stop, join, release everything, and fill *out. Returns 0 or -errno.
 * server_clocks: the CPU-time clocks of the server threads (pthread_getcpuclockid) into
 *   @out (at most @max); returns how many. Context: between serve_start and serve_stop.
 * client_run: connect to cfg->addr, run cfg->mode for warmup + seconds and fill *out;
 *   calls cfg->on_window once the window is set. NULL: the backend has no client of its
 *   own for cfg->mode (udp: every backend uses bench_udp_client_run).
 *   Returns 0, or -errno with out->why set (a verification failure is -EPROTO).
 *   Context: blocks the calling thread; the client runs cfg->threads threads.
 * unavailable: when not NULL the backend is not built; the harness prints this line and
 *   exits 2 instead of calling it.
 */
struct bench_backend {
	const char *name;
	const char *unavailable;
	int (*serve_start)(const struct bench_cfg *cfg, uint16_t *port, struct bench_server **out);
	int (*serve_stop)(struct bench_server *srv, struct bench_server_stats *out);
	unsigned (*server_clocks)(struct bench_server *srv, clockid_t *out, unsigned max);
	int (*client_run)(const struct bench_cfg *cfg, struct bench_result *out);
};

extern const struct bench_backend bench_backend_epoll;
extern const struct bench_backend bench_backend_keel;

/* Whether a sending connection (or UDP flow) whose last echo inside the window [@t_start,
 * @t_end) came at @last_win_ns (0: none) stalled: none in the window's second half. One
 * that the server stopped answering, without closing it, midway, would otherwise lower the
 * rate unseen; a round trip of half the window is no ordinary delay. */
bool bench_stalled(uint64_t last_win_ns, uint64_t t_start, uint64_t t_end);

/* The UDP client (udp.c), plain sockets with recvmmsg/sendmmsg: the one client of udp mode,
 * whatever the server. Same contract as client_run. */
int bench_udp_client_run(const struct bench_cfg *cfg, struct bench_result *out);

/* Whether @port of @addr is free for a server socket of @type (SOCK_STREAM, SOCK_DGRAM):
 * a bind without SO_REUSEPORT (with SO_REUSEADDR for TCP, so that connections in TIME_WAIT
 * do not count). The servers' own sockets take SO_REUSEPORT, which would let another
 * process's socket on the port (a leftover server, a second run) take a share of the
 * traffic unseen; keel's listener makes the same check for TCP. Returns 0, or -errno
 * (-EADDRINUSE: said on stderr). */
int bench_port_free(const struct sockaddr_in *addr, uint16_t port, int type);

/* The epoll backend's UDP echo (udp.c): a non-blocking SO_REUSEPORT socket per thread,
 * batches of recvmmsg echoed with one sendmmsg. Returns the fd or -errno. */
int bench_udp_socket(const struct sockaddr_in *addr, uint16_t port);
/* A thread's receive batch (about 2 MiB); @gso: echo with UDP_SEGMENT (--udp-gso). NULL:
 * out of memory. */
struct bench_udp_batch *bench_udp_batch_new(bool gso);
void bench_udp_batch_free(struct bench_udp_batch *b);
/* Add @b's receive calls that took datagrams to @rx and its send calls that sent some to
 * @tx (@b may be NULL). */
void bench_udp_batch_calls(const struct bench_udp_batch *b, uint64_t *rx, uint64_t *tx);
/* Echo what @fd holds, recvmmsg/sendmmsg in batches, until it is drained. A datagram the
 * socket does not take (EAGAIN, ENOBUFS) is dropped, as UDP may. Adds to the counters. */
void bench_udp_echo(int fd, struct bench_udp_batch *b, uint64_t *syscalls, uint64_t *in,
		    uint64_t *out, uint64_t *errors);

/* ---- shared by backends (proto.c) ---- */

/* Bytes of one message on the wire: size + 4 (framed) or size (stream). */
uint64_t bench_unit(const struct bench_cfg *cfg);

/*
 * The byte stream every client connection sends, built once: a period of K messages (or
 * chunks), K = 2..61 so the period stays under about 1 MiB, followed by @extra bytes that
 * repeat its start, so any @extra-byte window at stream offset o is contiguous at
 * pat + (o % period). Returns 0 or -ENOMEM.
 */
struct bench_pattern {
	uint8_t *pat;
	uint64_t period;
	uint64_t unit;
	uint32_t hdr; /* 4 framed, 0 stream */
	size_t extra;
};
int bench_pattern_init(struct bench_pattern *p, const struct bench_cfg *cfg, size_t extra);
void bench_pattern_fini(struct bench_pattern *p);

/*
 * Compare @n echoed bytes at stream offset @off with the pattern. Returns 0, or -EPROTO
 * with a sentence in @why naming the message, the byte and whether the length field or the
 * payload differs.
 */
int bench_pattern_check(const struct bench_pattern *p, const uint8_t *buf, size_t n, uint64_t off,
			char *why, size_t whylen);

void bench_hist_add(struct bench_hist *h, uint64_t ns);
void bench_hist_merge(struct bench_hist *into, const struct bench_hist *from);
/* The value at percentile @p (0..100): the middle of its bucket, never above max. */
uint64_t bench_hist_pct(const struct bench_hist *h, double p);

/* CPU time of the calling thread (getrusage RUSAGE_THREAD, user + system), ns. */
uint64_t bench_thread_cpu_ns(void);

/* keel's idle-poll policy for an epoll loop (the epoll server's --busy-poll-us, the clients'
 * --client-poll-us): epoll_wait with a zero timeout until nothing came for poll_ns, then a
 * wait that may block. */
struct bench_poll_wait {
	uint64_t poll_ns, idle_since, polls, sleeps;
	bool polling;
};

/* The timeout of the next epoll_wait at @now: 0 while polling, else @block_ms. */
static inline int
bench_poll_wait_ms(struct bench_poll_wait *w, uint64_t now, int block_ms)
{
	w->polling = w->poll_ns && (!w->idle_since || now - w->idle_since < w->poll_ns);
	if (w->polling) {
		w->polls++;
		return 0;
	}
	w->sleeps++;
	return block_ms;
}

/* After that epoll_wait returned @n events: a poll that found none starts (or goes on
 * with) the idle time; events or a blocking wait end it. */
static inline void
bench_poll_waited(struct bench_poll_wait *w, uint64_t now, int n)
{
	if (n <= 0 && w->polling) {
		if (!w->idle_since)
			w->idle_since = now;
	} else {
		w->idle_since = 0;
	}
}

/* The client threads' start line: once every thread has set up (the first wait on @bar),
 * fix the measured window (@cfg's warm-up from now, then its seconds) into *t_start and
 * *t_end, tell @cfg->on_window, and let the threads go (the second wait). */
void bench_window_open(const struct bench_cfg *cfg, pthread_barrier_t *bar, uint64_t *t_start,
		       uint64_t *t_end);

#endif

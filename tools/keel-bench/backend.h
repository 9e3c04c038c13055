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

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum bench_mode {
	BENCH_PINGPONG,    /* one message in flight per connection */
	BENCH_THROUGHPUT,  /* --inflight messages in flight per connection */
	BENCH_STREAM,      /* unframed bytes, --inflight chunks of --size in flight */
	BENCH_CONNECTIONS, /* open+round trip+close cycles beside held and idle conns */
};

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
	bool pin;                /* pin threads: server i on CPU i, client i on CPU shards+i */
};

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
	struct bench_hist lat; /* per-message latency (pingpong, throughput, held conns) */
	char why[256];         /* first error, for a person */
};

/** What a server did over its whole life (start to stop). */
struct bench_server_stats {
	uint64_t cpu_ns;           /* user+system CPU of the server threads (RUSAGE_THREAD) */
	uint64_t syscalls;         /* I/O syscalls, counted by the backend (see syscalls_what) */
	const char *syscalls_what; /* "epoll_wait+read+write...", "io_uring_enter" */
	uint64_t bytes_in;         /* bytes read from clients (and echoed) */
	uint64_t accepted;         /* connections accepted */
	uint64_t errors;           /* connection errors other than a client's close or reset */
};

struct bench_server; /* a backend's running server; opaque to the harness */

/**
 * A network backend: a byte-echo server and a client for the four modes.
 *
 * serve_start: bind cfg->addr (port 0: an ephemeral port) on cfg->shards threads and serve
 *   until serve_stop. Returns 0 with *port (host order) and *out set, or -errno.
 *   Context: any thread; the server runs on threads of its own.
 * serve_stop: stop, join, release everything, and fill *out. Returns 0 or -errno.
 * client_run: connect to cfg->addr, run cfg->mode for warmup + seconds and fill *out.
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
	int (*client_run)(const struct bench_cfg *cfg, struct bench_result *out);
};

extern const struct bench_backend bench_backend_epoll;
extern const struct bench_backend bench_backend_keel;

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

#endif

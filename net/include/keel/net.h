/* SPDX-License-Identifier: MIT */
/*
 * TCP, Unix domain stream sockets and UDP on the shard ring.
 *
 * Every shard listens on the same address with its own SO_REUSEPORT socket; a classic-BPF
 * reuseport program picks the shard by CPU or rx queue. Accepted connections live on the
 * accepting shard: multishot accept (into direct descriptors), multishot recv from a
 * per-shard provided-buffer ring (bundles and incremental consumption where the kernel has
 * them), one send in flight per connection (queued slices leave together; large slices of
 * registered memory with SEND_ZC), and a per-connection high/low watermark.
 *
 * Received data reaches the application as slices (keel/buf.h) that point into the receive
 * buffers; a buffer goes back to the ring when its last slice is put. Each feature has a
 * policy (--feature multishot_accept, multishot_recv, recv_bundle, pbuf_inc, direct_fd,
 * send_zc = off|on|auto).
 *
 * Threading: a connection, a UDP endpoint and a listener's per-shard part are used only on
 * their shard. Callbacks run on that shard. A call that changes a connection or an
 * endpoint (send, write, close, abort, shutdown, pause/resume, watermarks, socket options,
 * keel_udp_send/close) from another shard's thread aborts (net's invariant line): hand the
 * work to the owning shard with a message (keel_send) instead.
 */
#ifndef KEEL_NET_H
#define KEEL_NET_H

#include <keel/buf.h>
#include <keel/common.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_conn;
struct keel_runtime;
struct keel_shard;
struct keel_listener;
struct keel_udp;
struct keel_opts;

/**
 * Default SEND_ZC threshold: UINT32_MAX, i.e. plain send for every size. Measured on
 * loopback (docs/net.md, keel-netbench send): plain send beat SEND_ZC at every size from
 * 4 KiB to 1 MiB (3.3-4.1 GB/s against 0.9-3.5 GB/s), because loopback copies the pages
 * anyway (the notification says IORING_NOTIF_USAGE_ZC_COPIED). On a NIC, measure with the
 * same tool and set zc_threshold (keel-echo --zc-threshold N).
 */
#define KEEL_NET_ZC_THRESHOLD_DEFAULT UINT32_MAX

/**
 * Network tuning. Initialise with keel_net_config_init(). Where it applies, first match:
 * a listener's own (keel_listen_opts.net: its sockets and connections), the shard's
 * (keel_net_shard_init() in the shard's on_start: per runtime), the process default
 * (keel_net_config_set()). The buffer rings and the file table (buf_size, buf_count,
 * max_files, udp_buf_*, bulk_buf_*) belong to the shard: they are fixed when its network state is
 * made.
 */
struct keel_net_config {
	uint32_t buf_size;          /* bytes per provided receive buffer (default 16 KiB) */
	uint32_t buf_count;         /* buffers per shard ring, a power of two (default 256) */
	uint32_t zc_threshold;      /* sends of at least this many bytes use SEND_ZC (default
				       KEEL_NET_ZC_THRESHOLD_DEFAULT: never; see below) */
	uint32_t high_watermark;    /* queued send bytes above which reading pauses (1 MiB) */
	uint32_t low_watermark;     /* ... and below which it resumes, on_writable (256 KiB) */
	uint32_t max_files;         /* direct-descriptor table slots per shard (default 4096;
				       the kernel wants a descriptor limit of at least as many:
				       a soft limit below is raised to the hard one, said, and a
				       hard limit below fails the shard's start with the fix) */
	uint64_t accept_backoff_ns; /* pause after EMFILE/ENFILE before accepting again
				       (KEEL_MS(100)) */
	uint64_t close_timeout_ns;  /* keel_conn_close() gives up on a peer that does not read
				       after this long: on_close(-ETIMEDOUT); 0 once the queue
				       went out and no zero-copy page is held (0: wait,
				       default) */
	bool nodelay;               /* TCP_NODELAY on listeners (accepted sockets inherit it)
				       and on connecting sockets (default true) */
	uint32_t udp_buf_count;     /* UDP receive buffers per shard, a power of two: the most
				       datagrams received and not yet put back (default 256) */
	uint32_t udp_buf_size;      /* the largest UDP datagram received whole, bytes (default
				       65536); a longer one is dropped and counted
				       (udp_truncated). Each buffer adds KEEL_UDP_BUF_OVERHEAD. */

	/* Limits against hostile peers (docs/reliability.md). The timeouts apply to accepted
	 * connections only and are checked by a per-shard sweep every quarter of the
	 * shortest timeout in use, so one fires between its value and 1.5 times it; the
	 * connection then ends with keel_conn_abort(-ETIMEDOUT). */
	/* An accepted connection that has not received header_bytes bytes this long after
	 * the accept is aborted (slowloris; counted in header_timeouts). The application's
	 * keel_conn_close() ends it: the close is bounded by close_timeout_ns, or without one by
	 * what the header timeout had left until the queue went out (then -ETIMEDOUT), and
	 * from there by the linger's KEEL_NET_LINGER_NS (then status 0; docs/net.md, "Closing
	 * and shutdown"). 0: off (default). */
	uint64_t header_timeout_ns;
	/* ... the bytes it must have received by then (default 1: a first-byte timeout). */
	uint32_t header_bytes;
	/* An accepted connection on which nothing was received and no send completed for
	 * this long is aborted (counted in idle_timeouts). 0: off (default). */
	uint64_t idle_timeout_ns;
	/* Queued send bytes one connection may hold: a send or write that would pass it
	 * fails with -ENOBUFS and aborts the connection with -ENOBUFS (counted in
	 * send_cap_conn). 0: no limit. Default KEEL_NET_SEND_MAX_DEFAULT. */
	uint64_t send_max;
	/* Queued send bytes of all a shard's connections together; as send_max, counted in
	 * send_cap_shard. The shard's own setting applies (a listener's is not used). 0: no
	 * limit. Default KEEL_NET_SHARD_SEND_MAX_DEFAULT. */
	uint64_t shard_send_max;

	/* The bulk ring: a second receive ring of larger buffers, made on first use. A
	 * connection moves to it when one receive fills at least two buf_size buffers (one
	 * without bundles) while the bulk ring has a buffer, and back when KEEL_NET_BULK_BACK
	 * receives in a row are under buf_size or the bulk ring runs out; each move ends the
	 * connection's multishot receive and arms another (docs/net.md, "Two receive rings").
	 * Bulk data then lands in fewer, larger buffers: fewer slices per receive and per
	 * send. It adds bulk_buf_count x bulk_buf_size of --memory per shard that uses it. */
	uint32_t bulk_buf_size;  /* bytes per bulk buffer, at most 1 MiB (default 64 KiB); 0 or
				    not above buf_size: no bulk ring */
	uint32_t bulk_buf_count; /* bulk buffers per shard, a power of two (default 64) */
	/* Most bytes of bulk buffers the ring hands the kernel at once: the bulk ring's window
	 * (4 buffers at first) doubles as a stream needs, up to this many bytes (whole buffers,
	 * at least one), so the buffers the kernel copies into stay few enough to be warm in
	 * the core's cache. Buffers the application holds are outside it. 0: up to every
	 * buffer. Default KEEL_NET_BULK_WINDOW_DEFAULT (docs/net.md, "Two receive rings"). */
	uint32_t bulk_window;

	/* UDP sends: datagrams an endpoint sends in one pass to one destination, of one size
	 * (the last may be shorter), go out as one sendmsg with UDP_SEGMENT (generic
	 * segmentation offload) of up to udp_gso_segs datagrams and KEEL_UDP_GSO_BYTES: the
	 * kernel's stack runs once per sendmsg, the device (or the kernel just before it)
	 * cuts the datagrams. The receiver gets the same datagrams (docs/net.md, "UDP").
	 * 0 or 1: one sendmsg per datagram. At most KEEL_UDP_GSO_MAX (default 64). */
	uint32_t udp_gso_segs;

	/* Appended (fields are added at the end). */
	/* UDP datagrams a shard holds in flight: accepted by keel_udp_send and not yet sent
	 * (a full socket buffer keeps them waiting). Past it keel_udp_send refuses with
	 * -ENOBUFS, counted in udp_send_capped, as a full socket refuses a non-blocking
	 * sendto: each holds its slice and a send slot (about 300 bytes, from malloc, not
	 * --memory), and each UDP_SEGMENT sendmsg of two or more of them a batch state (about
	 * 2.5 KiB, from malloc): at worst, batches of two each, udp_send_max / 2 of those.
	 * Both are pooled for the shard's life. 0: no limit. Default
	 * KEEL_NET_UDP_SEND_MAX_DEFAULT. */
	uint32_t udp_send_max;
};

/** The most datagrams one UDP sendmsg carries (udp_gso_segs): the kernel's
 * UDP_MAX_SEGMENTS in Linux 6.1, raised in later kernels. */
#define KEEL_UDP_GSO_MAX 64
/** The most payload bytes one UDP sendmsg of several datagrams carries (an IPv4 packet's
 * 65,535 less the IP and UDP headers). */
#define KEEL_UDP_GSO_BYTES 65507

/** The default bulk_window: 512 KiB, 8 buffers of the default 64 KiB. */
#define KEEL_NET_BULK_WINDOW_DEFAULT (512u << 10)

/** Receives in a row under buf_size after which a connection leaves the bulk ring. */
#define KEEL_NET_BULK_BACK 64

/** Default keel_net_config.send_max: 64 MiB (64 times the default high watermark). */
#define KEEL_NET_SEND_MAX_DEFAULT (UINT64_C(64) << 20)
/** Default keel_net_config.shard_send_max: 1 GiB. */
#define KEEL_NET_SHARD_SEND_MAX_DEFAULT (UINT64_C(1) << 30)
/** Default keel_net_config.udp_send_max: 16,384 datagrams (some 5 MiB of send slots, and
 * at worst some 20 MiB of batch states: 8,192 sendmsgs of two datagrams each). */
#define KEEL_NET_UDP_SEND_MAX_DEFAULT 16384u

/** Bytes of each UDP receive buffer beyond udp_buf_size: the io_uring_recvmsg_out header,
 * the source address and the control data (the kernel's drop counter). */
#define KEEL_UDP_BUF_OVERHEAD 72

/** Fill @c with the defaults. */
KEEL_API void keel_net_config_init(struct keel_net_config *c);

/**
 * Set the process default: the configuration a shard's network state is made with when
 * neither keel_net_shard_init() nor a listener's own configuration came first, and the
 * one a listener created without keel_listen_opts.net gives its sockets (TCP_NODELAY).
 * Returns: 0, or -EINVAL (buf_count, udp_buf_count, or bulk_buf_count when bulk_buf_size is
 * above buf_size, not a power of two in 1..32768, buf_size 0 or above 1 MiB, bulk_buf_size
 * above 1 MiB, udp_buf_size 0 or above 65536, udp_gso_segs above KEEL_UDP_GSO_MAX,
 * low_watermark > high_watermark, high_watermark 0, max_files 0 or above 1,048,576,
 * accept_backoff_ns under 1 ms: keel_net_config_check() names the field).
 * Context: any thread, before the runtime's shards use the network.
 */
KEEL_API int keel_net_config_set(const struct keel_net_config *c);

/**
 * Check @c as keel_net_config_set(), keel_net_shard_init() and a listener's own
 * configuration are checked, saying why it fails.
 * Returns: 0, or -EINVAL with a one-line message in @err (may be NULL) naming the first
 * field out of range, its command-line option and the values it takes.
 * Context: any thread.
 */
KEEL_API int keel_net_config_check(const struct keel_net_config *c, char *err, size_t errlen);

/**
 * Parse the network options in argv into @c, which holds the defaults
 * (keel_net_config_init()) or the caller's own values first: --buf-count, --buf-size,
 * --bulk-buf-count, --bulk-buf-size, --udp-buf-count, --udp-buf-size, --udp-gso-segs,
 * --bulk-window, --udp-send-max, --zc-threshold, --max-files, --header-timeout-ms,
 * --header-bytes, --idle-timeout-ms, --send-max, --shard-send-max, --high-watermark and
 * --low-watermark (keel_net_opts_help() lists them with their
 * meaning). As keel_opts_parse(): "--opt value" and "--opt=value"; the options it takes are removed
 * from argv and *argc updated, the others left in order for the application; "--" ends
 * them. Byte counts take a k, m or g suffix (kb, mb, gb too; powers of 1024); timeouts are
 * milliseconds, 0 for off. The whole configuration is then checked
 * (keel_net_config_check()), so a call that returns 0 leaves @c ready for
 * keel_net_config_set().
 * Returns: 0, or -EINVAL with a one-line message in @err (may be NULL) naming the option
 * and what it expects; argv is then partly rearranged.
 * Context: any thread.
 */
KEEL_API int keel_net_opts_parse(struct keel_net_config *c, int *argc, char **argv, char *err,
				 size_t errlen);

/** Write the options keel_net_opts_parse() takes, one a line, to @f. */
KEEL_API void keel_net_opts_help(FILE *f);

/**
 * Program helper: keel_opts_parse() into @o, then keel_net_opts_parse() into @c. On an
 * error print "PROG: MESSAGE" to stderr and exit with status 2; on --help print @usage (may
 * be NULL), the network options and the runtime options to stdout and exit 0. What is left
 * in argv is the application's.
 */
KEEL_API void keel_net_opts_parse_or_exit(struct keel_opts *o, struct keel_net_config *c, int *argc,
					  char **argv, const char *usage);

/**
 * Make this shard's network state with @c instead of the process default: call it in the
 * shard's on_start, before any listener starts, connect or UDP endpoint on the shard. A
 * runtime whose on_start calls it on every shard has its own configuration, whatever other
 * runtimes in the process use. Connections and endpoints of the shard use @c (a listener
 * with keel_listen_opts.net uses its own for its connections).
 * Returns: 0; -EINVAL (as keel_net_config_set()); -EPERM off a shard; -ESHUTDOWN once the
 * shard's stop began; -EBUSY when the shard's network state exists already (logged);
 * -EEXIST when the ring has a file table keel did not register (the application's own,
 * with direct descriptors on: logged); -errno making it (file table, buffers).
 * Context: a shard.
 */
KEEL_API int keel_net_shard_init(const struct keel_net_config *c);

/**
 * The configuration in effect: on a shard with network state, the shard's; otherwise the
 * process default. Returns: 0, or -EINVAL (@out NULL). Context: any thread.
 */
KEEL_API int keel_net_config_get(struct keel_net_config *out);

/** Connection callbacks. on_data and on_close are required. */
struct keel_conn_ops {
	/** The connection is established (accepted, or connected). Optional. */
	void (*on_open)(struct keel_conn *c);
	/**
	 * @n slices of received bytes, in order.
	 * Ownership: the application owns each slice's reference (put it, keep it, or give it
	 * to keel_conn_send()); the array itself is borrowed for the call.
	 */
	void (*on_data)(struct keel_conn *c, struct keel_slice *s, unsigned n);
	/** The peer shut down its side. NULL: keel_conn_close() is called. */
	void (*on_eof)(struct keel_conn *c);
	/** Queued bytes fell to the low watermark or under after passing the high one.
	 * Optional. */
	void (*on_writable)(struct keel_conn *c);
	/**
	 * The last callback: @status is 0 after keel_conn_close(), -ECONNRESET, -EPIPE,
	 * -ETIMEDOUT (connect), -ECONNREFUSED, -ESHUTDOWN (runtime stop), or another -errno.
	 * It runs from the loop, never inside keel_conn_close()/keel_conn_abort() or any other
	 * call, and only once the connection has nothing in flight: every receive ended, the
	 * send in flight completed, the queue dropped, the descriptor released (a direct
	 * descriptor's slot is free again). It may close, abort or free anything, other
	 * connections included. The connection is freed when it returns. An accepted
	 * connection that ends before its on_open (the runtime stopped while its addresses
	 * were read) gets none: the application never saw it. A connect gets one either way.
	 */
	void (*on_close)(struct keel_conn *c, int status);
};

/** How a listener's reuseport group picks the shard for a new flow. */
enum keel_steer {
	KEEL_STEER_CPU = 0, /* SKF_AD_CPU: the shard pinned to the CPU that received the SYN */
	KEEL_STEER_QUEUE,   /* SKF_AD_QUEUE: the shard that owns the rx queue */
	KEEL_STEER_HASH,    /* no program: the kernel's flow hash */
};

/** Parse "cpu", "queue" or "hash". Returns: 0, or -EINVAL. */
KEEL_API int keel_steer_parse(const char *s, enum keel_steer *out);

/** The name of @s. */
KEEL_API const char *keel_steer_name(enum keel_steer s);

/** Listener options. Zero-initialise, then set addr/port. */
struct keel_listen_opts {
	const char *addr;            /* IPv4 or IPv6 literal (a link-local one with its
					interface: "fe80::1%eth0"), or a host name resolved at
					create (keel_net_resolve); NULL: 0.0.0.0; or a Unix
					domain name: "unix:/path" (created, and unlinked by
					keel_listener_destroy) or "unix:@name" (abstract) */
	uint16_t port;               /* 0: an ephemeral port (keel_listener_port()) */
	int backlog;                 /* 0: 4096 */
	enum keel_steer steer;       /* default KEEL_STEER_CPU */
	const unsigned *queue_shard; /* queue steering: rx queue q is owned by queue_shard[q]
					(each below nshards, else -EINVAL); */
	unsigned nqueues;            /* NULL/0: shard q % nshards owns queue q */
	/* CPU steering: the runtime whose shards will accept. With it the shards' CPUs are
	 * known at create, and the program is attached before any socket listens, so no
	 * connection is ever queued on a socket the program did not choose. Without it the
	 * program is attached when the last shard starts, and connections that arrive
	 * before that are placed by the kernel's hash. */
	const struct keel_runtime *rt;
	/* Do not read the addresses of accepted connections (keel_conn_peer_addr and
	 * keel_conn_local_addr then return -ENODATA). Reading them costs two system calls per
	 * accept, and with direct descriptors one more ring operation before on_open. */
	bool no_addrs;
	/* This listener's configuration (copied at create; NULL: the process default for its
	 * sockets, the shard's for its connections). nodelay applies to its sockets; every
	 * per-connection field to it and its connections: watermarks, close_timeout_ns,
	 * zc_threshold, accept_backoff_ns, and the limits send_max, header_timeout_ns,
	 * header_bytes and idle_timeout_ns (one from keel_net_config_init has them off: start
	 * from keel_net_config_get's to keep the shard's); shard_send_max stays the shard's. When
	 * its start makes the shard's network state, the state takes its buffer and file-table
	 * sizes (the rest of the shard's is the process default's); otherwise those sizes must
	 * equal the shard's (-EINVAL). */
	const struct keel_net_config *net;
	/* The most connections a shard keeps open (all of its connections count, inbound and
	 * outbound); one accepted beyond it is closed at once and counted in over_limit, so a
	 * flood of peers costs a descriptor for a moment, never the shard. 0: no limit. */
	uint32_t max_conns;
};

/**
 * Create a listener with @nshards sockets bound to the same address (SO_REUSEPORT), in
 * shard order, listening. The steering program is attached to the first socket before any
 * of them listens (queue steering, or cpu steering with opts.rt), so the reuseport group
 * is complete and steered from the first SYN. Nothing is accepted until
 * keel_listener_start() on a shard (connections wait in the backlog of the socket the
 * program picked).
 * Returns: 0 and *out; -EINVAL (address does not parse, nshards 0, a queue_shard entry not
 * below nshards: logged, naming the queue); a host name's resolution errors
 * (keel_net_resolve(): -EPERM for a name on a shard's thread, where a lookup would block
 * the loop; -ENOENT, -EAGAIN, -EAFNOSUPPORT); -EADDRINUSE (port in
 * use by another program: a listening socket there, checked before the listener's own
 * sockets bind, so one that sets SO_REUSEPORT too is refused as well), or another -errno of
 * socket/bind/listen (logged, with the address).
 * Context: any thread, before the shards start listening.
 */
KEEL_API int keel_listener_create(const struct keel_listen_opts *o, unsigned nshards,
				  const struct keel_conn_ops *ops, void *app,
				  struct keel_listener **out);

/** The bound port (the ephemeral one when opts.port was 0). */
KEEL_API uint16_t keel_listener_port(const struct keel_listener *l);

/**
 * Accept on this shard's socket of @l (socket keel_shard_id()). When the last shard has
 * started, the steering program is attached. Accepting stops when the runtime stops.
 * Returns: 0; -EINVAL (shard id >= nshards, started twice, or the runtime has fewer
 * shards than nshards: logged, as the kernel would queue connections for the missing
 * shards' sockets that nothing accepts); -EOPNOTSUPP (a feature
 * forced on is missing); -ESHUTDOWN (the shard's stop began); -errno setting up the
 * shard's network state; -errno attaching the steering program (logged; this shard
 * accepts all the same, and the kernel's hash places connections: stop, or carry on
 * unsteered).
 * Context: a shard (typically its on_start callback).
 */
KEEL_API int keel_listener_start(struct keel_listener *l);

/** Free @l after the runtime that used it has ended. Context: any thread. */
KEEL_API void keel_listener_destroy(struct keel_listener *l);

/** The app pointer given at create. */
KEEL_API void *keel_listener_app(const struct keel_listener *l);

/** Per-shard listener counters. */
struct keel_listener_stats {
	uint64_t accepted;      /* connections accepted on this shard */
	uint64_t cpu_mismatch;  /* SO_INCOMING_CPU is not this shard's CPU (cpu steering) */
	uint64_t napi_mismatch; /* queue steering: the connection's receive queue
				   (SO_INCOMING_NAPI_ID) sent its first connection to another
				   shard (a shard may own several queues) */
	uint64_t unverified;    /* the value steering is checked by could not be read, or
				   names nothing (a NAPI id of 0: loopback, veth) */
	uint64_t accept_errors; /* EMFILE/ENFILE/ENOMEM and other accept failures */
	uint64_t over_limit;    /* accepted beyond max_conns and closed at once */
	uint64_t steer_reads;   /* steering checks issued: one getsockopt per accept with
				   cpu (SO_INCOMING_CPU) or queue steering (SO_INCOMING_NAPI_ID),
				   none with hash steering or a Unix socket */
};

/**
 * Copy shard @shard's counters of @l.
 * Returns: 0, or -EINVAL. Context: any thread.
 */
KEEL_API int keel_listener_stats(const struct keel_listener *l, unsigned shard,
				 struct keel_listener_stats *out);

/**
 * Connect to @addr:@port through the ring, giving up after @timeout_ns (KEEL_S(5); 0: no
 * timeout). @addr is an IPv4 or IPv6 literal (keel_net_addr_parse: "fe80::1%eth0" for a
 * link-local one), or "unix:/path" / "unix:@name" (a Unix domain stream socket; @port is
 * ignored).
 * on_open runs when connected; on failure on_close runs with the error (-ETIMEDOUT when
 * the timeout ended it, whatever the connect's own error: an AF_UNIX connect to a full
 * backlog blocks in a kernel worker, which the timeout interrupts, -EINTR; -ESHUTDOWN when
 * the runtime's stop ended it) and on_open never does. The connect and its timeout go to
 * the ring as one linked pair: both SQEs are reserved first (submitting what is queued when
 * the SQ has no room for two), so the timeout always applies.
 * Returns: 0 and *out (valid until on_close returns); -EINVAL with a logged message when the
 * address does not parse; -ESHUTDOWN once the shard's stop began (in a stop hook too);
 * -errno (socket, memory, a failed submit). On error no callback follows.
 * Context: a shard.
 */
KEEL_API int keel_conn_connect(const char *addr, uint16_t port, uint64_t timeout_ns,
			       const struct keel_conn_ops *ops, void *app, struct keel_conn **out);

/**
 * keel_conn_connect() to an address already made: one from keel_net_resolve() (a host
 * name resolved before the runtime started), keel_net_addr_parse(), or the application.
 * Ownership: @sa is copied.
 * Returns: as keel_conn_connect(); -EINVAL also for a family other than AF_INET, AF_INET6,
 * AF_UNIX, or @salen out of range: shorter than the family's address (sockaddr_in,
 * sockaddr_in6; a sockaddr_un with at least one byte of path), or longer than
 * sockaddr_storage (sockaddr_un for AF_UNIX, as the kernel's limit).
 * Context: a shard.
 */
KEEL_API int keel_conn_connect_addr(const struct sockaddr *sa, socklen_t salen, uint64_t timeout_ns,
				    const struct keel_conn_ops *ops, void *app,
				    struct keel_conn **out);

/**
 * Queue @s for sending. Slices leave in the order queued; slices queued while a send is in
 * flight leave together.
 * Consumes: @s's reference, on success (0 or 1): *@s is then emptied (buf NULL).
 * Returns: 0; 1 when the queued bytes are above the high watermark (no on_data for this
 * connection until on_writable, as with keel_conn_pause_read(); one on_data carries at most
 * the room under the high watermark plus one receive buffer, so an application that sends
 * what it receives stays within high_watermark + buf_size, or + bulk_buf_size once the
 * shard's bulk ring exists); -EPIPE after
 * close or shutdown; -EINVAL for an empty slice; -ENOBUFS when it would pass send_max or
 * shard_send_max (the connection is then aborted with -ENOBUFS); -ENOMEM when a queue slot
 * cannot be allocated. On error @s is still the caller's.
 * Context: the connection's shard.
 */
KEEL_API int keel_conn_send(struct keel_conn *c, struct keel_slice *s);

/**
 * Queue a copy of @data[0..@len) for sending: for small replies, without managing slices.
 * The bytes are copied into buffers of the shard's allocator (registered memory, so a large
 * one may leave with SEND_ZC): consecutive writes fill the last write buffer while it has
 * room, slices queued between them or not, and a write larger than KEEL_NET_WRITE_CHUNK
 * spans several buffers. They join the same queue as keel_conn_send(): everything queued
 * leaves in the order queued, writes and slices mixed, with the same watermark.
 * Ownership: @data is borrowed for the call (free or reuse it when this returns).
 * Returns: 0; 1 when the queued bytes are above the high watermark (as keel_conn_send());
 * -EINVAL for @len 0 or @data NULL; -EPIPE after close or shutdown; -ENOBUFS as
 * keel_conn_send(); -ENOMEM when the shard allocator is at its cap (--memory) or a queue
 * slot cannot be allocated. On error nothing was queued (all or nothing).
 * Context: the connection's shard.
 */
KEEL_API int keel_conn_write(struct keel_conn *c, const void *data, size_t len);

/**
 * keel_conn_write() of @n gathered parts, as one write: the bytes queue in order, all or
 * nothing. Empty parts are allowed; the total must not be 0.
 * Ownership: @iov and the memory it points to are borrowed for the call.
 * Returns: as keel_conn_write(); -EINVAL also for @iov NULL, @n 0 or a total of 0.
 * Context: the connection's shard.
 */
KEEL_API int keel_conn_writev(struct keel_conn *c, const struct iovec *iov, unsigned n);

/** The most bytes keel_conn_write() copies into one buffer (64 KiB). */
#define KEEL_NET_WRITE_CHUNK (64u << 10)

/**
 * Half-close: after the queued bytes are sent, shut down the write side (the peer reads
 * EOF); receiving goes on. On a connection still connecting, once it is open. Returns: 0,
 * or -EPIPE when already closing or already shut down (a second call changes nothing).
 * Context: the connection's shard.
 */
KEEL_API int keel_conn_shutdown(struct keel_conn *c);

/** Longest a graceful close waits for the peer's EOF (and for its zero-copy pages) once its
 * queue is sent, without keel_net_config.close_timeout_ns (keel_conn_close). */
#define KEEL_NET_LINGER_NS (5ull * 1000000000ull)

/**
 * Close gracefully: stop delivering (received data not yet delivered is dropped, and so is
 * what arrives after), send what is queued, then close; on_close(c, 0) follows, from the
 * loop, never before this returns. Unless the peer has ended its side already, the close
 * then shuts the write side (a FIN after the queue) and reads on, dropping what comes,
 * until the peer's EOF (or KEEL_NET_LINGER_NS, or close_timeout_ns from this call): a
 * close(2) with bytes from the peer unread makes the kernel reset the connection and drop
 * what it still holds of the queue. Counted in keel_net_stats.close_lingers. It also waits,
 * EOF or not, for zero-copy sends whose pages the socket still holds (their notifications):
 * a close(2) would leave them pinned while the peer does not read. If the bound or the stop
 * ends that wait first, the connection is reset and on_close gets -ETIMEDOUT or
 * -ESHUTDOWN: the peer did not take the whole reply.
 * On a connection still connecting (keel_conn_connect) that waits for the connect: no
 * on_open then, and a connect that fails ends in on_close with its error; close_timeout_ns
 * counts from this call, so it bounds the connect too. keel_conn_abort() cancels the
 * connect instead.
 * With keel_net_config.close_timeout_ns set, a queue still not sent after that long is
 * dropped and on_close(c, -ETIMEDOUT) follows instead (a queue sent, the peer's EOF still
 * awaited: on_close(c, 0); zero-copy pages still held: -ETIMEDOUT, a reset).
 * Context: the connection's shard. Closing twice is harmless; @c stays valid until
 * on_close returns (calls on it then fail with -EPIPE or do nothing).
 */
KEEL_API void keel_conn_close(struct keel_conn *c);

/**
 * Close now: queued bytes are dropped, operations are cancelled; on_close(c, @status)
 * follows (status <= 0), from the loop once nothing is in flight, never before this
 * returns. With @status < 0, on an open connection with bytes still queued or in a send
 * (the stream is cut), and with any @status while a zero-copy send's notification has not
 * come (the socket still holds its pages, which a plain close would leave pinned for as
 * long as the peer does not read), the connection is reset (SO_LINGER 0: the peer gets
 * ECONNRESET, not an EOF that would read as the end of a whole reply, and the kernel drops
 * what it holds); otherwise it ends with a FIN after what the kernel holds. The runtime's stop
 * aborts with -ESHUTDOWN, and send_max, the timeouts and close_timeout_ns with their errors, alike.
 * On a connection whose keel_conn_close() has sent its queue and waits for the peer's EOF,
 * on_close gets 0 whatever @status (nothing was lost; unless zero-copy pages are still
 * held: then @status, with the reset).
 * Context: the connection's shard; @c stays valid until on_close returns.
 */
KEEL_API void keel_conn_abort(struct keel_conn *c, int status);

/**
 * Stop delivering on_data until keel_conn_resume_read(): once this returns, on_data does
 * not run for @c, not even for completions already reaped in the same pass or racing the
 * receive's cancellation. Such data (at most what the receives in flight could fill: the
 * shard's receive buffers) is held, in order, and delivered after the resume, followed by
 * an EOF that came behind it. The pause covers on_data only: an EOF with nothing held
 * ahead of it runs on_eof at once, paused or not (an application waiting on work learns
 * that the peer is done). The same holds while the high watermark pauses reading.
 * Context: its shard (inside on_data too: the rest of that completion is then held).
 */
KEEL_API void keel_conn_pause_read(struct keel_conn *c);

/**
 * Resume delivering on_data. Held data is delivered from the loop (never inside this
 * call), then receiving starts again. Context: its shard.
 */
KEEL_API void keel_conn_resume_read(struct keel_conn *c);

/** Bytes queued and not yet acknowledged by the kernel. */
KEEL_API uint64_t keel_conn_queued(const struct keel_conn *c);

/**
 * Set this connection's watermarks (bytes; low <= high). They apply at once: bytes queued
 * above the new high one pause reading now (on_writable follows once the queue is at or
 * under the low one), and a queue that paused reading and is at or under the new low one
 * resumes it from the loop (never inside this call), with on_writable for a sender that had
 * passed the high one.
 * Returns: 0; -EINVAL (low > high: nothing changed); -ENOMEM (the marks are set, but no
 * memory to defer the resume: reading resumes only at the next send completion, if one
 * comes; call again to try once more).
 * Context: its shard.
 */
KEEL_API int keel_conn_set_watermarks(struct keel_conn *c, uint32_t low, uint32_t high);

/**
 * The peer's address: an accepted connection's remote end, or the address a connected one
 * was given. Both addresses are read once, when the connection opens (before on_open),
 * and stay valid until on_close returns. An accepted direct descriptor is read through a
 * regular copy of it (IORING_OP_FIXED_FD_INSTALL, Linux 6.8), closed at once.
 * Returns: 0 with *out (and *len when @len is not NULL; the rest of *out zeroed);
 * -EINVAL (@out NULL); -ENOTCONN (not connected yet); -ENODATA (the listener was created
 * with no_addrs); -EOPNOTSUPP (a direct descriptor on a kernel before 6.8: logged once,
 * naming --feature direct_fd=off); -EMFILE or -ENFILE (a direct descriptor while the
 * process had no descriptor left for the copy: logged, rate-limited); -EBUSY (an accepted
 * direct descriptor whose read found no submission entry free: the connection opened
 * without its addresses); another -errno of getpeername/getsockname.
 * Context: the connection's shard.
 */
KEEL_API int keel_conn_peer_addr(const struct keel_conn *c, struct sockaddr_storage *out,
				 socklen_t *len);

/** The connection's own address (the local end). As keel_conn_peer_addr(). */
KEEL_API int keel_conn_local_addr(const struct keel_conn *c, struct sockaddr_storage *out,
				  socklen_t *len);

/** The largest option value keel_conn_setsockopt/getsockopt carry, bytes. */
#define KEEL_SOCKOPT_MAX 64

/**
 * Completion of keel_conn_setsockopt() / keel_conn_getsockopt(): @status is 0 (set), the
 * option's length (get: @val holds it, @len bytes, borrowed for the call) or -errno.
 */
typedef void (*keel_sockopt_fn)(struct keel_conn *c, int status, const void *val, socklen_t len,
				void *arg);

/**
 * Set a socket option of @c, any level. A plain descriptor: setsockopt, run from the loop.
 * A direct descriptor (no system call reaches it): IORING_OP_URING_CMD with
 * SOCKET_URING_OP_SETSOCKOPT through the ring (Linux 6.7). @cb runs from the loop, never
 * inside this call, and before on_close. Options set in turn complete in turn only as far
 * as the ring orders them: wait for @cb before depending on one.
 * Ownership: @val is copied (at most KEEL_SOCKOPT_MAX bytes).
 * Returns: 0 (then @cb runs once, if not NULL; a failure without @cb is logged); -EINVAL
 * (@len 0 or above KEEL_SOCKOPT_MAX, @val NULL); -EPIPE after close; -ENOMEM; -EBUSY (no
 * SQE: the ring failed). @cb's status: 0, or -errno of the option; -EOPNOTSUPP from a
 * kernel before 6.7 (logged once per shard, naming --feature direct_fd=off).
 * Context: the connection's shard.
 */
KEEL_API int keel_conn_setsockopt(struct keel_conn *c, int level, int name, const void *val,
				  socklen_t len, keel_sockopt_fn cb, void *arg);

/**
 * Read a socket option of @c (@len bytes at most): @cb gets its value. A direct descriptor
 * reads SOL_SOCKET options with SOCKET_URING_OP_GETSOCKOPT (Linux 6.7), which reads no
 * other level; other levels (IPPROTO_TCP, ...) through a regular copy of the descriptor,
 * installed with IORING_OP_FIXED_FD_INSTALL (Linux 6.8) and closed at once. Before those
 * kernels @cb gets -EOPNOTSUPP (logged once per shard).
 * Returns: as keel_conn_setsockopt(); -EINVAL also for @cb NULL.
 * Context: the connection's shard.
 */
KEEL_API int keel_conn_getsockopt(struct keel_conn *c, int level, int name, socklen_t len,
				  keel_sockopt_fn cb, void *arg);

/** The application's per-connection pointer (NULL until set). */
KEEL_API void *keel_conn_user(const struct keel_conn *c);
/** Set the application's per-connection pointer. */
KEEL_API void keel_conn_set_user(struct keel_conn *c, void *user);
/** The app pointer of the listener that accepted @c, or the one given to connect. */
KEEL_API void *keel_conn_app(const struct keel_conn *c);

/** Per-shard network counters. */
struct keel_net_stats {
	uint64_t conns_open;     /* connections alive now */
	uint64_t recv_cqes;      /* receive completions with data */
	uint64_t recv_bufs;      /* receive buffers filled (several per CQE with bundles) */
	uint64_t enobufs;        /* receives that ran out of buffers (re-armed later) */
	uint64_t rearms;         /* receives that ended and were to be armed again at once,
				    TCP and UDP (an empty datagram ends a multishot receive;
				    moves between the receive rings included; not after
				    -ENOBUFS: enobufs): counted when the receive ends, so one
				    whose re-arm found no SQE counts even if its connection
				    closed before the retry, and one re-armed later (after a
				    pause) does not */
	uint64_t sends;          /* send/sendmsg operations (SEND_ZC's are sends_zc's) */
	uint64_t send_iovs;      /* TCP: buffers those sends offered (1 for a send, the iovec count
				    for a sendmsg; adjacent slices merged count once) */
	uint64_t send_bytes;     /* TCP: bytes those sends offered (a short send's rest is offered
				    again by the next one) */
	uint64_t sends_zc;       /* SEND_ZC / SENDMSG_ZC operations */
	uint64_t zc_copied;      /* ... whose notification says the kernel copied */
	uint64_t short_sends;    /* sends that took part of what was offered: sends' and
				    sends_zc's both, so it may pass sends alone */
	uint64_t bp_pauses;      /* reads paused by the high watermark */
	uint64_t bufs_out;       /* receive buffers out of their ring now (held by the app, or
				    by the ring itself while the kernel fills them: bufs_kernel) */
	uint64_t bufs_kernel;    /* ... of which the ring holds for the kernel (incremental
				    buffers partly filled): bufs_out - bufs_kernel is the app's */
	uint64_t reads_held;     /* received slices held for a paused connection (pause_read,
				    high watermark), delivered after resume or dropped by a
				    close; a slice a framer hands back is held, and counted, again */
	uint64_t fd_closes_ring; /* direct descriptors released through the ring
				    (IORING_OP_CLOSE) */
	uint64_t udp_drops;      /* datagrams the kernel dropped on this shard's UDP sockets
				    (receive queue full; SO_RXQ_OVFL, reported with the next
				    datagram received) */
	uint64_t udp_truncated;  /* datagrams longer than udp_buf_size, dropped */
	uint64_t udp_nomem;      /* datagrams received but dropped: no memory for their slice
				    (the shard allocator's buffer headers; raise --memory) */
	uint64_t udp_send_slots; /* UDP send slots allocated (pooled: grows with the most
				    datagrams in flight at once, not with the sends) */
	uint64_t udp_gso_sends;  /* UDP sendmsgs that carried several datagrams (counted
				    once in sends), as each completes: a refused one
				    (udp_gso_fallbacks) carried none */
	uint64_t udp_gso_datagrams; /* ... the datagrams they carried */
	uint64_t udp_gso_fallbacks; /* ... that failed (EIO, EINVAL, EMSGSIZE) and were sent
				       again one by one (see keel_udp_send for what the
				       endpoint does next) */
	uint64_t udp_gso_batches;   /* batch states allocated for them (pooled, about 2.5 KiB
				       each from malloc, not --memory: grows with the most such
				       sendmsgs in flight at once, not with the sends) */
	uint64_t name_reads;        /* getpeername/getsockname calls for accepted and connected
				       connections' addresses (keel_conn_peer_addr) */

	/* Limits against hostile peers (keel_net_config, docs/reliability.md). */
	uint64_t header_timeouts;  /* connections aborted by header_timeout_ns */
	uint64_t idle_timeouts;    /* connections aborted by idle_timeout_ns */
	uint64_t send_cap_conn;    /* connections aborted for passing send_max */
	uint64_t send_cap_shard;   /* connections aborted for passing shard_send_max */
	uint64_t send_queued;      /* send bytes queued on the shard's connections now */
	uint64_t timeout_sweep_ns; /* the period of the timeout sweep now: a quarter of the
				      shortest timeout among the connections it times (at
				      least 1 ms); 0 while none is timed */

	/* The bulk ring (keel_net_config.bulk_buf_size). */
	uint64_t bulk_moves;  /* connections moved to the bulk ring */
	uint64_t bulk_backs;  /* ... and back to the first ring */
	uint64_t bulk_failed; /* 1 when making the bulk ring failed (logged with the fix): the
				 shard's connections then stay on the first ring */
	uint64_t bulk_window; /* bytes of bulk buffers the ring may hand the kernel now (its
				 window: at most keel_net_config.bulk_window in whole buffers,
				 at least one; with bulk_window 0, at most the whole ring); 0
				 before the ring is made */
	/* Appended: fields are added at the end, so code built against an older header
	 * still reads the ones it knows. */
	uint64_t udp_send_errors;   /* datagrams keel_udp_send accepted whose sendmsg then failed
				       (no route, a refused destination, ENOBUFS...), or was
				       cancelled by the stop: lost; the first per endpoint is
				       logged */
	uint64_t udp_send_capped;   /* datagrams keel_udp_send refused with -ENOBUFS: the shard
				       held udp_send_max in flight */
	uint64_t udp_send_inflight; /* datagrams accepted by keel_udp_send and not yet sent, now */
	uint64_t conn_resets;       /* aborts that reset the connection (SO_LINGER 0): an
				       error that cut its stream, or one while zero-copy sends
				       still held pages (keel_conn_abort) */
	uint64_t close_lingers;     /* graceful closes that sent their queue before the peer
				       ended its side, and so shut the write side and read on
				       until its EOF (keel_conn_close); also those after the
				       EOF that waited for zero-copy pages the socket held */
	uint64_t frame_reclaims;    /* partial frames a framer (keel_framer_on_data) copied
				       out of the receive buffers when they ran out, so the
				       buffers could go back (docs/framing.md, "Ownership") */
	uint64_t udp_recv_errors;   /* UDP receives that ended with an unexpected error (not
				       ENOBUFS): each armed again 10 ms later */
	uint64_t recv_copies;       /* received slices copied out of a receive ring (or a
				       ZCRX area) running low (over 3/4 of its buffers out)
				       as a send queued them or a paused connection held
				       them, so the ring got its buffer back (docs/net.md,
				       "Receive buffers") */
	uint64_t recv_more;         /* receive completions, TCP and UDP, after which their
				       receive stayed armed (IORING_CQE_F_MORE: multishot
				       receives, --feature multishot_recv); 0 without them */
	uint64_t recv_arms;         /* receive operations submitted, TCP and UDP (a recv, a
				       recvmsg or a ZCRX RECV_ZC): the first of each
				       connection or endpoint, each re-arm, and for
				       single-shot receives one per completion */
	uint64_t recv_arms_multishot; /* ... of which multishot ones, which stay armed across
					 completions (--feature multishot_recv, and every
					 RECV_ZC): equal to recv_arms when the shard uses
					 multishot receives, 0 when it does not */
	uint64_t udp_send_pressed;    /* ... of udp_send_errors, those the kernel refused for a
					 moment or the peer refused (ENOBUFS, EAGAIN,
					 ECONNREFUSED), as a socket server counts apart from
					 failures: the rest failed for good (EINVAL, EPERM...) */
	uint64_t direct_stuck;        /* direct-descriptor slots keel could not clear (a dropped
				       connection's files update, or a connection's close on
				       the ring and its files update, failed: logged): their
				       sockets stay open and the slots taken until the shard
				       ends, counted as taken by the accepts (max_files) */
};

/**
 * Copy shard @sh's network counters to @out (the stats convention: docs/architecture.md,
 * "Stats"). They are the shard's own, unsynchronised: read them on @sh
 * (keel_this_shard()); from elsewhere, send the shard a message that reads them.
 * Returns: 0; -ENOENT when the network was not used on @sh; -EINVAL for a NULL @sh or
 * @out, or @sh not the calling shard.
 * Context: @sh.
 */
KEEL_API int keel_net_stats(const struct keel_shard *sh, struct keel_net_stats *out);

/* UDP. */

/** UDP callbacks. */
struct keel_udp_ops {
	/**
	 * One datagram from @src; @s is empty (len 0) for a zero-length datagram.
	 * Ownership: the application owns @s's reference; @src is borrowed for the call.
	 */
	void (*on_datagram)(struct keel_udp *u, struct keel_slice *s,
			    const struct sockaddr_storage *src);
	/** The last callback (after keel_udp_close() or the runtime stopping). Optional. */
	void (*on_close)(struct keel_udp *u, int status);
};

/**
 * Bind a UDP socket to @addr:@port on this shard (SO_REUSEPORT, so every shard may bind the
 * same port) and start receiving (multishot recvmsg with provided buffers: the shard's
 * udp_buf_count buffers of udp_buf_size bytes, made on its first endpoint). SO_RXQ_OVFL
 * is set, so datagrams the kernel drops are counted (udp_drops in keel_net_stats).
 * Returns: 0 and *out; -EINVAL (address does not parse), -EADDRINUSE (logged: another
 * socket holds the address and port, or one that overlaps it, with or without SO_REUSEPORT,
 * in this process or another; or this shard has an endpoint there already; or another
 * runtime of this process has), -ESHUTDOWN (the shard's stop began), -errno. The first
 * endpoint of a runtime on an address and port checks it with a bind without
 * SO_REUSEPORT; its other shards' endpoints then join it. A program that binds after that
 * check is not seen (as with the TCP listener's). Port 0 takes a port no socket holds,
 * which other shards of the runtime may then open (docs/net.md, UDP).
 * Context: a shard.
 */
KEEL_API int keel_udp_open(const char *addr, uint16_t port, const struct keel_udp_ops *ops,
			   void *app, struct keel_udp **out);

/** The bound port. */
KEEL_API uint16_t keel_udp_port(const struct keel_udp *u);

/**
 * Send @s as one datagram to @dst (datagrams queued in one pass are submitted together;
 * large ones with SENDMSG_ZC). An empty slice of a buffer sends a zero-length datagram
 * (one with no buffer, {0}, is -EINVAL). A sendmsg of several datagrams (UDP_SEGMENT) that
 * fails is sent again one by one. If its first datagram then goes alone: after EMSGSIZE,
 * or EINVAL on a socket with checksums on (kernels before 6.14 said so for the path's
 * MTU), with datagrams over 40 bytes, only datagrams of that size or larger go one by one
 * from then on; after any other error (EIO, EINVAL with SO_NO_CHECK or UDP_NO_CHECK6_TX,
 * or either at 40 bytes or less) the endpoint sends every datagram one by one from then
 * on (docs/net.md, "UDP"). Until that first datagram's send completes, the sizes it would
 * stop batching go one by one already. If it fails too (the destination refused them),
 * the endpoint batches on.
 * The send's
 * state is a slot of a per-shard pool: nothing is allocated per datagram once the pool
 * covers the most datagrams in flight (udp_send_slots in keel_net_stats).
 * Consumes: @s's reference, on success.
 * Returns: 0; -EINVAL; -EPIPE after close; -EMSGSIZE for a datagram larger than UDP
 * carries (65,507 bytes to IPv4, 65,527 to IPv6); -EAFNOSUPPORT for @dst of a family @u
 * cannot send to (not IPv4 or IPv6; IPv6 from an IPv4 endpoint; IPv4 or v4-mapped IPv6 from
 * an IPv6 one that is IPv6-only or bound to one IPv6 address: one bound to :: without
 * IPV6_V6ONLY sends to both, v4-mapped with IPv4's limit; IPv6 from one bound to a
 * v4-mapped address, IPv4 underneath);
 * -ENOBUFS when the shard holds udp_send_max
 * datagrams in flight (keel_net_config; the caller drops or keeps @s, as after a full
 * socket's EAGAIN); -ENOMEM; -EIO when no submission entry could be had (the ring failed;
 * logged).
 * Context: @u's shard.
 */
KEEL_API int keel_udp_send(struct keel_udp *u, struct keel_slice *s,
			   const struct sockaddr_storage *dst);

/**
 * Close @u: the receive is cancelled, datagrams keel_udp_send accepted still go out, and
 * on_close(u, 0) follows once its operations end, from the loop, never before this returns
 * (also when nothing is in flight), but for a close made after the shard's loop has ended
 * (no pass is left to run it: on_close then runs, and @u is freed, inside this call);
 * on_close(u, -ESHUTDOWN) when called while the runtime stops. (keel closes an endpoint itself only
 * when a failed receive finds no timer to try again: on_close then has that receive's error.)
 * Context: its shard.
 */
KEEL_API void keel_udp_close(struct keel_udp *u);

/** The app pointer given to keel_udp_open(). */
KEEL_API void *keel_udp_app(const struct keel_udp *u);

/**
 * Parse @addr (IPv4 or IPv6 literal; NULL: 0.0.0.0; "unix:/path" or "unix:@name", a
 * sockaddr_un, @port ignored) and @port into @out, and its length into @len (may be NULL;
 * an abstract unix name's length says where the name ends). A link-local IPv6 literal may
 * carry its interface, by name or index ("fe80::1%eth0", "fe80::1%2"): sin6_scope_id.
 * Never resolves a host name (a scope is read with getaddrinfo's AI_NUMERICHOST, which
 * asks no resolver: fit for a shard).
 * Returns: 0, or -EINVAL (logged: the address and what is expected; an interface that does
 * not exist, named; a scope on an address that is not link-local).
 */
KEEL_API int keel_net_addr_parse(const char *addr, uint16_t port, struct sockaddr_storage *out,
				 socklen_t *len);

/**
 * Resolve @host (a name such as "localhost", or a literal / unix: address as
 * keel_net_addr_parse() takes) with getaddrinfo, and @port, into @out: the first stream
 * address of @family (AF_UNSPEC, AF_INET or AF_INET6). The resolver blocks (files, DNS),
 * so it runs only off the shards: before keel_runtime_start, or on a thread of the
 * application's; keel_listener_create() calls it for its addr. Literals are parsed on any
 * thread without it; so is a string of digits and dots or one with a colon (meant as a
 * literal, a scoped "fe80::1%eth0" too: -EINVAL when it does not parse, never a DNS
 * query).
 * Returns: 0 with *out and *len (@len may be NULL); -EINVAL (@host NULL or empty, bad
 * @family); -EPERM on a shard for a name (logged: what to do instead); -ENOENT (no such
 * host), -EAGAIN (try again), -EAFNOSUPPORT, -ENOMEM, -errno (logged with the resolver's
 * message).
 * Context: any thread but a shard's, for names.
 */
KEEL_API int keel_net_resolve(const char *host, uint16_t port, int family,
			      struct sockaddr_storage *out, socklen_t *len);

#ifdef __cplusplus
}
#endif

#endif

/* SPDX-License-Identifier: MIT */
/* Private to net/: the per-shard network state, the provided-buffer ring, connections. */
#ifndef KEEL_NET_INTERNAL_H
#define KEEL_NET_INTERNAL_H

#include <errno.h>
#include <keel/keel.h>
#include <keel/net.h>
#include <keel/ring.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "../core/hooks.h"

#define NET_MOD "net"
/* Receive buffers the TCP ring starts with in the kernel's hands (pbuf.c, warm reuse). */
#define NET_RX_WINDOW 16
/* Most slices gathered into one sendmsg. */
#define NET_IOV_MAX 64
/* The bulk ring's buffer group, and the buffers it starts with in the kernel's hands. */
#define NET_BULK_BGID   2
#define NET_BULK_WINDOW 4

__attribute__((noreturn)) void keel__net_verify_fail(const char *file, int line, const char *e);
#define net_verify(x)                                                  \
	do {                                                           \
		if (__builtin_expect(!(x), 0))                         \
			keel__net_verify_fail(__FILE__, __LINE__, #x); \
	} while (0)

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

struct net_shard;
struct net_zcrx;

/* A buffer of a provided-buffer ring: its ring and its bytes (the release callback's
 * argument, so that a buffer coming back needs no search of the areas nor a division). */
struct pbuf_slot {
	struct pbuf_ring *r;
	uint8_t *base;
	struct keel_buf *hdr; /* the buffer's header across its uses (keel_buf_slot_create),
			       * made the first time the kernel fills it; NULL before */
};

/* A provided-buffer ring: nbufs buffers of bufsize bytes in areas of allocator memory. */
struct pbuf_ring {
	struct net_shard *ns;
	struct io_uring_buf_ring *br;
	size_t br_bytes;
	uint16_t bgid;
	bool inc; /* IOU_PBUF_RING_INC */
	bool registered;
	uint32_t nbufs, mask, bufsize;
	uint32_t per_area; /* buffers per area */
	unsigned nareas;
	struct keel_slice *areas; /* [nareas], allocator slices holding the memory */
	uint32_t *off;            /* [nbufs] bytes the kernel consumed (incremental) */
	struct keel_slice *kref;  /* [nbufs] the ring's reference while the kernel may write */
	struct pbuf_slot *slot;   /* [nbufs] each buffer's ring and address */
	uint16_t *next;           /* [nbufs] the buffer added at the ring position after this
				   * one's (a bundle's next buffer) */
	uint16_t last;            /* the buffer added last (whose next the next add sets) */
	uint32_t tail;
	uint32_t window; /* most buffers in the ring at once (see pbuf.c, warm reuse) */
	uint32_t wmax;   /* ... the most it grows to */
	uint32_t inring; /* buffers in the ring the kernel has not retired */
	uint16_t *spare; /* [nbufs] stack of buffers neither in the ring nor held */
	uint32_t nspare;
	uint32_t grows; /* times the window doubled */
	uint32_t out;   /* buffers not in the ring */
	uint32_t nkref; /* kref[] entries held */
	uint32_t keep;  /* buffers kept for receives (keel__pbuf_pressed); 0 until made */
};

/* limits.c: a connection's part in the hostile-peer limits (timeouts). */
struct net_lim {
	struct net_lim *prev, *next; /* ns->lim_head: accepted connections with a timeout */
	struct keel_conn *c;
	const struct keel_net_config *cfg;
	uint64_t open_ns; /* accepted */
	uint64_t last_ns; /* the sweep that last saw activity (or open_ns) */
	uint64_t rx;      /* bytes received, counted up to need */
	uint32_t need;    /* header_bytes, 0 read as 1 (a first-byte timeout) */
	bool active;      /* bytes moved since the last sweep */
	bool listed;
};

struct net_shard {
	unsigned id;
	int cpu;
	struct keel_net_config cfg;
	bool stopping;
	bool files; /* sparse file table registered (direct descriptors) */
	bool f_ms_accept, f_ms_recv, f_bundle, f_inc, f_direct, f_zc;
	unsigned refs;
	struct pbuf_ring tcp; /* bgid 0 */
	struct pbuf_ring udp; /* bgid 1, created on first UDP use */
	bool udp_ready;
	struct pbuf_ring bulk; /* NET_BULK_BGID, created on the first move to it */
	bool bulk_ready;
	bool dropping;                          /* releasing the rings' own references at the end */
	struct keel_conn *conns;                /* every live connection (abort on stop) */
	struct keel_udp *udps;                  /* every live UDP endpoint */
	struct udp_send *udp_sends_free;        /* udp.c: pooled send slots */
	struct udp_send_chunk *udp_send_chunks; /* ... and the chunks they live in */
	struct udp_gso *udp_gso_free;           /* udp.c: pooled multi-datagram sendmsgs */
	struct keel_conn *starved;              /* connections waiting for a first-ring buffer */
	struct keel__later starve_kick;         /* their deferred re-arm */
	struct keel_conn *starved_bulk;         /* ... for a bulk-ring buffer */
	struct keel__later starve_bulk_kick;
	struct keel_conn *zc_waiting;    /* RECV_ZC ended with ENOMEM: waiting for area slices */
	struct keel__later zc_wait_kick; /* their deferred re-arm */
	/* frame.c: framers (keel_framer_on_data) holding a partial frame's received slices,
	 * which copy them out when the receive buffers run out (keel__framers_reclaim) */
	struct keel_framer *holding;
	struct keel__later reclaim_kick; /* ... their deferred reclaim */
	unsigned udp_starving;           /* UDP endpoints waiting for a buffer */
	struct keel__later udp_kick;     /* ... their deferred re-arm */
	struct keel_udp *udp_wake_next;  /* ... the first to look at when it runs (in turn) */
	/* Connections whose queue goes out at the end of the pass (conn.c, flush_later), all
	 * of them from one deferred call, queued (with a reference) while the list is not
	 * empty. */
	struct keel_conn *flush_head, *flush_tail;
	/* Closed connections with nothing in flight, waiting for on_close from the loop. */
	struct keel_conn *close_head, *close_tail;
	struct keel__later close_later; /* its run, queued (holding a reference) while not empty */
	struct keel__lshard *lshards;   /* listener parts on this shard */
	uint32_t direct_conns;          /* accepted connections holding a direct descriptor */
	uint32_t accepts_single;        /* single direct accepts in flight (a slot each) */
	bool table_full_said;           /* the full table was logged (listen.c) ... */
	uint64_t table_full_ns;         /* ... at this time (keel_now_ns) */
	uint64_t table_full_unsaid;     /* ... and parks since, not logged */
	bool close_untimed_said;        /* a close without its timer was logged (conn.c) */
	/* The stop's flush (--stop-flush-ms, shard.c): the connections close gracefully under
	 * a hold of the stop; its end (the last one gone, or the deadline) stops the rest. */
	bool flushing;
	struct keel__stop_hold flush_hold;
	struct keel__later flush_end_later;    /* queued (with a reference) as the last one goes */
	struct keel__later flush_timers_later; /* the closes' timers, again after the stop's */
	struct keel_slice *scratch; /* [scratch_n] slices of one completion, or of held data */
	unsigned scratch_n;         /* the larger ring's nbufs */
	struct keel_net_stats st;
	struct net_zcrx *zcrx;        /* zcrx.c: the shard's ZCRX set-up (NULL until decided) */
	struct net_lim *lim_head;     /* limits.c: connections with a timeout */
	struct keel_timer *lim_timer; /* ... their sweep, running while the list is not empty */
	uint64_t lim_period;          /* ... its period */
	struct io_uring *ring;        /* the shard's ring (keel_shard_ring_get), for UDP sends */
};

/* shard.c */
int keel__net_shard_get(struct net_shard **out);
/* The same; when the state is made now, with @cfg (NULL: the process default). */
int keel__net_shard_get_cfg(const struct keel_net_config *cfg, struct net_shard **out);
/* The fields the shard's state is made with (buffer rings, file table) are equal. */
bool keel__net_config_shard_equal(const struct keel_net_config *a, const struct keel_net_config *b);
struct net_shard *keel__net_shard_cur(void);
/* A connection's or endpoint's call on its own shard (net.h's Context): from another shard
 * it took that shard's ring (a direct descriptor's slot number then names another socket
 * there) and raced the owner over the queue. A compare per call. */
#define net_on_own_shard(ns) net_verify((ns) == keel__net_shard_cur())

/* What a person needs after a failed socket, bind or listen call's strerror (@err, its
 * -errno), or "": for a bind (@bind), the fix of a privileged port and of an address no
 * interface has; for any, of a family turned off and of a full descriptor table. */
static inline const char *
keel__sock_hint(int err, bool bind)
{
	if (bind && err == -EACCES)
		return " (ports below net.ipv4.ip_unprivileged_port_start, 1024 by default, need "
		       "CAP_NET_BIND_SERVICE: setcap cap_net_bind_service=+ep on the program, "
		       "AmbientCapabilities= in its systemd unit, or a higher port)";
	if (bind && err == -EADDRNOTAVAIL)
		return " (no interface of this host has that address: ip -br addr lists them)";
	if (err == -EAFNOSUPPORT)
		return " (the address family is turned off on this host, IPv6 by ipv6.disable=1, "
		       "or for this service, by systemd's RestrictAddressFamilies=: use an address "
		       "of a family it allows)";
	if (err == -EMFILE || err == -ENFILE)
		return " (out of file descriptors: raise ulimit -n, or fs.file-max for ENFILE)";
	return "";
}

/* The shard's state lives while references are held (connections, endpoints, buffers
 * out, deferred calls). Inline: taken and dropped for every receive buffer. */
static inline void
keel__net_ref(struct net_shard *ns)
{
	ns->refs++;
}
/* The last reference, or any while the shard stops: shard.c. */
void keel__net_unref_slow(struct net_shard *ns);
static inline void
keel__net_unref(struct net_shard *ns)
{
	net_verify(ns->refs > 0);
	if (__builtin_expect(ns->refs > 1 && !ns->stopping, 1)) {
		ns->refs--;
		return;
	}
	keel__net_unref_slow(ns);
}
/* Run @fn(@l) from the loop once: nothing when @l is queued already; else @l queued
 * (keel__later, which allocates nothing) holding a reference to @ns, which @fn drops
 * (keel__net_unref). False only once the shard's loop has ended (nothing queued). */
bool keel__net_kick(struct net_shard *ns, struct keel__later *l, void (*fn)(struct keel__later *));
/* @c asks for a bulk ring: bulk_buf_size above buf_size. */
static inline bool
keel__net_bulk_on(const struct keel_net_config *c)
{
	return c->bulk_buf_size > c->buf_size;
}
/* The bulk ring, made now if it is not yet; NULL when it is off (keel__net_bulk_on), the
 * shard stops, or making it failed (logged once, with the fixes; st.bulk_failed). */
struct pbuf_ring *keel__net_bulk(struct net_shard *ns);
/* The SEND_ZC fixed buffer for @s: 0 with index/offset, or -errno. Works for the shard's
 * allocator buffers and for slices of its receive buffers. */
int keel__net_fixed(struct net_shard *ns, const struct keel_slice *s, unsigned *index,
		    uint64_t *offset);

/* pbuf.c */
int keel__pbuf_init(struct net_shard *ns, struct pbuf_ring *r, uint16_t bgid, uint32_t nbufs,
		    uint32_t bufsize, bool inc);
/* The same, with at most @window buffers in the kernel's ring at first (0: all of them),
 * growing to at most @wmax (0: all of them). */
int keel__pbuf_init_window(struct net_shard *ns, struct pbuf_ring *r, uint16_t bgid, uint32_t nbufs,
			   uint32_t bufsize, bool inc, uint32_t window, uint32_t wmax);
void keel__pbuf_fini(struct pbuf_ring *r);
/* Whether @r has a buffer to give the kernel: in the ring, or a spare a top-up puts there. */
static inline bool
keel__pbuf_has_buffer(const struct pbuf_ring *r)
{
	return r->inring || r->nspare;
}
/* A receive found the ring empty: double the window (up to wmax) when spares are
 * left. Returns true when the ring now holds a buffer, so a re-arm can succeed. */
bool keel__pbuf_grow(struct pbuf_ring *r);
/* Put the ring's own references (no receive may be in flight). */
void keel__pbuf_drop_krefs(struct pbuf_ring *r);
/* Turn a receive completion of @res bytes starting at buffer @bid into slices in @out
 * (at most @max). Returns how many, or -errno (-ENOMEM: a buffer could not be wrapped).
 * On error no slice is returned and the data is lost (the caller aborts the connection),
 * but no buffer is: every buffer of the completion the kernel retired goes back to the
 * ring, through the put of its slices or directly when it was never wrapped. */
int keel__pbuf_take(struct pbuf_ring *r, unsigned bid, int res, uint32_t cqe_flags, bool bundle,
		    struct keel_slice *out, unsigned max);
/* A completion with no bytes (res <= 0) that names buffer @bid (IORING_CQE_F_BUFFER): a
 * single-shot receive run from io-wq commits the buffer it picks, and when it then meets an
 * EOF or an error (a reset) the kernel retires the buffer empty and names it (seen on Linux
 * 6.18). Back to the ring, or it would shrink for good. */
void keel__pbuf_retire_empty(struct pbuf_ring *r, unsigned bid);
/* Slices shorter than this, of a ring running low and to wait in a send queue, are copied
 * into the connection's open write buffer (keel_conn_send) rather than each into a buffer
 * of its own: bytes trickled to an echo that cannot send then cost about their length. */
#define NET_PRESSED_JOIN_MAX 256u
/* ... into a new buffer of this many bytes when the open one has no room. */
#define NET_PRESSED_JOIN_BUF 512u
/* A slice to be held while a peer reads: copied out of a receive ring (or ZCRX area)
 * running low, so that held slices cannot take every receive buffer (conn.c). */
void keel__net_unring(struct net_shard *ns, struct keel_slice *s);
/* True when @p lies in @r's memory; then *area is its area slice. */
bool keel__pbuf_owns(const struct pbuf_ring *r, const void *p, const struct keel_slice **area);
/* Whether @p lies in a buffer of @r while @r runs low: over three quarters of its buffers
 * out (held by connections' send queues, paused reads, the application). A slice held for
 * long there is better copied (conn.c, unring), so receives keep buffers. Inline: checked
 * for every slice a send queue or a UDP send holds, so the count comes first and the
 * address only for a ring that runs low. */
static inline bool
keel__pbuf_pressed(const struct pbuf_ring *r, const void *p)
{
	const struct keel_slice *area;

	/* Held buffers only: out less those the ring holds for the kernel (incremental). A
	 * ring not made (keep, out and nbufs 0) never runs low. */
	return r->out - r->nkref + r->keep > r->nbufs && keel__pbuf_owns(r, p, &area);
}

/* Whether @s's bytes follow on from @t's in the same buffer (the same generation), with
 * room in a slice's 32-bit length for both: @t can grow over them and @s be put. A send
 * queue's tail and a framer's last held slice do so (a peer trickling bytes into an
 * incrementally consumed buffer makes a slice per receive). */
static inline bool
keel__slice_follows(const struct keel_slice *t, const struct keel_slice *s)
{
	return t->buf == s->buf && t->gen_ == s->gen_ && t->data + t->len == s->data &&
	       s->len <= UINT32_MAX - t->len;
}

/* Fault injection for tests: the next this-many first uses of a receive buffer in
 * keel__pbuf_take fail with -ENOMEM, as they do when the buffer's header cannot be
 * allocated (a buffer's later uses reuse its header and cannot fail). */
extern _Atomic unsigned keel__pbuf_fail_wraps;
/* ... while non-zero, each TCP receive armed goes to io-wq (IOSQE_ASYNC), as one does when
 * the kernel cannot allocate its poll entry; the count drops by one. */
extern _Atomic unsigned keel__conn_fail_recv_async;
/* ... the next this-many hand-backs of a paused framer's slices (frame.c) find no memory. */
extern _Atomic unsigned keel__frame_fail_give_back;
/* ... the next this-many buffers a reclaim (keel__framer_compact) asks for with their full
 * room find no memory, as when --memory runs low: it falls back to a smaller one. */
extern _Atomic unsigned keel__frame_fail_room;
/* ... the next this-many clearings of a direct descriptor's slot by a files update
 * (keel__direct_clear) fail with -EIO. */
extern _Atomic unsigned keel__net_fail_files_update;

struct stat;
/* listen.c: the stat of a Unix listener's path right after its bind, which records the
 * socket file's identity (stat; tests: a path removed between the bind and the stat, or a
 * stat that fails with the file there). Called once per path listener, at its creation. */
extern int (*keel__unix_path_stat)(const char *path, struct stat *st);

/* frame.c: the slices a framer holds (tests: contiguous pushes are held as one). */
size_t keel__framer_slices(const struct keel_framer *f);
/* conn.c: the slices in a connection's send queue (tests: contiguous sends are one). */
uint32_t keel__conn_queue_slices(const struct keel_conn *c);
/* ... whether slice @s lies in a receive ring or ZCRX area running low (tests: the path
 * keel_conn_send takes for it). */
bool keel__conn_slice_pressed(const struct keel_conn *c, const struct keel_slice *s);
/* ... whether it holds an open write buffer (tests: it goes once its last piece is sent). */
bool keel__conn_write_open(const struct keel_conn *c);
/* Copy what @f holds into buffers of @a and put the held slices, as a reclaim does (the
 * tests call it between pushes). Returns 1 (copied), 0 (nothing held of the receive
 * buffers), or -ENOMEM (nothing changed). */
struct keel_alloc;
int keel__framer_compact(struct keel_framer *f, struct keel_alloc *a);

/* conn.c */
/* @family: the socket's (AF_INET, AF_INET6, AF_UNIX); @accepted: from a listener (else
 * keel_conn_connect): together they decide whether it may receive with RECV_ZC
 * (keel__zcrx_conn_wants). @cfg: the connection settings (watermarks, close timeout,
 * SEND_ZC threshold); NULL: the shard's. Must outlive the connection. */
struct keel_conn *keel__conn_new(struct net_shard *ns, int fd, bool direct, int family,
				 bool accepted, const struct keel_conn_ops *ops, void *app,
				 const struct keel_net_config *cfg);
void keel__conn_opened(struct keel_conn *c);
/* An accepted connection: read its addresses (unless !@addrs), then open it (on_open).
 * @local (@locallen bytes): its local address when the listener knows it (bound to one
 * IP address), so only the peer's is read; NULL: read both. */
void keel__conn_accepted(struct keel_conn *c, bool addrs, const struct sockaddr_storage *local,
			 socklen_t locallen);
/* Re-arm the connections waiting for a buffer of ring @r (ns->tcp or ns->bulk). */
void keel__conn_starved_kick(struct net_shard *ns, const struct pbuf_ring *r);
/* The receive buffers (or ZCRX's area buffers) ran out: every framer of the shard holding a
 * partial frame's received slices copies them into buffers of its own and puts them, at the
 * end of the pass (frame.c). Without it, partial frames that together hold every buffer
 * could never complete, and every connection of the shard would starve. */
void keel__framers_reclaim_later(struct net_shard *ns);
/* listen.c: the reuseport steering program for @steer (CPU or QUEUE) over @n shards into
 * @f, room for 2 * keys + 6 instructions (keys: @n CPUs @cpus, or @nqueues queues mapped by
 * @queue_shard, NULL: queue % n); its length. */
struct sock_filter;
/* Shards of one CPU that CPU steering shares its connections among: a jump passes over
 * 2 * this + 3 instructions, and a classic BPF jump goes at most 255 ahead. */
#define KEEL__STEER_CPU_GROUP_MAX 126
/* The most instructions keel__steer_prog writes for @keys keys (shards or queues). */
#define KEEL__STEER_PROG_MAX(keys) (5 * (keys) + 6)
/* The longest queue map queue steering takes: its program is 2 * queues + 6 instructions,
 * and the kernel takes at most BPF_MAXINSNS (4096) of classic BPF. */
#define KEEL__STEER_QUEUES_MAX 2045
unsigned keel__steer_prog(enum keel_steer steer, unsigned n, const int *cpus,
			  const unsigned *queue_shard, unsigned nqueues, struct sock_filter *f);
/* The shard's network state goes: its framers forget it (frame.c). */
void keel__framers_detach(struct net_shard *ns);
/* The head of @c's list of framers holding a partial frame of it (frame.c keeps it, so
 * that a failed reclaim of any of them aborts @c at once); conn.c tells them when @c goes,
 * after its on_close (keel__framers_conn_gone, given the head). */
struct keel_framer **keel__conn_framer_slot(struct keel_conn *c);
void keel__framers_conn_gone(struct keel_framer *f);
/* Area slices went back to the kernel (a refill published): re-arm the connections whose
 * RECV_ZC ended for want of an area buffer (deferred). */
void keel__conn_zc_wait_kick(struct net_shard *ns);
/* A UDP sendmsg of several datagrams of @seg bytes was refused with @err where one alone
 * went, on a socket with UDP checksums off (@csum_off: SO_NO_CHECK or UDP_NO_CHECK6_TX) or
 * not: KEEL__UDP_GSO_CEILING, datagrams of @seg bytes or more go alone from then on (the
 * batch was larger than the path's MTU: EMSGSIZE, or EINVAL before Linux 6.14), or
 * KEEL__UDP_GSO_OFF, every datagram of the endpoint does (udp.c). */
enum keel__udp_gso_verdict { KEEL__UDP_GSO_CEILING, KEEL__UDP_GSO_OFF };
/* The payload of a datagram at IPv4's smallest MTU, 68 bytes (RFC 791): no path refuses a
 * segment this small, so EMSGSIZE at or below it is the socket's. It was 548 (576's), but a
 * route's learned MTU goes down to net.ipv4.route.min_pmtu (552 by default, 68 at least),
 * and a peer that announced such an MTU then turned batching off for every peer. */
#define KEEL__UDP_GSO_SEG_FLOOR 40u
enum keel__udp_gso_verdict keel__udp_gso_refused(int err, uint32_t seg, bool csum_off);
/* A UDP buffer came back: re-arm, from the loop, the endpoints waiting for one (udp.c). */
void keel__udp_starved_kick(struct net_shard *ns);
/* Bytes keel_conn_write() can append to the write buffer at the queue's tail without a new
 * buffer (0: the tail is not a write buffer). */
size_t keel__conn_write_room(const struct keel_conn *c);
void keel__conns_stop(struct net_shard *ns);
/* The stop's flush: every connection closed as keel_conn_close does (its queue sent, then
 * a FIN, lingering for the peer's EOF); one still connecting, or accepted and not yet
 * opened, is aborted with -ESHUTDOWN (conn.c). */
void keel__conns_flush(struct net_shard *ns);
/* The flush's closes' timers again, after the stop stopped every timer: the linger's
 * KEEL_NET_LINGER_NS for one lingering (begun before the stop too), close_timeout_ns from
 * here for one whose queue still goes out (conn.c). */
void keel__conns_flush_timers(struct net_shard *ns);
/* The last connection is gone while flushing (conn.c, conn_free): the flush ends from the
 * loop (shard.c). */
void keel__net_flush_idle(struct net_shard *ns);
/* Tests (simulated ZCRX kernel side): complete @c's simulated RECV_ZC (armed when its shard
 * has a keel__zcrx_sim_attach() queue) with @cqe (32 bytes), through the path every
 * receive completion takes (recv_cb's): data, EOF, errors, and the re-arm when @cqe lacks
 * IORING_CQE_F_MORE. Returns: 0, or -EINVAL when @c has no simulated RECV_ZC armed.
 * Context: @c's shard. */
int keel__conn_zcrx_inject(struct keel_conn *c, const struct io_uring_cqe *cqe);
/* Tests: @c's armed receive: 0 none, 1 the copy path's, 2 a RECV_ZC (real or simulated). */
int keel__conn_recv_kind(const struct keel_conn *c);

/* The descriptor (*direct: a direct one), whether the application closed it, and a hold
 * that keeps it (and on_close) waiting, for an operation of another file. */
int keel__conn_fd(const struct keel_conn *c, bool *direct);
bool keel__conn_closing(const struct keel_conn *c);
/* Whether the framer delivers @c's next frame: 0 yes; KEEL__CONN_CLOSING, closed (the rest
 * is not read); KEEL__CONN_PAUSED, reading paused (keel_conn_pause_read, or the send
 * queue's high watermark: the rest waits for the resume). One call per frame. */
enum { KEEL__CONN_CLOSING = 1, KEEL__CONN_PAUSED };
int keel__conn_deliver_stop(const struct keel_conn *c);
/* Put @n received slices back in front of what @c holds for delivery after resume, in
 * order (the framer's undelivered bytes when a frame's callback paused reading). Consumes
 * them; a failure aborts @c (-ENOMEM). */
void keel__conn_unread(struct keel_conn *c, struct keel_slice *s, unsigned n);
struct net_shard *keel__conn_shard(const struct keel_conn *c);
void keel__conn_hold(struct keel_conn *c);
void keel__conn_unhold(struct keel_conn *c);

/* limits.c (docs/reliability.md). */
/* An accepted connection opens: list it when its configuration has a timeout. */
void keel__lim_open(struct net_shard *ns, struct net_lim *l, struct keel_conn *c,
		    const struct keel_net_config *cfg);
/* The connection is closing or gone: no timeout applies any more. Idempotent. */
void keel__lim_close(struct net_shard *ns, struct net_lim *l);
/* The runtime stops: the sweep timer goes. */
void keel__lim_stop(struct net_shard *ns);
/* Out of line: count, log (rate-limited), abort @c with -ENOBUFS; returns -ENOBUFS. */
int keel__lim_send_refuse(struct net_shard *ns, struct keel_conn *c, bool conn_cap, uint64_t limit);
/* 0 when @c may queue @bytes more (having @queued); otherwise counted, @c aborted with
 * -ENOBUFS, and -ENOBUFS. Inline: two compares on the send path. */
static inline int
keel__lim_send_check(struct net_shard *ns, struct keel_conn *c, const struct keel_net_config *cfg,
		     uint64_t queued, uint64_t bytes)
{
	if (__builtin_expect(cfg->send_max && queued + bytes > cfg->send_max, 0))
		return keel__lim_send_refuse(ns, c, true, cfg->send_max);
	if (__builtin_expect(ns->cfg.shard_send_max &&
				     ns->st.send_queued + bytes > ns->cfg.shard_send_max,
			     0))
		return keel__lim_send_refuse(ns, c, false, ns->cfg.shard_send_max);
	return 0;
}
/* @n bytes received; a send completed. One store each on the hot path. */
static inline void
keel__lim_rx(struct net_lim *l, int n)
{
	if (l->listed) {
		l->active = true;
		if (l->rx < l->need)
			l->rx += (uint64_t)n;
	}
}
/* Whether @l's header timeout still runs: on, and its header not all received. */
static inline bool
keel__lim_header_pending(const struct net_lim *l)
{
	return l->cfg->header_timeout_ns && l->rx < l->need;
}
/* The application closed: the header timeout no longer applies (it cut the close's flush,
 * and counted a connection already closed). Returns the nanoseconds it had left at @now
 * (at least 1 ms) while the header was still pending, else 0: keel_conn_close bounds the
 * close by that when close_timeout_ns is 0, so a peer that neither sends nor reads is
 * still ended. */
static inline uint64_t
keel__lim_header_end(struct net_lim *l, uint64_t now)
{
	uint64_t left = 0;

	if (l->listed && keel__lim_header_pending(l)) {
		/* Saturated: a program may set UINT64_MAX for a timeout that never comes, which
		 * wrapped to a 1 ms bound on the close. */
		uint64_t t = l->cfg->header_timeout_ns;
		uint64_t end = t > UINT64_MAX - l->open_ns ? UINT64_MAX : l->open_ns + t;
		left = end > now + KEEL_MS(1) ? end - now : KEEL_MS(1);
	}
	l->need = 0;
	return left;
}
static inline void
keel__lim_tx(struct net_lim *l)
{
	l->active = true;
}

/* sockopt.c: prepare @sqe as a uring_cmd SETSOCKOPT/GETSOCKOPT (Linux 6.7) on @fd. */
void keel__sqe_sockopt(struct io_uring_sqe *sqe, int fd, bool get, int level, int name, void *val,
		       uint32_t len);

/* listen.c */
/* Stop accepting. @cancel: cancel the armed accepts now (the stop's flush postpones the
 * stop's cancel of everything, which they otherwise wait for). */
void keel__listeners_stop(struct net_shard *ns, bool cancel);
/* listen.c: the shard's accepted connections nearly fill its direct-descriptor table:
 * cancel the armed multishot accepts (single ones follow, or none while it is full); one
 * of them released its slot: arm the parked ones. */
void keel__listeners_table_low(struct net_shard *ns);
void keel__listeners_slot_freed(struct net_shard *ns);
/* listen.c: clear direct descriptor @slot with a synchronous files update; 0 or -errno. A
 * failure leaves the slot taken: the caller counts it in direct_stuck. */
int keel__direct_clear(unsigned slot);
/* listen.c: the fix an accept failure's log line names for @res (-errno), with direct
 * descriptors (@direct) or plain ones: " (...)", for every error. */
const char *keel__accept_error_hint(int res, bool direct);

/* Which shard a receive queue's connections arrive on, by its NAPI id (queue steering's
 * check): filled by the first connection from each queue, shared by the shards. */
#define KEEL__NAPI_SLOTS 1024
struct keel__napi_tab {
	_Atomic uint64_t e[KEEL__NAPI_SLOTS]; /* id << 32 | (shard + 1); 0: free */
};
/* A connection of @shard came from NAPI id @id: true when another shard's connections came
 * from it first (the queue is not steered to one shard). A shard may own several queues.
 * Once the table is full, ids not in it are not checked (false). Context: any shard. */
bool keel__napi_note(struct keel__napi_tab *t, uint32_t id, unsigned shard);

/* udp.c */
void keel__udps_stop(struct net_shard *ns);
/* Free the send-slot pool (the shard's network state is going). */
void keel__udp_fini(struct net_shard *ns);

/* The configuration set by keel_net_config_set() (defaults until then). */
const struct keel_net_config *keel__net_cfg(void);

#endif

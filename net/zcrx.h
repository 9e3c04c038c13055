/* SPDX-License-Identifier: MIT */
/* Private to net/: ZCRX interface-queue set-up on a shard's ring (zcrx.c). */
#ifndef KEEL_NET_ZCRX_H
#define KEEL_NET_ZCRX_H

#include <keel/compat.h>
#include <keel/zcrx.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <unistd.h>

#include "net_internal.h" /* struct net_shard: the inline checks below */

struct keel_slice;
struct io_uring_sqe;
struct io_uring;
struct io_uring_params;

/* A shard's interface queue: the area the NIC writes payloads into and the refill ring
 * through which the shard hands consumed buffers back. */
struct net_zcrx {
	enum keel_zcrx_state state;
	int err; /* positive errno of a fallback */
	int rxq;
	char iface[32];
	unsigned shard;
	bool claimed;    /* holds (iface, rxq) in the process's claim table */
	bool registered; /* the kernel took the registration: it holds the queue until the
			  * ring closes (6.18 has no unregister), and with it the memory */
	void *area;      /* page-aligned, area_len bytes, first touched on the shard's CPU */
	size_t area_len;
	void *region; /* the refill ring's user region */
	size_t region_len;
	uint64_t area_token; /* rq_area_token: area id << 48, or'ed into every refill entry */
	uint32_t id;         /* zcrx_id */
	uint32_t rq_entries, rq_mask;
	uint32_t *rq_head, *rq_tail; /* in the region, at the kernel's offsets */
	struct keel_zcrx_rqe *rqes;
	uint32_t rq_local_tail; /* entries written; *rq_tail catches up once per pass */

	/* The receive path (zcrx_rx.c). */
	struct net_shard *ns; /* NULL once keel__zcrx_fini() ran with slices still held */
	bool sim;             /* keel__zcrx_sim_attach(): a test plays the kernel; no RECV_ZC */
	bool publish_queued;  /* a deferred publish (end of this pass) holds a net reference */
	uint32_t held;        /* area slices not yet put (each will write one refill entry) */
	/* The kernel's buffers are pages, and several fragments (small messages) can lie in
	 * one: a page goes back only once every slice in it was put. So the pressure line is
	 * of pages, and counts those with a slice out, not slices (keel__zcrx_set_area). */
	uint32_t *page_slices; /* [area pages] slices out in each page */
	uint32_t pages_held;   /* pages with page_slices > 0 */
	uint32_t press_line;   /* pages_held above which partial frames give theirs back: 3/4
				* of the area's pages */
	unsigned page_shift;   /* log2 of the page size */
	struct keel__zcrx_frag *pendv; /* [npend] fragments the full refill ring could not take */
	uint32_t npend, pendcap;
	/* Counters (keel_zcrx_stats). */
	uint64_t zc_bytes, zc_frags, copy_bytes, refills, publishes, dropped;
	uint64_t conn_fallbacks, cq_full_rearms, nomem_waits, misrouted, nomem_aborts;
	uint64_t frags_refused;   /* CQEs refused with -EPROTO (keel__zcrx_take) */
	uint32_t retry_rounds;    /* the retry timer's firings (keel__zcrx_nomem_give_up) */
	struct keel_timer *retry; /* re-arms the connections waiting after ENOMEM, and writes
				   * refills that found the ring full */
	uint64_t frames, frame_frags, frame_frags_max;
};

/* One piece of received payload in the area: bytes [off, off + len). */
struct keel__zcrx_frag {
	uint64_t off;
	uint32_t len;
};

/* Parse a RECV_ZC completion (a 32-byte CQE: the second 16 bytes are a struct
 * keel_zcrx_cqe) for the area registered with @area_token of @area_len bytes.
 * Returns: 1 and *out for payload; 0 when the CQE carries none (res 0: the peer closed when
 * IORING_CQE_F_MORE is clear); the CQE's -errno when res < 0; -EPROTO when the offset names
 * another area or the bytes do not lie inside this one (nothing is read from the area). */
int keel__zcrx_cqe_parse(const struct io_uring_cqe *cqe, uint64_t area_token, uint64_t area_len,
			 struct keel__zcrx_frag *out);

/* The fragments of one message: a growable array, bounded by @max (a frame of the framer's
 * maximum size in the smallest fragments), so a message of any length up to that is
 * gathered whole and a longer one is refused, never written past an array's end. */
struct keel__zcrx_msg {
	struct keel__zcrx_frag *v;
	uint32_t n, cap, max;
	uint64_t bytes;
};
void keel__zcrx_msg_init(struct keel__zcrx_msg *m, uint32_t max);
/* Append @f. Returns: 0; -E2BIG at @max fragments; -ENOMEM (the message is unchanged). */
int keel__zcrx_msg_add(struct keel__zcrx_msg *m, const struct keel__zcrx_frag *f);
/* The capacity keel__zcrx_msg_add() grows a full array of @cap to: 16 at first, then twice
 * @cap, never above @max (computed so that it cannot wrap). */
uint32_t keel__zcrx_msg_next_cap(uint32_t cap, uint32_t max);
/* Forget the fragments, keep the memory (the next message reuses it). */
void keel__zcrx_msg_reset(struct keel__zcrx_msg *m);
void keel__zcrx_msg_fini(struct keel__zcrx_msg *m);

/* Queue @f for return to the kernel: the refill entry {off | area token, len}, written but
 * not yet visible. Returns: 0, or -ENOBUFS when the ring is full (the kernel has not consumed
 * what was published: publish, and retry next pass). */
int keel__zcrx_refill_add(struct net_zcrx *z, const struct keel__zcrx_frag *f);
/* Make the entries queued since the last call visible: one store-release of the tail.
 * Returns: how many entries it published. */
uint32_t keel__zcrx_refill_publish(struct net_zcrx *z);

/* The receive path on connections (zcrx_rx.c). */

/* Prepare @sqe as a multishot IORING_OP_RECV_ZC on @fd into @ns's interface queue, when the
 * shard's queue is registered. Returns: true when prepared (the caller binds it); false
 * when the shard receives through the copy path (@sqe untouched). */
bool keel__zcrx_prep_recv(struct net_shard *ns, struct io_uring_sqe *sqe, int fd);
/* Whether a connection may receive with RECV_ZC: only an accepted TCP one (@family AF_INET
 * or AF_INET6, @accepted). The kernel answers a RECV_ZC on a Unix socket with
 * EPROTONOSUPPORT, and an outbound connection's packets land on whatever queue the NIC's
 * RSS picks for its 4-tuple, usually not this shard's (EFAULT when another interface
 * queue's): keel steers accepted connections only. */
bool keel__zcrx_conn_wants(int family, bool accepted);
/* What a connection does when its RECV_ZC ends with @res < 0 (not -ECANCELED). The copy
 * path is no way out for a TCP connection of a ZCRX queue: its payload lies in the area's
 * buffers, which a plain recv refuses with EFAULT (the kernel hands such skbs only to
 * RECV_ZC, or to MSG_SOCK_DEVMEM). */
enum keel__zcrx_end {
	KEEL__ZCRX_END_ABORT, /* -EFAULT (its payload is in another interface queue's buffers:
			       * no receive of this shard can read it) and anything else: the
			       * connection is aborted with @res */
	KEEL__ZCRX_END_REARM, /* -ENOSPC (the CQ was full): arm the RECV_ZC again now */
	KEEL__ZCRX_END_WAIT,  /* -ENOMEM (no free area buffer): arm it again once a refill is
			       * published or KEEL__ZCRX_RETRY_NS has passed, unless it keeps
			       * failing with nothing held (keel__zcrx_nomem_give_up) */
	KEEL__ZCRX_END_COPY,  /* -EPROTONOSUPPORT (not TCP): the copy path from now on */
};
enum keel__zcrx_end keel__zcrx_end_action(int res);
/* A RECV_ZC that ended with ENOMEM is armed again after this at the latest. The ENOMEM is
 * the kernel's copy fallback finding the area's free list empty, and its buffers go back
 * to that list only when the interface queue's page pool allocates, i.e. as that queue
 * receives (io_zcrx_ring_refill, Linux 6.18), which tells the shard nothing. */
#define KEEL__ZCRX_RETRY_NS (10ull * 1000 * 1000)
/* A connection's RECV_ZCs ended by ENOMEM while the shard held no area slice, in a row
 * (since its last payload), each in a retry round of its own (keel__zcrx_nomem_give_up).
 * Zero when the connection is made. */
struct keel__zcrx_nomem {
	uint32_t rounds; /* such ends counted */
	uint32_t round;  /* the shard's retry round of the last one counted */
};
/* That many such ends (about a second of retry rounds, KEEL__ZCRX_RETRY_NS apart at least)
 * and the connection is aborted: its packets are copied, so they arrive on a queue without
 * ZCRX, and the ZCRX queue may never receive and so never give the buffers back. */
#define KEEL__ZCRX_NOMEM_ROUNDS 100
/* A connection's RECV_ZC ended with -ENOMEM: count it in @w when the shard holds no area
 * slice and a retry round has passed since the last one counted (a refill publish wakes
 * waiters sooner; it is not a round). Returns: true when that made
 * KEEL__ZCRX_NOMEM_ROUNDS: the caller aborts the connection with -ENOMEM (counted in
 * nomem_aborts, the first on the shard logged with the cause and the fix). A connection
 * resets @w->rounds to 0 when a RECV_ZC delivers payload. Context: @ns's shard. */
bool keel__zcrx_nomem_give_up(struct net_shard *ns, struct keel__zcrx_nomem *w);
/* Tests: one round of the retry timer now, as its firing does (waiting refills written,
 * waiting connections armed again at the end of the pass, the round counted). */
void keel__zcrx_retry_now(struct net_shard *ns);
/* Count a RECV_ZC re-armed after -ENOSPC or waiting after -ENOMEM (stats). */
void keel__zcrx_count_end(struct net_shard *ns, int res);
/* A connection's RECV_ZC ended with -ENOMEM and it waits, or refills wait for room in a
 * full refill ring: the shard's retry timer is armed (made on first use); when it fires it
 * writes the waiting refills and arms the waiting connections. Returns 0, or -ENOMEM (no
 * timer: the connection is aborted; refills then wait for a completion or a put). */
int keel__zcrx_retry_later(struct net_shard *ns);
/* The network state stops: the retry timer goes. */
void keel__zcrx_stop(struct net_shard *ns);
/* A connection's RECV_ZC ended with -EPROTONOSUPPORT and it moves to the copy path:
 * counted (conn_fallbacks), the first on the shard logged. */
void keel__zcrx_conn_to_copy(struct net_shard *ns, int res);
/* A connection's RECV_ZC ended with -EFAULT and it is aborted: counted (misrouted), the
 * first on the shard logged with the fix (steering). */
void keel__zcrx_misrouted(struct net_shard *ns);
/* Tests: whether a connection of @ns arms a simulated RECV_ZC (keel__zcrx_sim_attach)
 * instead of a real one or the copy path's receive. */
bool keel__zcrx_sim_recv(const struct net_shard *ns);
/* Turn the RECV_ZC completion @cqe (32 bytes) into a slice of the area: an external buffer
 * (keel_buf_wrap) whose last put, on this shard or sent home from another, writes the
 * refill entry {off | area token, len}; the refill tail is then published once, at the end
 * of the loop pass (a deferred call), however many slices were put in it.
 * Ownership: *out holds the slice's only reference.
 * Returns: 1 and *out; 0 for a completion without payload; the CQE's -errno; -EPROTO for
 * an offset outside the area (nothing returned: the kernel's entry is not ours to guess);
 * -ENOMEM when no buffer header could be had (the fragment goes straight back).
 * Context: @ns's shard. */
int keel__zcrx_take(struct net_shard *ns, const struct io_uring_cqe *cqe, struct keel_slice *out);
/* Whether @p lies in @ns's area while more of its pages hold a slice than the kernel can
 * spare (over three quarters of its buffers, a page each, as keel__pbuf_pressed for a
 * copy-path ring; several small fragments in one page are one page held):
 * a slice there that a send queue or a paused connection is about to hold for as long as a
 * peer takes to read is better copied out (conn.c, unring). Context: @ns's shard. */
static inline bool
keel__zcrx_pressed(const struct net_shard *ns, const void *p)
{
	const struct net_zcrx *z = ns->zcrx;
	const uint8_t *b = p;

	return z && z->state == KEEL_ZCRX_ON && z->pages_held > z->press_line &&
	       b >= (const uint8_t *)z->area && b < (const uint8_t *)z->area + z->area_len;
}
/* Bytes a shard received through the copy path while ZCRX fell back, or with ZCRX on for a
 * connection that receives through it (Unix, outbound, or refused: keel__zcrx_conn_wants,
 * conn_fallbacks); stats. Inline, as keel__zcrx_pressed: both run for every receive or
 * send of a shard that has no ZCRX at all. */
static inline void
keel__zcrx_copy_bytes(struct net_shard *ns, uint64_t bytes)
{
	if (ns->zcrx && ns->zcrx->state != KEEL_ZCRX_NONE)
		ns->zcrx->copy_bytes += bytes;
}
/* A frame of @n slices was delivered whole (frame.c): counted when they are area slices. */
void keel__zcrx_frame_seen(const struct keel_slice *s, unsigned n);

/* Tests: give @ns an interface queue the test plays the kernel for, with no registration:
 * an @area_len-byte area, a refill ring of @rq_entries (power of two) laid out as 6.18 lays
 * it out on x86-64 (head @0, tail @4, entries @64), area token @token. A connection that
 * would arm a RECV_ZC arms a simulated one instead (nothing submitted:
 * keel__zcrx_sim_recv); the test feeds completions to keel__zcrx_take() or
 * keel__conn_zcrx_inject(). Returns: the queue, or NULL (-ENOMEM, or the shard already has
 * a registered one). Context: @ns's shard. */
struct net_zcrx *keel__zcrx_sim_attach(struct net_shard *ns, size_t area_len, uint32_t rq_entries,
				       uint64_t token);

/* The receive side's end (keel__zcrx_fini): unmap and free @z, or, with area slices still
 * held, report them and leave that to the last put. */
void keel__zcrx_rx_fini(struct net_zcrx *z);

/* Set up ZCRX for the calling shard by its runtime's options: nothing when --zcrx off or the
 * shard has no rx queue; else claim (iface, queue), allocate, register. On failure with
 * --zcrx on, or after the kernel took the registration (keel__zcrx_verdict), log the
 * reason and the fix and return -errno; otherwise with auto, log one INFO line and return
 * 0 with the fallback recorded. ns->zcrx is set in every case but an unregistered error. */
int keel__zcrx_setup(struct net_shard *ns);
/* Release what keel__zcrx_setup() made (the kernel drops the interface queue with the ring).
 * Called when the shard's network state goes, after every connection closed. Area slices
 * the application still holds stay valid: the area stays mapped (one WARN line says how
 * many), and the last put unmaps it; their refill entries are not written (the ring goes
 * with the shard's io_uring). */
void keel__zcrx_fini(struct net_shard *ns);

/* What keel__zcrx_setup() does with a set-up result under --zcrx @policy: @err is 0 or
 * the -errno, @registered whether the kernel had taken the registration (then refused by
 * keel, e.g. -EPROTO for refill ring offsets it cannot use). */
enum keel__zcrx_verdict {
	KEEL__ZCRX_USE,      /* registered and usable: receive zero-copy */
	KEEL__ZCRX_FALLBACK, /* the copy path, with one INFO line */
	KEEL__ZCRX_FAIL,     /* the shard's network set-up fails with the reason */
};
enum keel__zcrx_verdict keel__zcrx_verdict(enum keel_policy policy, int err, bool registered);

/* The message for a set-up failure -@err on @iface queue @rxq with an area of @area bytes:
 * what the errno means there and the fix. Writes at most @len bytes to @buf (always
 * terminated); returns @buf. */
const char *keel__zcrx_reason(int err, const char *iface, int rxq, size_t area, char *buf,
			      size_t len);

/* What makes a shard's ring DEFER_TASKRUN (+ CQE32) for ZCRX under @o, as the features were
 * decided: drop the policy that turned it off, or run a kernel that has it. */
const char *keel__zcrx_ring_fix(const struct keel_opts *o);

/* Claim (iface, rxq) for @shard in the process-wide table: 0, or -EEXIST with the owner in
 * *owner (one queue, one shard). keel__zcrx_unclaim() gives it back. keel_zcrx_probe()
 * claims as KEEL__ZCRX_PROBE_SHARD. */
#define KEEL__ZCRX_PROBE_SHARD (~0u)
int keel__zcrx_claim(const char *iface, int rxq, unsigned shard, unsigned *owner);
void keel__zcrx_unclaim(const char *iface, int rxq);

/* IORING_REGISTER_ZCRX_IFQ calls made by this process (tests: refusals made before the kernel
 * was asked leave it unchanged). */
extern _Atomic unsigned keel__zcrx_register_calls;

/* The IORING_REGISTER_ZCRX_IFQ call (io_uring_register on @ring_fd with @reg, a struct
 * keel_zcrx_ifq_reg): -1 with errno, as the syscall. A pointer so tests can play a kernel
 * that takes the registration, which no NIC here does. */
extern long (*keel__zcrx_register)(int ring_fd, void *reg);

/* The interface's index (if_nametoindex: 0 with errno when it fails; ENODEV, or errno
 * untouched, for no such interface): a pointer so tests can play a lookup that cannot open
 * its socket. */
extern unsigned (*keel__zcrx_ifindex)(const char *name);

/* The creation of keel_zcrx_probe()'s scratch ring (io_uring_queue_init_params): a pointer
 * so tests can make it fail as a kernel does (EPERM from kernel.io_uring_disabled, ...). */
extern int (*keel__zcrx_ring_init)(unsigned entries, struct io_uring *ring,
				   struct io_uring_params *p);

/* Set @z's area length, the pressure line that follows from it and the per-page slice
 * counts, once: the kernel's buffers are a page each (64 KiB on some arm64 kernels, not
 * 4096). Returns 0 or -ENOMEM (no memory for the counts). */
int keel__zcrx_set_area(struct net_zcrx *z, size_t area_len);

#endif

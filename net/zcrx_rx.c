// SPDX-License-Identifier: MIT
/*
 * The ZCRX receive-side pieces that do not touch the kernel: parsing a RECV_ZC completion
 * into a fragment of the area, gathering the fragments of one message without a fixed-size
 * array (a published integration overran one with 1 MiB messages in 4 KiB fragments), and
 * the refill ring (entries written as slices are put, the tail published once per loop
 * pass), and the receive path on connections built on them. Tests drive them with
 * synthetic CQEs and a refill region they play the kernel on (keel__zcrx_sim_attach).
 *
 * Receive path: a connection of a shard whose interface queue is registered arms a
 * multishot RECV_ZC instead of the buffer-ring recv (keel__zcrx_prep_recv, from conn.c's
 * recv_arm). Each completion is one fragment of the area; keel__zcrx_take() wraps it as an
 * external buffer (keel_buf_wrap: one buffer header, no copy) and conn.c delivers the slice
 * through the same on_data as the copy path, so a framer (keel_framer_on_data) gathers a
 * message of any number of fragments into one frame of that many slices: a 1 MiB message
 * in 4 KiB fragments is a frame of 256 slices, held in the framer's growable arrays, never
 * copied. The buffer's last put (on this shard, or a proxy's put on another shard sent
 * home by keel_slice_export's machinery) calls zc_release, which writes the refill entry;
 * a deferred call at the end of the pass publishes the tail with one store-release.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "net_internal.h"
#include "zcrx.h"

int
keel__zcrx_cqe_parse(const struct io_uring_cqe *cqe, uint64_t area_token, uint64_t area_len,
		     struct keel__zcrx_frag *out)
{
	const struct keel_zcrx_cqe *z;
	uint64_t off;

	if (cqe->res < 0)
		return cqe->res;
	if (cqe->res == 0)
		return 0;
	/* The second half of the 32-byte CQE. */
	z = (const struct keel_zcrx_cqe *)(const void *)((const char *)cqe + sizeof(*cqe));
	if ((z->off & KEEL_IORING_ZCRX_AREA_MASK) != (area_token & KEEL_IORING_ZCRX_AREA_MASK))
		return -EPROTO;
	off = z->off & ~KEEL_IORING_ZCRX_AREA_MASK;
	if (off >= area_len || (uint64_t)cqe->res > area_len - off)
		return -EPROTO;
	out->off = off;
	out->len = (uint32_t)cqe->res;
	return 1;
}

void
keel__zcrx_msg_init(struct keel__zcrx_msg *m, uint32_t max)
{
	memset(m, 0, sizeof(*m));
	m->max = max;
}

uint32_t
keel__zcrx_msg_next_cap(uint32_t cap, uint32_t max)
{
	/* In 64 bits: twice a capacity of 2^31 or more does not fit 32 (it read 0, and the
	 * array was shrunk under the next write). */
	uint64_t next = cap ? (uint64_t)cap * 2 : 16;

	return next > max ? max : (uint32_t)next;
}

int
keel__zcrx_msg_add(struct keel__zcrx_msg *m, const struct keel__zcrx_frag *f)
{
	if (m->n == m->max)
		return -E2BIG;
	if (m->n == m->cap) {
		uint32_t cap = keel__zcrx_msg_next_cap(m->cap, m->max);
		struct keel__zcrx_frag *v;

		v = realloc(m->v, (size_t)cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		m->v = v;
		m->cap = cap;
	}
	m->v[m->n++] = *f;
	m->bytes += f->len;
	return 0;
}

void
keel__zcrx_msg_reset(struct keel__zcrx_msg *m)
{
	m->n = 0;
	m->bytes = 0;
}

void
keel__zcrx_msg_fini(struct keel__zcrx_msg *m)
{
	free(m->v);
	memset(m, 0, sizeof(*m));
}

int
keel__zcrx_refill_add(struct net_zcrx *z, const struct keel__zcrx_frag *f)
{
	/* The kernel moves head as it consumes entries; acquire pairs with its release so the
	 * slot it freed is not written before it has read it. */
	uint32_t head = __atomic_load_n(z->rq_head, __ATOMIC_ACQUIRE);
	struct keel_zcrx_rqe *e;

	if (z->rq_local_tail - head >= z->rq_entries)
		return -ENOBUFS;
	e = &z->rqes[z->rq_local_tail & z->rq_mask];
	e->off = (f->off & ~KEEL_IORING_ZCRX_AREA_MASK) | z->area_token;
	e->len = f->len;
	e->pad = 0;
	z->rq_local_tail++;
	return 0;
}

uint32_t
keel__zcrx_refill_publish(struct net_zcrx *z)
{
	uint32_t old = __atomic_load_n(z->rq_tail, __ATOMIC_RELAXED);

	if (old == z->rq_local_tail)
		return 0;
	/* Release: the entries written above are visible before the tail that covers them. */
	__atomic_store_n(z->rq_tail, z->rq_local_tail, __ATOMIC_RELEASE);
	return z->rq_local_tail - old;
}

/* The refill entries not written because the ring was full go first, in order; what still
 * does not fit stays for the next try (the kernel consumes entries as it needs buffers:
 * every RECV_ZC completion is a chance, keel__zcrx_take retries). */
static void
pend_flush(struct net_zcrx *z)
{
	uint32_t i = 0;

	while (i < z->npend && keel__zcrx_refill_add(z, &z->pendv[i]) == 0)
		i++;
	if (i) {
		memmove(z->pendv, z->pendv + i, (size_t)(z->npend - i) * sizeof(*z->pendv));
		z->npend -= i;
		z->refills += i;
	}
}

/* Publish the refill tail, and arm again the RECV_ZCs that ended for want of a buffer
 * (ENOMEM). What went back lets them go on only once the interface queue's page pool
 * allocates (as the queue receives): the kernel's copy fallback takes buffers from the
 * area's free list, which a refill entry reaches only through the page pool's refill
 * (io_zcrx_ring_refill, Linux 6.18). A queue that receives does that soon; keel cannot see
 * whether it does, so it tries. */
static void
publish_now(struct net_zcrx *z)
{
	if (keel__zcrx_refill_publish(z)) {
		z->publishes++;
		if (z->ns->zc_waiting)
			keel__conn_zc_wait_kick(z->ns);
	}
}

static void
publish_cb(void *arg)
{
	struct net_zcrx *z = arg;
	struct net_shard *ns = z->ns;

	z->publish_queued = false;
	pend_flush(z);
	publish_now(z);
	keel__net_unref(ns);
}

/* Queue the end-of-pass publish (once per pass however many slices are put in it). */
static void
publish_later(struct net_zcrx *z)
{
	if (z->publish_queued)
		return;
	if (keel_defer(publish_cb, z) < 0) {
		/* No memory for the deferred call: publish now rather than never. */
		publish_now(z);
		return;
	}
	z->publish_queued = true;
	keel__net_ref(z->ns);
}

static void
area_unmap(struct net_zcrx *z)
{
	if (z->area)
		munmap(z->area, z->area_len);
	if (z->region)
		munmap(z->region, z->region_len);
	free(z->page_slices);
	free(z->pendv);
	free(z);
}

int
keel__zcrx_set_area(struct net_zcrx *z, size_t area_len)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	/* Whole pages, a partial last one too: a fragment anywhere in the area has its count
	 * (keel__zcrx_cqe_parse accepts any offset below area_len; the real area is whole
	 * pages, a test's need not be). */
	uint32_t n = (uint32_t)((area_len + pg - 1) / pg);

	/* A count a page (uint32_t: a 64 KiB page could hold 65,536 one-byte fragments, one
	 * more than 16 bits count), 1/1024 of a 4 KiB-page area at most. */
	free(z->page_slices);
	z->page_slices = calloc(n ? n : 1, sizeof(*z->page_slices));
	if (!z->page_slices)
		return -ENOMEM;
	z->pages_held = 0;
	z->page_shift = (unsigned)__builtin_ctzl(pg);
	z->area_len = area_len;
	/* Three quarters, a quarter rounded up: n - n / 4 was n itself below 4 pages, a line
	 * pages_held can never pass, so a tiny area never copied anything out. */
	z->press_line = n - (n + 3) / 4;
	return 0;
}

/* Slice [off, off + len) of the area goes out (@out) or comes back: the count of each page
 * it lies in, and pages_held. A kernel fragment lies in one page (its buffers are pages);
 * a test's may cross one. */
static void
pages_count(struct net_zcrx *z, uint64_t off, uint32_t len, bool out)
{
	uint64_t p = off >> z->page_shift, last = (off + len - 1) >> z->page_shift;

	for (; p <= last; p++) {
		if (out) {
			if (z->page_slices[p]++ == 0)
				z->pages_held++;
		} else {
			net_verify(z->page_slices[p] > 0);
			if (--z->page_slices[p] == 0)
				z->pages_held--;
		}
	}
}

/* Give fragment @f back to the kernel: a refill entry now, or later when the ring is full. */
static void
refill(struct net_zcrx *z, const struct keel__zcrx_frag *f)
{
	if (z->npend == 0 && keel__zcrx_refill_add(z, f) == 0) {
		z->refills++;
	} else {
		if (z->npend == z->pendcap) {
			uint32_t cap = z->pendcap ? z->pendcap * 2 : 64;
			struct keel__zcrx_frag *v = realloc(z->pendv, (size_t)cap * sizeof(*v));

			if (!v) {
				/* The kernel loses this buffer for good (its area shrinks by one):
				 * counted and logged, never written past an array. */
				z->dropped++;
				keel_log(KEEL_LOG_ERROR, NET_MOD,
					 "shard %u: ZCRX refill of %u bytes at %llu lost: out of "
					 "memory with the refill ring full",
					 z->shard, f->len, (unsigned long long)f->off);
				return;
			}
			z->pendv = v;
			z->pendcap = cap;
		}
		z->pendv[z->npend++] = *f;
		/* The kernel frees room as it takes buffers, which need not end in a
		 * completion of ours: the retry timer writes these then (retry_cb). */
		keel__zcrx_retry_later(z->ns);
	}
	publish_later(z);
}

/* The last put of an area slice (keel_buf_wrap's release), on the home shard. */
static void
zc_release(void *data, uint32_t cap, void *arg)
{
	struct net_zcrx *z = arg;
	struct keel__zcrx_frag f;

	net_verify(z->held > 0);
	z->held--;
	f.off = (uint64_t)((uint8_t *)data - (uint8_t *)z->area);
	f.len = cap;
	pages_count(z, f.off, f.len, false);
	if (!z->ns) {
		/* The shard's network state went while the app held this slice: the ring (and
		 * its refill ring) is gone with it; the last one unmaps the area. */
		if (z->held == 0) {
			/* WARN, as the report it closes. */
			keel_log(KEEL_LOG_WARN, NET_MOD,
				 "shard %u: ZCRX: the last area slice held past shutdown was put; "
				 "area unmapped",
				 z->shard);
			area_unmap(z);
		}
		return;
	}
	refill(z, &f);
}

bool
keel__zcrx_prep_recv(struct net_shard *ns, struct io_uring_sqe *sqe, int fd)
{
	struct net_zcrx *z = ns->zcrx;
	uint32_t ifq;

	if (!z || z->state != KEEL_ZCRX_ON || z->sim)
		return false;
	ifq = z->id;
	io_uring_prep_rw(KEEL_IORING_OP_RECV_ZC, sqe, fd, NULL, 0, 0);
	sqe->ioprio |= IORING_RECV_MULTISHOT;
	/* The interface queue's id in zcrx_ifq_idx, the u32 at byte 44 (a union with
	 * file_index and splice_fd_in; liburing 2.3 does not name it). */
	memcpy((char *)sqe + KEEL_SQE_ZCRX_IFQ_IDX_OFF, &ifq, sizeof(ifq));
	return true;
}

bool
keel__zcrx_conn_wants(int family, bool accepted)
{
	return accepted && (family == AF_INET || family == AF_INET6);
}

enum keel__zcrx_end
keel__zcrx_end_action(int res)
{
	switch (res) {
	case -ENOSPC:
		return KEEL__ZCRX_END_REARM;
	case -ENOMEM:
		/* The kernel needed a free area buffer (it copies payload that did not arrive
		 * in the queue's own buffers) and its free list was empty. Arming again at once
		 * could only fail again: wait for a slice of ours to go back, or for the retry
		 * timer. Either helps only once the queue's page pool refills, as the queue
		 * receives; a connection that keeps failing with nothing held is aborted
		 * (keel__zcrx_nomem_give_up). The copy path is no way out: the next packets'
		 * payload may be in area buffers, which a plain recv refuses (EFAULT). */
		return KEEL__ZCRX_END_WAIT;
	case -EPROTONOSUPPORT:
		return KEEL__ZCRX_END_COPY;
	default: /* -EFAULT among them: see keel__zcrx_misrouted */
		return KEEL__ZCRX_END_ABORT;
	}
}

static void
retry_cb(struct keel_timer *t, void *arg)
{
	struct net_zcrx *z = arg;

	(void)t;
	if (!z->ns)
		return;
	z->retry_rounds++;
	if (z->npend) { /* refills that found the ring full: room now? */
		pend_flush(z);
		publish_now(z);
		if (z->npend)
			keel__zcrx_retry_later(z->ns);
	}
	if (z->ns->zc_waiting)
		keel__conn_zc_wait_kick(z->ns);
}

int
keel__zcrx_retry_later(struct net_shard *ns)
{
	struct net_zcrx *z = ns->zcrx;

	if (!z)
		return -ENOMEM;
	if (!z->retry && keel_timer_create(retry_cb, z, &z->retry) < 0)
		return -ENOMEM;
	if (!keel_timer_pending(z->retry))
		keel_timer_start(z->retry, KEEL__ZCRX_RETRY_NS, 0);
	return 0;
}

void
keel__zcrx_retry_now(struct net_shard *ns)
{
	if (ns->zcrx)
		retry_cb(ns->zcrx->retry, ns->zcrx);
}

bool
keel__zcrx_nomem_give_up(struct net_shard *ns, struct keel__zcrx_nomem *w)
{
	struct net_zcrx *z = ns->zcrx;

	/* Slices held: their puts may bring buffers back, and wake it (publish_now). */
	if (!z || z->held)
		return false;
	if (w->rounds && w->round == z->retry_rounds)
		return false;
	w->round = z->retry_rounds;
	if (++w->rounds < KEEL__ZCRX_NOMEM_ROUNDS)
		return false;
	if (z->nomem_aborts++ == 0)
		keel_log(KEEL_LOG_WARN, NET_MOD,
			 "shard %u: a connection's RECV_ZC found no free area buffer (ENOMEM) %u "
			 "times in a row, at least %llu ms apart, with no area slice held: its "
			 "packets are copied, not received zero-copy, most likely because they "
			 "arrive on another rx queue than this shard's ZCRX queue %d (the kernel "
			 "gives the area's buffers back to its copies only as that queue "
			 "receives). The flow is not steered to the ZCRX queue: check the NIC's "
			 "ntuple/RSS rules (keel-topo --check; --steer queue with the map). It is "
			 "aborted (ENOMEM); later ones are counted in keel_zcrx_stats.nomem_aborts",
			 z->shard, (unsigned)KEEL__ZCRX_NOMEM_ROUNDS,
			 (unsigned long long)(KEEL__ZCRX_RETRY_NS / 1000000), z->rxq);
	return true;
}

void
keel__zcrx_stop(struct net_shard *ns)
{
	struct net_zcrx *z = ns->zcrx;

	if (z && z->retry) {
		keel_timer_destroy(z->retry);
		z->retry = NULL;
	}
}

void
keel__zcrx_misrouted(struct net_shard *ns)
{
	struct net_zcrx *z = ns->zcrx;

	if (!z)
		return;
	if (z->misrouted++ == 0)
		keel_log(
			KEEL_LOG_WARN, NET_MOD,
			"shard %u: a connection's RECV_ZC failed with EFAULT: its packets arrive "
			"in another rx queue than this shard's (%d), whose buffers no receive of "
			"this shard can read: it is aborted. Accept connections on the shard that "
			"owns their queue (--steer queue with the map, and the NIC's RSS or ntuple "
			"rules of keel-topo --plan); later ones are counted in "
			"keel_zcrx_stats.misrouted",
			z->shard, z->rxq);
}

void
keel__zcrx_count_end(struct net_shard *ns, int res)
{
	struct net_zcrx *z = ns->zcrx;

	if (!z)
		return;
	if (res == -ENOSPC)
		z->cq_full_rearms++;
	else if (res == -ENOMEM && z->nomem_waits++ == 0)
		keel_log(KEEL_LOG_WARN, NET_MOD,
			 "shard %u: a RECV_ZC found no free area buffer (ENOMEM): its connection "
			 "waits for slices to come back (tried again at least every 10 ms); if "
			 "this repeats, raise --zcrx-area or put received slices sooner (partial "
			 "frames a framer holds are copied out of the area now; slices the "
			 "application holds are not); later ones are counted in "
			 "keel_zcrx_stats.nomem_waits",
			 z->shard);
}

void
keel__zcrx_conn_to_copy(struct net_shard *ns, int res)
{
	struct net_zcrx *z = ns->zcrx;

	if (!z)
		return;
	if (z->conn_fallbacks++ == 0)
		keel_log(KEEL_LOG_WARN, NET_MOD,
			 "shard %u: the kernel refused a connection's RECV_ZC (%s): it receives "
			 "through the copy path (not a TCP socket); later ones are counted in "
			 "keel_zcrx_stats.conn_fallbacks",
			 z->shard, strerror(-res));
}

bool
keel__zcrx_sim_recv(const struct net_shard *ns)
{
	const struct net_zcrx *z = ns->zcrx;

	return z && z->state == KEEL_ZCRX_ON && z->sim;
}

int
keel__zcrx_take(struct net_shard *ns, const struct io_uring_cqe *cqe, struct keel_slice *out)
{
	struct net_zcrx *z = ns->zcrx;
	struct keel__zcrx_frag f;
	int r;

	if (!z || z->state != KEEL_ZCRX_ON || !cqe)
		return -EPROTO;
	if (z->npend) {
		/* A completion means the kernel took buffers: room in the refill ring, maybe. */
		pend_flush(z);
		publish_later(z);
	}
	r = keel__zcrx_cqe_parse(cqe, z->area_token, z->area_len, &f);
	if (r <= 0) {
		if (r == -EPROTO) {
			const struct keel_zcrx_cqe *zc = (const void *)(cqe + 1);

			/* Never returned (the kernel's entry is not ours to guess), so counted:
			 * the kernel handed out more than zc_frags. Rate-limited, the first then
			 * one in 1000: every later CQE of the aborted connection's multishot,
			 * until its cancel lands, comes here too. */
			if (z->frags_refused++ % 1000 == 0)
				keel_log(KEEL_LOG_ERROR, NET_MOD,
					 "shard %u: RECV_ZC completion of %d bytes names offset "
					 "0x%llx outside the %zu-byte area (token 0x%llx): the "
					 "connection is aborted (%llu such completions refused, "
					 "keel_zcrx_stats.frags_refused; an ABI this keel does not "
					 "know: run with --zcrx off)",
					 z->shard, cqe->res, (unsigned long long)zc->off,
					 z->area_len, (unsigned long long)z->area_token,
					 (unsigned long long)z->frags_refused);
		}
		return r;
	}
	/* Counted as it came, also when no header wraps it (then refilled at once), so that
	 * refills and zc_frags end equal (docs/zcrx.md). */
	z->zc_bytes += f.len;
	z->zc_frags++;
	r = keel_buf_wrap(keel_shard_alloc(), (uint8_t *)z->area + f.off, f.len, zc_release, z,
			  out);
	if (r < 0) {
		refill(z, &f);
		return r;
	}
	z->held++;
	pages_count(z, f.off, f.len, true);
	/* A quarter of the area's pages stays for the kernel, as a quarter of a copy-path ring
	 * does (keel__pbuf_pressed): past that line, partial frames copy their area slices out and
	 * give them back, after every fragment that arrives there (one reclaim a pass at most:
	 * keel__net_kick), not only at the crossing, since a frame may begin when the area
	 * is already past it. The kernel says nothing when the area runs out (its ENOMEM is
	 * only for its own copies): the NIC drops what it cannot place, and frames that
	 * cannot complete would hold the area for good. */
	if (z->pages_held > z->press_line)
		keel__framers_reclaim_later(ns);
	return 1;
}

void
keel__zcrx_frame_seen(const struct keel_slice *s, unsigned n)
{
	struct net_shard *ns = keel__net_shard_cur();
	struct net_zcrx *z = ns ? ns->zcrx : NULL;

	if (!z || z->state != KEEL_ZCRX_ON || !n || s[0].data < (uint8_t *)z->area ||
	    s[0].data >= (uint8_t *)z->area + z->area_len)
		return;
	z->frames++;
	z->frame_frags += n;
	if (n > z->frame_frags_max)
		z->frame_frags_max = n;
}

struct net_zcrx *
keel__zcrx_sim_attach(struct net_shard *ns, size_t area_len, uint32_t rq_entries, uint64_t token)
{
	struct net_zcrx *z = ns->zcrx;

	if (!rq_entries || (rq_entries & (rq_entries - 1)) || (z && z->state == KEEL_ZCRX_ON))
		return NULL;
	if (!z) {
		z = calloc(1, sizeof(*z));
		if (!z)
			return NULL;
		ns->zcrx = z;
	}
	z->shard = ns->id;
	z->ns = ns;
	if (keel__zcrx_set_area(z, area_len) < 0)
		return NULL;
	z->area = mmap(NULL, area_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	/* Linux 6.18's layout on x86-64 (io_fill_zcrx_offsets): the header's head and tail
	 * words, then the entries on the next cache line. */
	z->region_len = 64 + (size_t)rq_entries * sizeof(struct keel_zcrx_rqe);
	z->region = mmap(NULL, z->region_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			 -1, 0);
	if (z->area == MAP_FAILED || z->region == MAP_FAILED) {
		if (z->area != MAP_FAILED)
			munmap(z->area, area_len);
		if (z->region != MAP_FAILED)
			munmap(z->region, z->region_len);
		z->area = z->region = NULL;
		return NULL;
	}
	z->rq_head = (uint32_t *)z->region;
	z->rq_tail = (uint32_t *)((char *)z->region + 4);
	z->rqes = (struct keel_zcrx_rqe *)((char *)z->region + 64);
	z->rq_entries = rq_entries;
	z->rq_mask = rq_entries - 1;
	z->rq_local_tail = 0;
	z->area_token = token;
	z->sim = true;
	z->state = KEEL_ZCRX_ON;
	return z;
}

/* The end of a shard's ZCRX (its network state goes, every connection closed). Area slices
 * still held keep the area mapped; the last put unmaps it (zc_release). */
void
keel__zcrx_rx_fini(struct net_zcrx *z)
{
	/* A deferred publish holds a net reference, so none is queued when this runs. */
	if (z->held) {
		keel_log(
			KEEL_LOG_WARN, NET_MOD,
			"shard %u: ZCRX: %u area slices are still held by the application at "
			"shutdown; the area stays mapped until they are put (their buffers are not "
			"returned to the interface queue, which goes with the ring)",
			z->shard, z->held);
		z->ns = NULL;
		return;
	}
	area_unmap(z);
}

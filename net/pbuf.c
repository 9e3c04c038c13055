// SPDX-License-Identifier: MIT
/*
 * The provided-buffer ring of a shard. Buffers are carved from allocator buffers ("areas",
 * each at most one allocator region), so a receive buffer is registered memory and can go
 * back out with SEND_ZC. Each buffer the kernel fills is a keel buffer: the ring keeps one
 * reference while the kernel may still write into it (incremental consumption), every slice
 * handed to the application holds another, and the last put puts the buffer back in the
 * ring. Each buffer has one header (keel_buf_slot_create), made the first time the kernel
 * fills it and kept until the ring goes: a use re-arms it (keel_buf_slot_arm), and its last
 * put bumps its generation, so a slice of an earlier use is stale, and gives the buffer back
 * without freeing the header: 68 fewer of the 712 user-space instructions keel spent per UDP
 * datagram (callgrind, docs/performance.md). The ring is freed only once every use is over:
 * each holds a reference on the network shard (r->out).
 *
 * With bundles one completion spans several buffers, taken from the ring in ring order:
 * next[] links each buffer to the one added at the ring position after it, because
 * buffers return in whatever order the application puts them. A link, not the position:
 * a receive the kernel runs from io-wq commits its buffer at once and may complete it
 * after the ring's positions have all been reused (other buffers cycling meanwhile), and
 * the buffer then at its position is another one. A buffer's link is set when the next
 * add follows it, and changes only after it is added again, which it is not while the
 * kernel holds it.
 *
 * Warm reuse: the kernel takes buffers from the ring first-in first-out, so with every buffer
 * in the ring a buffer put back is filled again only after all the others, by which time it
 * has left the cache (the kernel's copy into it then dominates the receive cost). So the ring
 * holds at most `window` buffers the kernel has not retired (`inring`); a buffer put back
 * while the ring is full goes on a last-in first-out stack of spares, and the ring is topped
 * up from the top of that stack, the most recently used spare first. The window starts small
 * (NET_RX_WINDOW) and doubles, up to every buffer, each time a receive finds the ring empty
 * while some buffer is not held by the application (keel__pbuf_grow), so it ends sized to the bytes
 * in flight and the buffers cycling through it stay warm. It never shrinks. The bulk ring's
 * window stops at keel_net_config.bulk_window bytes (wmax): a stream that sends what it
 * receives empties any window (the kernel fills buffers as long as data arrives), and one
 * grown to 4 MiB left the kernel's copies into it cold (docs/net.md, "Two receive rings").
 */
#include <errno.h>
#include <keel/alloc_runtime.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "net_internal.h"

_Atomic unsigned keel__pbuf_fail_wraps;

static void
ring_add(struct pbuf_ring *r, uint16_t bid)
{
	r->inring++;
	r->off[bid] = 0;
	/* Always, also when tail wraps to 0 (2^32 adds): the first add's write, to next[0],
	 * is overwritten before anything reads it. */
	r->next[r->last] = bid;
	r->last = bid;
	io_uring_buf_ring_add(r->br, r->slot[bid].base, r->bufsize, bid, r->mask, 0);
	r->tail++;
	/* Publishes the entry with a store-release of the tail. */
	io_uring_buf_ring_advance(r->br, 1);
}

/* Give @bid back: to the ring while it holds fewer than the window, else onto the spares;
 * then wake what waits for a buffer of this ring: UDP endpoints for the UDP ring, the TCP
 * connections waiting for this ring for the others (a UDP or a bulk buffer woke every
 * waiting connection too, each to arm a receive that failed again). */
static void
give_back(struct pbuf_ring *r, uint16_t bid)
{
	struct net_shard *ns = r->ns;

	if (r->inring < r->window)
		ring_add(r, bid);
	else
		r->spare[r->nspare++] = bid;
	if (r == &ns->udp) {
		if (ns->udp_starving)
			keel__udp_starved_kick(ns);
	} else {
		keel__conn_starved_kick(ns, r);
	}
}

/* Fill the ring up to the window from the spares, the most recently put first. */
static void
top_up(struct pbuf_ring *r)
{
	while (r->inring < r->window && r->nspare)
		ring_add(r, r->spare[--r->nspare]);
}

bool
keel__pbuf_grow(struct pbuf_ring *r)
{
	if (!r->registered || r->ns->stopping)
		return false;
	/* The ring ran dry with buffers to spare (in the ring again by now, or on the stack):
	 * the window was the limit, not the application's holding of buffers. */
	if ((r->inring || r->nspare) && r->window < r->wmax) {
		r->window *= 2;
		if (r->window > r->wmax)
			r->window = r->wmax;
		r->grows++;
		top_up(r);
	}
	return r->inring > 0;
}

static void
buf_release(void *data, uint32_t cap, void *arg)
{
	struct pbuf_slot *sl = arg;
	struct pbuf_ring *r = sl->r;
	struct net_shard *ns = r->ns;
	uint16_t bid = (uint16_t)(sl - r->slot);

	(void)cap;
	net_verify(data == sl->base);
	net_verify(r->out > 0);
	r->out--;
	if (r->registered && !ns->stopping) {
		give_back(r, bid);
	}
	keel__net_unref(ns);
}

bool
keel__pbuf_owns(const struct pbuf_ring *r, const void *p, const struct keel_slice **area)
{
	const uint8_t *b = p;

	for (unsigned i = 0; i < r->nareas; i++) {
		const struct keel_slice *a = &r->areas[i];
		if (a->buf && b >= a->data && b < a->data + a->len) {
			*area = a;
			return true;
		}
	}
	return false;
}

int
keel__pbuf_init(struct net_shard *ns, struct pbuf_ring *r, uint16_t bgid, uint32_t nbufs,
		uint32_t bufsize, bool inc)
{
	return keel__pbuf_init_window(ns, r, bgid, nbufs, bufsize, inc, nbufs, nbufs);
}

/* The settings that size the ring with buffer group @bgid, for the error that names them. */
static const char *
ring_knobs(uint16_t bgid)
{
	return bgid == 1 ? "udp_buf_count/udp_buf_size" : "buf_count/buf_size";
}

int
keel__pbuf_init_window(struct net_shard *ns, struct pbuf_ring *r, uint16_t bgid, uint32_t nbufs,
		       uint32_t bufsize, bool inc, uint32_t window, uint32_t wmax)
{
	struct keel_alloc *a = keel_shard_alloc();
	struct keel_buf_reg reg;
	/* An area is one allocation: at most the allocator's largest (2 MiB regions below
	 * 4 MiB of --memory), which holds a buffer of the largest size (1 MiB). With the
	 * default's 4 MiB there, the ring failed with -E2BIG, "Argument list too long", for
	 * want of memory. */
	uint64_t area_max = keel_alloc_buf_max(a);
	int ret;

	memset(r, 0, sizeof(*r));
	r->ns = ns;
	r->bgid = bgid;
	r->inc = inc;
	r->nbufs = nbufs;
	r->mask = io_uring_buf_ring_mask(nbufs);
	r->wmax = wmax && wmax < nbufs ? wmax : nbufs;
	r->window = window && window < r->wmax ? window : r->wmax;
	r->bufsize = bufsize;
	r->per_area = (uint32_t)(area_max / bufsize);
	if (r->per_area > nbufs)
		r->per_area = nbufs;
	r->nareas = (nbufs + r->per_area - 1) / r->per_area;
	r->areas = calloc(r->nareas, sizeof(*r->areas));
	r->off = calloc(nbufs, sizeof(*r->off));
	r->kref = calloc(nbufs, sizeof(*r->kref));
	r->slot = calloc(nbufs, sizeof(*r->slot));
	r->next = calloc(nbufs, sizeof(*r->next));
	r->spare = calloc(nbufs, sizeof(*r->spare));
	if (!r->areas || !r->off || !r->kref || !r->slot || !r->next || !r->spare) {
		ret = -ENOMEM;
		if (bgid != NET_BULK_BGID) /* the bulk ring's maker says it, with its fixes */
			keel_log(
				KEEL_LOG_ERROR, NET_MOD,
				"shard %u: no memory for the tables of %u receive buffers; lower %s",
				ns->id, nbufs, ring_knobs(bgid));
		goto err;
	}
	for (unsigned i = 0; i < r->nareas; i++) {
		/* per_area buffers an area, the last one the rest: --memory pays for the
		 * buffers the ring has (each area rounded up to the allocator's size class),
		 * not for whole areas. */
		uint32_t n = nbufs - i * r->per_area;

		ret = keel_buf_alloc(a, (size_t)(n < r->per_area ? n : r->per_area) * bufsize,
				     &r->areas[i]);
		if (ret < 0) {
			/* The bulk ring's maker says it, with the bulk ring's fixes. */
			if (bgid != NET_BULK_BGID)
				keel_log(
					KEEL_LOG_ERROR, NET_MOD,
					"shard %u: %u receive buffers of %u bytes: %s; lower %s or "
					"raise --memory",
					ns->id, nbufs, bufsize, strerror(-ret), ring_knobs(bgid));
			goto err;
		}
	}
	for (uint32_t bid = 0; bid < nbufs; bid++) {
		r->slot[bid].r = r;
		r->slot[bid].base =
			r->areas[bid / r->per_area].data + (size_t)(bid % r->per_area) * bufsize;
	}
	r->br_bytes = ((size_t)nbufs * sizeof(struct io_uring_buf) + 4095) & ~(size_t)4095;
	r->br = mmap(NULL, r->br_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r->br == MAP_FAILED) {
		r->br = NULL;
		ret = -errno;
		if (bgid !=
		    NET_BULK_BGID) /* the bulk ring's failure is said once, with its fixes */
			keel_log(KEEL_LOG_ERROR, NET_MOD,
				 "shard %u: mapping buffer ring %u failed: %s", ns->id, bgid,
				 strerror(-ret));
		goto err;
	}
	io_uring_buf_ring_init(r->br);
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uintptr_t)r->br;
	reg.ring_entries = nbufs;
	reg.bgid = bgid;
	/* liburing 2.3 calls the flags field "pad": keel_buf_reg names it (compat.h). */
	reg.flags = inc ? IOU_PBUF_RING_INC : 0;
	ret = io_uring_register_buf_ring(keel_shard_ring_get(), (struct io_uring_buf_reg *)&reg, 0);
	if (ret < 0) {
		if (bgid != NET_BULK_BGID)
			keel_log(KEEL_LOG_ERROR, NET_MOD,
				 "shard %u: registering buffer ring %u failed: %s%s", ns->id, bgid,
				 strerror(-ret),
				 ret == -EEXIST ? " (keel's network layer takes buffer groups 0-2 "
						  "of the shard's ring: an application's own "
						  "buffer ring must use another group id)"
						: "");
		goto err;
	}
	r->registered = true;
	/* A quarter of the buffers, and two at least, stays for the receives of every
	 * connection (keel__pbuf_pressed). With one (4 buffers or fewer), the buffer the
	 * kernel was filling, which counts as the kernel's though queued slices of it hold it
	 * too, was the last: all were held before a slice was copied, and the shard starved. */
	r->keep = nbufs / 4 > 2 ? nbufs / 4 : 2;
	/* Spares pushed highest id first, so the ring fills in id order. */
	for (uint32_t i = nbufs; i-- > 0;)
		r->spare[r->nspare++] = (uint16_t)i;
	top_up(r);
	return 0;
err:
	keel__pbuf_fini(r);
	return ret;
}

void
keel__pbuf_fini(struct pbuf_ring *r)
{
	if (r->registered)
		io_uring_unregister_buf_ring(keel_shard_ring_get(), r->bgid);
	r->registered = false;
	if (r->kref)
		for (uint32_t i = 0; i < r->nbufs; i++)
			net_verify(!r->kref[i].buf);
	/* No use is live (each holds the shard, which is not freed before): the headers go. */
	if (r->slot)
		for (uint32_t i = 0; i < r->nbufs; i++)
			if (r->slot[i].hdr)
				keel_buf_slot_destroy(r->slot[i].hdr);
	if (r->areas)
		for (unsigned i = 0; i < r->nareas; i++)
			if (r->areas[i].buf)
				keel_slice_put(&r->areas[i]);
	if (r->br)
		munmap(r->br, r->br_bytes);
	free(r->areas);
	free(r->off);
	free(r->kref);
	free(r->slot);
	free(r->next);
	free(r->spare);
	memset(r, 0, sizeof(*r));
}

void
keel__pbuf_drop_krefs(struct pbuf_ring *r)
{
	for (uint32_t i = 0; i < r->nbufs && r->nkref; i++) {
		if (r->kref[i].buf) {
			struct keel_slice k = r->kref[i];
			memset(&r->kref[i], 0, sizeof(k));
			r->nkref--;
			keel_slice_put(&k);
		}
	}
}

/* Start a use of buffer @bid into @out, a reference the ring hands out (the ring's own, or
 * the caller's). Fails only the first time, when the buffer's header cannot be made;
 * keel__pbuf_fail_wraps makes that fail as the header allocation would. */
static int
wrap(struct pbuf_ring *r, uint16_t bid, struct keel_slice *out)
{
	struct pbuf_slot *sl = &r->slot[bid];

	if (__builtin_expect(sl->hdr == NULL, 0)) {
		int ret;

		if (keel__fault_take(&keel__pbuf_fail_wraps))
			return -ENOMEM;
		ret = keel_buf_slot_create(keel_shard_alloc(), sl->base, r->bufsize, buf_release,
					   sl, &sl->hdr);
		if (ret < 0)
			return ret;
	}
	keel_buf_slot_arm(sl->hdr, out);
	r->out++;
	keel__net_ref(r->ns);
	return 0;
}

/* The ring's reference on @bid, wrapping the buffer when the kernel starts filling it. */
static int
kref_get(struct pbuf_ring *r, uint16_t bid)
{
	int ret;

	if (r->kref[bid].buf)
		return 0;
	ret = wrap(r, bid, &r->kref[bid]);
	if (ret == 0)
		r->nkref++;
	return ret;
}

/* The kernel is done with buffer @bid, and no slice took the ring's reference on it: the
 * reference is put (the buffer comes back when the application's slices of it are), or the
 * buffer, never wrapped, goes straight back, or the ring would shrink for good. */
static void
retire(struct pbuf_ring *r, uint16_t bid)
{
	r->inring--;
	if (r->kref[bid].buf) {
		struct keel_slice k = r->kref[bid];
		/* Cleared first: the put may recycle the buffer (buf_release). */
		memset(&r->kref[bid], 0, sizeof(k));
		r->nkref--;
		keel_slice_put(&k);
	} else if (r->registered && !r->ns->stopping) {
		give_back(r, bid);
	}
}

void
keel__pbuf_retire_empty(struct pbuf_ring *r, unsigned bid)
{
	net_verify(bid < r->nbufs);
	retire(r, (uint16_t)bid);
	if (r->registered && !r->ns->stopping)
		top_up(r);
}

int
keel__pbuf_take(struct pbuf_ring *r, unsigned bid, int res, uint32_t cqe_flags, bool bundle,
		struct keel_slice *out, unsigned max)
{
	uint32_t rem = (uint32_t)res;
	uint16_t b = (uint16_t)bid; /* the completion's first buffer, then each one's next */
	unsigned n = 0;
	int err = 0;

	net_verify(bid < r->nbufs);
	/* One whole buffer the kernel is done with (no incremental consumption, no bundle:
	 * the UDP ring): wrapped straight into the caller's slice, without the ring's
	 * reference the loop below would take and hand over (about 60 instructions a
	 * datagram, measured with callgrind). */
	if (!r->inc && !bundle && rem && rem <= r->bufsize && !r->kref[bid].buf) {
		net_verify(max > 0);
		r->inring--;
		err = wrap(r, (uint16_t)bid, out);
		if (err == 0)
			out->len = rem;
		else if (r->registered && !r->ns->stopping)
			give_back(r, (uint16_t)bid); /* never wrapped: straight back, as below */
		if (r->registered && !r->ns->stopping)
			top_up(r);
		return err ? err : 1;
	}
	while (rem) {
		uint32_t avail = r->bufsize - r->off[b];
		uint32_t take = rem < avail ? rem : avail;
		bool last = rem == take;
		/* Without incremental consumption the kernel retires every buffer it used;
		 * with it, only a full one, or the last one when the CQE lacks BUF_MORE: a
		 * receive run from io-wq commits its whole buffer when it picks it, so a partly
		 * filled one without the flag is the kernel's no more. Kernels whose bundle
		 * receive drops the flag when it retries break this (docs/net.md). */
		bool done =
			!r->inc || take == avail || (last && !(cqe_flags & IORING_CQE_F_BUF_MORE));
		bool moved = false;
		uint16_t nb = r->next[b]; /* read before a retire adds b to the ring again */
		int ret;

		net_verify(n < max && (bundle || n == 0));
		ret = kref_get(r, b);
		if (ret == 0 && done) {
			/* The kernel is done with the buffer: the ring's reference becomes the
			 * slice's, narrowed to these bytes (a sub-slice and the put of the ring's
			 * reference, as before, cost two count changes for nothing). */
			out[n] = r->kref[b];
			out[n].data += r->off[b];
			out[n].len = take;
			memset(&r->kref[b], 0, sizeof(r->kref[b]));
			r->nkref--;
			moved = true;
			n++;
		} else if (ret == 0) {
			ret = keel_slice_sub(&r->kref[b], r->off[b], take, &out[n]);
			if (ret == 0)
				n++;
		}
		if (ret < 0)
			err = ret;
		r->off[b] += take;
		rem -= take;
		if (done && moved)
			r->inring--;
		else if (done)
			retire(r, b);
		b = nb;
	}
	if (r->registered && !r->ns->stopping)
		top_up(r);
	if (err) {
		while (n)
			keel_slice_put(&out[--n]);
		return err;
	}
	return (int)n;
}

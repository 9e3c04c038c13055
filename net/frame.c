// SPDX-License-Identifier: MIT
/*
 * Message framing (keel/frame.h): a per-connection framer that turns received slices into
 * whole frames without copying, and the length-prefixed send.
 *
 * The framer keeps the references of the slices it was given in a small deque (head slice,
 * offset into it, tail). When a frame is whole, its payload is handed out as sub-slices of
 * the held ones (each sub takes its own reference) and the held slices the frame used up
 * are put, so a receive buffer goes back to its ring as soon as neither the framer nor the
 * app needs it. Parsing state is only what cannot be recomputed cheaply: for lines, how far
 * the current frame has been searched for a LF, so a long line arriving in many slices is
 * scanned once.
 */
#include <errno.h>
#include <keel/bufreg.h>
#include <keel/frame.h>
#include <keel/log.h>
#include <keel/net.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include "net_internal.h"
#include "zcrx.h"

_Atomic unsigned keel__frame_fail_give_back;
_Atomic unsigned keel__frame_fail_room;

/* The least a reclaim's buffer holds, but at a LEN32 frame's end (keel__framer_compact). */
#define OWN_MIN 4096u

/* A buffer a reclaim filled, known by its header and generation, as a slice of it has them:
 * only compared, never followed, so that it may have been put since does no harm. */
struct own_id {
	const struct keel_buf *buf;
	uint32_t gen;
};

struct keel_framer {
	struct keel_framer_opts o;
	struct keel_slice *q; /* held slices: q[head..tail) */
	unsigned head, tail, cap;
	uint32_t off;          /* bytes of q[head] already consumed */
	size_t buffered;       /* bytes held past off */
	size_t scanned;        /* LINE: bytes of the current frame known to hold no LF */
	struct keel_slice *fs; /* a frame's slices, lent to on_frame */
	unsigned fcap;
	int err;
	char why[160];
	/* The connection keel_framer_on_data is pushing for: once a callback closed or
	 * aborted it, no more of its frames are delivered. NULL outside that call. */
	struct keel_conn *conn;
	/* On its shard's list of framers holding a partial frame (ns->holding), while
	 * keel_framer_on_data left bytes held; NULL when not. */
	struct net_shard *hns;
	struct keel_framer *hnext, **hprev;
	/* The connection whose partial frame it holds, while listed (NULL once that
	 * connection is gone): a reclaim that fails aborts it at once. On that connection's
	 * list of framers holding a partial frame of it (cnext, cprev), which is a list since
	 * an application may push one connection's data through several framers. */
	struct keel_conn *hconn;
	struct keel_framer *cnext, **cprev;
	/* A reclaim failed the framer (no memory for the copy) with no connection known:
	 * keel_framer_on_data aborts the connection at its next push. */
	bool abort_due;
	/* The buffer of our own that a reclaim copied held bytes into (compact), and its free
	 * room [own_end, own_lim): the rest of the frame is copied there rather than held in
	 * the shard's receive buffers. own is NULL when there is none. */
	struct keel_buf *own;
	uint32_t own_gen;
	uint8_t *own_end, *own_lim;
	/* A pushed slice was held as it is (not copied into own) since the last reclaim: what
	 * is held may include receive buffers. */
	bool pushed_held;
	/* The buffers of our own the last reclaim made or kept, in the stream's order (the
	 * last one own): held slices of them lead q[head..tail), the first ones perhaps
	 * delivered since, and the next reclaim keeps them as they are (own_held). Known by
	 * identity, not by a count of held slices: a pause hands everything held back to the
	 * connection, which pushes it again after the resume, and these are then held as any
	 * pushed slice is. */
	struct own_id *ownv;
	unsigned ownv_n;
};

int
keel_framer_create(const struct keel_framer_opts *o, struct keel_framer **out)
{
	struct keel_framer *f;

	if (!o || !o->on_frame)
		return -EINVAL;
	switch (o->kind) {
	case KEEL_FRAME_LEN32:
	case KEEL_FRAME_LINE:
		if (o->measure)
			return -EINVAL;
		break;
	case KEEL_FRAME_USER:
		if (!o->measure)
			return -EINVAL;
		break;
	default:
		return -EINVAL;
	}
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->o = *o;
	if (!f->o.max)
		f->o.max = KEEL_FRAME_MAX_DEFAULT;
	*out = f;
	return 0;
}

static void
drop_all(struct keel_framer *f)
{
	while (f->head < f->tail)
		keel_slice_put(&f->q[f->head++]);
	f->head = f->tail = 0;
	f->off = 0;
	f->buffered = 0;
	f->scanned = 0;
	f->own = NULL;
	free(f->ownv);
	f->ownv = NULL;
	f->ownv_n = 0;
}

static void
holding_remove(struct keel_framer *f)
{
	if (!f->hns)
		return;
	*f->hprev = f->hnext;
	if (f->hnext)
		f->hnext->hprev = f->hprev;
	f->hns = NULL;
	if (f->hconn) {
		*f->cprev = f->cnext;
		if (f->cnext)
			f->cnext->cprev = f->cprev;
	}
	f->hconn = NULL;
}

void
keel__framers_conn_gone(struct keel_framer *f)
{
	for (struct keel_framer *next; f; f = next) {
		next = f->cnext;
		f->hconn = NULL;
		f->cnext = NULL;
		f->cprev = NULL;
	}
}

static void
holding_add(struct keel_framer *f, struct net_shard *ns, struct keel_conn *c)
{
	struct keel_framer **list = keel__conn_framer_slot(c);

	f->hconn = c;
	f->cnext = *list;
	if (f->cnext)
		f->cnext->cprev = &f->cnext;
	f->cprev = list;
	*list = f;
	f->hns = ns;
	f->hnext = ns->holding;
	if (f->hnext)
		f->hnext->hprev = &f->hnext;
	f->hprev = &ns->holding;
	ns->holding = f;
}

void
keel_framer_destroy(struct keel_framer *f)
{
	if (!f)
		return;
	holding_remove(f);
	drop_all(f);
	free(f->q);
	free(f->fs);
	free(f);
}

KEEL_PRINTF(3, 4)
static int
fail(struct keel_framer *f, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(f->why, sizeof(f->why), fmt, ap);
	va_end(ap);
	f->err = err;
	/* A failed framer holds nothing: the app learns of the error, memory comes back. */
	drop_all(f);
	return err;
}

size_t
keel__framer_slices(const struct keel_framer *f)
{
	return f->tail - f->head;
}

size_t
keel_framer_buffered(const struct keel_framer *f)
{
	return f->buffered;
}

size_t
keel_framer_chunk(const struct keel_framer *f, size_t off, const uint8_t **out)
{
	size_t skip = off + f->off;

	/* Past the buffered bytes, also for an @off whose sum with f->off would wrap (a
	 * length field of the peer's added to an offset) and land on consumed bytes. */
	if (off >= f->buffered) {
		*out = NULL;
		return 0;
	}
	for (unsigned i = f->head; i < f->tail; i++) {
		const struct keel_slice *s = &f->q[i];

		if (skip < s->len) {
			*out = s->data + skip;
			return s->len - skip;
		}
		skip -= s->len;
	}
	*out = NULL;
	return 0;
}

size_t
keel_framer_peek(const struct keel_framer *f, size_t off, void *buf, size_t len)
{
	uint8_t *p = buf;
	size_t done = 0, skip = off + f->off;

	if (off >= f->buffered) /* as keel_framer_chunk */
		return 0;

	for (unsigned i = f->head; i < f->tail && done < len; i++) {
		const struct keel_slice *s = &f->q[i];
		size_t n;

		if (skip >= s->len) {
			skip -= s->len;
			continue;
		}
		n = s->len - skip;
		if (n > len - done)
			n = len - done;
		memcpy(p + done, s->data + skip, n);
		done += n;
		skip = 0;
	}
	return done;
}

int
keel_framer_error(const struct keel_framer *f)
{
	return f->err;
}

const char *
keel_framer_reason(const struct keel_framer *f)
{
	return f->why;
}

/* Put the first @n buffered bytes (a header, a consumed payload, a terminator). */
static void
advance(struct keel_framer *f, size_t n)
{
	f->buffered -= n;
	while (n) {
		struct keel_slice *s = &f->q[f->head];
		size_t avail = s->len - f->off;

		if (n < avail) {
			f->off += (uint32_t)n;
			return;
		}
		n -= avail;
		keel_slice_put(s);
		f->head++;
		f->off = 0;
	}
	if (f->head == f->tail)
		f->own = NULL; /* no longer held here: its room is not ours to write */
}

/* Deliver a frame: skip @hdr bytes, hand out @len payload bytes, skip @trail bytes. */
static int
deliver(struct keel_framer *f, size_t hdr, size_t len, size_t trail)
{
	struct keel_frame fr = { .len = (uint32_t)len };
	size_t left = len, off;
	unsigned need, i;
	int r;

	advance(f, hdr);
	need = f->tail - f->head;
	if (need > f->fcap) {
		struct keel_slice *nfs = realloc(f->fs, need * sizeof(*nfs));
		if (!nfs)
			return fail(f, -ENOMEM, "out of memory for a frame of %zu bytes", len);
		f->fs = nfs;
		f->fcap = need;
	}
	fr.s = f->fs;
	off = f->off;
	for (i = f->head; left; i++) {
		const struct keel_slice *s = &f->q[i];
		size_t n = s->len - off;

		if (n > left)
			n = left;
		r = keel_slice_sub(s, off, n, &f->fs[fr.n]);
		if (r < 0) { /* cannot happen: the range is inside the held slice */
			while (fr.n)
				keel_slice_put(&f->fs[--fr.n]);
			return fail(f, r, "internal: slice range");
		}
		fr.n++;
		left -= n;
		off = 0;
	}
	advance(f, len + trail);
	f->scanned = 0;
	keel__zcrx_frame_seen(fr.s, fr.n); /* fragments per message, for ZCRX's stats */
	r = f->o.on_frame(f->o.arg, &fr);
	if (r < 0)
		return fail(f, r, "the frame callback failed (%s)", strerror(-r));
	return 0;
}

/* The payload length in the LEN32 header at the head (at least its 4 bytes are held). */
static uint32_t
len32_at_head(const struct keel_framer *f)
{
	uint8_t h[KEEL_FRAME_LEN32_HDR];

	keel_framer_peek(f, 0, h, sizeof(h));
	return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
}

static int
next_len32(struct keel_framer *f)
{
	uint32_t len;
	int r;

	if (f->buffered < KEEL_FRAME_LEN32_HDR)
		return 0;
	len = len32_at_head(f);
	/* Known from the header alone: refuse before buffering any of it. */
	if (len > f->o.max)
		return fail(
			f, -EMSGSIZE,
			"length-prefixed frame of %u bytes exceeds the maximum of %u bytes (keel_framer_opts.max)",
			len, f->o.max);
	if (f->buffered - KEEL_FRAME_LEN32_HDR < len)
		return 0;
	r = deliver(f, KEEL_FRAME_LEN32_HDR, len, 0);
	return r < 0 ? r : 1;
}

static int
next_line(struct keel_framer *f)
{
	size_t pos = 0, skip = f->off + f->scanned, base = 0, len, trail = 1;
	const uint8_t *lf = NULL;
	unsigned i;
	int r;

	for (i = f->head; i < f->tail; i++) {
		const struct keel_slice *s = &f->q[i];

		if (skip >= s->len) {
			skip -= s->len;
			base += s->len;
			continue;
		}
		lf = memchr(s->data + skip, '\n', s->len - skip);
		if (lf) {
			pos = base + (size_t)(lf - s->data) - f->off;
			break;
		}
		base += s->len;
		skip = 0;
	}
	if (!lf) {
		f->scanned = f->buffered;
		/* max payload bytes and a CR may wait for their LF, no more. */
		if (f->buffered > (size_t)f->o.max + 1)
			return fail(f, -EMSGSIZE,
				    "line of more than %zu bytes without LF exceeds the maximum of "
				    "%u bytes",
				    f->buffered, f->o.max);
		return 0;
	}
	len = pos;
	if (len) {
		uint8_t cr;
		keel_framer_peek(f, len - 1, &cr, 1);
		if (cr == '\r') {
			len--;
			trail = 2;
		}
	}
	if (len > f->o.max)
		return fail(
			f, -EMSGSIZE,
			"line of %zu bytes exceeds the maximum of %u bytes (keel_framer_opts.max)",
			len, f->o.max);
	r = deliver(f, 0, len, trail);
	return r < 0 ? r : 1;
}

static int
next_user(struct keel_framer *f)
{
	long r;

	if (!f->buffered)
		return 0;
	r = f->o.measure(f, f->o.arg);
	if (r < 0) {
		/* An int, for the framer's error: one outside its range would be cut to 0 or
		 * a positive number (a failed framer reporting success). */
		int e = r < -4095 ? -EPROTO : (int)r;

		return fail(f, e, "the measure callback rejected the frame (%s)", strerror(-e));
	}
	if (r == 0) {
		/* The frame is longer than what is buffered: at least max + 1 bytes. */
		if (f->buffered >= f->o.max)
			return fail(
				f, -EMSGSIZE,
				"frame of more than %zu bytes exceeds the maximum of %u bytes (keel_framer_opts.max)",
				f->buffered, f->o.max);
		return 0;
	}
	if ((unsigned long)r > f->o.max)
		return fail(
			f, -EMSGSIZE,
			"frame of %ld bytes exceeds the maximum of %u bytes (keel_framer_opts.max)",
			r, f->o.max);
	if ((size_t)r > f->buffered)
		return 0;
	return deliver(f, 0, (size_t)r, 0) < 0 ? f->err : 1;
}

static int
hold(struct keel_framer *f, struct keel_slice *s)
{
	/* After a reclaim: the frame goes on in our own buffer while it has room, so it holds
	 * no more of the shard's receive buffers (keel__framer_compact). */
	if (f->own && f->tail > f->head) {
		struct keel_slice *t = &f->q[f->tail - 1];

		if (t->buf == f->own && t->gen_ == f->own_gen && t->data + t->len == f->own_end &&
		    s->len <= (size_t)(f->own_lim - f->own_end) && s->len <= UINT32_MAX - t->len) {
			memcpy(f->own_end, s->data, s->len);
			f->own_end += s->len;
			t->len += s->len;
			f->buffered += s->len;
			keel_slice_put(s);
			return 0;
		}
	}
	/* The bytes right after the last held slice's, in the same buffer (the next receive
	 * into an incrementally consumed buffer): one slice. Else a peer trickling a long
	 * frame a byte per receive made a slice per byte: 24 bytes of this array each, outside
	 * --memory, and a line's scan walked them all on every push (quadratic). */
	if (f->tail > f->head) {
		struct keel_slice *t = &f->q[f->tail - 1];

		if (keel__slice_follows(t, s)) {
			t->len += s->len;
			f->buffered += s->len;
			f->pushed_held = true;
			keel_slice_put(s);
			return 0;
		}
	}
	f->pushed_held = true; /* held as it is, merged with the last or not */
	if (f->tail == f->cap) {
		if (f->head) {
			memmove(f->q, f->q + f->head, (f->tail - f->head) * sizeof(*f->q));
			f->tail -= f->head;
			f->head = 0;
		} else {
			unsigned ncap = f->cap ? f->cap * 2 : 8;
			struct keel_slice *nq = realloc(f->q, ncap * sizeof(*nq));
			if (!nq)
				return -ENOMEM;
			f->q = nq;
			f->cap = ncap;
		}
	}
	f->q[f->tail++] = *s;
	f->buffered += s->len;
	memset(s, 0, sizeof(*s));
	return 0;
}

int
keel_framer_push(struct keel_framer *f, struct keel_slice *s)
{
	int r;

	if (f->err || !s->len) {
		if (s->buf) /* {0}, no buffer: nothing to put */
			keel_slice_put(s);
		return f->err;
	}
	if (hold(f, s) < 0) {
		keel_slice_put(s);
		return fail(f, -ENOMEM, "out of memory holding a partial frame");
	}
	do {
		switch (f->o.kind) {
		case KEEL_FRAME_LEN32:
			r = next_len32(f);
			break;
		case KEEL_FRAME_LINE:
			r = next_line(f);
			break;
		default:
			r = next_user(f);
			break;
		}
	} while (r > 0 && !(f->conn && keel__conn_deliver_stop(f->conn)));
	return r < 0 ? r : 0;
}

/* A frame's callback paused reading (keel_conn_pause_read, or the send queue reached its
 * high watermark): what the framer holds (whole frames not delivered yet, and the start of
 * one) and @rest, the slices not pushed, go back to the connection, which delivers them
 * again after resume; the framer starts empty. Its buffers of its own among them stay
 * known (ownv): pushed again, the next reclaim keeps them rather than copying them once
 * more. Consumes @rest. Returns 0, or -ENOMEM when there was no memory to hand them back:
 * all of it is put, and the stream is broken (the caller fails the framer). */
static int
give_back(struct keel_framer *f, struct keel_conn *c, struct keel_slice *rest, unsigned nrest)
{
	unsigned nheld = f->tail - f->head, k = 0;
	struct keel_slice *v;

	/* The pausing frame ended the data (lock-step traffic): nothing to hand back, and a
	 * malloc(0) that may return NULL must not abort the connection. */
	if (!nheld && !nrest)
		return 0;
	v = keel__fault_take(&keel__frame_fail_give_back)
		    ? NULL
		    : malloc(((size_t)nheld + nrest) * sizeof(*v));

	for (unsigned i = f->head; i < f->tail; i++) {
		struct keel_slice *q = &f->q[i];

		if (v && !(i == f->head && f->off)) {
			v[k++] = *q; /* the reference moves to v */
			continue;
		}
		/* The head's delivered part is left out (a sub-slice of the rest). */
		if (v && keel_slice_sub(q, f->off, q->len - f->off, &v[k]) == 0)
			k++;
		keel_slice_put(q);
	}
	f->head = f->tail = 0;
	f->off = 0;
	f->buffered = 0;
	f->scanned = 0;
	if (!v || k < nheld) { /* no memory to hand them back: the stream is broken */
		for (unsigned i = 0; i < k; i++)
			keel_slice_put(&v[i]);
		for (unsigned i = 0; i < nrest; i++)
			if (rest[i].buf)
				keel_slice_put(&rest[i]);
		free(v);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < nrest; i++)
		if (rest[i].buf) /* an empty {0} goes back as nothing */
			v[k++] = rest[i];
	keel__conn_unread(c, v, k);
	free(v);
	return 0;
}

/* At most 10 framing errors a second per shard reach the log; the rest are counted. */
static bool
log_allowed(unsigned *suppressed)
{
	static _Thread_local uint64_t window;
	static _Thread_local unsigned count, dropped;
	struct timespec ts;
	uint64_t now;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec;
	if (now != window) {
		window = now;
		count = 0;
	}
	if (count >= 10) {
		dropped++;
		return false;
	}
	count++;
	*suppressed = dropped;
	dropped = 0;
	return true;
}

static bool
is_own(const struct keel_slice *s, const struct own_id *id)
{
	return s->buf == id->buf && s->gen_ == id->gen;
}

/* How many of the first held slices are of buffers of our own (ownv): they follow one
 * another in the order the reclaims made them, the first ones perhaps delivered since. */
static unsigned
own_held(const struct keel_framer *f)
{
	unsigned j = 0, k = 0;

	if (f->head == f->tail)
		return 0;
	while (j < f->ownv_n && !is_own(&f->q[f->head], &f->ownv[j]))
		j++;
	while (j + k < f->ownv_n && f->head + k < f->tail &&
	       is_own(&f->q[f->head + k], &f->ownv[j + k]))
		k++;
	return k;
}

/* Copy the bytes @f holds into buffers of its own (keel_buf_alloc from @a, --memory; each
 * at most keel_alloc_buf_max) and put the received slices, so their receive buffers go back to
 * their rings. The buffers an earlier reclaim filled stay as they are, also when a pause
 * handed them back and the resume pushed them again: only what was held since is copied,
 * after them. The last buffer has room for as much again as the framer holds (4 KiB at
 * least), no further than a LEN32 frame's end and within the largest buffer's size (a copy
 * that fills its last buffer exactly leaves none): what follows is copied there (hold), and
 * what finds no room is held as it came, for the next reclaim.
 * The room grows with what arrived, never with what a peer's header announces, so a header
 * alone costs no more than its bytes. Returns: 1 (copied), 0 (nothing to copy), or -ENOMEM
 * (nothing changed). */
int
keel__framer_compact(struct keel_framer *f, struct keel_alloc *a)
{
	size_t need = f->buffered, want = need < 4096 ? need + 4096 : need * 2, done = 0, max;
	size_t spare = 0; /* the last buffer's room past what it was given: the allocator's
			     capacity may round past it */
	unsigned keep, n, cap;
	struct keel_slice *nq;
	struct own_id *nv;

	/* Nothing pushed held as it is since the last copy: all in buffers of our own (one or
	 * several), nothing of the rings to give back. */
	if (!need || !a || !f->pushed_held)
		return 0;
	if (f->o.kind == KEEL_FRAME_LEN32 && need >= KEEL_FRAME_LEN32_HDR) {
		size_t total = KEEL_FRAME_LEN32_HDR + (size_t)len32_at_head(f);

		if (total > need && total < want)
			want = total;
	}
	/* The buffers earlier reclaims filled stay: copied again, they doubled the memory a
	 * reclaim needed, and each reclaim of a long frame copied all of it once more. */
	keep = own_held(f);
	for (unsigned i = 0; i < keep; i++)
		done += f->q[f->head + i].len;
	done -= keep ? f->off : 0;
	if (done >= need) { /* what was held as it is has been delivered since */
		f->pushed_held = false;
		return 0;
	}
	max = (size_t)keel_alloc_buf_max(a);
	cap = keep + (unsigned)((want - done) / max + 2);
	nq = malloc(cap * sizeof(*nq));
	nv = malloc(cap * sizeof(*nv));
	if (!nq || !nv) {
		free(nq);
		free(nv);
		return -ENOMEM;
	}
	n = keep;
	while (done < need) {
		size_t room = want - done < max ? want - done : max;
		size_t take = need - done < room ? need - done : room;
		struct keel_slice *ch = &nq[n];

		/* Short of memory for the whole room, at least OWN_MIN (but a LEN32 frame's
		 * end, whose room is less: the frame's last buffer, delivered with it). It was
		 * what was taken, a byte perhaps: a peer trickling a frame under low memory made
		 * a buffer per byte, each with its own_id and slice here (40 bytes of malloc,
		 * outside --memory, for 64 of it) and a copy of ownv at every reclaim. */
		size_t least = room < OWN_MIN ? take : OWN_MIN;
		size_t fb = take > least ? take : least;

		if (!keel__fault_take(&keel__frame_fail_room) && keel_buf_alloc(a, room, ch) == 0) {
			spare = room - take;
		} else if (fb == room || keel_buf_alloc(a, fb, ch) < 0) {
			while (n > keep)
				keel_slice_put(&nq[--n]);
			free(nq);
			free(nv);
			return -ENOMEM;
		} else {
			spare = fb - take;
		}
		keel_framer_peek(f, done, ch->data, take);
		ch->len = (uint32_t)take;
		done += take;
		n++;
	}
	memcpy(nq, f->q + f->head, keep * sizeof(*nq)); /* the references move */
	for (unsigned i = 0; i < n; i++)
		nv[i] = (struct own_id){ nq[i].buf, nq[i].gen_ };
	for (unsigned i = f->head + keep; i < f->tail; i++)
		keel_slice_put(&f->q[i]);
	free(f->q);
	f->q = nq;
	f->cap = cap;
	f->head = 0;
	f->tail = n;
	if (!keep)
		f->off = 0;
	f->own = nq[n - 1].buf;
	f->own_gen = nq[n - 1].gen_;
	f->own_end = nq[n - 1].data + nq[n - 1].len;
	f->own_lim = f->own_end + spare; /* within the capacity: it was asked for */
	free(f->ownv);
	f->ownv = nv;
	f->ownv_n = n;
	f->pushed_held = false;
	return 1;
}

/* @f failed with @err: abort @c with it, the reason logged (rate-limited). */
static void
abort_failed(struct keel_framer *f, struct keel_conn *c, int err)
{
	unsigned suppressed;

	f->abort_due = false;
	if (log_allowed(&suppressed))
		keel_log(KEEL_LOG_WARN, "net", "closing a connection: %s (%s)%s", f->why,
			 strerror(err < 0 ? -err : err),
			 suppressed ? "; earlier framing errors were not logged" : "");
	keel_conn_abort(c, err);
}

static void
reclaim_cb(struct keel__later *l)
{
	struct net_shard *ns = container_of(l, struct net_shard, reclaim_kick);

	for (struct keel_framer *f = ns->holding, *next; f; f = next) {
		size_t held = f->buffered;
		int r;

		next = f->hnext;
		r = keel__framer_compact(f, keel_shard_alloc());
		if (r > 0)
			ns->st.frame_reclaims++;
		if (r < 0) {
			struct keel_conn *c = f->hconn;

			/* Holding on would starve the shard: this frame fails instead and the
			 * buffers go back, and its connection is aborted (logged) now. It may
			 * be one whose peer sent all it will and waits, not the one that ran
			 * out: left for its next push, it could hang for good. */
			fail(f, -ENOMEM,
			     "out of memory copying a partial frame of %zu bytes out of the "
			     "receive buffers, which had run out (--memory)",
			     held);
			holding_remove(f);
			if (c)
				abort_failed(f, c, -ENOMEM);
			else
				f->abort_due = true;
		}
	}
	keel__net_unref(ns);
}

void
keel__framers_reclaim_later(struct net_shard *ns)
{
	if (ns->holding)
		keel__net_kick(ns, &ns->reclaim_kick, reclaim_cb);
}

void
keel__framers_detach(struct net_shard *ns)
{
	while (ns->holding)
		holding_remove(ns->holding);
}

int
keel_framer_on_data(struct keel_framer *f, struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	int was = f->err, r = was;
	unsigned i;

	f->conn = c;
	for (i = 0; i < n; i++) {
		int stop;

		r = keel_framer_push(f, &s[i]);
		stop = r < 0 ? KEEL__CONN_CLOSING : keel__conn_deliver_stop(c);
		/* A callback closed or aborted the connection: the rest is not read, and what
		 * is held (whole frames not delivered, the start of one) goes now, not at
		 * on_close: a graceful close may wait long for a peer that does not read. */
		if (stop == KEEL__CONN_CLOSING) {
			drop_all(f);
			break;
		}
		/* A callback paused reading: the rest waits for the resume. */
		if (stop == KEEL__CONN_PAUSED) {
			size_t held = f->buffered;

			for (unsigned k = i + 1; k < n; k++)
				held += s[k].len;
			if (give_back(f, c, s + i + 1, n - i - 1) < 0)
				r = fail(
					f, -ENOMEM,
					"out of memory handing %zu bytes not yet delivered back to "
					"the connection, whose reading a frame callback paused",
					held);
			i = n;
			break;
		}
	}
	f->conn = NULL;
	for (i = i < n ? i + 1 : n; i < n; i++)
		if (s[i].buf) /* an empty {0}, as keel_framer_push takes one */
			keel_slice_put(&s[i]);
	/* A partial frame held: listed for a reclaim should the receive buffers run out. */
	if (f->buffered && !f->hns) {
		struct net_shard *ns = keel__net_shard_cur();

		if (ns)
			holding_add(f, ns, c);
	} else if (!f->buffered) {
		holding_remove(f);
	}
	if (r < 0 && (!was || f->abort_due))
		abort_failed(f, c, r);
	return r;
}

/* Frames up to this many payload bytes, in up to FRAME_COPY_SLICES slices, are copied
 * with their header into the connection's write buffer (keel_conn_writev): consecutive
 * small frames then fill one buffer and leave as one iovec, where each would otherwise
 * cost a header allocation and two iovecs. Measured with tools/bench/frameloop.sh
 * (docs/performance-history.md, "Speed work (session 3)"). */
#define FRAME_COPY_MAX    512u
#define FRAME_COPY_SLICES 8u

/* The copying send of a small frame. Consumes the slices on success. */
static int
send_copied(struct keel_conn *c, const uint8_t hdr[KEEL_FRAME_LEN32_HDR], struct keel_slice *s,
	    unsigned n)
{
	struct iovec iov[1 + FRAME_COPY_SLICES];
	unsigned k = 0;
	int r;

	iov[k++] = (struct iovec){ (void *)hdr, KEEL_FRAME_LEN32_HDR };
	for (unsigned i = 0; i < n; i++)
		if (s[i].len)
			iov[k++] = (struct iovec){ s[i].data, s[i].len };
	r = keel_conn_writev(c, iov, k);
	if (r < 0)
		return r;
	for (unsigned i = 0; i < n; i++) {
		if (s[i].buf)
			keel_slice_put(&s[i]);
		memset(&s[i], 0, sizeof(s[i]));
	}
	return r;
}

int
keel_frame_send(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	uint8_t hb[KEEL_FRAME_LEN32_HDR];
	struct keel_slice h;
	uint64_t total = 0;
	unsigned i;
	int r, ret;

	for (i = 0; i < n; i++)
		total += s[i].len;
	if (total > UINT32_MAX)
		return -EMSGSIZE;
	hb[0] = (uint8_t)(total >> 24);
	hb[1] = (uint8_t)(total >> 16);
	hb[2] = (uint8_t)(total >> 8);
	hb[3] = (uint8_t)total;
	if (total <= FRAME_COPY_MAX && n <= FRAME_COPY_SLICES)
		return send_copied(c, hb, s, n);
	/* A large frame goes without copying: its header joins the connection's open write
	 * buffer when that has room (after the frames before it too), else it gets a buffer
	 * of its own. */
	if (keel__conn_write_room(c) >= KEEL_FRAME_LEN32_HDR) {
		ret = keel_conn_write(c, hb, sizeof(hb));
		if (ret < 0)
			return ret;
	} else {
		r = keel_buf_alloc(keel_shard_alloc(), KEEL_FRAME_LEN32_HDR, &h);
		if (r < 0)
			return r;
		memcpy(h.data, hb, sizeof(hb));
		/*
		 * Queued in the same pass, the header and the payload leave in one sendmsg (the
		 * connection flushes at the end of the pass and gathers what is queued).
		 */
		ret = keel_conn_send(c, &h);
		if (ret < 0) {
			keel_slice_put(&h);
			return ret;
		}
	}
	for (i = 0; i < n; i++) {
		if (!s[i].len) {
			if (s[i].buf)
				keel_slice_put(&s[i]);
			memset(&s[i], 0, sizeof(s[i]));
			continue;
		}
		r = keel_conn_send(c, &s[i]);
		if (r < 0) {
			unsigned suppressed;

			/* Half a frame queued: the peer would misread everything after it. A
			 * send cap (-ENOBUFS) said so itself, rate-limited, and aborted; other
			 * errors are said as framing errors are (at most 10 a second). */
			if (r != -ENOBUFS && log_allowed(&suppressed))
				keel_log(KEEL_LOG_WARN, "net",
					 "closing a connection: a framed send failed half-queued "
					 "(%s)%s",
					 strerror(-r),
					 suppressed ? "; earlier framing errors were not logged"
						    : "");
			keel_conn_abort(c, r);
			return r;
		}
		if (r > 0)
			ret = r;
	}
	return ret;
}

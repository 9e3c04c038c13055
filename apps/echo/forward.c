// SPDX-License-Identifier: MIT
/*
 * keel-echo --forward. A connection lives on its home shard; so does its slot in a table
 * of that shard, with a generation bumped at close. A frame travels as a message carrying
 * (slot, generation) and slices:
 *   home: framer delivers the frame; each slice is exported to the next shard
 *         (keel_slice_export), the frame's own references put, the message sent;
 *   next: reads nothing, exports each slice back home, puts its own; the message goes
 *         back as the reply of the keel_call that brought it (a proxy of a proxy: both
 *         hops follow the same rule). A reply is never refused, even when the queue home
 *         is full (keel_send would be: -EAGAIN), so a frame that got out comes back;
 *   home: looks the slot up; with the same generation the connection is still open and
 *         the frame is queued on it (keel_frame_send); otherwise the frame is put.
 * When the queue to the next shard is full (keel_call: -EAGAIN), the frame waits on its
 * slot's backlog, in order with the frames behind it; reading the connection pauses and
 * keel_msg_wait_room() sends the backlog once there is room, then reading resumes. The
 * backlog is bounded by what the framer still delivers after the pause (the receive
 * buffers already filled).
 * Frames away (at the next shard, on their way back, or on the backlog) are replies the
 * connection owes but has not queued, so its send queue's watermark does not see them:
 * they count on their own, and reading pauses while they pass the shard's high watermark,
 * until they are back under its low one. Else a client that does not read would have up
 * to every receive buffer's worth come back at once, past send_max (the connection aborted)
 * where the plain echo pauses at the high watermark.
 * No count is touched by two shards: each proxy is counted only where it is held, and
 * every last put of a proxy travels to the shard that made it.
 */
#include "forward.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct fwd_msg;

struct slot {
	struct keel_conn *conn; /* NULL: free */
	struct keel_framer *framer;
	struct fwd_msg *bl_head, *bl_tail; /* frames waiting for room towards the next shard */
	uint32_t gen;
	uint32_t next_free;
	bool waiting;   /* a keel_msg_wait_room() callback will come */
	bool away_held; /* reading paused: too many bytes away */
	bool eof;       /* the client half-closed: close once no frame is away */
	uint32_t nway;  /* frames away (sent on, or on the backlog) */
	uint64_t away;  /* payload bytes of frames away */
};

struct fwd_shard {
	struct slot *slots;
	uint32_t nslots, free_head;
	uint64_t away_high, away_low; /* the shard's watermarks (keel_net_config) */
	bool truncated_logged;        /* a half-close inside a frame was logged */
	_Atomic uint64_t frames_in, frames_relayed, frames_out, frames_dropped, frames_cut,
		frames_waited, errors, conns_live, away_peak, away_holds, eofs_held;
};

#define NO_SLOT UINT32_MAX

static struct fwd_shard shards[KEEL_MAX_SHARDS];

struct fwd_msg {
	struct fwd_msg *next; /* on a slot's backlog */
	unsigned home;
	uint32_t slot, gen;
	unsigned n;
	uint64_t bytes; /* counted in its slot's away until it is back */
	struct keel_slice s[];
};

struct conn_ref {
	unsigned home;
	uint32_t slot;
};

#define BUMP(fs, f) atomic_fetch_add_explicit(&(fs)->f, 1, memory_order_relaxed)

static struct fwd_shard *
me(void)
{
	return &shards[keel_shard_id(keel_this_shard())];
}

static int
slot_new(struct fwd_shard *fs, uint32_t *out)
{
	if (!fs->nslots || fs->free_head == NO_SLOT) {
		uint32_t n = fs->nslots ? fs->nslots * 2 : 64;
		struct slot *t = realloc(fs->slots, n * sizeof(*t));
		if (!t)
			return -ENOMEM;
		for (uint32_t i = fs->nslots; i < n; i++) {
			memset(&t[i], 0, sizeof(t[i]));
			t[i].next_free = i + 1 < n ? i + 1 : NO_SLOT;
		}
		fs->free_head = fs->nslots;
		fs->slots = t;
		fs->nslots = n;
	}
	*out = fs->free_head;
	fs->free_head = fs->slots[*out].next_free;
	return 0;
}

/* Put the slices of a message that will not be delivered (the message itself stays).
 * Proxies made for another shard come back here first: their one reference is ours again
 * (a move), then an ordinary put. */
static void
msg_put_slices(struct fwd_msg *m)
{
	unsigned self = keel_shard_id(keel_this_shard());

	for (unsigned i = 0; i < m->n; i++) {
		if (!m->s[i].buf)
			continue;
		keel_slice_move(&m->s[i], self);
		keel_slice_put(&m->s[i]);
	}
	m->n = 0;
}

static void
msg_drop(struct fwd_msg *m)
{
	msg_put_slices(m);
	free(m);
}

/* @bytes more away for @sl's connection: reading pauses at the high watermark. */
static void
away_add(struct fwd_shard *fs, struct slot *sl, uint64_t bytes)
{
	sl->away += bytes;
	sl->nway++;
	if (sl->away > atomic_load_explicit(&fs->away_peak, memory_order_relaxed))
		atomic_store_explicit(&fs->away_peak, sl->away, memory_order_relaxed);
	if (!sl->away_held && sl->away >= fs->away_high) {
		sl->away_held = true;
		BUMP(fs, away_holds);
		keel_conn_pause_read(sl->conn);
	}
}

/* @bytes back (or dropped): under the low watermark reading resumes, unless the backlog
 * still holds it. */
static void
away_sub(struct fwd_shard *fs, struct slot *sl, uint64_t bytes)
{
	sl->away -= bytes;
	sl->nway--;
	if (sl->away_held && sl->away <= fs->away_low) {
		sl->away_held = false;
		if (!sl->waiting)
			keel_conn_resume_read(sl->conn);
	}
}

/* On the home shard: the frame is back (the reply of on_frame's call). */
static void
on_back(int status, void *arg)
{
	struct fwd_msg *m = arg;
	struct fwd_shard *fs = me();
	struct slot *sl = m->slot < fs->nslots ? &fs->slots[m->slot] : NULL;
	/* The frame's connection is still open (not closed, its slot not reused). */
	bool live = sl && sl->conn && sl->gen == m->gen;
	int r;

	if (live)
		away_sub(fs, sl, m->bytes); /* queued below, or the connection ends */
	if (status < 0) {
		/* on_relay failed (out of memory there) and put the frame's slices: the
		 * connection would miss a frame and go on, so it ends here, named. */
		BUMP(fs, frames_dropped);
		if (live)
			keel_conn_abort(sl->conn, status);
		free(m);
		return;
	}

	if (!live) {
		/* The connection closed while the frame was away. */
		BUMP(fs, frames_dropped);
		msg_drop(m);
		return;
	}
	r = keel_frame_send(sl->conn, m->s, m->n);
	if (r < 0) {
		/* -EPIPE: the app's side is closing (an abort on its way): no error. */
		BUMP(fs, frames_dropped);
		if (r != -EPIPE) {
			BUMP(fs, errors);
			keel_conn_abort(sl->conn, r);
		}
		msg_drop(m); /* what was not queued is still ours */
		return;
	}
	BUMP(fs, frames_out);
	free(m);
	if (sl->eof && !sl->nway)
		keel_conn_close(sl->conn); /* the last echo owed is queued: sent, then closed */
}

/* On the next shard: hand the frame back. */
static int
on_relay(void *arg)
{
	struct fwd_msg *m = arg;
	struct fwd_shard *fs = me();
	int r = 0;

	for (unsigned i = 0; i < m->n; i++) {
		struct keel_slice back;
		if (r == 0)
			r = keel_slice_export(&m->s[i], m->home, &back);
		if (r < 0)
			continue; /* put below, with the rest */
		keel_slice_put(&m->s[i]);
		m->s[i] = back;
	}
	if (r < 0) {
		/* Slices not yet exported are this shard's proxies; exported ones go through
		 * msg_put_slices's move. Only when a shard runs out of memory: on_back gets r
		 * with the (emptied) message and aborts its connection, which cannot go on
		 * without this frame. */
		BUMP(fs, errors);
		msg_put_slices(m);
		return r;
	}
	BUMP(fs, frames_relayed);
	return 0;
}

/* The waiter of a slot's backlog: which connection it was (the slot may be reused). */
struct room_ref {
	uint32_t slot, gen;
};

static void on_room(int status, void *arg);

static unsigned
next_shard(unsigned home)
{
	return (home + 1) % keel_shard_count(keel_this_shard());
}

/* Wait for room towards the next shard; reading stays paused until the backlog is sent. */
static int
backlog_wait(struct fwd_shard *fs, uint32_t id)
{
	struct slot *sl = &fs->slots[id];
	struct room_ref *rr;
	int r;

	if (sl->waiting)
		return 0;
	rr = malloc(sizeof(*rr));
	if (!rr)
		return -ENOMEM;
	rr->slot = id;
	rr->gen = sl->gen;
	r = keel_msg_wait_room(next_shard(keel_shard_id(keel_this_shard())), on_room, rr);
	if (r < 0) {
		free(rr);
		return r;
	}
	sl->waiting = true;
	keel_conn_pause_read(sl->conn);
	return 0;
}

/* Send the backlog in order. Returns 0 (sent, or waiting again) or -errno. */
static int
backlog_flush(struct fwd_shard *fs, uint32_t id)
{
	struct slot *sl = &fs->slots[id];
	unsigned next = next_shard(keel_shard_id(keel_this_shard()));

	while (sl->bl_head) {
		struct fwd_msg *m = sl->bl_head;
		int r = keel_call(next, on_relay, m, on_back, m);
		if (r == -EAGAIN)
			return backlog_wait(fs, id);
		if (r < 0)
			return r;
		sl->bl_head = m->next;
		if (!sl->bl_head)
			sl->bl_tail = NULL;
	}
	return 0;
}

static void
backlog_drop(struct fwd_shard *fs, struct slot *sl)
{
	while (sl->bl_head) {
		struct fwd_msg *m = sl->bl_head;
		sl->bl_head = m->next;
		BUMP(fs, frames_dropped);
		msg_drop(m);
	}
	sl->bl_tail = NULL;
}

static void
on_room(int status, void *arg)
{
	struct room_ref *rr = arg;
	struct fwd_shard *fs = me();
	struct slot *sl = rr->slot < fs->nslots ? &fs->slots[rr->slot] : NULL;
	int r;

	if (!sl || !sl->conn || sl->gen != rr->gen) {
		free(rr); /* the connection closed; its backlog went with it */
		return;
	}
	free(rr);
	sl->waiting = false;
	r = status < 0 ? status : backlog_flush(fs, (uint32_t)(sl - fs->slots));
	if (r == -ESHUTDOWN) {
		/* The runtime stops: no failure. The connection closes as the stop closes the
		 * others; its on_close drops the frames waiting (counted). */
		keel_conn_close(sl->conn);
		return;
	}
	if (r < 0) {
		BUMP(fs, errors);
		keel_conn_abort(sl->conn, r);
		return;
	}
	if (!sl->waiting && !sl->away_held)
		keel_conn_resume_read(sl->conn);
}

static int
on_frame(void *arg, struct keel_frame *fr)
{
	struct conn_ref *ref = arg;
	struct fwd_shard *fs = &shards[ref->home];
	struct slot *sl = &fs->slots[ref->slot];
	unsigned next = next_shard(ref->home);
	struct fwd_msg *m = malloc(sizeof(*m) + fr->n * sizeof(m->s[0]));
	unsigned done = 0;
	int r = 0;

	BUMP(fs, frames_in);
	if (!m)
		r = -ENOMEM;
	for (unsigned i = 0; i < fr->n; i++) {
		if (r == 0)
			r = keel_slice_export(&fr->s[i], next, &m->s[i]);
		if (r == 0)
			done++;
		keel_slice_put(&fr->s[i]);
	}
	if (r < 0) {
		BUMP(fs, errors);
		BUMP(fs, frames_dropped);
		if (m) {
			m->n = done;
			msg_drop(m);
		}
		return r; /* the framer fails: the connection is aborted with r */
	}
	m->home = ref->home;
	m->slot = ref->slot;
	m->gen = sl->gen;
	m->n = fr->n;
	m->next = NULL;
	m->bytes = 0;
	for (unsigned i = 0; i < m->n; i++)
		m->bytes += m->s[i].len;
	r = sl->bl_head ? -EAGAIN : keel_call(next, on_relay, m, on_back, m);
	if (r == -EAGAIN) {
		/* --mailbox-overflow frames already wait for the next shard: this one waits
		 * on the connection, behind the frames already there. */
		BUMP(fs, frames_waited);
		if (sl->bl_tail)
			sl->bl_tail->next = m;
		else
			sl->bl_head = m;
		sl->bl_tail = m;
		away_add(fs, sl, m->bytes);
		r = backlog_wait(fs, ref->slot);
		if (r < 0) /* counted as on_room counts its own */
			BUMP(fs, errors);
		return r; /* on failure the backlog goes with the connection's close */
	}
	if (r == -ESHUTDOWN) { /* the runtime stops: dropped, no failure (as in on_room) */
		BUMP(fs, frames_dropped);
		msg_drop(m);
		keel_conn_close(sl->conn);
		return 0;
	}
	if (r < 0) {
		BUMP(fs, errors);
		BUMP(fs, frames_dropped);
		msg_drop(m);
		return r; /* the framer fails: the connection is aborted with r */
	}
	away_add(fs, sl, m->bytes);
	return 0;
}

static void
fwd_open(struct keel_conn *c)
{
	struct fwd_shard *fs = me();
	struct keel_framer_opts fo;
	struct conn_ref *ref;
	uint32_t id;
	int r;

	ref = malloc(sizeof(*ref));
	if (!ref || slot_new(fs, &id) < 0) {
		free(ref);
		BUMP(fs, errors);
		keel_conn_abort(c, -ENOMEM);
		return;
	}
	if (!fs->away_high) {
		struct keel_net_config nc;

		keel_net_config_get(&nc);
		fs->away_high = nc.high_watermark;
		fs->away_low = nc.low_watermark;
	}
	ref->home = keel_shard_id(keel_this_shard());
	ref->slot = id;
	memset(&fo, 0, sizeof(fo));
	fo.kind = KEEL_FRAME_LEN32;
	fo.on_frame = on_frame;
	fo.arg = ref;
	r = keel_framer_create(&fo, &fs->slots[id].framer);
	if (r < 0) {
		fs->slots[id].next_free = fs->free_head;
		fs->free_head = id;
		free(ref);
		BUMP(fs, errors);
		keel_conn_abort(c, r);
		return;
	}
	fs->slots[id].conn = c;
	atomic_fetch_add_explicit(&fs->conns_live, 1, memory_order_relaxed);
	keel_conn_set_user(c, ref);
}

static void
fwd_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct conn_ref *ref = keel_conn_user(c);

	if (!ref) { /* opening failed; the abort is on its way */
		for (unsigned i = 0; i < n; i++)
			keel_slice_put(&s[i]);
		return;
	}
	keel_framer_on_data(shards[ref->home].slots[ref->slot].framer, c, s, n);
}

/* The client half-closed (it sent everything and reads the echoes): the plain echo has
 * queued every reply by then, so the default graceful close sends them; here frames may
 * still be away, and the close waits until the last is back and queued (on_back). */
static void
fwd_eof(struct keel_conn *c)
{
	struct conn_ref *ref = keel_conn_user(c);
	struct fwd_shard *fs;
	struct slot *sl;

	if (!ref) {
		keel_conn_close(c);
		return;
	}
	fs = &shards[ref->home];
	sl = &fs->slots[ref->slot];
	/* The client half-closed inside a frame: its start can never complete. Dropped, and
	 * said (counted, logged once per shard), not passed over as a clean end. */
	if (sl->framer && keel_framer_buffered(sl->framer)) {
		size_t held = keel_framer_buffered(sl->framer);

		BUMP(fs, errors);
		BUMP(fs, frames_cut);
		if (!fs->truncated_logged) {
			fs->truncated_logged = true;
			keel_log(KEEL_LOG_WARN, "echo",
				 "--forward: a client half-closed inside a frame: its %zu bytes "
				 "were dropped (counted in errors and frames_cut; said once "
				 "per shard)",
				 held);
		}
	}
	if (!sl->nway) {
		keel_conn_close(c);
		return;
	}
	sl->eof = true;
	BUMP(fs, eofs_held);
}

static void
fwd_close(struct keel_conn *c, int status)
{
	struct conn_ref *ref = keel_conn_user(c);
	struct fwd_shard *fs;
	struct slot *sl;

	(void)status;
	if (!ref)
		return;
	fs = &shards[ref->home];
	sl = &fs->slots[ref->slot];
	keel_framer_destroy(sl->framer);
	sl->framer = NULL;
	backlog_drop(fs, sl);
	sl->waiting = false; /* a pending on_room finds the generation changed */
	sl->away_held = false;
	sl->away = 0; /* frames still away find the generation changed */
	sl->nway = 0;
	sl->eof = false;
	sl->conn = NULL;
	sl->gen++; /* frames still away find the slot changed */
	sl->next_free = fs->free_head;
	fs->free_head = ref->slot;
	atomic_fetch_sub_explicit(&fs->conns_live, 1, memory_order_relaxed);
	free(ref);
}

const struct keel_conn_ops echo_fwd_ops = {
	.on_open = fwd_open,
	.on_data = fwd_data,
	.on_eof = fwd_eof,
	.on_close = fwd_close,
};

void
echo_fwd_stats(unsigned shard, struct echo_fwd_stats *out)
{
	struct fwd_shard *fs = &shards[shard];

	out->frames_in = atomic_load_explicit(&fs->frames_in, memory_order_relaxed);
	out->frames_relayed = atomic_load_explicit(&fs->frames_relayed, memory_order_relaxed);
	out->frames_out = atomic_load_explicit(&fs->frames_out, memory_order_relaxed);
	out->frames_dropped = atomic_load_explicit(&fs->frames_dropped, memory_order_relaxed);
	out->frames_cut = atomic_load_explicit(&fs->frames_cut, memory_order_relaxed);
	out->frames_waited = atomic_load_explicit(&fs->frames_waited, memory_order_relaxed);
	out->errors = atomic_load_explicit(&fs->errors, memory_order_relaxed);
	out->conns_live = atomic_load_explicit(&fs->conns_live, memory_order_relaxed);
	out->away_peak = atomic_load_explicit(&fs->away_peak, memory_order_relaxed);
	out->away_holds = atomic_load_explicit(&fs->away_holds, memory_order_relaxed);
	out->eofs_held = atomic_load_explicit(&fs->eofs_held, memory_order_relaxed);
}

void
echo_fwd_fini(void)
{
	for (unsigned i = 0; i < KEEL_MAX_SHARDS; i++) {
		free(shards[i].slots);
		memset(&shards[i], 0, sizeof(shards[i]));
	}
}

// SPDX-License-Identifier: MIT
/*
 * Cross-shard messages: one SPSC queue per ordered shard pair, allocated by the receiver on
 * its own NUMA node, and MSG_RING wake-ups. A receiver finds its mail by reading the tail of
 * each of its queues every pass (runtime.mail_scan: up to keel__mail_scan_max shards, lines
 * that stay in its cache until a sender publishes), or, in a runtime of more shards, by a
 * has-mail bitmap on the receiver that each publication sets and each drain clears.
 *
 * Ordering protocol (a Dekker pattern on both sides):
 *   sender:   publish tail (release); fence; [set the receiver's mail bit]; load `sleeping`
 *   receiver: store `sleeping` = 1; load the tails [the mail bits]; sleep only if none has
 *             moved [all are clear]
 * so either the receiver sees the tail [the bit], or the sender sees it asleep and wakes it.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../alloc/numa_local.h"
#include "internal.h"

static size_t
mbox_size(const struct keel_runtime *rt)
{
	size_t sz = sizeof(struct mbox) + (size_t)rt->opts.mailbox_entries * sizeof(struct msg);
	return (sz + KEEL_CACHELINE - 1) & ~(size_t)(KEEL_CACHELINE - 1);
}

static void *
alloc_local(struct keel_shard *s, size_t len)
{
	hwloc_obj_t node = keel__numa_of_cpu(s->rt->topo, (unsigned)s->cpu);
	void *p = NULL;

	/* Bind to the NUMA node of our CPU (its one node with CPUs, not the memory-only nodes
	 * its nodeset also holds: numa_local.h); first touch below does the rest where binding
	 * is not supported. */
	if (node && node->nodeset)
		p = hwloc_alloc_membind(s->rt->topo, len, node->nodeset, HWLOC_MEMBIND_BIND,
					HWLOC_MEMBIND_BYNODESET);
	if (!p)
		p = hwloc_alloc(s->rt->topo, len);
	if (p)
		memset(p, 0, len);
	return p;
}

int
keel__mail_init(struct keel_shard *s)
{
	struct keel_runtime *rt = s->rt;
	size_t one = mbox_size(rt);
	char *mem;

	s->mail_words = (rt->count + 63) / 64;
	s->inbox = calloc(rt->count, sizeof(*s->inbox));
	s->in_head = calloc(rt->count, sizeof(*s->in_head));
	s->out = calloc(rt->count, sizeof(*s->out));
	s->dirty = calloc(rt->count, sizeof(*s->dirty));
	s->mail_bits = alloc_local(s, s->mail_words * sizeof(uint64_t));
	mem = alloc_local(s, one * rt->count);
	if (!s->inbox || !s->in_head || !s->out || !s->dirty || !s->mail_bits || !mem) {
		if (mem)
			hwloc_free(rt->topo, mem, one * rt->count);
		keel_log(KEEL_LOG_ERROR, "core",
			 "no memory for %u mailboxes of %u entries; lower %s", rt->count,
			 rt->opts.mailbox_entries, keel__opt_name(&rt->opts, "--mailbox-entries"));
		return -ENOMEM;
	}
	for (unsigned i = 0; i < rt->count; i++)
		s->inbox[i] = (struct mbox *)(mem + i * one);
	return 0;
}

/* After every shard has made its inbox: point our outboxes at them. */
void
keel__mail_link(struct keel_shard *s)
{
	for (unsigned d = 0; d < s->rt->count; d++)
		s->out[d].mb = s->rt->shards[d].inbox[s->id];
}

static void ovf_node_free(struct ovf_node *n);

void
keel__mail_fini(struct keel_shard *s)
{
	struct keel_runtime *rt = s->rt;

	if (s->out) {
		for (unsigned d = 0; d < rt->count; d++) {
			struct ovf_node *n = s->out[d].ovf_head;
			struct room_wait *w = s->out[d].wait_head;
			while (n) {
				struct ovf_node *next = n->next;
				ovf_node_free(n);
				n = next;
			}
			while (w) {
				struct room_wait *next = w->next;
				keel_shard_free(w);
				w = next;
			}
		}
	}
	if (s->inbox && s->inbox[0])
		hwloc_free(rt->topo, s->inbox[0], mbox_size(rt) * rt->count);
	if (s->mail_bits)
		hwloc_free(rt->topo, (void *)s->mail_bits, s->mail_words * sizeof(uint64_t));
	free(s->inbox);
	free(s->in_head);
	free(s->out);
	free(s->dirty);
	s->inbox = NULL;
	s->in_head = NULL;
	s->out = NULL;
	s->dirty = NULL;
	s->mail_bits = NULL;
}

static inline void
mark_dirty(struct keel_shard *s, unsigned dst)
{
	if (!s->out[dst].dirty) {
		struct outbox *o = &s->out[dst];

		/* Sporadic traffic to @dst (nothing published to it by the last flush, or a
		 * sleep since): fetch the tail's line for writing now, so that the flush's store
		 * to it, and the fence after it, do not wait for that line to come from the
		 * receiver, which read it last (docs/performance.md, "Cross-shard messages", the
		 * thirty-eighth session). Not while streaming: then the receiver reads the line
		 * between our passes, and an early fetch would move it twice a pass. */
		if (o->last_flush != s->flush_seq)
			keel__prefetch_write((const void *)&o->mb->tail);
		o->dirty = true;
		s->dirty[s->ndirty++] = dst;
	}
}

static inline bool
mbox_has_room(struct outbox *o, uint32_t cap)
{
	if (o->tail_local - o->head_cache < cap)
		return true;
	o->head_cache = atomic_load_explicit(&o->mb->head, memory_order_acquire);
	return o->tail_local - o->head_cache < cap;
}

/* Would a message of the app to @o be accepted now? */
static bool
app_room(struct keel_shard *s, struct outbox *o)
{
	if (o->ovf_n < s->rt->opts.mailbox_overflow)
		return true;
	return !o->ovf_head && mbox_has_room(o, s->rt->opts.mailbox_entries);
}

static void
ovf_node_free(struct ovf_node *n)
{
	if (n->heap)
		free(n);
	else
		keel_shard_free(n);
}

/* What a message is to the limit on a queue's overflow (--mailbox-overflow). */
enum q_kind {
	Q_APP,   /* the app's: refused (-EAGAIN) at the limit, and counted toward it */
	Q_KEEL,  /* keel's own traffic (a buffer's trip home, a call's reply): never refused,
		  * as losing it would leak a buffer or break a call's exactly-once reply; bounded
		  * by what the app sent (a reply per call) or holds (a trip home per buffer), so
		  * not counted */
	Q_BCAST, /* a part of an accepted broadcast: never refused (all or nothing, checked
		  * before), but counted, so that broadcasts alone meet the limit too */
};

/* keel_shard_malloc failed (the process's heap, or the shard's jemalloc arena: neither is
 * --memory, which sizes only the registered regions) and keel's own message (a call's reply,
 * a buffer's trip home) must still be queued: losing it would break a call's exactly-once
 * reply or leak a buffer. So must a part of an accepted broadcast, which is all or nothing
 * (its parts count toward --mailbox-overflow, which bounds them). Its node comes from
 * malloc instead, said once per shard. */
static __attribute__((noinline, cold)) struct ovf_node *
ovf_node_heap(struct keel_shard *s, enum q_kind kind)
{
	struct ovf_node *n = malloc(sizeof(*n));

	if (!s->ovf_heap_logged) {
		s->ovf_heap_logged = true;
		keel_log(KEEL_LOG_WARN, "core",
			 "shard %u: keel_shard_malloc failed for a queued cross-shard %s: the "
			 "process is short of memory (its heap, or the shard's jemalloc arena; "
			 "not --memory, which sizes only the registered buffers); its queue node "
			 "%s",
			 s->id, kind == Q_BCAST ? "broadcast part" : "reply or buffer going home",
			 n ? "comes from malloc (logged once)" : "cannot be had either");
	}
	if (n)
		n->heap = true;
	return n;
}

/* The slot the next message to @dst goes into when the ring has room and nothing waits
 * before it in the overflow list, else NULL; ring_filled() counts it once written. */
static inline struct msg *
ring_slot(struct keel_shard *s, unsigned dst)
{
	struct outbox *o = &s->out[dst];
	uint32_t cap = s->rt->opts.mailbox_entries;

	if (__builtin_expect(o->ovf_head != NULL, 0) || !mbox_has_room(o, cap))
		return NULL;
	return &o->mb->slots[o->tail_local & (cap - 1)];
}

static inline void
ring_filled(struct keel_shard *s, unsigned dst)
{
	s->out[dst].tail_local++;
	s->sent_unpublished++;
	mark_dirty(s, dst);
}

static int
enqueue(struct keel_shard *s, unsigned dst, const struct msg *m, enum q_kind kind)
{
	struct outbox *o = &s->out[dst];
	struct msg *slot = ring_slot(s, dst);
	bool internal = kind != Q_APP;
	struct ovf_node *n;

	if (slot) {
		*slot = *m;
		ring_filled(s, dst);
		return 0;
	}
	if (!internal && o->ovf_n >= s->rt->opts.mailbox_overflow) {
		STAT_INC(s, msgs_refused);
		return -EAGAIN;
	}
	n = keel_shard_malloc(sizeof(*n));
	if (n)
		n->heap = false;
	else if (!internal || !(n = ovf_node_heap(s, kind)))
		return -ENOMEM;
	n->next = NULL;
	n->m = *m;
	n->app = kind != Q_KEEL;
	if (o->ovf_tail)
		o->ovf_tail->next = n;
	else
		o->ovf_head = n;
	o->ovf_tail = n;
	o->ovf_n += n->app;
	s->ovf_pending++;
	STAT_INC(s, msgs_overflow);
	s->sent_unpublished++;
	mark_dirty(s, dst);
	return 0;
}

_Static_assert(offsetof(struct msg, arg) == 8 && offsetof(struct msg, done) == 16,
	       "keel_send writes a slot as fn and arg, then done and done_arg");

int
keel_send(unsigned dst, keel_fn fn, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	struct msg *slot;

	if (dst >= s->rt->count || !fn)
		return -EINVAL;
	if (s->phase != PHASE_RUN)
		return -ESHUTDOWN;
	/* The ring's path, written from registers. A struct msg built on the stack and copied
	 * by enqueue() was read back with one 16-byte load over two 8-byte stores, which the
	 * CPU cannot forward: every message then waited for all older stores to drain, the
	 * previous slots' too (each the fetch of a line the receiver last read). A review's
	 * profile of keel-bench xshard found half the sender's time there (docs/performance.md,
	 * "Cross-shard messages"). */
	slot = ring_slot(s, dst);
	if (slot) {
#if defined(__SSE2__)
		/* Two 16-byte stores, not four of 8: fewer store-buffer entries behind the
		 * slot line's fetch. */
		_mm_storeu_si128((__m128i *)(void *)slot, _mm_set_epi64x((long long)(uintptr_t)arg,
									 (long long)(uintptr_t)fn));
		_mm_storeu_si128((__m128i *)(void *)slot + 1, _mm_setzero_si128());
#else
		slot->fn.send = fn;
		slot->arg = arg;
		slot->done = NULL;
		slot->done_arg = NULL;
#endif
		ring_filled(s, dst);
		return 0;
	}
	struct msg m = { .fn.send = fn, .arg = arg };
	return enqueue(s, dst, &m, Q_APP);
}

/* keel's own messages (a buffer's trip home): unlike keel_send, allowed while the shard
 * drains in PHASE_STOP, like call replies. Termination detection counts them as it counts
 * every enqueue, so the destination keeps looping until it ran this. */
int
keel__send_internal(unsigned dst, keel_fn fn, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	struct msg m = { .fn.send = fn, .arg = arg };

	if (dst >= s->rt->count || !fn)
		return -EINVAL;
	if (s->phase == PHASE_DONE)
		return -ESHUTDOWN;
	return enqueue(s, dst, &m, Q_KEEL);
}

static int
call_enqueue(struct keel_shard *s, unsigned dst, keel_call_fn fn, void *arg, keel_done_fn done,
	     void *done_arg, enum q_kind kind)
{
	struct msg m = { .fn.call = fn, .arg = arg, .done = done, .done_arg = done_arg };

	if (dst >= s->rt->count || !fn || !done)
		return -EINVAL;
	if (s->phase != PHASE_RUN)
		return -ESHUTDOWN;
	return enqueue(s, dst, &m, kind);
}

int
keel_call(unsigned dst, keel_call_fn fn, void *arg, keel_done_fn done, void *done_arg)
{
	return call_enqueue(cur_shard(__func__), dst, fn, arg, done, done_arg, Q_APP);
}

static void
room_run(void *p)
{
	struct room_wait w = *(struct room_wait *)p;

	keel_shard_free(p);
	w.fn(w.status, w.arg);
}

int
keel_msg_wait_room(unsigned dst, keel_done_fn fn, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	struct outbox *o;
	struct room_wait *w;

	if (dst >= s->rt->count || !fn)
		return -EINVAL;
	if (s->phase != PHASE_RUN)
		return -ESHUTDOWN;
	w = keel_shard_malloc(sizeof(*w));
	if (!w)
		return -ENOMEM;
	*w = (struct room_wait){ NULL, fn, arg, 0 };
	o = &s->out[dst];
	if (o->wait_tail)
		o->wait_tail->next = w;
	else
		o->wait_head = w;
	o->wait_tail = w;
	s->room_waiters++;
	/* The flush at the end of this pass looks for room (and keeps looking, pass after
	 * pass, while the destination stays dirty). */
	mark_dirty(s, dst);
	return 0;
}

/* In the flush: hand @o's room waiters to the next pass once the app may send to it again,
 * or with -ESHUTDOWN once this shard stops (sends are refused from then on). */
static void
room_wake(struct keel_shard *s, struct outbox *o)
{
	int status;

	if (s->phase != PHASE_RUN)
		status = -ESHUTDOWN;
	else if (app_room(s, o))
		status = 0;
	else
		return;
	while (o->wait_head) {
		struct room_wait *w = o->wait_head;

		w->status = status;
		/* Out of memory: the waiter stays, and the next flush tries again. */
		if (keel__defer_push(&s->defer_next, room_run, w) < 0)
			return;
		o->wait_head = w->next;
		if (!o->wait_head)
			o->wait_tail = NULL;
		s->room_waiters--;
	}
}

/* A call with a value: the record rides as the call's argument, allocated and freed on the
 * caller; the remote shard writes status and value into it before the reply (whose queue
 * publication orders those writes before the caller reads them). */
struct value_call {
	keel_call_value_fn fn;
	void *arg;
	keel_value_done_fn done;
	void *done_arg;
	uint64_t value;
};

static int
value_run(void *p)
{
	struct value_call *c = p;
	return c->fn(c->arg, &c->value);
}

static void
value_reply(int status, void *p)
{
	struct value_call c = *(struct value_call *)p;

	keel_shard_free(p);
	c.done(status, c.value, c.done_arg);
}

int
keel_call_value(unsigned dst, keel_call_value_fn fn, void *arg, keel_value_done_fn done,
		void *done_arg)
{
	struct keel_shard *s = cur_shard(__func__);
	struct value_call *c;
	int r;

	if (dst >= s->rt->count || !fn || !done)
		return -EINVAL;
	if (s->phase != PHASE_RUN)
		return -ESHUTDOWN;
	c = keel_shard_malloc(sizeof(*c));
	if (!c)
		return -ENOMEM;
	*c = (struct value_call){ fn, arg, done, done_arg, 0 };
	r = keel_call(dst, value_run, c, value_reply, c);
	if (r < 0)
		keel_shard_free(c);
	return r;
}

struct bcast {
	keel_fn fn;
	void *arg;
	keel_done_fn all_done;
	void *done_arg;
	unsigned remaining;
	int status;
};

static int
bcast_run(void *p)
{
	struct bcast *b = p;
	b->fn(b->arg);
	return 0;
}

static void
bcast_ack(int status, void *p)
{
	struct bcast *b = p;
	if (--b->remaining == 0) {
		if (b->all_done)
			b->all_done(b->status, b->done_arg);
		keel_shard_free(b);
	}
}

int
keel_broadcast(keel_fn fn, void *arg, keel_done_fn all_done, void *done_arg)
{
	struct keel_shard *s = cur_shard(__func__);
	struct bcast *b;
	unsigned n = s->rt->count;

	if (!fn)
		return -EINVAL;
	if (s->phase != PHASE_RUN)
		return -ESHUTDOWN;
	/* All or nothing for a full queue: refused before anything is sent, so the app can
	 * wait for room and try again; once accepted, the parts are sent past the limit. */
	for (unsigned i = 0; i < n; i++)
		if (!app_room(s, &s->out[i])) {
			STAT_INC(s, msgs_refused);
			return -EAGAIN;
		}
	b = keel_shard_malloc(sizeof(*b));
	if (!b)
		return -ENOMEM;
	*b = (struct bcast){ fn, arg, all_done, done_arg, n, 0 };
	/* Every shard, this one included, through its queue: a broadcast is ordered with the
	 * other messages from this shard. Enqueueing fails only when memory is out; the shards
	 * already reached still run fn, and all_done then reports -ENOMEM. */
	for (unsigned i = 0; i < n; i++) {
		if (call_enqueue(s, i, bcast_run, b, bcast_ack, b, Q_BCAST) < 0) {
			if (i == 0) {
				keel_shard_free(b);
				return -ENOMEM;
			}
			keel_log(KEEL_LOG_ERROR, "core",
				 "broadcast reached %u of %u shards: out of memory", i, n);
			b->remaining = i;
			b->status = -ENOMEM;
			break;
		}
	}
	return 0;
}

static inline void
run_msg(struct keel_shard *s, unsigned src, const struct msg *m)
{
	if (!m->done) {
		m->fn.send(m->arg);
	} else if (m->fn.call) {
		struct msg r = { .arg = (void *)(intptr_t)m->fn.call(m->arg),
				 .done = m->done,
				 .done_arg = m->done_arg };
		/* A lost reply would break exactly-once delivery: only memory exhaustion
		 * fails here. */
		keel_verify(enqueue(s, src, &r, Q_KEEL) == 0);
	} else {
		m->done((int)(intptr_t)m->arg, m->done_arg);
	}
}

/* Add the messages sent since the last count to stats.msgs_sent. */
static void
sent_count(struct keel_shard *s)
{
	if (!s->sent_unpublished)
		return;
	atomic_store_explicit(&s->stats.msgs_sent,
			      atomic_load_explicit(&s->stats.msgs_sent, memory_order_relaxed) +
				      s->sent_unpublished,
			      memory_order_release);
	s->sent_unpublished = 0;
}

static unsigned
drain_one(struct keel_shard *s, unsigned src)
{
	struct mbox *mb = s->inbox[src];
	uint32_t cap = s->rt->opts.mailbox_entries;
	uint32_t head = s->in_head[src];
	uint32_t tail = atomic_load_explicit(&mb->tail, memory_order_acquire);
	unsigned n = 0;

	/* tail was read once: at most one queue's worth runs per pass, which keeps the loop
	 * fair; what the sender publishes meanwhile waits for the next pass (which sees the
	 * tail moved, or the bit that publication sets again). */
	while (head != tail) {
		struct msg m = mb->slots[head & (cap - 1)];
		head++;
		n++;
		/* Hand slots back every 64 messages, not each time: the shared line moves less. */
		if ((n & 63) == 0)
			atomic_store_explicit(&mb->head, head, memory_order_release);
		run_msg(s, src, &m);
	}
	atomic_store_explicit(&mb->head, head, memory_order_release);
	s->in_head[src] = head;
	/* Termination detection (loop.c, wave) compares the totals and each shard's quiescent
	 * flag. Before these messages count as received: this shard is active again (the flag
	 * another shard reads may be from an earlier pass: what these handlers deferred has
	 * not run), and what the handlers sent counts as sent (a flush publishes it later:
	 * counted sooner than published is safe, later is not). */
	if (n) {
		/* Only while stopping: before, the flag is 0 (stop_progress alone sets it) and
		 * this pass's flush counts the sends before the shard can call itself idle. The
		 * busy mark is relaxed: the release store of msgs_recv below orders it for any
		 * shard that reads the new count. */
		if (s->phase != PHASE_RUN) {
			atomic_store_explicit(&s->quiescent, 0, memory_order_relaxed);
			sent_count(s);
		}
		atomic_store_explicit(
			&s->stats.msgs_recv,
			atomic_load_explicit(&s->stats.msgs_recv, memory_order_relaxed) + n,
			memory_order_release);
	}
	return n;
}

unsigned
keel__mail_drain(struct keel_shard *s)
{
	unsigned n = 0;

	if (s->rt->mail_scan) {
		for (unsigned src = 0; src < s->rt->count; src++) {
			struct mbox *mb = s->inbox[src];

			if (atomic_load_explicit(&mb->tail, memory_order_relaxed) !=
			    s->in_head[src])
				n += drain_one(s, src);
		}
		return n;
	}

	for (unsigned w = 0; w < s->mail_words; w++) {
		uint64_t v;

		if (!atomic_load_explicit(&s->mail_bits[w], memory_order_relaxed))
			continue;
		v = atomic_exchange(&s->mail_bits[w], 0);
		atomic_thread_fence(memory_order_seq_cst);
		while (v) {
			unsigned src = w * 64 + (unsigned)__builtin_ctzll(v);
			v &= v - 1;
			n += drain_one(s, src);
		}
	}
	return n;
}

bool
keel__mail_pending(struct keel_shard *s)
{
	if (s->rt->mail_scan) {
		for (unsigned src = 0; src < s->rt->count; src++)
			if (atomic_load(&s->inbox[src]->tail) != s->in_head[src])
				return true;
		return false;
	}
	for (unsigned w = 0; w < s->mail_words; w++)
		if (atomic_load(&s->mail_bits[w]))
			return true;
	return false;
}

void
keel__mail_flush(struct keel_shard *s)
{
	struct keel_runtime *rt = s->rt;
	uint32_t cap = rt->opts.mailbox_entries;
	unsigned keep = 0;

	/* Counted before any of these messages is published, so no receiver can run one that
	 * is not yet counted as sent. */
	sent_count(s);
	s->flush_seq++;
	for (unsigned i = 0; i < s->ndirty; i++) {
		unsigned dst = s->dirty[i];
		struct outbox *o = &s->out[dst];
		struct mbox *mb = o->mb;

		/* Overflow first, in order, as far as the queue has room. */
		while (o->ovf_head && mbox_has_room(o, cap)) {
			struct ovf_node *n = o->ovf_head;
			mb->slots[o->tail_local & (cap - 1)] = n->m;
			o->tail_local++;
			o->ovf_head = n->next;
			if (!o->ovf_head)
				o->ovf_tail = NULL;
			o->ovf_n -= n->app;
			ovf_node_free(n);
			s->ovf_pending--;
		}
		if (o->wait_head)
			room_wake(s, o);
		if (o->tail_local != o->tail_pub) {
			struct keel_shard *t = &rt->shards[dst];
			_Atomic uint64_t *word = &t->mail_bits[s->id / 64];
			uint64_t bit = 1ULL << (s->id % 64);

			o->tail_pub = o->tail_local;
			atomic_store_explicit(&mb->tail, o->tail_local, memory_order_release);
			atomic_thread_fence(memory_order_seq_cst);
			o->last_flush = s->flush_seq;
			if (!rt->mail_scan &&
			    !(atomic_load_explicit(word, memory_order_relaxed) & bit))
				atomic_fetch_or(word, bit);
			if (t != s && atomic_load(&t->sleeping) && atomic_exchange(&t->sleeping, 0))
				keel__shard_wake(t, s);
		}
		if (o->ovf_head || o->wait_head)
			s->dirty[keep++] = dst;
		else
			o->dirty = false;
	}
	s->ndirty = keep;
}

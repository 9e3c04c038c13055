// SPDX-License-Identifier: MIT
/*
 * Buffers: headers, reference counts, the last put, and (KEEL_BUF_TRACE) the checks.
 *
 * Headers live in the shard's general arena, apart from the data, so a buffer's bytes are
 * exactly its size class and stay aligned. A header's generation is bumped when the buffer
 * is freed; slices carry the generation they were taken at, so a put through a stale slice
 * (a double put) is recognised even after the header was reused.
 *
 * A slot header (keel_buf_slot_create) is one its owner keeps across the uses of memory
 * it reuses, a provided-buffer ring's buffer: the last put of a use bumps the generation
 * and runs the release, and the header stays the owner's, so a receive costs no header
 * allocation and free (68 of the 712 user-space instructions keel spent per UDP datagram,
 * callgrind, docs/performance.md).
 */
#include <errno.h>
#include <string.h>

#include "alloc_internal.h"

#define HDR_BLOCK 64

static struct keel_buf *
hdr_get(struct keel_alloc *a)
{
	struct keel_buf *b = a->hdr_free;

	if (__builtin_expect(b == NULL, 0)) {
		/* A block of headers from the general allocator. Its first header is not handed
		 * out: it links the blocks (a->hdr_blocks), so the allocator frees them when it is
		 * destroyed, whether they came from a jemalloc arena or from the C library. */
		struct keel_buf *blk = keel_alloc_malloc(a, HDR_BLOCK * sizeof(*blk));
		if (!blk)
			return NULL;
		memset(blk, 0, HDR_BLOCK * sizeof(*blk));
		blk[0].u.next_free = a->hdr_blocks;
		a->hdr_blocks = blk;
		for (unsigned i = 1; i < HDR_BLOCK - 1; i++)
			blk[i].u.next_free = &blk[i + 1];
		b = &blk[1];
	}
	a->hdr_free = b->u.next_free;
	return b;
}

static inline void
hdr_put(struct keel_alloc *a, struct keel_buf *b)
{
	b->u.next_free = a->hdr_free;
	a->hdr_free = b;
}

static inline void
account_alloc(struct keel_alloc *a, uint32_t cap)
{
	uint64_t in_use = ASTAT_GET(a, bytes_in_use) + cap;

	atomic_store_explicit(&a->st.bytes_in_use, in_use, memory_order_relaxed);
	if (in_use > ASTAT_GET(a, bytes_peak))
		atomic_store_explicit(&a->st.bytes_peak, in_use, memory_order_relaxed);
	ASTAT_ADD(a, buffers_live, 1);
}

#ifdef KEEL_BUF_TRACE
static void
trace_link(struct keel_alloc *a, struct keel_buf *b, const char *file, int line)
{
	b->file = file;
	b->line = line;
	b->tprev = NULL;
	b->tnext = a->trace_live;
	if (a->trace_live)
		a->trace_live->tprev = b;
	a->trace_live = b;
}

static void
trace_unlink(struct keel_alloc *a, struct keel_buf *b)
{
	if (b->tprev)
		b->tprev->tnext = b->tnext;
	else
		a->trace_live = b->tnext;
	if (b->tnext)
		b->tnext->tprev = b->tprev;
	b->tprev = b->tnext = NULL;
}

/* The stale half of trace_check: true (reported) when @s's buffer was freed since @s was
 * taken, whatever its header holds now. */
static bool
trace_stale(const struct keel_slice *s, const char *what)
{
	struct keel_buf *b = s->buf;
	struct keel_alloc *cur = keel__alloc_cur;

	if (!b) { /* what a stale get gave back, used again: no buffer to count it on */
		keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
				"buf trace: %s of an empty slice (no buffer: a stale get's result, "
				"or a slice never allocated) on shard %d",
				what, cur ? (int)cur->cfg.shard : -1);
		return true;
	}
	if (s->gen_ != b->gen || b->refs == 0) {
		ASTAT_ADD_SHARED(b->home, trace_errors, 1);
		keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
				"buf trace: %s of a buffer already freed (double put) on shard %d; "
				"buffer allocated at %s:%d",
				what, cur ? (int)cur->cfg.shard : -1, b->file ? b->file : "?",
				b->line);
		return true;
	}
	return false;
}

/* Checks before a reference is taken or dropped. Returns true when the operation must be
 * skipped (the slice is stale: doing it would corrupt a reused buffer). */
static bool
trace_check(const struct keel_slice *s, const char *what)
{
	struct keel_buf *b = s->buf;
	struct keel_alloc *cur = keel__alloc_cur;

	if (trace_stale(s, what))
		return true;
	if (cur && b->holder != cur->cfg.shard) {
		ASTAT_ADD_SHARED(b->home, trace_errors, 1);
		keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
				"buf trace: %s on shard %u of a buffer held by shard %u (wrong "
				"shard: hand slices to another shard with keel_slice_export, or "
				"keel_slice_move when that shard takes every reference); "
				"buffer allocated at %s:%d",
				what, cur->cfg.shard, b->holder, b->file, b->line);
	}
	return false;
}
#endif

static inline void
slice_init(struct keel_slice *out, struct keel_buf *b, uint8_t *data, uint32_t len)
{
	out->data = data;
	out->len = len;
	out->gen_ = b->gen;
	out->buf = b;
}

int
keel_buf_alloc_at(struct keel_alloc *a, size_t len, struct keel_slice *out, const char *file,
		  int line)
{
	struct keel_buf *b;
	void *p;
	uint32_t cap;
	uint8_t cls = 0;
	int r;

	/* Every failure leaves *out empty, as keel_slice_export's do: a caller that puts or
	 * sends it anyway must not act on whatever the memory held before. */
	r = -EINVAL;
	if (len == 0)
		goto fail;
	r = -E2BIG;
	if (len > a->buf_max)
		goto fail;
	b = hdr_get(a);
	if (!b)
		goto nomem;
	if (a->backend == KEEL_ALLOC_BACKEND_SLAB) {
		p = keel__slab_alloc(a, len, &cls, &cap);
		b->kind = BUF_SLAB;
	} else {
		/* Page-aligned from 4 KiB, as the slab's are (O_DIRECT, docs/file.md):
		 * jemalloc starts a large allocation at a random cache line of its first
		 * page, and its 5 and 6 KiB classes are slab classes. */
		p = a->je->mallocx_fn(len, a->reg_flags | (len >= 4096 ? MALLOCX_ALIGN(4096) : 0));
		/* The size class jemalloc used: what the buffer really holds and accounts. */
		cap = p ? (uint32_t)a->je->sallocx_fn(p, a->reg_flags) : 0;
		b->kind = BUF_JEMALLOC;
	}
	if (!p) {
		hdr_put(a, b);
		goto nomem;
	}
	b->refs = 1;
	b->cap = cap;
	b->cls = cls;
	b->holder = (uint16_t)a->cfg.shard;
	b->data = p;
	b->home = a;
	account_alloc(a, cap);
#ifdef KEEL_BUF_TRACE
	trace_link(a, b, file, line);
#endif
	slice_init(out, b, p, (uint32_t)len);
	return 0;
nomem:
	ASTAT_ADD(a, alloc_failures, 1);
	r = -ENOMEM;
fail:
	memset(out, 0, sizeof(*out));
	return r;
}

/* A header for external memory (a wrap, or a slot made for uses to come), refs 0. */
static struct keel_buf *
ext_hdr(struct keel_alloc *a, void *data, uint32_t cap, keel_buf_release_fn release, void *arg,
	enum buf_kind kind)
{
	struct keel_buf *b = hdr_get(a);

	if (!b)
		return NULL;
	b->refs = 0;
	b->cap = cap;
	b->cls = 0;
	b->kind = kind;
	b->holder = (uint16_t)a->cfg.shard;
	b->data = data;
	b->home = a;
	b->u.ext.fn = release;
	b->u.ext.arg = arg;
	return b;
}

/* A use of external memory begins (a wrap, a slot's arm): its first reference, in *@out.
 * Not registered memory: counted apart from bytes_in_use and its peak, live from the first
 * reference to the last put. */
static inline void
ext_use(struct keel_buf *b, struct keel_slice *out, const char *file, int line)
{
	struct keel_alloc *a = b->home;

	b->refs = 1;
	ASTAT_ADD(a, ext_bytes_in_use, b->cap);
	ASTAT_ADD(a, ext_buffers_live, 1);
#ifdef KEEL_BUF_TRACE
	trace_link(a, b, file, line);
#else
	(void)file;
	(void)line;
#endif
	slice_init(out, b, b->data, b->cap);
}

int
keel_buf_wrap_at(struct keel_alloc *a, void *data, uint32_t cap, keel_buf_release_fn release,
		 void *arg, struct keel_slice *out, const char *file, int line)
{
	struct keel_buf *b;
	int r;

	/* A failure leaves *out empty, as keel_buf_alloc's do. */
	r = -EINVAL;
	if (!data || !cap || !release)
		goto fail;
	r = -ENOMEM;
	b = ext_hdr(a, data, cap, release, arg, BUF_EXTERNAL);
	if (!b)
		goto fail;
	ext_use(b, out, file, line);
	return 0;
fail:
	memset(out, 0, sizeof(*out));
	return r;
}

int
keel_buf_slot_create(struct keel_alloc *a, void *data, uint32_t cap, keel_buf_release_fn release,
		     void *arg, struct keel_buf **out)
{
	if (!data || !cap || !release)
		return -EINVAL;
	/* Everything a use does not change is set once, here. refs 0: no use is live. */
	*out = ext_hdr(a, data, cap, release, arg, BUF_SLOT);
	return *out ? 0 : -ENOMEM;
}

/* Misuse of a slot header: said, then abort, as alloc_verify does. Each would corrupt
 * memory if it ran on: a destroyed header is on its allocator's free list, where its link
 * overlays the release callback, and a second destroy links it to itself there (the next
 * allocations would share it); an arm off its home thread races the home's counts. */
static void __attribute__((noreturn, cold)) slot_misuse(const struct keel_buf *b, const char *what)
{
	struct keel_alloc *cur = keel__alloc_cur;

	if (b->kind == BUF_DEAD)
		keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
				"%s of a slot header already destroyed (keel_buf_slot_destroy gave "
				"it back to its allocator): destroy a header once, after its last "
				"use, and arm it no more",
				what);
	else
		keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
				"%s of a slot header of shard %u on %s %d: a slot is armed on "
				"its home shard only (hand its slices to another shard with "
				"keel_slice_export)",
				what, b->home->cfg.shard,
				cur ? "shard" : "a thread that is no shard,",
				cur ? (int)cur->cfg.shard : -1);
	abort();
}

void
keel_buf_slot_arm_at(struct keel_buf *b, struct keel_slice *out, const char *file, int line)
{
	struct keel_alloc *a = b->home;

	if (__builtin_expect(b->kind == BUF_DEAD, 0))
		slot_misuse(b, "keel_buf_slot_arm");
	/* On its home allocator's thread, as keel_buf_release: a use counts on the home. */
	if (__builtin_expect(a != keel__alloc_cur && a->cfg.send_home, 0))
		slot_misuse(b, "keel_buf_slot_arm");
	/* A use while the last one is live would hand its references a second owner. */
	alloc_verify(b->kind == BUF_SLOT && b->refs == 0);
	/* A use's holder may have moved (keel_slice_move); each use starts at home. */
	b->holder = (uint16_t)a->cfg.shard;
	ext_use(b, out, file, line); /* counted as a wrap is */
}

void
keel_buf_slot_destroy(struct keel_buf *b)
{
	if (__builtin_expect(b->kind == BUF_DEAD, 0))
		slot_misuse(b, "keel_buf_slot_destroy");
	alloc_verify(b->kind == BUF_SLOT && b->refs == 0);
	b->gen++;
	b->data = NULL;
	b->kind = BUF_DEAD;
	hdr_put(b->home, b);
}

/* The last put of a use of a slot header: everything of the header is done before the
 * release runs, which may destroy the header (the owner's teardown, once its last use is
 * back). The header stays its owner's; the bumped generation makes the use's slices stale. */
static void
release_slot(struct keel_buf *b)
{
	struct keel_alloc *a = b->home;

	ASTAT_SUB(a, ext_bytes_in_use, b->cap);
	ASTAT_SUB(a, ext_buffers_live, 1);
#ifdef KEEL_BUF_TRACE
	trace_unlink(a, b);
#endif
	b->gen++;
	b->u.ext.fn(b->data, b->cap, b->u.ext.arg);
}

static void release_foreign(struct keel_buf *b);

/* Free a buffer on its home shard. */
static void
release_local(struct keel_buf *b)
{
	struct keel_alloc *a = b->home;

	switch (b->kind) {
	case BUF_FOREIGN:
		release_foreign(b);
		return;
	case BUF_SLOT:
		release_slot(b);
		return;
	case BUF_SLAB:
		keel__slab_free(a, b->data, b->cls);
		break;
	case BUF_JEMALLOC:
		a->je->sdallocx_fn(b->data, b->cap, a->reg_flags);
		break;
	case BUF_EXTERNAL:
		b->u.ext.fn(b->data, b->cap, b->u.ext.arg);
		break;
	}
	if (b->kind == BUF_EXTERNAL) {
		ASTAT_SUB(a, ext_bytes_in_use, b->cap);
		ASTAT_SUB(a, ext_buffers_live, 1);
	} else {
		ASTAT_SUB(a, bytes_in_use, b->cap);
		ASTAT_SUB(a, buffers_live, 1);
	}
#ifdef KEEL_BUF_TRACE
	trace_unlink(a, b);
#endif
	b->gen++;
	b->data = NULL;
	hdr_put(a, b);
}

/* The last holder of a proxy is done (on the exporter, where the proxy was made): free the
 * header, then drop the reference the export kept, an ordinary local put here. That put
 * may in turn be the last of a proxy held here, and travel on to its own home. */
static void
release_foreign(struct keel_buf *b)
{
	struct keel_alloc *a = b->home;
	struct keel_slice orig = {
		.data = b->data,
		.len = b->cap,
		.gen_ = b->u.fwd.gen,
		.buf = b->u.fwd.buf,
	};

	ASTAT_SUB(a, exports_live, 1);
#ifdef KEEL_BUF_TRACE
	trace_unlink(a, b);
#endif
	b->gen++;
	b->data = NULL;
	hdr_put(a, b);
	keel_slice_put(&orig);
}

void
keel_buf_release(struct keel_buf *b)
{
	alloc_verify(b->refs == 0);
	/* On its home allocator's thread (a misrouted trip home would free it on another
	 * shard's, racing the owner), unless its allocator is single-threaded by contract. */
	alloc_verify(b->home == keel__alloc_cur || !b->home->cfg.send_home);
	/* Counted here, at home, not by the put that sent it: once the hook has handed it
	 * over, the home may be gone (another runtime's owner destroys it as soon as it is
	 * back), and a refused send is no return. Only the home's thread writes it (checked
	 * above), so it is no shared counter. */
	ASTAT_ADD(b->home, remote_returns, 1);
	release_local(b);
}

/* A buffer that could not go home stays referenced; reported at teardown too. Counted on
 * @cur, the putting shard's own allocator (only its thread touches it; the home's may be
 * gone), so "so far" is that shard's, not every shard's and runtime's in the process.
 * Rate-limited (a power-of-two count): this runs on the hot path. */
static void
leak_log(struct keel_alloc *cur, unsigned shard, int err)
{
	uint64_t k = ++cur->unsent;

	if (k & (k - 1))
		return;
	keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
			"a buffer of shard %u could not be sent home from shard %u (%s): leaked "
			"(%llu so far put on shard %u)",
			shard, cur->cfg.shard, strerror(-err), (unsigned long long)k,
			cur->cfg.shard);
}

static void
last_put(struct keel_buf *b)
{
	struct keel_alloc *home = b->home, *cur = keel__alloc_cur;
	unsigned shard;
	int r;

	/* Allocators without a send_home hook are single-threaded by contract. */
	if (__builtin_expect(home == cur || !home->cfg.send_home, 1)) {
		release_local(b);
		return;
	}
	if (!cur) {
		/* A thread that is no shard held a reference: refcounts are not atomic, so
		 * the count itself may already be wrong (documented misuse). */
		keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
				"last put of a buffer of shard %u on a thread that is not a shard: "
				"buffers may be held and put only on shards",
				home->cfg.shard);
		alloc_verify(cur != NULL);
	}
	/* Nothing of the home is touched once the hook has run: handed over, the buffer may
	 * be back and the home destroyed by its owner (another runtime's) at once; refused,
	 * the home runtime is stopping. keel_buf_release counts the return, at home. */
	shard = home->cfg.shard;
	r = home->cfg.send_home(home, b, home->cfg.ctx);
	if (r < 0)
		leak_log(cur, shard, r);
}

/* A slice with no buffer (what a refused call leaves: keel_buf_alloc's, keel_slice_sub's,
 * keel_slice_export's) used as if it held a reference: said, then abort, where the NULL
 * buffer would otherwise be read (a bare SIGSEGV). KEEL_BUF_TRACE reports it and goes on
 * (trace_stale). */
#ifndef KEEL_BUF_TRACE
static void __attribute__((noreturn, cold)) empty_slice(const char *what)
{
	struct keel_alloc *cur = keel__alloc_cur;

	keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
			"%s of an empty slice on shard %d: it holds no buffer (what a refused "
			"call leaves, or a slice never allocated); check the call's return "
			"before using its slice",
			what, cur ? (int)cur->cfg.shard : -1);
	abort();
}
#endif

void
keel_slice_put(struct keel_slice *s)
{
	struct keel_buf *b = s->buf;

#ifdef KEEL_BUF_TRACE
	if (!b) /* what a stale get handed out (reported there) */
		return;
	if (trace_check(s, "put"))
		return;
#else
	if (__builtin_expect(b == NULL, 0))
		empty_slice("keel_slice_put");
	/* A stale slice (a put after the last one, the header since reused by another
	 * buffer) would drop a reference of that other buffer: one compare on the line the
	 * count is on. */
	alloc_verify(s->gen_ == b->gen);
#endif
	alloc_verify(b->refs > 0);
	if (--b->refs == 0)
		last_put(b);
}

/* A new reference to @s's buffer in @out; @what names the caller in the empty slice's
 * message (keel_slice_get's and keel_slice_sub's one check). */
static inline void
slice_take(const struct keel_slice *s, struct keel_slice *out, const char *what)
{
	struct keel_buf *b = s->buf;

#ifdef KEEL_BUF_TRACE
	(void)what;
	if (trace_check(s, "get")) {
		memset(out, 0, sizeof(*out));
		return;
	}
#else
	if (__builtin_expect(b == NULL, 0))
		empty_slice(what);
	alloc_verify(s->gen_ == b->gen);
#endif
	alloc_verify(b->refs > 0 && b->refs < UINT32_MAX);
	b->refs++;
	*out = *s;
}

void
keel_slice_get(const struct keel_slice *s, struct keel_slice *out)
{
	slice_take(s, out, "keel_slice_get");
}

int
keel_slice_sub(const struct keel_slice *s, size_t off, size_t len, struct keel_slice *out)
{
	if (off > s->len || len > s->len - off) {
		memset(out, 0, sizeof(*out)); /* as every refusal of a slice (keel_buf_alloc) */
		return -ERANGE;
	}
	slice_take(s, out, "keel_slice_sub");
#ifdef KEEL_BUF_TRACE
	if (!out->buf) /* @s was stale: reported, no reference taken */
		return -ESTALE;
#endif
	out->data += off;
	out->len = (uint32_t)len;
	return 0;
}

void
keel_slice_move(const struct keel_slice *s, unsigned dst)
{
#ifdef KEEL_BUF_TRACE
	struct keel_alloc *cur = keel__alloc_cur;
	bool back;

	if (!s->buf) {
		trace_check(s, "move");
		return;
	}

	/* The exporter taking back a proxy it never sent (the message could not go): it is
	 * the proxy's home, so the proxy's puts are local again. Not a wrong-shard touch, but
	 * still checked for staleness: a proxy put and released since may have its header
	 * reused by the next export, held by another shard. */
	back = s->buf->kind == BUF_FOREIGN && cur && s->buf->home == cur && dst == cur->cfg.shard;
	if (back ? trace_stale(s, "move") : trace_check(s, "move"))
		return; /* stale: the header may hold another buffer now, whose holder stays */
#endif
	s->buf->holder = (uint16_t)dst;
}

int
keel_slice_export_at(const struct keel_slice *s, unsigned dst, struct keel_slice *out,
		     const char *file, int line)
{
	struct keel_alloc *a = keel__alloc_cur;
	struct keel_slice orig;
	struct keel_buf *b;
	int r;

	/* Every failure leaves *out empty: a caller that sends it anyway (or puts it) must
	 * not act on whatever the memory held before (a garbage buffer pointer). */
	r = -EPERM;
	if (!a)
		goto fail;
	if (dst == a->cfg.shard) {
		/* Staying here: an ordinary reference. */
		keel_slice_get(s, out);
		return out->buf ? 0 : -EINVAL;
	}
	/* Without the hook the proxy's last put could not come back here. */
	r = -EINVAL;
	if (!a->cfg.send_home)
		goto fail;
	r = -ENOMEM;
	b = hdr_get(a);
	if (!b)
		goto fail;
	/* The home-side reference, taken here on the holder: the only count of @s's buffer
	 * the export touches, and only this shard touches it. */
	keel_slice_get(s, &orig);
	if (!orig.buf) { /* KEEL_BUF_TRACE: a stale slice, reported */
		hdr_put(a, b);
		r = -EINVAL;
		goto fail;
	}
	b->refs = 1;
	b->cap = s->len;
	b->cls = 0;
	b->kind = BUF_FOREIGN;
	b->holder = (uint16_t)dst;
	b->data = s->data;
	b->home = a;
	b->u.fwd.buf = orig.buf;
	b->u.fwd.gen = orig.gen_;
	ASTAT_ADD(a, exports, 1);
	ASTAT_ADD(a, exports_live, 1);
#ifdef KEEL_BUF_TRACE
	trace_link(a, b, file, line);
#endif
	slice_init(out, b, s->data, s->len);
	return 0;
fail:
	memset(out, 0, sizeof(*out));
	return r;
}

int
keel_slice_copy_at(const struct keel_slice *s, struct keel_slice *out, const char *file, int line)
{
	struct keel_alloc *a = keel__alloc_cur;
	int r;

	if (!a) {
		memset(out, 0, sizeof(*out)); /* as keel_buf_alloc's refusals leave it */
		return -EPERM;
	}
	/* A buffer has at least one byte; an empty copy is an empty window on one. A refusal
	 * leaves *out empty. */
	r = keel_buf_alloc_at(a, s->len ? s->len : 1, out, file, line);
	if (r < 0)
		return r;
	memcpy(out->data, s->data, s->len);
	out->len = s->len;
	return 0;
}

bool
keel_buf_is_foreign(const struct keel_buf *b)
{
	return b->kind == BUF_FOREIGN;
}

unsigned
keel_slice_refs(const struct keel_slice *s)
{
#ifdef KEEL_BUF_TRACE
	if (!s->buf) /* a stale get's empty result */
		return 0;
#else
	if (__builtin_expect(s->buf == NULL, 0))
		empty_slice("keel_slice_refs");
#endif
	return s->buf->refs;
}

uint32_t
keel_buf_cap(const struct keel_buf *b)
{
	return b->cap;
}

void *
keel_buf_base(const struct keel_buf *b)
{
	return b->data;
}

struct keel_alloc *
keel_buf_home(const struct keel_buf *b)
{
	return b->home;
}

bool
keel_buf_is_external(const struct keel_buf *b)
{
	return b->kind == BUF_EXTERNAL || b->kind == BUF_SLOT;
}

/* At destroy: buffers still live are leaks. */
void
keel__buf_teardown(struct keel_alloc *a)
{
	/* Buffers and proxies apart: a proxy is a header whose kept reference holds a buffer
	 * (counted here when it is this shard's, on its home when it is a proxy itself), so one
	 * exported buffer whose proxy was never put is 1 buffer and 1 exported slice, not 2. */
	uint64_t live = ASTAT_GET(a, buffers_live) + ASTAT_GET(a, ext_buffers_live);
	uint64_t exports = ASTAT_GET(a, exports_live);

#ifdef KEEL_BUF_TRACE
	for (struct keel_buf *b = a->trace_live; b; b = b->tnext) {
		ASTAT_ADD_SHARED(a, trace_errors, 1);
		if (b->kind == BUF_FOREIGN)
			keel__alloc_log(
				KEEL_ALLOC_LOG_ERROR,
				"buf trace: leak on shard %u: slice of %u bytes exported to "
				"shard %u (%u references there) at %s:%d",
				a->cfg.shard, b->cap, b->holder, b->refs, b->file, b->line);
		else
			keel__alloc_log(KEEL_ALLOC_LOG_ERROR,
					"buf trace: leak on shard %u: buffer of %u bytes (%u "
					"references) allocated at %s:%d",
					a->cfg.shard, b->cap, b->refs, b->file, b->line);
	}
#endif
	if (live || exports)
		keel__alloc_log(
			KEEL_ALLOC_LOG_WARN,
			"shard %u: %llu buffers (%llu bytes of regions, %llu of external "
			"memory wrapped, which may lie in those regions) and %llu exported "
			"slices (proxies not yet put on the shard they went to) still "
			"referenced at teardown; build with -DKEEL_BUF_TRACE=ON to see where "
			"they were allocated",
			a->cfg.shard, (unsigned long long)live,
			(unsigned long long)ASTAT_GET(a, bytes_in_use),
			(unsigned long long)ASTAT_GET(a, ext_bytes_in_use),
			(unsigned long long)exports);
	/* The headers go with the allocator (a jemalloc arena would drop them too). */
	while (a->hdr_blocks) {
		struct keel_buf *next = a->hdr_blocks[0].u.next_free;

		keel_alloc_free(a, a->hdr_blocks);
		a->hdr_blocks = next;
	}
	a->hdr_free = NULL;
}

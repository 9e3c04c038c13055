/* SPDX-License-Identifier: MIT */
/*
 * Buffers and slices.
 *
 * A buffer (struct keel_buf, opaque) owns memory: a chunk of a shard's registered regions,
 * or external memory with a release callback (a provided-buffer ring's buffer). It
 * carries a reference count. A slice (struct keel_slice, a value type) is a window on a
 * buffer's bytes that holds exactly one reference:
 *   - keel_buf_alloc() returns a slice holding the first reference;
 *   - keel_slice_get() (+1) and keel_slice_sub() (+1, a sub-range; a slice of a slice
 *     shares the same buffer and count) return new slices;
 *   - keel_slice_put() drops one reference (-1); the last put returns the memory to its
 *     pool or calls the external release callback, never free().
 *
 * Refcounts are shard-local and not atomic: only the shard holding a buffer changes its
 * count. A buffer is often shared on its home shard (a receive buffer is held by its ring
 * while the kernel fills it, by a framer's partial frame and by the app's frames at once),
 * so one slice of it cannot simply move. Two ways across shards (docs/architecture.md,
 * "Ownership across shards"):
 *   - keel_slice_export() (zero copy, any slice): the holder keeps one reference for the
 *     export and hands out a slice of a proxy buffer whose count only the destination
 *     changes; the proxy's last put, wherever it happens, travels home as a message and
 *     drops the kept reference there (Seastar's foreign_ptr). The memory goes back to its
 *     pool or ring when the last holder anywhere is done.
 *   - keel_slice_copy(): a copy in the calling shard's memory (small frames: the receive
 *     buffer recycles at once).
 * keel_slice_move() hands over a buffer all of whose references go together (a buffer
 * the app allocated and nobody else holds); it is wrong for received slices.
 * A buffer whose last put happens away from its home shard is sent home (through the
 * allocator's send_home hook) and freed there.
 *
 * Every call below that makes a slice (alloc, wrap, sub, export, copy) leaves *out an empty
 * slice (no buffer, no bytes, no reference) when it fails: check the return before using
 * it; never put or send it. Its get, sub, refs or put aborts with a line saying so (with
 * KEEL_BUF_TRACE: is reported, and does nothing).
 *
 * Built with -DKEEL_BUF_TRACE=ON, each buffer records its allocation site and the shard
 * holding it; double puts, puts on the wrong shard and leaks at teardown are reported with
 * the allocation site (through the allocator's log hook) and counted in trace_errors. A
 * proxy records the shard it was exported to, so its holder's gets and puts are checked
 * like any buffer's, and a proxy never released is reported as a leak with the export site.
 */
#ifndef KEEL_BUF_H
#define KEEL_BUF_H

#include <keel/alloc.h>
#include <keel/common.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * A slice: @len bytes at @data, holding one reference to @buf. Read-only for users except
 * through the calls below; copy it only with keel_slice_get() (a plain struct copy does
 * not take a reference).
 */
struct keel_slice {
	uint8_t *data;
	uint32_t len;
	uint32_t gen_; /* private: the buffer's generation when the reference was taken */
	struct keel_buf *buf;
};
KEEL_STATIC_ASSERT(sizeof(struct keel_slice) == 24, "slice layout is pinned");
KEEL_STATIC_ASSERT(offsetof(struct keel_slice, buf) == 16, "slice layout is pinned");

/** The largest buffer keel_buf_alloc() returns with the default (slab) backend and region
 * size: the region size. keel_alloc_buf_max() gives an allocator's own limit. */
#define KEEL_BUF_MAX_DEFAULT KEEL_ALLOC_DEFAULT_REGION

/** Release callback of an external buffer: its memory is no longer referenced. */
typedef void (*keel_buf_release_fn)(void *data, uint32_t cap, void *arg);

/**
 * Allocate a buffer of at least @len bytes from @a's regions.
 * Ownership: *out holds the only reference; put it with keel_slice_put().
 * Returns: 0; -EINVAL for @len 0; -E2BIG past keel_alloc_buf_max(@a) (the region size, or
 * 7/8 of it with the jemalloc backend); -ENOMEM when the cap
 * (--memory) is reached (the caller decides what to do; nothing is killed). On every failure
 * *out is an empty slice and holds no reference.
 * Context: @a's shard.
 */
#define keel_buf_alloc(a, len, out) keel_buf_alloc_at((a), (len), (out), __FILE__, __LINE__)
KEEL_API int keel_buf_alloc_at(struct keel_alloc *a, size_t len, struct keel_slice *out,
			       const char *file, int line);

/**
 * Wrap external memory (a provided-buffer ring's buffer, say) as a buffer of @a: the last
 * put calls @release(@data, @cap, @arg) on @a's shard.
 * Returns: 0, -EINVAL, or -ENOMEM (no header); on failure *out is an empty slice and
 * @release is not called.
 * Context: @a's shard.
 */
#define keel_buf_wrap(a, data, cap, release, arg, out) \
	keel_buf_wrap_at((a), (data), (cap), (release), (arg), (out), __FILE__, __LINE__)
KEEL_API int keel_buf_wrap_at(struct keel_alloc *a, void *data, uint32_t cap,
			      keel_buf_release_fn release, void *arg, struct keel_slice *out,
			      const char *file, int line);

/**
 * Take another reference (+1): *out is a slice of the same bytes. With KEEL_BUF_TRACE, a
 * stale @s is reported and *out is an empty slice (no buffer; its put does nothing).
 * Context: the shard holding @s's buffer.
 */
KEEL_API void keel_slice_get(const struct keel_slice *s, struct keel_slice *out);

/**
 * Take another reference (+1) on a sub-range: *out covers @len bytes from @off of @s.
 * Returns: 0, or -ERANGE when the range is not inside @s (no reference taken); with
 * KEEL_BUF_TRACE, -ESTALE when @s is stale (reported). On either failure *out is an empty
 * slice, so @out must not be @s or a slice still to be put.
 * Context: the shard holding @s's buffer.
 */
KEEL_API int keel_slice_sub(const struct keel_slice *s, size_t off, size_t len,
			    struct keel_slice *out);

/**
 * Drop @s's reference (-1). The last put returns the memory to its pool (or to its
 * external owner); on a shard that is not the buffer's home, it is sent home first.
 * Consumes: @s's reference; *s must not be used again.
 * Context: the shard holding the buffer (with the runtime: a shard thread; a last put on
 * a thread that is not a shard, one with an allocator of its own bound included, is
 * misuse and aborts, since the count is not atomic). A
 * refcount underflow, or a put through a stale
 * slice (its buffer was freed already, even if the header now holds another buffer),
 * aborts (keel_verify); with KEEL_BUF_TRACE both are reported and the put is skipped.
 */
KEEL_API void keel_slice_put(struct keel_slice *s);

/**
 * Declare that every reference to @s's buffer now belongs to shard @dst; call it just
 * before sending the slice(s) to @dst in a cross-shard message. Only for a buffer none of
 * whose references stay behind (received slices share their buffer with the ring and
 * the framer: export those). A buffer with exports outstanding cannot move either (the
 * exports' references stay here). The shard that exported a proxy slice and could not send
 * it takes it back with keel_slice_move(proxy, this shard) before putting it.
 * Context: the shard holding the buffer (for a proxy not sent, its exporter).
 */
KEEL_API void keel_slice_move(const struct keel_slice *s, unsigned dst);

/**
 * Export @s to shard @dst without copying: *out is a slice of the same bytes, to send to
 * @dst in a cross-shard message (keel_send). This shard takes one reference on @s's buffer
 * and keeps it on @dst's behalf; *out holds the one reference of a proxy buffer (a header
 * from this shard's allocator) whose count only the shard holding it changes. On @dst,
 * *out is an ordinary slice: keel_slice_get/sub/put there are local and free of atomics,
 * it can be sent on a connection, exported onward (a proxy of the proxy) or exported back
 * here. When the proxy's last reference is put, on whatever shard, the proxy travels
 * home (the send_home hook: one cross-shard message) and the kept reference is put here;
 * the memory goes back to its pool or provided-buffer ring when that was the last one.
 * Ownership: @s is borrowed (the caller still holds its reference); *out holds a new
 * reference that belongs to @dst once sent. The memory must stay readable: @s's bytes are
 * not to be written while exported (nothing keel does writes into a received buffer).
 * Context: the shard holding @s's buffer, with an allocator bound to the thread (a shard).
 * Returns: 0; -ENOMEM (no proxy header; nothing taken); -EPERM on a thread without an
 * allocator; -EINVAL when the allocator has no send_home hook (single-threaded use, no
 * runtime) or, with KEEL_BUF_TRACE, @s is stale (reported). @dst equal to this shard is an
 * ordinary keel_slice_get(). On every failure *out is an empty slice (no buffer, no bytes)
 * and holds no reference: check the return before sending it; do not put it.
 */
#define keel_slice_export(s, dst, out) keel_slice_export_at((s), (dst), (out), __FILE__, __LINE__)
KEEL_API int keel_slice_export_at(const struct keel_slice *s, unsigned dst, struct keel_slice *out,
				  const char *file, int line);

/**
 * Copy @s's bytes into a new buffer of the calling shard's allocator. For small frames
 * this beats an export: copy on the home shard and put the received slice, so the receive
 * buffer goes back to its ring at once, then hand the copy over with keel_slice_move()
 * (its only reference); or, on the destination, copy an exported slice into local memory
 * and put the proxy early.
 * Ownership: @s is borrowed (still the caller's); *out holds the only reference of the
 * copy, with @s->len bytes (a zero-length copy is an empty window on a one-byte buffer).
 * Context: a shard that holds @s (or may read it: it holds an export of it).
 * Returns: 0; -EPERM on a thread without an allocator; as keel_buf_alloc() (-ENOMEM,
 * -E2BIG). On every failure *out is an empty slice and holds no reference.
 */
#define keel_slice_copy(s, out) keel_slice_copy_at((s), (out), __FILE__, __LINE__)
KEEL_API int keel_slice_copy_at(const struct keel_slice *s, struct keel_slice *out,
				const char *file, int line);

/** Current reference count of @s's buffer. Context: the shard holding it. */
KEEL_API unsigned keel_slice_refs(const struct keel_slice *s);

/** Capacity of @s's buffer (its size class: at least what was asked). */
KEEL_API uint32_t keel_buf_cap(const struct keel_buf *b);

/** Start of @b's memory. */
KEEL_API void *keel_buf_base(const struct keel_buf *b);

/** The allocator @b belongs to (its home shard's). */
KEEL_API struct keel_alloc *keel_buf_home(const struct keel_buf *b);

/** True when @b's memory is external (keel_buf_wrap), not from the regions. */
KEEL_API bool keel_buf_is_external(const struct keel_buf *b);

/**
 * True when @b is a proxy made by keel_slice_export(): keel_buf_home() is the exporter,
 * keel_buf_base() and keel_buf_cap() are the exported window.
 */
KEEL_API bool keel_buf_is_foreign(const struct keel_buf *b);

#ifdef __cplusplus
}
#endif

#endif

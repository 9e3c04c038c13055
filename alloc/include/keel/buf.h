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
 * Refcounts are shard-local and not atomic: all references of a buffer are held on one
 * shard at a time. To hand a buffer to another shard, call keel_slice_move() and send the
 * slice(s) inside a cross-shard message; the receiver then owns those references. A
 * buffer whose last put happens away from its home shard is sent home (through the
 * allocator's send_home hook) and freed there.
 *
 * Built with -DKEEL_BUF_TRACE=ON, each buffer records its allocation site and the shard
 * holding it; double puts, puts on the wrong shard and leaks at teardown are reported with
 * the allocation site (through the allocator's log hook) and counted in trace_errors.
 */
#ifndef KEEL_BUF_H
#define KEEL_BUF_H

#include <keel/alloc.h>
#include <keel/common.h>
#include <stddef.h>
#include <stdint.h>

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
_Static_assert(sizeof(struct keel_slice) == 24, "slice layout is pinned");
_Static_assert(offsetof(struct keel_slice, buf) == 16, "slice layout is pinned");

/** The largest buffer keel_buf_alloc() returns: the region size. */
#define KEEL_BUF_MAX_DEFAULT KEEL_ALLOC_DEFAULT_REGION

/** Release callback of an external buffer: its memory is no longer referenced. */
typedef void (*keel_buf_release_fn)(void *data, uint32_t cap, void *arg);

/**
 * Allocate a buffer of at least @len bytes from @a's regions.
 * Ownership: *out holds the only reference; put it with keel_slice_put().
 * Returns: 0; -EINVAL for @len 0; -E2BIG past the region size; -ENOMEM when the cap
 * (--memory) is reached (the caller decides what to do; nothing is killed).
 * Context: @a's shard.
 */
#define keel_buf_alloc(a, len, out) keel_buf_alloc_at((a), (len), (out), __FILE__, __LINE__)
KEEL_API int keel_buf_alloc_at(struct keel_alloc *a, size_t len, struct keel_slice *out,
			       const char *file, int line);

/**
 * Wrap external memory (a provided-buffer ring's buffer, say) as a buffer of @a: the last
 * put calls @release(@data, @cap, @arg) on @a's shard.
 * Returns: 0, -EINVAL, or -ENOMEM (no header).
 * Context: @a's shard.
 */
#define keel_buf_wrap(a, data, cap, release, arg, out) \
	keel_buf_wrap_at((a), (data), (cap), (release), (arg), (out), __FILE__, __LINE__)
KEEL_API int keel_buf_wrap_at(struct keel_alloc *a, void *data, uint32_t cap,
			      keel_buf_release_fn release, void *arg, struct keel_slice *out,
			      const char *file, int line);

/**
 * Take another reference (+1): *out is a slice of the same bytes.
 * Context: the shard holding @s's buffer.
 */
KEEL_API void keel_slice_get(const struct keel_slice *s, struct keel_slice *out);

/**
 * Take another reference (+1) on a sub-range: *out covers @len bytes from @off of @s.
 * Returns: 0, or -ERANGE when the range is not inside @s (no reference taken).
 * Context: the shard holding @s's buffer.
 */
KEEL_API int keel_slice_sub(const struct keel_slice *s, size_t off, size_t len,
			    struct keel_slice *out);

/**
 * Drop @s's reference (-1). The last put returns the memory to its pool (or to its
 * external owner); on a shard that is not the buffer's home, it is sent home first.
 * Consumes: @s's reference; *s must not be used again.
 * Context: the shard holding the buffer. A refcount underflow aborts (keel_verify).
 */
KEEL_API void keel_slice_put(struct keel_slice *s);

/**
 * Declare that every reference to @s's buffer now belongs to shard @dst; call it just
 * before sending the slice(s) to @dst in a cross-shard message.
 * Context: the shard holding the buffer.
 */
KEEL_API void keel_slice_move(const struct keel_slice *s, unsigned dst);

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
 * Return @b, whose count reached zero on another shard, to its pool.
 * Context: @b's home shard; the runtime's send_home hook calls it there.
 */
KEEL_API void keel_buf_release(struct keel_buf *b);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * The allocator's side of a runtime: what code that runs keel allocators itself calls.
 * keel's runtime (core/bufreg.c) does all of this for every shard, so a program using
 * keel_runtime_* never calls these; keel/keel.h does not include this header. It is for
 * code that drives keel_alloc without keel's runtime (the allocator's tests, a host with
 * its own threads): bind the allocator to the thread that owns it, run the grow hook's
 * work, bring buffers put elsewhere home, and account registered regions.
 */
#ifndef KEEL_ALLOC_RUNTIME_H
#define KEEL_ALLOC_RUNTIME_H

#include <keel/alloc.h>
#include <keel/buf.h>
#include <keel/common.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Make @a the calling thread's allocator (NULL: none). Puts compare a buffer's home with
 * it to decide whether the buffer is freed here or sent home.
 * Context: the thread; the runtime binds each shard's allocator on its shard.
 */
KEEL_API void keel_alloc_bind_thread(struct keel_alloc *a);

/**
 * Pre-fault the next region ahead of need: one region per call (bounded time), when fewer
 * than the low-water mark (2 regions) are pre-faulted ahead of the pool. Asks the grow
 * hook again when still below it. A failure is logged once and not retried.
 * Returns: 1 when a region was pre-faulted, 0 when none was needed, -errno on failure.
 * Context: @a's shard, off the hot path (the grow hook schedules it).
 */
KEEL_API int keel_alloc_grow(struct keel_alloc *a);

/**
 * Record that region @idx is (@on) or is no longer registered with a ring, for stats.
 * Context: @a's shard.
 */
KEEL_API void keel_alloc_region_set_registered(struct keel_alloc *a, unsigned idx, bool on);

/**
 * Return @b, whose count reached zero on another shard, to its pool (a proxy: put the
 * reference its export kept).
 * Context: @b's home shard; the runtime's send_home hook calls it there.
 */
KEEL_API void keel_buf_release(struct keel_buf *b);

/**
 * Make a header for external memory used again and again (a provided-buffer ring's
 * buffer): each use is what keel_buf_wrap() makes, a buffer whose last put calls
 * @release(@data, @cap, @arg) on @a's shard, but the header outlives the use, so a use
 * costs no header allocation. Its generation changes between uses: a slice of an earlier
 * use is stale (its put aborts, or with KEEL_BUF_TRACE is reported), as a slice of a freed
 * buffer is. A use counts in ext_bytes_in_use and ext_buffers_live, as a wrap does, and
 * keel_buf_is_external() is true of it.
 * Ownership: *out is the caller's until keel_buf_slot_destroy(); no use is live yet.
 * Returns: 0, -EINVAL, or -ENOMEM (no header).
 * Context: @a's shard.
 */
KEEL_API int keel_buf_slot_create(struct keel_alloc *a, void *data, uint32_t cap,
				  keel_buf_release_fn release, void *arg, struct keel_buf **out);

/**
 * Start a use of slot header @b: *out is a slice of all of its memory holding the use's
 * first reference. A use while the last one is live (a reference not yet put), an arm
 * after keel_buf_slot_destroy(@b), and one off @b's home shard abort (said first).
 * Ownership: *out's reference, put with keel_slice_put(); the last put ends the use (its
 * release runs, and may destroy @b).
 * Context: @b's home shard.
 */
#define keel_buf_slot_arm(b, out) keel_buf_slot_arm_at((b), (out), __FILE__, __LINE__)
KEEL_API void keel_buf_slot_arm_at(struct keel_buf *b, struct keel_slice *out, const char *file,
				   int line);

/**
 * Give slot header @b back to its allocator. No use may be live, and @b is destroyed once
 * (aborts otherwise; a second destroy is said first).
 * Context: @b's home shard.
 */
KEEL_API void keel_buf_slot_destroy(struct keel_buf *b);

#ifdef __cplusplus
}
#endif

#endif

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

#ifdef __cplusplus
}
#endif

#endif

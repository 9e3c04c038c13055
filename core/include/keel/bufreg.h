/* SPDX-License-Identifier: MIT */
/*
 * Buffers on the shard's ring: each shard's allocator regions are the ring's fixed
 * buffers (a sparse table, slot i = region i), registered lazily the first time a buffer
 * of a region is used for I/O. So any buffer of this shard can be sent with SEND_ZC +
 * IORING_RECVSEND_FIXED_BUF, and its (index, offset) is O(1).
 *
 * When registration is unavailable (the reg_buffers feature off, or RLIMIT_MEMLOCK too low
 * without CAP_IPC_LOCK), the shard runs with unregistered buffers: keel_buf_fixed() says
 * so and keel_prep_send_buf() prepares a plain send.
 */
#ifndef KEEL_BUFREG_H
#define KEEL_BUFREG_H

#include <keel/alloc.h>
#include <keel/buf.h>
#include <keel/common.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * This shard's allocator (regions, buffers, general arena).
 * Returns: the allocator, owned by the shard until it ends.
 * Context: a shard.
 */
KEEL_API struct keel_alloc *keel_shard_alloc(void);

/**
 * Shard-local memory: from malloc by default; from this shard's own jemalloc arena and
 * tcache (no contention with other shards) where the program called
 * keel_jemalloc_enable() (keel/jemalloc.h) first. For objects created and freed on one
 * shard (keel's own mailbox overflow nodes, broadcast records and deferred-callback vectors
 * use it).
 * Returns: the memory, or NULL.
 * Ownership: free it with keel_shard_free() on this shard, before the runtime ends (the
 * arena is destroyed with the shard); never with free().
 * Context: a shard.
 */
KEEL_API void *keel_shard_malloc(size_t size);

/**
 * Resize memory from keel_shard_malloc() (@p NULL: allocate).
 * Returns: the memory (@p is then invalid), or NULL (@p is untouched).
 * Context: the shard that allocated @p.
 */
KEEL_API void *keel_shard_realloc(void *p, size_t size);

/**
 * Free memory from keel_shard_malloc() or keel_shard_realloc() (NULL: nothing).
 * Context: the shard that allocated @p.
 */
KEEL_API void keel_shard_free(void *p);

/**
 * The fixed buffer of @s on this shard's ring: *index is the slot, *offset the distance of
 * s->data from the slot's base. The slot is registered on first use (one region, bounded
 * time); later calls are O(1).
 * Returns: 0; -EXDEV for a buffer of another shard (its region is in that shard's table:
 * send it plain); -ENOENT for external memory (keel_buf_wrap); -EOPNOTSUPP when this shard
 * runs with unregistered buffers; -ENOMEM when this region could not be registered (any
 * cause, logged with it; mostly RLIMIT_MEMLOCK, mid-run: the kernel counts pinned pages
 * per user, so the start-up check with --feature reg_buffers=on is arithmetic only; logged
 * once per runtime with the total pinned, the amount needed and the fix); -ERANGE past the
 * table.
 * Context: a shard, holding @s.
 */
KEEL_API int keel_buf_fixed(const struct keel_slice *s, unsigned *index, uint64_t *offset);

/**
 * True when this shard registers its regions with its ring and none has failed to register
 * so far: false after a mid-run RLIMIT_MEMLOCK failure (buffers of regions registered
 * earlier still send fixed; keel_buf_fixed() answers per buffer).
 * Context: a shard.
 */
KEEL_API bool keel_shard_bufs_registered(void);

#ifdef __cplusplus
}
#endif

#endif

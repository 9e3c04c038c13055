/* SPDX-License-Identifier: MIT */
/*
 * Opt-in jemalloc arenas for keel's shards (library keel_jemalloc: pkg-config
 * keel-jemalloc, CMake keel::jemalloc).
 *
 * By default keel leaves the process's malloc alone: keel_alloc does not link jemalloc,
 * and shard-local objects (keel_shard_malloc, core's message overflow nodes) come from
 * malloc. A program that links keel_jemalloc and calls keel_jemalloc_enable() gets one
 * jemalloc arena with its own tcache per shard instead, and may use
 * KEEL_ALLOC_BACKEND_JEMALLOC for buffers.
 *
 * The cost of opting in with Debian's jemalloc (built without a symbol prefix): linking
 * it replaces malloc, free and friends for the whole process, the host's code included
 * (docs/embedding.md lists what that changes, and what each choice costs).
 */
#ifndef KEEL_JEMALLOC_H
#define KEEL_JEMALLOC_H

#include <keel/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Use jemalloc for every keel allocator created after this call: a general arena per
 * shard (keel_alloc_malloc, keel_shard_malloc) and, where asked, the jemalloc buffer
 * backend. Allocators created before keep what they had.
 * Returns: 0.
 * Context: any thread, before keel_runtime_create() (or keel_alloc_create()); calling it
 * again is harmless.
 */
KEEL_API int keel_jemalloc_enable(void);

#ifdef __cplusplus
}
#endif

#endif

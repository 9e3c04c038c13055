/* SPDX-License-Identifier: MIT */
/*
 * Keyed hashing, for a shard app's tables and for choosing which shard owns a key.
 *
 * A table or a key-to-shard map hashed with a function anyone can compute lets a client
 * choose keys that share a hash: one bucket, or one shard, takes them all, and every insert
 * and lookup walks all of them (hash flooding, a denial of service). keel_hash is
 * SipHash-1-3 (the variant Redis keys its tables with) under a 128-bit key: without the
 * key no one can tell which keys collide. Draw the key once per process with
 * keel_hash_key_random() and keep it for the process's life (a table's hashes are only
 * comparable under one key). It is not a message authentication code, nor meant for data
 * on disk, where a fixed function must read it back.
 */
#ifndef KEEL_HASH_H
#define KEEL_HASH_H

#include <keel/common.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A 128-bit key for keel_hash(). */
struct keel_hash_key {
	uint64_t k[2];
};

/**
 * Fill @key from the kernel's random source (getrandom(2)).
 * Returns: 0, or -errno (-ENOSYS before Linux 3.17; it does not block once the kernel's
 * pool is initialised, which is at boot).
 * Context: any thread.
 */
KEEL_API int keel_hash_key_random(struct keel_hash_key *key);

/**
 * SipHash-1-3 of the @n bytes at @data under @key: the same 64 bits for the same bytes and
 * key, on every architecture (the input is read as little-endian words).
 * Context: any thread; about 10 ns for a 16-byte key on a current x86 core.
 */
KEEL_API uint64_t keel_hash(const struct keel_hash_key *key, const void *data, size_t n);

#ifdef __cplusplus
}
#endif

#endif

/* SPDX-License-Identifier: MIT */
/*
 * keel-kv append-only file records, checked without the server (pure functions over
 * bytes: the unit tests and a fuzzer drive them directly). docs/kv.md, "Persistence".
 */
#ifndef KEEL_KV_AOFREC_H
#define KEEL_KV_AOFREC_H

#include <stddef.h>
#include <stdint.h>

#include "resp.h"

/**
 * Is @argv[0..@argc) a record keel-kv writes: SET k v, SET k v PXAT ms (ms > 0), DEL k?
 * Returns: 0 with *pxat the expiry (0: none); -EINVAL otherwise.
 */
int kv_record_check(const struct resp_arg *argv, unsigned argc, int64_t *pxat);

/**
 * The length of the longest prefix of @p[0..@n) made of whole, valid records (RESP arrays
 * of bulk strings that kv_record_check accepts). What follows it is a torn or invalid tail.
 */
size_t kv_aof_valid_prefix(const uint8_t *p, size_t n);

#endif

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
 * of bulk strings that kv_record_check accepts) and whole transactions: MULTI, such
 * records, EXEC (one-word arrays, as Redis writes them; not nested). A transaction the
 * bytes end inside is left out from its MULTI on. What follows it, kv_aof_check says.
 */
size_t kv_aof_valid_prefix(const uint8_t *p, size_t n);

/** What follows the valid prefix of an append-only file. */
enum kv_aof_tail {
	KV_AOF_CLEAN,   /* nothing: the file is whole, valid records */
	KV_AOF_TORN,    /* the last record cut short, as a crash mid-write leaves it, or the
			 * transaction the file ends inside, from its MULTI on */
	KV_AOF_CORRUPT, /* a record that does not parse with more than a torn tail after it */
	KV_AOF_UNSURE,  /* a record that runs past the end with a whole record inside it: a
			 * damaged length, or a torn last record whose value holds a record */
};

/**
 * Check the bytes of an append-only file, @p[0..@n): *@good gets the valid prefix
 * (kv_aof_valid_prefix) and the result says what follows it. A crash cuts only the last
 * record a write was making, so the rest is torn when, leaving aside NUL bytes that run
 * to the end (a crash may leave a file's new length with zeros where its data had not
 * reached the disk), it is empty or the beginning of one record whose declared lengths
 * run past the end, and no whole valid record starts anywhere inside it (a damaged length
 * in the middle of a file also runs past the end, swallowing the records after it, which
 * are still there whole). Such a record with a whole record starting inside it is UNSURE:
 * damage, or a torn last record whose value holds a record's bytes (values are a client's
 * bytes: no rule over the bytes tells the two apart). Anything else is CORRUPT: damage
 * inside the file, or a record of a newer version. A rest that starts with a MULTI is read
 * the same after its MULTI and the whole records that follow it (a MULTI among them, or an
 * EXEC outside a transaction, is damage): torn, the file ends inside that transaction, and
 * *@good is its MULTI, so that none of it is applied. docs/kv.md, "Start", states the rule.
 */
enum kv_aof_tail kv_aof_check(const uint8_t *p, size_t n, size_t *good);

/**
 * The reader of kv_aof_check_file: @len bytes of the file at @off into @buf.
 * Returns: 0, or -errno (a short read is one: the file changed).
 */
typedef int (*kv_aof_read_fn)(void *ctx, uint64_t off, uint8_t *buf, size_t len);

/**
 * kv_aof_check of a file of @size bytes read through @rd (with @ctx), with at most @window
 * bytes of it and a line's most (RESP_INLINE_MAX) in memory at once, whatever the size of
 * the file, of a record or of the damage: the same verdict in *@tail and the same *@good
 * as kv_aof_check of the same bytes whole. A record larger than the window, a bad one or
 * one that runs past the end of the file, is read by its lines (what the request parser
 * looks at; it skips a value unread), never whole. Each byte of the file is read about
 * once for the valid records, once more from the bad record on.
 * Returns: 0 with *@tail and *@good; -ENOMEM; or the reader's -errno.
 */
int kv_aof_check_file(kv_aof_read_fn rd, void *ctx, uint64_t size, size_t window,
		      enum kv_aof_tail *tail, uint64_t *good);

#endif

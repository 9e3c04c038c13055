// SPDX-License-Identifier: MIT
/* keel-kv append-only file records: see aofrec.h. */
#include "aofrec.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static int
word(const struct resp_arg *a, const char *w)
{
	size_t n = strlen(w);

	return a->len == n && !memcmp(a->p, w, n);
}

/* A positive decimal integer that fits an int64_t (no sign, no leading zero). */
static int
pos_int(const struct resp_arg *a, int64_t *out)
{
	int64_t v = 0;

	if (!a->len || a->len > 19 || a->p[0] == '0')
		return -EINVAL;
	for (size_t i = 0; i < a->len; i++) {
		if (a->p[i] < '0' || a->p[i] > '9')
			return -EINVAL;
		if (v > (INT64_MAX - (a->p[i] - '0')) / 10)
			return -EINVAL;
		v = v * 10 + (a->p[i] - '0');
	}
	*out = v;
	return 0;
}

int
kv_record_check(const struct resp_arg *argv, unsigned argc, int64_t *pxat)
{
	*pxat = 0;
	if (argc == 2 && word(&argv[0], "DEL"))
		return 0;
	if (!(argc == 3 || argc == 5) || !word(&argv[0], "SET"))
		return -EINVAL;
	if (argv[1].len > UINT32_MAX || argv[2].len > UINT32_MAX)
		return -EINVAL;
	if (argc == 5 && (!word(&argv[3], "PXAT") || pos_int(&argv[4], pxat) < 0))
		return -EINVAL;
	return 0;
}

/* Whether the @r bytes at @p are exactly what keel-kv writes for @argv: "*N\r\n", then
 * "$LEN\r\n" DATA "\r\n" per argument, with nothing else. The request parser is lenient,
 * as Redis's: it takes any two bytes after a bulk, and any byte after a line's '\r', for
 * the line ends. Here that would let a record whose tail never reached the disk (zeros
 * where the file's length got ahead of its data, from inside the value on) load as whole,
 * with zeros in the value; strict, it reads as torn and is cut. */
static bool
written_form(const uint8_t *p, size_t r, const struct resp_arg *argv, unsigned argc)
{
	char h[32];
	size_t off = 0;
	int k = snprintf(h, sizeof(h), "*%u\r\n", argc);

	if (r < (size_t)k || memcmp(p, h, (size_t)k))
		return false;
	off = (size_t)k;
	for (unsigned i = 0; i < argc; i++) {
		k = snprintf(h, sizeof(h), "$%zu\r\n", argv[i].len);
		if (r - off < (size_t)k || memcmp(p + off, h, (size_t)k) ||
		    argv[i].p != p + off + (size_t)k)
			return false;
		off += (size_t)k + argv[i].len;
		if (r - off < 2 || p[off] != '\r' || p[off + 1] != '\n')
			return false;
		off += 2;
	}
	return off == r;
}

/* The record at the start of @p[0..@n): its length when it is whole and valid, 0 when it
 * needs bytes past @n, -1 when it is not a record keel-kv writes. */
static long
one_record(const uint8_t *p, size_t n)
{
	struct resp_arg argv[8];
	struct resp_req req = { .argv = argv, .cap = 8, .max_bulk = UINT64_MAX >> 1 };
	int64_t at;
	long r;

	if (!n || p[0] != '*') /* records are arrays: no inline commands */
		return n ? -1 : 0;
	r = resp_parse(p, n, &req);
	if (r == RESP_MORE)
		return 0;
	if (r < 0 || kv_record_check(req.argv, req.argc, &at) < 0 ||
	    !written_form(p, (size_t)r, req.argv, req.argc))
		return -1;
	return r;
}

size_t
kv_aof_valid_prefix(const uint8_t *p, size_t n)
{
	size_t off = 0;
	long r;

	while ((r = one_record(p + off, n - off)) > 0)
		off += (size_t)r;
	return off;
}

/* Whether a record keel-kv writes may start at @p[0..@n): its fixed head. Tested before a
 * parse in the search below, which would otherwise read to the end of the bytes from
 * every '*' of a long value made of them (a count line is looked for with memchr). */
static bool
record_head(const uint8_t *p, size_t n)
{
	return n >= 13 &&
	       (!memcmp(p, "*2\r\n$3\r\nDEL\r\n", 13) ||
		((p[1] == '3' || p[1] == '5') && !memcmp(p + 2, "\r\n$3\r\nSET\r\n", 11)));
}

enum kv_aof_tail
kv_aof_check(const uint8_t *p, size_t n, size_t *good)
{
	size_t off = kv_aof_valid_prefix(p, n), end = n;

	*good = off;
	if (off == n)
		return KV_AOF_CLEAN;
	while (end > off && !p[end - 1])
		end--;
	if (end == off)
		return KV_AOF_TORN;
	if (one_record(p + off, end - off) != 0)
		return KV_AOF_CORRUPT;
	/* A whole record inside what runs past the end: a damaged length that swallows the
	 * records after it, or a torn last record whose value holds a record's bytes (a value
	 * is any bytes a client sent). The bytes cannot tell them apart, whatever follows the
	 * record found: so it is neither cut as torn nor called damage. */
	for (const uint8_t *q = p + off + 1; (q = memchr(q, '*', (size_t)(p + end - q))); q++)
		if (record_head(q, (size_t)(p + end - q)) &&
		    one_record(q, (size_t)(p + end - q)) > 0)
			return KV_AOF_UNSURE;
	return KV_AOF_TORN;
}

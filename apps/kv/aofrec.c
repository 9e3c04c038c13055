// SPDX-License-Identifier: MIT
/* keel-kv append-only file records: see aofrec.h. */
#include "aofrec.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
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

/* What a record is: one of the table's (kv_record_check), or a transaction's marker. */
enum kind { K_BAD = -1, K_DATA, K_MULTI, K_EXEC };

static enum kind
kind_of(const struct resp_arg *argv, unsigned argc)
{
	int64_t at;

	if (argc == 1 && word(&argv[0], "MULTI"))
		return K_MULTI;
	if (argc == 1 && word(&argv[0], "EXEC"))
		return K_EXEC;
	return kv_record_check(argv, argc, &at) < 0 ? K_BAD : K_DATA;
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

/* The record at the start of @p[0..@n): its length when it is whole and valid (*@k its
 * kind), 0 when it needs bytes past @n, -1 when it is not a record keel-kv writes. */
static long
one_record(const uint8_t *p, size_t n, enum kind *k)
{
	struct resp_arg argv[8];
	struct resp_req req = { .argv = argv, .cap = 8, .max_bulk = UINT64_MAX >> 1 };
	long r;

	if (!n || p[0] != '*') /* records are arrays: no inline commands */
		return n ? -1 : 0;
	r = resp_parse(p, n, &req);
	if (r == RESP_MORE)
		return 0;
	if (r < 0 || (*k = kind_of(req.argv, req.argc)) == K_BAD ||
	    !written_form(p, (size_t)r, req.argv, req.argc))
		return -1;
	return r;
}

/* A transaction's records are written between MULTI and EXEC: the valid prefix takes them
 * whole or not at all, so a file that ends inside one is cut before its MULTI. */
struct units {
	uint64_t at;   /* the next record */
	uint64_t good; /* the end of the last whole unit: a record outside a transaction, or a
			* transaction from its MULTI to its EXEC */
	bool open;     /* inside a transaction (its MULTI at good) */
};

/* One more record of kind @k, @r bytes: false when it cannot be there (a MULTI inside a
 * transaction, an EXEC outside one), which ends the valid prefix. */
static bool
unit_step(struct units *u, enum kind k, long r)
{
	if ((k == K_MULTI) == u->open && k != K_DATA)
		return false;
	u->at += (uint64_t)r;
	if (k != K_DATA)
		u->open = k == K_MULTI;
	if (!u->open)
		u->good = u->at;
	return true;
}

size_t
kv_aof_valid_prefix(const uint8_t *p, size_t n)
{
	struct units u = { 0 };
	enum kind k;
	long r;

	while ((r = one_record(p + u.at, n - (size_t)u.at, &k)) > 0 && unit_step(&u, k, r))
		;
	return (size_t)u.good;
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
	size_t off = kv_aof_valid_prefix(p, n), end = n, q;
	enum kind k;
	long r;

	*good = off;
	if (off == n)
		return KV_AOF_CLEAN;
	while (end > off && !p[end - 1])
		end--;
	if (end == off)
		return KV_AOF_TORN;
	q = off;
	r = one_record(p + q, end - q, &k);
	if (r > 0 && k == K_MULTI) {
		/* A transaction the file ends inside: its MULTI and whole records, then what a
		 * torn last record may be. The file is cut at its MULTI. */
		q += (size_t)r;
		while (q < end && (r = one_record(p + q, end - q, &k)) > 0 && k == K_DATA)
			q += (size_t)r;
		if (q == end)
			return KV_AOF_TORN;
		if (r != 0) /* a record that is not one, or a MULTI inside it */
			return KV_AOF_CORRUPT;
	} else if (r != 0) {
		return KV_AOF_CORRUPT;
	}
	/* A whole record inside what runs past the end: a damaged length that swallows the
	 * records after it, or a torn last record whose value holds a record's bytes (a value
	 * is any bytes a client sent). The bytes cannot tell them apart, whatever follows the
	 * record found: so it is neither cut as torn nor called damage. */
	for (const uint8_t *c = p + q + 1; (c = memchr(c, '*', (size_t)(p + end - c))); c++)
		if (record_head(c, (size_t)(p + end - c)) &&
		    one_record(c, (size_t)(p + end - c), &k) > 0)
			return KV_AOF_UNSURE;
	return KV_AOF_TORN;
}

/* A file read through the caller's reader, for kv_aof_check_file. */
struct src {
	kv_aof_read_fn rd;
	void *ctx;
	uint8_t *line; /* RESP_INLINE_MAX bytes: a count or bulk line's most */
	uint8_t *w;    /* the window: cap bytes, holding the file's [wat, wat + wlen) */
	size_t cap, wlen;
	uint64_t wat;
	int err; /* the reader's first error */
};

/* @n bytes at @off into @buf: false on a read error (s->err). */
static bool
get(struct src *s, uint64_t off, uint8_t *buf, size_t n)
{
	int r;

	if (s->err)
		return false;
	if (!n)
		return true;
	r = s->rd(s->ctx, off, buf, n);
	if (r < 0)
		s->err = r;
	return r == 0;
}

/* The bytes of a line looked at first: its number and '\r' fit (a number of more than 20
 * characters is not one). */
#define LINE_PEEK 32

/* The count ('*') or bulk ('$') line at @at, the bytes up to @end being all there is, as
 * one_record reads the one (not starting with '*': not a record) and resp_parse the
 * other: the first '\r' from @at (*@cr), then the number between the type and it. With no
 * '\r', a line of more than RESP_INLINE_MAX bytes is an error and a shorter one wants
 * more; a '\r' past LINE_PEEK ends a number too long to be one. Returns 1 with *@num and
 * *@cr, 0 (RESP_MORE) or -1 (RESP_ERROR, or a read error: s->err). */
static int
line_at(struct src *s, uint64_t at, uint64_t end, uint8_t type, uint64_t *cr, long long *num)
{
	uint64_t n = end - at;
	size_t l = n < LINE_PEEK ? (size_t)n : LINE_PEEK;
	const uint8_t *c;

	if (!get(s, at, s->line, l))
		return -1;
	if (type == '*' && s->line[0] != '*') /* one_record: records are arrays */
		return -1;
	c = memchr(s->line, '\r', l);
	if (!c && l < n && n <= RESP_INLINE_MAX) { /* is there one at all: more, or an error */
		l = (size_t)n;
		if (!get(s, at, s->line, l))
			return -1;
		c = memchr(s->line, '\r', l);
	}
	if (!c) /* none before @end: wants more within the bound; past it, or far: an error */
		return l == n && n <= RESP_INLINE_MAX ? 0 : -1;
	if (s->line[0] != type || !resp_number(s->line + 1, (size_t)(c - s->line) - 1, num))
		return -1;
	*cr = at + (uint64_t)(c - s->line);
	return 1;
}

/* Whether the record at @at, whole up to @to, is exactly in the form keel-kv writes
 * (written_form), its arguments' data starting at @st[i]; read a line end at a time. */
static bool
written_form_at(struct src *s, uint64_t at, uint64_t to, const uint64_t *st,
		const struct resp_arg *argv, unsigned argc)
{
	char h[32];
	uint8_t b[32];
	uint64_t off = at;
	int k = snprintf(h, sizeof(h), "*%u\r\n", argc);

	if (to - off < (uint64_t)k || !get(s, off, b, (size_t)k) || memcmp(b, h, (size_t)k))
		return false;
	off += (uint64_t)k;
	for (unsigned i = 0; i < argc; i++) {
		k = snprintf(h, sizeof(h), "$%zu\r\n", argv[i].len);
		if (to - off < (uint64_t)k || !get(s, off, b, (size_t)k) ||
		    memcmp(b, h, (size_t)k) || st[i] != off + (uint64_t)k)
			return false;
		off += (uint64_t)k + argv[i].len;
		if (to - off < 2 || !get(s, off, b, 2) || b[0] != '\r' || b[1] != '\n')
			return false;
		off += 2;
	}
	return off == to;
}

/* one_record of the file's bytes [@at, @end), whatever their size: resp_parse reads a
 * record's count line and each argument's line and skips the arguments' data unread, so
 * this reads the lines alone (parse_multibulk and multibulk_args, step for step), then
 * what kv_record_check and written_form look at: the short arguments and the line ends
 * after each. Returns its length (*@k its kind), 0 or -1 as one_record does (-1 too on a
 * read error: s->err). */
static long
record_at(struct src *s, uint64_t at, uint64_t end, enum kind *k)
{
	struct resp_arg argv[8];
	uint8_t small[8][20];
	uint64_t st[8], pos, cr, start;
	long long count, len;
	unsigned argc = 0;
	int l;

	if (at == end)
		return 0;
	l = line_at(s, at, end, '*', &cr, &count);
	if (l <= 0)
		return l;
	if (count > INT_MAX)
		return -1;
	pos = cr + 2;
	if (pos > end)
		return 0;
	if (count <= 0) /* an empty request, whole: not a record */
		return -1;
	for (long long i = 0; i < count; i++) {
		if (pos >= end)
			return 0;
		l = line_at(s, pos, end, '$', &cr, &len);
		if (l <= 0)
			return l;
		if (len < 0)
			return -1;
		start = cr + 2;
		if (start + (uint64_t)len + 2 > end)
			return 0;
		if (argc == 8) /* one_record's argv is full: RESP_NEED_ARGV */
			return -1;
		/* kv_record_check reads an argument only when it is this short (its
		 * lengths are compared first) */
		if (len <= 20 && !get(s, start, small[argc], (size_t)len))
			return -1;
		argv[argc].p = small[argc];
		argv[argc].len = (size_t)len;
		st[argc++] = start;
		pos = start + (uint64_t)len + 2;
	}
	if ((*k = kind_of(argv, argc)) == K_BAD || !written_form_at(s, at, pos, st, argv, argc))
		return -1;
	return (long)(pos - at);
}

/* one_record of the file's bytes [@at, @end): from the window when it holds the record
 * whole (or all there is), else from a window read at @at, else, a record larger than the
 * window, walked by its lines (record_at). Each byte is read about once, whatever the
 * records' sizes. */
static long
rec_at(struct src *s, uint64_t at, uint64_t end, enum kind *k)
{
	size_t want = end - at < s->cap ? (size_t)(end - at) : s->cap, have = 0;
	long r;

	if (at >= s->wat && at < s->wat + s->wlen) {
		have = (size_t)(s->wat + s->wlen - at);
		have = have < end - at ? have : (size_t)(end - at);
		r = one_record(s->w + (at - s->wat), have, k);
		if (r > 0 || have == end - at)
			return r;
	}
	if (have < want) {
		s->wlen = 0;
		if (!get(s, at, s->w, want))
			return -1;
		s->wat = at;
		s->wlen = want;
		r = one_record(s->w, want, k);
		if (r > 0 || want == end - at)
			return r;
	}
	return record_at(s, at, end, k);
}

int
kv_aof_check_file(kv_aof_read_fn rd, void *ctx, uint64_t size, size_t window,
		  enum kv_aof_tail *tail, uint64_t *good)
{
	struct src s = { .rd = rd, .ctx = ctx };
	struct units u = { 0 };
	uint64_t base, end, q, a;
	uint8_t *w, head[13];
	enum kind k;
	long r;

	if (window > size) /* no more than the file */
		window = (size_t)size;
	if (!window)
		window = 1;
	w = s.w = malloc(window);
	s.cap = window;
	s.line = malloc(size < RESP_INLINE_MAX ? (size ? (size_t)size : 1) : RESP_INLINE_MAX);
	if (!w || !s.line) {
		s.err = -ENOMEM;
		goto out;
	}
	/* The valid prefix (kv_aof_valid_prefix of the whole), a record at a time from the
	 * window (rec_at): a large value is never read. */
	while ((r = rec_at(&s, u.at, size, &k)) > 0 && unit_step(&u, k, r))
		;
	if (s.err)
		goto out;
	*good = base = u.good;
	if (base == size) {
		*tail = KV_AOF_CLEAN;
		goto out;
	}
	/* NUL bytes that run to the end are left aside: the last byte that is not one. */
	s.wlen = 0; /* w is read here and in the search below, not through rec_at */
	for (end = size; end > base;) {
		size_t len = end - base < window ? (size_t)(end - base) : window, j = len;

		if (!get(&s, end - len, w, len))
			goto out;
		while (j > 0 && !w[j - 1])
			j--;
		if (j) {
			end = end - len + j;
			break;
		}
		end -= len;
	}
	if (end == base) {
		*tail = KV_AOF_TORN;
		goto out;
	}
	q = base;
	r = rec_at(&s, q, end, &k);
	if (r > 0 && k == K_MULTI) { /* a transaction the file ends inside (kv_aof_check) */
		q += (uint64_t)r;
		while (q < end && (r = rec_at(&s, q, end, &k)) > 0 && k == K_DATA)
			q += (uint64_t)r;
		if (s.err)
			goto out;
		if (q == end) {
			*tail = KV_AOF_TORN;
			goto out;
		}
	}
	if (s.err)
		goto out;
	if (r != 0) {
		*tail = KV_AOF_CORRUPT;
		goto out;
	}
	/* A whole record starting inside what runs past the end (kv_aof_check), a window at
	 * a time: a candidate the window does not hold whole is walked (record_at). */
	s.wlen = 0;
	*tail = KV_AOF_TORN;
	for (a = q + 1; a < end && *tail == KV_AOF_TORN;) {
		size_t len = end - a < window ? (size_t)(end - a) : window;
		const uint8_t *c = w;

		if (!get(&s, a, w, len))
			goto out;
		while ((c = memchr(c, '*', len - (size_t)(c - w)))) {
			size_t j = (size_t)(c - w);
			const uint8_t *h = c;

			c++;
			if (end - (a + j) < 13)
				break;
			if (len - j < 13) { /* the head runs past the window */
				if (!get(&s, a + j, head, 13))
					goto out;
				h = head;
			}
			if (!record_head(h, 13))
				continue;
			/* exact, unless it wants more than the window holds */
			r = one_record(w + j, len - j, &k);
			if (r == 0 && a + len < end) {
				r = record_at(&s, a + j, end, &k);
				if (s.err)
					goto out;
			}
			if (r > 0) {
				*tail = KV_AOF_UNSURE;
				break;
			}
		}
		a += len;
	}
out:
	free(w);
	free(s.line);
	return s.err;
}

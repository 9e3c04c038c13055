// SPDX-License-Identifier: MIT
/*
 * RESP2 request parsing, following Redis 7's processMultibulkBuffer and
 * processInlineBuffer (src/networking.c) so that the same bytes get the same replies:
 * counts are strict integers (string2ll), a bulk's trailing CRLF is skipped unchecked,
 * count lines and inline requests are bounded by 64 KiB.
 */
#include "resp.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Redis's string2ll: an optional '-', then digits without a leading zero; no overflow. */
static bool
str2ll(const uint8_t *p, size_t n, long long *out)
{
	unsigned long long v = 0;
	bool neg = false;
	size_t i = 0;

	if (n == 0 || n > 20)
		return false;
	if (n == 1 && p[0] == '0') {
		*out = 0;
		return true;
	}
	if (p[0] == '-') {
		neg = true;
		i = 1;
		if (n == 1)
			return false;
	}
	if (p[i] < '1' || p[i] > '9')
		return false;
	for (; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		if (v > (ULLONG_MAX - (p[i] - '0')) / 10)
			return false;
		v = v * 10 + (p[i] - '0');
	}
	if (neg) {
		if (v > (unsigned long long)LLONG_MAX + 1)
			return false;
		*out = v == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)v;
	} else {
		if (v > LLONG_MAX)
			return false;
		*out = (long long)v;
	}
	return true;
}

bool
resp_number(const uint8_t *p, size_t n, long long *out)
{
	return str2ll(p, n, out);
}

/* The number of a count line that starts at @p (after its '*' or '$'), when it is plain:
 * 1 to 18 digits, no leading zero (or "0"), then '\r' within @n bytes. Returns the
 * digits' length and *out, or 0 when the line is anything else (negative, longer, not
 * whole yet, bad): the caller then takes the general path (memchr, str2ll), which gives
 * the same result for plain lines and Redis's replies for the rest. 18 digits cannot
 * overflow, so no check per digit (the bulk lengths of every request pass here). */
static inline __attribute__((always_inline)) size_t
plain_num(const uint8_t *p, size_t n, long long *out)
{
	unsigned long long v = 0;
	size_t i = 0;

	if (n > 19)
		n = 19;
	while (i < n && p[i] >= '0' && p[i] <= '9') {
		v = v * 10 + (unsigned)(p[i] - '0');
		i++;
	}
	if (i == 0 || i == n || i > 18 || p[i] != '\r' || (p[0] == '0' && i > 1))
		return 0;
	*out = (long long)v;
	return i;
}

size_t
resp_argv_next(unsigned cap)
{
	if (cap >= INT_MAX)
		return 0;
	return !cap ? 8 : cap > INT_MAX / 2 ? INT_MAX : (size_t)cap * 2;
}

static long
fail(struct resp_req *req, const char *msg)
{
	snprintf(req->err, sizeof(req->err), "%s", msg);
	return RESP_ERROR;
}

static long
more(struct resp_req *req, size_t need)
{
	req->need = need;
	return RESP_MORE;
}

/* Request more bytes for argument @i, which starts at @pos: remember where. */
static long
more_at(struct resp_req *req, size_t need, long long i, size_t pos)
{
	req->resume.pos = pos;
	req->resume.next = (unsigned long long)i;
	return more(req, need);
}

/* The @count arguments of a multibulk request, from argument @i at @pos on. With @fill,
 * into req->argv; without, only checked (a resumed request not yet whole). Inlined into
 * both callers, so each is specialised on @fill (the per-request path of every command). */
static inline __attribute__((always_inline)) long
multibulk_args(const uint8_t *p, size_t n, struct resp_req *req, long long count, long long i,
	       size_t pos, bool fill)
{
	const uint8_t *cr;
	long long len;
	size_t d;

	for (; i < count; i++) {
		size_t start;

		if (pos >= n)
			return more_at(req, pos + 1, i, pos);
		if (p[pos] == '$' && (d = plain_num(p + pos + 1, n - pos - 1, &len)) &&
		    (unsigned long long)len <= req->max_bulk) {
			cr = p + pos + 1 + d;
			goto sized;
		}
		cr = memchr(p + pos, '\r', n - pos);
		if (!cr) {
			if (n - pos > RESP_INLINE_MAX)
				return fail(req, "Protocol error: too big bulk count string");
			return more_at(req, n + 1, i, pos);
		}
		if (p[pos] != '$') {
			int ch = p[pos] == '\r' || p[pos] == '\n' ? ' ' : p[pos];
			snprintf(req->err, sizeof(req->err),
				 "Protocol error: expected '$', got '%c'", ch);
			return RESP_ERROR;
		}
		if (!str2ll(p + pos + 1, (size_t)(cr - (p + pos)) - 1, &len) || len < 0 ||
		    (unsigned long long)len > req->max_bulk)
			return fail(req, "Protocol error: invalid bulk length");
sized:
		start = (size_t)(cr - p) + 2;
		if (start + (size_t)len + 2 > n)
			return more_at(req, start + (size_t)len + 2, i, pos);
		if (fill) {
			if (req->argc == req->cap) {
				size_t want = resp_argv_next(req->cap);
				if ((long long)want > count)
					want = (size_t)count;
				req->need = want;
				return RESP_NEED_ARGV;
			}
			req->argv[req->argc].p = p + start;
			req->argv[req->argc].len = (size_t)len;
			req->argc++;
		}
		pos = start + (size_t)len + 2;
	}
	return (long)pos;
}

static long
parse_multibulk(const uint8_t *p, size_t n, struct resp_req *req)
{
	const uint8_t *cr;
	long long count;
	struct resp_resume rs = req->resume;
	size_t pos, d = plain_num(p + 1, n - 1, &count);
	long r;

	req->resume = (struct resp_resume){ 0 };
	if (d && count <= INT_MAX) {
		cr = p + 1 + d;
		goto counted;
	}
	cr = memchr(p, '\r', n);
	if (!cr) {
		if (n > RESP_INLINE_MAX)
			return fail(req, "Protocol error: too big mbulk count string");
		return more(req, n + 1);
	}
	if (!str2ll(p + 1, (size_t)(cr - p) - 1, &count) || count > INT_MAX)
		return fail(req, "Protocol error: invalid multibulk length");
counted:
	pos = (size_t)(cr - p) + 2;
	if (pos > n)
		return more(req, pos);
	if (count <= 0)
		return (long)pos; /* an empty request: skipped, as Redis does */
	/* Resume where an earlier call stopped: check only the rest, then, once the request is
	 * whole, fill argv from the start. State that points outside the request's arguments
	 * (past its bytes or its count, into its header) is ignored; state inside them is
	 * trusted, as the caller's promise that it came from this request. */
	if (rs.next && rs.next < (unsigned long long)count && rs.pos > pos && rs.pos <= n) {
		/* req->resume stays zero unless this stops again (more_at) */
		r = multibulk_args(p, n, req, count, (long long)rs.next, rs.pos, false);
		if (r <= 0)
			return r;
	}
	return multibulk_args(p, n, req, count, 0, pos, true);
}

static int
hexval(uint8_t c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static bool
is_space(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* What ends an unquoted argument: sdssplitargs stops at these only (\v and \f, which
 * is_space skips between arguments, are part of one). */
static bool
ends_token(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* sdssplitargs: arguments separated by spaces, "double quotes" with C escapes and \xHH,
 * 'single quotes' with \' only; a closing quote must be followed by a space or the end. */
static long
parse_inline(const uint8_t *p, size_t n, struct resp_req *req)
{
	const uint8_t *nl = memchr(p, '\n', n);
	size_t linelen, i = 0, out = 0;

	/* Redis 7 looks for the newline with strchr, which stops at a NUL byte: a NUL before
	 * it hides it, and the request (with every one after it) waits for an end it never
	 * finds, until the 64 KiB bound below. (Only the line is looked at: a pipeline's later
	 * lines are not read again for each request.) */
	if (nl && memchr(p, 0, (size_t)(nl - p)))
		nl = NULL;
	if (!nl) {
		if (n > RESP_INLINE_MAX)
			return fail(req, "Protocol error: too big inline request");
		return more(req, n + 1);
	}
	linelen = (size_t)(nl - p);
	if (linelen && p[linelen - 1] == '\r')
		linelen--;
	if (req->scratch_cap < linelen) {
		req->need = linelen;
		return RESP_NEED_SCRATCH;
	}
	while (1) {
		size_t start;
		bool dq = false, sq = false, done = false;

		while (i < linelen && is_space(p[i]))
			i++;
		if (i == linelen)
			break;
		start = out;
		while (!done) {
			uint8_t c = i < linelen ? p[i] : 0;
			if (dq) {
				if (i >= linelen)
					goto unbalanced;
				if (c == '\\' && i + 3 < linelen && p[i + 1] == 'x' &&
				    hexval(p[i + 2]) >= 0 && hexval(p[i + 3]) >= 0) {
					req->scratch[out++] =
						(uint8_t)(hexval(p[i + 2]) * 16 + hexval(p[i + 3]));
					i += 3;
				} else if (c == '\\' && i + 1 < linelen) {
					uint8_t e = p[++i];
					req->scratch[out++] = e == 'n'   ? '\n'
							      : e == 'r' ? '\r'
							      : e == 't' ? '\t'
							      : e == 'b' ? '\b'
							      : e == 'a' ? '\a'
									 : e;
				} else if (c == '"') {
					if (i + 1 < linelen && !is_space(p[i + 1]))
						goto unbalanced;
					done = true;
				} else {
					req->scratch[out++] = c;
				}
			} else if (sq) {
				if (i >= linelen)
					goto unbalanced;
				if (c == '\\' && i + 1 < linelen && p[i + 1] == '\'') {
					i++;
					req->scratch[out++] = '\'';
				} else if (c == '\'') {
					if (i + 1 < linelen && !is_space(p[i + 1]))
						goto unbalanced;
					done = true;
				} else {
					req->scratch[out++] = c;
				}
			} else {
				if (i >= linelen || ends_token(c)) {
					done = true;
					continue; /* i stays on the space */
				} else if (c == '"') {
					dq = true;
				} else if (c == '\'') {
					sq = true;
				} else {
					req->scratch[out++] = c;
				}
			}
			i++;
		}
		if (req->argc == req->cap) {
			req->need = resp_argv_next(req->cap);
			req->argc = 0;
			if (!req->need)
				return fail(req,
					    "Protocol error: too many arguments in inline request");
			return RESP_NEED_ARGV;
		}
		req->argv[req->argc].p = req->scratch + start;
		req->argv[req->argc].len = out - start;
		req->argc++;
	}
	return (long)(nl - p) + 1;
unbalanced:
	req->argc = 0;
	return fail(req, "Protocol error: unbalanced quotes in request");
}

long
resp_parse(const uint8_t *p, size_t n, struct resp_req *req)
{
	long r;

	req->argc = 0;
	req->need = 0;
	if (n == 0) {
		req->resume = (struct resp_resume){ 0 };
		return more(req, 1);
	}
	if (p[0] == '*') {
		r = parse_multibulk(p, n, req);
	} else {
		req->resume = (struct resp_resume){ 0 };
		r = parse_inline(p, n, req);
	}
	/* req->resume is zero here unless r is RESP_MORE: parse_multibulk zeroed it first and
	 * only more_at sets it. */
	if (r <= 0)
		req->argc = 0;
	return r;
}

static size_t
line_end(const uint8_t *p, size_t n)
{
	const uint8_t *cr = memchr(p, '\r', n);

	if (!cr || (size_t)(cr - p) + 2 > n)
		return 0;
	return (size_t)(cr - p) + 2;
}

size_t
resp_reply_len(const uint8_t *p, size_t n)
{
	size_t l, pos;
	long long v;

	if (n < 3)
		return 0;
	l = line_end(p, n);
	if (!l)
		return 0;
	switch (p[0]) {
	case '+':
	case '-':
	case ':':
		return l;
	case '$':
		if (!str2ll(p + 1, l - 3, &v))
			return 0;
		if (v < 0)
			return l;
		return l + (size_t)v + 2 <= n ? l + (size_t)v + 2 : 0;
	case '*':
		if (!str2ll(p + 1, l - 3, &v))
			return 0;
		pos = l;
		for (long long i = 0; i < v; i++) {
			size_t e = resp_reply_len(p + pos, n - pos);
			if (!e)
				return 0;
			pos += e;
		}
		return pos;
	}
	return 0;
}

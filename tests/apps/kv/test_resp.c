// SPDX-License-Identifier: MIT
/* The RESP2 request parser (apps/kv/resp.c) on its own: a pure function over bytes. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "aofrec.h"
#include "resp.h"

struct p {
	struct resp_arg argv[64];
	uint8_t scratch[70 * 1024];
	struct resp_req req;
};

static long
parse(struct p *s, const void *buf, size_t n)
{
	memset(&s->req, 0, sizeof(s->req));
	s->req.argv = s->argv;
	s->req.cap = 64;
	s->req.scratch = s->scratch;
	s->req.scratch_cap = sizeof(s->scratch);
	s->req.max_bulk = RESP_MAX_BULK_DEFAULT;
	return resp_parse(buf, n, &s->req);
}

static struct p *
newp(void)
{
	struct p *s = calloc(1, sizeof(*s));
	cr_assert(s);
	return s;
}

#define ARG_IS(s, i, lit)                                                         \
	cr_assert(s->argv[i].len == sizeof(lit) - 1 &&                            \
			  !memcmp(s->argv[i].p, lit, sizeof(lit) - 1),            \
		  "argument %d is '%.*s', expected '%s'", i, (int)s->argv[i].len, \
		  (const char *)s->argv[i].p, lit)

Test(kv_resp, multibulk_request)
{
	struct p *s = newp();
	const char r[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";

	cr_assert_eq(parse(s, r, sizeof(r) - 1), (long)sizeof(r) - 1);
	cr_assert_eq(s->req.argc, 3);
	ARG_IS(s, 0, "SET");
	ARG_IS(s, 1, "k");
	ARG_IS(s, 2, "hello");
	free(s);
}

Test(kv_resp, binary_safe_values)
{
	struct p *s = newp();
	const char r[] = "*2\r\n$4\r\na\r\n\0\r\n$0\r\n\r\n";

	cr_assert_eq(parse(s, r, sizeof(r) - 1), (long)sizeof(r) - 1);
	cr_assert_eq(s->req.argc, 2);
	cr_assert_eq(s->argv[0].len, 4);
	cr_assert(!memcmp(s->argv[0].p, "a\r\n\0", 4));
	cr_assert_eq(s->argv[1].len, 0);
	free(s);
}

Test(kv_resp, pipelined_requests_one_at_a_time)
{
	struct p *s = newp();
	const char r[] = "*1\r\n$4\r\nPING\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nx\r\n";
	size_t off = 0;
	unsigned n = 0;

	while (off < sizeof(r) - 1) {
		long l = parse(s, r + off, sizeof(r) - 1 - off);
		cr_assert_gt(l, 0, "request %u at %zu: %ld", n, off, l);
		off += (size_t)l;
		n++;
	}
	cr_assert_eq(n, 3);
	ARG_IS(s, 0, "GET");
	free(s);
}

Test(kv_resp, inline_commands_with_quotes)
{
	struct p *s = newp();
	const char r[] = "SET \"a b\" 'c\\'d' \"\\x41\\n\"  e\r\n";

	cr_assert_eq(parse(s, r, sizeof(r) - 1), (long)sizeof(r) - 1);
	cr_assert_eq(s->req.argc, 5);
	ARG_IS(s, 0, "SET");
	ARG_IS(s, 1, "a b");
	ARG_IS(s, 2, "c'd");
	ARG_IS(s, 3, "A\n");
	ARG_IS(s, 4, "e");
	cr_assert_eq(parse(s, "PING\n", 5), 5, "a bare LF ends an inline request too");
	cr_assert_eq(s->req.argc, 1);
	cr_assert_eq(parse(s, "\r\n", 2), 2, "an empty line is consumed");
	cr_assert_eq(s->req.argc, 0);
	/* \v and \f are part of an unquoted argument, as in sdssplitargs (they split it), and
	 * blanks between arguments */
	cr_assert_eq(parse(s, "MGET a\vb \fc\n", 12), 12);
	cr_assert_eq(s->req.argc, 3);
	ARG_IS(s, 1, "a\vb");
	ARG_IS(s, 2, "c");
	free(s);
}

Test(kv_resp, every_split_point_needs_more_then_parses_whole)
{
	struct p *s = newp();
	const char *reqs[] = {
		"*3\r\n$3\r\nSET\r\n$10\r\nkey:000001\r\n$5\r\nva\r\nl\r\n",
		"*1\r\n$4\r\nPING\r\n",
		"*0\r\n",
		"GET key\r\n",
		"SET 'a b' \"c\"\r\n",
	};

	for (unsigned k = 0; k < sizeof(reqs) / sizeof(reqs[0]); k++) {
		size_t n = strlen(reqs[k]);
		for (size_t cut = 0; cut < n; cut++) {
			long r = parse(s, reqs[k], cut);
			cr_assert_eq(r, RESP_MORE, "request %u cut at %zu: %ld", k, cut, r);
			cr_assert_gt(s->req.need, cut, "request %u cut at %zu: need %zu", k, cut,
				     s->req.need);
			cr_assert_leq(s->req.need, n, "request %u cut at %zu: need %zu > %zu", k,
				      cut, s->req.need, n);
		}
		cr_assert_eq(parse(s, reqs[k], n), (long)n, "request %u whole", k);
	}
	free(s);
}

static void
expect_error(const char *r, size_t n, const char *msg)
{
	struct p *s = newp();
	long l = parse(s, r, n);

	cr_assert_eq(l, RESP_ERROR, "%s: returned %ld", msg, l);
	cr_assert_str_eq(s->req.err, msg);
	free(s);
}

/* A NUL byte in an inline request hides the request's end, as in redis-server 7.0.15: its
 * processInlineBuffer looks for the newline with strchr, which stops at the NUL, so the
 * request is never whole (nor are the ones after it: the newline search starts over from
 * the same place), and once more than 64 KiB wait it is too big. keel-kv ended the request
 * at its newline and kept the NUL as a byte of the argument ("ECHO x\0y" echoed x\0y). A
 * NUL after the newline is the next request's; in a bulk string it is a byte like any
 * other (binary_safe_values). */
Test(kv_resp, a_nul_hides_the_end_of_an_inline_request)
{
	struct p *s = newp();
	size_t n = RESP_INLINE_MAX + 1;
	char *b = malloc(n);

	cr_assert_eq(parse(s, "ECHO x\0y\r\n", 10), RESP_MORE);
	cr_assert_eq(s->req.need, 11);
	cr_assert_eq(parse(s, "SET a b\0c\r\nPING\r\n", 17), RESP_MORE);
	cr_assert_eq(parse(s, "\0\r\n", 3), RESP_MORE);
	cr_assert_eq(parse(s, "PING\r\nECHO \0\r\n", 14), 6);
	cr_assert_eq(s->req.argc, 1);
	memset(b, 'a', n);
	memcpy(b, "ECHO x\0y\r\n", 10);
	cr_assert_eq(parse(s, b, n - 1), RESP_MORE, "64 KiB waiting is not too big yet");
	expect_error(b, n, "Protocol error: too big inline request");
	free(b);
	free(s);
}

Test(kv_resp, malformed_input_gets_redis_errors)
{
	expect_error("*x\r\n", 4, "Protocol error: invalid multibulk length");
	expect_error("*3000000000\r\n", 13, "Protocol error: invalid multibulk length");
	expect_error("*01\r\n", 5, "Protocol error: invalid multibulk length");
	expect_error("*1\r\n:3\r\n", 8, "Protocol error: expected '$', got ':'");
	expect_error("*1\r\n$-1\r\n", 9, "Protocol error: invalid bulk length");
	expect_error("*1\r\n$abc\r\n", 10, "Protocol error: invalid bulk length");
	expect_error("*1\r\n$99999999999999999999999\r\n", 29,
		     "Protocol error: invalid bulk length");
	expect_error("SET \"a\r\n", 8, "Protocol error: unbalanced quotes in request");
	expect_error("SET 'a'b\r\n", 10, "Protocol error: unbalanced quotes in request");
}

/* Count lines at the edges of the parser's quick path for plain numbers (1-18 digits,
 * then CR): the same results as Redis's string2ll on either side of those edges. */
Test(kv_resp, count_lines_at_every_length_parse_as_redis_does)
{
	struct p *s = newp();
	const char empty[] = "*2\r\n$0\r\n\r\n$1\r\nx\r\n";
	char r[64];

	cr_assert_eq(parse(s, empty, sizeof(empty) - 1), (long)sizeof(empty) - 1);
	cr_assert_eq(s->req.argc, 2);
	cr_assert_eq(s->argv[0].len, 0);
	ARG_IS(s, 1, "x");
	cr_assert_eq(parse(s, "*0\r\n", 4), 4);
	cr_assert_eq(s->req.argc, 0);
	expect_error("*1\r\n$00\r\n\r\n", 11, "Protocol error: invalid bulk length");
	expect_error("*1\r\n$01\r\nx\r\n", 12, "Protocol error: invalid bulk length");
	expect_error("*00\r\n", 5, "Protocol error: invalid multibulk length");
	expect_error("*2147483648\r\n", 13, "Protocol error: invalid multibulk length");
	/* The largest count: the request needs its first argument. */
	cr_assert_eq(parse(s, "*2147483647\r\n", 13), RESP_MORE);
	/* Bulk lengths of 1 to 20 digits under an unlimited max_bulk: up to 18 and 19
	 * digits (below 2^63) the request asks for its bytes; 20 digits are refused. */
	for (int d = 1; d <= 20; d++) {
		int n = snprintf(r, sizeof(r), "*1\r\n$%.*s\r\n", d, "12345678912345678912");
		long ret;

		memset(&s->req, 0, sizeof(s->req));
		s->req.argv = s->argv;
		s->req.cap = 64;
		s->req.max_bulk = UINT64_MAX;
		ret = resp_parse((const uint8_t *)r, (size_t)n, &s->req);
		if (d <= 19) {
			char digits[24];
			snprintf(digits, sizeof(digits), "%.*s", d, "12345678912345678912");
			cr_assert_eq(ret, RESP_MORE, "%d digits: %ld", d, ret);
			cr_assert_eq(s->req.need, (size_t)n + strtoull(digits, NULL, 10) + 2,
				     "%d digits: need %zu", d, s->req.need);
		} else {
			cr_assert_eq(ret, RESP_ERROR, "%d digits: %ld", d, ret);
			cr_assert_str_eq(s->req.err, "Protocol error: invalid bulk length");
		}
	}
	free(s);
}

Test(kv_resp, bulk_longer_than_the_limit_is_refused_from_its_header)
{
	struct p *s = newp();
	const char r[] = "*1\r\n$2000\r\n";

	memset(&s->req, 0, sizeof(s->req));
	s->req.argv = s->argv;
	s->req.cap = 64;
	s->req.max_bulk = 1024;
	cr_assert_eq(resp_parse((const uint8_t *)r, sizeof(r) - 1, &s->req), RESP_ERROR);
	cr_assert_str_eq(s->req.err, "Protocol error: invalid bulk length");
	s->req.max_bulk = 4096;
	cr_assert_eq(resp_parse((const uint8_t *)r, sizeof(r) - 1, &s->req), RESP_MORE);
	cr_assert_eq(s->req.need, sizeof(r) - 1 + 2002);
	free(s);
}

Test(kv_resp, lines_without_end_are_bounded)
{
	size_t n = RESP_INLINE_MAX + 10;
	char *b = malloc(n + 2);

	memset(b, 'a', n);
	expect_error(b, n, "Protocol error: too big inline request");
	b[0] = '*';
	b[1] = '1';
	expect_error(b, n, "Protocol error: too big mbulk count string");
	memcpy(b, "*1\r\n$", 5);
	expect_error(b, n, "Protocol error: too big bulk count string");
	free(b);
}

Test(kv_resp, absurd_count_asks_for_argv_only_as_arguments_arrive)
{
	struct p *s = newp();
	const char r[] = "*2000000000\r\n$1\r\na\r\n";

	cr_assert_eq(parse(s, r, sizeof(r) - 1), RESP_MORE);
	memset(&s->req, 0, sizeof(s->req));
	s->req.max_bulk = RESP_MAX_BULK_DEFAULT;
	cr_assert_eq(resp_parse((const uint8_t *)r, sizeof(r) - 1, &s->req), RESP_NEED_ARGV);
	cr_assert_eq(s->req.need, 8, "argv grows by doubling, not to the announced count");
	free(s);
}

/* The argument array doubles up to INT_MAX entries and no further: at 2^31 the doubling of
 * an unsigned count wrapped to 0, a realloc to 0 freed the array the connection still named,
 * and its close freed it again. */
Test(kv_resp, argument_array_growth_stops_at_int_max)
{
	cr_assert_eq(resp_argv_next(0), 8);
	cr_assert_eq(resp_argv_next(8), 16);
	cr_assert_eq(resp_argv_next(1u << 29), 1u << 30);
	cr_assert_eq(resp_argv_next(1u << 30), INT_MAX);
	cr_assert_eq(resp_argv_next(INT_MAX), 0);
	cr_assert_eq(resp_argv_next(1u << 31), 0);
	cr_assert_eq(resp_argv_next(UINT_MAX), 0);
}

Test(kv_resp, reply_lengths)
{
	const char r[] = "*3\r\n$1\r\na\r\n$-1\r\n:5\r\n+OK\r\n";

	cr_assert_eq(resp_reply_len((const uint8_t *)r, sizeof(r) - 1), sizeof(r) - 1 - 5);
	cr_assert_eq(resp_reply_len((const uint8_t *)r, 8), 0);
	cr_assert_eq(resp_reply_len((const uint8_t *)"$-1\r\n", 5), 5);
}

/* Seeded random bytes never crash the parser and never claim more than they hold. */
Test(kv_resp, random_bytes_never_overrun)
{
	struct p *s = newp();
	uint8_t buf[256];
	unsigned seed = 12345;

	for (int it = 0; it < 200000; it++) {
		size_t n = (size_t)(rand_r(&seed) % sizeof(buf));
		for (size_t i = 0; i < n; i++) {
			int k = rand_r(&seed) % 8;
			buf[i] = k == 0   ? '*'
				 : k == 1 ? '$'
				 : k == 2 ? '\r'
				 : k == 3 ? '\n'
				 : k == 4 ? (uint8_t)('0' + rand_r(&seed) % 10)
					  : (uint8_t)rand_r(&seed);
		}
		long r = parse(s, buf, n);
		cr_assert(r <= (long)n, "consumed %ld of %zu", r, n);
		if (r > 0)
			for (unsigned a = 0; a < s->req.argc; a++)
				cr_assert((s->argv[a].p >= buf &&
					   s->argv[a].p + s->argv[a].len <= buf + n) ||
					  (s->argv[a].p >= s->scratch &&
					   s->argv[a].p + s->argv[a].len <=
						   s->scratch + sizeof(s->scratch)));
	}
	free(s);
}

/* The append-only file checker: whole valid records are kept, the first torn or foreign
 * record ends the valid prefix. */
Test(kv_aofrec, valid_prefix_stops_at_torn_or_invalid_records)
{
	static const char set[] = "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";
	static const char pxat[] = "*5\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n$4\r\nPXAT\r\n"
				   "$13\r\n1796011095441\r\n";
	static const char del[] = "*2\r\n$3\r\nDEL\r\n$1\r\na\r\n";
	char buf[512];
	size_t s = sizeof(set) - 1, p = sizeof(pxat) - 1, d = sizeof(del) - 1;

	snprintf(buf, sizeof(buf), "%s%s%s", set, pxat, del);
	cr_assert_eq(kv_aof_valid_prefix((const uint8_t *)buf, s + p + d), s + p + d);
	/* Every cut inside the last record leaves the first two. */
	for (size_t cut = s + p; cut < s + p + d; cut++)
		cr_assert_eq(kv_aof_valid_prefix((const uint8_t *)buf, cut), s + p, "cut %zu", cut);
	/* Not records keel-kv writes: a command, an inline line, a bad expiry. */
	snprintf(buf, sizeof(buf), "%s*2\r\n$3\r\nGET\r\n$1\r\na\r\n", set);
	cr_assert_eq(kv_aof_valid_prefix((const uint8_t *)buf, strlen(buf)), s);
	snprintf(buf, sizeof(buf), "%sSET a 1\r\n", set);
	cr_assert_eq(kv_aof_valid_prefix((const uint8_t *)buf, strlen(buf)), s);
	snprintf(buf, sizeof(buf),
		 "%s*5\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n$4\r\nPXAT\r\n$2\r\n-1\r\n", set);
	cr_assert_eq(kv_aof_valid_prefix((const uint8_t *)buf, strlen(buf)), s);
}

/* What follows the valid prefix (apps/kv/aofrec.h, docs/kv.md "Start"): a last record cut
 * short at any byte is torn, also with zeros after it to the end; a record that does not
 * parse with more after it is corrupt; a record whose lengths run past the end while a
 * whole record starts inside it is unsure: a damaged length swallowing the records after
 * it, or a last record cut short whose value holds a record's bytes (it was called
 * damage, and the start's message said it was not a record cut short: false for the
 * second). */
Test(kv_aofrec, check_tells_a_torn_tail_from_damage_inside)
{
	static const char set[] = "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";
	static const char del[] = "*2\r\n$3\r\nDEL\r\n$1\r\na\r\n";
	const size_t s = sizeof(set) - 1, d = sizeof(del) - 1;
	uint8_t buf[512];
	size_t good;

	memcpy(buf, set, s);
	memcpy(buf + s, del, d);
	cr_assert_eq(kv_aof_check(buf, s + d, &good), KV_AOF_CLEAN);
	cr_assert_eq(good, s + d);
	cr_assert_eq(kv_aof_check(buf, 0, &good), KV_AOF_CLEAN);
	for (size_t cut = s + 1; cut < s + d; cut++) {
		cr_assert_eq(kv_aof_check(buf, cut, &good), KV_AOF_TORN, "cut %zu", cut);
		cr_assert_eq(good, s, "cut %zu", cut);
		/* Zeros where the rest of the write had not reached the disk, from any byte
		 * on: inside the key and its line ends too, where the request parser, lenient
		 * as Redis's, would take a whole DEL of a key of zeros. */
		memset(buf + cut, 0, 40);
		cr_assert_eq(kv_aof_check(buf, cut + 40, &good), KV_AOF_TORN, "cut %zu", cut);
		cr_assert_eq(good, s, "cut %zu", cut);
		memcpy(buf + s, del, d);
	}
	memset(buf + s, 0, 40);
	cr_assert_eq(kv_aof_check(buf, s + 40, &good), KV_AOF_TORN);
	/* A SET whose last 10 bytes (the value's end and its "\r\n") are zeros, the file's
	 * length on the disk ahead of its data: torn, cut before it (it used to load whole,
	 * zeros in the value). A value that ends in zeros of its own, whole, is clean. */
	static const char setk[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$16\r\nnew-value-16byte\r\n";
	const size_t k = sizeof(setk) - 1;
	memcpy(buf + s, setk, k);
	memset(buf + s + k - 10, 0, 10);
	cr_assert_eq(kv_aof_check(buf, s + k, &good), KV_AOF_TORN);
	cr_assert_eq(good, s);
	memcpy(buf + s, setk, k);
	memset(buf + s + k - 2 - 4, 0, 4);
	cr_assert_eq(kv_aof_check(buf, s + k, &good), KV_AOF_CLEAN);
	cr_assert_eq(good, s + k);
	/* Damage with records after it: a record keel-kv does not write, a bad length line,
	 * something that is no record, zeros in the middle, a length that runs past the end
	 * with a whole record inside what it would swallow. */
	static const char *const bad[] = {
		"*2\r\n$3\r\nDEX\r\n$1\r\na\r\n",
		"*2\r\n$3\r\nDEL\r\n$x\r\na\r\n",
		"x",
		"\0\0\0\0",
		"*2\r\n$3\r\nDEL\r\n$99\r\na\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t bl = i == 3 ? 4 : strlen(bad[i]);

		memcpy(buf + s, bad[i], bl);
		memcpy(buf + s + bl, del, d);
		cr_assert_eq(kv_aof_check(buf, s + bl + d, &good),
			     i == 4 ? KV_AOF_UNSURE : KV_AOF_CORRUPT, "bad %zu", i);
		cr_assert_eq(good, s, "bad %zu", i);
	}
	/* A complete record that is not keel-kv's, last in the file: corrupt too (a record
	 * of a newer version is whole, not torn). */
	memcpy(buf + s, bad[0], strlen(bad[0]));
	cr_assert_eq(kv_aof_check(buf, s + strlen(bad[0]), &good), KV_AOF_CORRUPT);
	/* The rule's price: a torn last record whose value holds a whole record's bytes is
	 * not told from damage (the start refuses, saying both; nothing is lost): here a
	 * value of 100 'A', a DEL record and 100 'B', cut 50 bytes short. */
	snprintf((char *)buf + s, sizeof(buf) - s, "*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$80\r\n%s", del);
	cr_assert_eq(kv_aof_check(buf, strlen((char *)buf), &good), KV_AOF_UNSURE);
	cr_assert_eq(good, s);
	size_t h = (size_t)snprintf((char *)buf + s, sizeof(buf) - s,
				    "*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$%zu\r\n", 200 + d);
	memset(buf + s + h, 'A', 100);
	memcpy(buf + s + h + 100, del, d);
	memset(buf + s + h + 100 + d, 'B', 100);
	memcpy(buf + s + h + 200 + d, "\r\n", 2);
	cr_assert_eq(kv_aof_check(buf, s + h + 202 + d, &good), KV_AOF_CLEAN);
	cr_assert_eq(kv_aof_check(buf, s + h + 202 + d - 50, &good), KV_AOF_UNSURE);
	cr_assert_eq(good, s);
}

/* A torn last record whose value is 4 MiB of '*': the search for a whole record inside the
 * tail tests each '*' for a record's fixed head before it parses there (a parse from every
 * '*' would read to the end each time: hours for this file), and the tail is torn. */
Test(kv_aofrec, check_of_a_torn_value_of_stars_is_linear)
{
	static const char head[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8388608\r\n";
	size_t hl = sizeof(head) - 1, n = hl + (4u << 20), good;
	uint8_t *buf = malloc(n);

	cr_assert(buf);
	memcpy(buf, head, hl);
	memset(buf + hl, '*', n - hl);
	cr_assert_eq(kv_aof_check(buf, n, &good), KV_AOF_TORN);
	cr_assert_eq(good, 0);
	free(buf);
}

/* A file in memory for kv_aof_check_file: the largest read asked of it. */
struct memfile {
	const uint8_t *p;
	size_t n, most;
};

static int
mem_read(void *ctx, uint64_t off, uint8_t *buf, size_t len)
{
	struct memfile *m = ctx;

	cr_assert(off <= m->n && len <= m->n - off, "a read past the end: %zu bytes at %llu of %zu",
		  len, (unsigned long long)off, m->n);
	memcpy(buf, m->p + off, len);
	if (len > m->most)
		m->most = len;
	return 0;
}

/* kv_aof_check_file of @p[0..@n) in windows of @w bytes: kv_aof_check's verdict and valid
 * prefix, and no read larger than the window or a line's most (RESP_INLINE_MAX). */
static void
same_in_windows_of(const uint8_t *p, size_t n, size_t w, const char *what)
{
	struct memfile m = { p, n, 0 };
	size_t good;
	enum kv_aof_tail want = kv_aof_check(p, n, &good), got;
	uint64_t g;

	cr_assert_eq(kv_aof_check_file(mem_read, &m, n, w, &got, &g), 0);
	cr_assert_eq(got, want, "%s (%zu bytes), window %zu: verdict %d, not %d", what, n, w, got,
		     want);
	cr_assert_eq(g, good, "%s (%zu bytes), window %zu: prefix %llu, not %zu", what, n, w,
		     (unsigned long long)g, good);
	cr_assert_leq(m.most, w > RESP_INLINE_MAX ? w : RESP_INLINE_MAX,
		      "%s, window %zu: a read of %zu bytes", what, w, m.most);
}

static void
same_in_windows(const uint8_t *p, size_t n, const char *what)
{
	static const size_t more[] = { 64, 97, 4096, 1 << 20 };

	for (size_t w = 1; w <= 40; w++)
		same_in_windows_of(p, n, w, what);
	for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++)
		same_in_windows_of(p, n, more[i], what);
}

/* The start checks a file a window at a time (kv_aof_check_file), reading a record the
 * window does not hold by its lines: for every file here it gives the verdict and prefix
 * of kv_aof_check of the whole, in windows of 1 to 40 bytes and larger. The cases of
 * check_tells_a_torn_tail_from_damage_inside, every cut of records of each kind with and
 * without zeros after it, lines the parser refuses or waits on (a count or length line
 * with no '\r', over and under its 64 KiB bound, lengths too long to be numbers, an empty
 * or negative count, nine arguments), and seeded random damage to random records, a
 * transaction's MULTI and EXEC among them. */
Test(kv_aofrec, check_a_window_at_a_time_is_the_check_of_the_whole)
{
	static const char multi[] = "*1\r\n$5\r\nMULTI\r\n", exec[] = "*1\r\n$4\r\nEXEC\r\n";
	static const char set[] = "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";
	static const char pxat[] = "*5\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n$4\r\nPXAT\r\n"
				   "$13\r\n1796011095441\r\n";
	static const char del[] = "*2\r\n$3\r\nDEL\r\n$1\r\na\r\n";
	static const char *const bad[] = {
		"*2\r\n$3\r\nDEX\r\n$1\r\na\r\n",
		"*2\r\n$3\r\nDEL\r\n$x\r\na\r\n",
		"x",
		"*2\r\n$3\r\nDEL\r\n$99\r\na\r\n",
		"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$80\r\n*2\r\n$3\r\nDEL\r\n$1\r\na\r\n",
		"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$999999999999\r\n",
		"*0\r\n",
		"*-1\r\n",
		"*3\r\n$-1\r\nSET\r\n",
		"*2\r\n$03\r\nDEL\r\n$1\r\na\r\n",
		"*2\r\n$3\r\nDEL\r\n$1\r\naXY",
		"*02\r\n$3\r\nDEL\r\n$1\r\na\r\n",
		"*2\rX$3\r\nDEL\r\n$1\r\na\r\n",
		"*9\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n$1\r\na\r\n"
		"$1\r\na\r\n$1\r\na\r\n",
		"*5\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n$4\r\nPXAT\r\n$2\r\n-1\r\n",
		"*3\r\n$3\r\nSET\r\n$123456789012345678901\r\n",
	};
	size_t cap = 200000, n, s = sizeof(set) - 1, x = sizeof(pxat) - 1, d = sizeof(del) - 1;
	uint8_t *buf = malloc(cap), *big;
	unsigned seed = 2024;
	char what[64];

	cr_assert(buf);
	/* Every cut of set, pxat, del and a SET of a 300-byte value, zeros after it or not. */
	memcpy(buf, set, s);
	memcpy(buf + s, pxat, x);
	memcpy(buf + s + x, del, d);
	n = s + x + d;
	n += (size_t)sprintf((char *)buf + n, "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$300\r\n");
	memset(buf + n, 'v', 300);
	memcpy(buf + n + 300, "\r\n", 2);
	n += 302;
	big = malloc(n + 40);
	cr_assert(big);
	for (size_t cut = 0; cut <= n; cut++) {
		memcpy(big, buf, cut);
		memset(big + cut, 0, 40);
		snprintf(what, sizeof(what), "cut %zu", cut);
		same_in_windows(big, cut, what);
		same_in_windows(big, cut + 40, what);
	}
	free(big);
	/* Each bad record after a good one, with and without a record after it. */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t bl = strlen(bad[i]);

		memcpy(buf, set, s);
		memcpy(buf + s, bad[i], bl);
		memcpy(buf + s + bl, del, d);
		snprintf(what, sizeof(what), "bad %zu", i);
		same_in_windows(buf, s + bl, what);
		same_in_windows(buf, s + bl + d, what);
	}
	/* Count and length lines without a '\r': within the 64 KiB bound a line waits for
	 * more (torn), past it it is an error; a '\r' far away ends a number too long. */
	for (int k = 0; k < 4; k++) {
		size_t digits = k & 1 ? RESP_INLINE_MAX + 10 : RESP_INLINE_MAX - 10, h = 0;

		memcpy(buf, set, s);
		if (k & 2)
			h = (size_t)sprintf((char *)buf + s, "*2\r\n$3\r\nDEL\r\n$");
		else
			buf[s] = '*', h = 1;
		memset(buf + s + h, '7', digits);
		snprintf(what, sizeof(what), "line %d", k);
		for (size_t w = 1; w < 6; w++)
			same_in_windows_of(buf, s + h + digits, w * 977, what);
		memcpy(buf + s + h + digits, "\r\n", 2);
		memcpy(buf + s + h + digits + 2, del, d);
		for (size_t w = 1; w < 6; w++)
			same_in_windows_of(buf, s + h + digits + 2 + d, w * 977, what);
	}
	/* Random records, a transaction's markers among them, damaged in up to three bytes,
	 * cut anywhere, zeros after or not. */
	for (int it = 0; it < 4000; it++) {
		static const char *const recs[] = { set, pxat, del, multi, exec };
		static const uint8_t pick[] = { '*', '$', '\r', '\n', '0', '1', '3', '9', 0, 'x' };
		static const size_t ws[] = { 1, 2, 3, 5, 8, 13, 21, 34, 64, 4096 };
		int nrec = 1 + rand_r(&seed) % 6, dmg = rand_r(&seed) % 4;

		n = 0;
		for (int r = 0; r < nrec; r++) {
			if (rand_r(&seed) % 4 == 0) { /* a value larger than small windows */
				size_t vl = 1 + (size_t)(rand_r(&seed) % 200);

				n += (size_t)sprintf((char *)buf + n,
						     "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%zu\r\n", vl);
				memset(buf + n, rand_r(&seed) % 2 ? '*' : 'v', vl);
				memcpy(buf + n + vl, "\r\n", 2);
				n += vl + 2;
				continue;
			}
			const char *rec = recs[rand_r(&seed) % 5];

			memcpy(buf + n, rec, strlen(rec));
			n += strlen(rec);
		}
		for (int k = 0; k < dmg; k++)
			buf[rand_r(&seed) % n] = pick[rand_r(&seed) % sizeof(pick)];
		n = rand_r(&seed) % 3 ? n : (size_t)rand_r(&seed) % (n + 1);
		if (rand_r(&seed) % 4 == 0) {
			memset(buf + n, 0, 30);
			n += 30;
		}
		snprintf(what, sizeof(what), "random %d", it);
		for (size_t w = 0; w < sizeof(ws) / sizeof(ws[0]); w++)
			same_in_windows_of(buf, n, ws[w], what);
	}
	free(buf);
}

/* A transaction's records are written between MULTI and EXEC (as Redis writes them): a file
 * that ends anywhere inside one, a record cut short or not, zeros after it or not, is torn
 * from its MULTI on, so the start cuts the whole transaction and applies none of it; whole,
 * it is clean. A nested MULTI, an EXEC without one, or damage inside a transaction with
 * more after it is damage, from the MULTI. The check a window at a time agrees. Before,
 * the check knew no markers: such a file was all damage from the MULTI on. */
Test(kv_aofrec, check_cuts_a_file_that_ends_inside_a_transaction_before_its_multi)
{
	static const char set[] = "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";
	static const char pxat[] = "*5\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n$4\r\nPXAT\r\n"
				   "$13\r\n1796011095441\r\n";
	static const char del[] = "*2\r\n$3\r\nDEL\r\n$1\r\na\r\n";
	static const char multi[] = "*1\r\n$5\r\nMULTI\r\n", exec[] = "*1\r\n$4\r\nEXEC\r\n";
	const size_t s = sizeof(set) - 1, m = sizeof(multi) - 1, e = sizeof(exec) - 1;
	uint8_t buf[512], cut[600];
	size_t n, tx_end, good;
	char what[128];

	/* SET, then MULTI SET SET-PXAT DEL EXEC, then DEL */
	n = (size_t)sprintf((char *)buf, "%s%s%s%s%s%s%s", set, multi, set, pxat, del, exec, del);
	tx_end = n - (sizeof(del) - 1);
	cr_assert_eq(kv_aof_check(buf, n, &good), KV_AOF_CLEAN);
	cr_assert_eq(good, n);
	cr_assert_eq(kv_aof_valid_prefix(buf, n), n);
	same_in_windows(buf, n, "whole");
	for (size_t at = s + 1; at < tx_end; at++) {
		memcpy(cut, buf, at);
		memset(cut + at, 0, 40);
		snprintf(what, sizeof(what), "cut at %zu of the transaction's %zu..%zu", at, s,
			 tx_end);
		cr_assert_eq(kv_aof_valid_prefix(cut, at), s, "%s", what);
		cr_assert_eq(kv_aof_check(cut, at, &good), KV_AOF_TORN, "%s: verdict %d", what,
			     kv_aof_check(cut, at, &good));
		cr_assert_eq(good, s, "%s: kept %zu bytes", what, good);
		cr_assert_eq(kv_aof_check(cut, at + 40, &good), KV_AOF_TORN, "%s, zeros after",
			     what);
		cr_assert_eq(good, s, "%s, zeros after: kept %zu bytes", what, good);
		same_in_windows(cut, at, what);
		same_in_windows(cut, at + 40, what);
	}
	/* After the EXEC: the transaction is whole, and a cut there is the last record's. */
	cr_assert_eq(kv_aof_check(buf, tx_end, &good), KV_AOF_CLEAN);
	cr_assert_eq(kv_aof_check(buf, tx_end + 3, &good), KV_AOF_TORN);
	cr_assert_eq(good, tx_end);
	/* Damage: a MULTI inside a transaction, an EXEC without a MULTI, a bad record inside a
	 * transaction with records after it; a length inside one that runs past the end with
	 * a whole record in what it swallows is unsure; all from the MULTI (or the EXEC). */
	static const struct {
		const char *rec;
		enum kv_aof_tail want;
		size_t good;
	} bad[] = {
		{ "*1\r\n$5\r\nMULTI\r\n*1\r\n$5\r\nMULTI\r\n", KV_AOF_CORRUPT, 0 },
		{ "*1\r\n$4\r\nEXEC\r\n", KV_AOF_CORRUPT, 0 },
		{ "*1\r\n$5\r\nMULTI\r\n*2\r\n$3\r\nDEX\r\n$1\r\na\r\n", KV_AOF_CORRUPT, 0 },
		{ "*1\r\n$5\r\nMULTI\r\n*2\r\n$3\r\nDEL\r\n$99\r\na\r\n", KV_AOF_UNSURE, 0 },
		{ "*1\r\n$5\r\nMULTI\r\n*1\r\n$4\r\nEXEX\r\n", KV_AOF_CORRUPT, 0 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		n = (size_t)sprintf((char *)buf, "%s%s%s%s%s", set, bad[i].rec, set, exec, del);
		snprintf(what, sizeof(what), "bad %zu", i);
		cr_assert_eq(kv_aof_check(buf, n, &good), bad[i].want, "%s: verdict %d", what,
			     kv_aof_check(buf, n, &good));
		cr_assert_eq(good, s, "%s: kept %zu bytes", what, good);
		same_in_windows(buf, n, what);
	}
	/* A transaction of no records is whole (keel-kv writes none; Redis's loader takes it). */
	n = (size_t)sprintf((char *)buf, "%s%s%s", set, multi, exec);
	cr_assert_eq(kv_aof_check(buf, n, &good), KV_AOF_CLEAN);
	cr_assert_eq(m + e + s, n);
}

/* A large file checked in windows of 4 KiB reads 4 KiB at a time, or a line's most (64
 * KiB), whatever follows a bad record: damage early in 8 MiB of records (corrupt), a
 * length there that swallows the rest, records whole inside it (unsure), the same length
 * last (torn), and a valid 4 MiB value, which the check walks by its lines, never reading
 * it whole (clean). The check read everything after a bad record at once: a damaged byte
 * early in a file larger than the memory failed the start with ENOMEM. */
Test(kv_aofrec, check_of_damage_early_in_a_large_file_reads_a_window_at_a_time)
{
	static const char set[] = "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n";
	static const char sex[] = "*3\r\n$3\r\nSEX\r\n$1\r\na\r\n$1\r\n1\r\n";
	static const char swallow[] = "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1099511627776\r\n";
	size_t s = sizeof(set) - 1, n = 8u << 20, h;
	uint8_t *buf = malloc(n + 64);

	cr_assert(buf);
	for (size_t at = 0; at + s <= n; at += s)
		memcpy(buf + at, set, s);
	n -= n % s;
	memcpy(buf + s, sex, s);
	same_in_windows_of(buf, n, 4096, "damage early");
	cr_assert_eq(kv_aof_check(buf, n, &h), KV_AOF_CORRUPT);
	memcpy(buf + s, set, s);
	memcpy(buf + s, swallow, sizeof(swallow) - 1);
	same_in_windows_of(buf, n, 4096, "a length that swallows the rest");
	cr_assert_eq(kv_aof_check(buf, n, &h), KV_AOF_UNSURE);
	same_in_windows_of(buf, s + sizeof(swallow) - 1, 4096, "the same length last");
	cr_assert_eq(kv_aof_check(buf, s + sizeof(swallow) - 1, &h), KV_AOF_TORN);
	h = (size_t)sprintf((char *)buf, "*3\r\n$3\r\nSET\r\n$1\r\nv\r\n$%zu\r\n", (size_t)4 << 20);
	memset(buf + h, '*', 4u << 20);
	memcpy(buf + h + (4u << 20), "\r\n", 2);
	memcpy(buf + h + (4u << 20) + 2, set, s);
	same_in_windows_of(buf, h + (4u << 20) + 2 + s, 4096, "a 4 MiB value");
	cr_assert_eq(kv_aof_check(buf, h + (4u << 20) + 2 + s, &h), KV_AOF_CLEAN);
	free(buf);
}

/* A request that arrives in pieces: each incomplete parse says how far it checked
 * (req.resume), and the next parse of the same request goes on from there. The checked
 * arguments are not read again while the request is incomplete (here they are garbled in
 * the second piece's copy, and it still asks for more instead of failing), and once it is
 * whole, argv is filled from the bytes given last. Without resuming, a request of many
 * arguments arriving in many receives was read again from its start at each one. */
Test(kv_resp, incomplete_request_resumes_where_its_check_stopped)
{
	struct p *s = newp();
	const char r[] = "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
	const size_t arg2 = 4 + 9 + 7; /* where "$5" starts */
	char b[sizeof(r)];
	struct resp_resume rs;

	cr_assert_eq(parse(s, r, arg2 + 6), RESP_MORE); /* up to "he" */
	cr_assert_eq(s->req.resume.next, 2);
	cr_assert_eq(s->req.resume.pos, arg2);
	cr_assert_eq(s->req.need, sizeof(r) - 1);
	rs = s->req.resume;

	/* The checked arguments garbled, two bytes more: still incomplete, not an error. */
	memcpy(b, r, sizeof(r));
	memset(b + 4, 'x', arg2 - 4);
	memset(&s->req, 0, sizeof(s->req));
	s->req.argv = s->argv;
	s->req.cap = 64;
	s->req.max_bulk = RESP_MAX_BULK_DEFAULT;
	s->req.resume = rs;
	cr_assert_eq(resp_parse((const uint8_t *)b, arg2 + 8, &s->req), RESP_MORE, "%s",
		     s->req.err);
	cr_assert_eq(s->req.resume.next, 2);
	cr_assert_eq(s->req.resume.pos, arg2);
	/* The same garbled bytes parsed as a new request: the error the resume skipped. */
	cr_assert_eq(parse(s, b, arg2 + 8), RESP_ERROR);

	/* Whole, in another copy: parsed from its start, argv into that copy. */
	memcpy(b, r, sizeof(r));
	memset(&s->req, 0, sizeof(s->req));
	s->req.argv = s->argv;
	s->req.cap = 64;
	s->req.max_bulk = RESP_MAX_BULK_DEFAULT;
	s->req.resume = rs;
	cr_assert_eq(resp_parse((const uint8_t *)b, sizeof(r) - 1, &s->req), (long)sizeof(r) - 1);
	cr_assert_eq(s->req.argc, 3);
	ARG_IS(s, 0, "SET");
	ARG_IS(s, 1, "k");
	ARG_IS(s, 2, "hello");
	cr_assert(s->argv[2].p == (const uint8_t *)b + arg2 + 4);
	cr_assert_eq(s->req.resume.next, 0, "a whole request leaves no resume state");
	free(s);
}

/* Resuming at every split of a request of many arguments gives what one parse gives, and
 * an error in an argument not yet checked is still found, with Redis's text. */
Test(kv_resp, resumed_parse_matches_a_whole_parse_at_every_split)
{
	struct p *s = newp();
	char r[512], bad[512];
	int n = snprintf(r, sizeof(r),
			 "*6\r\n$4\r\nMSET\r\n$2\r\nk1\r\n$3\r\nv:1\r\n$2\r\nk2\r\n"
			 "$0\r\n\r\n$10\r\n0123456789\r\n");

	memcpy(bad, r, (size_t)n);
	bad[n - 17] = '#'; /* the last argument's "$10" becomes "#10" */
	for (int cut = 1; cut < n; cut++) {
		struct resp_resume rs;
		long got;

		cr_assert_eq(parse(s, r, (size_t)cut), RESP_MORE, "cut %d", cut);
		rs = s->req.resume;
		for (int pass = 0; pass < 2; pass++) {
			memset(&s->req, 0, sizeof(s->req));
			s->req.argv = s->argv;
			s->req.cap = 64;
			s->req.max_bulk = RESP_MAX_BULK_DEFAULT;
			s->req.resume = rs;
			got = resp_parse((const uint8_t *)(pass ? bad : r), (size_t)n, &s->req);
			if (pass) { /* the last argument is never checked before it is whole */
				cr_assert_eq(got, RESP_ERROR, "cut %d: %ld", cut, got);
				cr_assert_str_eq(s->req.err,
						 "Protocol error: expected '$', got '#'");
				continue;
			}
			cr_assert_eq(got, n, "cut %d: %ld", cut, got);
			cr_assert_eq(s->req.argc, 6, "cut %d", cut);
			ARG_IS(s, 0, "MSET");
			ARG_IS(s, 2, "v:1");
			cr_assert_eq(s->argv[4].len, 0);
			ARG_IS(s, 5, "0123456789");
		}
	}
	free(s);
}

/* Resume state that does not fit the request (a caller's mistake) is ignored: the parse
 * starts over instead of reading where it points. */
Test(kv_resp, resume_state_that_does_not_fit_is_ignored)
{
	struct p *s = newp();
	const char r[] = "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
	const struct resp_resume bad[] = { { 1000, 1 }, { 13, 7 }, { 2, 1 } };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&s->req, 0, sizeof(s->req));
		s->req.argv = s->argv;
		s->req.cap = 64;
		s->req.max_bulk = RESP_MAX_BULK_DEFAULT;
		s->req.resume = bad[i];
		cr_assert_eq(resp_parse((const uint8_t *)r, sizeof(r) - 1, &s->req),
			     (long)sizeof(r) - 1, "case %zu", i);
		cr_assert_eq(s->req.argc, 2);
		ARG_IS(s, 1, "k");
	}
	free(s);
}

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

// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for keel-kv's RESP2 request parser (apps/kv/resp.c, resp_parse), driven
 * as the server drives it: requests parsed one after another from the input (pipelined),
 * argv and scratch grown on RESP_NEED_ARGV / RESP_NEED_SCRATCH. Checked on every input:
 * a request takes at most the bytes given; every argument lies inside the request or the
 * scratch area; an error has a reply text; RESP_MORE asks for more than was given; a
 * complete request parses the same from its own bytes alone, and no strict prefix of it is
 * an error or a request; parsed in two or three pieces, each resuming where the last
 * stopped (req.resume) and each in a fresh copy, it parses the same as whole; a growth
 * request is bounded by the input.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "resp.h"

struct st {
	struct resp_arg *argv;
	unsigned cap;
	uint8_t *scratch;
	size_t scap;
};

/* One request at @p[0..@n) with growth, as the server does, resuming from @rs (NULL: a
 * new request). */
static long
parse_from(struct st *s, const uint8_t *p, size_t n, struct resp_req *req,
	   const struct resp_resume *rs)
{
	long r;

	for (;;) {
		memset(req, 0, sizeof(*req));
		if (rs)
			req->resume = *rs;
		rs = NULL; /* a growth result zeroes it: the server's retry starts over */
		req->argv = s->argv;
		req->cap = s->cap;
		req->scratch = s->scratch;
		req->scratch_cap = s->scap;
		req->max_bulk = RESP_MAX_BULK_DEFAULT;
		r = resp_parse(p, n, req);
		if (r == RESP_NEED_ARGV) {
			/* Arguments are only added as their bytes arrive (an inline one takes
			 * two bytes, a bulk one six) and argv at most doubles: bounded by the
			 * input, whatever count a header claims. */
			CHECK(req->need > s->cap && req->need <= n + 8);
			s->argv = realloc(s->argv, req->need * sizeof(*s->argv));
			CHECK(s->argv);
			s->cap = (unsigned)req->need;
		} else if (r == RESP_NEED_SCRATCH) {
			CHECK(req->need > s->scap && req->need <= n + 8);
			s->scratch = realloc(s->scratch, req->need);
			CHECK(s->scratch);
			s->scap = req->need;
		} else {
			return r;
		}
	}
}

static long
parse(struct st *s, const uint8_t *p, size_t n, struct resp_req *req)
{
	return parse_from(s, p, n, req, NULL);
}

/* @n bytes of @p in a fresh exact-size copy (a resumed parse must not depend on where the
 * bytes were before); parsed from @rs. The copy is freed into *@copy's slot. */
static long
parse_copy(struct st *s, const uint8_t *p, size_t n, struct resp_req *req,
	   const struct resp_resume *rs, uint8_t **copy)
{
	free(*copy);
	*copy = malloc(n ? n : 1);
	CHECK(*copy);
	memcpy(*copy, p, n);
	return parse_from(s, *copy, n, req, rs);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* An exact-size copy: a read past the input is a heap overflow ASan reports. */
	uint8_t *buf = malloc(size ? size : 1);
	struct st s = { 0 };
	struct resp_req req, again;
	size_t off = 0;

	CHECK(buf);
	memcpy(buf, data, size);
	while (off < size) {
		const uint8_t *p = buf + off;
		size_t n = size - off;
		long r = parse(&s, p, n, &req);

		if (r == RESP_MORE) {
			CHECK(req.need == 0 || req.need > n);
			break;
		}
		if (r == RESP_ERROR) {
			CHECK(req.err[0] != 0 && memchr(req.err, 0, sizeof(req.err)));
			CHECK(!strchr(req.err, '\r') && !strchr(req.err, '\n'));
			break;
		}
		CHECK(r > 0 && (size_t)r <= n);
		CHECK(req.argc <= s.cap);
		for (unsigned i = 0; i < req.argc; i++) {
			const uint8_t *a = req.argv[i].p;
			size_t l = req.argv[i].len;
			bool in_req = a >= p && a <= p + r && l <= (size_t)(p + r - a);
			bool in_scr = s.scratch && a >= s.scratch && a <= s.scratch + s.scap &&
				      l <= (size_t)(s.scratch + s.scap - a);
			CHECK(l == 0 || in_req || in_scr);
		}
		/* The request alone parses to the same length and arguments... */
		struct st s2 = { 0 };
		uint8_t *alone = malloc((size_t)r);
		CHECK(alone);
		memcpy(alone, p, (size_t)r);
		long r2 = parse(&s2, alone, (size_t)r, &again);
		CHECK(r2 == r && again.argc == req.argc);
		for (unsigned i = 0; i < req.argc; i++)
			CHECK(again.argv[i].len == req.argv[i].len &&
			      !memcmp(again.argv[i].p, req.argv[i].p, req.argv[i].len));
		/* ... and a strict prefix of it is incomplete, never an error or a request. */
		size_t cut =
			(size_t)r > 1 ? ((size_t)p[r / 2] * 257 + (size_t)r / 3) % (size_t)r : 0;
		if (cut) {
			long r3 = parse(&s2, alone, cut, &again);
			CHECK(r3 == RESP_MORE);
			/* In pieces, resuming: the same request, the same arguments. */
			struct resp_resume rs = again.resume;
			size_t cut2 = cut + ((size_t)r - cut) / 2;
			uint8_t *copy = NULL;

			CHECK(rs.pos <= cut);
			if (cut2 > cut) {
				r3 = parse_copy(&s2, p, cut2, &again, &rs, &copy);
				CHECK(r3 == RESP_MORE);
				CHECK(again.resume.next >= rs.next);
				rs = again.resume;
			}
			r3 = parse_copy(&s2, p, (size_t)r, &again, &rs, &copy);
			CHECK(r3 == r && again.argc == req.argc);
			CHECK(again.resume.next == 0 && again.resume.pos == 0);
			for (unsigned i = 0; i < req.argc; i++)
				CHECK(again.argv[i].len == req.argv[i].len &&
				      !memcmp(again.argv[i].p, req.argv[i].p, req.argv[i].len));
			free(copy);
		}
		free(alone);
		free(s2.argv);
		free(s2.scratch);
		off += (size_t)r;
	}
	free(s.argv);
	free(s.scratch);
	free(buf);
	return 0;
}

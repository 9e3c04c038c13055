/* SPDX-License-Identifier: MIT */
/*
 * keel-kv: the RESP2 request parser. A pure function over bytes (no allocation, no I/O,
 * no global state), so the unit tests and a fuzzer can drive it directly.
 */
#ifndef KEEL_KV_RESP_H
#define KEEL_KV_RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Redis's limits: a value is at most 512 MiB by default; an inline request or a count
 * line at most 64 KiB. */
#define RESP_MAX_BULK_DEFAULT (512ull << 20)
#define RESP_INLINE_MAX       (64u * 1024)

/** One argument: @len bytes at @p (into the parsed bytes, or into the scratch area). */
struct resp_arg {
	const uint8_t *p;
	size_t len;
};

/** Where the check of an incomplete multibulk request stopped: its arguments before @next
 * (0: none) are whole and valid, and argument @next starts at byte @pos of the request. */
struct resp_resume {
	size_t pos;
	unsigned long long next;
};

/** The caller's storage for one request. Set argv/cap and scratch/scratch_cap. */
struct resp_req {
	struct resp_arg *argv; /* caller's array of @cap entries */
	unsigned cap;
	unsigned argc;    /* out: arguments parsed (0: an empty request, skip it) */
	uint8_t *scratch; /* caller's area for inline arguments (all of them, quoted or not) */
	size_t scratch_cap;
	size_t need;       /* out, on RESP_MORE: the request is at least this many bytes;
			    * on RESP_NEED_ARGV / RESP_NEED_SCRATCH: entries / bytes needed */
	uint64_t max_bulk; /* largest bulk length accepted (--proto-max-bulk-len) */
	char err[96];      /* out, on RESP_ERROR: Redis's reply text, without "-" or CRLF */
	/* in/out: zero for a new request. On RESP_MORE, how far the request was checked: give
	 * it back with the same request's bytes (at the same offsets, more of them, anywhere
	 * in memory) and the check goes on from there, so a request that arrives in many
	 * pieces is read about once, not once per piece. Zeroed on any other result. State
	 * from another request is not detected unless it points outside this one. */
	struct resp_resume resume;
};

enum {
	RESP_MORE = 0,          /* an incomplete request: call again with more bytes */
	RESP_ERROR = -1,        /* a protocol error: reply req->err, then close */
	RESP_NEED_ARGV = -2,    /* grow argv to req->need entries and call again */
	RESP_NEED_SCRATCH = -3, /* grow scratch to req->need bytes and call again */
};

/**
 * Parse the request at the start of @p[0..@n): a RESP2 array of bulk strings
 * ("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n") or an inline command ("GET k\r\n", arguments split
 * on spaces, "double" and 'single' quotes as in redis-cli).
 * Returns: the bytes the request takes (> 0), req->argc arguments in req->argv; or one of
 * the RESP_* codes above. Arguments point into @p (a multibulk request's) or into scratch
 * (an inline request's, every one: unquoting may change bytes, and the copy is one pass;
 * RESP_NEED_SCRATCH asks for the line's length).
 * Errors match Redis 7's replies ("Protocol error: invalid bulk length", ...).
 * With req->resume set (an earlier RESP_MORE on this request), arguments before
 * resume.next are not read again until the request is whole; then it is parsed from its
 * start once, for req->argv.
 */
long resp_parse(const uint8_t *p, size_t n, struct resp_req *req);
/**
 * The number of a count or bulk line as resp_parse reads it (Redis's string2ll: an optional
 * '-', then 1 to 20 digits without a leading zero, no overflow), from the @n bytes at @p.
 * Returns: true with *@out; false when they are not such a number.
 */
bool resp_number(const uint8_t *p, size_t n, long long *out);
/* The argument array's next size after @cap entries (RESP_NEED_ARGV): doubled, from 8, at
 * most INT_MAX (a request's most arguments, as Redis's); 0 when @cap is already there. */
size_t resp_argv_next(unsigned cap);

/**
 * Length of the RESP2 reply at the start of @p[0..@n) (for splitting gathered replies).
 * Returns: its length, or 0 when @p does not start with a whole reply.
 */
size_t resp_reply_len(const uint8_t *p, size_t n);

#endif

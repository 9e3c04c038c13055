// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for keel-kv's append-only file checker (kv_aof_valid_prefix, the
 * replay's parser, and kv_aof_check, which tells a torn tail from damage inside:
 * apps/kv/aofrec.c). For any bytes: the valid prefix is within them; it is itself wholly
 * valid (checking it again gives all of it); it splits into records that each parse and
 * pass kv_record_check, or are a transaction's MULTI or EXEC, which pair up, in order and
 * not nested, none left open; cutting any one byte off a non-empty valid prefix never makes
 * a longer prefix valid; kv_aof_check finds the same prefix, and a tail exactly when there
 * is one; kv_aof_check_file of the same bytes, in windows of 1 to 64 bytes (the first
 * byte picks), gives kv_aof_check's verdict and prefix, reading no more than a window or a
 * line's most at a time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aofrec.h"
#include "fuzz.h"

struct mem {
	const uint8_t *p;
	size_t n, most;
};

static int
mem_read(void *ctx, uint64_t off, uint8_t *buf, size_t len)
{
	struct mem *m = ctx;

	CHECK(off <= m->n && len <= m->n - off);
	memcpy(buf, m->p + off, len);
	if (len > m->most)
		m->most = len;
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t good = kv_aof_valid_prefix(data, size), off = 0, good2;
	/* A copy of exactly the prefix: reading past it would be a bug ASan sees. */
	uint8_t *copy = malloc(good ? good : 1);
	enum kv_aof_tail rest = kv_aof_check(data, size, &good2);

	CHECK(good <= size);
	/* The tail's check agrees on the prefix, and finds a tail exactly when there is one. */
	CHECK(good2 == good);
	CHECK((rest == KV_AOF_CLEAN) == (good == size));
	memcpy(copy, data, good);
	CHECK(kv_aof_valid_prefix(copy, good) == good);
	bool open = false;
	while (off < good) {
		struct resp_arg argv[8];
		struct resp_req req = { .argv = argv, .cap = 8, .max_bulk = UINT64_MAX >> 1 };
		int64_t at;
		long r = resp_parse(copy + off, good - off, &req);
		CHECK(r > 0);
		if (req.argc == 1 && req.argv[0].len == 5 && !memcmp(req.argv[0].p, "MULTI", 5)) {
			CHECK(!open);
			open = true;
		} else if (req.argc == 1 && req.argv[0].len == 4 &&
			   !memcmp(req.argv[0].p, "EXEC", 4)) {
			CHECK(open);
			open = false;
		} else {
			CHECK(kv_record_check(req.argv, req.argc, &at) == 0);
		}
		off += (size_t)r;
	}
	CHECK(off == good && !open);
	if (good)
		CHECK(kv_aof_valid_prefix(copy, good - 1) <= good - 1);
	free(copy);
	{
		struct mem m = { data, size, 0 };
		size_t w = 1 + (size ? data[0] % 64 : 0);
		enum kv_aof_tail rest2;
		uint64_t g;

		CHECK(kv_aof_check_file(mem_read, &m, size, w, &rest2, &g) == 0);
		CHECK(rest2 == rest && g == good);
		CHECK(m.most <= (w > RESP_INLINE_MAX ? w : RESP_INLINE_MAX));
	}
	return 0;
}

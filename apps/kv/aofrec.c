// SPDX-License-Identifier: MIT
/* keel-kv append-only file records: see aofrec.h. */
#include "aofrec.h"

#include <errno.h>
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

size_t
kv_aof_valid_prefix(const uint8_t *p, size_t n)
{
	struct resp_arg argv[8];
	size_t off = 0;

	while (off < n) {
		struct resp_req req = { .argv = argv, .cap = 8, .max_bulk = UINT64_MAX >> 1 };
		int64_t at;
		long r;

		if (p[off] != '*') /* records are arrays: no inline commands */
			break;
		r = resp_parse(p + off, n - off, &req);
		if (r <= 0 || kv_record_check(req.argv, req.argc, &at) < 0)
			break;
		off += (size_t)r;
	}
	return off;
}

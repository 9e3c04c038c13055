// SPDX-License-Identifier: MIT
/* keel-kv's test-only failures of its plain system calls: see testfault.h. */
#include "testfault.h"

#include <stdio.h>
#include <stdlib.h>

#ifndef KEEL_FAULTS
void
kv_test_faults_init(void)
{
	if (getenv("KEEL_KV_TEST_FAULTS"))
		fprintf(stderr, "keel-kv: KEEL_KV_TEST_FAULTS is ignored: this build is not "
				"configured with -DKEEL_FAULTS=ON\n");
}
#else
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define MAX_SITES 8

static struct site {
	char name[32];
	uint64_t after, n;
	_Atomic uint64_t seen;
} sites[MAX_SITES];
static unsigned nsites;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static const char *const known[] = { "record-oom", "ftruncate", "stop-sync", "start-unlink" };

/* A bad spec is a broken test: say so and stop rather than run without the faults. */
static void
bad_spec(const char *spec, const char *why)
{
	fprintf(stderr, "keel-kv: KEEL_KV_TEST_FAULTS='%s': %s\n", spec, why);
	exit(2);
}

/* A decimal number of digits only (no sign, no space), within uint64_t. */
static bool
number(const char *p, size_t len, uint64_t *v)
{
	*v = 0;
	if (!len)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (p[i] < '0' || p[i] > '9' || *v > (UINT64_MAX - (uint64_t)(p[i] - '0')) / 10)
			return false;
		*v = *v * 10 + (uint64_t)(p[i] - '0');
	}
	return true;
}

/* One SITE[:after=N][:n=N] of @len bytes at @p. */
static void
parse_site(const char *env, const char *p, size_t len)
{
	size_t nl = strcspn(p, ":,");
	struct site *s;

	if (nsites == MAX_SITES)
		bad_spec(env, "more than 8 sites");
	s = &sites[nsites];
	for (size_t k = 0;; k++) {
		if (k == sizeof(known) / sizeof(known[0]))
			bad_spec(env, "a site is one of record-oom, ftruncate, stop-sync, "
				      "start-unlink");
		if (strlen(known[k]) == nl && !memcmp(p, known[k], nl))
			break;
	}
	memcpy(s->name, p, nl);
	s->name[nl] = 0;
	for (unsigned i = 0; i < nsites; i++)
		if (!strcmp(sites[i].name, s->name))
			bad_spec(env, "a site named twice");
	s->n = UINT64_MAX;
	for (size_t off = nl; off < len;) {
		const char *f = p + off + 1; /* past the ':' */
		size_t fl = strcspn(f, ":,"), kl = f[0] == 'a' ? 6 : 2;

		if (strncmp(f, kl == 6 ? "after=" : "n=", kl) || fl < kl ||
		    !number(f + kl, fl - kl, kl == 6 ? &s->after : &s->n))
			bad_spec(env, "a site takes :after=N and :n=N only (N a number)");
		off += 1 + fl;
	}
	nsites++;
}

static void
parse(void)
{
	const char *env = getenv("KEEL_KV_TEST_FAULTS");

	if (!env || !*env)
		return;
	for (const char *p = env;;) {
		size_t len = strcspn(p, ",");

		parse_site(env, p, len);
		if (!p[len])
			break;
		p += len + 1;
	}
	fprintf(stderr,
		"keel-kv: KEEL_KV_TEST_FAULTS=%s: failing these calls (a test build; each count "
		"is over all shards)\n",
		env);
}

void
kv_test_faults_init(void)
{
	pthread_once(&once, parse);
}

bool
kv_test_fault(const char *site)
{
	pthread_once(&once, parse);
	for (unsigned i = 0; i < nsites; i++) {
		struct site *s = &sites[i];
		uint64_t k;

		if (strcmp(s->name, site))
			continue;
		k = atomic_fetch_add_explicit(&s->seen, 1, memory_order_relaxed);
		return k >= s->after && k - s->after < s->n;
	}
	return false;
}
#endif

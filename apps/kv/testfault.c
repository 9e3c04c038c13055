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

static void
parse(void)
{
	const char *env = getenv("KEEL_KV_TEST_FAULTS");
	char buf[512], *save = NULL;

	if (!env || !*env)
		return;
	if (strlen(env) >= sizeof(buf))
		bad_spec(env, "too long");
	strcpy(buf, env);
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *save2 = NULL, *f = strtok_r(tok, ":", &save2);
		struct site *s = &sites[nsites];

		if (nsites == MAX_SITES)
			bad_spec(env, "more than 8 sites");
		for (size_t k = 0;; k++) {
			if (k == sizeof(known) / sizeof(known[0]))
				bad_spec(env,
					 "sites: record-oom, ftruncate, stop-sync, start-unlink");
			if (!strcmp(f, known[k]))
				break;
		}
		strcpy(s->name, f);
		s->n = UINT64_MAX;
		while ((f = strtok_r(NULL, ":", &save2))) {
			char *end;
			uint64_t v;

			if (strncmp(f, "after=", 6) && strncmp(f, "n=", 2))
				bad_spec(env, "a site takes after=N and n=N only");
			v = strtoull(strchr(f, '=') + 1, &end, 10);
			if (*end || end == strchr(f, '=') + 1)
				bad_spec(env, "after= and n= take a number");
			if (f[0] == 'a')
				s->after = v;
			else
				s->n = v;
		}
		nsites++;
	}
	fprintf(stderr, "keel-kv: KEEL_KV_TEST_FAULTS=%s: failing these calls (a test build)\n",
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

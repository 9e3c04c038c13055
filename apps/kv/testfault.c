// SPDX-License-Identifier: MIT
/* keel-kv's test-only failures of its plain system calls: see testfault.h. */
#include "testfault.h"

#include <stdio.h>
#include <stdlib.h>

#ifndef KEEL_FAULTS
void
kv_test_faults_init(void)
{
	static const char *const vars[] = { "KEEL_KV_TEST_FAULTS",    "KEEL_KV_TEST_REWRITE_GATE",
					    "KEEL_KV_TEST_SYNC_GATE", "KEEL_KV_TEST_CLOCK_STEP_MS",
					    "KEEL_KV_TEST_HOLD_GATE", "KEEL_KV_TEST_RANDOM_ANY" };

	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		if (getenv(vars[i]))
			fprintf(stderr,
				"keel-kv: %s is ignored: this build is not configured with "
				"-DKEEL_FAULTS=ON\n",
				vars[i]);
}
#else
#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* The sites, and what the spec says of each (indexed alike). */
static const char *const known[] = { "record-oom",        "ftruncate",       "stop-sync",
				     "start-unlink",      "commit-marker",   "commit-rename",
				     "commit-dirsync",    "rewrite-rename",  "rewrite-dirsync",
				     "waiter-oom",        "store-oom",       "reply-oom",
				     "watch-keys-oom",    "watch-entry-oom", "stop-rebuild",
				     "rewrite-tail-open", "wgone-oom",       "dir-parent-sync" };
#define NSITES      (sizeof(known) / sizeof(known[0]))
static struct site {
	bool set;
	uint64_t after, n;
	_Atomic uint64_t seen;
} sites[NSITES];
static pthread_once_t once = PTHREAD_ONCE_INIT;

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

/* The index of the site named by the @len bytes at @p, or NSITES. */
static size_t
site_index(const char *p, size_t len)
{
	size_t k = 0;

	while (k < NSITES && !(strlen(known[k]) == len && !memcmp(p, known[k], len)))
		k++;
	return k;
}

/* One SITE[:after=N][:n=N] of @len bytes at @p. */
static void
parse_site(const char *env, const char *p, size_t len)
{
	size_t nl = strcspn(p, ":,"), k = site_index(p, nl);
	struct site *s;

	if (k == NSITES)
		bad_spec(env, "a site is one of record-oom, ftruncate, stop-sync, start-unlink, "
			      "commit-marker, commit-rename, commit-dirsync, rewrite-rename, "
			      "rewrite-dirsync, waiter-oom, store-oom, reply-oom, watch-keys-oom, "
			      "watch-entry-oom");
	s = &sites[k];
	if (s->set)
		bad_spec(env, "a site named twice");
	s->set = true;
	s->n = UINT64_MAX;
	for (size_t off = nl; off < len;) {
		const char *f = p + off + 1; /* past the ':' */
		size_t fl = strcspn(f, ":,"), kl = f[0] == 'a' ? 6 : 2;

		if (strncmp(f, kl == 6 ? "after=" : "n=", kl) || fl < kl ||
		    !number(f + kl, fl - kl, kl == 6 ? &s->after : &s->n))
			bad_spec(env, "a site takes :after=N and :n=N only (N a number)");
		off += 1 + fl;
	}
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
	size_t k = site_index(site, strlen(site));
	uint64_t seen;

	pthread_once(&once, parse);
	if (k == NSITES || !sites[k].set)
		return false;
	seen = atomic_fetch_add_explicit(&sites[k].seen, 1, memory_order_relaxed);
	return seen >= sites[k].after && seen - sites[k].after < sites[k].n;
}

bool
kv_test_rewrite_held(void)
{
	const char *gate = getenv("KEEL_KV_TEST_REWRITE_GATE");

	return gate && *gate && access(gate, F_OK) == 0;
}

bool
kv_test_sync_held(void)
{
	const char *gate = getenv("KEEL_KV_TEST_SYNC_GATE");

	return gate && *gate && access(gate, F_OK) == 0;
}

static int64_t clock_step;
static pthread_once_t clock_once = PTHREAD_ONCE_INIT;

static void
clock_parse(void)
{
	const char *v = getenv("KEEL_KV_TEST_CLOCK_STEP_MS");
	uint64_t n;

	if (!v || !*v)
		return;
	if (!number(v, strlen(v), &n) || n > 86400000) {
		fprintf(stderr,
			"keel-kv: KEEL_KV_TEST_CLOCK_STEP_MS='%s': want milliseconds, 0 to "
			"86400000\n",
			v);
		exit(2);
	}
	clock_step = (int64_t)n;
	fprintf(stderr,
		"keel-kv: KEEL_KV_TEST_CLOCK_STEP_MS=%s: each clock reading is that much later "
		"(a test build)\n",
		v);
}

int64_t
kv_test_clock_step_ms(void)
{
	pthread_once(&clock_once, clock_parse);
	return clock_step;
}

/* Read once: it is looked at for every RANDOMKEY of these builds. */
static bool random_any;
static pthread_once_t random_once = PTHREAD_ONCE_INIT;

static void
random_read(void)
{
	const char *v = getenv("KEEL_KV_TEST_RANDOM_ANY");

	random_any = v && !strcmp(v, "1");
	if (random_any)
		fprintf(stderr, "keel-kv: KEEL_KV_TEST_RANDOM_ANY=1: RANDOMKEY's first draw takes "
				"every shard as likely (a test build)\n");
}

bool
kv_test_random_any(void)
{
	pthread_once(&random_once, random_read);
	return random_any;
}

/* The hold gate's file, read once (it is looked at for every command of these builds). */
static const char *hold_gate;
static pthread_once_t hold_once = PTHREAD_ONCE_INIT;

static void
hold_read(void)
{
	const char *v = getenv("KEEL_KV_TEST_HOLD_GATE");

	hold_gate = v && *v ? v : NULL;
}

/* A held shard that nobody lets go (a test that failed with the file still there) lets go
 * by itself after this long, so that its process can stop. */
#define HOLD_MAX_MS 60000

bool
kv_test_hold(unsigned shard, const uint8_t *key, size_t len)
{
	static const char mark[] = ":hold";
	const size_t mlen = sizeof(mark) - 1;
	char path[4096];
	size_t at, nlen;
	unsigned ms = 0;

	pthread_once(&hold_once, hold_read);
	if (!hold_gate)
		return false;
	/* ":hold" then a name of up to 16 letters or digits at the end of the key */
	for (at = len; at > 0 && len - at < 16 + mlen; at--)
		if (key[at - 1] == ':')
			break;
	if (!at || len - (at - 1) < mlen || memcmp(key + at - 1, mark, mlen) != 0)
		return false;
	nlen = len - (at - 1) - mlen;
	if (nlen > 16)
		return false;
	for (size_t k = 0; k < nlen; k++)
		if (!isalnum(key[at - 1 + mlen + k]))
			return false;
	if ((size_t)snprintf(path, sizeof(path), "%s%.*s", hold_gate, (int)nlen,
			     (const char *)key + at - 1 + mlen) >= sizeof(path) ||
	    access(path, F_OK) != 0)
		return false;
	fprintf(stderr, "keel-kv: shard %u held by the test gate %s (key %.*s)\n", shard, path,
		(int)len, (const char *)key);
	while (access(path, F_OK) == 0 && ms++ < HOLD_MAX_MS)
		usleep(1000);
	fprintf(stderr, "keel-kv: shard %u released by the test gate %s%s\n", shard, path,
		ms > HOLD_MAX_MS ? " (held for a minute: let go with the file still there)" : "");
	return true;
}
#endif

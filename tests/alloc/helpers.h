/* SPDX-License-Identifier: MIT */
/* Shared helpers for the alloc tests. */
#ifndef KEEL_TEST_ALLOC_HELPERS_H
#define KEEL_TEST_ALLOC_HELPERS_H

#include <keel/alloc.h>
#include <keel/buf.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "shard_check.h"
#include "wait.h"

/* The number at the start of the file @path (a sysfs or procfs value), or -1. */
static inline long __attribute__((unused)) read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

/* A log capture: every line appended, thread-safe (shards log concurrently). */
struct logcap {
	pthread_mutex_t lock;
	char text[16384];
	size_t len;
};

static inline void
logcap_add(struct logcap *c, const char *msg)
{
	pthread_mutex_lock(&c->lock);
	int n = snprintf(c->text + c->len, sizeof(c->text) - c->len, "%s\n", msg);
	if (n > 0 && c->len + (size_t)n < sizeof(c->text))
		c->len += (size_t)n;
	pthread_mutex_unlock(&c->lock);
}

static inline int
logcap_has(struct logcap *c, const char *needle)
{
	int r;
	pthread_mutex_lock(&c->lock);
	r = strstr(c->text, needle) != NULL;
	pthread_mutex_unlock(&c->lock);
	return r;
}

/* The first captured line that holds @needle, into @out (empty when there is none). */
static inline void
logcap_line(struct logcap *c, const char *needle, char *out, size_t n)
{
	const char *p, *e;

	pthread_mutex_lock(&c->lock);
	out[0] = 0;
	if ((p = strstr(c->text, needle))) {
		while (p > c->text && p[-1] != '\n')
			p--;
		e = strchr(p, '\n');
		snprintf(out, n, "%.*s", (int)(e ? e - p : (ptrdiff_t)strlen(p)), p);
	}
	pthread_mutex_unlock(&c->lock);
}

static inline int
logcap_count(struct logcap *c, const char *needle)
{
	int n = 0;
	pthread_mutex_lock(&c->lock);
	for (const char *p = c->text; (p = strstr(p, needle)) != NULL; p++)
		n++;
	pthread_mutex_unlock(&c->lock);
	return n;
}

static inline void
logcap_alloc_hook(int level, const char *msg, void *arg)
{
	logcap_add(arg, msg);
}

/* A keel_log sink into a capture (include keel/log.h first). */
#ifdef KEEL_LOG_H
static inline void
logcap_keel_sink(enum keel_log_level level, const char *module, int shard, const char *msg,
		 void *arg)
{
	logcap_add(arg, msg);
}
#endif

/* A standalone allocator config: @mem bytes in @region-byte regions. */
static inline struct keel_alloc_config
test_alloc_config(enum keel_alloc_backend be, uint64_t mem, uint64_t region)
{
	struct keel_alloc_config c;
	memset(&c, 0, sizeof(c));
	c.backend = be;
	c.memory = mem;
	c.region_size = region;
	c.cpu = -1;
	return c;
}

#endif

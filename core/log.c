// SPDX-License-Identifier: MIT
#include <errno.h>
#include <keel/log.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static _Atomic int log_level = KEEL_LOG_INFO;
static pthread_rwlock_t sink_lock = PTHREAD_RWLOCK_INITIALIZER;
static keel_log_fn sink_fn;
static void *sink_arg;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

static unsigned sink_gen; /* sink changes made, under sink_lock */

/* A sink that changes the sink runs under keel_log's read lock, which the write lock
 * would wait for on the same thread for ever: the change is kept here and made when the
 * sink returns, unless another thread's came meanwhile (the later call wins, as without
 * the wait). */
static _Thread_local unsigned in_sink;
static _Thread_local bool change_due;
static _Thread_local keel_log_fn change_fn;
static _Thread_local void *change_arg;
static _Thread_local unsigned change_gen;

void
keel_log_set_sink(keel_log_fn fn, void *arg)
{
	if (in_sink) {
		change_due = true;
		change_fn = fn;
		change_arg = arg;
		change_gen = sink_gen; /* the read lock is held */
		return;
	}
	pthread_rwlock_wrlock(&sink_lock);
	sink_fn = fn;
	sink_arg = arg;
	sink_gen++;
	pthread_rwlock_unlock(&sink_lock);
}

/* The change a sink made, once no sink runs on this thread. */
static void
sink_change_made(void)
{
	change_due = false;
	pthread_rwlock_wrlock(&sink_lock);
	if (sink_gen == change_gen) {
		sink_fn = change_fn;
		sink_arg = change_arg;
		sink_gen++;
	}
	pthread_rwlock_unlock(&sink_lock);
}

void
keel_log_set_level(enum keel_log_level level)
{
	/* Kept inside the enum: keel_opts_init copies it into opts.log_level, which the
	 * runtime's create refuses otherwise, blaming the options for this call. */
	int l = (int)level < KEEL_LOG_ERROR   ? KEEL_LOG_ERROR
		: (int)level > KEEL_LOG_DEBUG ? KEEL_LOG_DEBUG
					      : (int)level;

	atomic_store(&log_level, l);
}

enum keel_log_level
keel_log_get_level(void)
{
	return atomic_load(&log_level);
}

bool
keel_log_enabled(enum keel_log_level level)
{
	/* Unsigned: a level outside the enum (negative, or past debug) is never logged (its
	 * name would be read past level_names). */
	return (unsigned)level <= (unsigned)atomic_load_explicit(&log_level, memory_order_relaxed);
}

int
keel_log_level_parse(const char *s, enum keel_log_level *out)
{
	for (unsigned i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum keel_log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

/* A sink's thread cancelled inside it (a write to a pipe is a cancellation point): the
 * read lock goes with it, or every later keel_log_set_sink() waited for ever. */
static void
sink_left(void *arg)
{
	(void)arg;
	in_sink--;
	pthread_rwlock_unlock(&sink_lock);
}

/* @text to the sink, a call per line. */
static void
sink_lines(enum keel_log_level level, const char *module, int shard, const char *text)
{
	while (*text) {
		char line[4096];
		size_t n = strcspn(text, "\n");

		snprintf(line, sizeof(line), "%.*s", (int)n, text);
		sink_fn(level, module, shard, line, sink_arg);
		text += n + (text[n] == '\n');
	}
}

/* @text to the sink, a call per line when @lines, under the lock a sink change waits for (a
 * change a sink made is made once it returned); false, nothing done, when none is set. */
static bool
to_sink(enum keel_log_level level, const char *module, int shard, const char *text, bool lines)
{
	bool sent;

	pthread_rwlock_rdlock(&sink_lock);
	in_sink++;
	pthread_cleanup_push(sink_left, NULL);
	sent = sink_fn != NULL;
	if (sent && lines)
		sink_lines(level, module, shard, text);
	else if (sent)
		sink_fn(level, module, shard, text, sink_arg);
	pthread_cleanup_pop(1);
	if (change_due && !in_sink)
		sink_change_made();
	return sent;
}

void
keel_log(enum keel_log_level level, const char *module, const char *fmt, ...)
{
	char msg[4096];
	va_list ap;
	int shard = keel__cur ? (int)keel__cur->id : -1, n;

	if (!keel_log_enabled(level))
		return;
	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(msg)) { /* cut, and said: a long path can push the reason out */
		char tail[48];
		int t = snprintf(tail, sizeof(tail), " [... cut: %d bytes in all]", n);

		memcpy(msg + sizeof(msg) - 1 - t, tail, (size_t)t + 1);
	}

	if (to_sink(level, module, shard, msg, false))
		return;
	if (shard >= 0)
		fprintf(stderr, "keel %s %s[shard %d]: %s\n", level_names[level], module, shard,
			msg);
	else
		fprintf(stderr, "keel %s %s: %s\n", level_names[level], module, msg);
}

bool
keel__log_to_sink(enum keel_log_level level, const char *module, const char *text)
{
	return to_sink(level, module, keel__cur ? (int)keel__cur->id : -1, text, true);
}

int
keel__errf(char *err, size_t errlen, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (err && errlen)
		vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return r;
}

void
keel__verify_fail(const char *file, int line, const char *expr)
{
	fprintf(stderr, "keel: invariant violated at %s:%d: %s\n", file, line, expr);
	abort();
}
